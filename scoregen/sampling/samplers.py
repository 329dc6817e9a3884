"""Samplers: plain functions over (score_fn, sde, x), one signature for all.

    sampler(score_fn, sde, x, *, steps, schedule=..., generator=None, return_trajectory=False,
            progress=False, **options) -> SampleResult(samples, nfe, trajectory, times)

`x` is the starting state (normally `sde.prior_sample(shape)`); `score_fn(x, t)` is any score
model (analytic, learned, guided). Every sampler runs under `torch.no_grad()`: guidance that needs
gradients enables them inside its score_fn. NFE counts every call of `score_fn`. `sample(...)` draws
the start and dispatches by name through `SAMPLERS`, which also knows each sampler's NFE per step.

One grid type: every sampler that steps through noise levels takes `schedule=` (a name, a
`schedules.Schedule` or a `schedules.NoiseGrid`) and visits the K + 1 levels of that `NoiseGrid`
from T down to eps. The classic samplers default to uniform t (Song et al. 2021), the fast ones to
the schedules measured best by benchmarks/samplers.py.

Two kinds of building blocks, for samplers written elsewhere (inverse.py's imputation, DPS, SDEdit):
  * pure steps of values, `*_step(sde, x, t, s, score, z)`: from time t to s < t given the score at
    (x, t) and the noise z (None: the step's mean, no noise);
  * `SamplerRun`, the bookkeeping (NFE, noise draws, trajectory, progress bar), and `Denoiser`, EDM's
    D(x_hat; sigma) of any linear process, the one view the fast solvers (DDIM, DPM-Solver++, Heun)
    share.

Sources: Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data Distribution"
(annealed Langevin, Algorithm 1); Song & Ermon 2020, "Improved Techniques for Training Score-Based
Generative Models" (step-size rule, final denoising); Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations" (reverse SDE eq. 6, reverse diffusion eq. 46,
ancestral sampling, predictor-corrector Algorithms 1-5, probability-flow ODE eq. 13); Ho et al. 2020,
"Denoising Diffusion Probabilistic Models" (ancestral VP step); Song, Meng & Ermon 2021, "Denoising
Diffusion Implicit Models" (eq. 12); Lu et al. 2022, "DPM-Solver++" (Algorithms 1-2); Karras et al.
2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (Algorithm 2); Song, Dhariwal,
Chen & Sutskever 2023, "Consistency Models" (Algorithm 1, multistep consistency sampling).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..process import ode as ode_solvers
from ..process.schedules import LogSNR, LogStd, NoiseGrid, make_grid, t_from_sigma
from ..process.sde import SDE, NoiseLadder, VESDE, VPSDE, broadcast_to
from ..util import Registry, ScoreFn, check_number, check_positive_int, choose_one_of, time_vector

__all__ = [
    "SampleResult", "SamplerNotApplicable", "Sampler", "SAMPLERS", "sample", "time_grid", "get_sampler",
    "sampler_names", "steps_for_nfe", "nfe_per_step", "ald_step_size",
    # the samplers, named as their registry keys
    "langevin", "annealed_langevin", "euler_maruyama", "reverse_diffusion", "ancestral", "pc", "ode",
    "ode_euler", "ode_heun", "ddim", "dpmpp2m", "dpmpp2s", "dpmpp3m", "heun", "consistency",
    # the same under their earlier names
    "predictor_corrector", "probability_flow", "dpm_solver_2m", "dpm_solver_2s", "dpm_solver_3m", "edm_heun",
    # building blocks: bookkeeping, the denoiser view and pure steps of values
    "SamplerRun", "Denoiser", "PREDICTORS", "euler_maruyama_step", "reverse_diffusion_step", "ancestral_step",
    "langevin_step", "snr_step_size", "langevin_corrector_step",
]


@dataclass
class SampleResult:
    samples: torch.Tensor
    nfe: int
    trajectory: torch.Tensor | None = None  # (K+1, N, ...) on the CPU, when asked for
    times: torch.Tensor | None = None  # (K+1,) the time of each trajectory frame


class Sampler(Protocol):
    """The one sampler signature (keyword options differ by sampler)."""

    def __call__(self, score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = ..., generator=None,
                 return_trajectory: bool = False, progress: bool = False, **options) -> SampleResult: ...


class SamplerNotApplicable(ValueError):
    """The sampler does not apply to the given forward process."""


class SamplerRun:
    """Bookkeeping shared by every sampler: NFE, noise draws, trajectory and progress bar."""

    def __init__(self, score_fn: ScoreFn, x: torch.Tensor, generator: torch.Generator | None = None,
                 record: bool = False, progress: bool = False, desc: str = "sampling"):
        self.score_fn, self.generator, self.record = score_fn, generator, record
        self.nfe, self.frames, self.times = 0, [], []
        self.progress, self.desc = progress, desc
        if record:
            self.frames.append(x.detach().cpu())

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """score_fn(x, t) with t a float, 0-d or (N,) time; counts one evaluation."""
        self.nfe += 1
        return self.score_fn(x, time_vector(t, x))

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def iterate(self, n: int):
        return tqdm(range(n), desc=self.desc, leave=False) if self.progress else range(n)

    def keep(self, x: torch.Tensor, t) -> None:
        if self.record:
            self.frames.append(x.detach().cpu())
            self.times.append(float(t))

    def result(self, x: torch.Tensor, t_start) -> SampleResult:
        if not self.record:
            return SampleResult(x, self.nfe)
        return SampleResult(x, self.nfe, torch.stack(self.frames), torch.tensor([float(t_start)] + self.times))


def time_grid(sde: SDE, steps: int, eps: float | None = None) -> torch.Tensor:
    """steps + 1 times from T down to eps, uniform in t: the times of the "uniform_t" schedule."""
    return make_grid(sde, steps, "uniform_t", eps).t


# --- pure steps of values ------------------------------------------------------------------
# Each goes from time t to the next time s < t given the score at (x, t) and the noise z of x's shape;
# z = None gives the step's mean (a noise-free last step).
def euler_maruyama_step(sde: SDE, x: torch.Tensor, t, s, score: torch.Tensor, z: torch.Tensor | None = None):
    """Euler–Maruyama on the reverse SDE dx = [f - g^2 score] dt + g dw_bar (Song et al. 2021, eq. 6):

        x_s = x + [f(x, t) - g(t)^2 score] (s - t) + g(t) sqrt(t - s) z."""
    tv = time_vector(t, x)
    dt = float(s) - float(t)
    x_mean = x + sde.reverse_drift(x, tv, score) * dt
    return x_mean if z is None else x_mean + broadcast_to(sde.diffusion(tv), x) * math.sqrt(-dt) * z


def reverse_diffusion_step(sde: SDE, x: torch.Tensor, t, s, score: torch.Tensor, z: torch.Tensor | None = None):
    """The reverse-diffusion predictor (Song et al. 2021, eq. 46) with the exact kernel (a, G) of
    x(t) | x(s) and f(x) = (a - 1) x:   x_s = x - f(x) + G^2 score + G z."""
    tv = time_vector(t, x)
    a, G = sde.transition(tv, time_vector(s, x))
    a, G = broadcast_to(a, x), broadcast_to(G, x)
    x_mean = x - (a - 1) * x + G**2 * score
    return x_mean if z is None else x_mean + G * z


def ancestral_step(sde: SDE, x: torch.Tensor, t, s, score: torch.Tensor, z: torch.Tensor | None = None):
    """One ancestral step. VE (SMLD; Song & Ermon 2019 seen as Song et al. 2021, eq. 47):
        x_s = x + (std_t^2 - std_s^2) score + sqrt(std_s^2 (std_t^2 - std_s^2) / std_t^2) z;
    VP (DDPM; Ho et al. 2020, Algorithm 2), with 1 - beta = (alpha(t) / alpha(s))^2:
        x_s = (x + beta score) / sqrt(1 - beta) + sqrt(beta) z."""
    _check_ancestral(sde)
    tv, sv = time_vector(t, x), time_vector(s, x)
    if isinstance(sde, VESDE):
        s2, sn2 = broadcast_to(sde.std(tv) ** 2, x), broadcast_to(sde.std(sv) ** 2, x)
        x_mean = x + (s2 - sn2) * score
        std = torch.sqrt(sn2 * (s2 - sn2) / s2)
    else:
        a = broadcast_to(sde.alpha(tv) / sde.alpha(sv), x)
        beta = 1 - a**2
        x_mean = (x + beta * score) / a
        std = torch.sqrt(beta)
    return x_mean if z is None else x_mean + std * z


def langevin_step(x: torch.Tensor, score: torch.Tensor, z: torch.Tensor, step_size):
    """One unadjusted Langevin step x + e score + sqrt(2 e) z (Song & Ermon 2019, eq. 4)."""
    return x + step_size * score + (2 * step_size) ** 0.5 * z


def snr_step_size(score: torch.Tensor, z: torch.Tensor, snr: float, scale: float = 1.0):
    """The Langevin step from a target signal-to-noise ratio (Song et al. 2021, Algorithms 4-5):
    e = 2 scale (snr ||z|| / ||score||)^2, norms averaged over the batch."""
    z_norm = z.reshape(z.shape[0], -1).norm(dim=1).mean()
    s_norm = score.reshape(score.shape[0], -1).norm(dim=1).mean().clamp_min(1e-12)
    return 2 * scale * (snr * z_norm / s_norm) ** 2


def langevin_corrector_step(sde: SDE, x: torch.Tensor, t, s, score: torch.Tensor, z: torch.Tensor, snr: float):
    """One Langevin correction toward p_t with the signal-to-noise step, scale = (alpha(s) / alpha(t))^2
    for VP-type processes and 1 for VE (Song et al. 2021, Algorithms 4-5; s is the next time)."""
    tv = torch.full((1,), float(t), dtype=torch.float64)
    a = float((sde.alpha(torch.full_like(tv, float(s))) / sde.alpha(tv)) ** 2)
    return langevin_step(x, score, z, snr_step_size(score, z, snr, a))


def _correct(run: SamplerRun, sde, x, t, s, snr, n_steps):
    for _ in range(n_steps):
        score, z = run.score(x, t), run.noise(x)
        x = langevin_corrector_step(sde, x, t, s, score, z, snr)
    return x


def _check_ancestral(sde):
    if not isinstance(sde, (VESDE, VPSDE)):
        raise SamplerNotApplicable(
            f"ancestral sampling is defined for the VE and VP processes (SMLD and DDPM), not for {sde!r}; "
            "use 'reverse_diffusion', 'euler_maruyama', 'pc' or 'ode' instead")


#: the predictors of `pc`, each a pure step (sde, x, t, s, score, z) -> x_s.
PREDICTORS = Registry("predictor", {"reverse_diffusion": reverse_diffusion_step, "ancestral": ancestral_step,
                                    "euler_maruyama": euler_maruyama_step})
CORRECTORS = ("langevin", "none")


def _check_corrector(corrector):
    if corrector not in CORRECTORS:
        raise ValueError(choose_one_of("corrector", corrector, CORRECTORS))


def _noise_or_none(run: SamplerRun, x, last: bool, denoise: bool):
    """The step's noise, or None on the last step with `denoise` (Score-SDE's noise-free last step)."""
    return None if (last and denoise) else run.noise(x)


# --- Langevin dynamics -------------------------------------------------------------------
@torch.no_grad()
def langevin(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 1000, t: float | None = None,
             step_size: float | None = None, snr: float = 0.1, generator=None, return_trajectory=False,
             progress=False) -> SampleResult:
    """Unadjusted Langevin dynamics at one noise level t (default sde.eps) (Song & Ermon 2019, eq. 4):

        x_{k+1} = x_k + e s(x_k, t) + sqrt(2 e) z_k.

    With no `step_size`, each step uses the signal-to-noise rule e = 2 (snr ||z|| / ||s||)^2. It visits
    one level, so it takes no schedule. It samples p_t only if the chain mixes: between well-separated
    modes it does not, which is what annealing fixes.
    """
    steps = check_positive_int(steps, "steps")
    t = sde.eps if t is None else float(t)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "langevin")
    for _ in run.iterate(steps):
        s, z = run.score(x, t), run.noise(x)
        e = snr_step_size(s, z, snr) if step_size is None else step_size
        x = langevin_step(x, s, z, e)
        run.keep(x, t)
    return run.result(x, t)


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


def _ald_grid(sde: SDE, levels: int, schedule, eps) -> NoiseGrid:
    """The levels of annealed Langevin: the NoiseLadder's own (schedule None), else `levels` levels of
    `schedule` (None: geometric stds, NCSN's ladder)."""
    if schedule is None and isinstance(sde, NoiseLadder):
        return NoiseGrid.at_times(sde, sde.times)
    levels = check_positive_int(levels, "levels")
    if levels < 2:
        raise ValueError(f"levels must be at least 2 (annealing goes from std(T) to std(eps)), got {levels}")
    return make_grid(sde, levels - 1, LogStd() if schedule is None else schedule, eps)


@torch.no_grad()
def annealed_langevin(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 40, levels: int = 50,
                      schedule=None, step_size: float | None = None, eps: float | None = None, denoise: bool = True,
                      generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level sigma_i (the NoiseLadder's, or `levels` levels of `schedule`, by default geometric
    stds of `sde`), `steps` Langevin steps with a_i = e std_i^2 / std_L^2:
        x <- x + a_i s(x, t_i) + sqrt(2 a_i) z.
    e defaults to `ald_step_size` (Song & Ermon 2020, technique 4); `denoise` ends with the Tweedie
    step x + std_L^2 s(x, t_L) (technique 5, one more evaluation).
    """
    steps = check_positive_int(steps, "steps")
    grid = _ald_grid(sde, levels, schedule, eps)
    sigmas, times = (sde.sigmas.clone(), sde.times.clone()) if schedule is None and isinstance(sde, NoiseLadder) \
        else (grid.std, grid.t)
    if step_size is None:
        gamma = float((sigmas[:-1] / sigmas[1:]).mean())
        step_size = ald_step_size(gamma, float(sigmas[-1]), steps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "annealed langevin")
    sig_L2 = float(sigmas[-1]) ** 2
    for i in run.iterate(len(sigmas)):
        a = step_size * float(sigmas[i]) ** 2 / sig_L2
        for _ in range(steps):
            x = langevin_step(x, run.score(x, times[i]), run.noise(x), a)
        run.keep(x, times[i])
    if denoise:
        t_L = times[-1]
        x = sde.tweedie_denoise(x, time_vector(t_L, x), run.score(x, t_L))
    return run.result(x, times[0])


# --- reverse-time SDE ---------------------------------------------------------------------
def _walk(run: SamplerRun, sde, x, grid: NoiseGrid, step, denoise: bool):
    """Step through `grid` with a pure step (sde, x, t, s, score, z)."""
    K = grid.steps
    for i in run.iterate(K):
        t, s = grid.t[i], grid.t[i + 1]
        score = run.score(x, t)
        x = step(sde, x, t, s, score, _noise_or_none(run, x, i == K - 1, denoise))
        run.keep(x, s)
    return x


@torch.no_grad()
def euler_maruyama(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 1000, schedule="uniform_t",
                   eps: float | None = None, denoise: bool = True, generator=None, return_trajectory=False,
                   progress=False) -> SampleResult:
    """Euler–Maruyama on the reverse SDE (Song et al. 2021, eq. 6) through the levels of `schedule`
    (`euler_maruyama_step`). With `denoise` the last step adds no noise, as in Score-SDE. K evaluations."""
    grid = make_grid(sde, steps, schedule, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "euler-maruyama")
    return run.result(_walk(run, sde, x, grid, euler_maruyama_step, denoise), grid.t[0])


@torch.no_grad()
def reverse_diffusion(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 1000, schedule="uniform_t",
                      eps: float | None = None, denoise: bool = True, generator=None, return_trajectory=False,
                      progress=False) -> SampleResult:
    """The reverse-diffusion predictor of Score-SDE (Song et al. 2021, eq. 46): the reverse of the forward
    process's own discretization (`reverse_diffusion_step`). K evaluations."""
    grid = make_grid(sde, steps, schedule, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "reverse diffusion")
    return run.result(_walk(run, sde, x, grid, reverse_diffusion_step, denoise), grid.t[0])


def _ancestral_grid(sde, steps, schedule, eps) -> NoiseGrid:
    if schedule is None:
        return NoiseGrid.at_times(sde, sde.times) if isinstance(sde, NoiseLadder) else make_grid(sde, steps, "uniform_t", eps)
    return make_grid(sde, steps, schedule, eps)


@torch.no_grad()
def ancestral(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 1000, schedule=None,
              eps: float | None = None, denoise: bool = True, generator=None, return_trajectory=False,
              progress=False) -> SampleResult:
    """Ancestral sampling (SMLD for VE, DDPM for VP; `ancestral_step`). The default schedule (None) is
    uniform t, or on a NoiseLadder its own L levels (steps then ignored). K evaluations."""
    _check_ancestral(sde)
    grid = _ancestral_grid(sde, steps, schedule, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "ancestral")
    return run.result(_walk(run, sde, x, grid, ancestral_step, denoise), grid.t[0])


# --- predictor-corrector ------------------------------------------------------------------
@torch.no_grad()
def pc(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 500, schedule="uniform_t",
       predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16, corrector_steps: int = 1,
       eps: float | None = None, denoise: bool = True, generator=None, return_trajectory=False,
       progress=False) -> SampleResult:
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1): at each level t_i, `corrector_steps`
    Langevin corrections toward p_{t_i} (`langevin_corrector_step`), then one predictor step to t_{i+1}
    (a pure step of `PREDICTORS`). K (1 + corrector_steps) evaluations."""
    step = PREDICTORS.lookup(predictor)
    _check_corrector(corrector)
    if step is ancestral_step:
        _check_ancestral(sde)
    n_corr = check_positive_int(corrector_steps, "corrector_steps") if corrector == "langevin" else 0
    grid = make_grid(sde, steps, schedule, eps)
    K = grid.steps
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "predictor-corrector")
    for i in run.iterate(K):
        t, s = grid.t[i], grid.t[i + 1]
        x = _correct(run, sde, x, t, s, snr, n_corr)
        score = run.score(x, t)
        x = step(sde, x, t, s, score, _noise_or_none(run, x, i == K - 1, denoise))
        run.keep(x, s)
    return run.result(x, grid.t[0])


# --- probability-flow ODE -----------------------------------------------------------------
ODE_METHODS = ("rk45", "heun", "euler")


@torch.no_grad()
def ode(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int | None = None, method: str = "rk45",
        schedule="uniform_t", rtol: float = 1e-5, atol: float = 1e-5, eps: float | None = None, denoise: bool = False,
        generator=None, return_trajectory=False, progress=False) -> SampleResult:
    """Integrate the probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (Song et al. 2021, eq. 13)
    from T to eps.

    method: 'rk45' (adaptive Dormand–Prince, `rtol`/`atol`; `steps` and `schedule` ignored), 'heun' or
    'euler' (fixed steps through the levels of `schedule`; default 100 steps). Deterministic given the
    start. `denoise` adds a final Tweedie step (one more evaluation).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {list(ODE_METHODS)}")
    run = SamplerRun(score_fn, x, generator, False, progress, "probability flow")

    def drift(x_, t_):
        return sde.reverse_drift(x_, t_, run.score(x_, t_), probability_flow=True)

    bar = (lambda it=None, total=None: tqdm(it, total=total, desc=run.desc, leave=False)) if progress else None
    if method == "rk45":
        eps = sde.eps if eps is None else float(eps)
        res = ode_solvers.dopri5(drift, x, sde.T, eps, rtol=rtol, atol=atol, record=return_trajectory, progress=bar)
    else:
        grid = make_grid(sde, 100 if steps is None else steps, schedule, eps)
        eps = float(grid.t[-1])
        res = ode_solvers.fixed_step(drift, x, grid.t, method, record=return_trajectory, progress=bar)
    x = res.x
    if denoise:
        x = sde.tweedie_denoise(x, time_vector(eps, x), run.score(x, eps))
    if return_trajectory:
        return SampleResult(x, run.nfe, torch.stack(res.trajectory), torch.tensor(res.times))
    return SampleResult(x, run.nfe)


def _ode_variant(method):
    @torch.no_grad()
    def fn(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, **kw) -> SampleResult:
        return ode(score_fn, sde, x, method=method, **kw)

    fn.__name__ = fn.__qualname__ = f"ode_{method}"
    fn.__doc__ = f"The probability-flow ODE with fixed-step {method} (`ode` with method={method!r})."
    sig = inspect.signature(ode)  # its options are ode's, less `method` (for option checks)
    fn.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "method"])
    return fn


