"""A diffusers folder as a scoregen model: (sde, score_fn) from `unet/` + `scheduler/`.

Accepted folders: a saved pipeline (`DDPMPipeline(unet, scheduler).save_pretrained(DIR)`, any pipeline
whose model_index.json names a `unet` and a `scheduler`), or a bare pair of `unet/` (config.json +
weights) and `scheduler/` (scheduler_config.json) folders. `diffusers` is an optional dependency
(`pip install "scoregen[interop]"`), imported only when such a folder is opened; loading reads local
files only.

How the scheduler maps to a process:
  * a DDPM-family scheduler (DDPM, DDIM, PNDM, DPM-Solver, Euler, ...: anything with `alphas_cumprod`)
    becomes `process.discrete.DiscreteVPSDE(alphas_cumprod)`, exact at the table times t_i = (i + 1) / N
    (its docstring says how the discrete and continuous schedules correspond); the network is called
    with the fractional timestep i = t N - 1 and its prediction (`prediction_type`: epsilon, sample or
    v_prediction) becomes the score by the marginal std (`adapters.score_from_prediction`);
  * Score-SDE's `ScoreSdeVeScheduler` becomes the VE process with std from sigma_min to sigma_max
    (`adapters.ve_for_sigmas`); its network takes the noise level std(t) and returns the score itself.
The images are in the network's units, [-1, 1] for diffusers' image pipelines: `value_range` (-1, 1).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..process.discrete import DiscreteVPSDE
from .adapters import PredictionScoreModel, ve_for_sigmas

__all__ = ["is_diffusers_folder", "folder_parts", "load_diffusers", "MissingDependency", "require",
           "DIFFUSERS_VALUE_RANGE"]

#: the data units of diffusers' image pipelines
DIFFUSERS_VALUE_RANGE = (-1.0, 1.0)


class MissingDependency(ImportError, ValueError):
    """An optional package that a feature needs is not installed (a ValueError too: one line on the CLI)."""


def require(module: str, feature: str, package: str | None = None):
    """Import `module`, or MissingDependency naming the package and the install line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0]:
            raise
        pkg = package or module
        raise MissingDependency(f"{feature} needs the optional package {pkg!r}, which is not installed: "
                                f"pip install \"scoregen[interop]\" (or pip install {pkg})") from None


def _parts(path: Path) -> tuple[Path, Path] | None:
    """(unet folder, scheduler folder) of a diffusers folder, or None."""
    unet, sched = path / "unet", path / "scheduler"
    if (unet / "config.json").is_file() and (sched / "scheduler_config.json").is_file():
        return unet, sched
    return None


def is_diffusers_folder(path) -> bool:
    """A saved pipeline (model_index.json) or a bare unet/ + scheduler/ pair."""
    path = Path(path)
    return path.is_dir() and ((path / "model_index.json").is_file() or _parts(path) is not None)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def folder_parts(path) -> tuple[Path, Path]:
    """(unet folder, scheduler folder) of a diffusers folder; a one-line error naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"diffusers folder {str(path)!r} does not exist")
    parts = _parts(path)
    if parts is None:
        index = path / "model_index.json"
        names = sorted(k for k in read_json(index) if not k.startswith("_")) if index.is_file() else []
        raise ValueError(f"{path} is not a diffusers folder scoregen can read: it needs unet/config.json and "
                         f"scheduler/scheduler_config.json" + (f" (model_index.json names {names})" if names else ""))
    return parts


def sde_from_scheduler(scheduler_config: dict, diffusers=None):
    """(sde, prediction type, how the network takes time) from a scheduler's config (module docstring)."""
    name = scheduler_config.get("_class_name")
    if name == "ScoreSdeVeScheduler":
        sde = ve_for_sigmas(scheduler_config.get("sigma_min", 0.01), scheduler_config.get("sigma_max", 1348.0))
        return sde, "score", "sigma"
    diffusers = diffusers or require("diffusers", "reading a diffusers scheduler")
    cls = getattr(diffusers, str(name), None)
    if cls is None:
        raise ValueError(f"unknown diffusers scheduler {name!r} (scheduler_config.json _class_name)")
    sched = cls.from_config(scheduler_config)
    abar = getattr(sched, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"scheduler {name!r} has no alphas_cumprod table and is not ScoreSdeVeScheduler; "
                         "scoregen maps DDPM-family schedulers (DDPM, DDIM, PNDM, DPM-Solver, Euler, ...) and "
                         "ScoreSdeVeScheduler")
    kind = scheduler_config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"scheduler prediction_type {kind!r} is not one of ['epsilon', 'sample', 'v_prediction']")
    return DiscreteVPSDE(torch.as_tensor(abar, dtype=torch.float64)), kind, "timestep"


def load_diffusers(path, device="cpu"):
    """(model, meta) of a diffusers folder: `model` a `PredictionScoreModel` (an nn.Module with `.sde` and
    `.score_fn()`, weights frozen, eval mode), `meta` with data_shape [1, C, H, W], the scheduler's
    class, config and prediction type."""
    path = Path(path)
    unet_dir, sched_dir = folder_parts(path)
    diffusers = require("diffusers", f"opening the diffusers folder {path}")
    sched_cfg = read_json(sched_dir / "scheduler_config.json")
    unet_cfg = read_json(unet_dir / "config.json")
    sde, kind, time_input = sde_from_scheduler(sched_cfg, diffusers)
    cls = getattr(diffusers, str(unet_cfg.get("_class_name")), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"unknown diffusers model class {unet_cfg.get('_class_name')!r} ({unet_dir}/config.json)")
    try:
        unet = cls.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, EnvironmentError) as e:
        raise FileNotFoundError(f"cannot load the network in {unet_dir}: {str(e).splitlines()[0]}") from None
    unet = unet.to(device).eval().requires_grad_(False)
    noise_input = sde.timestep if time_input == "timestep" else sde.std
    model = PredictionScoreModel(unet, sde, kind, noise_input=noise_input, output=lambda out: out.sample)
    size = unet_cfg.get("sample_size", 32)
    hw = [int(size), int(size)] if isinstance(size, (int, float)) else [int(v) for v in size]
    meta = {"step": None, "source": "diffusers", "scheduler": sched_cfg.get("_class_name"), "prediction": kind,
            "data_shape": [1, int(unet_cfg.get("in_channels", 3)), *hw], "run_dir": str(path),
            "train_config": {}, "loss_history": [], "best_step": None, "val_loss": None}
    return model, meta
