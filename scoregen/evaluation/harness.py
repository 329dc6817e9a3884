"""Evaluation of trained runs, shared by the command line and the benchmarks (which import no cli/ code).

    point_evaluator / image_evaluator   (metric, fn(samples) -> value, floor) for a run's data
    measure / compare_summary           quality against NFE for samplers at NFE budgets (`scoregen compare`)
    points_nll / images_bpd             batched likelihoods in data units (`scoregen likelihood`)
    check_image_run / check_image_shape an image run with a feature classifier (`scoregen evaluate`,
                                        `scoregen compare`), images of the classifier's shape
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..likelihood import bits_per_dim, log_likelihood

__all__ = ["point_evaluator", "image_evaluator", "cells", "seconds_per_evaluation", "measure", "compare_summary",
           "WITHIN", "points_nll", "images_bpd", "check_image_run", "check_image_shape"]

#: `compare_summary`: a sampler is "within" the best value when at most this fraction above it.
WITHIN = 0.10


# --- quality measures -----------------------------------------------------------------------------
def point_evaluator(name, n: int, seed: int):
    """(metric name, fn(samples) -> value, floor dict or None) for a point data set or file."""
    import numpy as np

    from ..data.points import load_points, reference_sampler
    from . import metrics

    draw = reference_sampler(name)
    if draw is None:  # a user file: its own points are the reference, no floor
        ref, floor = load_points(name), None
    else:
        ref = draw(n, seed + 7919)
        floor = metrics.noise_floor(metrics.energy_distance, draw, n, n, repeats=20, seed=seed + 1234)
    return "energy_distance", lambda x: float(metrics.energy_distance(np.asarray(x), ref)), floor


def image_evaluator(name, run_dir: Path, data_dir, seed: int):
    from ..runs.recipe import run_value_range
    from .image_metrics import evaluate_images

    value_range = run_value_range(run_dir)
    floor = {}

    def fn(x):
        out = evaluate_images(x, name, data_dir, value_range=value_range, seed=seed)
        floor.setdefault("mean", out["fid_floor"])
        floor.setdefault("std", 0.0)
        return float(out["fid"])

    return "fid", fn, floor


# --- the table --------------------------------------------------------------------------------------
def cells(samplers, budgets, options=None) -> dict:
    """{sampler: [(budget, steps)]}: the budgets where at least one step fits (unknown names fail here)."""
    from ..sampling.samplers import get_sampler, steps_for_nfe

    out = {}
    for name in samplers:
        get_sampler(name)  # unknown names fail before any sampling
        rows = []
        for b in budgets:
            try:
                rows.append((b, steps_for_nfe(name, b, **(options or {}))))
            except ValueError as e:
                if "below one step" not in str(e):
                    raise
        out[name] = rows
    return out


def seconds_per_evaluation(run_dir, n: int, batch_size=None, device="cpu", repeats: int = 3) -> float:
    """Measured seconds of one score evaluation of the run's model on a batch of n prior draws.

    `run_dir` is a run folder or an open `runs.Run` (then `device` is the Run's)."""
    import torch

    from ..runs.run import Run, load_run_parts

    if isinstance(run_dir, Run):
        model, sde, meta, device = run_dir.model, run_dir.sde, run_dir.meta, run_dir.device
    else:
        model, sde, _, meta = load_run_parts(run_dir, device=device)
    b = min(n, batch_size or n)
    x = sde.prior_sample((b,) + tuple(meta["data_shape"][1:]), device=device)
    t = torch.full((b,), float(sde.T), device=device)
    score = model.score_fn()
    with torch.no_grad():
        score(x, t)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            score(x, t)
    return (time.perf_counter() - t0) / repeats * (-(-n // b))


def measure(run_dir, samplers, budgets, n, evaluate, *, seed=0, batch_size=None, device="cpu", log=print,
            options=None) -> dict:
    """{sampler: [{"budget", "nfe", "steps", "value", "seconds"}]}; budgets below one step are left out, a
    value is None where the samples are not finite (a diverged sampler). `options` go to every sampler.
    `run_dir` is a run folder or an open `runs.Run`; the run is loaded once, and "seconds" times the
    sampling alone."""
    import torch

    from ..runs.run import Run

    options = dict(options or {})
    plan_all = cells(samplers, budgets, options)  # unknown samplers and options fail before loading
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir, device=device)
    table = {}
    for name, plan in plan_all.items():
        rows = []
        for b, k in plan:
            t0 = time.perf_counter()
            res = run.sample(n, name, steps=k, seed=seed, batch_size=batch_size, **options)
            seconds = time.perf_counter() - t0
            value = evaluate(res.samples) if torch.isfinite(res.samples).all() else math.inf
            rows.append({"budget": b, "nfe": int(res.nfe), "steps": k, "value": value if math.isfinite(value) else None,
                         "seconds": seconds})
        table[name] = rows
        log(f"  {name:18s} " + "  ".join(f"{r['nfe']}:{_fmt(r['value'])}" for r in rows))
    return table


def _fmt(v) -> str:
    return "diverged" if v is None else f"{v:.4g}"


def compare_summary(table: dict, floor: dict | None) -> dict:
    """The best value at the largest budget, and per sampler the smallest NFE within 10% of it / at the floor."""
    top = max(r["budget"] for rows in table.values() for r in rows)
    finals = [(r["value"], name, r["nfe"]) for name, rows in table.items() for r in rows
              if r["budget"] == top and r["value"] is not None]
    if not finals:
        raise ValueError(f"every sampler diverged at the largest budget {top}; nothing to compare against")
    value, name, nfe = min(finals)
    threshold = None if not floor else floor["mean"] + 2 * floor["std"]
    per = {}
    for s, rows in table.items():
        ok = [r for r in rows if r["value"] is not None]
        within = [r["nfe"] for r in ok if r["value"] <= (1 + WITHIN) * value]
        at_floor = [r["nfe"] for r in ok if threshold is not None and r["value"] <= threshold]
        per[s] = {"nfe_within_10pct_of_best": min(within, default=None), "nfe_at_floor": min(at_floor, default=None)}
    overall = min((r["value"], r["nfe"], s, r["budget"]) for s, rows in table.items() for r in rows
                  if r["value"] is not None)
    return {"best_at_largest_budget": {"sampler": name, "nfe": nfe, "value": value, "budget": top},
            "best_overall": {"sampler": overall[2], "nfe": overall[1], "value": overall[0], "budget": overall[3]},
            "floor_threshold": threshold, "samplers": per}


# --- evaluation (importable, tested) ----------------------------------------------------------
def _batches(n: int, batch_size: int, progress: bool, desc: str):
    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, leave=False) if progress else starts


def points_nll(score_fn, sde, x, normalizer, *, batch_size: int = 128, progress: bool = False, **options):
    """-log p_X(x) per example (nats, original scale) and the NFE of each batch.

    x (N, D) raw points; the model sees normalizer(x) and log p_X = log p_Z - D log s.
    """
    d = x[0].numel()
    jac = -d * math.log(normalizer.scale)
    nll, nfe = [], []
    for i in _batches(x.shape[0], batch_size, progress, "likelihood"):
        res = log_likelihood(score_fn, sde, normalizer(x[i:i + batch_size]), **options)
        nll.append(-(res.logp + jac))
        nfe.append(res.nfe)
    return torch.cat(nll), nfe


def images_bpd(score_fn, sde, pixels, normalizer, *, levels: int = 256, value_range=(0.0, 1.0),
               batch_size: int = 128, repeats: int = 1, progress: bool = False, **options):
    """(bpd (N,), its per-image standard error over repeats (N,), nll (N,), NFE per batch)."""
    out = {"bpd": [], "se": [], "nll": []}
    nfe = []
    for i in _batches(pixels.shape[0], batch_size, progress, "likelihood"):
        res = bits_per_dim(score_fn, sde, pixels[i:i + batch_size], levels=levels, value_range=value_range,
                           shift=normalizer.mean.reshape(-1, *[1] * (pixels.dim() - 2)), scale=normalizer.scale,
                           repeats=repeats, **options)
        out["bpd"].append(res.bpd)
        out["se"].append(res.bpd_se)
        out["nll"].append(res.nll)
        nfe.append(res.nfe)
    return torch.cat(out["bpd"]), torch.cat(out["se"]), torch.cat(out["nll"]), nfe


def check_image_run(run_dir: Path, data: str | None = None) -> tuple[dict, str]:
    """(config, data set name) of an image run with a classifier; clear errors otherwise.

    The data set is `data` (a --data argument) if given, else the run's data.name; a diffusers folder
    names none, so it needs `data`.
    """
    from ..runs.recipe import is_point_data, load_run_config
    from .classifier import CLASSIFIER_DATASETS

    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    cfg = load_run_config(run_dir)
    name = data if data is not None else (cfg.get("data") or {}).get("name")
    if name is None:
        where = "the diffusers folder" if _is_diffusers(cfg) else "the run's config.yaml (data.name)"
        raise ValueError(f"{run_dir}: {where} names no data set; pass --data with one of {list(CLASSIFIER_DATASETS)}")
    if is_point_data(name):
        raise ValueError(f"{run_dir} is a point run (data {name!r}); `scoregen evaluate` scores MNIST-like images: "
                         f"use `scoregen compare {run_dir}` for the quality of point samples")
    if name not in CLASSIFIER_DATASETS:
        what = f"--data {name!r} has" if data is not None else f"{run_dir} was trained on {name!r}, which has"
        raise ValueError(f"{what} no classifier for FID/KID; classifiers exist for {list(CLASSIFIER_DATASETS)}")
    return cfg, name


def check_image_shape(shape, name: str, run_dir) -> None:
    """ValueError unless one image of the run, `shape` (C, H, W), is what the classifier of `name` takes."""
    from .classifier import IMAGE_SHAPE

    if tuple(shape) != IMAGE_SHAPE:
        size = "x".join(map(str, shape))
        raise ValueError(f"{run_dir} makes {size} images, but the {name} classifier behind FID/KID scores "
                         f"{'x'.join(map(str, IMAGE_SHAPE))} images")


def _is_diffusers(cfg: dict) -> bool:
    return (cfg.get("source") or {}).get("kind") == "diffusers"