ode_euler = _ode_variant("euler")
ode_heun = _ode_variant("heun")


# --- fast samplers: DDIM, DPM-Solver++, EDM's Heun ------------------------------------------
# Every process here is linear, x(t) = alpha x(0) + std z, so after the scaling x_hat = x / alpha it is
# the VE process x_hat = x(0) + sigma z, sigma = std / alpha, and one score evaluation gives EDM's
# denoiser (Karras et al. 2022, eq. 3 and Table 1; Tweedie; DDIM's eq. 9 with eps = -std s):
#     D(x_hat; sigma) = x0_hat = x_hat + sigma^2 alpha s(alpha x_hat, t),   t = t(sigma),
#     eps_hat = (x_hat - D) / sigma = -std s,
# and the probability-flow ODE is the same for VE, VP and sub-VP (EDM eq. 3 with s(t) = 1):
#     d x_hat / d sigma = (x_hat - D(x_hat; sigma)) / sigma = eps_hat.
# The solvers below step between the levels of a `NoiseGrid` (T down to eps). Their default
# schedules are the best measured by benchmarks/samplers.py (exact-score mixture, VE/VP/sub-VP, 6-50
# NFE): DPM-Solver++ on log-SNR-uniform levels down to sigma = 0.01 then one step to sigma(eps);
# DDIM and Heun on uniform t. EDM's rho = 7 schedule (schedule="edm") came out worse for all of them.
DPM_SCHEDULE = LogSNR(sigma_floor=0.01)


