"""`scoregen likelihood RUN_DIR --data FILE|NAME`: exact NLL (and bits/dim for images) of a trained run.

The model of a run scores *normalized* data z = (x - m) / s (train.Normalizer: m per coordinate
or channel, s one scalar), so the density of the original data is, by the change of variables,

    log p_X(x) = log p_Z(z) + log |det dz/dx| = log p_Z(z) - D log s.

Points: `nll` = -log p_X(x) in nats per example, at the data's own scale. Images (a name of
images.IMAGE_DATASETS): the pixels are dequantized into the run's value range and the same
Jacobian goes into bits/dim (likelihood.bits_per_dim, which derives the offset); `nll` is then the
NLL bound of the discrete 8-bit data, bpd * D ln 2.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..likelihood import PROBES, SOLVERS
from .common import check_positive

HELP = ("exact log-likelihood (nats per example) of data under a trained run through the probability-flow ODE; "
        "for images also bits/dim")

EXAMPLES = [
    "scoregen likelihood runs/mix --data seed --exact --out nll.json",
    "scoregen likelihood runs/mix --n 200 --hutchinson 4",
]

#: what the summary says of bits/dim for points (the statistic applies to discrete images)
BPD_POINTS = "bits/dim applies to images (discrete 8-bit pixels); for points see nll_mean, nats per example"

#: number of grey levels of the 'digits' set (values 0..16); every other image set is 8-bit
_LEVELS = {"digits": 17}


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (holds checkpoint.pt), an export or a diffusers folder")
    parser.add_argument("--data", default=None, metavar="FILE|NAME",
                        help="points: a data.POINT_DATASETS name or a .npy/.csv file; images: mnist, "
                             "fashion-mnist, digits or cifar10 (default: the run's data.name)")
    div = parser.add_mutually_exclusive_group()
    div.add_argument("--exact", action="store_true", help="exact divergence (default up to 64 dimensions)")
    div.add_argument("--hutchinson", type=int, metavar="K",
                     help="Skilling-Hutchinson divergence with K probes per example (default above 64 dimensions, K=1)")
    parser.add_argument("--probe", choices=PROBES, default="rademacher", help="Hutchinson probe distribution")
    parser.add_argument("--solver", choices=SOLVERS, default="rk45", help="ODE solver (default: torch Dormand-Prince)")
    parser.add_argument("--steps", type=int, default=100, help="steps of the 'heun' solver")
    parser.add_argument("--grid", choices=("log_snr", "uniform"), default="log_snr", help="time grid of 'heun'")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--eps", type=float, default=None, help="start time of the ODE (default: the SDE's eps)")
    parser.add_argument("--n", type=int, default=None,
                        help="points: number of points (fresh draws for a named data set); images: first N images")
    parser.add_argument("--split", default="test", help="images: train or test split (default test)")
    parser.add_argument("--data-dir", default=None, help="images: folder holding the data files")
    parser.add_argument("--value-range", default=None,
                        help="images: the range the run was trained on, '0,1' or '-1,1' (default: the run's "
                             "config.yaml, else 0,1)")
    parser.add_argument("--repeats", type=int, default=1, help="images: dequantization repeats per image")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="seed of the point draws, probes and dequantization")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice; 1 is far faster on a busy shared CPU)")
    parser.add_argument("--workers", type=int, default=1,
                        help="CPU processes, each on a contiguous share of the examples with --threads threads "
                             "(default 1 each); worker k draws its noise from --seed + k. On 2 cores, 2 workers "
                             "of 1 thread do 1.5x the images per second of 1 process of 2 threads")
    parser.add_argument("--out", default=None, metavar="FILE.json",
                        help="summary and per-example values (default RUN_DIR/likelihood.json)")
    from .common import add_progress_flag

    add_progress_flag(parser)


# --- evaluation: in the library (scoregen.evaluation), re-exported here ------------------------------
from ..evaluation.harness import images_bpd, points_nll  # noqa: E402,F401


def summarize(nll, nfe, seconds, bpd=None) -> dict:
    """The summary keys: nll_mean, nll_se (nats per example), bpd_mean, bpd_se (images), nfe_mean, seconds."""

    def mean_se(v):
        v = v.double()
        se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        return float(v.mean()), se

    nll_mean, nll_se = mean_se(nll)
    bpd_mean, bpd_se = mean_se(bpd) if bpd is not None else (None, None)
    return {"nll_mean": nll_mean, "nll_se": nll_se, "bpd_mean": bpd_mean, "bpd_se": bpd_se,
            "nfe_mean": float(np.mean(nfe)), "seconds": float(seconds)}


# --- the command -------------------------------------------------------------------------------
def _options(args) -> dict:
    for name in ("rtol", "atol"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
    check_positive(batch_size=args.batch_size, repeats=args.repeats, steps=args.steps)
    if args.hutchinson is not None and args.hutchinson < 1:
        raise ValueError(f"--hutchinson K needs K >= 1 probes, got {args.hutchinson}")
    divergence = "exact" if args.exact else ("hutchinson" if args.hutchinson else "auto")
    return {"divergence": divergence, "n_probes": args.hutchinson or 1, "probe": args.probe, "solver": args.solver,
            "steps": args.steps, "grid": args.grid, "rtol": args.rtol, "atol": args.atol, "eps": args.eps}


def run(args) -> int:
    from ..runs.recipe import load_run_config
    from .common import parse_device

    run_dir = Path(args.run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    if args.data is None:
        from .common import run_data

        args.data = run_data(load_run_config(run_dir), None, run_dir)
    options = _options(args)
    check_positive(workers=args.workers)
    if args.threads:  # 0: torch's default
        check_positive(threads=args.threads)
    if args.workers > 1 and parse_device(args.device).type != "cpu":
        raise ValueError(f"--workers {args.workers} splits the work over CPU processes; on {args.device} use one")
    t0 = time.perf_counter()
    if args.workers == 1:
        shards = [_shard(vars(args), options, 0, 1)]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child inherits torch's thread pool state and can deadlock in it
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            shards = list(pool.map(_shard, [vars(args)] * args.workers, [options] * args.workers,
                                   range(args.workers), [args.workers] * args.workers))
    shards = [s for s in shards if s is not None]
    per_example = {k: sum((s["per_example"][k] for s in shards), []) for k in shards[0]["per_example"]}
    nll = torch.tensor(per_example["nll"], dtype=torch.float64)
    bpd = torch.tensor(per_example["bpd"], dtype=torch.float64) if "bpd" in per_example else None
    summary = summarize(nll, sum((s["nfe"] for s in shards), []), time.perf_counter() - t0, bpd)
    first = shards[0]
    summary.update({"n": int(nll.shape[0]), "dim": first["dim"], "data": str(args.data), "run_dir": str(run_dir),
                    "options": dict(options), "device": first["device"], "workers": args.workers,
                    **({} if bpd is not None else {"bpd_note": BPD_POINTS}), "per_example": per_example})
    out = Path(args.out) if args.out else run_dir / "likelihood.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    _print(summary, out)
    return 0


def _shard(a: dict, options: dict, k: int, workers: int) -> dict | None:
    """NLL (and bits/dim) of the k-th of `workers` contiguous shares of the examples; None if it is empty.
    A plain function of plain values, so that a spawned worker process can run it."""
    from argparse import Namespace

    from ..data.images import load_images
    from ..runs.recipe import is_point_data, run_value_range
    from ..runs.run import load_run_parts
    from .common import parse_device, show_progress

    args = Namespace(**a)
    if args.threads or workers > 1:
        torch.set_num_threads(args.threads or 1)
    run_dir = Path(args.run_dir)
    device, dtype = parse_device(args.device), getattr(torch, args.dtype)
    model, sde, normalizer, meta = load_run_parts(run_dir, device=device)
    score_fn = model.to(dtype).score_fn()
    gen = torch.Generator(device).manual_seed(args.seed + k)
    progress = show_progress(args) and k == 0
    key = str(args.data).lower().replace("_", "-")
    data_shape = list(meta["data_shape"][1:])
    if not is_point_data(args.data):
        value_range = run_value_range(run_dir, args.value_range)
        x01, _ = load_images(args.data, args.split, data_dir=args.data_dir, limit=args.n)
        levels = _LEVELS.get(key, 256)
        pixels = torch.round(x01 * (levels - 1)).to(torch.int16)
        _check_shape(list(pixels.shape[1:]), data_shape, args.data)
        lo, hi = _bounds(len(pixels), k, workers)
        if lo == hi:
            return None
        bpd, bpd_se, nll, nfe = images_bpd(score_fn, sde, pixels[lo:hi].to(device), normalizer, levels=levels,
                                           value_range=value_range, batch_size=args.batch_size, repeats=args.repeats,
                                           progress=progress, generator=gen, dtype=dtype, **options)
        per_example = {"nll": nll.tolist(), "bpd": bpd.tolist(), "bpd_se_repeats": bpd_se.tolist()}
    else:
        from ..data.points import load_points

        x = torch.as_tensor(load_points(args.data, n=args.n, seed=args.seed), dtype=dtype)
        _check_shape(list(x.shape[1:]), data_shape, args.data)
        lo, hi = _bounds(len(x), k, workers)
        if lo == hi:
            return None
        nll, nfe = points_nll(score_fn, sde, x[lo:hi].to(device), normalizer, batch_size=args.batch_size,
                              progress=progress, generator=gen, **options)
        per_example = {"nll": nll.tolist()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"per_example": per_example, "nfe": list(nfe), "dim": int(np.prod(data_shape)), "device": str(device)}


def _bounds(n: int, k: int, workers: int) -> tuple[int, int]:
    """[lo, hi) of the k-th of `workers` near-equal contiguous shares of n examples."""
    return n * k // workers, n * (k + 1) // workers


def _check_shape(got, want, data) -> None:
    if got != want:
        raise ValueError(f"data {data!r} has examples of shape {got}, but the run was trained on shape {want}")


def _print(s: dict, out: Path) -> None:
    line = f"NLL {s['nll_mean']:.4f} +- {s['nll_se']:.4f} nats per example (n={s['n']}, D={s['dim']})"
    if s["bpd_mean"] is not None:
        line += f"; {s['bpd_mean']:.4f} +- {s['bpd_se']:.4f} bits/dim"
    else:
        line += " (bits/dim applies to images)"
    print(line)
    print(f"NFE {s['nfe_mean']:.1f} per batch; {s['seconds']:.2f} s; written to {out}")
