"""Consistency models: a network as f(x, t) ~ the probability-flow ODE's solution at eps from (x, t).

Song, Dhariwal, Chen, Sutskever (2023), "Consistency Models", Sec. 3 and App. C. On the scaled VE
view of any linear process here (x_hat = x / alpha, sigma = std / alpha, `models.edm`), with the
boundary level sigma_min = sigma(eps) and sd = sigma_data,

    f_hat(x_hat; sigma) = c_skip(sigma) x_hat + c_out(sigma) F(c_in(sigma) x_hat; c_noise(sigma)),
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),   c_out = sd (sigma - sigma_min) / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4,

so c_skip(sigma_min) = 1 and c_out(sigma_min) = 0: f_hat(x_hat; sigma_min) = x_hat exactly, whatever
the weights (the boundary condition f(x, eps) = x of their eq. 3, in x: f(x, t) = alpha(eps) f_hat).
The network F is any net of `nets/`, called as EDM's (c_in x_hat, c_noise); an EDM run's weights
are a good start (for sigma >> sigma_min the two preconditionings agree).

A consistency model is also a score model here, so every sampler, likelihood and steering routine
takes it: f_hat plays the part of EDM's denoiser D (Tweedie's E[x(0) | x(t)]),

    s(x, t) = (alpha f_hat(x / alpha; sigma) - x) / std^2,

and `sampling.samplers.consistency` (their Algorithm 1) reads f_hat back from that score exactly.
"""
from __future__ import annotations

import torch

from ..process.sde import SDE, broadcast_to
from .edm import MODEL_CLASSES, EDMModel, check_sigma_data

__all__ = ["consistency_coefficients", "ConsistencyModel", "boundary_sigma"]


def boundary_sigma(sde: SDE) -> float:
    """sigma_min = sigma(eps), the level at which f is the identity."""
    return float(sde.sigma(torch.tensor(sde.eps, dtype=torch.float64)))


def consistency_coefficients(sigma: torch.Tensor, sigma_data: float, sigma_min: float):
    """(c_skip, c_out, c_in, c_noise) of Song et al. (2023, App. C) at levels sigma (any shape)."""
    sd2 = sigma_data**2
    c_skip = sd2 / ((sigma - sigma_min) ** 2 + sd2)
    root = torch.sqrt(sigma**2 + sd2)
    return c_skip, sigma_data * (sigma - sigma_min) / root, 1.0 / root, 0.25 * torch.log(sigma)


class ConsistencyModel(EDMModel):
    """f(x, t) with the boundary condition built in (module docstring), exposed as a score model.

    `denoise(x, t, y)` is f_hat(x / alpha; sigma), in x_hat units (x(0) units, like EDM's D);
    `consistency(x, t, y)` is f(x, t) = alpha(eps) f_hat in x units; `forward` is the score.
    """

    def __init__(self, net, sde: SDE, sigma_data: float = 0.5):
        super().__init__(net, sde, sigma_data=check_sigma_data(sigma_data))
        self.parameterization = "consistency"
        self.sigma_min = boundary_sigma(sde)

    def _denoise(self, x, alpha, sigma, y):
        c_skip, c_out, c_in, c_noise = consistency_coefficients(sigma, self.sigma_data, self.sigma_min)
        alpha, c_skip, c_out, c_in = (broadcast_to(v.to(x.dtype), x) for v in (alpha, c_skip, c_out, c_in))
        x_hat = x / alpha
        out = self.net(c_in * x_hat, c_noise.to(x.dtype), y)
        return c_skip * x_hat + c_out * out.to(x.dtype)

    def consistency(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """f(x, t) = alpha(eps) f_hat(x / alpha(t); sigma(t)): f(x, eps) = x."""
        alpha_eps = float(self.sde.alpha(torch.tensor(self.sde.eps, dtype=torch.float64)))
        return alpha_eps * self.denoise(x, t, y)

    def config(self) -> dict:
        cfg = super().config()
        cfg["parameterization"] = "consistency"
        return cfg

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, parameterization='consistency', sigma_data={self.sigma_data}, sigma_min={self.sigma_min:.4g}"


# the one model-from-config dispatch (models.edm.model_from_config) knows consistency models too
MODEL_CLASSES["consistency"] = ConsistencyModel
