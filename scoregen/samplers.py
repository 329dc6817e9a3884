"""Samplers: plain functions over (score_fn, sde, x), one signature for all.

    sampler(score_fn, sde, x, *, steps, generator=None, return_trajectory=False,
            progress=False, **options) -> SampleResult(samples, nfe, trajectory, times)

`x` is the starting state (normally `sde.prior_sample(shape)`); `score_fn(x, t)` is any score
model (analytic, learned, guided). Time grids run from T down to `sde.eps`. NFE counts every
call of `score_fn`. `sample(...)` draws the start and dispatches by name.

Sources: Song & Ermon 2019 (annealed Langevin), Song & Ermon 2020 "Improved techniques" (level
and step-size rules, final denoising), Song et al. 2021 "Score-SDE" (reverse SDE, reverse
diffusion, ancestral sampling, predictor-corrector, probability-flow ODE).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import ode
from .sde import SDE, NoiseLadder, VESDE, VPSDE, broadcast_to
from .schedules import LogSNR, NoiseGrid, make_schedule, t_from_sigma

__all__ = [
    "SampleResult", "SamplerNotApplicable", "SAMPLERS", "sample", "time_grid",
    "langevin", "annealed_langevin", "euler_maruyama", "reverse_diffusion", "ancestral",
    "predictor_corrector", "probability_flow", "ald_step_size", "sampler_names",
    "ddim", "dpm_solver_2m", "dpm_solver_2s", "dpm_solver_3m", "edm_heun", "steps_for_nfe",
    # building blocks for samplers written elsewhere (inverse.py's imputation, DPS, SDEdit)
    "SamplerRun", "langevin_corrector", "reverse_diffusion_step",
]


@dataclass
class SampleResult:
    samples: torch.Tensor
    nfe: int
    trajectory: torch.Tensor | None = None  # (K+1, N, ...) on the CPU, when asked for
    times: torch.Tensor | None = None  # (K+1,) the time of each trajectory frame


class SamplerNotApplicable(ValueError):
    """The sampler does not apply to the given forward process."""


class SamplerRun:
    """Bookkeeping shared by every sampler: NFE, noise draws, trajectory and progress bar."""

    def __init__(self, score_fn, x, generator, record, progress, desc):
        self.score_fn, self.generator, self.record = score_fn, generator, record
        self.nfe, self.frames, self.times = 0, [], []
        self.progress, self.desc = progress, desc
        if record:
            self.frames.append(x.detach().cpu())

    def score(self, x, t):
        self.nfe += 1
        return self.score_fn(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))

    def noise(self, x):
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def iterate(self, n):
        return tqdm(range(n), desc=self.desc, leave=False) if self.progress else range(n)

    def keep(self, x, t):
        if self.record:
            self.frames.append(x.detach().cpu())
            self.times.append(float(t))

    def result(self, x, t_start):
        if not self.record:
            return SampleResult(x, self.nfe)
        return SampleResult(x, self.nfe, torch.stack(self.frames), torch.tensor([t_start] + self.times))


def time_grid(sde: SDE, steps: int, eps: float | None = None) -> torch.Tensor:
    """steps + 1 times from T down to eps, uniform in t (geometric in sigma for VE)."""
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    eps = sde.eps if eps is None else float(eps)
    return torch.linspace(sde.T, eps, int(steps) + 1, dtype=torch.float64)


# --- Langevin dynamics -------------------------------------------------------------------
def langevin(score_fn, sde: SDE, x, *, steps: int = 1000, t: float | None = None, step_size: float | None = None,
             snr: float = 0.1, generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """Unadjusted Langevin dynamics at one noise level t (default sde.eps) (seed 000 section 3):

        x_{k+1} = x_k + e s(x_k, t) + sqrt(2 e) z_k.

    With no `step_size`, each step uses the signal-to-noise rule e = 2 (snr ||z|| / ||s||)^2.
    It samples p_t only if the chain mixes: between well-separated modes it does not, which is
    what annealing fixes.
    """
    t = sde.eps if t is None else float(t)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "langevin")
    for _ in run.iterate(steps):
        s, z = run.score(x, t), run.noise(x)
        e = _snr_step(s, z, snr) if step_size is None else step_size
        x = x + e * s + (2 * e) ** 0.5 * z
        run.keep(x, t)
    return run.result(x, t)


def _snr_step(s, z, snr, alpha=1.0):
    """Score-SDE's Langevin step: e = 2 alpha (snr ||z|| / ||s||)^2, norms averaged over the batch."""
    z_norm = z.reshape(z.shape[0], -1).norm(dim=1).mean()
    s_norm = s.reshape(s.shape[0], -1).norm(dim=1).mean().clamp_min(1e-12)
    return 2 * alpha * (snr * z_norm / s_norm) ** 2


