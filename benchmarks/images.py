"""Benchmark the image pipeline: the trainer's overhead, and sample quality of a finished MNIST run.

Throughput (default mode): images/s of `train.Trainer` against a bare PyTorch loop on the same
model (the `mnist` preset's seed U-Net, identical initial weights), batch and loss math: seed
001's continuous DSM with lambda = std^2,

    loss = 1/B sum_i 1/2 || std(t_i) s(x0_i + std(t_i) z_i, t_i) + z_i ||^2,  t ~ U(eps, 1), z ~ N(0, I),

and Adam with the preset's learning rate (foreach, as in the trainer). The bare loop stops there;
the trainer adds what it is for: a seeded generator for every draw, the EMA update, the gradient
norm, loss bookkeeping. A third loop is the trainer with train.amp=true (bf16 autocast, fp32
weights), whose speed-up depends on the hardware's bf16 support. The data are synthetic 28x28
images (throughput does not depend on their content). Each measurement is `--steps` steps after
`--warmup`, repeated `--repeats` times in alternation (medians reported), so that the load of a
shared machine falls on all alike.

    python benchmarks/images.py [--device cpu|cuda] [--threads 1] [--batch-size 32] [--steps 30]

Quality (`--run RUN_DIR`, a finished `mnist` run): for each sampler and step count, classifier
FID and KID of n samples against the test split beside the test-vs-train floor at the same n
(`image_metrics.evaluate_images`), the class histogram's largest deviation from uniform, NFE and
seconds. The issue's goal: FID within 3x of the floor at 1000 NFE, classes within 2 points.

    python benchmarks/images.py --run runs/mnist [--n 500] [--samplers pc:500 dpmpp2m:50 heun:18:schedule=edm]
        [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from scoregen.runs import config as C
from scoregen.runs.recipe import build_model, build_sde, train_config
from scoregen.training.trainer import Trainer

# (sampler, options); pc with the preset's snr, the seed's 1000-NFE samplers last
SAMPLERS = [("dpmpp2m", {"steps": 20}), ("dpmpp2m", {"steps": 50}), ("dpmpp3m", {"steps": 50}),
            ("heun", {"steps": 50}), ("ddim", {"steps": 100}), ("ode_heun", {"steps": 100}),
            ("euler_maruyama", {"steps": 1000}), ("pc", {"steps": 500, "snr": 0.15})]


# --- throughput --------------------------------------------------------------------------------
def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model, data, batch_size: int, lr: float, eps: float, device: torch.device):
    """step(k): k plain Adam steps on the continuous DSM loss (lambda = std^2) of `model`."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)  # the trainer's Adam (CPU default: per tensor)
    sde, n = model.sde, data.shape[0]

    def step(k: int):
        model.train()
        for _ in range(k):
            x0 = data[torch.randint(0, n, (batch_size,), device=device)]
            t = eps + (sde.T - eps) * torch.rand(batch_size, device=device)
            z = torch.randn_like(x0)
            std = sde.std(t)[:, None, None, None]
            s = model(x0 + std * z, t)
            loss = 0.5 * (std * s + z).pow(2).flatten(1).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)

    return step


def trainer_loop(model, data, cfg: dict, device: torch.device):
    """step(k): k more steps of Trainer.fit() (no run folder: nothing is written)."""
    tc = train_config(cfg, progress=False, checkpoint_every=0, device=str(device), steps=0)
    trainer = Trainer(model, data, tc, None, resume=False)

    def step(k: int):
        trainer.config.steps = trainer.step + k
        trainer.fit()
        _sync(device)

    return step


