"""The shared vocabulary of the package: per-example time vectors, argument checks, name registries and
atomic writes. It imports nothing from scoregen, so every layer may use it.

    time_vector(t, x)            a time (float, 0-d or (N,) tensor) as an (N,) tensor in x's dtype/device
    check_positive_int(v, name)  v as an int >= 1, or ValueError "NAME must be a positive integer, got V"
    check_eps(eps, T)            the smallest time eps in (0, T) (None -> the given default)
    Registry(kind)               name -> object with one name rule (`normalize_name`) and aliases;
                                 `lookup(name)` raises "unknown KIND 'NAME'; choose one of [...]"
    atomic_write(path, data)     bytes/str (or a writer callback) into a temporary file, renamed over path
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Generic, Iterable, TypeVar

import torch

__all__ = ["time_vector", "check_positive_int", "check_eps", "check_number", "normalize_name", "choose_one_of",
           "Registry", "atomic_write", "fsync_dir", "ScoreFn"]

#: A score model: score_fn(x, t) -> tensor shaped like x, with t an (N,) tensor of times in x's dtype/device.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

T_ = TypeVar("T_")


# --- time vectors -----------------------------------------------------------------------------
def time_vector(t, x: torch.Tensor) -> torch.Tensor:
    """The time t as an (N,) tensor in x's dtype and device, N = x.shape[0]: t may be a float, a 0-d
    tensor or an (N,) tensor (the per-example times a `score_fn(x, t)` receives)."""
    if isinstance(t, (int, float)):
        return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    t = torch.as_tensor(t)
    if t.dim() == 0:
        return t.to(dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t.to(dtype=x.dtype, device=x.device)


# --- argument checks --------------------------------------------------------------------------
def check_positive_int(value, name: str) -> int:
    """`value` as an int >= 1 (bools and non-integral numbers refused)."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and int(value) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_number(value, name: str, *, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False,
                 what: str = "") -> float:
    """`value` as a finite float in [lo, hi] ((lo, hi] with lo_open); `what` is appended to the message
    ("NAME must be a number in [lo, hi]", "... >= lo", "... > lo" or "... <= hi")."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        if lo > -math.inf and hi < math.inf:
            bound = f" in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        elif lo > -math.inf:
            bound = f" {'>' if lo_open else '>='} {lo:g}"
        elif hi < math.inf:
            bound = f" <= {hi:g}"
        else:
            bound = " (finite)"
        raise ValueError(f"{name} must be a number{bound}{what}, got {value!r}")
    return float(value)


def check_eps(eps, T: float, default: float | None = None, name: str = "eps") -> float:
    """The smallest time of a grid: `eps` (or `default` when None) as a float in (0, T)."""
    eps = default if eps is None else eps
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, T={T}), got {eps!r}") from None
    if not 0 < eps < T:
        raise ValueError(f"{name} must lie in (0, T={T}), got {name}={eps}")
    return eps


# --- registries -------------------------------------------------------------------------------
def normalize_name(name) -> str:
    """The one name rule of every registry: case, spaces, '-' and '_' are ignored and '+' reads as 'p'
    ('DPM++2M', 'dpmpp2m' and 'dpm_pp_2m' are one name; so are 'sub-vp' and 'subvp')."""
    s = str(name).strip().lower().replace("+", "p")
    return "".join(ch for ch in s if ch not in "-_ ")


def choose_one_of(kind: str, name, choices: Iterable[str]) -> str:
    """The one "unknown" message: unknown KIND 'NAME'; choose one of [...]."""
    return f"unknown {kind} {name!r}; choose one of {list(choices)}"


class Registry(dict, Generic[T_]):
    """A dict name -> object whose keys are the canonical names, with `lookup` by any spelling.

    `lookup(name)` matches `name` and the aliases under `normalize_name`, and raises ValueError
    (`choose_one_of`) naming the canonical names; `key(name)` gives the canonical name. `meta[name]`
    holds optional plain data about an entry (e.g. a sampler's NFE per step).
    """

    def __init__(self, kind: str, entries: dict | None = None, aliases: dict | None = None, *, sort: bool = True):
        super().__init__()
        self.kind, self.sort = kind, sort
        self.aliases: dict[str, str] = {}
        self.meta: dict[str, dict] = {}
        for k, v in (entries or {}).items():
            self[k] = v
        for a, k in (aliases or {}).items():
            self.alias(a, k)

    def __setitem__(self, name: str, obj) -> None:
        norm = normalize_name(name)
        clash = next((k for k in self if normalize_name(k) == norm and k != name), None)
        if clash is not None:
            raise ValueError(f"{self.kind} name {name!r} reads as the existing {clash!r}")
        super().__setitem__(name, obj)

    def register(self, name: str, obj, *, aliases: Iterable[str] = (), **meta):
        """Add `obj` under `name` (and `aliases`), with plain-data `meta`; returns obj."""
        self[name] = obj
        for a in aliases:
            self.alias(a, name)
        if meta:
            self.meta[name] = dict(meta)
        return obj

    def alias(self, alias: str, name: str) -> None:
        if name not in self:
            raise ValueError(f"alias {alias!r} points to {name!r}, which is not a {self.kind}")
        self.aliases[normalize_name(alias)] = name

    def names(self) -> list[str]:
        return sorted(self) if self.sort else list(self)

    def key(self, name) -> str:
        """The canonical name for any accepted spelling of `name`."""
        norm = normalize_name(name)
        for k in self:
            if normalize_name(k) == norm:
                return k
        if norm in self.aliases:
            return self.aliases[norm]
        raise ValueError(choose_one_of(self.kind, name, self.names()))

    def lookup(self, name):
        """The object registered under any accepted spelling of `name`."""
        return self[self.key(name)]

    def __contains__(self, name) -> bool:  # exact canonical names, as a dict
        return dict.__contains__(self, name)


# --- atomic writes ----------------------------------------------------------------------------
def atomic_write(path, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write `data` to `path` atomically: into a temporary file in the same folder, fsynced, then
    renamed over `path` (`os.replace` is atomic on POSIX), so a crash leaves the old file or the new
    one, never half of one (nor the temporary file). `data` may be bytes, a str (UTF-8) or a callback
    writer(f) on the open binary file (e.g. `lambda f: torch.save(obj, f)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return path


def fsync_dir(folder) -> None:
    """Make a rename in `folder` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
