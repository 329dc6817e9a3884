"""Adapters between scoregen's score contract and the ecosystem's model conventions (torch only).

In: a network predicting epsilon, x(0) ("sample") or v, as DDPM-family models do, and a k-diffusion-style
denoiser D(x, sigma), become a `score_fn(x, t)` on a scoregen SDE. With x(t) = alpha x(0) + std z:

    epsilon      score = -eps_hat / std
    sample       score = (alpha x0_hat - x) / std^2
    v            v = alpha z - std x(0) (Salimans & Ho 2022), so z = (std x + alpha v) / (alpha^2 + std^2)
                 and score = -z_hat / std
    denoiser     on VE (alpha = 1, std = sigma): score = (D(x, sigma) - x) / sigma^2     (Tweedie)

Out: `KDiffusionDenoiser` turns any scoregen score on any linear process into k-diffusion's model
convention D(x_hat, sigma) (sigma per example) on the scaled variable x_hat = x / alpha, where every
linear process is the VE one x_hat = x(0) + sigma z with sigma = std / alpha (EDM, eq. 4):

    D(x_hat, sigma) = x_hat + sigma^2 alpha s(alpha x_hat, t(sigma)),   t(sigma) = `schedules.t_from_sigma`.

so k-diffusion's samplers (sample_euler, sample_heun, ...) run a scoregen model in x_hat; multiply
their result by alpha(t) of the last sigma to come back to x (1 for VE).
"""
from __future__ import annotations

import torch
from torch import nn

from ..process.schedules import t_from_sigma
from ..process.sde import SDE, VESDE, broadcast_to
from ..util import ScoreFn, time_vector

__all__ = ["PREDICTION_TYPES", "score_from_prediction", "PredictionScoreModel", "DenoiserScoreModel",
           "ve_for_sigmas", "KDiffusionDenoiser"]

#: what a network may predict (diffusers' `prediction_type` names), plus "score" itself
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "score")


def check_prediction_type(kind) -> str:
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {kind!r}; accepted: {list(PREDICTION_TYPES)}")
    return kind


def score_from_prediction(pred: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, std: torch.Tensor,
                          kind: str = "epsilon") -> torch.Tensor:
    """The score from a network's prediction `pred` at x = alpha x(0) + std z (per-example alpha, std of
    shape (N,)); the module docstring gives the formulas."""
    check_prediction_type(kind)
    a, s = broadcast_to(alpha.to(x.dtype), x), broadcast_to(std.to(x.dtype), x)
    pred = pred.to(x.dtype)
    if kind == "score":
        return pred
    if kind == "epsilon":
        return -pred / s
    if kind == "sample":
        return (a * pred - x) / s**2
    z = (s * x + a * pred) / (a**2 + s**2)  # v_prediction
    return -z / s


class PredictionScoreModel(nn.Module):
    """score(x, t) of a network `net(x, c)` that predicts `prediction` (epsilon, sample, v or the score),
    called with the noise input c = `noise_input(t)` (for a DDPM table: the fractional timestep
    `DiscreteVPSDE.timestep(t)`; for a Score-SDE VE model: the noise level std(t)).

    `output(x, c)` adapts the network's return value to a tensor (e.g. diffusers' `.sample`). It is an
    `nn.Module` with `.sde` and `.score_fn()`, as a scoregen `ScoreModel` is.
    """

    def __init__(self, net: nn.Module, sde: SDE, prediction: str = "epsilon", noise_input=None, output=None):
        super().__init__()
        self.net, self.sde, self.prediction = net, sde, check_prediction_type(prediction)
        self._noise_input = noise_input if noise_input is not None else (lambda t: t)
        self._output = output if output is not None else (lambda out: out)

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        if y is not None:
            raise ValueError("this adapted model is unconditional; it takes no label y")
        t = time_vector(t, x)
        t64 = t.to(torch.float64)
        alpha, std = self.sde.alpha(t64), self.sde.std(t64)
        c = self._noise_input(t64).to(device=x.device, dtype=x.dtype)
        pred = self._output(self.net(x, c))
        return score_from_prediction(pred, x, alpha, std, self.prediction)

    def score_fn(self, y=None) -> ScoreFn:
        if y is not None:
            raise ValueError("this adapted model is unconditional; it takes no label")
        return self.forward

    def config(self) -> dict:
        return {"parameterization": "adapted", "prediction": self.prediction, "sde": self.sde.config()}


