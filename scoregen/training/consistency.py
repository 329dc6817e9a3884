"""Consistency objectives: distillation (CD), training from data (CT, improved) and tuning (ECT).

All three fit a `models.consistency.ConsistencyModel` f_theta so that two noisier/cleaner views of
one trajectory of the probability-flow ODE map to the same point (Song, Dhariwal, Chen, Sutskever
2023, "Consistency Models", eqs. 7 and 10), on the scaled view x_hat = x / alpha, sigma = std / alpha
of any linear process (`models.edm`):

    l = lambda(sigma_hi, sigma_lo) d( f_theta(x_hat_hi; sigma_hi), f_target(x_hat_lo; sigma_lo) ),
    x_hat_hi = x(0) + sigma_hi z,   sigma_lo < sigma_hi,   f_target without gradient,

and they differ only in how (sigma_hi, sigma_lo) are drawn and where x_hat_lo comes from:

  cd   sigma_lo, sigma_hi adjacent levels of EDM's rho = 7 grid of N levels from sigma_min = sigma(eps)
       to sigma(T) (`karras_levels`), drawn uniformly; x_hat_lo one Heun step of the *teacher's*
       probability-flow ODE d x_hat / d sigma = -std s(x, t) from sigma_hi (Song et al. 2023,
       Algorithm 2; EDM's Algorithm 2 on one step, `heun_teacher_step`). lambda = 1 / (sigma_hi -
       sigma_lo) here too: with Song et al.'s lambda = 1 the low levels, whose differences are small,
       got almost no gradient, and distilling the exact seed-mixture score for 1500 steps gave 1-step
       samples at 70 x the energy floor, against 8.7 x with the inverse gap (`level_weighting`).
  ct   no teacher: x_hat_lo = x(0) + sigma_lo z with the same z (their eq. 10, an unbiased
       estimator of the teacher step as N grows), with the improvements of Song & Dhariwal (2023,
       "Improved Techniques for Training Consistency Models"; their pseudo-Huber d is an option,
       see below): N grows over training as
       N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1)) (their eq. 7,
       `curriculum_levels`); adjacent pairs drawn with probability proportional to
       erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i - P_mean) / (sqrt 2 P_std))
       (lognormal level sampling, their Sec. 3.5); lambda = 1 / (sigma_hi - sigma_lo); the target
       is f_theta itself (target_decay = 0: no EMA teacher, their Sec. 3.2).
  ect  Geng, Pokle, Luo, Lin, Kolter (2024), "Consistency Models Made Easy": sigma_hi = t continuous
       with log t ~ N(P_mean, P_std^2), sigma_lo = r = t (1 - n(t) / q^a), n(t) = 1 + k sigmoid(-b t),
       a = ceil(step / (K / stages)) (`ect_r`), kept >= sigma_min: at a = 0 every r is sigma_min and
       the loss is denoising score matching of f, so starting from a trained EDM run (the same
       preconditioning away from sigma_min) continues its training; the gap then halves per stage.

Distances d (per example, over all coordinates): "l2" ||a - b||^2 (the default) and "pseudo_huber"
sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(D) at sigma_data = 0.5 (Song & Dhariwal 2023,
Sec. 3.3), scaled with sigma_data so that the rule does not depend on the data's units. On the seed
mixture (benchmarks/distill.py, CT) pseudo-Huber with that c collapsed to one mode (1-step samples at
650 x the energy floor after 4000 steps at lr 1e-3; 31 x after 2000 at lr 2e-4); after 2000 steps at
lr 1e-3, c = 0.03 gave 8.0 x and l2 4.0 x. For CD the two were alike (1-step 1.58 x either way). Images were not measured here. P_mean = -1.1 at
sigma_data = 0.5 likewise becomes -1.1 + log(sigma_data / 0.5); P_std = 2.

The trainer calls `begin_step(step, total_steps)` before drawing (the curriculum and the ECT
stages depend on it) and `end_step(model)` after the update (an EMA target with target_decay mu > 0:
theta^- <- mu theta^- + (1 - mu) theta, Song et al. 2023's CD); `state_dict` carries that target
through checkpoints, so resume is exact.
"""
from __future__ import annotations

