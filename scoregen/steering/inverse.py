"""Imputation, inpainting, linear inverse problems and SDEdit with an unconditional score model.

Every function here is a plain function over (score_fn, sde, ...): the samplers follow the sampler
signature of `samplers` (starting state x, `steps`, `generator`, ... -> SampleResult) with the
observation as keyword options, and the posterior scores are `score_fn(x, t)`s for any sampler.

Imputation / inpainting (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Appendix I.2). Known entries
M * y, unknown (1 - M) * x. Predictor-corrector sampling where, at every time t_i, the known part is
replaced by a fresh forward-noised observation alpha(t_i) y + std(t_i) z. RePaint (Lugmayr et al.
2022) adds resampling: after stepping from t_i to t_{i+1}, diffuse x back to t_i with the forward
kernel x(t_i) | x(t_{i+1}) and step again, `resample` times in all, `jump` levels at a time, which
lets the unknown part harmonize with the known one.

Linear inverse problems y = A x + eta, eta ~ N(0, sigma_y^2 I) (`operators.LinearOperator`).
By Bayes, grad log p_t(x | y) = s(x, t) + grad log p_t(y | x(t)); p_t(y | x(t)) needs the law of
x(0) given x(t), which a score model gives only approximately. Writing sigma(t) = std(t) / alpha(t):

  * `posterior_score` (Bayes' rule of Song et al. 2021, eq. 14, with x(0) ~ x(t) / alpha): s(x, t) - grad ||y - A x||^2 / (2 sigma_y^2),
    with x(0) estimated by x(t) / alpha(t). Its time dependence, explicitly: x(t) / alpha(t) =
    x(0) + sigma(t) z, and taking z independent of x(t) gives y | x(t) ~ N(A x / alpha,
    sigma_y^2 I + sigma(t)^2 A A^T), hence
        grad log p_t(y | x) ~ (1 / alpha) A^T (sigma_y^2 I + k sigma(t)^2 A A^T)^{-1} (y - A x / alpha),
    with k = 1 (`inflate=True`, the noise-inflated likelihood of Jalal et al. 2021) or k = 0 (the
    plain approximation taken literally: the clean-data likelihood at every t, which pulls the noisy
    x(t) onto A x = y far too early and over-concentrates the posterior).
  * `dps_score` (Chung et al. 2023, "Diffusion posterior sampling", eq. 16 with a Gaussian
    likelihood): x(0) estimated by Tweedie's x0_hat(x(t)) = (x + std^2 s) / alpha, y | x(t) ~
    N(A x0_hat, sigma_y^2 I); the gradient goes through the score (a vector-Jacobian product).
  * `pigdm_score` (Song, Vahdat, Mardani, Kautz 2023, "Pseudoinverse-guided diffusion models"):
    the same with the posterior spread of x(0) | x(t) put back, y | x(t) ~ N(A x0_hat, sigma_y^2 I +
    r_t^2 A A^T), r_t^2 = sigma(t)^2 v / (sigma(t)^2 + v) for data of variance v per coordinate.
    For a Gaussian prior N(m, v I) this is exact (x(0) | x(t) is N(x0_hat, r_t^2 I)), so sampling
    it samples the exact posterior (tests/test_inverse.py).
  * `dps`: the DPS sampler of Chung et al. (their Algorithm 1 and code): a reverse-diffusion step,
    then x <- x - zeta grad_x ||y - A x0_hat(x)|| (step normalized by the residual, needs no sigma_y).

SDEdit (Meng et al. 2022): x(t0) = alpha(t0) x_input + std(t0) z, then the reverse process from t0.

Exact references for the tests and benchmarks: `mixture_posterior` (a Gaussian-mixture prior under
a linear Gaussian observation is again a mixture) and `mixture_conditional` (exact conditioning on
known coordinates).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..process.distributions import GaussianMixture
from ..process.schedules import NoiseGrid, make_grid
from ..process.sde import SDE, broadcast_to
from ..sampling.samplers import SamplerRun, langevin_corrector_step, reverse_diffusion_step
from ..util import ScoreFn, check_eps, check_number, check_positive_int, choose_one_of, time_vector
from .operators import LinearOperator, check_mask

__all__ = ["impute", "repaint_schedule", "posterior_score", "dps_score", "pigdm_score", "dps", "sdedit",
           "mixture_posterior", "mixture_conditional"]


# --- helpers -----------------------------------------------------------------------------------
def _check_observed(observed, x: torch.Tensor, what: str = "observation") -> torch.Tensor:
    """The observation as a tensor like x: (N, *ex) or one example (*ex), broadcast to the batch."""
    y = torch.as_tensor(observed).to(dtype=x.dtype, device=x.device)
    ex = tuple(x.shape[1:])
    if tuple(y.shape) == ex:
        return y.expand(x.shape)
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"the {what} has shape {tuple(y.shape)}; expected one example {ex} or a batch "
                         f"{tuple(x.shape)} like the sampler's state")
    return y


def _check_positive_int(**values):
    for name, v in values.items():
        check_positive_int(v, name)


def _check_corrector(corrector):
    if corrector not in ("langevin", "none"):
        raise ValueError(choose_one_of("corrector", corrector, ["langevin", "none"]))


def _correct(run: SamplerRun, sde, x, t, s, snr, n_steps):
    """`n_steps` Langevin corrections toward p_t (`samplers.langevin_corrector_step`)."""
    for _ in range(n_steps):
        score, z = run.score(x, t), run.noise(x)
        x = langevin_corrector_step(sde, x, t, s, score, z, snr)
    return x


def _rd_step(run: SamplerRun, sde, x, t, s, last: bool, denoise: bool, score=None):
    """A reverse-diffusion step with the run's score and noise (no noise on the last step with `denoise`)."""
    score = run.score(x, t) if score is None else score
    return reverse_diffusion_step(sde, x, t, s, score, None if (last and denoise) else run.noise(x))


