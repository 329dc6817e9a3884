"""`scoregen sample`: draw samples from a trained run with any sampler."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

HELP = "sample a trained run: points -> .npy + scatter PNG, images -> .npz + grid PNG"


def add_arguments(p):
    from scoregen.sampling.samplers import sampler_names

    p.add_argument("run_dir", help="a run folder made by `scoregen train`")
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
    p.add_argument("options", nargs="*", metavar="KEY=VALUE", help="sampler options, e.g. snr=0.1 rtol=1e-4")


def parse_options(items) -> dict:
    import yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"sampler option {it!r} must look like key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def run(args):
    from scoregen.runs.recipe import is_point_data, load_run_config, sample_run

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_run_config(args.run_dir)
    opts = parse_options(args.options)
    t0 = time.perf_counter()
    res = sample_run(args.run_dir, n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                     batch_size=args.batch_size, device=args.device, progress=True,
                     return_trajectory=args.trajectory, label=args.label, guidance=args.guidance, **opts)
    seconds = time.perf_counter() - t0
    x = res.samples.numpy()
    points = is_point_data(cfg["data"]["name"])
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / ("samples.npy" if points else "samples.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    if points:
        np.save(out, x)
        if res.trajectory is not None:
            np.save(out.with_suffix(".trajectory.npy"), res.trajectory.numpy())
        picture = out.with_suffix(".png")
        from scoregen.plots import scatter_panels

        scatter_panels({"samples": x}, picture)
    else:
        from scoregen.data.images import unscale_images
        from scoregen.plots import image_grid

        vr = cfg["data"].get("value_range", [0, 1])
        img = unscale_images(res.samples, vr)
        np.savez_compressed(out, samples=x, images01=img.numpy())
        picture = out.with_suffix(".png")
        image_grid(img, picture)
    print(json.dumps({"out": str(out), "picture": str(picture), "n": len(x), "nfe": res.nfe,
                      "seconds": round(seconds, 2)}))
