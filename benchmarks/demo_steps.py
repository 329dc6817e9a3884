"""Energy distance over the noise floor against the step count, for each sampler of `scoregen demo`.

The measurement behind the step counts of `scoregen.cli.demo.DEMO_SAMPLERS`: on a trained demo run
(`scoregen demo --out DIR` writes DIR/run), each sampler at each candidate setting draws the demo's
n = 1000 samples with several seeds; their energy distance to the demo's reference (5000 fresh
mixture draws, seed 10000 + the demo's seed) is divided by the demo's noise floor mean (a fresh
sample of n against the reference size, 20 repeats). Prints one line per setting: NFE, seconds,
ED/floor per seed, their mean and max.

At n = 1000 that ratio is noisy (the floor's own sd is about 0.67 of its mean), so `--big N` measures
what it estimates instead: each setting draws N samples (one seed), their energy distance V to
2N fresh draws, and the excess D = V - E|X - X'| (1/N + 1/2N) over the V-statistic's bias (for exact
samples E[V] is that bias: `metrics.energy_distance`). D is the sampler's population energy distance
to the truth (its sd is about 0.67 of the bias, 0.0006 at N = 10000), and 1 + D / floor mean is the
ED/floor the demo's n = 1000 gives on average: the number each setting is judged by.

    python benchmarks/demo_steps.py DIR/run [--seeds 0 1 2] [--demo-seed 0] [--threads 1]
        [--only euler_maruyama pc] [--json out.json]
    python benchmarks/demo_steps.py DIR/run --big 10000 [--only ...] [--exact] [--extra '["pc", {"steps": 50}]']
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from scoregen.data.points import dataset_mixture, reference_sampler
from scoregen.evaluation.metrics import _mean_distance, energy_distance, noise_floor
from scoregen.runs.run import Run

#: (sampler, options) candidates; a sampler's lines run from cheap to the demo's earlier setting
CANDIDATES = [
    ("dpmpp2m", {"steps": 10}), ("dpmpp2m", {"steps": 15}), ("dpmpp2m", {"steps": 25}),
    ("heun", {"steps": 10}), ("heun", {"steps": 15}), ("heun", {"steps": 25}),
    ("ddim", {"steps": 25}), ("ddim", {"steps": 50}), ("ddim", {"steps": 100}),
    ("ode", {"rtol": 1e-3, "atol": 1e-3}), ("ode", {"rtol": 1e-4, "atol": 1e-4}), ("ode", {}),
    *[(name, {"steps": k}) for name in ("reverse_diffusion", "euler_maruyama", "ancestral")
      for k in (100, 200, 500, 1000)],
    *[("pc", {"steps": k, "snr": 0.05}) for k in (100, 200, 500)],
    *[("annealed_langevin", {"steps": k}) for k in (5, 10, 20, 40)],
    ("langevin", {"steps": 250, "step_size": 0.003}), ("langevin", {"steps": 1000, "step_size": 0.003}),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--demo-seed", type=int, default=0, help="the demo's --seed (sets its reference)")
    p.add_argument("--data", default="seed")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", default=None, help="these samplers only")
    p.add_argument("--extra", nargs="*", default=[], help="settings as JSON, '[\"pc\", {\"steps\": 50}]': these (with --only's candidates) instead of all")
    p.add_argument("--big", type=int, default=None, help="population mode: N samples per setting (see above)")
    p.add_argument("--exact", action="store_true", help="sample with the data's exact score in place of the network "
                   "(same process and units): the samplers' own discretization error, apart from the model's")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    run = Run.open(a.run)
    if a.exact:
        law = dataset_mixture(a.data).affine(run.normalizer.mean.double(), run.normalizer.scale)  # in model units
        exact_fn = law.score_fn(run.sde)
        run.score_fn = lambda label=None, guidance=None: exact_fn
    draw = reference_sampler(a.data)
    reference = torch.as_tensor(draw(5000, 10_000 + a.demo_seed), dtype=torch.float64)
    floor = noise_floor(energy_distance, draw, a.n, len(reference), repeats=20)
    print(f"run {a.run}: step {run.meta['step']}; floor mean {floor['mean']:.4f} sd {floor['std']:.4f} "
          f"p95 {floor['p95']:.4f}; seeds {a.seeds}; {a.threads} thread(s)")
    if a.big:
        big_ref = torch.as_tensor(draw(2 * a.big, 20_000 + a.demo_seed), dtype=torch.float64)
        exx = _mean_distance(big_ref, big_ref) * len(big_ref) / (len(big_ref) - 1)  # E|X - X'|, no zero pairs
        bias = exx * (1 / a.big + 1 / len(big_ref))
        exact = energy_distance(torch.as_tensor(draw(a.big, 30_000), dtype=torch.float64), big_ref) - bias
        print(f"population mode: N = {a.big} against {len(big_ref)}; E|X - X'| {exx:.4f}, bias {bias:.5f}; "
              f"fresh exact draws: D {exact:+.5f} (should be ~0 +- {0.67 * bias:.5f})")
    extra = [tuple(json.loads(e)) for e in a.extra]
    todo = [c for c in CANDIDATES if a.only and c[0] in a.only] if extra else \
        [c for c in CANDIDATES if not a.only or c[0] in a.only]
    rows = []
    for name, opts in todo + extra:
        if name == "langevin":  # as the demo runs it: one level, noise std 0.05
            opts = {**opts, "t": round(float(run.sde.t_from_std(torch.tensor(0.05, dtype=torch.float64))), 5)}
        if a.big:
            t0 = time.perf_counter()
            res = run.sample(a.big, name, seed=a.seeds[0] + 100, **opts)
            secs = time.perf_counter() - t0
            d = energy_distance(res.samples, big_ref) - bias
            row = {"sampler": name, "options": opts, "nfe": res.nfe, "seconds": secs, "D": d,
                   "expected_ed_over_floor": 1 + d / floor["mean"]}
            rows.append(row)
            print(f"{name:18s} {json.dumps(opts):42s} NFE {res.nfe:5d} {secs:6.2f}s  D {d:+.5f}  "
                  f"expected ED/floor at n={a.n}: {row['expected_ed_over_floor']:.2f}", flush=True)
            continue
        ratios, secs, nfe = [], 0.0, 0
        for s in a.seeds:
            t0 = time.perf_counter()
            res = run.sample(a.n, name, seed=s, **opts)
            secs += time.perf_counter() - t0
            nfe = res.nfe
            ratios.append(energy_distance(res.samples, reference) / floor["mean"])
        row = {"sampler": name, "options": opts, "nfe": nfe, "seconds": secs / len(a.seeds),
               "ed_over_floor": ratios, "mean": float(np.mean(ratios)), "max": float(np.max(ratios))}
        rows.append(row)
        print(f"{name:18s} {json.dumps(opts):42s} NFE {nfe:5d} {row['seconds']:6.2f}s  ED/floor "
              f"{' '.join(f'{r:5.2f}' for r in ratios)}  mean {row['mean']:.2f} max {row['max']:.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"run": a.run, "floor": floor, "seeds": a.seeds, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
