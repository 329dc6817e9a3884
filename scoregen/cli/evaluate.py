"""`scoregen evaluate RUN_DIR`: sample quality of an MNIST / Fashion-MNIST run.

The samples (N fresh draws with the chosen sampler, or the `images01` array of an .npz written by
`scoregen sample`) are scored by `image_metrics.evaluate_images`:

    FID  ||mu_s - mu_t||^2 + tr(S_s + S_t - 2 (S_s^1/2 S_t S_s^1/2)^1/2)   (Heusel et al. 2017)
    KID  unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3                     (Binkowski et al. 2018)
    precision / recall  samples in the test set's k-NN manifold / test images in the samples' one
                                                                           (Kynkaanniemi et al. 2019)

on the 128-d features of the data set's own classifier (`classifier`), against m = min(N, 10000)
test images, beside the floor: the same statistic between those test images and N training images.
Both carry the same finite-n bias, so the ratio FID / floor is what is comparable across N. The
class histogram is the classifier's predictions on the samples; its largest deviation from the
uniform 10% is reported in percentage points. Point runs have their own measure: `scoregen compare`.

RUN_DIR may also be a scoregen export or a diffusers folder of 1x28x28 images (`runs.Run` opens all
three); a diffusers folder names no data set, so `--data mnist` (or fashion-mnist) says which
classifier and test split to use.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

HELP = ("MNIST / Fashion-MNIST runs: classifier FID, KID, precision and recall against the test split (with "
        "the floor) and the class histogram")

GRID_IMAGES = 64

EXAMPLES = [
    "scoregen evaluate runs/mnist --sampler pc --steps 500 --n 500",
    "scoregen evaluate runs/mnist --sampler heun --steps 500 --n 500 churn=40",
    "scoregen evaluate runs/mnist --samples runs/mnist/samples.npz",
    "scoregen evaluate runs/mnist-ema --ema-sigma-rel 0.08 --sampler pc --steps 500 --n 500",
]


def add_arguments(p) -> None:
    from ..sampling.samplers import sampler_names

    p.add_argument("run_dir", metavar="RUN_DIR", help="an image run folder made by `scoregen train` (or an export "
                   "or a diffusers folder of 1x28x28 images)")
    p.add_argument("--data", default=None, metavar="NAME", help="the data set whose classifier and test split score "
                   "the samples: mnist or fashion-mnist (default: the run's data.name; a diffusers folder has none)")
    p.add_argument("--sampler", default=None, help=f"one of {sampler_names()} (default: the run's configured one)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the run's configured ones)")
    p.add_argument("--n", type=int, default=None, help="number of samples to draw (default 1000)")
    p.add_argument("--samples", default=None, metavar="FILE.npz",
                   help="score these samples instead of drawing: an .npz from `scoregen sample` (key images01)")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="the report (default RUN_DIR/evaluate.json); the sample grid goes beside it as .png")
    p.add_argument("--data-dir", default=None, help="folder holding the MNIST files (default: the run's data.data_dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws and of the reference subsets")
    p.add_argument("--batch-size", type=int, default=None, help="samples per sampler call (default: the run's)")
    p.add_argument("--kid-subsets", type=int, default=100, help="random subsets averaged by KID")
    p.add_argument("--pr-k", type=int, default=3, help="k of the k-NN manifolds of precision and recall")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:i] or auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    from .common import add_ema_flags, add_sampler_options

    add_ema_flags(p)
    add_sampler_options(p, "churn=40 for heun, snr=0.1 for pc")


from ..evaluation.harness import check_image_run as check_run, check_image_shape  # noqa: E402,F401  (in the library)


def read_samples(path) -> torch.Tensor:
    """The `images01` array (N, 1, 28, 28) in [0, 1] of an .npz written by `scoregen sample`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {str(path)!r} does not exist (write one with `scoregen sample`)")
    try:
        with np.load(path) as f:
            if "images01" not in f.files:
                raise ValueError(f"{path} holds {f.files}, not 'images01' (the [0, 1] images `scoregen sample` "
                                 "writes)")
            return torch.from_numpy(np.asarray(f["images01"], dtype=np.float32))
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path} as an .npz file: {e}") from None


