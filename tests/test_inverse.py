"""Inverse problems against closed forms: operators (adjoints, exact gram solves), exact mixture posteriors and
conditionals, PiGDM's exactness for an isotropic Gaussian prior, imputation of a 2-D mixture against the exact
1-D conditional, SDEdit's Gaussian output law, and the errors."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from scoregen.steering import operators as O
from scoregen.process.distributions import GaussianMixture, seed_mixture
from scoregen.steering.inverse import (dps, dps_score, impute, mixture_conditional, mixture_posterior, pigdm_score,
                              posterior_score, repaint_schedule, sdedit)
from scoregen.process.sde import VESDE, VPSDE
from scoregen.sampling.samplers import reverse_diffusion

CHI2_P = 1e-3


def _mean_chi2_ok(x, mean, cov):
    """N (xbar - m)^T C^{-1} (xbar - m) ~ chi2_D: below its 1 - 1e-3 quantile."""
    d = x.mean(0) - torch.as_tensor(mean, dtype=x.dtype)
    q = float(x.shape[0] * d @ torch.linalg.solve(torch.as_tensor(cov, dtype=x.dtype), d))
    return q < stats.chi2.ppf(1 - CHI2_P, x.shape[1]), q


def _cov_ok(x, cov, z=4.5):
    """Every sample-covariance entry within z standard errors, Var(S_ij) = (C_ii C_jj + C_ij^2) / N."""
    c = torch.as_tensor(cov, dtype=x.dtype)
    se = torch.sqrt((torch.outer(c.diagonal(), c.diagonal()) + c**2) / x.shape[0])
    err = (torch.cov(x.T) - c) / se
    return bool((err.abs() <= z).all()), err


def _gaussian_score(prior, sde):
    """A differentiable exact score (GaussianMixture.score_fn detaches its input)."""
    return lambda x, t: prior.score(x, sde.alpha(t), sde.std(t))


# --- operators --------------------------------------------------------------------------------------------
def _image_ops():
    shape = (2, 6, 6)
    return [O.make_operator("inpaint-random", shape, keep=0.4, seed=1), O.make_operator("inpaint-box", shape),
            O.make_operator("superres", shape, factor=2), O.make_operator("blur", shape, sigma=1.0),
            O.make_operator("colorize", shape), O.MatrixOperator(torch.randn(5, 72, dtype=torch.float64), shape)]


def _dense(op):
    """The matrix of op, column by column."""
    d = math.prod(op.in_shape)
    basis = torch.eye(d, dtype=torch.float64).reshape((d,) + op.in_shape)
    return op(basis).reshape(d, -1).T


@pytest.mark.parametrize("op", _image_ops(), ids=lambda o: o.name)
def test_operator_adjoint_and_gram_solve(op):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((3,) + op.in_shape, generator=g, dtype=torch.float64)
    y = torch.randn((3,) + op.out_shape, generator=g, dtype=torch.float64)
    lhs, rhs = (op(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    if isinstance(op, O.BlurOperator):
        return  # its gram_solve is the stated scalar approximation
    A = _dense(op)
    r = op(x)  # in A's range (a mask's solve is defined there)
    lam = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    got = op.gram_solve(r, lam, 0.3).reshape(3, -1)
    for i in range(3):
        want = torch.linalg.lstsq(0.3 * torch.eye(A.shape[0], dtype=A.dtype) + lam[i] * A @ A.T, r[i].reshape(-1)).solution
        assert torch.allclose(A.T @ got[i], A.T @ want, atol=1e-10)


def test_function_operator_gram_by_power_iteration():
    A = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op = O.FunctionOperator(lambda x: x.double() @ A.T, lambda y: y.double() @ A, (5,), (3,))
    assert op.gram == pytest.approx(float(torch.linalg.eigvalsh(A @ A.T).max()), rel=1e-4)


def test_operator_and_mask_errors():
    op = O.make_operator("superres", (1, 28, 28), factor=2)
    with pytest.raises(ValueError, match=r"acts on examples of shape \(1, 28, 28\).*\(1, 32, 32\)"):
        op(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="factor 3 must divide"):
        O.make_operator("superres", (1, 28, 28), factor=3)
    with pytest.raises(ValueError, match="unknown operator 'warp'"):
        O.make_operator("warp", (1, 28, 28))
    with pytest.raises(ValueError, match="does not fit"):
        O.box_mask((1, 8, 8), (4, 4, 6, 2))
    sde = VPSDE()
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"mask has shape \(1, 8, 7\).*\(1, 8, 8\)"):
        impute(lambda x, t: -x, sde, x, observed=x, mask=torch.ones(1, 8, 7), steps=2)
    with pytest.raises(ValueError, match="only 0"):
        O.check_mask(torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"measurements of shape \(2,\)"):
        posterior_score(lambda x, t: -x, sde, O.MatrixOperator(torch.ones(2, 3)), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="sigma_y > 0"):
        posterior_score(lambda x, t: -x, sde, O.MatrixOperator(torch.ones(2, 3)), torch.zeros(2), 0.0, inflate=False)


# --- exact references ----------------------------------------------------------------------------------------
def test_mixture_posterior_is_prior_times_likelihood():
    """log p(x | y) - log p(x) - log N(y; A x, s^2 I) is the same constant (-log p(y)) at every x."""
    mix = seed_mixture()
    A = np.array([[1.0, 0.5]])
    y, s = np.array([2.0]), 0.7
    post = mixture_posterior(mix, A, y, s)
    x = torch.randn(50, 2, dtype=torch.float64) * 4
    loglik = -0.5 * ((y[0] - x @ torch.tensor(A[0])) ** 2 / s**2 + math.log(2 * math.pi * s**2))
    c = post.log_prob(x) - mix.log_prob(x) - loglik
    assert float(c.max() - c.min()) < 1e-9


def test_mixture_conditional_is_the_joint_slice():
    mix = seed_mixture()
    cond = mixture_conditional(mix, [0], [1.5])
    x2 = torch.linspace(-3, 10, 40, dtype=torch.float64)[:, None]
    joint = mix.log_prob(torch.cat([torch.full_like(x2, 1.5), x2], 1))
    c = cond.log_prob(x2) - joint
    assert float(c.max() - c.min()) < 1e-9


# --- linear inverse problems ----------------------------------------------------------------------------------
def _gaussian_problem(v=2.0):
    g = torch.Generator().manual_seed(1)
    A = torch.randn(2, 4, generator=g, dtype=torch.float64)
    prior = GaussianMixture.gaussian([0.5, -0.3, 0.2, 0.1], v * np.eye(4))
    y, sy = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3
    return prior, A, y, sy, mixture_posterior(prior, A, y, sy)


@pytest.mark.parametrize("jacobian", ["autograd", "isotropic"])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 10.0)], ids=["vp", "ve"])
def test_pigdm_score_is_the_exact_posterior_score_for_an_isotropic_gaussian_prior(sde, jacobian):
    """For x ~ N(m, v I), x(0) | x(t) is N(x0_hat, r_t^2 I) exactly, so PiGDM's score is grad log p_t(x | y)."""
    prior, A, y, sy, post = _gaussian_problem()
    fn = pigdm_score(_gaussian_score(prior, sde), sde, O.MatrixOperator(A), y, sy, data_var=2.0, jacobian=jacobian)
    g = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(40, 4, generator=g, dtype=torch.float64)
    t = sde.eps + (1 - sde.eps) * torch.rand(40, generator=g, dtype=torch.float64)
    assert torch.allclose(fn(x, t), post.score(x, sde.alpha(t), sde.std(t)), atol=1e-9)


