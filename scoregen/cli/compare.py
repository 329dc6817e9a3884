"""`scoregen compare RUN_DIR`: every sampler over a range of NFE -> a quality-vs-NFE table (JSON) and plot (PNG).

Each sampler gets, for each budget B in --nfe, the largest step count whose score evaluations fit in B
(`samplers.steps_for_nfe`; the NFE recorded is the one the sampler reports). Quality, lower is better:

    points   energy distance (metrics.energy_distance) of the n samples, in data units, to n fresh
             draws of the run's data distribution (one reference sample shared by every cell, so the
             cells differ only by the sampler); for a named data set also its noise floor, the same
             statistic between two fresh samples (metrics.noise_floor). A data file is its own reference.
    images   classifier FID against the test split (image_metrics.evaluate_images), with the
             test-vs-train floor at the same sizes.

The summary gives the best value at the largest budget and, for each sampler, the smallest NFE within
10% of it and the smallest NFE at the floor (mean + 2 std), the two yardsticks of issue 5.
"""
from __future__ import annotations

import json
from pathlib import Path

HELP = "quality against NFE for every sampler on a trained run: a JSON table and a PNG plot"

DEFAULT_SAMPLERS = ["ddim", "dpmpp2m", "dpmpp3m", "dpmpp2s", "heun", "ode_euler", "ode_heun", "euler_maruyama",
                    "reverse_diffusion", "pc"]
DEFAULT_NFE = {"points": [10, 20, 50, 100, 200, 1000], "images": [10, 20, 50, 100]}
WITHIN = 0.10


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (config.yaml + checkpoint.pt)")
    parser.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS, metavar="NAME",
                        help=f"samplers with a fixed cost per step (default: {' '.join(DEFAULT_SAMPLERS)})")
    parser.add_argument("--nfe", nargs="+", type=int, default=None, metavar="B",
                        help=f"NFE budgets (default points: {DEFAULT_NFE['points']}, images: {DEFAULT_NFE['images']})")
    parser.add_argument("--n", type=int, default=None, help="samples per cell (default points 2000, images 1000)")
    parser.add_argument("--data", default=None, help="reference data (default: the run's data.name)")
    parser.add_argument("--data-dir", default=None, help="images: folder holding the data files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior draws and the reference sample")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per sampler call (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:i] or auto")
    parser.add_argument("--out", default=None, metavar="DIR", help="where compare.json/.png go (default RUN_DIR)")


# --- quality measures and the table: in the library (scoregen.evaluation), re-exported here ----------
from ..evaluation.harness import compare_summary as summarize, image_evaluator, measure, point_evaluator  # noqa: E402,F401


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
    from .common import parse_device

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    cfg = load_run_config(run_dir)
    data = args.data or (cfg.get("data") or {}).get("name")
    if data is None:
        raise ValueError(f"{run_dir}/config.yaml names no data set; pass --data NAME_OR_FILE")
    kind = "points" if is_point_data(data) else "images"
    budgets = sorted(set(args.nfe or DEFAULT_NFE[kind]))
    if any(b < 1 for b in budgets):
        raise ValueError(f"--nfe budgets must be positive integers, got {budgets}")
    n = args.n or (2000 if kind == "points" else 1000)
    if n < 2:
        raise ValueError(f"--n must be at least 2, got {n}")
    if kind == "points":
        metric, evaluate, floor = point_evaluator(data, n, args.seed)
    else:
        data_dir = args.data_dir or (cfg.get("data") or {}).get("data_dir")
        metric, evaluate, floor = image_evaluator(data, run_dir, data_dir, args.seed)
    print(f"scoregen compare {run_dir}: {metric} of n={n} samples of {data!r} against NFE")
    table = measure(run_dir, args.samplers, budgets, n, evaluate, seed=args.seed, batch_size=args.batch_size,
                    device=parse_device(args.device))
    result = {"run_dir": str(run_dir), "data": str(data), "kind": kind, "metric": metric, "n": n,
              "budgets": budgets, "floor": floor or None, "table": table, "summary": summarize(table, floor or None)}
    out = Path(args.out) if args.out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1, allow_nan=False))
    plot(table, metric, floor or None, out / "compare.png", f"{run_dir.name}: {metric} vs NFE (n={n})")
    best = result["summary"]["best_at_largest_budget"]
    print(f"best at NFE {best['nfe']}: {best['sampler']} {metric}={best['value']:.4g}"
          + (f"; floor {floor['mean']:.4g} +- {floor['std']:.2g}" if floor else ""))
    for s, v in result["summary"]["samplers"].items():
        print(f"  {s:18s} within 10% of best at NFE {v['nfe_within_10pct_of_best']}, "
              f"at the floor at NFE {v['nfe_at_floor']}")
    print(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")
    return 0
