"""Exact log-likelihood and bits/dim through the probability-flow ODE.

A score model defines a continuous normalizing flow: the probability-flow ODE

    dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t)

carries p_eps to p_T, and along a solution the instantaneous change of variables (Chen et al.
2018) gives d/dt log p_t(x(t)) = -div f~(x(t), t). Integrating from t = eps to T (Song et al. 2021,
"Score-based generative modeling through SDEs", Section 4.3 and Appendix D.2):

    log p_eps(x) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt,       x(eps) = x,

with log p_T replaced by the prior density *at the ODE's end point x(T)*, and the divergence
integral *added* (Song et al. 2021, Appendix D.2, eq. 39-40; Grathwohl et al. 2019, FFJORD, eq. 4). Every forward process here
is linear, f(x, t) = c(t) x, so div f~ = D c(t) - 1/2 g(t)^2 div s, and only div s needs autograd:

    exact        div s = sum_i e_i^T (ds/dx) e_i, one vector-Jacobian product per dimension
                 (for D > 8 on x replicated along the batch, one copy per dimension);
    hutchinson   div s ~ v^T (ds/dx) v with E[v v^T] = I (Skilling 1989; Hutchinson 1990), one
                 vector-Jacobian product per probe and evaluation. The probe v is drawn once and
                 held fixed along the whole solve, so the integral is an unbiased estimate of the
                 exact one (Grathwohl et al. 2019, FFJORD). Rademacher probes (+-1) have the lower
                 variance, 2 sum_{i != j} A_ij^2 against 2 ||A||_F^2 for Gaussian ones (A the
                 symmetric part of ds/dx).

The ODE is solved jointly for (x, the running divergence integral) as one (N, D + K) tensor on
x's device, with the torch Dormand–Prince solver of `ode.py` (the default), scipy's `solve_ivp`
(RK45, as in the reference code of Song et al. 2021, kept for comparison) or fixed-step Heun.

Bits per dimension (`bits_per_dim`): 8-bit pixels k in {0..L-1}^D (L = 256) are dequantized as
y = (k + u) / L, u ~ U[0, 1)^D, and fed to the model in its value range [lo, hi] as
x = lo + (hi - lo) y. The discrete probability of k is P(k) = int_[0,1)^D p_Y((k + u) / L) L^-D du,
and p_Y(y) = p_X(x) (hi - lo)^D (change of variables), so by Jensen's inequality

    -log P(k) <= E_u[ -log p_X(x) ] - D log(hi - lo) + D log L,
    bpd = ( -log p_X(x) - D log(hi - lo) + D log L ) / (D ln 2)
        = -log p_X(x) / (D ln 2) + log2 L - log2(hi - lo),

i.e. + 8 bits for data in [0, 1] and + 7 bits for data in [-1, 1] with L = 256 (Theis et al.
2016; Papamakarios et al. 2017). `bpd_offset` returns the nats D log L - D log(hi - lo).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .process import ode
from .process.sde import SDE
from .util import ScoreFn, check_eps, check_positive_int, choose_one_of, normalize_name, time_vector

__all__ = [
    "LikelihoodResult", "BPDResult", "log_likelihood", "bits_per_dim", "dequantize", "bpd_offset",
    "nll_to_bpd", "time_grid", "DIVERGENCES", "PROBES", "SOLVERS", "EXACT_MAX_DIM",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
SOLVERS = ("rk45", "heun", "scipy_rk45")
#: with divergence="auto", exact divergence up to this many dimensions, Hutchinson above.
EXACT_MAX_DIM = 64
# up to this many probes per evaluation: one forward pass and a loop of backward passes
_LOOP_MAX_PROBES = 8
# beyond: x replicated once per probe, at most this many elements (copies x N x D) per pass
_REPLICA_ELEMENTS = 1 << 18

#: a log-density of the prior at the ODE's end point: logp(z) -> (N,) nats, z of shape (N, ...).
LogDensityFn = Callable[[torch.Tensor], torch.Tensor]
#: a value range (lo, hi) of the data, e.g. (0, 1) or (-1, 1).
ValueRange = Sequence[float]


@dataclass
class LikelihoodResult:
    """Per-example log p_eps(x) in nats and the pieces it is made of.

    logp = prior_logp + delta_logp; with K > 1 Hutchinson probes, `logp_probes` (N, K) holds the
    K independent estimates and `logp` their mean.
    """

    logp: torch.Tensor  # (N,)
    nfe: int
    prior_logp: torch.Tensor  # (N,) log p_T at the ODE's end point x(T)
    delta_logp: torch.Tensor  # (N,) int_eps^T div f~ dt (mean over probes)
    z: torch.Tensor  # (N, ...) the end point x(T)
    logp_probes: torch.Tensor | None = None  # (N, K) one estimate per Hutchinson probe
    n_steps: int = 0
    n_rejected: int = 0

    @property
    def logp_se(self) -> torch.Tensor | None:
        """Standard error of `logp` over the Hutchinson probes (None for fewer than 2 probes)."""
        if self.logp_probes is None or self.logp_probes.shape[1] < 2:
            return None
        return self.logp_probes.std(1) / math.sqrt(self.logp_probes.shape[1])


@dataclass
class BPDResult:
    """Bits per dimension of 8-bit data, averaged over K dequantization repeats.

    `bpd_repeats` (N, K) holds one value per repeat (fresh uniform noise and, for Hutchinson,
    fresh probes each time); `bpd` is their mean and `bpd_se` its standard error per example
    (NaN for K = 1). `x` (K, N, ...) are the dequantized inputs the model saw.
    """

    bpd: torch.Tensor  # (N,)
    bpd_se: torch.Tensor  # (N,)
    bpd_repeats: torch.Tensor  # (N, K)
    nll: torch.Tensor  # (N,) nats per example of the discrete data: bpd * D ln 2
    nfe: int
    x: torch.Tensor  # (K, N, ...)


# --- validation ------------------------------------------------------------------------------
def _choice(value, accepted, what):
    """The accepted name `value` stands for, by the registries' one name rule (`util.normalize_name`)."""
    key = next((a for a in accepted if normalize_name(a) == normalize_name(value)), None)
    if key is None:
        raise ValueError(choose_one_of(what, value, accepted))
    return key


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor of shape (N, ...), got {got}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N, ...) with N >= 1 and a data axis, got {tuple(x.shape)}")


