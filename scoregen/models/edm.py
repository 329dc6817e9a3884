"""EDM preconditioning: a network as a denoiser D(x_hat; sigma), beside the plain score parameterization.

Karras, Aittala, Aila, Laine (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models" (EDM), Sec. 5 and Table 1. Every process here is linear, x(t) = alpha(t) x(0) + std(t) z, so
x_hat = x / alpha = x(0) + sigma z with sigma = std / alpha (`SDE.sigma`), and

    D(x_hat; sigma) = c_skip(sigma) x_hat + c_out(sigma) F(c_in(sigma) x_hat; c_noise(sigma)),
    c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4,        sd = sigma_data,

chosen so that the network's input and its training target both have unit variance at every
sigma. D estimates E[x(0) | x(t)], so by Tweedie the score of x(t) is

    s(x, t) = (alpha D - x) / std^2 = (D - x_hat) / (alpha sigma^2)     ((D - x) / sigma^2 for VE).

The loss (`training.losses.EDMLoss`; EDM eq. 8, Table 1) draws log sigma ~ N(P_mean, P_std^2) and weighs by
lambda(sigma) = 1 / c_out^2 = (sigma^2 + sd^2) / (sigma sd)^2:

    l = lambda(sigma) / 2 || D(x(0) + sigma z; sigma) - x(0) ||^2     (summed over coordinates).

Since D - x(0) = sigma (std s + z), this is (sigma^2 + sd^2) / sd^2 times the DSM term
1/2 || std s + z ||^2 of `losses`, so any score model can be trained or scored with it.
"""
from __future__ import annotations


import math
import warnings

import torch

from ..process.sde import SDE, broadcast_to
from .score import ScoreModel, batch_time

__all__ = ["edm_coefficients", "EDMModel", "MODEL_CLASSES", "model_class", "model_from_config",
           "estimate_sigma_data", "check_sigma_data"]


def __getattr__(name):
    """PEP 562: `EDMLoss` lived here (scoregen.preconditioning) until the objectives moved to
    training.losses; the old name resolves there for one release."""
    if name == "EDMLoss":
        warnings.warn("scoregen.preconditioning.EDMLoss moved to scoregen.training.losses.EDMLoss",
                      DeprecationWarning, stacklevel=2)
        from ..training.losses import EDMLoss

        return EDMLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_sigma_data(sigma_data) -> float:
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not (0 < sigma_data < math.inf):
        raise ValueError(f"sigma_data must be a positive number (the data's standard deviation), got {sigma_data!r}")
    return float(sigma_data)


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM's Table 1 at noise levels sigma (any shape)."""
    s2, d2 = sigma**2, sigma_data**2
    root = torch.sqrt(s2 + d2)
    return d2 / (s2 + d2), sigma * sigma_data / root, 1.0 / root, 0.25 * torch.log(sigma)


def estimate_sigma_data(x0: torch.Tensor) -> float:
    """The data's standard deviation over all coordinates, EDM's sigma_data (0.5 for images in [-1, 1])."""
    return float(torch.as_tensor(x0, dtype=torch.float64).std())


class EDMModel(ScoreModel):
    """A network preconditioned as EDM's denoiser, exposed as a score model s(x, t, y=None).

    `net(x, c, y=None)` from `nets.build_net` receives c_in x_hat and c = c_noise = log(sigma) / 4;
    `denoise(x, t, y)` is D(x / alpha; sigma) and `forward` the score (module docstring). It fits the
    ScoreModel interface (`score_fn(y)`, `config()`), with parameterization "edm".
    """

    def __init__(self, net, sde: SDE, sigma_data: float = 0.5):
        super().__init__(net, sde, cond="log_std", scale_by_std=False, scale_input=False)
        self.parameterization = "edm"
        self.sigma_data = check_sigma_data(sigma_data)

    def _levels(self, x, t):
        """alpha, std and sigma at t, per example, in float64 (std - its cancellation for VE near eps)."""
        t64 = batch_time(t, x).to(torch.float64)
        alpha, std = self.sde.alpha(t64), self.sde.std(t64)
        return alpha, std, std / alpha

    def _denoise(self, x, alpha, sigma, y):
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        cast = lambda v: broadcast_to(v.to(x.dtype), x)  # noqa: E731
        x_hat = x / cast(alpha)
        out = self.net(cast(c_in) * x_hat, c_noise.to(x.dtype), y)
        return cast(c_skip) * x_hat + cast(c_out) * out.to(x.dtype)

    def denoise(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """D(x / alpha(t); sigma(t)) ~ E[x(0) | x(t) = x]."""
        alpha, _, sigma = self._levels(x, t)
        return self._denoise(x, alpha, sigma, y)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        alpha, std, sigma = self._levels(x, t)
        D = self._denoise(x, alpha, sigma, y)
        return (broadcast_to(alpha.to(x.dtype), x) * D - x) / broadcast_to((std**2).to(x.dtype), x)

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(parameterization="edm", sigma_data=self.sigma_data)
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> "EDMModel":
        """Rebuild (fresh weights) from `config()`'s output."""
        net, sde = cls.parts_from_config(cfg)
        return cls(net, sde, sigma_data=cfg.get("sigma_data", 0.5))

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, parameterization='edm', sigma_data={self.sigma_data}"


#: parameterization (a model's config()["parameterization"], a recipe's model.parameterization) -> its class
MODEL_CLASSES = {"score": ScoreModel, "edm": EDMModel}


def model_class(kind) -> type:
    """The ScoreModel class of a parameterization: "score" (ScoreModel) or "edm" (EDMModel)."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown parameterization {kind!r}; choose 'score' (ScoreModel) or 'edm' (EDMModel)")
    return MODEL_CLASSES[kind]


def model_from_config(cfg: dict) -> ScoreModel:
    """A ScoreModel or EDMModel (fresh weights) from its `config()`, by its "parameterization": the one
    dispatch from a saved model description to a model (checkpoints, `training.trainer.load_run`)."""
    return model_class(cfg.get("parameterization", "score")).from_config(cfg)
