"""`scoregen distill RUN_DIR --out DIR`: a one- or few-step consistency model from a trained run (resumable)."""
from __future__ import annotations

import json
from pathlib import Path

HELP = ("distill a trained run into a consistency model that samples in 1-4 steps (cd: consistency distillation, "
        "ct: consistency training on the run's data, ect: consistency tuning of an EDM run); rerunning resumes")

EXAMPLES = [
    "scoregen distill runs/mix --out runs/mix-cd",
    "scoregen distill runs/mix --out runs/mix-ct --method ct loss.metric=l2",
    "scoregen sample runs/mix-cd --steps 1 --n 2000",
    "scoregen distill runs/mnist --out runs/mnist-ect --method ect",
]

DEFAULT_STEPS = 4000


def add_arguments(p):
    from scoregen.training.consistency import METHODS

    from .common import add_progress_flag

    p.add_argument("run_dir", metavar="RUN_DIR", help="the teacher: a run folder made by `scoregen train` (or an export)")
    p.add_argument("--out", required=True, help="the consistency model's run folder (an existing one is resumed)")
    p.add_argument("--method", choices=METHODS, default="cd",
                   help="cd: distil the teacher's probability-flow ODE (default); ct: consistency training on the "
                        "teacher's data, no teacher; ect: ECT, tuning that starts from an EDM-preconditioned teacher")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {DEFAULT_STEPS})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--sample-every", type=int, default=None, metavar="K",
                   help="every K steps save a picture of 2-step samples as OUT/samples/step_XXXXXX.png (0 = never)")
    p.add_argument("--fresh", action="store_true", help="start over even if --out holds a run")
    add_progress_flag(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. loss.metric=l2 loss.levels=40 train.lr=5e-4")


def run(args):
    import torch

    from scoregen import plots
    from scoregen.runs.config import parse_override
    from scoregen.runs.distill import distill_config
    from scoregen.runs.recipe import train_run

    from .common import check_positive, show_progress
    from .train import sample_callback

    check_positive(steps=args.steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    for o in args.overrides:
        parse_override(o)
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides = [f"train.steps={args.steps}"] + overrides
    if args.sample_every is not None:
        if args.sample_every < 0:
            raise ValueError(f"--sample-every must be a number of steps >= 0 (0 = never), got {args.sample_every}")
        overrides.append(f"train.callback_every={args.sample_every}")
    cfg = distill_config(args.run_dir, method=args.method, steps=DEFAULT_STEPS, overrides=overrides)
    trainer = train_run(cfg, args.out, resume=not args.fresh, overrides=overrides, progress=show_progress(args),
                        callback=sample_callback(args.out, sampler="consistency", steps=2))
    out = Path(args.out)
    hist = trainer.loss_history
    tail = hist[-min(100, len(hist)):]
    plots.loss_curve(hist, out / "loss.png")
    print(json.dumps({"run_dir": str(out), "teacher": str(args.run_dir), "method": args.method, "step": trainer.step,
                      "loss_last100": sum(tail) / max(len(tail), 1)}))