import copy
import math

import torch

from ..models.edm import check_sigma_data
from ..models.consistency import boundary_sigma
from ..process.schedules import t_from_sigma
from ..process.sde import SDE, broadcast_to
from ..util import check_number, check_positive_int, choose_one_of
from .losses import LOSS_OPTIONS, LOSSES, Loss, draw_normal, sqnorm

__all__ = ["ConsistencyLoss", "METHODS", "METRICS", "karras_levels", "curriculum_levels", "lognormal_pair_probs",
           "ect_r", "heun_teacher_step", "pseudo_huber_c"]

METHODS = ("cd", "ct", "ect")
METRICS = ("l2", "pseudo_huber")
WEIGHTINGS = ("uniform", "inverse_gap")


def _one_of(value, choices, kind: str) -> str:
    if value not in choices:
        raise ValueError(choose_one_of(kind, value, choices))
    return value


def karras_levels(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """EDM's n levels (Karras et al. 2022, eq. 5), increasing, float64:
    sigma_i = (sigma_min^(1/rho) + i / (n - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 0..n-1."""
    u = torch.linspace(0.0, 1.0, int(n), dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + u * (hi - lo)) ** rho


def curriculum_levels(step: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1))
    (Song & Dhariwal 2023, eq. 7): the number of levels at step k of K."""
    k_prime = max(1, math.floor(total / (math.log2(math.floor(s1 / s0)) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def lognormal_pair_probs(sigmas: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """p(i) of the pair (sigma_i, sigma_{i+1}): the N(p_mean, p_std^2) mass of log sigma in
    [log sigma_i, log sigma_{i+1}] (Song & Dhariwal 2023, Sec. 3.5), normalized."""
    cdf = torch.erf((torch.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp_min(0)
    return p / p.sum() if p.sum() > 0 else torch.full_like(p, 1.0 / p.numel())


def ect_r(t: torch.Tensor, step: int, total: int, *, sigma_min: float, q: float = 2.0, stages: int = 8,
          k: float = 8.0, b: float = 1.0) -> torch.Tensor:
    """ECT's r = t (1 - n(t) / q^a), n(t) = 1 + k sigmoid(-b t), a = ceil(step / (total / stages))
    (Geng et al. 2024, Sec. 3), kept in [sigma_min, t)."""
    a = math.ceil(step / max(total / stages, 1e-12))
    r = t * (1.0 - (1.0 + k * torch.sigmoid(-b * t)) / q**a)
    return torch.minimum(r.clamp_min(sigma_min), t)


def pseudo_huber_c(dim: int, sigma_data: float) -> float:
    """c = 0.00054 sqrt(D) (sigma_data / 0.5): Song & Dhariwal's constant for images in [-1, 1]
    (sigma_data = 0.5), in the data's units."""
    return 0.00054 * math.sqrt(dim) * sigma_data / 0.5