def _time_span(sde: SDE, eps) -> tuple[float, float]:
    return check_eps(eps, sde.T, sde.eps), float(sde.T)


# --- divergence --------------------------------------------------------------------------------
def _draw(shape, kind: str, generator, like: torch.Tensor) -> torch.Tensor:
    """Probe vectors with E[v v^T] = I, drawn on the generator's device, returned on x's."""
    device = generator.device if generator is not None else like.device
    if kind == "gaussian":
        v = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    else:
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(like.dtype) * 2 - 1
    return v.to(like.device)


def _score_with_graph(score_fn, x, t):
    """(x as a leaf that requires grad, s(x, t)) with the checks that make a bad score_fn readable."""
    x = x.detach().requires_grad_(True)
    s = score_fn(x, t)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    if not s.requires_grad:
        raise ValueError("score_fn's output does not depend on x through autograd (does it detach x, convert to "
                         "numpy or run under torch.no_grad?); the likelihood differentiates the score, so score_fn "
                         "must be differentiable in x")
    return x, s


def _basis(idx, n, d, like):
    """Basis vectors e_i, i in idx, for every example: shape (len(idx), N, D)."""
    e = torch.zeros(len(idx), n, d, dtype=like.dtype, device=like.device)
    e[torch.arange(len(idx), device=like.device), :, idx] = 1.0
    return e


