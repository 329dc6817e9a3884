"""`scoregen train`: train a score model on points or images into a run folder (resumable)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

HELP = "train a score model (points or images) into RUN_DIR; rerunning resumes from its last checkpoint"

EXAMPLES = [
    "scoregen train --data seed --out runs/mix",
    "scoregen train --data my_points.csv --out runs/mine",
    "scoregen train --data moons --sde vp --loss sde --steps 4000 --out runs/moons train.lr=1e-3",
    "scoregen train --config mnist-tiny --out runs/mnist",
    "scoregen train --data seed --out runs/mix-ema --steps 4000 train.posthoc_ema=[0.05,0.1] train.posthoc_every=50",
    "scoregen train --config mnist-tiny --out runs/mnist-ema train.posthoc_ema=[0.05,0.1] train.posthoc_every=100",
]

# flag -> config key; a flag left unset keeps the preset's value
_FLAGS = {
    "data": "data.name", "n": "data.n", "data_dir": "data.data_dir",
    "model": "model.net", "hidden": "model.hidden", "depth": "model.depth",
    "sde": "sde.name", "sigma_min": "sde.sigma_min", "sigma_max": "sde.sigma_max",
    "beta_min": "sde.beta_min", "beta_max": "sde.beta_max", "levels": "sde.L",
    "loss": "loss.name", "weighting": "loss.weighting",
    "steps": "train.steps", "batch_size": "train.batch_size", "lr": "train.lr", "ema": "train.ema_decay",
    "grad_clip": "train.grad_clip", "seed": "train.seed", "checkpoint_every": "train.checkpoint_every",
    "device": "train.device",
}


def add_arguments(p):
    p.add_argument("--data", help="point data set (seed, mixture, moons, rings, swissroll, checkerboard, "
                   "8gaussians), a .npy/.csv file of shape (N, D), or an image data set (mnist, fashion-mnist, "
                   "digits, cifar10)")
    p.add_argument("--out", required=True, help="run folder (created; an existing run is resumed)")
    p.add_argument("--config", default=None, help="preset name or YAML file (default: points for point data, "
                   "the data set's own preset for images)")
    p.add_argument("--n", type=int, help="number of points to draw from a named point data set")
    p.add_argument("--data-dir", help="folder holding the image data files")
    p.add_argument("--model", help="network: mlp, seed-unet, unet, ncsn")
    p.add_argument("--hidden", type=int, help="MLP width")
    p.add_argument("--depth", type=int, help="MLP residual blocks")
    p.add_argument("--sde", help="forward process: ve, vp, subvp, ladder (NCSN)")
    p.add_argument("--sigma-min", type=float)
    p.add_argument("--sigma-max", help="a number, or 'auto' (largest pairwise distance of the standardized data)")
    p.add_argument("--beta-min", type=float)
    p.add_argument("--beta-max", type=float)
    p.add_argument("--levels", type=int, help="number of NCSN noise levels (with --sde ladder)")
    p.add_argument("--loss", help="sde (continuous DSM), ncsn, dsm, ssm, ssm-vr, edm")
    p.add_argument("--weighting", help="continuous loss weighting: sigma2 or likelihood")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ema", type=float, help="EMA decay of the weights used for sampling (0 = off)")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--sample-every", type=int, default=None, metavar="K",
                   help="every K steps save a picture of the EMA model's samples as RUN_DIR/samples/step_XXXXXX.png "
                   f"(images: a grid of {PREVIEW['images']}, points: a scatter of {PREVIEW['points']}, drawn with "
                   f"{PREVIEW['sampler']} in {PREVIEW['steps']} steps); default: the config's train.callback_every; "
                   "0 = never")
    p.add_argument("--fresh", action="store_true", help="start over even if RUN_DIR holds a run")
    from .common import add_progress_flag

    add_progress_flag(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-3")


# the periodic sample pictures: cheap enough to draw often (a few hundred network calls)
PREVIEW = {"images": 16, "points": 1000, "sampler": "dpmpp2m", "steps": 20, "seed": 0}


def preview_samples(trainer, n: int, *, sampler: str = "dpmpp2m", steps: int = 20, seed: int = 0) -> torch.Tensor:
    """n samples in data units from the trainer's EMA model (labels 0, 1, ... in turn for a
    class-conditional net). A private generator leaves the training's random stream untouched,
    so a run with pictures follows the same trajectory as one without."""
    from scoregen.sampling.samplers import get_sampler

    sde, device = trainer.ema.sde, trainer.device
    g = torch.Generator(device=device).manual_seed(int(seed))
    n_classes = getattr(trainer.ema.net, "n_classes", 0)
    y = torch.arange(n) % n_classes if n_classes else None
    x = sde.prior_sample((n,) + tuple(trainer.data.shape[1:]), generator=g, device=device)
    with torch.no_grad():
        res = get_sampler(sampler)(trainer.score_fn(y), sde, x, steps=steps, generator=g)
    return trainer.normalizer.inverse(res.samples).cpu()


def sample_callback(run_dir, **preview):
    """callback(trainer, step) for the Trainer: RUN_DIR/samples/step_XXXXXX.png, an image grid
    (in [0, 1] through the run's data.value_range) or, for points, a scatter over the data; and
    RUN_DIR/loss.png brought up to date, so a run stopped early still has its loss curve. With
    train.tensorboard=true the picture also goes to RUN_DIR/tensorboard/ as the image "samples"."""
    from scoregen import plots
    from scoregen.data.images import unscale_images
    from scoregen.runs.recipe import run_value_range

    opts = {**PREVIEW, **preview}
    run_dir = Path(run_dir)

    def callback(trainer, step):
        points = trainer.data.dim() == 2
        x = preview_samples(trainer, opts["points" if points else "images"], sampler=opts["sampler"],
                            steps=opts["steps"], seed=opts["seed"])
        path = run_dir / "samples" / f"step_{step:06d}.png"
        if points:
            ref = trainer.normalizer.inverse(trainer.data[:opts["points"]]).cpu()
            plots.scatter_panels({f"step {step}": x}, path, reference=ref)
        else:  # train_run wrote config.yaml before the first step: the run's own value range
            plots.image_grid(unscale_images(x, run_value_range(run_dir)), path)
        plots.loss_curve(trainer.loss_history, run_dir / "loss.png")
        if trainer.writer is not None:  # train.tensorboard=true: the same picture, as an image
            import matplotlib.image

            trainer.writer.add_image("samples", matplotlib.image.imread(path)[..., :3], step, dataformats="HWC")
            trainer.writer.flush()

    return callback


def default_config(data_name) -> str:
    from scoregen.runs.config import preset_names
    from scoregen.runs.recipe import is_point_data

    if data_name is None or is_point_data(data_name):
        return "points"
    return data_name if data_name in preset_names() else "mnist"


def resolve_overrides(args) -> list[str]:
    """The flags and KEY=VALUE arguments as one list of overrides (flags first)."""
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None]
    from scoregen.runs.config import parse_override

    for o in args.overrides:
        parse_override(o)  # the one KEY=VALUE reader: a malformed override fails here, naming itself
    if getattr(args, "sample_every", None) is not None:
        if args.sample_every < 0:
            raise ValueError(f"--sample-every must be a number of steps >= 0 (0 = never), got {args.sample_every}")
        overrides.append(f"train.callback_every={args.sample_every}")
    return overrides + list(args.overrides)


def run(args):
    from scoregen import plots
    from scoregen.runs import config as C
    from scoregen.runs.recipe import train_run

    from .common import show_progress

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = resolve_overrides(args)
    cfg = C.load_config(args.config or default_config(args.data), overrides)  # checked even when resuming
    trainer = train_run(cfg, args.out, resume=not args.fresh, overrides=overrides, progress=show_progress(args),
                        callback=sample_callback(args.out))
    out = Path(args.out)
    hist = trainer.loss_history
    tail = hist[-min(100, len(hist)):]
    summary = {"run_dir": str(out), "step": trainer.step, "loss_last100": sum(tail) / max(len(tail), 1)}
    plots.loss_curve(hist, out / "loss.png")
    print(json.dumps(summary))