def _alpha(sde: SDE, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _col(sde.alpha(t.to(torch.float64)), like)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example (N,) tensor in like's dtype, shaped to multiply it."""
    return broadcast_to(v.to(like.dtype), like)


def heun_teacher_step(teacher, sde: SDE, x_hat, sigma_hi, t_hi, sigma_lo, t_lo, y=None):
    """One Heun step of the probability-flow ODE d x_hat / d sigma = -std s(alpha x_hat, t) from sigma_hi to
    sigma_lo (per example; EDM's Algorithm 2 lines 7-11 with a second-order correction, as CD does):

        d = -std_hi s(x_hi, t_hi),  x' = x_hat + (sigma_lo - sigma_hi) d,
        d' = -std_lo s(alpha_lo x', t_lo),  x_hat_lo = x_hat + (sigma_lo - sigma_hi) (d + d') / 2.
    """
    def slope(xh, t, sigma):
        alpha = _alpha(sde, t, xh)
        s = teacher(alpha * xh, t) if y is None else teacher(alpha * xh, t, y)
        return -(alpha * _col(sigma, xh)) * s.to(xh.dtype)  # std = alpha sigma

    h = _col(sigma_lo - sigma_hi, x_hat)
    d = slope(x_hat, t_hi, sigma_hi)
    x1 = x_hat + h * d
    return x_hat + h * 0.5 * (d + slope(x1, t_lo, sigma_lo))


class ConsistencyLoss(Loss):
    """The CD / CT / ECT objective of the module docstring, per example."""

    name = "consistency"

    def __init__(self, sde: SDE, method: str = "ct", metric: str = "l2", level_weighting: str | None = None,
                 sigma_data: float = 0.5, teacher=None, levels: int = 18, target_decay: float = 0.0,
                 p_mean: float | None = None, p_std: float = 2.0, s0: int = 10, s1: int = 1280, rho: float = 7.0,
                 huber_c: float | None = None, q: float = 2.0, stages: int = 8):
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be a scoregen.process.sde.SDE, got {type(sde).__name__}")
        self.method = _one_of(method, METHODS, "consistency method (loss.method)")
        self.metric = _one_of(metric, METRICS, "consistency metric (loss.metric)")
        default_weighting = "inverse_gap"
        self.weighting = _one_of(level_weighting or default_weighting, WEIGHTINGS,
                                 "consistency level weighting (loss.level_weighting)")
        if self.method == "cd" and not callable(teacher):
            raise ValueError("consistency distillation (method=cd) needs a teacher score function "
                             f"teacher(x, t); got {teacher!r} (use `scoregen distill RUN_DIR` or pass teacher=score_fn)")
        self.sde, self.teacher = sde, teacher
        self.sigma_data = check_sigma_data(sigma_data)
        self.levels = check_positive_int(levels, "levels")
        if self.levels < 2:
            raise ValueError(f"levels must be >= 2 (adjacent pairs of noise levels), got {levels!r}")
        self.target_decay = check_number(target_decay, "target_decay", lo=0.0, hi=0.9999999)
        self.p_mean = -1.1 + math.log(self.sigma_data / 0.5) if p_mean is None else float(p_mean)
        self.p_std = check_number(p_std, "p_std", lo=0.0, lo_open=True)
        self.s0, self.s1 = check_positive_int(s0, "s0"), check_positive_int(s1, "s1")
        self.rho = check_number(rho, "rho", lo=0.0, lo_open=True)
        self.huber_c = None if huber_c is None else check_number(huber_c, "huber_c", lo=0.0, lo_open=True)
        self.q, self.stages = check_number(q, "q", lo=1.0, lo_open=True), check_positive_int(stages, "stages")
        self.sigma_min = boundary_sigma(sde)
        self.sigma_max = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))
        self.step, self.total = 0, 1
        self.target, self._target_state = None, None

    # --- the trainer's hooks ---------------------------------------------------------------
    def begin_step(self, step: int, total: int) -> None:
        self.step, self.total = int(step), max(int(total), 1)

    @torch.no_grad()
    def end_step(self, model) -> None:
        if self.target_decay > 0:
            target = self._target_of(model)
            torch._foreach_lerp_(list(target.parameters()), list(_module(model).parameters()), 1.0 - self.target_decay)

    def state_dict(self) -> dict:
        return {} if self.target is None else {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._target_state = (state or {}).get("target")

    def _target_of(self, model):
        if self.target_decay == 0:
            return model
        if self.target is None:  # theta^- starts as theta (or as the checkpoint's)
            self.target = copy.deepcopy(_module(model)).requires_grad_(False)
            if self._target_state is not None:
                self.target.load_state_dict(self._target_state)
        return self.target

    # --- levels ------------------------------------------------------------------------------
    def current_levels(self) -> torch.Tensor:
        """The discrete levels in use now (cd: `levels` of them; ct: the curriculum's N(k))."""
        n = self.levels if self.method == "cd" else curriculum_levels(self.step, self.total, self.s0, self.s1)
        return karras_levels(self.sigma_min, self.sigma_max, n, self.rho)

    def _draw_sigmas(self, n: int, generator):
        dev = generator.device if generator is not None else torch.device("cpu")
        if self.method == "ect":
            t = torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator, dtype=torch.float64, device=dev))
            t = t.cpu().clamp(self.sigma_min * (1 + 1e-6), self.sigma_max)
            return t, ect_r(t, self.step, self.total, sigma_min=self.sigma_min, q=self.q, stages=self.stages)
        sig = self.current_levels()
        if self.method == "cd":
            i = torch.randint(0, sig.numel() - 1, (n,), generator=generator, device=dev).cpu()
        else:
            p = lognormal_pair_probs(sig, self.p_mean, self.p_std)
            i = torch.multinomial(p.to(dev), n, replacement=True, generator=generator).cpu()
        return sig[i + 1], sig[i]

    def draw(self, x0, generator=None):
        hi, lo = self._draw_sigmas(x0.shape[0], generator)
        out = {"sigma_hi": hi, "sigma_lo": lo, "t_hi": t_from_sigma(self.sde, hi), "t_lo": t_from_sigma(self.sde, lo)}
        out = {k: v.to(device=x0.device, dtype=x0.dtype) for k, v in out.items()}
        out["z"] = draw_normal(x0.shape, x0, generator)
        return out

    # --- the objective -----------------------------------------------------------------------
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = sqnorm(a - b)
        if self.metric == "l2":
            return sq
        c = self.huber_c if self.huber_c is not None else pseudo_huber_c(a[0].numel(), self.sigma_data)
        return torch.sqrt(sq + c**2) - c

    def per_example(self, model, x0, draws, y=None):
        hi, lo, t_hi, t_lo, z = (draws[k] for k in ("sigma_hi", "sigma_lo", "t_hi", "t_lo", "z"))
        x_hat_hi = x0 + _col(hi, x0) * z
        with torch.no_grad():
            if self.method == "cd":
                x_hat_lo = heun_teacher_step(self.teacher, self.sde, x_hat_hi, hi, t_hi, lo, t_lo, y)
            else:
                x_hat_lo = x0 + _col(lo, x0) * z
            target = self._target_of(model)
            f_lo = denoised(target, self.sde, _alpha(self.sde, t_lo, x0) * x_hat_lo, t_lo, lo, y)
        f_hi = denoised(model, self.sde, _alpha(self.sde, t_hi, x0) * x_hat_hi, t_hi, hi, y)
        weight = torch.ones_like(hi) if self.weighting == "uniform" else 1.0 / (hi - lo)
        return weight * self.distance(f_hi, f_lo.detach())


def _module(model):
    return getattr(model, "module", model)  # the model inside a DistributedDataParallel wrapper


def denoised(model, sde: SDE, x, t, sigma, y=None) -> torch.Tensor:
    """f_hat(x / alpha; sigma) of a consistency model: its `denoise`, or, through a wrapper that only
    forwards the score (DDP), Tweedie's x / alpha + alpha sigma^2 s, which the ConsistencyModel's score
    inverts exactly."""
    if hasattr(model, "denoise"):
        return model.denoise(x, t, y) if y is not None else model.denoise(x, t)
    s = model(x, t) if y is None else model(x, t, y)
    alpha = _alpha(sde, t, x)
    return x / alpha + alpha * _col(sigma, x) ** 2 * s.to(x.dtype)


#: the consistency objective joins the trainer's registry of losses (training/__init__ imports this module)
LOSSES.register("consistency", ConsistencyLoss)
LOSS_OPTIONS["consistency"] = ("method", "metric", "level_weighting", "sigma_data", "teacher", "levels", "target_decay",
                               "p_mean", "p_std", "s0", "s1", "rho", "huber_c", "q", "stages")
