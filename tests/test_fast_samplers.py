"""DDIM, DPM-Solver++ and EDM's Heun sampler, with exact scores.

Convergence: from the same prior draws, each ODE solver's error at t = eps against a reference
solve shrinks like K^-p with the number of steps K, p its order (slope of the log-log error within
0.3). References: the closed-form probability-flow map for Gaussian data,
    x_eps - alpha_eps m = C_eps^{1/2} C_T^{-1/2} (x_T - alpha_T m),  C_t = alpha_t^2 S + std_t^2 I,
(d u / dt = (f + g^2 / (2 C)) u = (dC/dt) / (2C) u for u = x - alpha m), and for the mixture
Dormand-Prince with rtol = atol = 1e-10 in float64. Step ranges are where the asymptotic regime holds
(measured by benchmarks, see the report); schedules have no floor, so every step shrinks with K.

Exactness: for data concentrated at one point mu the data estimate is constant, x_hat - mu moves
linearly in sigma, and every solver here is exact in any number of steps; the stochastic parts
(DDIM's eta, EDM's churn) then give Gaussian outputs with closed-form mean and variance.
"""
import math

import pytest
import torch

from scoregen.process import ode
from scoregen.process.distributions import GaussianMixture, seed_mixture
from scoregen.sampling.samplers import (SAMPLERS, SampleResult, ddim, dpm_solver_2m, dpm_solver_2s, dpm_solver_3m, edm_heun,
                               get_sampler, sample, steps_for_nfe)
from scoregen.process.schedules import EDMSchedule, make_schedule
from scoregen.process.sde import SubVPSDE, VESDE, VPSDE

SDES = [VESDE(), VPSDE(), SubVPSDE()]
IDS = ["ve", "vp", "subvp"]
GAUSS = GaussianMixture.gaussian([0.5, -1.0], [[1.0, 0.3], [0.3, 0.5]])
SCHEDULE = EDMSchedule(rho=7.0)  # no floor: the asymptotic regime needs every step to shrink
N_POINTS = 32
TOL_ORDER = 0.3


def standardized_mixture():
    mix = seed_mixture()
    return mix.affine(mix.mean(), math.sqrt(float(torch.trace(mix.covariance())) / mix.dim))


MIX = standardized_mixture()


def prior_points(sde, n=N_POINTS, seed=0):
    return sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gaussian_flow(sde, x_T):
    """The exact probability-flow map from T to eps for GAUSS (module docstring)."""
    lam, U = torch.linalg.eigh(GAUSS.covs[0])
    m = GAUSS.means[0]
    t0, t1 = (torch.tensor(v, dtype=torch.float64) for v in (sde.T, sde.eps))
    C = lambda t: sde.alpha(t) ** 2 * lam + sde.std(t) ** 2  # noqa: E731
    u = (x_T - sde.alpha(t0) * m) @ U
    return (u * torch.sqrt(C(t1) / C(t0))) @ U.T + sde.alpha(t1) * m


def rms(a, b):
    return float((a - b).pow(2).sum(1).mean().sqrt())


def fitted_order(errors, steps):
    """-slope of the least-squares line through (log K, log error)."""
    lx, ly = torch.log(torch.tensor(steps, dtype=torch.float64)), torch.log(torch.tensor(errors, dtype=torch.float64))
    lx = lx - lx.mean()
    return float(-(lx * (ly - ly.mean())).sum() / (lx * lx).sum())


# name, order, steps for the Gaussian, steps for the mixture (where the asymptotic regime holds)
SOLVERS = [
    ("ddim", 1, (32, 64, 128), (128, 256, 512)),
    ("dpmpp2m", 2, (16, 32, 64), (32, 64, 128)),
    ("dpmpp2s", 2, (16, 32, 64), (32, 64, 128)),
    ("heun", 2, (16, 32, 64), (32, 64, 128)),
    ("dpmpp3m", 3, (32, 64, 128), (64, 128, 256)),
]