def throughput(a) -> dict:
    device = torch.device(a.device)
    cfg = C.load_config("mnist", [f"train.batch_size={a.batch_size}"] + a.overrides)
    torch.manual_seed(0)
    data = torch.rand(2048, 1, 28, 28)
    sde = build_sde(cfg["sde"])
    model = build_model(cfg["model"], sde, tuple(data.shape))
    params = sum(p.numel() for p in model.parameters())
    eps = float(cfg["loss"].get("eps", sde.eps))
    loops = {"bare": bare_loop(copy.deepcopy(model).to(device), data.to(device), a.batch_size,
                               cfg["train"]["lr"], eps, device),
             "trainer": trainer_loop(copy.deepcopy(model), data, cfg, device),
             "trainer+amp": trainer_loop(copy.deepcopy(model), data, C.apply_overrides(cfg, ["train.amp=true"]),
                                         device)}
    for step in loops.values():
        step(a.warmup)
    rates = {k: [] for k in loops}
    for _ in range(a.repeats):
        for name, step in loops.items():
            t0 = time.perf_counter()
            step(a.steps)
            rates[name].append(a.steps * a.batch_size / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    # extra time per step, from adjacent (equally loaded) pairs of measurements
    overhead = 100 * (statistics.median(b / t for b, t in zip(rates["bare"], rates["trainer"])) - 1)
    print(f"model: {cfg['model']['net']} {cfg['model']['channels']}, {params / 1e6:.2f} M parameters; "
          f"batch {a.batch_size}; {a.steps} steps x {a.repeats} after {a.warmup} warm-up; device {device}")
    for k in loops:
        print(f"  {k:11s} {med[k]:8.1f} images/s   (runs: {', '.join(f'{r:.1f}' for r in rates[k])})")
    amp_speedup = statistics.median(m / t for m, t in zip(rates["trainer+amp"], rates["trainer"]))
    print(f"  trainer overhead: {overhead:+.1f}% time per step (median over the {a.repeats} adjacent pairs)")
    print(f"  bf16 autocast (train.amp=true): {amp_speedup:.2f}x the trainer's fp32 throughput")
    return {"device": str(device), "batch_size": a.batch_size, "params": params, "rates": rates,
            "median_images_per_s": med, "overhead_percent": overhead, "amp_speedup": amp_speedup}


# --- quality of a finished run -----------------------------------------------------------------
def parse_samplers(items) -> list[tuple[str, dict]]:
    """NAME[:STEPS[:KEY=VALUE,...]] -> (name, options); values are parsed as YAML (`heun:18:schedule=edm`)."""
    from scoregen.runs.config import parse_override

    out = []
    for it in items:
        name, _, rest = it.partition(":")
        steps, _, extra = rest.partition(":")
        if steps and not steps.isdigit():
            raise ValueError(f"--samplers entries look like NAME, NAME:STEPS or NAME:STEPS:KEY=VALUE,..., got {it!r}")
        opts = {"steps": int(steps)} if steps else {}
        for kv in filter(None, extra.split(",")):
            keys, value = parse_override(kv)
            opts[".".join(keys)] = value
        out.append((name, opts))
    return out


def quality(a) -> list[dict]:
    from scoregen.evaluation import check_image_run as check_run
    from scoregen.evaluation.classifier import load_classifier
    from scoregen.evaluation.image_metrics import evaluate_images
    from scoregen.runs.recipe import run_value_range
    from scoregen.runs.run import Run

    run_dir = Path(a.run)
    cfg, name = check_run(run_dir)
    value_range = run_value_range(run_dir)
    data_dir = (cfg.get("data") or {}).get("data_dir")
    classifier = load_classifier(name)
    samplers = parse_samplers(a.samplers) if a.samplers else SAMPLERS
    print(f"run {run_dir} ({name}), n={a.n} samples per sampler, device {a.device}")
    print(f"{'sampler':16s} {'steps':>5s} {'NFE':>5s} {'sec':>7s} {'FID':>8s} {'floor':>7s} {'ratio':>6s} "
          f"{'KID':>9s} {'KID floor':>9s} {'classes':>7s}")
    rows = []
    run = Run.open(run_dir, device=a.device)  # loaded once; "sec" times the sampling alone
    for sampler, opts in samplers:
        t0 = time.perf_counter()
        res = run.sample(a.n, sampler, seed=a.seed, batch_size=a.batch_size or a.n, **opts)
        seconds = time.perf_counter() - t0
        if not torch.isfinite(res.samples).all():
            print(f"{sampler:16s} {str(opts.get('steps', '-')):>5s} {res.nfe:5d} {seconds:7.1f}  diverged")
            continue
        r = evaluate_images(res.samples, name, data_dir, value_range=value_range, model=classifier, seed=a.seed)
        row = {"sampler": sampler, "options": opts, "nfe": int(res.nfe), "seconds": seconds, **r}
        rows.append(row)
        print(f"{sampler:16s} {str(opts.get('steps', '-')):>5s} {res.nfe:5d} {seconds:7.1f} {r['fid']:8.3f} "
              f"{r['fid_floor']:7.3f} {r['fid_ratio']:6.2f} {r['kid']:9.4f} {r['kid_floor']:9.4f} "
              f"{r['class_max_dev_points']:6.2f}p")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--batch-size", type=int, default=None, help="throughput: 32; --run: samples per sampler call "
                   "(default n)")
    p.add_argument("--steps", type=int, default=30, help="throughput: timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--run", default=None, metavar="RUN_DIR", help="measure sample quality of this finished run")
    p.add_argument("--n", type=int, default=500, help="--run: samples per sampler")
    p.add_argument("--samplers", nargs="+", default=None, metavar="NAME[:STEPS]",
                   help="--run: samplers to measure (default: " + " ".join(
                       f"{s}:{o['steps']}" for s, o in SAMPLERS) + ")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="throughput: overrides of the mnist preset")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {a.device}: CUDA is not available here")
    print("command: python benchmarks/images.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name(a.device)}" if a.device.startswith("cuda") else ""))
    if a.run:
        result = quality(a)
    else:
        a.batch_size = a.batch_size or 32
        result = throughput(a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
