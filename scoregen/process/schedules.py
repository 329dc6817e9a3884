"""Noise-level schedules: the grid T = t_0 > t_1 > ... > t_K = eps that a fast sampler visits.

Every linear forward process x(t) = alpha(t) x(0) + std(t) z is, after the scaling
x_hat = x / alpha(t), the variance-exploding process x_hat = x(0) + sigma z with

    sigma(t) = std(t) / alpha(t)                      (Karras et al. 2022, "EDM", eq. 4 and Sec. 4)
    log-SNR  lambda(t) = log(alpha^2 / std^2) = -2 log sigma(t)   (`SDE.log_snr`; Kingma et al. 2021)

(DPM-Solver's lambda = log(alpha / std) is half of it.) sigma is increasing in t, so a schedule can
be given in any of t, sigma or lambda; `t_from_sigma` and `t_from_log_snr` invert the SDE's own
`sigma`/`log_snr` in closed form for VE, VP and sub-VP (with B(t) = int_0^t beta):

    VE      sigma = std,                         t = sde.t_from_std(sigma)
    VP      sigma^2 = e^B - 1,                   B = log(1 + sigma^2)
    sub-VP  sigma = (1 - e^-B) e^(B/2) = 2 sinh(B/2),  B = 2 asinh(sigma / 2)

and by bisection for any other monotone process.

Schedules (K steps, K + 1 levels from sigma_max = sigma(T) down to sigma_min = sigma(eps)):

    uniform_t   t_i = T + i/K (eps - T)                    (Song et al. 2021; DDIM's uniform skip)
    log_std     std_i geometric between std(T), std(eps)   (NCSN's ladder; Song & Ermon 2019)
    log_snr     sigma_i geometric = lambda_i uniform        (DPM-Solver's "logSNR" grid; Lu et al. 2022)
    edm         sigma_i = (sigma_max^(1/rho) + i/K (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
                rho = 7                                     (Karras et al. 2022, eq. 5)

`log_snr` and `edm` take a `sigma_floor`: their first K - 1 steps end there and the last goes to
sigma(eps) (`SigmaSchedule`).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..util import Registry, check_eps, check_positive_int
from .sde import SDE, SubVPSDE, VESDE, VPSDE

__all__ = ["t_from_sigma", "t_from_log_snr", "NoiseGrid", "Schedule", "SigmaSchedule", "UniformTime", "LogStd",
           "LogSNR", "EDMSchedule", "SCHEDULES", "make_schedule", "make_grid", "Level"]


def _f64(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def _check_sigma(sigma: torch.Tensor, what: str = "sigma") -> None:
    if not torch.isfinite(sigma).all() or (sigma < 0).any():
        raise ValueError(f"{what} must be finite and >= 0, got {sigma.flatten()[:5].tolist()}")


def _t_by_bisection(sde: SDE, sigma: torch.Tensor) -> torch.Tensor:
    """Invert the increasing function sde.sigma(t) numerically (any process without a closed form)."""
    lo = torch.zeros_like(sigma)
    hi = torch.full_like(sigma, float(sde.T))
    for _ in range(60):  # extend the bracket past T for levels above sigma(T)
        short = sde.sigma(hi) < sigma
        if not short.any():
            break
        hi = torch.where(short, 2 * hi, hi)
    for _ in range(100):  # float64 bisection: 2^-100 of the bracket is below rounding
        mid = 0.5 * (lo + hi)
        below = sde.sigma(mid) < sigma
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def t_from_sigma(sde: SDE, sigma) -> torch.Tensor:
    """The time t with sde.sigma(t) = std(t) / alpha(t) = sigma (float64; the module docstring gives
    the closed forms). Levels above sigma(T) map to t > T, which no sampler visits."""
    sigma = _f64(sigma)
    _check_sigma(sigma)
    if isinstance(sde, VESDE):  # alpha = 1, includes the NCSN NoiseLadder
        return sde.t_from_std(sigma)
    if isinstance(sde, VPSDE):
        return sde.t_from_int_beta(torch.log1p(sigma**2))
    if isinstance(sde, SubVPSDE):
        return sde.t_from_int_beta(2 * torch.asinh(sigma / 2))
    return _t_by_bisection(sde, sigma)


def t_from_log_snr(sde: SDE, log_snr) -> torch.Tensor:
    """The time t with sde.log_snr(t) = log(alpha^2 / std^2) = log_snr, via sigma = exp(-log_snr / 2)."""
    lam = _f64(log_snr)
    if not torch.isfinite(lam).all():
        raise ValueError(f"log_snr must be finite, got {lam.flatten()[:5].tolist()}")
    return t_from_sigma(sde, torch.exp(-0.5 * lam))


class Level(NamedTuple):
    """One noise level as floats: time t, alpha(t), std(t) and sigma = std / alpha."""

    t: float
    alpha: float
    std: float
    sigma: float


@dataclass(frozen=True)
class NoiseGrid:
    """K + 1 levels of one process, all float64 of shape (K + 1,): times t (decreasing from T to
    eps), and alpha, std, sigma = std / alpha at each, as the samplers need them."""

    t: torch.Tensor
    alpha: torch.Tensor
    std: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def at_times(cls, sde: SDE, t) -> "NoiseGrid":
        t = _f64(t)
        alpha, std = sde.alpha(t).to(torch.float64), sde.std(t).to(torch.float64)
        return cls(t, alpha, std, std / alpha)

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def level(self, i: int) -> Level:
        """Level i as floats (t, alpha, std, sigma)."""
        return Level(float(self.t[i]), float(self.alpha[i]), float(self.std[i]), float(self.sigma[i]))


class Schedule:
    """A rule for K + 1 noise levels of a process, from t = T down to t = eps.

    `times(sde, K)` gives the levels as times; `grid(sde, K)` adds their alpha, std and sigma. The end
    points are exactly T and eps.
    """

    name = "schedule"

    def times(self, sde: SDE, steps: int, eps: float | None = None) -> torch.Tensor:
        raise NotImplementedError

    def grid(self, sde: SDE, steps: int, eps: float | None = None) -> NoiseGrid:
        return NoiseGrid.at_times(sde, self.times(sde, steps, eps))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SigmaSchedule(Schedule):
    """A schedule defined by its levels in sigma (`sigmas`), mapped to times with `t_from_sigma`.

    sigma_floor: if sigma(eps) < sigma_floor < sigma(T), the first K - 1 steps end at sigma_floor and
    the last one goes straight to sigma(eps), as EDM's last step goes from sigma_min to 0. Below about
    1% of the data's scale the data estimate hardly changes, so steps spent there are wasted: with
    VE's sigma(eps) = 1e-4 a plain geometric grid puts a third of its steps below 0.01. The last
    step then has a fixed size, so the solvers' convergence order holds only without a floor.
    """

    def __init__(self, sigma_floor: float | None = None):
        if sigma_floor is not None and not (isinstance(sigma_floor, (int, float)) and 0 < sigma_floor < math.inf):
            raise ValueError(f"sigma_floor must be None or a positive number, got {sigma_floor!r}")
        self.sigma_floor = None if sigma_floor is None else float(sigma_floor)

    def sigmas(self, sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
        """K + 1 decreasing levels from sigma_max to sigma_min (float64)."""
        raise NotImplementedError

    def times(self, sde: SDE, steps: int, eps: float | None = None) -> torch.Tensor:
        steps, eps = _check_steps(steps), _check_eps(sde, eps)
        T = torch.tensor(sde.T, dtype=torch.float64)
        hi, lo = float(sde.sigma(T)), float(sde.sigma(torch.tensor(eps, dtype=torch.float64)))
        floor = self.sigma_floor
        if floor is not None and lo < floor < hi and steps >= 2:
            sig = torch.cat([self.sigmas(hi, floor, steps - 1), torch.tensor([lo], dtype=torch.float64)])
        else:
            sig = self.sigmas(hi, lo, steps)
        t = t_from_sigma(sde, sig).clone()
        t[0], t[-1] = sde.T, eps  # exact end points, whatever the rounding of the inversion
        return t

    def _args(self) -> list[str]:
        return [] if self.sigma_floor is None else [f"sigma_floor={self.sigma_floor}"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._args())})"


def _check_steps(steps) -> int:
    return check_positive_int(steps, "steps")


def _check_eps(sde: SDE, eps) -> float:
    return check_eps(eps, sde.T, sde.eps)


class UniformTime(Schedule):
    """t_i = T + i/K (eps - T): the grid of `samplers.time_grid` (geometric in sigma for VE)."""

    name = "uniform_t"

    def times(self, sde, steps, eps=None):
        steps, eps = _check_steps(steps), _check_eps(sde, eps)
        return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


def _geometric(hi: float, lo: float, steps: int) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), steps + 1, dtype=torch.float64))


class LogStd(Schedule):
    """std_i geometric from std(T) to std(eps), NCSN's ladder (equal to log_snr for VE, where alpha = 1)."""

    name = "log_std"

    def times(self, sde, steps, eps=None):
        steps, eps = _check_steps(steps), _check_eps(sde, eps)
        hi, lo = (float(sde.std(torch.tensor(v, dtype=torch.float64))) for v in (sde.T, eps))
        t = sde.t_from_std(_geometric(hi, lo, steps)).to(torch.float64).clone()
        t[0], t[-1] = sde.T, eps
        return t


