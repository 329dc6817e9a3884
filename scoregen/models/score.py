"""ScoreModel: a network + a forward SDE -> a score s(x, t, y=None) ~ grad_x log p_t(x | y).

The network sees a noise input c(t) and returns a vector shaped like x (nets know no SDE):

    cond="log_std":  c = log std(t)   (works for VE, VP, sub-VP and the NCSN ladder alike)
    cond="t":        c = t
    s(x, t, y) = net(c_in(t) x, c(t), y) / std(t)      (each factor can be switched off)
    c_in(t) = 1 / sqrt(alpha(t)^2 + std(t)^2)          if scale_input, else 1

Dividing by std is the output scaling of Song et al. (2021) (its MNIST tutorial's ScoreNet): the true score of the
noised data has norm ~ 1/std (grad log p_t = -E[z | x_t] / std), so the network only has to output
something of order one, -E[z | x_t], at every noise level. The input scaling c_in is EDM's
(Karras et al. 2022, with sigma_data = 1: the trainer standardizes data): it keeps the network's
input of unit size when VE noise makes x(t) as large as sigma_max. It is 1 for VP and ~1 for
sub-VP; for VE on the 3-Gaussian mixture it lowered the learned score's error at large t about 3x.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..process.sde import SDE, broadcast_to, make_sde
from ..util import ScoreFn, time_vector
from .nets import build_net

__all__ = ["ScoreModel", "CONDS", "PARAMETERIZATIONS", "batch_time"]

CONDS = ("log_std", "t")
#: how the network output becomes a score; an EDM denoiser parameterization can be added here.
PARAMETERIZATIONS = ("score",)


def batch_time(t, x: torch.Tensor) -> torch.Tensor:
    """A time given as a float, a 0-d or an (N,) tensor -> an (N,) tensor in x's dtype/device
    (`util.time_vector`)."""
    return time_vector(t, x)


class ScoreModel(nn.Module):
    """s(x, t, y=None) = net(x, c(t), y) / std(t) (see the module docstring).

    `net` must come from `nets.build_net` (it carries `net_config`) for `config()` to work.
    """

    def __init__(self, net: nn.Module, sde: SDE, cond: str = "log_std", scale_by_std: bool = True,
                 scale_input: bool = True, parameterization: str = "score"):
        super().__init__()
        if cond not in CONDS:
            raise ValueError(f"unknown cond {cond!r}; choose one of {list(CONDS)}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {list(PARAMETERIZATIONS)}")
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be a scoregen.process.sde.SDE, got {type(sde).__name__}")
        self.net, self.sde = net, sde
        self.cond, self.scale_by_std, self.scale_input = cond, bool(scale_by_std), bool(scale_input)
        self.parameterization = parameterization

    def noise_input(self, t: torch.Tensor) -> torch.Tensor:
        """c(t): log std(t) or t itself, shape (N,)."""
        return torch.log(self.sde.std(t)) if self.cond == "log_std" else t

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        t = batch_time(t, x)
        if self.scale_input:
            c_in = torch.rsqrt(self.sde.alpha(t) ** 2 + self.sde.std(t) ** 2)
            out = self.net(broadcast_to(c_in, x) * x, self.noise_input(t), y)
        else:
            out = self.net(x, self.noise_input(t), y)
        if self.scale_by_std:
            out = out / broadcast_to(self.sde.std(t), out)
        return out.to(x.dtype)

    def score_fn(self, y=None):
        """The plain function (x, t) -> score of the sampler contract, for label y (int, (N,) tensor or None).

        Gradients are not switched off (likelihoods differentiate through it); every sampler runs
        under torch.no_grad(), and guidance that needs gradients enables them inside its score_fn.
        """

        def fn(x, t):
            labels = y
            if labels is not None:
                labels = torch.as_tensor(labels, dtype=torch.long, device=x.device)
                labels = labels.expand(x.shape[0]) if labels.dim() == 0 else labels
            return self(x, t, labels)

        return fn

    # --- plain-data description for checkpoints ------------------------------------------
    def config(self) -> dict:
        """Plain data: {"net": {"name", "kwargs"}, "sde": sde.config(), "cond", "scale_by_std",
        "scale_input", "parameterization"}."""
        net_config = getattr(self.net, "net_config", None)
        if net_config is None:
            raise ValueError("ScoreModel.config() needs a network built with scoregen.models.nets.build_net(name, ...)")
        return {"net": copy.deepcopy(net_config), "sde": self.sde.config(), "cond": self.cond,
                "scale_by_std": self.scale_by_std, "scale_input": self.scale_input,
                "parameterization": self.parameterization}

    @staticmethod
    def parts_from_config(cfg: dict):
        """(net with fresh weights, sde) from a `config()` output; subclasses' from_config share it."""
        missing = [k for k in ("net", "sde") if k not in cfg]
        if missing:
            raise ValueError(f"a model config needs the keys {missing}; got {sorted(cfg)}")
        net_cfg, sde_cfg = dict(cfg["net"]), dict(cfg["sde"])
        if "name" not in net_cfg or "name" not in sde_cfg:
            raise ValueError(f"net and sde configs need a 'name', got net={net_cfg}, sde={sde_cfg}")
        return build_net(net_cfg["name"], **net_cfg.get("kwargs", {})), make_sde(**sde_cfg)

    @classmethod
    def from_config(cls, cfg: dict) -> "ScoreModel":
        """Rebuild (with fresh weights) from `config()`'s output; load a state dict afterwards."""
        net, sde = cls.parts_from_config(cfg)
        return cls(net, sde, cond=cfg.get("cond", "log_std"), scale_by_std=cfg.get("scale_by_std", True),
                   scale_input=cfg.get("scale_input", True), parameterization=cfg.get("parameterization", "score"))

    def extra_repr(self) -> str:
        return (f"sde={self.sde!r}, cond={self.cond!r}, scale_by_std={self.scale_by_std}, "
                f"scale_input={self.scale_input}, parameterization={self.parameterization!r}")