def test_posterior_scores_reduce_to_each_other_under_a_flat_prior():
    """With s = 0, x0_hat = x / alpha: DPS's score is the seed's (inflate=False) and PiGDM with v -> inf the
    noise-inflated one (r_t^2 -> sigma(t)^2)."""
    sde, op = VPSDE(), O.MatrixOperator(torch.randn(2, 3, dtype=torch.float64))
    y, sy, zero = torch.tensor([0.3, -1.0], dtype=torch.float64), 0.2, (lambda x, t: torch.zeros_like(x))
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.linspace(0.05, 0.9, 6, dtype=torch.float64)
    assert torch.allclose(dps_score(zero, sde, op, y, sy)(x, t), posterior_score(zero, sde, op, y, sy, inflate=False)(x, t))
    assert torch.allclose(pigdm_score(zero, sde, op, y, sy, data_var=1e12)(x, t),
                          posterior_score(zero, sde, op, y, sy)(x, t), rtol=1e-8)


def test_pigdm_samples_the_gaussian_posterior():
    sde, n = VPSDE(), 2000
    prior, A, y, sy, post = _gaussian_problem()
    fn = pigdm_score(_gaussian_score(prior, sde), sde, O.MatrixOperator(A), y, sy, data_var=2.0)
    g = torch.Generator().manual_seed(0)
    out = reverse_diffusion(fn, sde, sde.prior_sample((n, 4), generator=g, dtype=torch.float64), steps=300,
                            generator=g).samples
    ok, q = _mean_chi2_ok(out, post.means[0], post.covs[0])
    assert ok, q
    ok, z = _cov_ok(out, post.covs[0])
    assert ok, z


def test_dps_sampler_zeta_zero_is_reverse_diffusion_and_zeta_moves_toward_the_data():
    sde, n = VPSDE(), 500
    prior, A, y, sy, post = _gaussian_problem()
    score, op = _gaussian_score(prior, sde), O.MatrixOperator(A)

    def run(fn, **kw):
        g = torch.Generator().manual_seed(4)
        return fn(score, sde, sde.prior_sample((n, 4), generator=g, dtype=torch.float64), steps=100, generator=g, **kw)

    plain = run(reverse_diffusion).samples
    assert torch.allclose(run(dps, operator=op, y=y, zeta=0.0).samples, plain, atol=1e-12)
    guided = run(dps, operator=op, y=y, zeta=0.5).samples
    resid = lambda x: (x @ A.T - y).norm(dim=1).mean()  # noqa: E731
    assert resid(guided) < 0.5 * resid(plain)