class LogSNR(SigmaSchedule):
    """sigma_i geometric, i.e. log-SNR lambda_i uniform: equal steps h = log(sigma_i / sigma_{i+1}),
    the grid DPM-Solver's error analysis assumes (Lu et al. 2022, Sec. 3.3)."""

    name = "log_snr"

    def sigmas(self, sigma_max, sigma_min, steps):
        return _geometric(sigma_max, sigma_min, steps)


class EDMSchedule(SigmaSchedule):
    """Karras et al. (2022), eq. 5: sigma_i^(1/rho) linear in i; rho = 7 spends most steps at low noise,
    where the ODE's curvature (and the error of a fixed step in sigma) is largest."""

    name = "edm"

    def __init__(self, rho: float = 7.0, sigma_floor: float | None = None):
        super().__init__(sigma_floor)
        if not (isinstance(rho, (int, float)) and rho > 0 and math.isfinite(rho)):
            raise ValueError(f"rho must be a positive number, got {rho!r}")
        self.rho = float(rho)

    def sigmas(self, sigma_max, sigma_min, steps):
        r = 1.0 / self.rho
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        s = (sigma_max**r + u * (sigma_min**r - sigma_max**r)) ** self.rho
        s[0], s[-1] = sigma_max, sigma_min
        return s

    def _args(self):
        return [f"rho={self.rho}"] + super()._args()