class Denoiser:
    """EDM's D(x_hat; sigma) of a linear process from a score (the comment above), one evaluation a call.

    `level` is a `NoiseGrid.level(i)` (t, alpha, std, sigma) or a number sigma (mapped to its time).
      D(x_hat, level)         the data estimate from the scaled state x_hat = x / alpha;
      D.slope(x_hat, level)   d = (x_hat - D(x_hat; sigma)) / sigma = eps_hat, the ODE's d x_hat / d sigma
                              (computed as -std s, free of the cancellation in x_hat - D at low noise);
      D.of_x(x, level)        (x0_hat, eps_hat) = ((x + std^2 s) / alpha, -std s) from the unscaled state.
    """

    def __init__(self, run: SamplerRun, sde: SDE):
        self.run, self.sde = run, sde

    def level(self, level):
        if isinstance(level, (int, float)):
            return NoiseGrid.at_times(self.sde, t_from_sigma(self.sde, [float(level)])).level(0)
        return level

    def __call__(self, x_hat: torch.Tensor, level) -> torch.Tensor:
        lv = self.level(level)
        s = self.run.score(lv.alpha * x_hat, lv.t)
        return x_hat + lv.sigma**2 * lv.alpha * s

    def slope(self, x_hat: torch.Tensor, level) -> torch.Tensor:
        lv = self.level(level)
        return -lv.std * self.run.score(lv.alpha * x_hat, lv.t)

    def of_x(self, x: torch.Tensor, level):
        lv = self.level(level)
        s = self.run.score(x, lv.t)
        return (x + lv.std**2 * s) / lv.alpha, -lv.std * s


