"""Benchmark one- and few-step generation: consistency distillation (CD) and training (CT) on mixtures with known truth.

For each mixture (the seed's 3-Gaussian mixture in 2-D and the suite's 5-D mixture `gmm5d`) the
data are standardized as a run standardizes them, the VE process takes the `points` preset's `auto`
noise range, and then, in one run:

  * teacher: the *exact* mixture score, sampled with DPM-Solver++(2M) at 10 and 20 NFE, EDM's Heun at
    35 NFE and Euler-Maruyama at 1000 NFE;
  * CD: a consistency model (the points preset's MLP, `models.consistency`) distilled from the exact
    score (`training.consistency`, method cd), sampled in 1, 2, 4 and 8 steps (`samplers.consistency`);
  * CT: the same network trained from data alone (method ct), same steps;
  * optionally (`--trained`) a teacher *trained* on 20000 points with the points preset (its run folder),
    its samplers, and CD from it through the same recipe as `scoregen distill` (`runs.distill`).

Each line: NFE, energy distance of 2000 samples to a fixed 2000-point reference, as a ratio to the
noise floor (fresh true samples of the same size), the largest component-share deviation in points,
and the wall time of distillation / sampling.

    python benchmarks/distill.py [--members seed,gmm5d] [--methods cd,ct] [--steps 4000] [--threads 2] [--trained]
                                 [--json out.json] [--two-step-sigmas 1,2,4] [KEY=VALUE loss options]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from scoregen.data.suite import SUITE
from scoregen.evaluation.metrics import component_shares, energy_distance, noise_floor
from scoregen.models.consistency import ConsistencyModel
from scoregen.models.edm import estimate_sigma_data
from scoregen.models.nets import build_net
from scoregen.process.distributions import seed_mixture
from scoregen.runs import config as C
from scoregen.runs.recipe import build_sde
from scoregen.sampling.samplers import get_sampler
from scoregen.training.losses import make_loss
from scoregen.training.trainer import Normalizer, TrainConfig, Trainer

N_EVAL = 2000
TEACHER = [("dpmpp2m", {"steps": 10}), ("dpmpp2m", {"steps": 20}), ("heun", {"steps": 18}),
           ("euler_maruyama", {"steps": 1000})]
CM_STEPS = (1, 2, 4, 8)


def mixture_of(name: str):
    if name == "seed":
        return seed_mixture()
    member = SUITE.get(name)
    if member is None or member.mixture is None:
        raise SystemExit(f"unknown mixture {name!r}: 'seed' or a suite mixture ({[k for k, m in SUITE.items() if m.mixture]})")
    return member.mixture


def student(sde, data, preset):
    """The points preset's network as a consistency model (sigma_data: the standardized data's std)."""
    torch.manual_seed(0)
    m = {k: v for k, v in preset["model"].items() if k not in ("net", "parameterization", "cond", "scale_by_std", "scale_input")}
    net = build_net(preset["model"].get("net", "mlp"), dim=data.shape[1], **m)
    return ConsistencyModel(net, sde, sigma_data=estimate_sigma_data(data))


def judge(samples_model_units, norm, mix, ref, floor) -> dict:
    x = norm.inverse(samples_model_units).double()
    ed = energy_distance(x, ref)
    dev = component_shares(x, mix)["max_abs_deviation"]
    return {"ed_ratio": ed / floor, "share_dev_pts": 100 * dev}


def sample_with(name, score_fn, sde, dim, opts, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = sde.prior_sample((N_EVAL, dim), generator=g)
    t0 = time.perf_counter()
    res = get_sampler(name)(score_fn, sde, x, generator=g, **opts)
    return res, time.perf_counter() - t0


def distill(method, model, data, sde, teacher, steps, options, lr=1e-3) -> tuple:
    loss = make_loss("consistency", sde, method=method, teacher=teacher, sigma_data=model.sigma_data, **options)
    tc = TrainConfig(steps=steps, batch_size=256, lr=lr, lr_decay="cosine", normalize=False, ema_decay=0.999,
                     progress=False, log_every=500)
    t0 = time.perf_counter()
    tr = Trainer(model, data, tc, loss=loss).fit()
    return tr, time.perf_counter() - t0


def run_member(name, steps, options, methods, two_step_sigmas=(), lr=1e-3, skip_teacher=False) -> list[dict]:
    mix = mixture_of(name)
    preset = C.load_config("points")
    raw = mix.sample(20000, generator=torch.Generator().manual_seed(1)).float()
    norm = Normalizer.fit(raw)
    data = norm(raw)
    sde = build_sde({"name": "ve", "sigma_min": "auto", "sigma_max": "auto"}, data)
    exact = mix.affine(norm.mean.double().reshape(-1).numpy(), norm.scale)  # the law of (x - m) / s: model units
    teacher = exact.score_fn(sde)
    ref = mix.sample(N_EVAL, generator=torch.Generator().manual_seed(7)).double()
    floor = noise_floor(energy_distance, lambda n, s: mix.sample(n, generator=torch.Generator().manual_seed(s)).double(),
                        N_EVAL, N_EVAL, repeats=10)["mean"]
    rows = []

    def line(kind, nfe, res, secs, extra=""):
        r = {"member": name, "kind": kind, "nfe": nfe, **judge(res.samples, norm, mix, ref, floor), "seconds": secs}
        rows.append(r)
        print(f"{name:6s} {kind:22s} NFE {nfe:5d}  ED/floor {r['ed_ratio']:7.2f}  share dev {r['share_dev_pts']:5.1f} pts"
              f"  {secs:7.1f} s {extra}", flush=True)

    for s_name, opts in ([] if skip_teacher else TEACHER):
        res, secs = sample_with(s_name, teacher, sde, data.shape[1], opts)
        line(f"exact score {s_name}", res.nfe, res, secs)
    for method in methods:
        tr, secs = distill(method, student(sde, data, preset), data, sde, teacher if method == "cd" else None, steps,
                           options, lr)
        print(f"{name:6s} {method} training: {steps} steps in {secs:.1f} s", flush=True)
        for k in CM_STEPS:
            res, s2 = sample_with("consistency", tr.ema.score_fn(), sde, data.shape[1],
                                  {"steps": k, "sigma_data": tr.ema.sigma_data})
            line(f"{method} ({steps} steps)", res.nfe, res, s2, f"(training {secs:.0f} s)")
        for sig in two_step_sigmas:
            res, s2 = sample_with("consistency", tr.ema.score_fn(), sde, data.shape[1], {"steps": 2, "sigmas": [sig]})
            line(f"{method} 2-step sigma={sig:g}", res.nfe, res, s2)
    return rows


def run_trained(name, steps, workdir) -> list[dict]:
    """A teacher trained with the points preset on 20000 draws, its best sampler, and CD from it (CLI recipe)."""
    import tempfile
    from pathlib import Path

    from scoregen.runs.distill import distill_config
    from scoregen.runs.recipe import train_run
    from scoregen.runs.run import Run

    mix = mixture_of(name)
    work = Path(workdir or tempfile.mkdtemp(prefix="distill-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.npy"
    np.save(path, mix.sample(20000, generator=torch.Generator().manual_seed(1)).numpy())
    ref = mix.sample(N_EVAL, generator=torch.Generator().manual_seed(7)).double()
    floor = noise_floor(energy_distance, lambda n, s: mix.sample(n, generator=torch.Generator().manual_seed(s)).double(),
                        N_EVAL, N_EVAL, repeats=10)["mean"]
    rows = []

    def line(kind, run, sampler, opts):
        t0 = time.perf_counter()
        res = run.sample(N_EVAL, sampler, seed=3, **opts)
        x = res.samples.double()
        r = {"member": name, "kind": kind, "sampler": sampler, "nfe": res.nfe, "ed_ratio": energy_distance(x, ref) / floor,
             "share_dev_pts": 100 * component_shares(x, mix)["max_abs_deviation"], "seconds": time.perf_counter() - t0}
        rows.append(r)
        print(f"{name:6s} {kind:22s} {sampler:15s} NFE {r['nfe']:5d}  ED/floor {r['ed_ratio']:7.2f}  share dev "
              f"{r['share_dev_pts']:5.1f} pts", flush=True)

    t0 = time.perf_counter()
    cfg = C.load_config("points", [f"data.name={path}"])
    train_run(cfg, work / "teacher", progress=False)
    print(f"{name:6s} trained teacher (points preset, 20000 points) in {time.perf_counter() - t0:.0f} s", flush=True)
    teacher = Run.open(work / "teacher")
    for s_name, opts in TEACHER:
        line("trained teacher", teacher, s_name, opts)
    t0 = time.perf_counter()
    train_run(distill_config(work / "teacher", "cd", steps), work / "cd", progress=False)
    print(f"{name:6s} cd from the trained teacher: {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    student = Run.open(work / "cd")
    for k in CM_STEPS:
        line(f"cd of trained ({steps})", student, "consistency", {"steps": k})
    best = min(r["ed_ratio"] for r in rows if r["kind"] == "trained teacher")
    two = next(r["ed_ratio"] for r in rows if r["kind"].startswith("cd of") and r["nfe"] == 2)
    print(f"{name:6s} 2-NFE consistency / teacher's best = {two / best:.2f}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", default="seed,gmm5d")
    p.add_argument("--methods", default="cd,ct")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--two-step-sigmas", default="", help="also sample 2 steps with these intermediate levels (model units)")
    p.add_argument("--no-teacher-lines", action="store_true", help="skip the exact-score sampler lines")
    p.add_argument("--trained", action="store_true", help="also: a teacher trained with the points preset, and CD from it")
    p.add_argument("--workdir", default=None, help="where --trained keeps its runs (default: a temporary folder)")
    p.add_argument("options", nargs="*", metavar="KEY=VALUE", help="consistency loss options, e.g. target_decay=0.95")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    options = dict(C.parse_key_value(o) for o in a.options)
    print("command: python benchmarks/distill.py " + " ".join(sys.argv[1:]), flush=True)
    rows = []
    for name in a.members.split(","):
        rows += run_member(name, a.steps, options, a.methods.split(","),
                           [float(v) for v in a.two_step_sigmas.split(",") if v], a.lr, a.no_teacher_lines)
        if a.trained:
            rows += run_trained(name, a.steps, a.workdir and f"{a.workdir}/{name}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
