"""Export a trained run as safetensors weights + a JSON description, and load it back without pickle.

    scoregen export runs/mix --out exports/mix          # or export_run(Run.open("runs/mix"), "exports/mix")
    Run.open("exports/mix")                              # every RUN_DIR command reads the folder too
    model, sde, normalizer, meta, config = load_export("exports/mix")

The folder holds
  * `model.safetensors`: the model's state dict (the run's EMA weights, as `Run.open` loads them) and
    nothing else; safetensors holds raw tensors, so loading it runs no code;
  * `scoregen_export.json`: {"format": "scoregen-export", "version", "model_config" (the model's own
    `config()`: network name and options, SDE, parameterization), "normalizer" (mean, its shape, scale),
    "data_shape", "step", "train_config" (the run's saved training options, which guidance reads),
    "run_config" (the run's config.yaml as plain data)}.
Loading rebuilds the model from "model_config" (`models.edm.model_from_config`) and fills it with the
tensors, checking both ways: a tensor the model lacks, a tensor the file lacks, a shape that differs,
or a JSON key missing or unknown is a ValueError naming it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.edm import model_from_config
from ..training.trainer import Normalizer
from ..util import atomic_write
from .hf import require

__all__ = ["export_run", "load_export", "is_export_folder", "EXPORT_FORMAT", "EXPORT_VERSION", "WEIGHTS_NAME",
           "EXPORT_CONFIG_NAME"]

EXPORT_FORMAT = "scoregen-export"
EXPORT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
EXPORT_CONFIG_NAME = "scoregen_export.json"
_KEYS = ("format", "version", "model_config", "normalizer", "data_shape", "step", "train_config", "run_config")
_NORMALIZER_KEYS = ("mean", "mean_shape", "scale")


def is_export_folder(path) -> bool:
    return (Path(path) / EXPORT_CONFIG_NAME).is_file()


def _plain(obj):
    """Plain JSON data (tuples -> lists); anything else is refused with where it sits."""
    if isinstance(obj, (bool, int, float, str, type(None))):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    raise ValueError(f"cannot export a {type(obj).__name__} ({obj!r:.60}) in the run's description: only plain data")


def export_run(run, out) -> Path:
    """Write `run` (a `runs.Run`, or anything with model, normalizer, meta and config) to the folder `out`:
    model.safetensors + scoregen_export.json (module docstring). Returns the folder."""
    st = require("safetensors.torch", "scoregen export", "safetensors")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in run.model.state_dict().items()}
    mean = run.normalizer.mean.detach().cpu().to(torch.float32)
    desc = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model_config": _plain(run.model.config()),
            "normalizer": {"mean": mean.flatten().tolist(), "mean_shape": list(mean.shape),
                           "scale": float(run.normalizer.scale)},
            "data_shape": [int(v) for v in run.meta["data_shape"]], "step": run.meta.get("step"),
            "train_config": _plain(run.meta.get("train_config") or {}),
            "run_config": _plain(run.config)}
    atomic_write(out / WEIGHTS_NAME, st.save(state, metadata={"format": EXPORT_FORMAT}))
    atomic_write(out / EXPORT_CONFIG_NAME, json.dumps(desc, indent=1))
    return out


def _check_keys(d: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{where} lacks the key {missing[0]!r} (it needs {list(keys)})")
    extra = sorted(set(d) - set(keys))
    if extra:
        raise ValueError(f"{where} has an unknown key {extra[0]!r} (accepted: {list(keys)})")


def read_export_config(path) -> dict:
    path = Path(path)
    file = path / EXPORT_CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a scoregen export folder "
                                "(make one with `scoregen export RUN_DIR --out DIR`)")
    try:
        desc = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(desc, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(desc).__name__}")
    _check_keys(desc, _KEYS, str(file))
    if desc["format"] != EXPORT_FORMAT:
        raise ValueError(f"{file} has format {desc['format']!r}, not {EXPORT_FORMAT!r}")
    if not isinstance(desc["version"], int) or desc["version"] > EXPORT_VERSION:
        raise ValueError(f"{file} has export version {desc['version']!r}; this scoregen reads versions "
                         f"<= {EXPORT_VERSION}")
    if not isinstance(desc["normalizer"], dict):
        raise ValueError(f"{file}: 'normalizer' must be an object with keys {list(_NORMALIZER_KEYS)}")
    _check_keys(desc["normalizer"], _NORMALIZER_KEYS, f"{file} 'normalizer'")
    return desc


def _load_tensors(file: Path) -> dict:
    st = require("safetensors.torch", "reading a scoregen export", "safetensors")
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the export's weights are missing")
    try:
        return st.load_file(str(file))
    except Exception as e:  # safetensors raises SafetensorError (not a ValueError) on a bad header
        raise ValueError(f"cannot read {file} as safetensors [{type(e).__name__}: {str(e).splitlines()[0][:120]}]") \
            from None


def load_state_strict(model: torch.nn.Module, tensors: dict, where: str) -> None:
    """Fill `model` from `tensors`, refusing a missing or an unexpected tensor or a shape mismatch by name."""
    want = model.state_dict()
    missing = [k for k in want if k not in tensors]
    if missing:
        raise ValueError(f"{where} lacks the tensor {missing[0]!r} that the model of the export's model_config has"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [k for k in tensors if k not in want]
    if extra:
        raise ValueError(f"{where} holds the tensor {extra[0]!r}, which the model of the export's model_config "
                         "does not have" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for k, v in want.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ValueError(f"{where}: tensor {k!r} has shape {list(tensors[k].shape)}, but the model of the "
                             f"export's model_config expects {list(v.shape)}")
    model.load_state_dict(tensors, strict=True)


def load_export(path, device="cpu"):
    """(model in eval mode with frozen weights, sde, normalizer, meta, run config) of an export folder."""
    path = Path(path)
    desc = read_export_config(path)
    try:
        model = model_from_config(desc["model_config"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path / EXPORT_CONFIG_NAME}: model_config does not describe a scoregen model "
                         f"[{type(e).__name__}: {e}]") from None
    load_state_strict(model, _load_tensors(path / WEIGHTS_NAME), str(path / WEIGHTS_NAME))
    model = model.to(device).eval().requires_grad_(False)
    n = desc["normalizer"]
    mean = torch.tensor(n["mean"], dtype=torch.float32).reshape(n["mean_shape"])
    normalizer = Normalizer(mean, n["scale"])
    meta = {"step": desc["step"], "source": "scoregen export", "train_config": desc["train_config"], "loss_history": [],
            "data_shape": list(desc["data_shape"]), "run_dir": str(path), "best_step": None, "val_loss": None}
    return model, model.sde, normalizer, meta, desc["run_config"]
