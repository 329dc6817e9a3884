"""Which kind of folder a RUN_DIR is, and its parts as `runs.Run` needs them.

A RUN_DIR may be a scoregen run (config.yaml + checkpoint.pt, read by `runs.run`), a scoregen export
(`export.py`: scoregen_export.json + model.safetensors) or a diffusers folder (`hf.py`). `open_folder`
returns (model, sde, normalizer, meta, config) for the last two, `folder_config` their config, and both
None for anything else, so `runs.Run.open` and `runs.run.load_run_config` accept all three.

A diffusers folder has no scoregen config: its config is made here, with no data set (`data.name` None:
commands that need data take --data), data units [-1, 1] (the pipelines' images) and the sampler the
pipeline itself would use, DDIM with 50 steps (for Score-SDE VE: predictor-corrector, 1000 steps).
"""
from __future__ import annotations

from pathlib import Path

from ..training.trainer import Normalizer
from . import export, hf

__all__ = ["folder_kind", "open_folder", "folder_config"]


def folder_kind(path) -> str | None:
    """"export", "diffusers" or None (a scoregen run folder, or not a model folder at all)."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        return None
    if export.is_export_folder(path):
        return "export"
    if hf.is_diffusers_folder(path):
        return "diffusers"
    return None


def _diffusers_config(meta: dict) -> dict:
    ve = meta.get("scheduler") == "ScoreSdeVeScheduler"
    sample = {"sampler": "pc", "steps": 1000} if ve else {"sampler": "ddim", "steps": 50}
    return {"data": {"name": None, "value_range": list(hf.DIFFUSERS_VALUE_RANGE)},
            "sample": {**sample, "n": 16, "batch_size": 16, "seed": 0},
            "source": {"kind": "diffusers", "scheduler": meta.get("scheduler"), "prediction": meta.get("prediction")}}


def open_folder(path, device="cpu"):
    """(model, sde, normalizer, meta, config) of an export or diffusers folder; None for other folders."""
    kind = folder_kind(path)
    if kind == "export":
        return export.load_export(path, device=device)
    if kind == "diffusers":
        model, meta = hf.load_diffusers(path, device=device)
        return model, model.sde, Normalizer(0.0, 1.0), meta, _diffusers_config(meta)
    return None


def folder_config(path) -> dict | None:
    """The config of an export or diffusers folder (without loading its weights); None for other folders."""
    kind = folder_kind(path)
    if kind == "export":
        return export.read_export_config(path)["run_config"]
    if kind == "diffusers":  # a model_index.json without unet/ + scheduler/ is refused here, in one line
        sched = hf.read_json(hf.folder_parts(path)[1] / "scheduler_config.json")
        return _diffusers_config({"scheduler": sched.get("_class_name"), "prediction": sched.get("prediction_type")})
    return None
