"""Score networks and their registry.

Networks know no SDE: `net(x, c, y=None)` with c a per-example noise input of shape (N,). They are
built by name from plain-data keyword arguments, so a checkpoint stores ("mlp", {...}) and rebuilds
the network without pickling code:

    net = build_net("mlp", dim=2, hidden=128)
    net.net_config  # {"name": "mlp", "kwargs": {"dim": 2, "hidden": 128}}
"""
from __future__ import annotations

import inspect

from torch import nn

from ...util import Registry

from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from .mlp import ScoreMLP
from .ncsn import NCSN
from .unet import SeedUNet, UNet

__all__ = ["NETS", "build_net", "register_net", "ScoreMLP", "UNet", "SeedUNet", "NCSN", "SinusoidalEmbedding", "GaussianFourierEmbedding"]

#: name -> network class; each class takes plain-data keyword arguments only.
NETS: Registry[type[nn.Module]] = Registry("network", {"mlp": ScoreMLP, "unet": UNet, "ncsn": NCSN, "seed-unet": SeedUNet})

_PLAIN = (bool, int, float, str, type(None))


def register_net(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Add a network class to `NETS` under `name` (refuses to overwrite another class)."""
    if name in NETS and NETS[name] is not cls:
        raise ValueError(f"a network named {name!r} is already registered ({NETS[name].__name__})")
    NETS[name] = cls
    return cls


def _is_plain(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_is_plain(u) for u in v)
    return isinstance(v, _PLAIN)


def build_net(name: str, **kwargs) -> nn.Module:
    """Build the registered network `name` with `kwargs`; records them as `net.net_config`."""
    name = NETS.key(name)
    cls = NETS[name]
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"network {name!r} takes no option(s) {unknown}; accepted: {list(params)}")
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in kwargs
               and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    if missing:
        raise ValueError(f"network {name!r} needs option(s) {missing}")
    bad = sorted(k for k, v in kwargs.items() if not _is_plain(v))
    if bad:
        raise ValueError(f"network options must be plain numbers/strings/lists (for checkpoints), got {bad}")
    net = cls(**kwargs)
    net.net_config = {"name": name, "kwargs": dict(kwargs)}
    return net