# --- imputation ------------------------------------------------------------------------------------------------
def test_repaint_schedule():
    assert repaint_schedule(5) == [0, 1, 2, 3, 4, 5]
    path = repaint_schedule(20, resample=3, jump=4)
    assert path[0] == 0 and path[-1] == 20 and all(abs(b - a) == 1 for a, b in zip(path, path[1:]))
    # levels 4, 8, 12, 16 (from eps) are each revisited twice by a jump of 4 up and 4 down
    assert len(path) - 1 == 20 + 4 * 2 * 2 * 4


def _ks_critical(n, p=CHI2_P):
    """The asymptotic Kolmogorov-Smirnov critical value sqrt(-ln(p / 2) / 2) / sqrt(n)."""
    return math.sqrt(-math.log(p / 2) / 2) / math.sqrt(n)


def test_imputation_of_a_mixture_matches_the_exact_conditional():
    """Observe x_1 = 0.5 of the seed mixture: x_2 | x_1 is a 1-D mixture (here essentially one component).
    RePaint's resampling with Langevin corrections reaches it within the KS noise floor; plain replacement
    (one pass, no corrector) does not: at high noise the noised x_1 says little, and x_2 commits to the
    wrong components (the known bias of the replacement method)."""
    mix, sde, n, x1 = seed_mixture(), VPSDE(), 1000, 0.5
    cond = mixture_conditional(mix, [0], [x1])
    w, mu, var = cond.weights.numpy(), cond.means[:, 0].numpy(), cond.covs[:, 0, 0].numpy()
    cdf = lambda v: sum(wk * stats.norm.cdf(v, m, math.sqrt(s)) for wk, m, s in zip(w, mu, var))  # noqa: E731

    def ks(**options):
        g = torch.Generator().manual_seed(0)
        x = sde.prior_sample((n, 2), generator=g, dtype=torch.float64)
        out = impute(mix.score_fn(sde), sde, x, observed=torch.tensor([x1, 0.0]), mask=torch.tensor([1.0, 0.0]),
                     generator=g, **options).samples
        assert torch.equal(out[:, 0], torch.full((n,), x1, dtype=torch.float64))
        return stats.kstest(out[:, 1].numpy(), cdf).statistic

    crit = _ks_critical(n)
    assert ks(steps=60, resample=8, corrector="langevin") < crit
    assert ks(steps=60, corrector="none") > 3 * crit


def test_inpainting_images_keeps_the_observation():
    sde = VESDE(0.01, 5.0)
    g = torch.Generator().manual_seed(0)
    obs = torch.rand(3, 1, 8, 8, generator=g)
    mask = O.box_mask((1, 8, 8))
    out = impute(lambda x, t: -x / (1 + sde.std(t)[:, None, None, None] ** 2), sde,
                 sde.prior_sample(obs.shape, generator=g), observed=obs, mask=mask, steps=20, generator=g,
                 resample=2, jump=2)
    assert torch.equal(out.samples * mask, obs * mask)
    moves = len(repaint_schedule(20, 2, 2)) - 1
    assert out.nfe == 2 * (moves + 20) // 2  # one corrector and one predictor call per downward move


# --- SDEdit ----------------------------------------------------------------------------------------------------
def test_sdedit_output_law_for_a_gaussian_prior():
    """With exact scores the reverse SDE from x(t0) samples x(0) | x(t0), so for the prior N(m, S) and a fixed
    input u the output is N(m + a K (u - m), s^2 K K^T + S - a K S), K = a S (a^2 S + s^2 I)^{-1}, with
    a = alpha(t0), s = std(t0)."""
    sde, n, t0 = VPSDE(), 2000, 0.35
    m, S = np.array([0.5, -1.0]), np.array([[1.0, 0.4], [0.4, 0.5]])
    prior = GaussianMixture.gaussian(m, S)
    u = torch.tensor([3.0, 1.0], dtype=torch.float64)
    tt = torch.tensor(t0, dtype=torch.float64)
    a, s = float(sde.alpha(tt)), float(sde.std(tt))
    St, mt = torch.tensor(S), torch.tensor(m)
    K = a * St @ torch.linalg.inv(a**2 * St + s**2 * torch.eye(2, dtype=torch.float64))
    mean = mt + a * K @ (u - mt)
    cov = s**2 * K @ K.T + St - a * K @ St
    g = torch.Generator().manual_seed(0)
    out = sdedit(prior.score_fn(sde), sde, u.expand(n, 2), t0=t0, steps=200, generator=g).samples
    ok, q = _mean_chi2_ok(out, mean, cov)
    assert ok, q
    ok, z = _cov_ok(out, cov)
    assert ok, z
    with pytest.raises(ValueError, match="t0 must lie in"):
        sdedit(prior.score_fn(sde), sde, u[None], t0=1.5)