def ve_for_sigmas(sigma_min: float, sigma_max: float) -> VESDE:
    """A VE process whose std runs exactly from sigma_min (at its eps) to sigma_max (at T = 1).

    Score-SDE and k-diffusion perturb x(0) with std sigma(t) = sigma_min (sigma_max / sigma_min)^t itself;
    scoregen's VESDE has the exact std sqrt(sigma(t)^2 - s0^2) of its own s0 = sigma_min. Taking
    s0 = sigma_min / 100 (as the NCSN `NoiseLadder` does) and sigma_max' = hypot(sigma_max, s0) makes the
    std equal sigma_max at T and, with eps = t_from_std(sigma_min), sigma_min at eps, so samplers visit
    exactly the levels the model was trained on.
    """
    if not (0 < float(sigma_min) < float(sigma_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    s0 = float(sigma_min) * 1e-2
    sde = VESDE(sigma_min=s0, sigma_max=float(torch.hypot(torch.tensor(float(sigma_max), dtype=torch.float64),
                                                          torch.tensor(s0, dtype=torch.float64))))
    sde.eps = float(sde.t_from_std(torch.tensor(float(sigma_min), dtype=torch.float64)))
    return sde


class DenoiserScoreModel(nn.Module):
    """The score of a k-diffusion-style denoiser D(x, sigma) ~ E[x(0) | x(0) + sigma z = x] on the VE
    process `ve_for_sigmas(sigma_min, sigma_max)`: score(x, t) = (D(x, std(t)) - x) / std(t)^2, with
    sigma given per example, shape (N,)."""

    def __init__(self, denoiser, sigma_min: float, sigma_max: float):
        super().__init__()
        self.denoiser = denoiser
        self.sde = ve_for_sigmas(sigma_min, sigma_max)

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        if y is not None:
            raise ValueError("this adapted denoiser is unconditional; it takes no label y")
        t = time_vector(t, x)
        sigma = self.sde.std(t.to(torch.float64))
        D = self.denoiser(x, sigma.to(x.dtype))
        return (D.to(x.dtype) - x) / broadcast_to(sigma.to(x.dtype) ** 2, x)

    def score_fn(self, y=None) -> ScoreFn:
        if y is not None:
            raise ValueError("this adapted denoiser is unconditional; it takes no label")
        return self.forward


class KDiffusionDenoiser(nn.Module):
    """A scoregen score as k-diffusion's model: `D(x_hat, sigma)` with sigma a number or one per example
    (module docstring). `KDiffusionDenoiser.from_run(run)` wraps a `runs.Run` (model units: the run's
    normalized data). `sigma_min` / `sigma_max` are the ends of the process's range (at eps and T), the
    sigmas to hand k-diffusion's `get_sigmas_*`."""

    def __init__(self, score_fn: ScoreFn, sde: SDE):
        super().__init__()
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be a scoregen.process.sde.SDE, got {type(sde).__name__}")
        self.score_fn, self.sde = score_fn, sde
        if isinstance(score_fn, nn.Module):
            self.model = score_fn  # registered, so .to(device) moves it
        T, eps = (torch.tensor(v, dtype=torch.float64) for v in (sde.T, sde.eps))
        self.sigma_max, self.sigma_min = float(sde.sigma(T)), float(sde.sigma(eps))

    @classmethod
    def from_run(cls, run) -> "KDiffusionDenoiser":
        return cls(run.model.score_fn(), run.sde)

    def forward(self, x_hat: torch.Tensor, sigma) -> torch.Tensor:
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x_hat.device)
        sig = sig.expand(x_hat.shape[0]) if sig.dim() == 0 else sig.reshape(-1)
        if sig.shape[0] != x_hat.shape[0]:
            raise ValueError(f"sigma must be a number or one per example ({x_hat.shape[0]}), got shape "
                             f"{tuple(torch.as_tensor(sigma).shape)}")
        if (sig <= 0).any():
            raise ValueError(f"sigma must be > 0 (D at sigma = 0 is x itself), got {sig[sig <= 0][:3].tolist()}")
        t = t_from_sigma(self.sde, sig.cpu()).to(x_hat.device)
        alpha = self.sde.alpha(t)
        a = broadcast_to(alpha.to(x_hat.dtype), x_hat)
        s = self.score_fn(a * x_hat, t.to(x_hat.dtype))
        return x_hat + broadcast_to((sig**2 * alpha).to(x_hat.dtype), x_hat) * s
