"""Post-hoc EMA, measured: the reconstruction against EMAs tracked directly, and quality against EMA length.

    python benchmarks/posthoc_ema.py --check                       # train a point run, track 0.08 and 0.2 directly
    python benchmarks/posthoc_ema.py --run runs/mnist-ema --sigma-rels 0.03 0.05 0.08 0.12 0.2 --n 1000

--check trains the seed mixture (points preset, train.posthoc_ema=[0.05,0.1], a snapshot every 50 steps)
while a callback tracks power EMAs of lengths 0.08 and 0.2 directly, then prints each one's largest
difference from its least-squares reconstruction beside the fit's relative residual.

--run RUN samples a run trained with train.posthoc_ema at each --sigma-rels (and its own EMA, "run"),
with one sampler, seed and n, and prints the run's quality measure for each: classifier FID against
the test split for MNIST-like images, energy distance to fresh draws for named point sets (both with
their floor, `evaluation.harness`). The JSON goes to --out.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from scoregen.evaluation.harness import image_evaluator, point_evaluator
from scoregen.runs import config as C
from scoregen.runs.recipe import is_point_data, train_run
from scoregen.runs.run import Run
from scoregen.training import posthoc_ema as P


def check(out_dir: Path, steps: int) -> list[dict]:
    run = out_dir / "mix-ema"
    cfg = C.load_config("points", ["data.name=seed", f"train.steps={steps}", "train.posthoc_ema=[0.05,0.1]",
                                   "train.posthoc_every=50", "train.callback_every=1"])
    probe = {}

    def track(trainer, step):
        probe.setdefault("ema", P.PowerEMA(trainer.model, [0.08, 0.2])).update(trainer.model, step)

    t0 = time.perf_counter()
    trainer = train_run(cfg, run, resume=False, progress=False, callback=track)
    print(f"trained {trainer.step} steps in {time.perf_counter() - t0:.0f} s")
    rows = []
    for j, s in enumerate((0.08, 0.2)):
        plan = P.combination(run, s)
        rec, direct = P.reconstruct(run, s, plan=plan), probe["ema"].tracks[j]
        rows.append({"sigma_rel": s, "step": plan["step"], "snapshots": len(plan["files"]),
                     "relative_residual": plan["relative_residual"],
                     "max_abs_difference": max(float((rec[k] - direct[k]).abs().max()) for k in direct),
                     "max_abs_weight": max(float(direct[k].abs().max()) for k in direct)})
        print("  sigma_rel {sigma_rel}: step {step}, {snapshots} snapshots, relative residual "
              "{relative_residual:.2e}, max |reconstructed - direct| {max_abs_difference:.2e} "
              "(weights up to {max_abs_weight:.2f})".format(**rows[-1]))
    return rows


def quality(run_dir: Path, sigma_rels, n: int, sampler: str, steps: int, seed: int) -> dict:
    cfg = C.load_config(run_dir / "config.yaml", validate=False)
    name = cfg["data"]["name"]
    if is_point_data(name):
        metric, fn, floor = point_evaluator(name, n, seed)
    else:
        metric, fn, floor = image_evaluator(name, run_dir, cfg["data"].get("data_dir"), seed)
    rows = []
    for s in [None, *sigma_rels]:
        run = Run.open(run_dir, ema_sigma_rel=s)
        value = fn(run.sample(n, sampler, steps=steps, seed=seed).samples)
        ema = run.meta.get("posthoc_ema") or {}
        rows.append({"sigma_rel": s, "value": value, "relative_residual": ema.get("relative_residual")})
        print(f"  {'run' if s is None else s:>6}: {metric} {value:.4g}"
              + (f"   (fit residual {ema['relative_residual']:.1e})" if ema else "   (the run's own EMA)"))
    print(f"  floor: {floor}")
    return {"metric": metric, "floor": floor, "sampler": sampler, "steps": steps, "n": n, "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="train a point run and compare with EMAs tracked directly")
    p.add_argument("--check-steps", type=int, default=4000)
    p.add_argument("--run", type=Path, help="a run trained with train.posthoc_ema")
    p.add_argument("--sigma-rels", type=float, nargs="+", default=[0.03, 0.05, 0.08, 0.12, 0.2])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--sampler", default="dpmpp2m")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("posthoc_ema.json"))
    args = p.parse_args(argv)
    report = {}
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            report["check"] = check(Path(tmp), args.check_steps)
    if args.run is not None:
        report["quality"] = quality(args.run, args.sigma_rels, args.n, args.sampler, args.steps, args.seed)
    if not report:
        p.error("give --check, --run RUN or both")
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