def _fast_result(run, D: Denoiser, x, grid: NoiseGrid, denoise: bool) -> SampleResult:
    if denoise:  # Tweedie's E[x(0) | x(eps)], one more evaluation
        x = D.of_x(x, grid.level(grid.steps))[0]
    return run.result(x, grid.t[0])


@torch.no_grad()
def ddim(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 50, eta: float = 0.0, schedule="uniform_t",
         eps: float | None = None, denoise: bool = False, generator=None, return_trajectory=False,
         progress=False) -> SampleResult:
    """DDIM (Song, Meng, Ermon 2021, eq. 12) for any linear process, from level t to the next s < t:

        x_s = alpha_s D + sqrt(std_s^2 - c^2) eps_hat + c z,   c = eta std_s sqrt(1 - sigma_s^2 / sigma_t^2),
        (D, eps_hat) = `Denoiser.of_x`(x_t, level t).

    c^2 at eta = 1 is the variance of the forward posterior q(x_s | x_t, x(0)) (DDPM's ancestral step).
    eta = 0 is deterministic: Euler's method on d x_hat / d sigma = eps_hat, first order in the step.
    K steps, K evaluations (+1 with `denoise`).
    """
    eta = check_number(eta, "eta", lo=0.0, hi=1.0, what=" (0: deterministic DDIM, 1: DDPM-like)")
    grid = make_grid(sde, steps, schedule, eps)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "ddim")
    D = Denoiser(run, sde)
    for i in run.iterate(grid.steps):
        lv, nx = grid.level(i), grid.level(i + 1)
        x0, e = D.of_x(x, lv)
        c = eta * nx.std * math.sqrt(max(0.0, 1.0 - (nx.sigma / lv.sigma) ** 2))
        x = nx.alpha * x0 + math.sqrt(nx.std**2 - c**2) * e
        if c > 0:
            x = x + c * run.noise(x)
        run.keep(x, nx.t)
    return _fast_result(run, D, x, grid, denoise)


