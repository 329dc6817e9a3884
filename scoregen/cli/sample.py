"""`scoregen sample`: draw samples from a trained run with any sampler."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

HELP = "sample a trained run: points -> .npy + scatter PNG, images -> .npz + grid PNG"


EXAMPLES = [
    "scoregen sample runs/mix --n 2000 --out samples.npy --sampler dpmpp2m --steps 25",
    "scoregen sample runs/mix --sampler ode rtol=1e-4",
    "scoregen sample runs/mix --sampler pc --steps 500 snr=0.1",
    "scoregen sample runs/mix --sampler heun --steps 20 churn=40",
    "scoregen sample runs/mnist --n 500 --sampler heun --steps 500 churn=40",
    "scoregen sample runs/mix-ema --ema-sigma-rel 0.08 --n 1000 --out samples-ema.npy",
]


def add_arguments(p):
    from scoregen.sampling.samplers import sampler_names

    from .common import add_ema_flags, add_progress_flag, add_sampler_options

    p.add_argument("run_dir", help="a run folder made by `scoregen train`, an export (`scoregen export`) or a "
                                   "diffusers folder (a saved pipeline, or unet/ + scheduler/)")
    p.add_argument("--n", type=int, default=None, help="number of samples (default: the run's sample.n)")
    p.add_argument("--out", default=None, help="output .npy (points) or .npz (images); default RUN_DIR/samples.*")
    p.add_argument("--sampler", default=None, help=f"one of {sampler_names()} (default: the run's configured one)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (NFE is reported)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--label", type=int, default=None, help="class label for a class-conditional run")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight w (with --label)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trajectory", action="store_true", help="also save the trajectory (points)")
    add_ema_flags(p)
    add_progress_flag(p)
    add_sampler_options(p, "snr=0.1 for pc, rtol=1e-4 for ode, churn=40 for heun")


def run(args):
    from scoregen.runs.recipe import is_point_data, load_run_config
    from scoregen.runs.run import Run

    if args.threads:
        torch.set_num_threads(args.threads)
    from .common import check_positive, chosen_sampler, ema_args, sampler_options, show_progress

    check_positive(n=args.n, steps=args.steps, batch_size=args.batch_size)
    cfg = load_run_config(args.run_dir)
    opts = sampler_options(args, chosen_sampler(cfg, args.sampler))
    t0 = time.perf_counter()
    run = Run.open(args.run_dir, device=args.device, **ema_args(args))
    res = run.sample(args.n, args.sampler, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                     progress=show_progress(args), return_trajectory=args.trajectory, label=args.label,
                     guidance=args.guidance, **opts)
    seconds = time.perf_counter() - t0
    x = res.samples.numpy()
    name = (cfg.get("data") or {}).get("name")  # None for a diffusers folder (images)
    points = name is not None and is_point_data(name)
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / ("samples.npy" if points else "samples.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    if points:
        np.save(out, x)
        if res.trajectory is not None:
            np.save(out.with_suffix(".trajectory.npy"), res.trajectory.numpy())
        picture = out.with_suffix(".png")
        from scoregen.plots import scatter_panels

        scatter_panels({"samples": x}, picture, titles={
            "samples": f"{len(x)} samples: {chosen_sampler(cfg, args.sampler)}, NFE {res.nfe}"})
    else:
        from scoregen.data.images import unscale_images
        from scoregen.plots import image_grid

        vr = cfg["data"].get("value_range", [0, 1])
        img = unscale_images(res.samples, vr)
        np.savez_compressed(out, samples=x, images01=img.numpy())
        picture = out.with_suffix(".png")
        image_grid(img, picture)
    ema = {"posthoc_ema": run.meta["posthoc_ema"]} if "posthoc_ema" in run.meta else {}
    print(json.dumps({"out": str(out), "picture": str(picture), "n": len(x), "nfe": res.nfe,
                      "seconds": round(seconds, 2), **ema}))
