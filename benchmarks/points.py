"""Benchmark the point pipeline on the seed recipe: 300 points of the 3-Gaussian mixture, 6000 steps.

Prints training time, the relative error of the learned score against the exact one per noise
level, and for every sampler its NFE, wall time, energy distance to the true mixture (n = 1000
samples against 5000 fresh mixture samples, mean +- sd over seeds) beside the noise floor (a fresh
mixture sample of 1000), and the component shares.

    python benchmarks/points.py [--steps 6000] [--threads 2] [--seeds 3] [--json out.json] [KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from scoregen import config as C
from scoregen.data import reference_sampler
from scoregen.distributions import seed_mixture
from scoregen.metrics import component_shares, energy_distance, noise_floor
from scoregen.recipe import sample_run, train_run
from scoregen.train import load_run

SAMPLERS = [
    ("dpmpp2m", {"steps": 10}), ("dpmpp2m", {"steps": 25}), ("dpmpp3m", {"steps": 25}), ("heun", {"steps": 25}),
    ("ddim", {"steps": 50}), ("ode", {}), ("ode_heun", {"steps": 100}),
    ("euler_maruyama", {"steps": 1000}), ("reverse_diffusion", {"steps": 1000}), ("ancestral", {"steps": 1000}),
    ("pc", {"steps": 500, "snr": 0.05}), ("annealed_langevin", {}),
]


def score_errors(run_dir, times=(0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0), n=4000):
    """Relative RMS error ||s_theta - s|| / ||s|| on x ~ p_t, in the model's standardized units."""
    model, sde, normalizer, _ = load_run(run_dir)
    m = seed_mixture().affine(normalizer.mean.double(), normalizer.scale)
    g = torch.Generator().manual_seed(7)
    out = {}
    for t in times:
        tt = torch.full((n,), t, dtype=torch.float64)
        x0 = m.sample(n, generator=g)
        x = sde.perturb(x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        exact = m.score(x, sde.alpha(tt), sde.std(tt))
        with torch.no_grad():
            learned = model(x.float(), tt.float()).double()
        rel = float((learned - exact).pow(2).sum(1).mean().sqrt() / exact.pow(2).sum(1).mean().sqrt())
        out[f"{t:g}"] = {"std": float(sde.std(tt[:1])), "relative_error": rel}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--run-dir", default="/tmp/scoregen-bench-points")
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print("command: python benchmarks/points.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    cfg = C.load_config("points", [f"train.steps={a.steps}"] + a.overrides)
    t0 = time.perf_counter()
    trainer = train_run(cfg, a.run_dir, resume=False, progress=False)
    train_s = time.perf_counter() - t0
    loss = float(np.mean(trainer.loss_history[-500:]))
    print(f"\ntraining: {a.steps} steps, batch {cfg['train']['batch_size']}, {train_s:.1f} s, final loss {loss:.4f}")

    errs = score_errors(a.run_dir)
    print("\nrelative score error vs the exact mixture score (standardized units):")
    for t, e in errs.items():
        print(f"  t={t:>5s}  std={e['std']:8.4f}  rel.err={e['relative_error']:.4f}")

    mix = seed_mixture()
    ref = mix.sample(5000, generator=torch.Generator().manual_seed(12345))
    floor = noise_floor(energy_distance, reference_sampler("mixture"), 1000, 5000, repeats=50)
    print(f"\nnoise floor (fresh mixture sample of 1000 vs 5000): {floor['mean']:.4f} +- {floor['std']:.4f}, "
          f"p95 {floor['p95']:.4f}")
    print(f"\n{'sampler':18s} {'steps':>5s} {'NFE':>5s} {'sec':>7s}  {'energy distance':>17s}  shares")
    rows = []
    for name, opts in SAMPLERS:
        eds, secs, shares = [], [], []
        for s in range(a.seeds):
            t1 = time.perf_counter()
            res = sample_run(a.run_dir, n=1000, sampler=name, seed=100 + s, **opts)
            secs.append(time.perf_counter() - t1)
            eds.append(energy_distance(res.samples, ref))
            shares.append(component_shares(res.samples, mix)["shares"])
        sh = np.mean(shares, 0)
        row = {"sampler": name, "options": opts, "nfe": res.nfe, "seconds": float(np.mean(secs)),
               "energy_distance": float(np.mean(eds)), "energy_distance_sd": float(np.std(eds)),
               "shares": sh.tolist(), "max_share_deviation": float(np.abs(sh - 1 / 3).max())}
        rows.append(row)
        print(f"{name:18s} {str(opts.get('steps', '-')):>5s} {res.nfe:5d} {row['seconds']:7.2f}  "
              f"{row['energy_distance']:.4f} +- {row['energy_distance_sd']:.4f}  {np.round(sh, 3).tolist()}")
    best = min(rows, key=lambda r: r["energy_distance"])
    print(f"\nbest: {best['sampler']} {best['options']} energy distance {best['energy_distance']:.4f} "
          f"(floor p95 {floor['p95']:.4f}), max share deviation {best['max_share_deviation']:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"train_seconds": train_s, "final_loss": loss, "score_errors": errs, "floor": floor,
                       "samplers": rows, "config": cfg}, f, indent=2)


if __name__ == "__main__":
    main()