def _dpm_update(x, grid: NoiseGrid, i: int, D):
    """The exponential-integrator step of DPM-Solver++ in data prediction (Lu et al. 2022, "DPM-Solver++",
    eq. 10) from level i to i+1 with data estimate D, h = log(sigma_i / sigma_{i+1}) (their
    lambda = -log sigma):

        x_{i+1} = (std_{i+1} / std_i) x_i + alpha_{i+1} (1 - e^{-h}) D.

    With D = D(x_i / alpha_i; sigma_i) this is DDIM at eta = 0."""
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


def _dpm_multistep(run, D: Denoiser, x, grid: NoiseGrid, order: int, lower_order_final: bool):
    """DPM-Solver++ multistep: step i uses order min(order, i + 1) (warm-up from the history it has)
    and, with `lower_order_final`, min(., K - i): the last step lands near sigma = 0, where h_i is
    large and extrapolating the data estimate over it is unstable (the reference code does the same
    for few steps). These one-off lower-order steps keep the global order (their local errors are
    O(h^2) and O(h^3) where the data estimate barely moves)."""
    h = _log_steps(grid)
    ms = []
    for i in run.iterate(grid.steps):
        ms = (ms + [D.of_x(x, grid.level(i))[0]])[-order:]
        k = min(order, i + 1, grid.steps - i) if lower_order_final else min(order, i + 1)
        x = _dpm_multistep_update(x, grid, h, i, ms, k)
        run.keep(x, grid.t[i + 1])
    return x


