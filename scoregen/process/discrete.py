"""A VP process built from a discrete table of cumulative alphas: DDPM's schedule as a continuous SDE.

DDPM (Ho et al. 2020) and every diffusers scheduler of its family define N training steps i = 0..N-1 by
betas beta_i and the table alphas_cumprod_i = prod_{j <= i} (1 - beta_j), with

    x_i = sqrt(alphas_cumprod_i) x(0) + sqrt(1 - alphas_cumprod_i) z.

The usual continuous reading (Song et al. 2021, Appendix B) puts step i at t_i = (i + 1) / N and
beta(t_i) ~ N beta_i; then alphas_cumprod_i = exp(-int_0^{t_i} beta) holds only to first order in beta_i
(log(1 - beta_i) = -beta_i - beta_i^2 / 2 - ...), so a VPSDE(beta_min = N beta_0, beta_max = N beta_{N-1})
drifts away from the table (for the linear 1e-4..0.02 schedule, by about 1% in alpha at t = 1), and DDIM
or ancestral steps on it do not reproduce the scheduler's.

`DiscreteVPSDE` instead interpolates the table exactly: B(t) = int_0^t beta is the monotone cubic
(Fritsch-Carlson PCHIP) through the knots B(0) = 0 and B(t_i) = -log(alphas_cumprod_i), so

    alpha(t_i)^2 = alphas_cumprod_i,  std(t_i)^2 = 1 - alphas_cumprod_i    exactly at every table time,
    int_{t_{i-1}}^{t_i} beta = -log(1 - beta_i)  (~ beta_i, the discrete beta's continuous reading),

and in between alpha, std follow a VP SDE (alpha^2 + std^2 = 1) whose beta(t) = B'(t) is continuous and
positive. (A piecewise-linear B, i.e. a piecewise-constant beta, is exact at the knots too, but its jumps
in beta cost an adaptive ODE solver hundreds of rejected steps and 1e-3 nats of likelihood error.)
A deterministic or ancestral sampler
stepping between table times (DDIM, `samplers.ancestral`) therefore takes the scheduler's own steps:
the ratio alpha(t_i) / alpha(t_{i-1}) is sqrt(1 - beta_i) exactly. Between table times a network
trained only at integer timesteps is evaluated at the fractional timestep i = t N - 1
(`DiscreteVPSDE.timestep`), which is how the diffusers UNets embed any float timestep.

The process runs on t in (0, 1]; eps (the smallest time samplers visit) defaults to t_0 = 1 / N, the
first training step. The prior is N(0, I) as for VPSDE (std(1)^2 = 1 - alphas_cumprod_{N-1}).
"""
from __future__ import annotations

import torch

from .sde import VPSDE

__all__ = ["DiscreteVPSDE"]


def _pchip_slopes(d: torch.Tensor) -> torch.Tensor:
    """Slopes at N + 1 uniform knots from the N positive secants d of an increasing table (Fritsch & Carlson
    1980, uniform spacing): the harmonic mean of the two neighbouring secants inside, the one-sided
    three-point rule at the ends, limited to [0, 3 d]. The cubic Hermite through the table with them is
    increasing: beta >= 0, and > 0 inside."""
    m = torch.empty(d.numel() + 1, dtype=torch.float64)
    m[1:-1] = 2 / (1 / d[:-1] + 1 / d[1:])
    if d.numel() == 1:
        m[0] = m[-1] = d[0]
        return m
    for i, (d0, d1) in ((0, (d[0], d[1])), (-1, (d[-1], d[-2]))):
        e = (3 * d0 - d1) / 2
        m[i] = torch.clamp(e, min=0.0, max=float(3 * d0))
    return m


def _as_time(t) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.get_default_dtype())


