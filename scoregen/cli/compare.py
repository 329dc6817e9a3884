"""`scoregen compare RUN_DIR`: every sampler over a range of NFE -> a quality-vs-NFE table (JSON) and plot (PNG).

Each sampler gets, for each budget B in --nfe, the largest step count whose score evaluations fit in B
(`samplers.steps_for_nfe`; the NFE recorded is the one the sampler reports). Quality, lower is better:

    points   energy distance (metrics.energy_distance) of the n samples, in data units, to n fresh
             draws of the run's data distribution (one reference sample shared by every cell, so the
             cells differ only by the sampler); for a named data set also its noise floor, the same
             statistic between two fresh samples (metrics.noise_floor). A data file is its own reference.
    images   classifier FID against the test split (image_metrics.evaluate_images), with the
             test-vs-train floor at the same sizes.

The summary gives the best value at the largest budget (and the best in the whole table) and, for each
sampler, the smallest NFE within 10% of the former and the smallest NFE at the floor (mean + 2 std),
the two yardsticks of issue 5. Before sampling, the command prints an estimate of its running time
from the total NFE and the measured cost of one score evaluation.

RUN_DIR may also be a scoregen export or a diffusers folder (`runs.Run` opens all three); a diffusers
folder names no data set, so --data gives the reference (for FID: mnist or fashion-mnist, 1x28x28 images).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

HELP = "quality against NFE for every sampler on a trained run: a JSON table and a PNG plot"

DEFAULT_SAMPLERS = ["ddim", "dpmpp2m", "dpmpp3m", "dpmpp2s", "heun", "ode_euler", "ode_heun", "euler_maruyama",
                    "reverse_diffusion", "pc"]
DEFAULT_NFE = {"points": [10, 20, 50, 100, 200, 1000], "images": [10, 20, 50, 100]}

EXAMPLES = [
    "scoregen compare runs/mix",
    "scoregen compare runs/mix --samplers ddim dpmpp2m heun --nfe 10 20 50 --n 1000",
    "scoregen compare runs/mix --samplers heun --nfe 20 100 churn=40",
]


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (config.yaml + checkpoint.pt), "
                        "an export or a diffusers folder")
    parser.add_argument("--samplers", nargs="+", default=None, metavar="NAME",
                        help=f"samplers with a fixed cost per step (default: {' '.join(DEFAULT_SAMPLERS)}; "
                             "for a consistency model (`scoregen distill`) consistency first)")
    parser.add_argument("--nfe", nargs="+", type=int, default=None, metavar="B",
                        help=f"NFE budgets (default points: {DEFAULT_NFE['points']}, images: {DEFAULT_NFE['images']})")
    parser.add_argument("--n", type=int, default=None, help="samples per cell (default points 2000, images 1000)")
    parser.add_argument("--data", default=None, help="reference data (default: the run's data.name; a diffusers "
                        "folder has none: --data mnist)")
    parser.add_argument("--data-dir", default=None, help="images: folder holding the data files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior draws and the reference sample")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per sampler call (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:i] or auto")
    parser.add_argument("--out", default=None, metavar="DIR", help="where compare.json/.png go (default RUN_DIR)")
    from .common import add_sampler_options

    add_sampler_options(parser, "churn=40 for heun; every sampler compared must take each option")


# --- quality measures and the table: in the library (scoregen.evaluation), re-exported here ----------
from ..evaluation.harness import (WITHIN, cells, check_image_run, check_image_shape,  # noqa: E402,F401
                                  compare_summary as summarize, image_evaluator, measure, point_evaluator,
                                  seconds_per_evaluation)


def summary_lines(summary: dict, metric: str, floor: dict | None) -> list[str]:
    """The summary in words: never a bare None."""
    top, best = summary["best_at_largest_budget"], summary["best_overall"]
    lines = [f"best at the largest budget (NFE <= {top['budget']}): {top['sampler']} at NFE {top['nfe']}, "
             f"{metric} {top['value']:.4g}"]
    if (best["sampler"], best["nfe"]) != (top["sampler"], top["nfe"]):
        lines.append(f"best in the whole table: {best['sampler']} at NFE {best['nfe']}, {metric} {best['value']:.4g}")
    lines.append(f"noise floor {floor['mean']:.4g} +- {floor['std']:.2g} "
                 f"(at the floor: <= {summary['floor_threshold']:.4g})"
                 if floor else "no noise floor (the reference is the data file itself)")
    for s, v in summary["samplers"].items():
        within, at = v["nfe_within_10pct_of_best"], v["nfe_at_floor"]
        w = (f"within 10% of the best from NFE {within}" if within is not None
             else "never within 10% of the best")
        f = ("" if not floor else f", at the floor from NFE {at}" if at is not None
             else ", never at the floor at these budgets")
        lines.append(f"  {s:18s} {w}{f}")
    return lines


def plot(table: dict, metric: str, floor: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, rows in table.items():
        ok = [r for r in rows if r["value"] is not None]
        if ok:
            ax.plot([r["nfe"] for r in ok], [max(r["value"], 1e-12) for r in ok], "o-", ms=3, label=name)
    if floor:
        ax.axhline(floor["mean"], color="0.4", lw=1, label="noise floor")
        if floor["std"] > 0:
            ax.axhline(floor["mean"] + 2 * floor["std"], color="0.4", lw=1, ls="--", label="floor + 2 std")
    ax.set(xscale="log", yscale="log", xlabel="score evaluations (NFE)", ylabel=metric, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    from ..runs.recipe import is_point_data, load_run_config
    from ..runs.run import Run
    from .common import check_positive, parse_device, run_data, sampler_options

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    cfg = load_run_config(run_dir)
    if args.samplers is None:  # a consistency model is compared in 1, 2, 4, 8 steps beside the solvers
        consistent = (cfg.get("model") or {}).get("parameterization") == "consistency"
        args.samplers = (["consistency"] if consistent else []) + DEFAULT_SAMPLERS
        if consistent and not args.nfe:
            args.nfe = [1, 2, 4, 8] + DEFAULT_NFE["points" if is_point_data(run_data(cfg, args.data, run_dir)) else "images"]
    data = run_data(cfg, args.data, run_dir)
    kind = "points" if is_point_data(data) else "images"
    if kind == "images":  # FID needs a classifier for the data set: refused before any sampling
        check_image_run(run_dir, args.data)
    budgets = sorted(set(args.nfe or DEFAULT_NFE[kind]))
    if any(b < 1 for b in budgets):
        raise ValueError(f"--nfe budgets must be positive integers, got {budgets}")
    check_positive(n=args.n, batch_size=args.batch_size)
    n = args.n or (2000 if kind == "points" else 1000)
    if n < 2:
        raise ValueError(f"--n must be at least 2, got {n}")
    options = sampler_options(args, args.samplers)
    plan = cells(args.samplers, budgets, options)
    run = Run.open(run_dir, device=parse_device(args.device))  # loaded once for the timing and every cell
    if kind == "images":
        check_image_shape(run.shape, data, run_dir)
    total = sum(b for rows in plan.values() for b, _ in rows)
    per_eval = seconds_per_evaluation(run, n, args.batch_size)
    print(f"scoregen compare {run_dir}: {sum(map(len, plan.values()))} cells ({len(plan)} samplers x budgets "
          f"{budgets}), {total} score evaluations of n={n} in all: about {_duration(total * per_eval)} of sampling "
          f"({1000 * per_eval:.3g} ms per evaluation), plus the {'energy distances' if kind == 'points' else 'FIDs'}")
    if kind == "points":
        metric, evaluate, floor = point_evaluator(data, n, args.seed)
    else:
        data_dir = args.data_dir or (cfg.get("data") or {}).get("data_dir")
        metric, evaluate, floor = image_evaluator(data, run_dir, data_dir, args.seed)
    print(f"{metric} of n={n} samples of {data!r} against NFE")
    t0 = time.perf_counter()
    table = measure(run, args.samplers, budgets, n, evaluate, seed=args.seed, batch_size=args.batch_size,
                    options=options)
    result = {"run_dir": str(run_dir), "data": str(data), "kind": kind, "metric": metric, "n": n,
              "budgets": budgets, "options": options, "floor": floor or None, "table": table,
              "summary": summarize(table, floor or None)}
    out = Path(args.out) if args.out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1, allow_nan=False))
    plot(table, metric, floor or None, out / "compare.png", f"{run_dir.name}: {metric} vs NFE (n={n})")
    print("\n".join(summary_lines(result["summary"], metric, floor or None)))
    print(f"wrote {out / 'compare.json'} and {out / 'compare.png'} in {_duration(time.perf_counter() - t0)}")
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