def _dpm_multistep_sampler(order: int, name: str, desc: str, doc: str):
    @torch.no_grad()
    def fn(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 20, schedule=DPM_SCHEDULE,
           lower_order_final: bool = True, eps: float | None = None, denoise: bool = False, generator=None,
           return_trajectory=False, progress=False) -> SampleResult:
        grid = make_grid(sde, steps, schedule, eps)
        run = SamplerRun(score_fn, x, generator, return_trajectory, progress, desc)
        D = Denoiser(run, sde)
        return _fast_result(run, D, _dpm_multistep(run, D, x, grid, order, lower_order_final), grid, denoise)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


dpmpp2m = _dpm_multistep_sampler(2, "dpmpp2m", "dpm-solver++(2m)", """DPM-Solver++(2M) (Lu, Zhou, Bao, Chen, Li, Zhu 2022, "DPM-Solver++", Algorithm 2): second-order
    multistep in data prediction (`_dpm_multistep_update`); first step first order, and the last one
    too with `lower_order_final`. K steps, K evaluations (+1 with `denoise`).
    """)
dpmpp3m = _dpm_multistep_sampler(3, "dpmpp3m", "dpm-solver++(3m)", """DPM-Solver++(3M): third-order multistep in data prediction (`_dpm_multistep_update`, with the
    corrected 2 phi3 D2 term); first/second-order warm-up, and the reverse at the end with
    `lower_order_final`. K steps, K evaluations (+1 with `denoise`).
    """)


def _midpoint_levels(sde: SDE, grid: NoiseGrid) -> NoiseGrid:
    """The log-sigma midpoints sigma_s = sqrt(sigma_i sigma_{i+1}) of every step of `grid`."""
    return NoiseGrid.at_times(sde, t_from_sigma(sde, torch.sqrt(grid.sigma[:-1] * grid.sigma[1:])))


def _dpm_2s_step(D: Denoiser, x, grid: NoiseGrid, mid: NoiseGrid, i: int, m):
    """DPM-Solver++(2S) step i given m = x0_hat(x_i, t_i): first-order update to the midpoint s_i, then
    the full step with the data estimate there (Lu et al. 2022, Algorithm 1 with r = 1/2)."""
    h_half = math.log(float(grid.sigma[i] / mid.sigma[i]))
    u = float(mid.std[i] / grid.std[i]) * x - float(mid.alpha[i]) * math.expm1(-h_half) * m
    return _dpm_update(x, grid, i, D.of_x(u, mid.level(i))[0])


@torch.no_grad()
def dpmpp2s(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 10, schedule=DPM_SCHEDULE,
            eps: float | None = None, denoise: bool = False, generator=None, return_trajectory=False,
            progress=False) -> SampleResult:
    """DPM-Solver++(2S) (Lu et al. 2022, Algorithm 1 with r = 1/2): second-order singlestep. From x_i,
    go to the log-sigma midpoint s_i (sigma_s = sqrt(sigma_i sigma_{i+1})) with the first-order update,
    then take the full step with the data estimate there:

        u = (std_s / std_i) x_i + alpha_s (1 - e^{-h/2}) m_i,   x_{i+1} = `_dpm_update`(x_i, D = x0_hat(u, s_i)).

    K steps, 2K evaluations (+1 with `denoise`).
    """
    grid = make_grid(sde, steps, schedule, eps)
    mid = _midpoint_levels(sde, grid)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "dpm-solver++(2s)")
    D = Denoiser(run, sde)
    for i in run.iterate(grid.steps):
        x = _dpm_2s_step(D, x, grid, mid, i, D.of_x(x, grid.level(i))[0])
        run.keep(x, grid.t[i + 1])
    return _fast_result(run, D, x, grid, denoise)


@torch.no_grad()
def heun(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 10, schedule="uniform_t",
         final_euler: bool = True, churn: float = 0.0, churn_range: tuple = (0.0, math.inf), s_noise: float = 1.0,
         eps: float | None = None, denoise: bool = False, generator=None, return_trajectory=False,
         progress=False) -> SampleResult:
    """EDM's sampler (Karras, Aittala, Aila, Laine 2022, Algorithm 2): Heun's second-order method on
    d x_hat / d sigma = (x_hat - D(x_hat; sigma)) / sigma, with optional churn. EDM steps through its
    rho = 7 schedule (schedule="edm"); the default here is uniform t, which measured better (see
    DPM_SCHEDULE). The loop below is Algorithm 2 line for line, in x_hat = x / alpha:

        gamma_i = min(churn / K, sqrt(2) - 1) if sigma_i in churn_range else 0        (line 4)
        sigma_hat = sigma_i (1 + gamma_i)   (kept <= sigma(T))                          (line 5)
        x_hat <- x_i + sqrt(sigma_hat^2 - sigma_i^2) s_noise z                          (line 6)
        d_i = (x_hat - D(x_hat; sigma_hat)) / sigma_hat                                 (line 7)
        x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d_i                                 (line 8)
        d'_i = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1}                        (line 10)
        x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d_i + d'_i) / 2                    (line 11)

    `final_euler` keeps the Euler step on the last step (lines 9-11 skipped), as EDM does for its step
    to sigma = 0: there sigma_K is tiny against sigma_{K-1}, the slope there is ~0 for a smooth density
    and averaging it in would leave half the noise; a one-off Euler step keeps the global second order.
    churn = 0 is deterministic. K steps, 2K - 1 evaluations (2K without `final_euler`; +1 with `denoise`).
    """
    churn = check_number(churn, "churn", lo=0.0, what=" (EDM's S_churn; 0 = deterministic)")
    s_noise = check_number(s_noise, "s_noise", lo=0.0)
    grid = make_grid(sde, steps, schedule, eps)
    K = grid.steps
    gamma_max = min(churn / K, math.sqrt(2) - 1)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "edm heun")
    D = Denoiser(run, sde)
    xh = x / float(grid.alpha[0])
    for i in run.iterate(K):
        lv, nx = grid.level(i), grid.level(i + 1)
        if gamma_max > 0 and churn_range[0] <= lv.sigma <= churn_range[1]:
            sig_hat = min(lv.sigma * (1 + gamma_max), float(grid.sigma[0]))
            if sig_hat > lv.sigma:
                xh = xh + math.sqrt(sig_hat**2 - lv.sigma**2) * s_noise * run.noise(xh)
                lv = D.level(sig_hat)._replace(sigma=sig_hat)
        d = D.slope(xh, lv)
        x_next = xh + (nx.sigma - lv.sigma) * d
        if not (final_euler and i == K - 1):
            d2 = D.slope(x_next, nx)
            x_next = xh + (nx.sigma - lv.sigma) * 0.5 * (d + d2)
        xh = x_next
        run.keep(nx.alpha * xh, nx.t)
    return _fast_result(run, D, float(grid.alpha[-1]) * xh, grid, denoise)