def _score_and_quadratics(score_fn, x, t, probes):
    """s(x, t) and v_k^T (ds/dx) v_k for each probe v_k, shape (K, N); probes None = all D basis vectors.

    Examples are independent (s_n depends on x_n only), so one backward pass of sum_n v_n . s_n gives
    every example's v_n^T (ds_n/dx_n) v_n at once. Up to _LOOP_MAX_PROBES probes: one forward pass and
    one backward pass per probe. Beyond: x is replicated K times along the batch (in chunks) and each
    copy gets its own probe, one forward and one backward pass on the big batch, which for
    convolutional nets runs several times faster than a vmapped backward (`is_grads_batched`).
    """
    n, d = x.shape[0], x[0].numel()
    k = d if probes is None else probes.shape[0]

    def chunk_probes(lo, hi):
        if probes is None:
            return _basis(torch.arange(lo, hi, device=x.device), n, d, x).reshape(hi - lo, *x.shape)
        return probes[lo:hi]

    if k <= _LOOP_MAX_PROBES:
        xg, s = _score_with_graph(score_fn, x, t)
        quads = []
        for p in chunk_probes(0, k):
            (g,) = torch.autograd.grad(s, xg, p, retain_graph=True)
            quads.append((g * p).reshape(n, d).sum(1))
        return s, torch.stack(quads)
    size = max(1, min(k, _REPLICA_ELEMENTS // (n * d)))
    s, quads = None, []
    for lo in range(0, k, size):
        hi = min(k, lo + size)
        p = chunk_probes(lo, hi).reshape((hi - lo) * n, *x.shape[1:])
        xr, sr = _score_with_graph(score_fn, x.repeat((hi - lo,) + (1,) * (x.dim() - 1)), t.repeat(hi - lo))
        (g,) = torch.autograd.grad(sr, xr, p)
        quads.append((g * p).reshape(hi - lo, n, d).sum(2))
        s = sr[:n].detach() if s is None else s
    return s, torch.cat(quads)


def _joint_drift(score_fn, sde: SDE, shape, probes):
    """The right-hand side of the joint ODE on the state [x flattened, K divergence integrals].

    d x/dt = f(x, t) - 1/2 g^2 s(x, t);   d delta_k/dt = D c(t) - 1/2 g^2 (div s)_k,
    with div s exact (probes None: the sum over the D basis vectors) or one estimate per probe.
    """
    n, d = shape[0], math.prod(shape[1:])

    def fn(state, t):
        x = state[:, :d].reshape(shape)
        with torch.enable_grad():  # the divergence needs gradients, also inside a no_grad caller
            s, quad = _score_and_quadratics(score_fn, x, t, probes)
        s, quad = s.detach(), quad.detach()
        div_s = quad.sum(0)[:, None] if probes is None else quad.T
        dx = sde.reverse_drift(x, t, s, probability_flow=True).reshape(n, d)
        g2 = sde.diffusion(t) ** 2
        ddelta = d * sde.drift_coef(t)[:, None] - 0.5 * g2[:, None] * div_s
        return torch.cat([dx, ddelta.to(dx.dtype)], dim=1)

    return fn


# --- solvers ---------------------------------------------------------------------------------
def _scipy_rk45(fn, state, t0, t1, rtol, atol):
    """scipy.integrate.solve_ivp(RK45) on the flattened state: one host round trip per evaluation."""
    from scipy.integrate import solve_ivp

    shape, dtype, device = state.shape, state.dtype, state.device

    def rhs(t, y):
        y = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        return fn(y, time_vector(t, y)).reshape(-1).cpu().double().numpy()

    sol = solve_ivp(rhs, (t0, t1), state.reshape(-1).cpu().double().numpy(), method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"scipy solve_ivp failed: {sol.message}")
    out = torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
    return ode.ODEResult(out, int(sol.nfev), n_steps=len(sol.t) - 1)


def time_grid(sde: SDE, t0: float, t1: float, steps: int, grid: str = "log_snr") -> torch.Tensor:
    """steps + 1 times from t0 to t1, uniform in t or in the log signal-to-noise ratio
    lambda(t) = log(alpha^2 / std^2) (found by bisection, lambda being decreasing).

    Near t = 0 the marginal std of every process here grows like sqrt(t), so a grid uniform in t
    spends one step where std grows by orders of magnitude; uniform in lambda it grows by the same
    factor at every step (for VE, a geometric grid in std).
    """
    steps = check_positive_int(steps, "steps (of the Heun solver)")
    if grid == "uniform":
        return torch.linspace(t0, t1, int(steps) + 1, dtype=torch.float64)
    if grid != "log_snr":
        raise ValueError(f"unknown time grid {grid!r}; choose 'log_snr' or 'uniform'")
    ends = sde.log_snr(torch.tensor([t0, t1], dtype=torch.float64))
    target = torch.linspace(float(ends[0]), float(ends[1]), int(steps) + 1, dtype=torch.float64)
    lo, hi = torch.full_like(target, t0), torch.full_like(target, t1)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = sde.log_snr(mid) > target  # lambda decreases: the root lies later
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    ts = 0.5 * (lo + hi)
    ts[0], ts[-1] = t0, t1
    return ts


def _solve(fn, state, sde, t0, t1, solver, steps, grid, rtol, atol, progress):
    if solver == "rk45":
        return ode.dopri5(fn, state, t0, t1, rtol=rtol, atol=atol, progress=progress)
    if solver == "heun":
        return ode.fixed_step(fn, state, time_grid(sde, t0, t1, steps, grid), "heun", progress=progress)
    return _scipy_rk45(fn, state, t0, t1, rtol, atol)


def _progress_bar(progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return lambda it=None, total=None: tqdm(it, total=total, desc="likelihood ODE", leave=False)


# --- public API --------------------------------------------------------------------------------
def log_likelihood(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, divergence: str = "auto", n_probes: int = 1,
                   probe: str = "rademacher", solver: str = "rk45", steps: int = 100, grid: str = "log_snr",
                   rtol: float = 1e-5, atol: float = 1e-5, eps: float | None = None,
                   prior_logp: LogDensityFn | None = None, probes: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, progress: bool = False) -> LikelihoodResult:
    """log p_eps(x) per example, in nats, through the probability-flow ODE (module docstring).

    score_fn(x, t) must be differentiable in x (it is called under enable_grad); x is (N, ...)
    in any float dtype and on any device, and the solve stays there.

    divergence: 'exact' (D vector-Jacobian products per evaluation), 'hutchinson' (`n_probes`
        of them, `probe` 'rademacher' or 'gaussian', drawn from `generator` once per solve), or
        'auto' (exact for D <= EXACT_MAX_DIM). `probes` (K, N, ...) may be given instead of drawn
        (common random numbers when comparing models).
    solver: 'rk45' (torch Dormand–Prince 5(4), `rtol`/`atol`; the default: state on the device),
        'scipy_rk45' (scipy's RK45 on the host) or 'heun' (`steps` steps, 2 NFE each, on a `grid`
        uniform in 'log_snr' (default) or in t ('uniform'): see `time_grid`).
    eps: the start time (default `sde.eps`): the score is singular at t = 0, so what is measured is
        p_eps, the data law after the forward process ran for eps.
    prior_logp: the log-density used at the end point x(T), default `sde.prior_logp`; pass the
        exact log p_T to test the integrator alone.
    """
    _check_input(x)
    divergence = _choice(divergence, DIVERGENCES + ("auto",), "divergence")
    probe = _choice(probe, PROBES, "probe")
    solver = _choice(solver, SOLVERS, "solver")
    t0, t1 = _time_span(sde, eps)
    check_positive_int(n_probes, "n_probes")
    d = x[0].numel()
    if divergence == "auto":
        divergence = "hutchinson" if probes is not None or d > EXACT_MAX_DIM else "exact"
    if probes is not None:
        if divergence != "hutchinson" or probes.dim() != x.dim() + 1 or probes.shape[1:] != x.shape:
            raise ValueError(f"probes must have shape (K, *x.shape) = (K, {', '.join(map(str, x.shape))}) and go "
                             f"with divergence='hutchinson', got {tuple(probes.shape)} with {divergence!r}")
        probes = probes.to(dtype=x.dtype, device=x.device)
    elif divergence == "hutchinson":
        probes = _draw((int(n_probes),) + tuple(x.shape), probe, generator, x)
    k = 1 if probes is None else probes.shape[0]
    state = torch.cat([x.detach().reshape(x.shape[0], d), x.new_zeros(x.shape[0], k)], dim=1)
    fn = _joint_drift(score_fn, sde, tuple(x.shape), probes)
    res = _solve(fn, state, sde, t0, t1, solver, steps, grid, rtol, atol, _progress_bar(progress))
    z = res.x[:, :d].reshape(x.shape)
    delta = res.x[:, d:]
    prior = (sde.prior_logp if prior_logp is None else prior_logp)(z).to(device=x.device, dtype=x.dtype)
    logp_k = prior[:, None] + delta
    return LikelihoodResult(logp=logp_k.mean(1), nfe=res.nfe, prior_logp=prior, delta_logp=delta.mean(1), z=z,
                            logp_probes=logp_k if probes is not None else None, n_steps=res.n_steps,
                            n_rejected=res.n_rejected)


def bpd_offset(dim: int, levels: int = 256, value_range: ValueRange = (0.0, 1.0)) -> float:
    """D log L - D log(hi - lo) nats: add it to -log p_X(x) to get the discrete data's NLL bound."""
    lo, hi = _value_range(value_range)
    return dim * (math.log(int(levels)) - math.log(hi - lo))


def nll_to_bpd(nll: torch.Tensor | float, dim: int, levels: int = 256,
               value_range: ValueRange = (0.0, 1.0)) -> torch.Tensor | float:
    """bpd = (-log p_X(x) + D log L - D log(hi - lo)) / (D ln 2) from -log p_X(x) in nats."""
    return (nll + bpd_offset(dim, levels, value_range)) / (dim * math.log(2))


def _value_range(value_range: ValueRange) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (lo, hi) such as (0, 1) or (-1, 1), "
                         f"got {value_range!r}") from None
    if not hi > lo:
        raise ValueError(f"value_range must have hi > lo, got {value_range!r}")
    return lo, hi


def _check_pixels(pixels: torch.Tensor | np.ndarray, levels: int) -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor):
        pixels = torch.as_tensor(np.asarray(pixels))
    if pixels.dim() < 2 or pixels.shape[0] == 0:
        raise ValueError(f"pixels must have shape (N, ...) with N >= 1, got {tuple(pixels.shape)}")
    p = pixels.double()
    if not torch.equal(p, p.round()) or p.min() < 0 or p.max() > levels - 1:
        raise ValueError(f"pixels must be integers in 0..{levels - 1} (raw 8-bit values; for images scaled to "
                         f"[0, 1] pass round(x * {levels - 1})), got values in [{float(p.min())}, {float(p.max())}]")
    return pixels


def dequantize(pixels: torch.Tensor | np.ndarray, *, levels: int = 256, value_range: ValueRange = (0.0, 1.0),
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform dequantization: x = lo + (hi - lo) (k + u) / L, u ~ U[0, 1)^D, on pixels' device."""
    lo, hi = _value_range(value_range)
    pixels = _check_pixels(pixels, int(levels))
    device = generator.device if generator is not None else pixels.device
    u = torch.rand(pixels.shape, generator=generator, device=device, dtype=dtype).to(pixels.device)
    return lo + (hi - lo) * (pixels.to(dtype) + u) / int(levels)


def bits_per_dim(score_fn: ScoreFn, sde: SDE, pixels: torch.Tensor | np.ndarray, *, levels: int = 256,
                 value_range: ValueRange = (0.0, 1.0), shift: float | torch.Tensor = 0.0, scale: float = 1.0,
                 repeats: int = 1, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 **options: Any) -> BPDResult:
    """Bits per dimension of integer pixels k in {0..levels-1}, shape (N, ...) (module docstring):

        bpd = ( -log p_X(x) - D log(hi - lo) + D log L ) / (D ln 2),   x = lo + (hi - lo)(k + u)/L,

    for data scaled to `value_range` = (lo, hi). A model trained on normalized data sees
    z = (x - shift) / scale (`shift` broadcastable to one example, e.g. per channel; `scale` a
    scalar); then log p_X(x) = log p_Z(z) - D log(scale). The K = `repeats` dequantizations (each
    with its own Hutchinson probes) are solved as one batch of K N examples; `options` go to
    `log_likelihood` (divergence, solver, rtol, ...).
    """
    if not (float(scale) > 0 and math.isfinite(float(scale))):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    check_positive_int(repeats, "repeats")
    pixels = _check_pixels(pixels, int(levels))
    k, n, d = int(repeats), pixels.shape[0], pixels[0].numel()
    rep = pixels.expand(k, *pixels.shape).reshape(k * n, *pixels.shape[1:])
    x = dequantize(rep, levels=levels, value_range=value_range, generator=generator, dtype=dtype)
    shift = torch.as_tensor(shift, dtype=dtype, device=x.device)
    res = log_likelihood(score_fn, sde, (x - shift) / float(scale), generator=generator, **options)
    nll = -(res.logp.reshape(k, n).T - d * math.log(float(scale)))  # (N, K), nats of x
    bpd_k = nll_to_bpd(nll, d, levels, value_range)
    se = bpd_k.std(1) / math.sqrt(k) if k > 1 else torch.full((n,), float("nan"), dtype=bpd_k.dtype)
    bpd = bpd_k.mean(1)
    return BPDResult(bpd=bpd, bpd_se=se.to(bpd.device), bpd_repeats=bpd_k, nll=bpd * d * math.log(2), nfe=res.nfe,
                     x=x.reshape(k, n, *pixels.shape[1:]))
