"""Sample quality against NFE for every sampler, with the exact score of the seed's 3-Gaussian mixture.

The mixture is standardized, (x - mean) / sqrt(tr Cov / D), so the VE prior N(0, 50^2 I) and the VP /
sub-VP priors N(0, I) all match p_T. Each sampler starts from prior draws and stops at t = eps; its
samples (n = 2000) are scored by the energy distance (scoregen.metrics) to fresh draws of the exact
noised marginal p_eps (n = 2000), so only the solver's error is measured. Each cell is the mean over
`--repeats` independent runs. A sampler "reaches the floor" at the smallest NFE whose mean is at most
floor_mean + 2 floor_std / sqrt(repeats), the floor being the same statistic between two fresh
samples of p_eps (`metrics.noise_floor`, 20 repeats).

    python benchmarks/samplers.py                      # VE, VP, sub-VP; ~10 min on one core
    python benchmarks/samplers.py --sde vp --repeats 2 --samplers dpmpp2m heun
    python benchmarks/samplers.py --run RUN_DIR --budgets 10 20 50 100 200 1000   # a trained point model
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoregen.evaluation import metrics  # noqa: E402
from scoregen.process.distributions import GaussianMixture, seed_mixture  # noqa: E402
from scoregen.process.sde import make_sde  # noqa: E402
from scoregen.sampling.samplers import get_sampler, steps_for_nfe  # noqa: E402

#: label -> (registry name, options); NFE budgets become step counts through samplers.steps_for_nfe.
SAMPLERS = {
    "euler_maruyama": ("euler_maruyama", {}),
    "reverse_diffusion": ("reverse_diffusion", {}),
    "ode_euler": ("ode_euler", {}),
    "ode_heun": ("ode_heun", {}),
    "ddim": ("ddim", {}),
    "ddim_eta1": ("ddim", {"eta": 1.0}),
    "dpmpp2m": ("dpmpp2m", {}),
    "dpmpp3m": ("dpmpp3m", {}),
    "dpmpp2s": ("dpmpp2s", {}),
    "heun": ("heun", {}),
    "heun_churn": ("heun", {"churn": 10.0}),
}
BUDGETS = [4, 6, 8, 10, 12, 16, 20, 25, 32, 50, 100, 200, 400, 1000]


def standardized_mixture() -> GaussianMixture:
    mix = seed_mixture()
    return mix.affine(mix.mean(), math.sqrt(float(torch.trace(mix.covariance())) / mix.dim))


def noised(mix: GaussianMixture, sde, t: float) -> GaussianMixture:
    """The exact marginal p_t of the mixture: components N(alpha mu_k, alpha^2 S_k + std^2 I)."""
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = float(sde.alpha(tt)), float(sde.std(tt))
    eye = torch.eye(mix.dim, dtype=torch.float64)
    return GaussianMixture(mix.weights, a * mix.means, a * a * mix.covs + s * s * eye)


def run_sampler(label, score_fn, sde, n, nfe, seed, options=None):
    name, opts = SAMPLERS[label]
    opts = {**opts, **(options or {})}
    g = torch.Generator().manual_seed(seed)
    x = sde.prior_sample((n, 2), generator=g, dtype=torch.float64)
    with torch.no_grad():
        res = get_sampler(name)(score_fn, sde, x, steps=steps_for_nfe(name, nfe, **opts), generator=g, **opts)
    return res.samples, res.nfe


def quality_table(score_fn, sde, ref_sampler, labels, budgets, n, repeats, floor, options=None, log=print):
    """{label: [{"nfe", "energy_distance", "std", "seconds"}, ...]} and the NFE at which each reaches the floor."""
    threshold = floor["mean"] + 2 * floor["std"] / math.sqrt(repeats)
    table, reached = {}, {}
    for label in labels:
        rows = []
        for budget in budgets:
            if budget < 2 and label in ("ode_heun", "dpmpp2s"):
                continue
            t0, eds, nfe = time.perf_counter(), [], None
            for r in range(repeats):
                x, nfe = run_sampler(label, score_fn, sde, n, budget, seed=1000 * r + budget, options=options)
                eds.append(metrics.energy_distance(x, ref_sampler(n, 7919 * r + budget)))
            row = {"nfe": nfe, "energy_distance": float(np.mean(eds)),
                   "std": float(np.std(eds, ddof=1)) if repeats > 1 else 0.0,
                   "seconds": (time.perf_counter() - t0) / repeats}
            rows.append(row)
            if label not in reached and row["energy_distance"] <= threshold:
                reached[label] = nfe
        table[label] = rows
        log(f"  {label:18s} " + " ".join(f"{r['nfe']:>4d}:{r['energy_distance']:.4f}" for r in rows)
            + f"   floor at NFE {reached.get(label, '>' + str(budgets[-1]))}")
    return table, reached, threshold


def exact_mixture_benchmark(args):
    mix = standardized_mixture()
    results = {}
    for name in args.sde:
        sde = make_sde(name)
        target = noised(mix, sde, sde.eps)
        ref = lambda n, seed: target.sample(n, generator=torch.Generator().manual_seed(int(seed))).numpy()  # noqa: E731
        floor = metrics.noise_floor(metrics.energy_distance, ref, args.n, args.n, repeats=20)
        print(f"\n{sde!r}: energy distance (n={args.n} vs n={args.n} of p_eps), floor {floor['mean']:.4f} "
              f"+- {floor['std']:.4f}; cells are NFE:mean over {args.repeats} runs")
        opts = {"schedule": args.schedule} if args.schedule else None
        table, reached, thr = quality_table(mix.score_fn(sde), sde, ref, args.samplers, args.budgets, args.n,
                                            args.repeats, floor, opts)
        results[name] = {"floor": floor, "threshold": thr, "table": table, "nfe_to_floor": reached}
    return results


def trained_benchmark(args):
    """A trained run's samples (data units) against fresh draws of its data, through `scoregen compare`'s
    machinery; a folder without a checkpoint is first trained with the `points` preset."""
    from scoregen.evaluation import compare_summary as summarize, measure, point_evaluator
    from scoregen.runs import config, recipe

    run = Path(args.run)
    if not (run / "checkpoint.pt").exists():
        print(f"training the 'points' preset into {run} ({' '.join(args.train_overrides) or 'no overrides'})")
        t0 = time.perf_counter()
        recipe.train_run(config.load_config("points", args.train_overrides), run, progress=False)
        print(f"trained in {time.perf_counter() - t0:.0f} s")
    data = recipe.load_run_config(run)["data"]["name"]
    samplers = [SAMPLERS[s][0] for s in args.samplers if not SAMPLERS[s][1]]
    results = {}
    for r in range(args.repeats):
        metric, evaluate, floor = point_evaluator(data, args.n, seed=r)
        print(f"\n{run}: {metric} of n={args.n} samples of {data!r} against NFE (repeat {r})")
        results[r] = {"floor": floor, "table": measure(run, samplers, args.budgets, args.n, evaluate, seed=r)}
    table = {s: [dict(row, value=float(np.mean([results[r]["table"][s][i]["value"] for r in results])))
                 for i, row in enumerate(results[0]["table"][s])] for s in samplers}
    floor = {"mean": float(np.mean([results[r]["floor"]["mean"] for r in results])),
             "std": float(np.mean([results[r]["floor"]["std"] for r in results])) / math.sqrt(args.repeats)}
    summary = summarize(table, floor)
    print(f"\nmean over {args.repeats} repeats; floor {floor['mean']:.4f} "
          f"(+2 std of the mean: {summary['floor_threshold']:.4f})")
    best = summary["best_at_largest_budget"]["value"]
    for s, rows in table.items():
        mark = summary["samplers"][s]
        print(f"  {s:18s} " + " ".join(f"{row['nfe']:>4d}:{row['value']:.4f}" for row in rows)
              + f"   within 10% of best {best:.4f} at NFE {mark['nfe_within_10pct_of_best']}, "
              f"floor at NFE {mark['nfe_at_floor']}")
    return {"run": str(run), "floor": floor, "table": table, "summary": summary}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sde", nargs="+", default=["ve", "vp", "subvp"], choices=["ve", "vp", "subvp"])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--budgets", nargs="+", type=int, default=BUDGETS, help="NFE budgets")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--schedule", default=None,
                   help="override every fast sampler's schedule (uniform_t, log_std, log_snr, edm)")
    p.add_argument("--run", default=None, help="a training run directory: benchmark its model instead "
                   "(trained first with the 'points' preset if it holds no checkpoint)")
    p.add_argument("--train-overrides", nargs="*", default=[], help="config overrides for that training, key=value")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    given = argv if argv is not None else sys.argv[1:]
    print("command: python benchmarks/samplers.py " + " ".join(shlex.quote(a) for a in given))
    if args.schedule:
        fast = ("ddim", "ddim_eta1", "dpmpp2m", "dpmpp3m", "dpmpp2s", "heun", "heun_churn")
        args.samplers = [s for s in args.samplers if s in fast]
    results = trained_benchmark(args) if args.run else exact_mixture_benchmark(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