SCHEDULES: Registry[type] = Registry("schedule", {"uniform_t": UniformTime, "log_std": LogStd, "log_snr": LogSNR,
                                                 "edm": EDMSchedule},
                                     {"uniform": "uniform_t", "time_uniform": "uniform_t", "log_sigma": "log_snr",
                                      "karras": "edm", "geometric": "log_std"})


def make_schedule(schedule="edm", **options) -> Schedule:
    """A `Schedule` by name ('uniform_t', 'log_std', 'log_snr', 'edm'; options rho for 'edm' and
    sigma_floor for 'log_snr' and 'edm'), or the object itself."""
    if isinstance(schedule, Schedule):
        if options:
            raise ValueError(f"options {sorted(options)} given with a Schedule object {schedule!r}; "
                             "pass a name instead")
        return schedule
    key = SCHEDULES.key(schedule)
    cls = SCHEDULES[key]
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"schedule {key!r} takes no option(s) {unknown}; accepted: {accepted}")
    return cls(**options)


def make_grid(sde: SDE, steps: int, schedule="uniform_t", eps: float | None = None) -> NoiseGrid:
    """The one grid type of every sampler: the K + 1 levels of `schedule` (a name, a `Schedule`, or a
    `NoiseGrid` given as is, steps and eps then ignored) from T down to eps."""
    if isinstance(schedule, NoiseGrid):
        if schedule.steps < 1:
            raise ValueError(f"a NoiseGrid schedule needs at least 2 levels, got {len(schedule.t)}")
        return schedule
    return make_schedule(schedule).grid(sde, steps, eps)
