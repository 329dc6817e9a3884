"""scoregen against the diffusers library on MNIST, side by side, at equal wall-clock training budgets.

What it measures. For each budget B (minutes, `--budgets 5,10,20`) both sides are trained from scratch
for B minutes of wall clock on the same CPU threads (`--threads 2`), on the same MNIST training images
(the preset's `data` section: its split, `limit` and `flip`), and each trained model is then sampled
and judged the same way: the project's classifier FID and KID of `--n` samples (default 1000) against
the MNIST test set, beside the floor (the same statistic between as many training images and the test
images, `scoregen.evaluation.image_metrics.evaluate_images`, as `scoregen evaluate` calls it), and the
class histogram of the samples (its largest deviation from the uniform 10%, in percentage points).
The rows of one budget:

  diffusers model  DDPMPipeline   `--ddpm-steps` steps (default 1000, the example's
                                  ddpm_num_inference_steps): 1000 NFE
  diffusers model  DDIMPipeline   at each NFE of `--nfe` (default 50,100), eta = 0
  diffusers model  scoregen's sampler (the preset's, or `--samplers`) at every NFE of the grid, on the
                   saved pipeline folder opened by `scoregen.runs.Run.open` (`scoregen/interop/hf.py`:
                   the DDPM table as a discrete VP SDE): against the rows above this isolates the sampler
  scoregen model   the same sampler(s) at the same NFEs (`samplers.steps_for_nfe`): against the row
                   above this isolates the training

NFE grid of the scoregen samplers: `--nfe` plus `--ddpm-steps` (or `--scoregen-nfe`). One run prints
one table (budget, model, sampler, NFE, FID, FID/floor, KID, largest class deviation, training steps
done, training seconds, sampling seconds) and the command line, writes everything to `--json`
(default OUT/images_peer.json, rewritten after every row) and an image grid of each row's first 64
samples to OUT/b<B>/grid-<model>-<sampler>-<NFE>.png.

The peer, as diffusers' own unconditional training example trains a model
(examples/unconditional_image_generation/train_unconditional.py in the diffusers repository, its
defaults): a UNet2DModel with layers_per_block 2 and the example's block pattern, DDPMScheduler with
num_train_timesteps 1000 and the "linear" beta schedule (ddpm_beta_schedule's default; beta 1e-4 to
0.02), prediction_type "epsilon" and the loss F.mse_loss(model_output, noise) at timesteps drawn
uniformly from 0..999 (scheduler.add_noise), AdamW with lr 1e-4, betas (0.95, 0.999), weight decay
1e-6, eps 1e-8, gradient norm clipped to 1.0, the "cosine" learning-rate schedule with 500 warm-up
steps, batch 16 drawn by a shuffled pass over the training set per epoch, the EMA of the weights
(diffusers.training_utils.EMAModel with decay 0.9999, use_ema_warmup, inv_gamma 1.0, power 3/4,
stepped after each optimizer step and copied into the UNet before the DDPMPipeline is saved), fp32
(mixed_precision "no"), images ToTensor + Normalize(0.5, 0.5), i.e. in [-1, 1]. Where it departs:
  * one input/output channel, not the example's RGB (it converts every image to RGB);
  * sample_size 28, no padding: the example's six levels (128, 128, 256, 256, 512, 512 channels at
    64 -> 2 pixels, attention in the second-coarsest down block and its up block) cannot run on 28 pixels
    (28 -> 14 -> 7 -> 4 does not upsample back to 7), so the peer keeps the first three levels of that
    pattern, block_out_channels (w, w, 2w), at 28 -> 14 -> 7 pixels, with attention at the coarsest one
    (AttnDownBlock2D / AttnUpBlock2D at 7 x 7, plus the UNet's mid-block attention); resizing to 32 would
    have made the pictures the evaluation scores differ from the training images. The width w
    (`--peer-width`, default: the multiple of 8 whose parameter count is nearest the scoregen preset's
    network; both counts are printed) with norm_num_groups w / 4, which keeps the example's 4 channels per
    group at the first level (its default 32 groups of 128);
  * no random horizontal flip: in the current example it is opt-in (`--random_flip`, off by default;
    its README turns it on for flowers and Pokemon), and a mirrored digit is not a digit;
    Resize/CenterCrop/RandomCrop to the resolution are the identity on 28 x 28 images;
  * the learning-rate horizon (`--horizon`): the example's cosine ends at num_epochs (100) passes over
    the data, far beyond any budget here (at batch 16 on a CPU: thousands of steps in minutes), so
    `--horizon budget` (default) ends the cosine when the wall-clock budget ends (after the 500 step
    warm-up: lr = 1e-4 * (1 + cos(pi * p)) / 2 with p the fraction of the budget's time left after the
    warm-up that has gone by), which is what a user of the example fitting num_epochs to the budget gets;
    `--horizon fixed` keeps the example's 100-epoch cosine (diffusers.optimization.get_scheduler), i.e.
    1e-4 after warm-up for every budget here;
  * no accelerate, no checkpoints during training (the pipeline is saved once at the end), no logging.

scoregen, through its Python API: `scoregen.runs.recipe.train_run` on
`scoregen.runs.config.load_config(--preset, KEY=VALUE overrides)` (`--preset` default mnist-quick where
that preset exists, else mnist-tiny) with train.checkpoint_every=0 (one save at the end, as the peer)
and a callback after every step that stops the run when the budget is spent (it sets
trainer.config.steps to the step reached; the trainer then saves the run folder as at a normal end).
With `--horizon budget` that callback also re-estimates train.steps at every step from the measured
rate, so that a preset's lr_decay (linear or cosine cool-down to train.steps) ends with the budget; a
constant-lr preset (mnist-tiny) is unaffected. With `--horizon fixed` train.steps is 10^9 (no
cool-down). Each side's clock starts before it loads its data and builds its network and stops after
the step that crossed the budget; the final save is not counted; sampling is not counted.

Reproduce (the issue's measurement). Training is 2 x (5 + 10 + 20) = 70 minutes; sampling costs far more
on 2 CPU cores: measured on a loaded 2-core machine, one network evaluation of one image took ~16 ms for
the 0.29 M-parameter peer (batch 250; its 28 x 28 ResNet blocks) and ~1-2 ms for mnist-tiny's U-Net, so
each 1000-NFE row of 1000 peer samples (DDPMPipeline, and scoregen's sampler on the peer) may take hours;
`--scoregen-nfe 50,100` drops scoregen's 1000-NFE rows if that is too long:

    python benchmarks/images_peer.py --budgets 5,10,20 --threads 2 --n 1000 --nfe 50,100 --ddpm-steps 1000 \\
        --out runs/images-peer --json runs/images-peer/images_peer.json

A smoke test of the whole pipeline in a few minutes:

    python benchmarks/images_peer.py --budgets 0.2 --n 64 --nfe 10 --ddpm-steps 20 --out /tmp/peer-smoke

A rerun with the same --out reuses each trained model whose recorded settings match (`--fresh` retrains).

Caveats. CPU wall-clock budgets measure the two code paths on this machine as much as the recipes: the
step time of each network depends on its architecture (the peer's ResNet blocks with GroupNorm and
attention against scoregen's U-Net), on the threads and on other load, so both sides should run on an
otherwise idle machine, one after the other (as here), with the same --threads; the steps done are in
the table. At these budgets neither side is near convergence: the table says what a few minutes buy,
not how good either recipe can get. The peer's recipe is an image example for 64 x 64 RGB data, not an
MNIST recipe; it is used as published, with only the departures listed above. FID/KID here are on the
project's MNIST classifier features, not Inception, and are comparable only at equal n (hence the floor
and the ratio).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scoregen.runs import config as C
from scoregen.runs.recipe import build_model, build_sde, load_data, train_run

# --- the peer's recipe: train_unconditional.py's defaults ---------------------------------------------
PEER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon",
        "lr": 1e-4, "betas": (0.95, 0.999), "weight_decay": 1e-6, "adam_eps": 1e-8, "lr_scheduler": "cosine",
        "warmup_steps": 500, "batch_size": 16, "num_epochs": 100, "grad_clip": 1.0,
        "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0, "ema_power": 0.75, "layers_per_block": 2,
        "random_flip": False, "mixed_precision": "no"}
PEER_BLOCKS = {"down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
               "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")}
GRID_IMAGES = 64
#: bumped when the training code or its record changes, so that a rerun retrains instead of reusing
RECORD_VERSION = 1
INSTALL = 'pip install "scoregen[benchmarks]" (or: pip install diffusers safetensors)'


def import_diffusers():
    """The diffusers module, or SystemExit with one line saying how to install it."""
    try:
        import diffusers  # noqa: F401
        from diffusers.training_utils import EMAModel  # noqa: F401
    except ModuleNotFoundError as e:
        raise SystemExit(f"benchmarks/images_peer.py needs the diffusers library ({e.name} is not installed): "
                         f"{INSTALL}") from None
    diffusers.utils.logging.set_verbosity_error()  # its advice to install accelerate, on every model load
    return diffusers


def parse_list(text: str, kind=float, name="list") -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{name} must be positive numbers, got {text!r}")
    return values


def default_preset() -> str:
    return "mnist-quick" if "mnist-quick" in C.preset_names() else "mnist-tiny"


def budget_name(minutes: float) -> str:
    return f"b{minutes:g}"


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --- the peer's network -------------------------------------------------------------------------------
def peer_unet(width: int):
    from diffusers import UNet2DModel

    if width % 8:
        raise ValueError(f"--peer-width must be a multiple of 8 (attention heads of 8 channels), got {width}")
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=PEER["layers_per_block"],
                       block_out_channels=(width, width, 2 * width), norm_num_groups=width // 4, **PEER_BLOCKS)


def peer_width_for(target: int) -> int:
    """The multiple of 8 whose peer UNet's parameter count is nearest `target` (in log ratio)."""
    best, best_gap = 8, math.inf
    for w in range(8, 129, 8):
        gap = abs(math.log(n_params(peer_unet(w)) / target))
        if gap < best_gap:
            best, best_gap = w, gap
        elif gap > best_gap:  # the count grows with w
            break
    return best