# --- imputation / inpainting -----------------------------------------------------------------
def repaint_schedule(steps: int, resample: int = 1, jump: int = 1) -> list[int]:
    """Indices into the time grid (0 = T, steps = eps) visited by RePaint (Lugmayr et al. 2022, their
    `get_schedule_jump`): step down one index at a time; on reaching a level that is a multiple of
    `jump` (counted from eps, not eps itself, at least `jump` below T), go back up `jump` levels and
    down again, `resample - 1` times. resample = 1 is the plain descent 0, 1, ..., steps."""
    _check_positive_int(steps=steps, resample=resample, jump=jump)
    left = {lvl: resample - 1 for lvl in range(jump, steps - jump + 1, jump)}
    path, i = [0], 0
    while i < steps:
        i += 1
        path.append(i)
        lvl = steps - i
        if left.get(lvl, 0) > 0:
            left[lvl] -= 1
            path.extend(range(i - 1, i - jump - 1, -1))
            i -= jump
    return path


@torch.no_grad()
def impute(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, observed, mask, steps: int = 500, schedule="uniform_t",
           snr: float = 0.16,
           corrector: str = "langevin", corrector_steps: int = 1, resample: int = 1, jump: int = 1,
           eps: float | None = None, denoise: bool = True, generator=None, return_trajectory=False,
           progress=False):
    """Imputation by predictor-corrector sampling with replacement of the known part (module docstring).

    observed: the data, (N, *ex) or one example (*ex) (values where mask = 0 are ignored);
    mask: 1 = known, 0 = unknown, of one example's shape (*ex) or the batch's. resample > 1 turns on
    RePaint's resampling (jump: levels per jump). Predictor: the reverse-diffusion step; corrector:
    Langevin with the signal-to-noise step rule, or "none". The last step adds no noise and puts
    the observation itself in the known part. Returns a SampleResult (nfe counts score calls).
    """
    _check_corrector(corrector)
    _check_positive_int(corrector_steps=corrector_steps)
    y = _check_observed(observed, x)
    m = torch.as_tensor(mask)
    shape = tuple(x.shape) if tuple(m.shape) == tuple(x.shape) else tuple(x.shape[1:])
    m = check_mask(m, shape).to(dtype=x.dtype, device=x.device)
    ts = make_grid(sde, steps, schedule, eps).t
    steps = len(ts) - 1
    path = repaint_schedule(steps, resample, jump)
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "impute")

    def replace(x, t, last=False):
        known = y if last else sde.perturb(y, time_vector(t, x), run.noise(x))
        return m * known + (1 - m) * x

    x = replace(x, ts[0])
    for k in run.iterate(len(path) - 1):
        a, b = path[k], path[k + 1]
        t, t_next = ts[a], ts[b]
        if b < a:  # RePaint: back up with the forward kernel x(t_b) | x(t_a)
            fa, G = sde.transition(time_vector(t_next, x), time_vector(t, x))
            x = broadcast_to(fa, x) * x + broadcast_to(G, x) * run.noise(x)
            run.keep(x, t_next)
            continue
        last = b == steps
        if corrector == "langevin":
            x = replace(_correct(run, sde, x, t, t_next, snr, corrector_steps), t)
        x = _rd_step(run, sde, x, t, t_next, last, denoise)
        x = replace(x, t_next, last)
        run.keep(x, t_next)
    return run.result(x, sde.T)