class DiscreteVPSDE(VPSDE):
    """The VP process through a table alphas_cumprod (length N, strictly decreasing in (0, 1]), exact
    at t_i = (i + 1) / N (module docstring). `timestep(t)` maps a time to the table's (fractional)
    index i = t N - 1."""

    name = "vp_discrete"

    def __init__(self, alphas_cumprod, eps: float | None = None):
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if a.numel() < 2:
            raise ValueError(f"DiscreteVPSDE needs a table of at least 2 alphas_cumprod, got {a.numel()}")
        if not torch.isfinite(a).all() or (a <= 0).any() or (a > 1).any():
            bad = a[~(torch.isfinite(a) & (a > 0) & (a <= 1))][:3].tolist()
            raise ValueError(f"alphas_cumprod must lie in (0, 1] (a zero-terminal-SNR schedule has alpha = 0 at "
                             f"the last step, which no VP prior matches), got {bad}")
        if not (a[1:] < a[:-1]).all():
            i = int(torch.nonzero(a[1:] >= a[:-1])[0]) + 1
            raise ValueError(f"alphas_cumprod must be strictly decreasing, but entry {i} ({float(a[i])}) is not "
                             f"below entry {i - 1} ({float(a[i - 1])})")
        self.N = int(a.numel())
        self.alphas_cumprod = a
        self._B = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.log(a)])  # B at t_k = k / N, k = 0..N
        self._m = _pchip_slopes(self.N * (self._B[1:] - self._B[:-1]))  # beta = B' at the knots
        self.T = 1.0
        self.eps = 1.0 / self.N if eps is None else float(eps)
        if not (0 < self.eps < self.T):
            raise ValueError(f"DiscreteVPSDE needs 0 < eps < 1, got eps={self.eps}")
        # VPSDE-style attributes (read by descriptions only): beta at the two ends
        self.beta_min, self.beta_max = float(self._m[0]), float(self._m[-1])

    def _segment(self, t64: torch.Tensor):
        """(segment k, position s in [0, 1] within it) of float64 times; outside [0, 1], s runs past the end
        segments (the Hermite pieces are then replaced by straight lines, see `int_beta`)."""
        u = t64 * self.N
        k = torch.floor(u).clamp(0, self.N - 1)
        return k.long(), u - k

    def _hermite(self, t, derivative: bool):
        t = _as_time(t)
        t64 = t.to(torch.float64)
        k, s = self._segment(t64)
        B, m = self._B.to(t.device), self._m.to(t.device)
        h = 1.0 / self.N
        b0, b1, m0, m1 = B[k], B[k + 1], m[k] * h, m[k + 1] * h
        if derivative:
            out = ((6 * s**2 - 6 * s) * (b0 - b1) + (3 * s**2 - 4 * s + 1) * m0 + (3 * s**2 - 2 * s) * m1) / h
            out = torch.where(t64 < 0, m[0], torch.where(t64 > 1, m[-1], out))
        else:
            out = b0 + s * s * (3 - 2 * s) * (b1 - b0) + s * (1 - s) ** 2 * m0 - s * s * (1 - s) * m1
            out = torch.where(t64 < 0, m[0] * t64, torch.where(t64 > 1, B[-1] + m[-1] * (t64 - 1), out))
        return out.to(t.dtype)

    def beta(self, t):
        """beta(t) = B'(t), continuous (the derivative of the monotone cubic through the table)."""
        return self._hermite(t, derivative=True)

    def int_beta(self, t):
        """B(t) = int_0^t beta: the monotone (Fritsch-Carlson) cubic through B(t_k) = -log alphas_cumprod_{k-1}."""
        return self._hermite(t, derivative=False)

    def t_from_int_beta(self, b):
        """The time t with B(t) = b: the knot interval by search, then bisection on the increasing cubic."""
        b = _as_time(b)
        b64 = b.to(torch.float64)
        B = self._B.to(b.device)
        k = (torch.searchsorted(B, b64.contiguous(), right=True) - 1).clamp(0, self.N - 1)
        lo, hi = k.to(torch.float64) / self.N, (k + 1).to(torch.float64) / self.N
        for _ in range(55):  # 2^-55 of a knot interval: below float64 rounding of t
            mid = 0.5 * (lo + hi)
            below = self._hermite(mid, derivative=False) < b64
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        t = 0.5 * (lo + hi)
        m = self._m.to(b.device)
        t = torch.where(b64 > B[-1], 1 + (b64 - B[-1]) / m[-1], torch.where(b64 < 0, b64 / m[0], t))
        return t.to(b.dtype)

    def timestep(self, t) -> torch.Tensor:
        """The table index i = t N - 1 of time t (t_i = (i + 1) / N), as a float tensor; within 1e-3 of
        an integer it is that integer, so a table time rounded to float32 still names its own step."""
        i = _as_time(t).to(torch.float64) * self.N - 1
        r = torch.round(i)
        return torch.where((i - r).abs() < 1e-3, r, i)

    def time_of_step(self, i) -> torch.Tensor:
        """t_i = (i + 1) / N of table step i (float64)."""
        return (torch.as_tensor(i, dtype=torch.float64) + 1) / self.N

    def config(self):
        return {"name": self.name, "alphas_cumprod": self.alphas_cumprod.tolist(), "eps": self.eps}

    def __repr__(self) -> str:
        return (f"DiscreteVPSDE(N={self.N}, alphas_cumprod={float(self.alphas_cumprod[0]):.6g}.."
                f"{float(self.alphas_cumprod[-1]):.6g}, eps={self.eps})")