def draw_samples(run, cfg: dict, args) -> tuple[torch.Tensor, dict]:
    """(images in [0, 1], {"sampler", "steps", "nfe", "seconds", "train_step"[, "posthoc_ema"]}) drawn from an
    open `runs.Run` (train_step None for a diffusers folder; posthoc_ema when it was opened with --ema-sigma-rel)."""
    from ..data.images import unscale_images
    from .common import check_positive, chosen_sampler, sampler_options

    n = args.n if args.n is not None else 1000
    if n < 2:
        raise ValueError(f"--n must be at least 2, got {n}")
    check_positive(steps=args.steps, batch_size=args.batch_size)
    sc = cfg.get("sample") or {}
    opts = sampler_options(args, chosen_sampler(cfg, args.sampler))
    t0 = time.perf_counter()
    res = run.sample(n, args.sampler, steps=args.steps, seed=args.seed, batch_size=args.batch_size, **opts)
    seconds = time.perf_counter() - t0
    steps = args.steps if args.steps is not None else (sc.get("steps") if args.sampler is None else None)
    step = run.meta.get("step")
    info = {"sampler": args.sampler or sc.get("sampler", "pc"), "steps": steps, "nfe": int(res.nfe),
            "options": opts, "seconds": round(seconds, 2), "train_step": None if step is None else int(step)}
    if "posthoc_ema" in run.meta:
        info["posthoc_ema"] = run.meta["posthoc_ema"]
    if not torch.isfinite(res.samples).all():
        raise ValueError(f"the {info['sampler']} sampler diverged (non-finite samples); try more --steps "
                         "or another --sampler")
    return unscale_images(res.samples, run.value_range), info


def summary_lines(r: dict) -> list[str]:
    trained = f"step {r['train_step']}" if r.get("train_step") is not None else "a model not trained here"
    ema = r.get("posthoc_ema")
    ema = f", post-hoc EMA sigma_rel {ema['sigma_rel']:g} at step {ema['step']}" if ema else ""
    how = f"{r['sampler']} ({r['nfe']} NFE, {trained}{ema})" if r["source"] == "sampler" else r["source"]
    return [f"{r['dataset']}: n={r['n']} samples from {how}, reference {r['n_ref']} test images",
            f"  FID {r['fid']:.4g}   floor (test vs train) {r['fid_floor']:.4g}   ratio {r['fid_ratio']:.3g}",
            f"  KID {r['kid']:.4g} +- {r['kid_std']:.2g}   floor {r['kid_floor']:.4g} +- {r['kid_floor_std']:.2g}",
            f"  precision {r['precision']:.3f}  recall {r['recall']:.3f}   floor (train vs test) "
            f"{r['precision_floor']:.3f} / {r['recall_floor']:.3f}  (k = {r['pr_k']})",
            "  classes " + " ".join(f"{100 * f:.1f}" for f in r["class_fractions"])
            + f" %  (max deviation from uniform {r['class_max_dev_points']:.2f} points)"]


def run(args) -> int:
    from ..evaluation.image_metrics import evaluate_images
    from ..plots import image_grid

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    cfg, name = check_run(run_dir, args.data)
    if args.samples is not None:
        if args.sampler is not None or args.steps is not None or args.n is not None or args.options \
                or args.ema_sigma_rel is not None or args.ema_step is not None:
            raise ValueError("--samples scores a file as it is; leave out --sampler, --steps, --n, --ema-sigma-rel, "
                             "--ema-step and sampler options"
                             f"{' ' + ' '.join(args.options) if args.options else ''} with it")
        images = read_samples(args.samples)
        info = {"source": str(args.samples), "sampler": None, "steps": None, "nfe": None, "options": {},
                "seconds": None,
                "train_step": None}
    else:
        from ..runs.run import Run
        from .common import ema_args, parse_device

        run = Run.open(run_dir, device=parse_device(args.device), **ema_args(args))
        check_image_shape(run.shape, name, run_dir)  # before any sampling
        images, info = draw_samples(run, cfg, args)
        info["source"] = "sampler"
    data_dir = args.data_dir or (cfg.get("data") or {}).get("data_dir")
    report = evaluate_images(images, name, data_dir, value_range=(0, 1), kid_subsets=args.kid_subsets,
                             seed=args.seed, pr_k=args.pr_k)
    report = {"run_dir": str(run_dir), **info, **report}
    out = Path(args.out) if args.out else run_dir / "evaluate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    picture = image_grid(images[:GRID_IMAGES], out.with_suffix(".png"))
    print("\n".join(summary_lines(report)))
    print(f"wrote {out} and {picture}")
    return 0