#: sigma_1 / sigma_data of multistep consistency sampling. With models distilled from the exact score
#: (benchmarks/distill.py, data standardized), 2-step samples against sigma_1 / sigma_data:
#: seed mixture 1 -> 1.83, 1.5 -> 1.21, 2 -> 1.19, 3 -> 1.14, 4 -> 1.09 x the energy floor;
#: 5-D mixture 1 -> ~1.6, 1.5 -> 1.11, 2 -> 0.96, 3 -> 0.93, 4 -> 0.98 (EDM's midpoint: 1.59 and 2.31).
#: Song et al. (2023) take 0.821 = 1.64 sigma_data on CIFAR-10.
CM_FIRST_LEVEL = 2.0


def _consistency_levels(sigma_max: float, sigma_min: float, steps: int, sigma_data: float) -> list[float]:
    """sigma_1..sigma_{K-1}: EDM's rho = 7 spacing from min(CM_FIRST_LEVEL sigma_data, sigma_max) to sigma_min."""
    sigma_data = check_number(sigma_data, "sigma_data", lo=0.0, lo_open=True)
    top = min(CM_FIRST_LEVEL * sigma_data, sigma_max * (1 - 1e-6))
    hi, lo = top ** (1 / 7), sigma_min ** (1 / 7)
    return [(hi + i / (steps - 1) * (lo - hi)) ** 7 for i in range(steps - 1)]


@torch.no_grad()
def consistency(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, steps: int = 2, schedule="edm", sigmas=None,
                sigma_data: float | None = None, eps: float | None = None, generator=None, return_trajectory=False,
                progress=False) -> SampleResult:
    """Multistep consistency sampling (Song, Dhariwal, Chen, Sutskever 2023, Algorithm 1): map to the data,
    noise up to the next level, map again. With f_hat = `Denoiser.of_x`(x, level)[0] (for a
    `models.consistency.ConsistencyModel` exactly its f_hat; for any other score model Tweedie's
    E[x(0) | x(t)]) and levels sigma_0 = sigma(T) > sigma_1 > ... > sigma_{K-1} > sigma_min = sigma(eps):

        x0 <- f_hat(x_T; sigma_0);   for n = 1..K-1:  x0 <- f_hat(alpha_n (x0 + sqrt(sigma_n^2 - sigma_min^2) z); sigma_n)

    and the sample alpha(eps) x0. The levels after sigma_0: `sigmas` = [sigma_1, ..., sigma_{K-1}] if
    given; else, with the data's `sigma_data` (a run passes its model's), EDM's rho = 7 grid of K - 1
    steps from sigma_1 = CM_FIRST_LEVEL x sigma_data down to sigma_min; else the first K levels of the
    named `schedule`'s K steps (EDM's grid from sigma(T): for K = 2 its midpoint, which sits far below
    the data's scale when sigma(T) is large). K evaluations.
    """
    steps = check_positive_int(steps, "steps")
    grid = make_grid(sde, steps, schedule, eps)
    if sigmas is None and sigma_data is not None and steps > 1:
        sigmas = _consistency_levels(float(grid.sigma[0]), float(grid.sigma[-1]), steps, sigma_data)
    if sigmas is not None:
        sig = [float(v) for v in (sigmas if isinstance(sigmas, (list, tuple)) else [sigmas])]
        if len(sig) != steps - 1 or any(not (float(grid.sigma[-1]) < v < float(grid.sigma[0])) for v in sig):
            raise ValueError(f"sigmas={sigmas!r} must be {steps - 1} level(s) between sigma(eps) = "
                             f"{float(grid.sigma[-1]):.4g} and sigma(T) = {float(grid.sigma[0]):.4g} for steps={steps}")
        times = torch.cat([grid.t[:1], t_from_sigma(sde, sorted(sig, reverse=True)), grid.t[-1:]])
        grid = NoiseGrid.at_times(sde, times)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "consistency")
    D = Denoiser(run, sde)
    end = grid.level(grid.steps)
    x0 = None
    for i in run.iterate(grid.steps):
        lv = grid.level(i)
        if i > 0:
            x = lv.alpha * (x0 + math.sqrt(max(lv.sigma**2 - end.sigma**2, 0.0)) * run.noise(x0))
        x0 = D.of_x(x, lv)[0]
        run.keep(end.alpha * x0, grid.t[i + 1])
    return run.result(end.alpha * x0, grid.t[0])