def scoregen_params(cfg: dict) -> int:
    """Trainable parameters of the preset's network (the noise range does not change the count)."""
    sde = {k: (1.0 if v == "auto" else v) for k, v in cfg["sde"].items()}
    return n_params(build_model(cfg["model"], build_sde(sde), (1, 1, 28, 28)))


# --- training under a wall-clock budget -------------------------------------------------------------
def train_peer(cfg: dict, seconds: float, out: Path, width: int, horizon: str, seed: int) -> dict:
    """The example's training loop on the preset's images in [-1, 1] for `seconds`; saves a DDPMPipeline."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    t0 = time.perf_counter()
    x, _ = load_data({**cfg["data"], "value_range": [-1, 1]})
    x = x.float().contiguous()
    torch.manual_seed(seed)
    unet = peer_unet(width)
    sched = DDPMScheduler(num_train_timesteps=PEER["num_train_timesteps"], beta_schedule=PEER["beta_schedule"],
                          prediction_type=PEER["prediction_type"])
    opt = torch.optim.AdamW(unet.parameters(), lr=PEER["lr"], betas=PEER["betas"],
                            weight_decay=PEER["weight_decay"], eps=PEER["adam_eps"])
    bs, n = PEER["batch_size"], len(x)
    per_epoch = math.ceil(n / bs)
    fixed = get_scheduler(PEER["lr_scheduler"], optimizer=opt, num_warmup_steps=PEER["warmup_steps"],
                          num_training_steps=per_epoch * PEER["num_epochs"]) if horizon == "fixed" else None
    ema = EMAModel(unet.parameters(), decay=PEER["ema_max_decay"], use_ema_warmup=True,
                   inv_gamma=PEER["ema_inv_gamma"], power=PEER["ema_power"], model_cls=UNet2DModel,
                   model_config=unet.config)
    g = torch.Generator().manual_seed(seed)
    unet.train()
    setup = time.perf_counter() - t0
    step, losses, order, pos, t_warm = 0, [], None, n, None
    lr = 0.0
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
        if fixed is None:  # the example's cosine with warm-up, its horizon the end of the budget
            if step < PEER["warmup_steps"]:
                lr = PEER["lr"] * step / PEER["warmup_steps"]
            else:
                t_warm = elapsed if t_warm is None else t_warm
                p = min(1.0, (elapsed - t_warm) / max(seconds - t_warm, 1e-9))
                lr = PEER["lr"] * 0.5 * (1.0 + math.cos(math.pi * p))
            for group in opt.param_groups:
                group["lr"] = lr
        else:
            lr = opt.param_groups[0]["lr"]
        if pos >= n:  # a new epoch: a shuffled pass, the last batch short (DataLoader(shuffle=True))
            order, pos = torch.randperm(n, generator=g), 0
        clean = x[order[pos:pos + bs]]
        pos += bs
        noise = torch.randn(clean.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (clean.shape[0],), generator=g).long()
        noisy = sched.add_noise(clean, noise, t)
        loss = F.mse_loss(unet(noisy, t).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), PEER["grad_clip"])
        opt.step()
        if fixed is not None:
            fixed.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        step += 1
        losses.append(float(loss.detach()))
    train_seconds = time.perf_counter() - t0
    ema.copy_to(unet.parameters())
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(out))
    return {"steps": step, "seconds": train_seconds, "setup_seconds": setup, "epochs": step / per_epoch,
            "params": n_params(unet),
            "width": width, "last_lr": lr, "ema_decay": float(ema.cur_decay_value or 0.0),
            "loss_last_100": float(np.mean(losses[-100:])) if losses else None, "train_images": n}


def train_scoregen(cfg: dict, seconds: float, out: Path, horizon: str) -> dict:
    """`train_run` on `cfg` into `out`, stopped by a callback once `seconds` of wall clock are spent."""
    ceiling = 10 ** 9
    cfg = C.apply_overrides(cfg, [f"train.steps={ceiling}", "train.callback_every=1", "train.checkpoint_every=0"])
    t0 = time.perf_counter()
    clock = {"first": None}

    def budget(trainer, step):
        now = time.perf_counter()
        clock.setdefault("first_step_done", now - t0)
        if now - t0 >= seconds:
            clock["stop"] = now
            trainer.config.steps = trainer.step  # fit() ends the loop and saves the run folder
            return
        if horizon == "budget":  # the schedule's end where the budget's is, from the measured rate
            if clock["first"] is None:
                clock["first"] = (now, step)
                return
            t1, s1 = clock["first"]
            if step > s1 and now > t1:
                rate = (step - s1) / (now - t1)
                trainer.config.steps = max(step + 1, step + int((seconds - (now - t0)) * rate))

    trainer = train_run(cfg, out, resume=False, callback=budget, progress=False)
    stop = clock.get("stop", time.perf_counter())
    return {"steps": int(trainer.step), "seconds": stop - t0, "first_step_done_seconds": clock.get("first_step_done"),
            "params": n_params(trainer.model),
            "lr_decay": cfg["train"].get("lr_decay", "constant"),
            "loss_last_100": float(np.mean(trainer.loss_history[-100:])) if trainer.loss_history else None,
            "train_images": int(trainer.data_shape[0])}


def trained(side_dir: Path, settings: dict, fresh: bool, train):
    """The training record of side_dir if it was made with `settings` (and not --fresh), else train anew."""
    record_path = side_dir / "train.json"
    if not fresh and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("settings") == settings:
            print(f"  reusing {side_dir} ({record['steps']} steps in {record['seconds']:.0f} s; --fresh retrains)")
            return record
    if side_dir.exists():
        shutil.rmtree(side_dir)  # this benchmark's own folder, made with other settings or unfinished
    side_dir.parent.mkdir(parents=True, exist_ok=True)
    record = {**train(), "settings": settings}
    record_path.write_text(json.dumps(record, indent=1))
    return record


# --- sampling --------------------------------------------------------------------------------------
def load_pipelines(folder: Path) -> dict:
    """diffusers' own DDPMPipeline and DDIMPipeline (eta 0, a DDIMScheduler made from the saved DDPM
    scheduler's config) on the saved peer."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(str(folder / "unet"), local_files_only=True, low_cpu_mem_usage=False).eval()
    sched = DDPMScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
    pipes = {"ddpm": DDPMPipeline(unet=unet, scheduler=sched),
             "ddim": DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(sched.config))}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def sample_pipeline(pipe, steps: int, n: int, batch: int, seed: int) -> torch.Tensor:
    """n images in [0, 1] (N, 1, 28, 28) from a diffusers pipeline with `steps` inference steps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        images = pipe(batch_size=b, generator=g, num_inference_steps=steps, output_type="np").images
        out.append(torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2))
    return torch.cat(out)


def sample_scoregen(run, sampler: str | None, nfe: int, options: dict, n: int, batch: int, seed: int):
    """(images in [0, 1], NFE) from an open `Run`: `sampler` (None: the run's own, with its options)
    with the step count that fits `nfe`."""
    from scoregen.data.images import unscale_images
    from scoregen.sampling.samplers import steps_for_nfe

    name = sampler or run.config["sample"]["sampler"]
    opts = dict(options)
    steps = steps_for_nfe(name, nfe, **opts)
    res = run.sample(n, sampler, steps=steps, seed=seed, batch_size=batch, **opts)
    return unscale_images(res.samples, run.value_range), int(res.nfe)


def sampler_options(cfg: dict, sampler: str) -> dict:
    """The preset's options of its own sampler (e.g. pc's snr); none for another sampler."""
    sc = dict(cfg.get("sample") or {})
    if sc.get("sampler") != sampler:
        return {}
    return {k: v for k, v in sc.items() if k not in C.SAMPLE_KEYS and k != "steps"}


# --- the table -----------------------------------------------------------------------------------------
COLUMNS = [("budget", "budget", 7), ("model", "model", 9), ("sampler", "sampler", 18), ("NFE", "nfe", 5),
           ("FID", "fid", 8), ("FID/floor", "fid_ratio", 9), ("KID", "kid", 8), ("cls dev", "class_max_dev_points", 7),
           ("steps", "train_steps", 7), ("train s", "train_seconds", 8), ("sample s", "sample_seconds", 8)]


def format_row(r: dict) -> str:
    if r.get("error"):
        head = f"{r['budget_minutes']:g} min".ljust(7) + f" {r['model']:9s} {r['sampler']:18s} {r['nfe']:>5}"
        return f"{head}  {r['error']}"
    cells = [f"{r['budget_minutes']:g} min".ljust(7), f"{r['model']:9s}", f"{r['sampler']:18s}", f"{r['nfe']:5d}",
             f"{r['fid']:8.2f}", f"{r['fid_ratio']:9.2f}", f"{r['kid']:8.4g}", f"{r['class_max_dev_points']:5.1f}pt",
             f"{r['train_steps']:7d}", f"{r['train_seconds']:8.0f}", f"{r['sample_seconds']:8.1f}"]
    return " ".join(cells)


def table_lines(rows: list[dict]) -> list[str]:
    head = " ".join(f"{h:>{w}s}" if i > 2 else f"{h:{w}s}" for i, (h, _, w) in enumerate(COLUMNS))
    return [head, "-" * len(head)] + [format_row(r) for r in rows]


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


# --- the benchmark -----------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring for the recipes and caveats.")
    p.add_argument("--budgets", type=lambda s: parse_list(s, float, "--budgets"), default=[5.0, 10.0, 20.0],
                   help="wall-clock training budgets in minutes, comma-separated (default 5,10,20)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for everything (default 2)")
    p.add_argument("--preset", default=None, help="scoregen's preset (default mnist-quick where it exists, else "
                   "mnist-tiny)")
    p.add_argument("--nfe", type=lambda s: parse_list(s, int, "--nfe"), default=[50, 100],
                   help="NFE grid of DDIMPipeline and of scoregen's samplers (default 50,100)")
    p.add_argument("--ddpm-steps", type=int, default=1000, help="DDPMPipeline's steps (default 1000, the "
                   "example's; fewer only for a smoke test; 0: no DDPMPipeline row, for a CPU that cannot afford "
                   "1000 NFE); scoregen's samplers also run at this NFE")
    p.add_argument("--no-cross", action="store_true", help="skip scoregen's samplers on the diffusers model (the "
                   "rows that isolate the sampler), to save their sampling time")
    p.add_argument("--scoregen-nfe", type=lambda s: parse_list(s, int, "--scoregen-nfe"), default=None,
                   help="NFE grid of scoregen's samplers on both models (default: --nfe plus --ddpm-steps)")
    p.add_argument("--samplers", default=None, help="scoregen samplers, comma-separated, run on both models "
                   "(default: the preset's own, with its options)")
    p.add_argument("--n", type=int, default=1000, help="samples per row (default 1000)")
    p.add_argument("--sample-batch", type=int, default=250, help="samples per sampler call (default 250)")
    p.add_argument("--horizon", choices=["budget", "fixed"], default="budget",
                   help="where the learning-rate schedules end: at the budget (default) or at the recipes' own "
                   "horizons (the example's 100 epochs; scoregen: no cool-down); see the docstring")
    p.add_argument("--peer-width", type=int, default=None, help="the peer UNet's width w (block_out_channels "
                   "w, w, 2w; default: the parameter count nearest scoregen's network)")
    p.add_argument("--out", default="runs/images-peer", help="folder of the trained models and grids")
    p.add_argument("--json", default=None, help="the results (default OUT/images_peer.json)")
    p.add_argument("--seed", type=int, default=0, help="training, sampling and reference-subset seed")
    p.add_argument("--fresh", action="store_true", help="retrain even where OUT holds a matching trained model")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of scoregen's preset "
                   "(e.g. data.limit=2000); the peer trains on the same data section")
    a = p.parse_args(argv)
    for name in ("threads", "n", "sample_batch"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if a.ddpm_steps < 0:
        p.error(f"--ddpm-steps must be >= 0 (0: no DDPMPipeline row), got {a.ddpm_steps}")
    if a.n < 2:
        p.error("--n must be at least 2 (FID needs a covariance)")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    diffusers = import_diffusers()
    from scoregen.evaluation.classifier import CLASSIFIER_DATASETS, load_classifier
    from scoregen.evaluation.image_metrics import evaluate_images
    from scoregen.plots import image_grid
    from scoregen.runs.run import Run

    torch.set_num_threads(a.threads)
    command = "python benchmarks/images_peer.py " + " ".join(sys.argv[1:] if argv is None else argv)
    preset = a.preset or default_preset()
    cfg = C.load_config(preset, a.overrides)
    dataset = (cfg.get("data") or {}).get("name")
    if dataset not in CLASSIFIER_DATASETS:
        raise SystemExit(f"the preset {preset!r} trains on {dataset!r}; this benchmark scores MNIST-like 1x28x28 "
                         f"images ({', '.join(CLASSIFIER_DATASETS)})")
    samplers = [s.strip() for s in a.samplers.split(",") if s.strip()] if a.samplers else [cfg["sample"]["sampler"]]
    grid_nfe = sorted(set(a.scoregen_nfe or a.nfe) | (set() if a.scoregen_nfe or not a.ddpm_steps else {a.ddpm_steps}))
    out = Path(a.out)
    json_path = Path(a.json) if a.json else out / "images_peer.json"
    data_dir = (cfg.get("data") or {}).get("data_dir")

    sg_params = scoregen_params(cfg)
    width = a.peer_width or peer_width_for(sg_params)
    peer_params = n_params(peer_unet(width))
    print(f"command: {command}")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads")
    print(f"scoregen: preset {preset} ({cfg['model'].get('net')} {cfg['model'].get('channels')}), "
          f"{sg_params:,} parameters; sampler(s) {', '.join(samplers)} at NFE {grid_nfe}")
    print(f"diffusers: UNet2DModel block_out_channels ({width}, {width}, {2 * width}), {peer_params:,} parameters "
          f"({peer_params / sg_params:.2f}x); DDPMPipeline {a.ddpm_steps} steps, DDIMPipeline at NFE {a.nfe}")
    print(f"budgets {a.budgets} min, n = {a.n}, horizon {a.horizon}, out {out}")

    classifier = load_classifier(dataset)
    result = {"command": command, "torch": torch.__version__, "diffusers": diffusers.__version__,
              "threads": torch.get_num_threads(), "preset": preset, "overrides": a.overrides, "config": cfg,
              "peer_recipe": {**PEER, **PEER_BLOCKS, "block_out_channels": [width, width, 2 * width],
                              "norm_num_groups": width // 4, "sample_size": 28, "horizon": a.horizon},
              "params": {"scoregen": sg_params, "diffusers": peer_params}, "n": a.n, "seed": a.seed,
              "budgets_minutes": a.budgets, "train": {}, "rows": []}
    rows = result["rows"]

    def record(budget, model, sampler, nfe, train, fn, grid_name):
        t0 = time.perf_counter()
        row = {"budget_minutes": budget, "model": model, "sampler": sampler, "nfe": nfe,
               "train_steps": train["steps"], "train_seconds": train["seconds"]}
        try:
            images, nfe_done = fn()
            row["sample_seconds"] = time.perf_counter() - t0
            row["nfe"] = nfe_done
            report = evaluate_images(images, dataset, data_dir, value_range=(0, 1), model=classifier, seed=a.seed)
            image_grid(images[:GRID_IMAGES], out / budget_name(budget) / f"grid-{grid_name}-{nfe_done}.png")
            row.update(report)
        except (ValueError, RuntimeError) as e:  # a diverged sampler, an option the process does not take
            row["error"] = f"failed: {str(e).splitlines()[0]}"
        rows.append(row)
        print(format_row(row), flush=True)
        write_json(json_path, result)

    for budget in a.budgets:
        seconds = 60.0 * budget
        bdir = out / budget_name(budget)
        settings = {"version": RECORD_VERSION, "budget_minutes": budget, "threads": a.threads, "preset": preset,
                    "overrides": a.overrides, "horizon": a.horizon, "seed": a.seed}
        print(f"\n[{budget:g} min] training the diffusers peer ...", flush=True)
        peer = trained(bdir / "diffusers", {**settings, "width": width}, a.fresh,
                       lambda: train_peer(cfg, seconds, bdir / "diffusers", width, a.horizon, a.seed))
        print(f"  {peer['steps']} steps ({peer['epochs']:.2f} epochs of {peer['train_images']} images) in "
              f"{peer['seconds']:.0f} s (setup {peer['setup_seconds']:.1f} s), last lr {peer['last_lr']:.2e}, "
              f"EMA decay {peer['ema_decay']:.4f}")
        print(f"[{budget:g} min] training scoregen ({preset}) ...", flush=True)
        sg = trained(bdir / "scoregen", settings, a.fresh,
                     lambda: train_scoregen(cfg, seconds, bdir / "scoregen", a.horizon))
        print(f"  {sg['steps']} steps in {sg['seconds']:.0f} s (first step done at "
              f"{sg['first_step_done_seconds']:.1f} s)")
        result["train"][budget_name(budget)] = {"diffusers": peer, "scoregen": sg}
        print(table_lines([])[0], flush=True)

        peer_dir, sg_dir = bdir / "diffusers", bdir / "scoregen"
        pipes = load_pipelines(peer_dir)  # loading is not timed, as Run.open below is not
        if a.ddpm_steps:
            record(budget, "diffusers", "DDPMPipeline", a.ddpm_steps, peer,
                   lambda: (sample_pipeline(pipes["ddpm"], a.ddpm_steps, a.n, a.sample_batch, a.seed), a.ddpm_steps),
                   "diffusers-DDPMPipeline")
        for nfe in a.nfe:
            record(budget, "diffusers", "DDIMPipeline", nfe, peer,
                   lambda nfe=nfe: (sample_pipeline(pipes["ddim"], nfe, a.n, a.sample_batch, a.seed), nfe),
                   "diffusers-DDIMPipeline")
        peer_run, sg_run = Run.open(peer_dir), Run.open(sg_dir)
        for sampler in samplers:
            opts = sampler_options(cfg, sampler)
            for nfe in ([] if a.no_cross else grid_nfe):
                record(budget, "diffusers", f"{sampler} (scoregen)", nfe, peer,
                       lambda nfe=nfe: sample_scoregen(peer_run, sampler, nfe, opts, a.n, a.sample_batch, a.seed),
                       f"diffusers-{sampler}")
            for nfe in grid_nfe:
                record(budget, "scoregen", f"{sampler} (scoregen)", nfe, sg,
                       lambda nfe=nfe: sample_scoregen(sg_run, sampler, nfe, opts, a.n, a.sample_batch, a.seed),
                       f"scoregen-{sampler}")

    floors = sorted({round(r["fid_floor"], 6) for r in rows if "fid_floor" in r})
    print(f"\ncommand: {command}")
    print(f"n = {a.n} samples per row; FID floor (test vs train at this n): "
          f"{', '.join(f'{f:.3f}' for f in floors) or '-'}; cls dev = the largest class share's distance from 10%")
    print("\n".join(table_lines(rows)))
    write_json(json_path, result)
    print(f"wrote {json_path} and the sample grids in {out}/b*/")
    return result


if __name__ == "__main__":
    main()
