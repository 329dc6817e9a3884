"""The recipe of a distilled run: a trained run's config turned into a consistency model's.

    cfg = distill_config("runs/mix", method="cd")       # teacher: runs/mix
    trainer = recipe.train_run(cfg, "runs/mix-cd")       # OUT/config.yaml, checkpoint.pt, like `train`
    x = recipe.sample_run("runs/mix-cd", steps=1).samples

The student keeps the teacher's data, network (architecture) and forward process, becomes
`model.parameterization: consistency` (sigma_data: the teacher's for an EDM run, else measured on
the standardized data), trains the `consistency` loss (`training.consistency`) with `loss.teacher`
naming the teacher's folder, and samples with the `consistency` sampler in 2 steps. Training
runs at half the teacher's learning rate (`LR_FACTOR`), anneals it (cosine) and has no held-out
early stopping: the consistency loss changes with the level curriculum, so its held-out value is
not a model-selection signal.
"""
from __future__ import annotations

from pathlib import Path

from . import config as C
from .run import load_run_config

__all__ = ["distill_config"]

_WRAP = ("cond", "scale_by_std", "scale_input")
#: the student's learning rate / the teacher's. CD from a points-preset run on 20000 draws of the 5-D
#: suite mixture (benchmarks/distill.py --trained) collapsed onto one mode at the teacher's 2e-3 (1-step
#: samples at 477 x the energy floor) and reached 2.2 x at 2 NFE (the teacher's best: 3.0 x) at 1e-3;
#: consistency models are trained at lower rates than their diffusion teachers in the papers too
#: (Song et al. 2023: 4e-4 for CD on CIFAR-10, against EDM's 1e-3).
LR_FACTOR = 0.5


def distill_config(teacher_dir, method: str = "cd", steps: int = 4000, overrides=()) -> dict:
    """The config of a consistency model distilled (cd), trained (ct) or tuned (ect) from `teacher_dir`."""
    try:
        teacher = load_run_config(teacher_dir)
    except FileNotFoundError as e:
        raise ValueError(f"cannot distill {teacher_dir}: {e}") from None
    missing = [s for s in ("data", "model", "sde") if not teacher.get(s)]
    if missing:
        raise ValueError(f"cannot distill {teacher_dir}: its config has no {missing} section (distill a run made by "
                         "`scoregen train`)")
    model = {k: v for k, v in teacher["model"].items() if k not in _WRAP}
    if model.get("parameterization") == "consistency":
        raise ValueError(f"{teacher_dir} is already a consistency model; distill a score model (a trained run)")
    if model.get("parameterization") != "edm":
        model.pop("sigma_data", None)
    model.update(parameterization="consistency", sigma_data=model.get("sigma_data", "auto"))
    train = {k: v for k, v in (teacher.get("train") or {}).items()}
    lr = float(train.get("lr", 2e-3)) * LR_FACTOR
    train.update(steps=int(steps), lr=lr, validation=0.0, patience=0, lr_decay="cosine", decay_start=0)
    sample = {k: v for k, v in (teacher.get("sample") or {}).items() if k in C.SAMPLE_KEYS}
    sample.update(sampler="consistency", steps=2)
    cfg = {"data": teacher["data"], "model": model, "sde": teacher["sde"],
           "loss": {"name": "consistency", "method": method, "teacher": str(Path(teacher_dir).resolve())},
           "train": train, "sample": sample}
    cfg = C.apply_overrides(cfg, overrides)
    C.validate_config(cfg)
    return cfg