# --- linear inverse problems -----------------------------------------------------------------
def _check_problem(operator, y, sigma_y, need_noise: bool):
    if not isinstance(operator, LinearOperator):
        raise ValueError(f"operator must be a scoregen.steering.operators.LinearOperator, got {type(operator).__name__}")
    y = torch.as_tensor(y)
    if tuple(y.shape) == operator.out_shape:
        y = y[None]
    operator.check_observation(y)
    if not (isinstance(sigma_y, (int, float)) and sigma_y >= 0 and math.isfinite(sigma_y)):
        raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y!r}")
    if need_noise and sigma_y == 0:
        raise ValueError("sigma_y = 0 makes this likelihood singular; give the measurement noise sigma_y > 0")
    return y


def _obs_like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    y = y.to(dtype=x.dtype, device=x.device)
    if y.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{y.shape[0]} observations given for a batch of {x.shape[0]}")
    return y.expand((x.shape[0],) + tuple(y.shape[1:]))


def posterior_score(score_fn, sde: SDE, operator: LinearOperator, y, sigma_y: float, *, inflate: bool = True):
    """The approximate posterior score s(x, t) - grad ||y - A x||^2 / (2 sigma_y^2) (Bayes' rule of Song et al.
    2021, eq. 14, with x(0) ~ x(t) / alpha) with its time treatment explicit (module docstring):

        s(x, t) + (1/alpha) A^T (sigma_y^2 I + k sigma(t)^2 A A^T)^{-1} (y - A x / alpha),  k = inflate.

    y: one measurement (out_shape) or one per example. inflate=False (the clean-data likelihood at every t)
    needs sigma_y > 0.
    """
    y = _check_problem(operator, y, sigma_y, need_noise=not inflate)
    v = float(sigma_y) ** 2

    def fn(x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        alpha = sde.alpha(t)
        a = broadcast_to(alpha, x)
        resid = _obs_like(y, x) - operator(x / a)
        lam = (sde.std(t) / alpha) ** 2 if inflate else 0.0
        return score_fn(x, t) + operator.adjoint(operator.gram_solve(resid, lam, v)) / a

    return fn


def _tweedie_likelihood_score(score_fn, sde, operator, y, v, r2_fn, jacobian="autograd"):
    """s + grad_x log N(y; A x0_hat(x), v I + r_t^2 A A^T), the covariance held fixed in x.

    The gradient is J^T A^T (v I + r_t^2 A A^T)^{-1} (y - A x0_hat), J = d x0_hat / d x: by autograd
    through the score, or ("isotropic") J = r_t^2 / (sigma(t)^2 alpha) I, which is exact when x(0) | x(t)
    has covariance r_t^2 I (Tweedie's second moment: Cov[x(0) | x(t)] = sigma(t)^2 alpha J)."""
    if jacobian not in ("autograd", "isotropic"):
        raise ValueError(f"jacobian must be 'autograd' or 'isotropic', got {jacobian!r}")

    def fn(x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        r2 = r2_fn(t)
        if jacobian == "isotropic":
            s = score_fn(x, t)
            resid = _obs_like(y, x) - operator(sde.tweedie_denoise(x, t, s))
            alpha = sde.alpha(t)
            j = r2 / ((sde.std(t) / alpha) ** 2 * alpha)
            return s + broadcast_to(j, x) * operator.adjoint(operator.gram_solve(resid, r2, v))
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = score_fn(xg, t)
            ax0 = operator(sde.tweedie_denoise(xg, t, s))
            w = operator.gram_solve((_obs_like(y, x) - ax0).detach(), r2, v).detach()
            (grad,) = torch.autograd.grad((ax0 * w).sum(), xg)  # J^T A^T (v + r^2 A A^T)^{-1} (y - A x0_hat)
        return s.detach() + grad

    return fn


def dps_score(score_fn, sde: SDE, operator: LinearOperator, y, sigma_y: float):
    """DPS's posterior score (Chung et al. 2023, eq. 16, Gaussian noise): s + grad_x log N(y; A x0_hat(x), sigma_y^2 I).

    score_fn must be differentiable in x (a network is; for an exact mixture use
    `GaussianMixture.score` directly: its `score_fn` detaches). With a learned network the Jacobian of
    x0_hat is poor at high noise, and this score can blow up there: the `dps` sampler normalizes its step.
    """
    y = _check_problem(operator, y, sigma_y, need_noise=True)
    return _tweedie_likelihood_score(score_fn, sde, operator, y, float(sigma_y) ** 2, lambda t: 0.0)


def pigdm_score(score_fn, sde: SDE, operator: LinearOperator, y, sigma_y: float, *, data_var: float = 1.0,
                jacobian: str = "autograd"):
    """PiGDM's posterior score (Song et al. 2023): s + grad_x log N(y; A x0_hat, sigma_y^2 I + r_t^2 A A^T),
    r_t^2 = sigma(t)^2 v / (sigma(t)^2 + v), v = data_var (1 for standardized data). Exact for N(m, v I).

    jacobian="autograd" differentiates x0_hat through the score (the paper's vector-Jacobian product);
    "isotropic" uses J = r_t^2 / (sigma(t)^2 alpha) I, no backward pass, and stays stable with a learned
    network at high noise, where its Jacobian is dominated by errors (the first is the default only
    because it is the paper's; both are exact for N(m, v I)).
    """
    y = _check_problem(operator, y, sigma_y, need_noise=False)
    if not data_var > 0:
        raise ValueError(f"data_var must be > 0, got {data_var!r}")

    def r2(t):
        s2 = (sde.std(t) / sde.alpha(t)) ** 2
        return s2 * data_var / (s2 + data_var)

    return _tweedie_likelihood_score(score_fn, sde, operator, y, float(sigma_y) ** 2, r2, jacobian)


@torch.no_grad()
def dps(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, operator: LinearOperator, y, steps: int = 1000,
        schedule="uniform_t", zeta: float = 1.0, eps: float | None = None, denoise: bool = True, generator=None, return_trajectory=False, progress=False):
    """Diffusion posterior sampling (Chung et al. 2023, Algorithm 1, as in their code):

        x' = reverse-diffusion step from x_i with s(x_i, t_i),
        x_{i+1} = x' - zeta grad_{x_i} ||y - A x0_hat(x_i)||,  x0_hat = Tweedie's estimate.

    y: one measurement or one per example. zeta: the step size (the paper's zeta_i = zeta / ||y - A x0_hat||
    on the squared norm, up to the factor 2). One score evaluation (with its gradient) per step.
    """
    yy = _check_problem(operator, y, 0.0, need_noise=False)
    zeta = check_number(zeta, "zeta", lo=0.0)
    ts = make_grid(sde, steps, schedule, eps).t
    steps = len(ts) - 1
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "dps")
    obs = _obs_like(yy, x)
    for i in run.iterate(steps):
        t, t_next, last = ts[i], ts[i + 1], i == steps - 1
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = run.score(xg, t)
            x0 = sde.tweedie_denoise(xg, time_vector(t, x), s)
            norm = (obs - operator(x0)).reshape(x.shape[0], -1).norm(dim=1).sum()
            (grad,) = torch.autograd.grad(norm, xg)
        x_new = _rd_step(run, sde, x, t, t_next, last, denoise, score=s.detach())
        x = (x_new - zeta * grad).detach()
        run.keep(x, t_next)
    return run.result(x, sde.T)


# --- SDEdit ------------------------------------------------------------------------------------
@torch.no_grad()
def sdedit(score_fn: ScoreFn, sde: SDE, x_input: torch.Tensor, *, t0: float, steps: int = 500, corrector: str = "none", snr: float = 0.16,
           corrector_steps: int = 1, eps: float | None = None, denoise: bool = True, generator=None,
           return_trajectory=False, progress=False):
    """SDEdit (Meng et al. 2022): x(t0) = alpha(t0) x_input + std(t0) z, then `steps` reverse-diffusion
    steps (with Langevin corrections if corrector="langevin") from t0 down to eps.

    t0 in (eps, T]: small t0 stays close to the input, t0 = T forgets it (plain sampling).
    """
    eps = check_eps(eps, sde.T, sde.eps)
    if not (isinstance(t0, (int, float)) and eps < t0 <= sde.T):
        raise ValueError(f"t0 must lie in (eps, T] = ({eps:g}, {sde.T:g}], got {t0!r}")
    _check_corrector(corrector)
    _check_positive_int(steps=steps, corrector_steps=corrector_steps)
    x_input = torch.as_tensor(x_input)
    noise = torch.randn(x_input.shape, generator=generator, dtype=x_input.dtype, device=x_input.device)
    x = sde.perturb(x_input, time_vector(t0, x_input), noise)
    ts = NoiseGrid.at_times(sde, torch.linspace(float(t0), eps, int(steps) + 1, dtype=torch.float64)).t
    run = SamplerRun(score_fn, x, generator, return_trajectory, progress, "sdedit")
    for i in run.iterate(steps):
        t, t_next, last = ts[i], ts[i + 1], i == steps - 1
        if corrector == "langevin":
            x = _correct(run, sde, x, t, t_next, snr, corrector_steps)
        x = _rd_step(run, sde, x, t, t_next, last, denoise)
        run.keep(x, t_next)
    return run.result(x, float(t0))


# --- exact references ---------------------------------------------------------------------------
def _condition(means, covs, A, y, noise_var):
    """Per component k: x ~ N(mu_k, S_k), y = A x + N(0, noise_var I) ->
    x | y ~ N(mu_k + K (y - A mu_k), S_k - K A S_k), K = S_k A^T (A S_k A^T + v I)^{-1},
    and log N(y; A mu_k, A S_k A^T + v I)."""
    Syy = A @ covs @ A.T + noise_var * torch.eye(A.shape[0], dtype=A.dtype)
    gain = torch.linalg.solve(Syy, (covs @ A.T).transpose(1, 2)).transpose(1, 2)  # S A^T Syy^{-1}
    resid = y[None] - means @ A.T
    post_means = means + torch.einsum("kdm,km->kd", gain, resid)
    post_covs = covs - gain @ A @ covs
    L = torch.linalg.cholesky(Syy)
    sol = torch.cholesky_solve(resid[..., None], L)[..., 0]
    logdet = 2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
    log_ev = -0.5 * ((resid * sol).sum(1) + logdet + A.shape[0] * math.log(2 * math.pi))
    return post_means, 0.5 * (post_covs + post_covs.transpose(1, 2)), log_ev


def mixture_posterior(mixture: GaussianMixture, A, y, sigma_y: float) -> GaussianMixture:
    """The exact posterior of x ~ `mixture` given y = A x + N(0, sigma_y^2 I): a Gaussian mixture whose
    weights are w_k N(y; A mu_k, A S_k A^T + sigma_y^2 I), normalized (see `_condition`)."""
    A = torch.as_tensor(np.asarray(A, dtype=np.float64))
    y = torch.as_tensor(np.asarray(y, dtype=np.float64)).reshape(-1)
    if A.dim() != 2 or A.shape[1] != mixture.dim or y.shape[0] != A.shape[0]:
        raise ValueError(f"A must be (m, {mixture.dim}) and y (m,), got {tuple(A.shape)} and {tuple(y.shape)}")
    if not sigma_y > 0:
        raise ValueError(f"sigma_y must be > 0 (use mixture_conditional for exact observations), got {sigma_y!r}")
    mu, S, lev = _condition(mixture.means, mixture.covs, A, y, float(sigma_y) ** 2)
    w = torch.softmax(torch.log(mixture.weights) + lev, 0)
    return GaussianMixture(w, mu, S)


def mixture_conditional(mixture: GaussianMixture, known, values) -> GaussianMixture:
    """The exact law of the other coordinates given x[known] = values: a mixture over the unknown
    coordinates (in increasing order), weights w_k N(values; mu_k[known], S_k[known, known])."""
    known = sorted(int(i) for i in np.atleast_1d(known))
    d = mixture.dim
    if not known or len(set(known)) != len(known) or known[0] < 0 or known[-1] >= d or len(known) == d:
        raise ValueError(f"known must list distinct coordinates in 0..{d - 1}, leaving at least one unknown; got {known}")
    values = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
    if values.shape[0] != len(known):
        raise ValueError(f"{len(known)} known coordinates but {values.shape[0]} values")
    A = torch.eye(d, dtype=torch.float64)[known]
    mu, S, lev = _condition(mixture.means, mixture.covs, A, values, 0.0)
    free = [i for i in range(d) if i not in known]
    w = torch.softmax(torch.log(mixture.weights) + lev, 0)
    return GaussianMixture(w, mu[:, free], S[:, free][:, :, free])