# --- registry -----------------------------------------------------------------------------
def _per_step(n: int):
    return lambda options: n


def _pc_per_step(options):
    return 1 + (options.get("corrector_steps", 1) if options.get("corrector", "langevin") != "none" else 0)


def _heun_extra(options):
    return (-1 if options.get("final_euler", True) else 0) + int(bool(options.get("denoise", False)))


def _tweedie_extra(options):
    return int(bool(options.get("denoise", False)))


#: name -> sampler; `SAMPLERS.meta[name]` gives `nfe_per_step(options)` and `nfe_extra(options)` (evaluations
#: of K steps = per_step K + extra), absent for samplers without a fixed cost per step (adaptive
#: 'ode', and the level-based Langevin samplers whose `steps` counts steps per level).
SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register("langevin", langevin)
SAMPLERS.register("annealed_langevin", annealed_langevin, aliases=["ald"])
for _name, _fn, _aliases in [("euler_maruyama", euler_maruyama, ["em", "sde"]), ("reverse_diffusion", reverse_diffusion, []),
                             ("ancestral", ancestral, []), ("ode_euler", ode_euler, [])]:
    SAMPLERS.register(_name, _fn, aliases=_aliases, nfe_per_step=_per_step(1), nfe_extra=lambda o: 0)
SAMPLERS.register("pc", pc, aliases=["predictor_corrector"], nfe_per_step=_pc_per_step, nfe_extra=lambda o: 0)
SAMPLERS.register("ode", ode, aliases=["rk45", "ode_rk45", "probability_flow"])
SAMPLERS.register("ode_heun", ode_heun, aliases=["heun_ode"], nfe_per_step=_per_step(2), nfe_extra=lambda o: 0)
SAMPLERS.register("ddim", ddim, nfe_per_step=_per_step(1), nfe_extra=_tweedie_extra)
SAMPLERS.register("dpmpp2m", dpmpp2m, aliases=["dpm_solver_2m"], nfe_per_step=_per_step(1), nfe_extra=_tweedie_extra)
SAMPLERS.register("dpmpp2s", dpmpp2s, aliases=["dpm_solver_2s"], nfe_per_step=_per_step(2), nfe_extra=_tweedie_extra)
SAMPLERS.register("dpmpp3m", dpmpp3m, aliases=["dpm_solver_3m"], nfe_per_step=_per_step(1), nfe_extra=_tweedie_extra)
SAMPLERS.register("consistency", consistency, aliases=["cm"], nfe_per_step=_per_step(1), nfe_extra=lambda o: 0)
SAMPLERS.register("heun", heun, aliases=["edm", "edm_heun"], nfe_per_step=_per_step(2), nfe_extra=_heun_extra)

# the earlier function names, kept for old imports
predictor_corrector, probability_flow, edm_heun = pc, ode, heun
dpm_solver_2m, dpm_solver_2s, dpm_solver_3m = dpmpp2m, dpmpp2s, dpmpp3m


def sampler_names() -> list[str]:
    return SAMPLERS.names()


def get_sampler(name: str) -> Sampler:
    """Look a sampler up by name (any spelling `util.normalize_name` accepts, or an alias)."""
    return SAMPLERS.lookup(name)


def nfe_per_step(name: str, **options) -> int | None:
    """Score evaluations per step of the named sampler with these options (None: no fixed count)."""
    meta = SAMPLERS.meta.get(SAMPLERS.key(name))
    return None if meta is None else int(meta["nfe_per_step"](options))


def steps_for_nfe(name: str, nfe: int, **options) -> int:
    """The largest step count K whose evaluations fit in `nfe`, from the registry's NFE per step:
    K for DDIM, DPM-Solver++ 2M/3M, Euler(-Maruyama), reverse diffusion and ancestral;
    floor(nfe / 2) for DPM-Solver++ 2S and the ODE's Heun; floor((nfe + 1) / 2) for EDM's Heun
    (2K - 1 evaluations; nfe / 2 with final_euler=False); floor(nfe / (1 + corrector_steps)) for PC.
    Adaptive or level-based samplers ('ode', Langevin) have no such count: ValueError."""
    key = SAMPLERS.key(name)
    nfe = check_positive_int(nfe, "nfe")
    meta = SAMPLERS.meta.get(key)
    if meta is None:
        budgeted = sorted(k for k in SAMPLERS if k in SAMPLERS.meta)
        raise ValueError(f"sampler {name!r} has no fixed number of evaluations per step; budgeted samplers: {budgeted}")
    per, extra = int(meta["nfe_per_step"](options)), int(meta["nfe_extra"](options))
    k = (nfe - extra) // per
    if k < 1:
        raise ValueError(f"nfe={nfe} is below one step of {name!r}")
    return k


def sample(score_fn: ScoreFn, sde: SDE, shape, sampler: str = "pc", *, generator=None, device=None,
           dtype=torch.float32, **options) -> SampleResult:
    """Draw the start from the prior of `sde` and run the named sampler on it."""
    fn = get_sampler(sampler)
    x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    return fn(score_fn, sde, x, generator=generator, **options)
