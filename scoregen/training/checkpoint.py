"""Atomic, code-free checkpoints.

A checkpoint is a `torch.save`d dict of tensors and plain data (numbers, strings, lists, dicts)
stamped with {"format": "scoregen-checkpoint", "version": 1}. Saving writes a temporary file in
the same folder, fsyncs it and renames it over the target (`os.replace` is atomic on POSIX), so a
crash leaves the previous checkpoint intact. Loading uses `torch.load(weights_only=True)`, whose
restricted unpickler refuses every global but tensors and containers, so opening a file never runs
code from it; every failure becomes a `CheckpointError` (a ValueError) that names the file.
Files written before the marker existed (the shipped classifier weights) are read with
`load_checkpoint(path, accept_unmarked=True)`: the same safe loader, without the marker check.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from ..util import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "FORMAT", "VERSION", "CHECKPOINT_NAME"]

FORMAT = "scoregen-checkpoint"
VERSION = 1
#: the file name inside a run folder
CHECKPOINT_NAME = "checkpoint.pt"

_PLAIN = (bool, int, float, str, bytes, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A file that cannot be read as a scoregen checkpoint."""


def _check_plain(obj, where: str = "state") -> None:
    """Refuse anything torch.load(weights_only=True) would refuse later, naming where it sits."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise ValueError(f"checkpoint keys must be str or int, got {k!r} at {where}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise ValueError(f"checkpoints hold only tensors and plain data; {where} is a {type(obj).__name__}")


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` (plus the format marker) to `path` atomically; returns the path."""
    if not isinstance(state, dict):
        raise ValueError(f"a checkpoint state must be a dict, got {type(state).__name__}")
    _check_plain(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**state, "format": FORMAT, "version": VERSION}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def _load_failure(path: Path, e: Exception) -> str:
    """A one-line explanation of why torch.load(weights_only=True) refused the file."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    globals_ = [ln for ln in lines if "GLOBAL" in ln]
    if globals_:  # the safe unpickler met a class or function: running it could execute code
        return (f"refusing to load {path}: it holds Python objects other than tensors and plain data, "
                f"and loading them could run code [{globals_[0]}]")
    detail = next((ln for ln in lines if "Unsupported" in ln),
                  next((ln for ln in lines if "failed" in ln.lower()), lines[0] if lines else ""))[:160]
    return (f"cannot read {path}: the file is truncated, corrupt or not a torch checkpoint "
            f"[{type(e).__name__}{': ' + detail if detail else ''}]")


def load_checkpoint(path, map_location="cpu", *, accept_unmarked: bool = False) -> dict:
    """Read a checkpoint written by `save_checkpoint` (a run folder means its checkpoint.pt).

    accept_unmarked: also return a dict of tensors and plain data that carries no format marker (a
    file written before the format existed), as it is; it is still read with `weights_only=True`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        raise CheckpointError(_load_failure(path, e)) from None
    if accept_unmarked and isinstance(state, dict) and "format" not in state:
        return state
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a scoregen checkpoint "
                              f"(no format={FORMAT!r} marker)")
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this scoregen reads versions <= {VERSION}")
    return state