def ald_step_size(gamma: float, sigma_L: float, T: int) -> float:
    """The base step e of annealed Langevin from Song & Ermon 2020, technique 4.

    For data concentrated at a point, T Langevin steps at level sigma_i starting from the
    previous level's variance leave the variance ratio (their eq. 6, with u = e / sigma_L^2)

        s_T^2 / sigma_i^2 = (1 - u)^{2T} (gamma^2 - 2 / (2 - u)) + 2 / (2 - u),

    gamma = sigma_{i-1} / sigma_i. Both terms exceed 1 (2 / (2 - u) is the stationary excess
    of unadjusted Langevin), so the ratio never equals 1: e is the minimiser of the ratio, found
    by a golden-section search over log u.
    """
    if gamma <= 1:
        raise ValueError(f"gamma must exceed 1, got {gamma}")
    if int(T) < 1:
        raise ValueError(f"T (steps per level) must be a positive integer, got {T}")

    def ratio(log_u):
        u = math.exp(log_u)
        return (1 - u) ** (2 * T) * (gamma**2 - 2 / (2 - u)) + 2 / (2 - u)

    lo, hi = math.log(1e-8), math.log(0.999)
    k = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - k * (hi - lo), lo + k * (hi - lo)
        lo, hi = (lo, b) if ratio(a) < ratio(b) else (a, hi)
    return math.exp(0.5 * (lo + hi)) * sigma_L**2


def _levels(sde: SDE, levels: int, eps: float | None):
    """Noise levels (stds) and their times: the ladder's own, or `levels` geometric stds."""
    if isinstance(sde, NoiseLadder):
        return sde.sigmas.clone(), sde.times.clone()
    eps = sde.eps if eps is None else float(eps)
    hi, lo = sde.std(torch.tensor(sde.T, dtype=torch.float64)), sde.std(torch.tensor(eps, dtype=torch.float64))
    sigmas = torch.exp(torch.linspace(math.log(float(hi)), math.log(float(lo)), int(levels), dtype=torch.float64))
    return sigmas, sde.t_from_std(sigmas)