def measured_order(name, score_fn, sde, x, ref, steps):
    fn = get_sampler(name)
    errors = [rms(fn(score_fn, sde, x, steps=k, schedule=SCHEDULE).samples, ref) for k in steps]
    return fitted_order(errors, steps), errors


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_reference_solver_matches_the_gaussian_flow(sde):
    x = prior_points(sde)
    ref = ode.dopri5(sde.ode_drift(GAUSS.score_fn(sde)), x, sde.T, sde.eps, rtol=1e-10, atol=1e-10)
    assert rms(ref.x, gaussian_flow(sde, x)) < 1e-7


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("name, order, steps, _", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_order_of_convergence_gaussian(sde, name, order, steps, _):
    x = prior_points(sde)
    p, errors = measured_order(name, GAUSS.score_fn(sde), sde, x, gaussian_flow(sde, x), steps)
    assert abs(p - order) < TOL_ORDER, f"{name} on {sde.name}: order {p:.2f}, errors {errors}"


@pytest.fixture(scope="module")
def mixture_references():
    out = {}
    for sde in SDES:
        x = prior_points(sde, seed=1)
        out[sde.name] = x, ode.dopri5(sde.ode_drift(MIX.score_fn(sde)), x, sde.T, sde.eps, rtol=1e-10, atol=1e-10).x
    return out


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("name, order, _, steps", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_order_of_convergence_mixture(sde, name, order, _, steps, mixture_references):
    x, ref = mixture_references[sde.name]
    p, errors = measured_order(name, MIX.score_fn(sde), sde, x, ref, steps)
    assert abs(p - order) < TOL_ORDER, f"{name} on {sde.name}: order {p:.2f}, errors {errors}"


@pytest.mark.parametrize("sde", SDES[1:], ids=IDS[1:])
def test_euler_probability_flow_is_first_order(sde, mixture_references):
    """The core's Euler on the probability-flow ODE in t (uniform t; on VE it leaves the
    pre-asymptotic regime only beyond 512 steps, so VP and sub-VP only)."""
    x, ref = mixture_references[sde.name]
    steps = (128, 256, 512)
    errors = [rms(get_sampler("ode_euler")(MIX.score_fn(sde), sde, x, steps=k).samples, ref) for k in steps]
    assert abs(fitted_order(errors, steps) - 1) < TOL_ORDER, errors


# --- exactness on a point mass -----------------------------------------------------------------
MU = torch.tensor([0.7, -0.4], dtype=torch.float64)
POINT = GaussianMixture.gaussian(MU, 1e-14 * torch.eye(2, dtype=torch.float64))


def point_flow(sde, x, t_from, t_to):
    """x(t) = alpha_t mu + std_t (x(s) - alpha_s mu) / std_s: the flow of a point mass."""
    t0, t1 = torch.tensor(t_from, dtype=torch.float64), torch.tensor(t_to, dtype=torch.float64)
    a0, s0, a1, s1 = (float(v) for v in (sde.alpha(t0), sde.std(t0), sde.alpha(t1), sde.std(t1)))
    return a1 * MU + s1 * (x - a0 * MU) / s0


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("name", ["ddim", "dpmpp2m", "dpmpp3m", "dpmpp2s", "heun"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_point_mass_is_solved_exactly(sde, name, steps):
    x = prior_points(sde, n=8)
    for schedule in ("uniform_t", "log_snr", "edm"):
        out = get_sampler(name)(POINT.score_fn(sde), sde, x, steps=steps, schedule=schedule).samples
        assert rms(out, point_flow(sde, x, sde.T, sde.eps)) < 1e-8 * (1 + float(x.abs().max()))


def _mean_var_check(samples, mean, var):
    """Sample mean and per-coordinate variance within 4 standard errors of (mean, var)."""
    n = samples.shape[0]
    se_mean = math.sqrt(var / n)
    assert (samples.mean(0) - mean).abs().max() < 4 * se_mean
    assert (samples.var(0) - var).abs().max() < 4 * var * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_eta_step_is_the_forward_posterior(sde, eta):
    """One DDIM step t -> s with x(0) known exactly: eta = 1 draws from q(x_s | x_t, x0), whose law is
    N((a std_s^2 x_t + alpha_s G^2 x0) / std_t^2, std_s^2 G^2 / std_t^2) with (a, G) = sde.transition(t, s)
    (the DDPM posterior); eta scales its standard deviation."""
    n, t, s = 20000, 1.0, 0.3
    x_t = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(n, 2)
    out = ddim(POINT.score_fn(sde), sde, x_t, steps=1, eta=eta, eps=s, schedule="uniform_t",
               generator=torch.Generator().manual_seed(2)).samples
    tt, ss = torch.tensor([t], dtype=torch.float64), torch.tensor([s], dtype=torch.float64)
    a, G = (float(v) for v in sde.transition(tt, ss))
    std_t, std_s, alpha_s = float(sde.std(tt)), float(sde.std(ss)), float(sde.alpha(ss))
    post_var = std_s**2 * G**2 / std_t**2
    c2 = eta**2 * post_var
    # the rest of DDIM's step keeps the posterior's marginal: sqrt(std_s^2 - c^2) along eps_hat
    mean = alpha_s * MU + math.sqrt(std_s**2 - c2) * (x_t[0] - float(sde.alpha(tt)) * MU) / std_t
    if eta == 1.0:
        assert torch.allclose(mean, (a * std_s**2 * x_t[0] + alpha_s * G**2 * MU) / std_t**2, rtol=1e-10)
    _mean_var_check(out, mean, c2)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_heun_churn_adds_the_stated_noise(sde):
    """Two steps on a point mass, churn only at the second level: x_hat - mu scales by sigma_1 / sigma_0,
    gains sqrt(sigma_hat^2 - sigma_1^2) s_noise z, then scales by sigma_2 / sigma_hat."""
    n, churn, s_noise = 20000, 0.5, 1.1
    grid = make_schedule("uniform_t").grid(sde, 2)
    sig = [float(v) for v in grid.sigma]
    sig_hat = sig[1] * (1 + churn / 2)
    x = torch.tensor([[2.0, 1.0]], dtype=torch.float64).expand(n, 2) * float(grid.alpha[0]) * sig[0] / 3
    out = edm_heun(POINT.score_fn(sde), sde, x, steps=2, schedule="uniform_t", churn=churn,
                   churn_range=(0.0, sig[1] * 1.000001), s_noise=s_noise, generator=torch.Generator().manual_seed(3))
    a_end = float(grid.alpha[-1])
    xh0 = x[0] / float(grid.alpha[0])
    mean = a_end * (MU + sig[2] / sig_hat * sig[1] / sig[0] * (xh0 - MU))
    std = a_end * sig[2] / sig_hat * math.sqrt(sig_hat**2 - sig[1] ** 2) * s_noise
    assert out.nfe == 2 * 2 - 1
    _mean_var_check(out.samples, mean, std**2)


# --- bookkeeping --------------------------------------------------------------------------------
class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.mark.parametrize("name, options, nfe", [
    ("ddim", {}, lambda k: k), ("ddim", {"eta": 1.0}, lambda k: k),
    ("dpmpp2m", {}, lambda k: k), ("dpmpp3m", {}, lambda k: k), ("dpmpp2s", {}, lambda k: 2 * k),
    ("heun", {}, lambda k: 2 * k - 1), ("heun", {"final_euler": False}, lambda k: 2 * k),
    ("heun", {"churn": 5.0}, lambda k: 2 * k - 1),
])
@pytest.mark.parametrize("steps", [1, 4, 7])
@pytest.mark.parametrize("denoise", [False, True])
def test_nfe_is_exact(name, options, nfe, steps, denoise):
    sde = VPSDE()
    fn = Counter(MIX.score_fn(sde))
    res = get_sampler(name)(fn, sde, prior_points(sde, n=4), steps=steps, denoise=denoise,
                            generator=torch.Generator().manual_seed(0), **options)
    assert res.nfe == fn.calls == nfe(steps) + int(denoise)


def test_registry_names():
    assert get_sampler("ddim") is ddim and get_sampler("dpm++2m") is dpm_solver_2m
    assert get_sampler("DPM++3M") is dpm_solver_3m and get_sampler("dpm++2s") is dpm_solver_2s
    assert get_sampler("heun") is edm_heun and get_sampler("edm") is edm_heun
    assert {"ddim", "dpmpp2m", "dpmpp3m", "dpmpp2s", "heun"} <= set(SAMPLERS)


@pytest.mark.parametrize("name", ["ddim", "dpm++2m", "dpm++3m", "dpm++2s", "heun"])
def test_images_trajectories_and_dtype(name):
    """Image-shaped state (N, C, H, W) in float32, pixels i.i.d. N(0, v): exact score -x / (alpha^2 v + std^2)."""
    sde, v, K = VPSDE(), 0.25, 6
    score = lambda x, t: -x / (sde.alpha(t) ** 2 * v + sde.std(t) ** 2).reshape(-1, 1, 1, 1)  # noqa: E731
    res = sample(score, sde, (3, 2, 4, 4), sampler=name, steps=K, return_trajectory=True,
                 generator=torch.Generator().manual_seed(0))
    assert isinstance(res, SampleResult) and res.samples.shape == (3, 2, 4, 4) and res.samples.dtype == torch.float32
    assert res.trajectory.shape == (K + 1, 3, 2, 4, 4) and res.times.shape == (K + 1,)
    assert float(res.times[0]) == sde.T and float(res.times[-1]) == pytest.approx(sde.eps)
    assert torch.equal(res.trajectory[-1], res.samples)


@pytest.mark.parametrize("call, match", [
    (lambda: ddim(None, VPSDE(), torch.zeros(2, 2), steps=3, eta=1.5), r"eta must be a number in \[0, 1\]"),
    (lambda: edm_heun(None, VPSDE(), torch.zeros(2, 2), steps=3, churn=-1), "churn must be a number >= 0"),
    (lambda: edm_heun(None, VPSDE(), torch.zeros(2, 2), steps=3, s_noise=-1), "s_noise must be a number >= 0"),
    (lambda: dpm_solver_2m(None, VPSDE(), torch.zeros(2, 2), steps=3, schedule="cosine"), "unknown schedule 'cosine'"),
    (lambda: dpm_solver_3m(None, VPSDE(), torch.zeros(2, 2), steps=0), "steps must be a positive integer"),
])
def test_bad_options_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name", ["ddim", "dpm++2m", "dpm++3m", "dpm++2s", "heun", "ode_euler", "ode_heun",
                                  "euler_maruyama", "reverse_diffusion", "ancestral", "pc"])
@pytest.mark.parametrize("budget", [7, 20])
def test_steps_for_nfe_is_the_largest_count_within_the_budget(name, budget):
    sde = VPSDE()
    nfe = lambda k: get_sampler(name)(MIX.score_fn(sde), sde, prior_points(sde, n=2), steps=k,  # noqa: E731
                                      generator=torch.Generator().manual_seed(0)).nfe
    k = steps_for_nfe(name, budget)
    assert nfe(k) <= budget < nfe(k + 1)


def test_steps_for_nfe_refuses_adaptive_samplers_and_tiny_budgets():
    with pytest.raises(ValueError, match="no fixed number of evaluations per step"):
        steps_for_nfe("ode", 50)
    with pytest.raises(ValueError, match="below one step"):
        steps_for_nfe("dpm++2s", 1)
