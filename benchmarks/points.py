"""Benchmark the point pipeline on the seed recipe (300 points of the 3-Gaussian mixture) beside the seed's own loop.

First, in the same process and with the same threads, the training loop of seed 002 (rewritten
here: a 4-layer SiLU MLP on [x, sinusoidal(log sigma)], sigma log-uniform in [0.05, 5], the
sigma^2-weighted DSM loss, Adam 2e-3, batch 256, 6000 steps) and its reverse-VE-SDE sampler (400
Euler-Maruyama steps from N([2, 4], 25 I)), timed, with its samples' energy distance; then
scoregen's `points` preset with its defaults, timed to the end of training, and its default
sampler's energy distance. The ratio of the two training times is the speed claim; "at the floor"
means an energy distance below the floor's 95th percentile.

Then it prints the relative error of the learned score against the exact one per noise
level, and for every sampler its NFE, wall time, energy distance to the true mixture (n = 1000
samples against 5000 fresh mixture samples, mean +- sd over seeds) beside the noise floor (a fresh
mixture sample of 1000), and the component shares.

    python benchmarks/points.py [--steps N] [--threads 2] [--seeds 3] [--json out.json] [--samplers a,b] [KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from scoregen.runs import config as C
from scoregen.data.points import reference_sampler
from scoregen.process.distributions import seed_dataset, seed_mixture
from scoregen.evaluation.metrics import component_shares, energy_distance, noise_floor
from scoregen.runs.recipe import sample_run, train_run
from scoregen.training.trainer import load_run

SAMPLERS = [
    ("dpmpp2m", {"steps": 10}), ("dpmpp2m", {"steps": 25}), ("dpmpp3m", {"steps": 25}), ("heun", {"steps": 25}),
    ("ddim", {"steps": 50}), ("ode", {}), ("ode_heun", {"steps": 100}),
    ("euler_maruyama", {"steps": 1000}), ("reverse_diffusion", {"steps": 1000}), ("ancestral", {"steps": 1000}),
    ("pc", {"steps": 500, "snr": 0.05}), ("annealed_langevin", {}),
]


class SeedMLP(torch.nn.Module):
    """Seed 002's score network: MLP(2 + 64 -> 128 -> 128 -> 128 -> 2) on [x, sin/cos(log sigma * w_k)]."""

    def __init__(self, sigma_dim=64, hidden=128):
        super().__init__()
        nn = torch.nn
        self.sigma_dim = sigma_dim
        self.net = nn.Sequential(nn.Linear(2 + sigma_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x, sigma):
        half = self.sigma_dim // 2
        freqs = torch.exp(-np.log(10000) * torch.arange(half) / half)
        emb = torch.log(sigma)[:, None] * freqs
        return self.net(torch.cat([x, torch.sin(emb), torch.cos(emb)], dim=-1))


def seed_loop(data: torch.Tensor, steps=6000, batch_size=256, seed=0, sigma_min=0.05, sigma_max=5.0):
    """Seed 002's training loop as written there; returns (model, seconds)."""
    torch.manual_seed(seed)
    model = SeedMLP()
    optim = torch.optim.Adam(model.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        x0 = data[torch.randint(0, data.shape[0], (batch_size,))]
        sigma = sigma_min * (sigma_max / sigma_min) ** torch.rand(batch_size)
        eps = torch.randn_like(x0)
        pred = model(x0 + sigma[:, None] * eps, sigma)
        loss = ((sigma[:, None] * (pred + eps / sigma[:, None])) ** 2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    return model, time.perf_counter() - t0


@torch.no_grad()
def seed_reverse_sde(model, n=1000, n_steps=400, sigma_min=0.05, sigma_max=5.0, seed=0):
    """Seed 002's sampler: Euler-Maruyama on the reverse VE SDE from N([2, 4], sigma_max^2 I)."""
    g = torch.Generator().manual_seed(seed)
    sigmas = sigma_min * (sigma_max / sigma_min) ** torch.linspace(1.0, 0.0, n_steps + 1)
    x = torch.randn(n, 2, generator=g) * sigmas[0] + torch.tensor([2.0, 4.0])
    for i in range(n_steps):
        d_sigma2 = (sigmas[i] ** 2 - sigmas[i + 1] ** 2).clamp(min=0)
        x = x + d_sigma2 * model(x, sigmas[i].expand(n)) + d_sigma2.sqrt() * torch.randn(x.shape, generator=g)
    return x


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
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--run-dir", default="/tmp/scoregen-bench-points")
    p.add_argument("--json", default=None)
    p.add_argument("--samplers", default=None, help="comma-separated subset of the sampler table (default: all)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print("command: python benchmarks/points.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    mix = seed_mixture()
    ref = mix.sample(5000, generator=torch.Generator().manual_seed(12345))
    floor = noise_floor(energy_distance, reference_sampler("mixture"), 1000, 5000, repeats=50)
    print(f"\nnoise floor (fresh mixture sample of 1000 vs 5000): {floor['mean']:.4f} +- {floor['std']:.4f}, "
          f"p95 {floor['p95']:.4f}")

    data = torch.from_numpy(seed_dataset())
    seed_model, seed_s = seed_loop(data)
    seed_ed = float(np.mean([energy_distance(seed_reverse_sde(seed_model, seed=100 + s), ref) for s in range(a.seeds)]))
    cfg = C.load_config("points", ([] if a.steps is None else [f"train.steps={a.steps}"]) + a.overrides)
    t0 = time.perf_counter()
    trainer = train_run(cfg, a.run_dir, resume=False, progress=False)
    train_s = time.perf_counter() - t0
    ours_ed = float(np.mean([energy_distance(sample_run(a.run_dir, n=1000, seed=100 + s).samples, ref)
                             for s in range(a.seeds)]))
    steps = cfg["train"]["steps"]
    loss = float(np.mean(trainer.loss_history[-500:]))
    print(f"\nseed 002's loop: 6000 steps, batch 256, {seed_s:.1f} s; its reverse SDE (400 steps): energy distance "
          f"{seed_ed:.4f} ({seed_ed / floor['mean']:.1f}x the floor mean; at the floor: {seed_ed <= floor['p95']})")
    print(f"scoregen points preset: {steps} steps, batch {cfg['train']['batch_size']}, {train_s:.1f} s, final loss "
          f"{loss:.4f}; default sampler {cfg['sample']['sampler']}: energy distance {ours_ed:.4f} "
          f"({ours_ed / floor['mean']:.1f}x the floor mean; at the floor: {ours_ed <= floor['p95']})")
    print(f"training time, scoregen / seed loop: {train_s / seed_s:.2f}")

    errs = score_errors(a.run_dir)
    print("\nrelative score error vs the exact mixture score (standardized units):")
    for t, e in errs.items():
        print(f"  t={t:>5s}  std={e['std']:8.4f}  rel.err={e['relative_error']:.4f}")

    print(f"\n{'sampler':18s} {'steps':>5s} {'NFE':>5s} {'sec':>7s}  {'energy distance':>17s}  shares")
    rows = []
    wanted = None if a.samplers is None else a.samplers.split(",")
    for name, opts in [s for s in SAMPLERS if wanted is None or s[0] in wanted]:
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
            json.dump({"train_seconds": train_s, "seed_loop_seconds": seed_s, "seed_loop_energy_distance": seed_ed,
                       "energy_distance": ours_ed, "final_loss": loss, "score_errors": errs, "floor": floor,
                       "samplers": rows, "config": cfg}, f, indent=2)


if __name__ == "__main__":
    main()
