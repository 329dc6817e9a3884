"""Forward processes: the SDEs VE, VP and sub-VP of Song et al. (2021) and the NCSN noise ladder.

Every process here is *linear* in x, so its transition kernel is Gaussian:

    x(t) | x(0) ~ N( alpha(t) x(0), std(t)^2 I ),

and everything a sampler or a likelihood needs follows from four functions of t: the drift
f(x, t) = -1/2 beta(t) x (or 0), the diffusion g(t), the mean coefficient alpha(t) and the std.
Given a score s(x, t) ~ grad_x log p_t(x) (Song et al. 2021, eq. 6 and 13; Anderson 1982):

    reverse-time SDE       dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dw_bar
    probability-flow ODE   dx = [f(x, t) - 1/2 g(t)^2 s(x, t)] dt

Times are per-example tensors of shape (N,); data can have any shape (N, ...).

Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, "Score-Based Generative Modeling
through Stochastic Differential Equations", ICLR 2021 (Appendix B, C).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from ..util import Registry

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "NoiseLadder", "make_sde", "SDE_NAMES", "broadcast_to"]


def broadcast_to(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example tensor of shape (N,) to (N, 1, ..., 1) so it multiplies x."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def _as_time(t, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t
    if like is not None:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return torch.as_tensor(t, dtype=torch.get_default_dtype())


class SDE(ABC):
    """A linear forward SDE dx = f(x, t) dt + g(t) dw on t in [0, T].

    Subclasses give `beta`-style coefficients through `drift_coef`, `diffusion`, `alpha`, `std`;
    the rest (marginals, prior, reverse SDE, probability-flow ODE, exact one-step transitions)
    is shared.
    """

    T: float = 1.0
    #: smallest time used by samplers and likelihood; the score blows up as std(t) -> 0.
    eps: float = 1e-3
    name: str = "sde"

    # --- coefficients -------------------------------------------------------------------
    @abstractmethod
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """Scalar c(t) with f(x, t) = c(t) x."""

    @abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t), shape like t."""

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Mean coefficient of the marginal: E[x(t) | x(0)] = alpha(t) x(0)."""

    @abstractmethod
    def std(self, t: torch.Tensor) -> torch.Tensor:
        """Standard deviation of x(t) | x(0)."""

    @abstractmethod
    def t_from_std(self, std: torch.Tensor) -> torch.Tensor:
        """Inverse of `std`: the time at which the marginal std equals `std`."""

    @abstractmethod
    def config(self) -> dict:
        """Plain-data description, enough for `make_sde(**config)`."""

    # --- the process --------------------------------------------------------------------
    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t)."""
        return broadcast_to(self.drift_coef(t), x) * x

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean and std of p_0t(x(t) | x(0)); the std has shape (N,)."""
        return broadcast_to(self.alpha(t), x0) * x0, self.std(t)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x(t) = alpha(t) x(0) + std(t) z."""
        mean, std = self.marginal_prob(x0, t)
        return mean + broadcast_to(std, x0) * noise

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(alpha(t)^2 / std(t)^2), decreasing in t."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.std(t)))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level of the scaled variable x / alpha: std(t) / alpha(t) (EDM's sigma)."""
        return self.std(t) / self.alpha(t)

    # --- prior --------------------------------------------------------------------------
    def prior_std(self) -> float:
        """Std of the prior N(0, prior_std^2 I) that approximates p_T."""
        return float(self.std(torch.tensor(self.T, dtype=torch.float64)))

    def prior_sample(self, shape, *, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return self.prior_std() * z

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the first axis."""
        s = self.prior_std()
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s * s) - sq / (2 * s * s)

    # --- reverse processes ---------------------------------------------------------------
    def reverse_drift(self, x, t, score, probability_flow: bool = False) -> torch.Tensor:
        """f(x, t) - g(t)^2 s (reverse SDE) or f(x, t) - 1/2 g(t)^2 s (probability-flow ODE).

        `score` is the value s(x, t) already evaluated. Integrate it *backwards* in time
        (dt < 0).
        """
        g2 = broadcast_to(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - (0.5 if probability_flow else 1.0) * g2 * score

    def ode_drift(self, score_fn):
        """The probability-flow ODE right-hand side as a function (x, t) -> dx/dt."""

        def fn(x, t):
            return self.reverse_drift(x, t, score_fn(x, t), probability_flow=True)

        return fn

    def transition(self, t: torch.Tensor, s: torch.Tensor):
        """Exact one-step kernel x(t) | x(s) = a x(s) + G z for s < t: returns (a, G), shape (N,).

        a = alpha(t) / alpha(s) and G^2 = std(t)^2 - a^2 std(s)^2. This is the "discretization"
        used by the reverse-diffusion predictor (Song et al. 2021, eq. 46): for VE it gives
        G^2 = sigma_i^2 - sigma_{i-1}^2, for VP a = sqrt(1 - beta_i) and G^2 = beta_i.
        """
        a = self.alpha(t) / self.alpha(s)
        g2 = self.std(t) ** 2 - a**2 * self.std(s) ** 2
        return a, torch.sqrt(torch.clamp(g2, min=0.0))

    def tweedie_denoise(self, x, t, score) -> torch.Tensor:
        """E[x(0) | x(t)] = (x + std^2 s) / alpha (Tweedie's formula)."""
        std = broadcast_to(self.std(t), x)
        return (x + std**2 * score) / broadcast_to(self.alpha(t), x)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class VESDE(SDE):
    """Variance-exploding SDE (SMLD / NCSN in continuous time, Song et al. 2021, eq. 9), the MNIST presets' SDE.

        sigma(t) = sigma_min (sigma_max / sigma_min)^t,  dx = sqrt(d[sigma(t)^2]/dt) dw,
        g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)),  alpha(t) = 1,
        std(t) = sqrt(sigma(t)^2 - sigma_min^2).

    The std is the *exact* one of x(t) | x(0) (Song et al. 2021, Appendix B, eq. 29: N(x(0), [sigma(t)^2 - sigma(0)^2] I)); the reference code uses
    sigma(t), which is the std only if x(0) already carries N(0, sigma_min^2) noise. Training,
    sampling and likelihood all use this one function, so they stay consistent.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, eps: float = 1e-5):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        # the process's constants; `sigma_min` / `sigma_max` read them (NoiseLadder reads its ladder's ends)
        self._s0, self._s1, self.T, self.eps = float(sigma_min), float(sigma_max), float(T), float(eps)
        self._log_ratio = math.log(self._s1 / self._s0)

    @property
    def sigma_min(self) -> float:
        return self._s0

    @property
    def sigma_max(self) -> float:
        return self._s1

    def noise_scale(self, t):
        """The geometric noise scale sigma_min (sigma_max / sigma_min)^(t / T) of Song et al. 2021, eq. 30.

        Not `sigma(t)`: that is, as for every process, std(t) / alpha(t) = sqrt(scale^2 - sigma_min^2),
        the noise level x(t) really carries (EDM's sigma)."""
        return self._s0 * torch.exp(_as_time(t) / self.T * self._log_ratio)

    sigma_t = noise_scale  # the earlier name

    def drift_coef(self, t):
        return torch.zeros_like(_as_time(t))

    def diffusion(self, t):
        return self.noise_scale(t) * math.sqrt(2 * self._log_ratio / self.T)

    def alpha(self, t):
        return torch.ones_like(_as_time(t))

    def std(self, t):
        s = self.noise_scale(t)
        return torch.sqrt(torch.clamp(s**2 - self._s0**2, min=0.0))

    def t_from_std(self, std):
        std = _as_time(std)
        return self.T * torch.log(torch.sqrt(std**2 + self._s0**2) / self._s0) / self._log_ratio

    def config(self):
        return {"name": "ve", "sigma_min": self._s0, "sigma_max": self._s1, "T": self.T, "eps": self.eps}


class _LinearBeta(SDE):
    """beta(t) = beta_min + t (beta_max - beta_min), B(t) = int_0^t beta(s) ds (on t in [0, 1])."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3):
        if not (0 < beta_min < beta_max):
            raise ValueError(f"{type(self).__name__} needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.T, self.eps = float(beta_min), float(beta_max), float(T), float(eps)

    def beta(self, t):
        return self.beta_min + _as_time(t) / self.T * (self.beta_max - self.beta_min)

    def int_beta(self, t):
        """B(t) = beta_min t + (beta_max - beta_min) t^2 / (2 T)."""
        t = _as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def t_from_int_beta(self, b):
        """Solve B(t) = b for t >= 0 (the positive root of the quadratic)."""
        a = 0.5 * (self.beta_max - self.beta_min) / self.T
        return (-self.beta_min + torch.sqrt(self.beta_min**2 + 4 * a * b)) / (2 * a)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def alpha(self, t):
        return torch.exp(-0.5 * self.int_beta(t))

    def config(self):
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T, "eps": self.eps}


class VPSDE(_LinearBeta):
    """Variance-preserving SDE (DDPM in continuous time).

        dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,
        alpha(t) = exp(-B(t) / 2),  std(t) = sqrt(1 - exp(-B(t))),  prior N(0, I).
    """

    name = "vp"

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def std(self, t):
        return torch.sqrt(-torch.expm1(-self.int_beta(t)))

    def t_from_std(self, std):
        std = _as_time(std)
        return self.t_from_int_beta(-torch.log1p(-std**2))

    def prior_std(self):
        return 1.0


class SubVPSDE(_LinearBeta):
    """Sub-VP SDE (Song et al. 2021, eq. 13): its variance stays below the VP one.

        dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw,
        alpha(t) = exp(-B(t) / 2),  std(t) = 1 - exp(-B(t))   (not its square root:
        Song et al. 2021, eq. 11 and Appendix B; d Var/dt = -beta Var + beta (1 - e^{-2B}) has Var = (1 - e^{-B})^2).
    """

    name = "subvp"

    def diffusion(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.int_beta(t)))

    def std(self, t):
        return -torch.expm1(-self.int_beta(t))

    def t_from_std(self, std):
        std = _as_time(std)
        return self.t_from_int_beta(-torch.log1p(-std))

    def prior_std(self):
        return 1.0


class NoiseLadder(VESDE):
    """The discrete geometric noise ladder of NCSN: sigma_1 > sigma_2 > ... > sigma_L.

    sigma_i = sigma_1 (sigma_L / sigma_1)^((i-1)/(L-1)) (Song & Ermon 2019). It is the VE
    process observed at L times: `times[i]` is the VE time whose marginal std is `sigmas[i]`,
    so a score model s(x, t) trained on the ladder is also a `score_fn` for every sampler.
    Training (`losses.ncsn_loss`) and annealed Langevin use only these L levels.

    `sigma_max` and `sigma_min` are the ladder's ends sigma_1 and sigma_L, as in `config()`; the VE
    process underneath runs from `ve_sigma_min` = sigma_L / 100 (so that std(times[-1]) is exactly
    sigma_L with t in (0, 1]) to `ve_sigma_max` = sqrt(sigma_1^2 + ve_sigma_min^2).
    """

    name = "ladder"

    def __init__(self, sigma_max: float = 50.0, sigma_min: float = 0.01, L: int = 10):
        if L < 2:
            raise ValueError(f"NoiseLadder needs at least L=2 levels, got L={L}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"NoiseLadder needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        # the VE std at t is sqrt(sigma(t)^2 - s0^2); choose s0 small so that std(times[-1]) is
        # exactly sigma_L and t stays in (0, 1].
        super().__init__(sigma_min=sigma_min * 1e-2, sigma_max=math.hypot(sigma_max, sigma_min * 1e-2))
        self.L = int(L)
        self.sigma_1, self.sigma_L = float(sigma_max), float(sigma_min)
        self.sigmas = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), L, dtype=torch.float64))
        self.times = self.t_from_std(self.sigmas)
        self.eps = float(self.times[-1])

    @property
    def sigma_min(self) -> float:
        return self.sigma_L

    @property
    def sigma_max(self) -> float:
        return self.sigma_1

    @property
    def ve_sigma_min(self) -> float:
        return self._s0

    @property
    def ve_sigma_max(self) -> float:
        return self._s1

    def config(self):
        return {"name": "ladder", "sigma_max": self.sigma_1, "sigma_min": self.sigma_L, "L": self.L}


SDE_NAMES: Registry[type] = Registry("SDE", {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE, "ladder": NoiseLadder})


def make_sde(name: str, **kwargs) -> SDE:
    """Build a forward process by name: 've', 'vp', 'subvp' or 'ladder' (NCSN)."""
    cls = SDE_NAMES.lookup(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad options for SDE {name!r}: {e}") from None