def annealed_langevin(score_fn, sde: SDE, x, *, steps: int = 40, levels: int = 50, step_size: float | None = None,
                      eps: float | None = None, denoise: bool = True, generator=None, return_trajectory=False,
                      progress=False) -> SampleResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level sigma_i (the NoiseLadder's, or `levels` geometric stds of `sde`), `steps`
    Langevin steps with a_i = e sigma_i^2 / sigma_L^2:
        x <- x + a_i s(x, t_i) + sqrt(2 a_i) z.
    e defaults to `ald_step_size` (technique 4); `denoise` ends with the Tweedie step
    x + sigma_L^2 s(x, sigma_L) (technique 5, one more evaluation).
    """
    sigmas, times = _levels(sde, levels, eps)
    if step_size is None:
        gamma = float((sigmas[:-1] / sigmas[1:]).mean())
        step_size = ald_step_size(gamma, float(sigmas[-1]), steps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "annealed langevin")
    sig_L2 = float(sigmas[-1]) ** 2
    for i in run.iterate(len(sigmas)):
        a = step_size * float(sigmas[i]) ** 2 / sig_L2
        for _ in range(steps):
            x = x + a * run.score(x, times[i]) + (2 * a) ** 0.5 * run.noise(x)
        run.keep(x, times[i])
    if denoise:
        t_L = times[-1]
        x = sde.tweedie_denoise(x, torch.full((x.shape[0],), float(t_L), dtype=x.dtype, device=x.device), run.score(x, t_L))
    return run.result(x, float(times[0]))


# --- reverse-time SDE ---------------------------------------------------------------------
def euler_maruyama(score_fn, sde: SDE, x, *, steps: int = 1000, eps: float | None = None, denoise: bool = True,
                   generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """Euler–Maruyama on the reverse SDE dx = [f - g^2 s] dt + g dw_bar, from T to eps:

        x_{i+1} = x_i + [f(x_i, t_i) - g(t_i)^2 s(x_i, t_i)] dt + g(t_i) sqrt(|dt|) z_i,  dt < 0.
    The last step adds no noise (`denoise`), as in Score-SDE.
    """
    ts = time_grid(sde, steps, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "euler-maruyama")
    for i in run.iterate(steps):
        t, dt = ts[i], float(ts[i + 1] - ts[i])
        tv = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        x_mean = x + sde.reverse_drift(x, tv, run.score(x, t)) * dt
        last = i == steps - 1
        g = broadcast_to(sde.diffusion(tv), x)
        x = x_mean if (last and denoise) else x_mean + g * math.sqrt(-dt) * run.noise(x)
        run.keep(x, ts[i + 1])
    return run.result(x, sde.T)


def reverse_diffusion_step(run, sde, x, t, t_next, last, denoise):
    """x_{i-1} = x_i - f_i(x_i) + G_i^2 s(x_i, t_i) + G_i z, with the exact kernel (a, G) of
    x(t_i) | x(t_{i-1}) and f_i(x) = (a - 1) x (Song et al. 2021, eq. 46)."""
    tv = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    a, G = sde.transition(tv, torch.full_like(tv, float(t_next)))
    a, G = broadcast_to(a, x), broadcast_to(G, x)
    x_mean = x - (a - 1) * x + G**2 * run.score(x, t)
    return x_mean if (last and denoise) else x_mean + G * run.noise(x)


def reverse_diffusion(score_fn, sde: SDE, x, *, steps: int = 1000, eps: float | None = None, denoise: bool = True,
                      generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """The reverse-diffusion predictor of Score-SDE: the reverse of the forward process's own
    discretization, x_{i-1} = x_i - f_i(x_i) + G_i^2 s(x_i, t_i) + G_i z."""
    ts = time_grid(sde, steps, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "reverse diffusion")
    for i in run.iterate(steps):
        x = reverse_diffusion_step(run, sde, x, ts[i], ts[i + 1], i == steps - 1, denoise)
        run.keep(x, ts[i + 1])
    return run.result(x, sde.T)


def _ancestral_step(run, sde, x, t, t_next, last, denoise):
    """One ancestral step. VE (SMLD):
        x_{i-1} = x_i + (s_i^2 - s_{i-1}^2) s + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z;
    VP (DDPM), with 1 - beta_i = (alpha(t_i) / alpha(t_{i-1}))^2:
        x_{i-1} = (x_i + beta_i s) / sqrt(1 - beta_i) + sqrt(beta_i) z."""
    tv = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    tn = torch.full_like(tv, float(t_next))
    s = run.score(x, t)
    if isinstance(sde, VESDE):
        s2, sn2 = broadcast_to(sde.std(tv) ** 2, x), broadcast_to(sde.std(tn) ** 2, x)
        x_mean = x + (s2 - sn2) * s
        std = torch.sqrt(sn2 * (s2 - sn2) / s2)
    else:
        a = broadcast_to(sde.alpha(tv) / sde.alpha(tn), x)
        beta = 1 - a**2
        x_mean = (x + beta * s) / a
        std = torch.sqrt(beta)
    return x_mean if (last and denoise) else x_mean + std * run.noise(x)


def _check_ancestral(sde):
    if not isinstance(sde, (VESDE, VPSDE)):
        raise SamplerNotApplicable(
            f"ancestral sampling is defined for the VE and VP processes (SMLD and DDPM), not for {sde!r}; "
            "use 'reverse_diffusion', 'euler_maruyama', 'pc' or 'ode' instead")


def ancestral(score_fn, sde: SDE, x, *, steps: int = 1000, eps: float | None = None, denoise: bool = True,
              generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """Ancestral sampling (SMLD for VE, DDPM for VP); on a NoiseLadder it walks the L levels."""
    _check_ancestral(sde)
    ts = sde.times if isinstance(sde, NoiseLadder) else time_grid(sde, steps, eps)
    n = len(ts) - 1
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "ancestral")
    for i in run.iterate(n):
        x = _ancestral_step(run, sde, x, ts[i], ts[i + 1], i == n - 1, denoise)
        run.keep(x, ts[i + 1])
    return run.result(x, float(ts[0]))


# --- predictor-corrector ------------------------------------------------------------------
def langevin_corrector(run, sde, x, t, t_next, snr, n_steps):
    """Langevin corrector with the step from a target signal-to-noise ratio (Score-SDE Alg. 4/5):
    e = 2 a (snr ||z|| / ||s||)^2 with a = (alpha(t_next)/alpha(t))^2 for VP-type, 1 for VE."""
    tv = torch.full((1,), float(t), dtype=torch.float64)
    a = float((sde.alpha(torch.full_like(tv, float(t_next))) / sde.alpha(tv)) ** 2)
    for _ in range(n_steps):
        s, z = run.score(x, t), run.noise(x)
        e = _snr_step(s, z, snr, a)
        x = x + e * s + torch.sqrt(2 * e) * z
    return x


_PREDICTORS = {"reverse_diffusion": reverse_diffusion_step, "ancestral": _ancestral_step}


def predictor_corrector(score_fn, sde: SDE, x, *, steps: int = 500, predictor: str = "reverse_diffusion",
                        corrector: str = "langevin", snr: float = 0.16, corrector_steps: int = 1,
                        eps: float | None = None, denoise: bool = True, generator=None, return_trajectory=False,
                        progress=False) -> SampleResult:
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1): at each time, `corrector_steps`
    Langevin corrections toward p_{t_i}, then one predictor step to t_{i+1}."""
    if predictor not in _PREDICTORS and predictor != "euler_maruyama":
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {sorted(_PREDICTORS) + ['euler_maruyama']}")
    if corrector not in ("langevin", "none"):
        raise ValueError(f"unknown corrector {corrector!r}; choose 'langevin' or 'none'")
    if predictor == "ancestral":
        _check_ancestral(sde)
    ts = time_grid(sde, steps, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "predictor-corrector")
    for i in run.iterate(steps):
        t, t_next, last = ts[i], ts[i + 1], i == steps - 1
        if corrector == "langevin":
            x = langevin_corrector(run, sde, x, t, t_next, snr, corrector_steps)
        if predictor == "euler_maruyama":
            tv = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
            dt = float(t_next - t)
            x_mean = x + sde.reverse_drift(x, tv, run.score(x, t)) * dt
            g = broadcast_to(sde.diffusion(tv), x)
            x = x_mean if (last and denoise) else x_mean + g * math.sqrt(-dt) * run.noise(x)
        else:
            x = _PREDICTORS[predictor](run, sde, x, t, t_next, last, denoise)
        run.keep(x, t_next)
    return run.result(x, sde.T)


# --- probability-flow ODE -----------------------------------------------------------------
def probability_flow(score_fn, sde: SDE, x, *, steps: int | None = None, method: str = "rk45", rtol: float = 1e-5,
                     atol: float = 1e-5, eps: float | None = None, denoise: bool = False, generator=None,
                     return_trajectory=False, progress=False) -> SampleResult:
    """Integrate the probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) from T to eps.

    method: 'rk45' (adaptive Dormand–Prince, `rtol`/`atol`; `steps` ignored), 'heun' or 'euler'
    (fixed steps, uniform in t; default 100). Deterministic given the start. `denoise` adds a
    final Tweedie step (one more evaluation).
    """
    eps = sde.eps if eps is None else float(eps)
    count = {"nfe": 0}

    def fn(x_, t_):
        count["nfe"] += 1
        return sde.reverse_drift(x_, t_, score_fn(x_, t_), probability_flow=True)

    bar = (lambda it=None, total=None: tqdm(it, total=total, desc="probability flow", leave=False)) if progress else None
    if method == "rk45":
        res = ode.dopri5(fn, x, sde.T, eps, rtol=rtol, atol=atol, record=return_trajectory, progress=bar)
    elif method in ("heun", "euler"):
        res = ode.fixed_step(fn, x, time_grid(sde, steps or 100, eps), method, record=return_trajectory, progress=bar)
    else:
        raise ValueError(f"unknown ODE method {method!r}; choose 'rk45', 'heun' or 'euler'")
    x = res.x
    if denoise:
        tv = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
        x = sde.tweedie_denoise(x, tv, score_fn(x, tv))
        count["nfe"] += 1
    traj = torch.stack(res.trajectory) if return_trajectory else None
    times = torch.tensor(res.times) if return_trajectory else None
    return SampleResult(x, count["nfe"], traj, times)


# --- fast samplers: DDIM, DPM-Solver++, EDM's Heun ------------------------------------------
# Every process here is linear, x(t) = alpha x(0) + std z, so one score evaluation gives both the
# data and the noise estimate (Tweedie; DDIM's eq. 9 with eps = -std s):
#     x0_hat = (x + std^2 s) / alpha,     eps_hat = -std s,
# and the probability-flow ODE, written for x_hat = x / alpha against sigma = std / alpha, is the
# same for VE, VP and sub-VP (Karras et al. 2022, eq. 3 with s(t) = 1):
#     d x_hat / d sigma = (x_hat - x0_hat) / sigma = eps_hat.
# The solvers below step between the levels of a `schedules.Schedule` (T down to eps). Their default
# schedules are the best measured by benchmarks/samplers.py (exact-score mixture, VE/VP/sub-VP, 6-50
# NFE): DPM-Solver++ on log-SNR-uniform levels down to sigma = 0.01 then one step to sigma(eps);
# DDIM and Heun on uniform t. EDM's rho = 7 schedule (schedule="edm") came out worse for all of them.
DPM_SCHEDULE = LogSNR(sigma_floor=0.01)


def _fast_grid(sde: SDE, steps: int, schedule, eps) -> NoiseGrid:
    return make_schedule(schedule).grid(sde, steps, eps)


def _predict(run, x, grid: NoiseGrid, i: int):
    """(x0_hat, eps_hat) at level i of `grid`: one score evaluation."""
    s = run.score(x, grid.t[i])
    std = float(grid.std[i])
    return (x + std**2 * s) / float(grid.alpha[i]), -std * s


def _fast_result(run, x, grid: NoiseGrid, denoise: bool) -> SampleResult:
    if denoise:  # Tweedie's E[x(0) | x(eps)], one more evaluation
        x = _predict(run, x, grid, grid.steps)[0]
    return run.result(x, float(grid.t[0]))


def ddim(score_fn, sde: SDE, x, *, steps: int = 50, eta: float = 0.0, schedule="uniform_t", eps: float | None = None,
         denoise: bool = False, generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """DDIM (Song, Meng, Ermon 2021, eq. 12) for any linear process, from level t to the next s < t:

        x_s = alpha_s x0_hat + sqrt(std_s^2 - c^2) eps_hat + c z,   c = eta std_s sqrt(1 - sigma_s^2 / sigma_t^2).

    c^2 at eta = 1 is the variance of the forward posterior q(x_s | x_t, x(0)) (DDPM's ancestral step).
    eta = 0 is deterministic: Euler's method on d x_hat / d sigma = eps_hat, first order in the step.
    K steps, K evaluations (+1 with `denoise`).
    """
    if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta!r}")
    grid = _fast_grid(sde, steps, schedule, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "ddim")
    for i in run.iterate(grid.steps):
        x0, e = _predict(run, x, grid, i)
        std_n = float(grid.std[i + 1])
        c = eta * std_n * math.sqrt(max(0.0, 1.0 - float(grid.sigma[i + 1] / grid.sigma[i]) ** 2))
        x = float(grid.alpha[i + 1]) * x0 + math.sqrt(std_n**2 - c**2) * e
        if c > 0:
            x = x + c * run.noise(x)
        run.keep(x, grid.t[i + 1])
    return _fast_result(run, x, grid, denoise)


def _dpm_update(x, grid: NoiseGrid, i: int, D):
    """The exponential-integrator step of DPM-Solver++ in data prediction (Lu et al. 2022b, eq. 10) from
    level i to i+1 with data estimate D, h = log(sigma_i / sigma_{i+1}) (their lambda = -log sigma):

        x_{i+1} = (std_{i+1} / std_i) x_i + alpha_{i+1} (1 - e^{-h}) D.

    With D = x0_hat(x_i) this is DDIM at eta = 0."""
    h = math.log(float(grid.sigma[i] / grid.sigma[i + 1]))
    return float(grid.std[i + 1] / grid.std[i]) * x - float(grid.alpha[i + 1]) * math.expm1(-h) * D


def _log_steps(grid: NoiseGrid) -> list[float]:
    return torch.log(grid.sigma[:-1] / grid.sigma[1:]).tolist()


def _dpm_multistep_update(x, grid: NoiseGrid, h: list[float], i: int, ms: list, order: int):
    """Step i of DPM-Solver++ multistep of the given order from the data estimates ms = [.., m_{i-1}, m_i].

    order 2 (Lu et al. 2022b, Algorithm 2), r = h_{i-1} / h_i:
        D = (1 + 1/(2r)) m_i - 1/(2r) m_{i-1},  x_{i+1} = `_dpm_update`(x_i, D).
    order 3 (their App. B and code's `multistep_dpm_solver_third_update`), r0 = h_{i-1} / h_i,
    r1 = h_{i-2} / h_i: D1_0 = (m_i - m_{i-1}) / r0, D1_1 = (m_{i-1} - m_{i-2}) / r1,
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) ~ h x0',  D2 = (D1_0 - D1_1) / (r0 + r1) ~ h^2 x0'' / 2,
    phi1 = e^{-h} - 1, phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2:
        x_{i+1} = (std_{i+1} / std_i) x_i - alpha_{i+1} (phi1 m_i - phi2 D1 + 2 phi3 D2).
    The quadratic term's exact integral is -alpha h^2 phi3 x0'', hence 2 phi3 D2: the authors' code
    has phi3 D2, which leaves the method second order (the convergence test measures third order).
    """
    if order == 1:
        return _dpm_update(x, grid, i, ms[-1])
    if order == 2:
        r = h[i - 1] / h[i]
        return _dpm_update(x, grid, i, (1 + 0.5 / r) * ms[-1] - (0.5 / r) * ms[-2])
    m2, m1, m0 = ms[-3:]
    r0, r1 = h[i - 1] / h[i], h[i - 2] / h[i]
    d10, d11 = (m0 - m1) / r0, (m1 - m2) / r1
    D1, D2 = d10 + r0 / (r0 + r1) * (d10 - d11), (d10 - d11) / (r0 + r1)
    phi1 = math.expm1(-h[i])
    phi2 = phi1 / h[i] + 1
    phi3 = phi2 / h[i] - 0.5
    a = float(grid.alpha[i + 1])
    return float(grid.std[i + 1] / grid.std[i]) * x - a * (phi1 * m0 - phi2 * D1 + 2 * phi3 * D2)


def _dpm_multistep(run, x, grid: NoiseGrid, order: int, lower_order_final: bool):
    """DPM-Solver++ multistep: step i uses order min(order, i + 1) (warm-up from the history it has)
    and, with `lower_order_final`, min(., K - i): the last step lands near sigma = 0, where h_i is
    large and extrapolating the data estimate over it is unstable (the reference code does the same
    for few steps). These one-off lower-order steps keep the global order (their local errors are
    O(h^2) and O(h^3) where the data estimate barely moves)."""
    h = _log_steps(grid)
    ms = []
    for i in run.iterate(grid.steps):
        ms = (ms + [_predict(run, x, grid, i)[0]])[-order:]
        k = min(order, i + 1, grid.steps - i) if lower_order_final else min(order, i + 1)
        x = _dpm_multistep_update(x, grid, h, i, ms, k)
        run.keep(x, grid.t[i + 1])
    return x


def dpm_solver_2m(score_fn, sde: SDE, x, *, steps: int = 20, schedule=DPM_SCHEDULE, lower_order_final: bool = True,
                  eps: float | None = None, denoise: bool = False, generator=None, return_trajectory=False,
                  progress=False) -> SampleResult:
    """DPM-Solver++(2M) (Lu, Zhou, Bao, Chen, Li, Zhu 2022, "DPM-Solver++", Algorithm 2): second-order
    multistep in data prediction (`_dpm_multistep_update`); first step first order, and the last one
    too with `lower_order_final`. K steps, K evaluations (+1 with `denoise`).
    """
    grid = _fast_grid(sde, steps, schedule, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "dpm-solver++(2m)")
    return _fast_result(run, _dpm_multistep(run, x, grid, 2, lower_order_final), grid, denoise)


def dpm_solver_3m(score_fn, sde: SDE, x, *, steps: int = 20, schedule=DPM_SCHEDULE, lower_order_final: bool = True,
                  eps: float | None = None, denoise: bool = False, generator=None, return_trajectory=False,
                  progress=False) -> SampleResult:
    """DPM-Solver++(3M): third-order multistep in data prediction (`_dpm_multistep_update`, with the
    corrected 2 phi3 D2 term); first/second-order warm-up, and the reverse at the end with
    `lower_order_final`. K steps, K evaluations (+1 with `denoise`).
    """
    grid = _fast_grid(sde, steps, schedule, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "dpm-solver++(3m)")
    return _fast_result(run, _dpm_multistep(run, x, grid, 3, lower_order_final), grid, denoise)


def _midpoint_levels(sde: SDE, grid: NoiseGrid) -> NoiseGrid:
    """The log-sigma midpoints sigma_s = sqrt(sigma_i sigma_{i+1}) of every step of `grid`."""
    return NoiseGrid.at_times(sde, t_from_sigma(sde, torch.sqrt(grid.sigma[:-1] * grid.sigma[1:])))


def _dpm_2s_step(run, x, grid: NoiseGrid, mid: NoiseGrid, i: int, m):
    """DPM-Solver++(2S) step i given m = x0_hat(x_i, t_i): first-order update to the midpoint s_i, then
    the full step with the data estimate there (Lu et al. 2022b, Algorithm 1 with r = 1/2)."""
    h_half = math.log(float(grid.sigma[i] / mid.sigma[i]))
    u = float(mid.std[i] / grid.std[i]) * x - float(mid.alpha[i]) * math.expm1(-h_half) * m
    return _dpm_update(x, grid, i, _predict(run, u, mid, i)[0])


def dpm_solver_2s(score_fn, sde: SDE, x, *, steps: int = 10, schedule=DPM_SCHEDULE, eps: float | None = None,
                  denoise: bool = False, generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1 with r = 1/2): second-order singlestep. From x_i,
    go to the log-sigma midpoint s_i (sigma_s = sqrt(sigma_i sigma_{i+1})) with the first-order update,
    then take the full step with the data estimate there:

        u = (std_s / std_i) x_i + alpha_s (1 - e^{-h/2}) m_i,   x_{i+1} = `_dpm_update`(x_i, D = x0_hat(u, s_i)).

    K steps, 2K evaluations (+1 with `denoise`).
    """
    grid = _fast_grid(sde, steps, schedule, eps)
    mid = _midpoint_levels(sde, grid)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "dpm-solver++(2s)")
    for i in run.iterate(grid.steps):
        x = _dpm_2s_step(run, x, grid, mid, i, _predict(run, x, grid, i)[0])
        run.keep(x, grid.t[i + 1])
    return _fast_result(run, x, grid, denoise)


def edm_heun(score_fn, sde: SDE, x, *, steps: int = 10, schedule="uniform_t", final_euler: bool = True,
             churn: float = 0.0, churn_range: tuple = (0.0, math.inf), s_noise: float = 1.0, eps: float | None = None,
             denoise: bool = False, generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """EDM's sampler (Karras, Aittala, Aila, Laine 2022, Algorithm 2): Heun's second-order method on
    d x_hat / d sigma = eps_hat, with optional churn. EDM steps through its rho = 7 schedule
    (schedule="edm"); the default here is uniform t, which measured better (see DPM_SCHEDULE).

    Churn: at levels sigma_i in `churn_range` (sigma units), raise the noise to
    sigma_hat = sigma_i (1 + gamma), gamma = min(churn / K, sqrt(2) - 1), by adding
    sqrt(sigma_hat^2 - sigma_i^2) s_noise z to x_hat (sigma_hat kept <= sigma(T)); then
        d = eps_hat(x_hat, sigma_hat),  x' = x_hat + (sigma_{i+1} - sigma_hat) d,
        x_hat <- x_hat + (sigma_{i+1} - sigma_hat) (d + eps_hat(x', sigma_{i+1})) / 2.
    `final_euler` keeps x' on the last step, as EDM does for its step to sigma = 0: there sigma_K is
    tiny against sigma_{K-1}, eps_hat(x', sigma_K) ~ 0 for a smooth density and averaging it in would
    leave half the noise; a one-off Euler step keeps the global second order.
    churn = 0 is deterministic. K steps, 2K - 1 evaluations (2K without `final_euler`; +1 with `denoise`).
    """
    if not (isinstance(churn, (int, float)) and churn >= 0):
        raise ValueError(f"churn must be a number >= 0 (EDM's S_churn; 0 = deterministic), got {churn!r}")
    if not (isinstance(s_noise, (int, float)) and s_noise >= 0):
        raise ValueError(f"s_noise must be a number >= 0, got {s_noise!r}")
    grid = _fast_grid(sde, steps, schedule, eps)
    gamma_max = min(churn / grid.steps, math.sqrt(2) - 1)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "edm heun")
    xh = x / float(grid.alpha[0])
    for i in run.iterate(grid.steps):
        sig, sig_n = float(grid.sigma[i]), float(grid.sigma[i + 1])
        level, j = grid, i
        if gamma_max > 0 and churn_range[0] <= sig <= churn_range[1]:
            sig_hat = min(sig * (1 + gamma_max), float(grid.sigma[0]))
            if sig_hat > sig:
                level, j = NoiseGrid.at_times(sde, t_from_sigma(sde, [sig_hat])), 0
                xh = xh + math.sqrt(sig_hat**2 - sig**2) * s_noise * run.noise(xh)
                sig = sig_hat
        d = _predict(run, float(level.alpha[j]) * xh, level, j)[1]
        x_pred = xh + (sig_n - sig) * d
        if final_euler and i == grid.steps - 1:
            xh = x_pred
        else:
            d2 = _predict(run, float(grid.alpha[i + 1]) * x_pred, grid, i + 1)[1]
            xh = xh + (sig_n - sig) * 0.5 * (d + d2)
        run.keep(float(grid.alpha[i + 1]) * xh, grid.t[i + 1])
    return _fast_result(run, float(grid.alpha[-1]) * xh, grid, denoise)


_ONE_PER_STEP = {"ddim", "dpmpp2m", "dpmpp3m", "euler_maruyama", "reverse_diffusion", "ancestral", "ode_euler"}


def steps_for_nfe(name: str, nfe: int, **options) -> int:
    """The largest step count K whose evaluations fit in `nfe`, for the samplers with a fixed cost per
    step: K for DDIM, DPM-Solver++ 2M/3M, Euler(-Maruyama), reverse diffusion and ancestral;
    floor(nfe / 2) for DPM-Solver++ 2S and the ODE's Heun; floor((nfe + 1) / 2) for EDM's Heun
    (2K - 1 evaluations; nfe / 2 with final_euler=False); floor(nfe / (1 + corrector_steps)) for PC.
    Adaptive or level-based samplers ('ode', Langevin) have no such count: ValueError."""
    fn = get_sampler(name)
    key = next(k for k, v in SAMPLERS.items() if v is fn)
    if isinstance(nfe, bool) or int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    nfe = int(nfe)
    if key in _ONE_PER_STEP:
        k = nfe
    elif key in ("dpmpp2s", "ode_heun"):
        k = nfe // 2
    elif key == "heun":
        k = (nfe + 1) // 2 if options.get("final_euler", True) else nfe // 2
    elif key == "pc":
        k = nfe // (1 + (options.get("corrector_steps", 1) if options.get("corrector", "langevin") != "none" else 0))
    else:
        raise ValueError(f"sampler {name!r} has no fixed number of evaluations per step; "
                         f"budgeted samplers: {sorted(_ONE_PER_STEP | {'dpmpp2s', 'ode_heun', 'heun', 'pc'})}")
    if k < 1:
        raise ValueError(f"nfe={nfe} is below one step of {name!r}")
    return k


# --- registry -----------------------------------------------------------------------------
def _ode_variant(method):
    def fn(score_fn, sde, x, **kw):
        return probability_flow(score_fn, sde, x, method=method, **kw)

    fn.__name__ = f"ode_{method}"
    fn.__doc__ = f"Probability-flow ODE with {method} (see `probability_flow`)."
    sig = inspect.signature(probability_flow)  # its options are probability_flow's, less `method`
    fn.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "method"])
    return fn


SAMPLERS = {
    "langevin": langevin,
    "annealed_langevin": annealed_langevin,
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
    "pc": predictor_corrector,
    "ode": probability_flow,
    "ode_euler": _ode_variant("euler"),
    "ode_heun": _ode_variant("heun"),
    "ddim": ddim,
    "dpmpp2m": dpm_solver_2m,
    "dpmpp2s": dpm_solver_2s,
    "dpmpp3m": dpm_solver_3m,
    "heun": edm_heun,
}
_ALIASES = {"ald": "annealed_langevin", "em": "euler_maruyama", "sde": "euler_maruyama", "rk45": "ode",
            "ode_rk45": "ode", "predictor_corrector": "pc", "heun_ode": "ode_heun",
            "edm": "heun", "edm_heun": "heun", "dpm_solver_2m": "dpmpp2m", "dpm_solver_2s": "dpmpp2s",
            "dpm_solver_3m": "dpmpp3m"}


def sampler_names() -> list[str]:
    return sorted(SAMPLERS)


def get_sampler(name: str):
    """Look a sampler up by name (case-, dash- and alias-tolerant)."""
    key = str(name).lower().replace("-", "_").replace("+", "p")
    key = _ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sampler_names()}")
    return SAMPLERS[key]


def sample(score_fn, sde: SDE, shape, sampler: str = "pc", *, generator=None, device=None,
           dtype=torch.float32, **options) -> SampleResult:
    """Draw the start from the prior of `sde` and run the named sampler on it."""
    fn = get_sampler(sampler)
    x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    return fn(score_fn, sde, x, generator=generator, **options)
