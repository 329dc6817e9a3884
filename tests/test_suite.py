"""The point-data generalisation suite: every member's exact sampler agrees with its exact density.

Agreement is checked by importance sampling: with a proposal q that covers p (a product of
Student-t with 2 degrees of freedom around the samples' mean, 1.5 times their spread), for exact
draws x_i ~ p and proposal draws u_j ~ q,

    E_q[p(u) / q(u)] = 1,    E_q[u p(u) / q(u)] = E_p[x],    E_q[log p(u) p(u) / q(u)] = E_p[log p(x)],

so the density's normalisation, mean and entropy are compared with the sampler's, each within 4
standard errors of the difference (both estimates' errors measured from the same draws).
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from scoregen.data.suite import SUITE, student_t_product, uniform_annulus, uniform_box

N_DRAWS = 40_000
N_PROPOSAL = 200_000
Z = 4.0


def _proposal(x, rng):
    """(draws, log q) of a product of scaled t_2 around the mean of x, 1.5 x its per-coordinate spread."""
    loc, scale = x.mean(0), 1.5 * x.std(0)
    u = loc + scale * rng.standard_t(2.0, size=(N_PROPOSAL, x.shape[1]))
    logq = stats.t.logpdf((u - loc) / scale, 2.0).sum(1) - np.log(scale).sum()
    return u, logq


def _mean_se(v):
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


LOW_DIM_WITH_DENSITY = [n for n, m in SUITE.items() if m.log_prob is not None and m.dim <= 3]


@pytest.mark.parametrize("name", LOW_DIM_WITH_DENSITY)
def test_sampler_and_density_agree_by_importance_sampling(name):
    m = SUITE[name]
    rng = np.random.default_rng(1)
    x = m.draw(N_DRAWS, 7)
    u, logq = _proposal(x, rng)
    lp_u = m.log_prob(u)
    w = np.exp(lp_u - logq)  # zero outside a bounded support (log p = -inf)
    total, total_se = _mean_se(w)
    assert abs(total - 1.0) < Z * total_se + 1e-12, f"{name}: the density integrates to {total:.4f} ± {total_se:.4f}"
    for i in range(m.dim):
        a, a_se = _mean_se(x[:, i])
        b, b_se = _mean_se(u[:, i] * w)
        assert abs(a - b) < Z * math.hypot(a_se, b_se), f"{name}: coordinate {i} mean {a:.4f} vs density's {b:.4f}"
    lp_x = m.log_prob(x)
    assert np.isfinite(lp_x).all(), f"{name}: exact draws outside the density's support"
    a, a_se = _mean_se(lp_x)
    b, b_se = _mean_se(np.where(w > 0, lp_u, 0.0) * w)
    assert abs(a - b) < Z * math.hypot(a_se, b_se), f"{name}: E log p {a:.4f} (sampler) vs {b:.4f} (density)"


@pytest.mark.parametrize("name", [n for n, m in SUITE.items() if m.mixture is not None])
def test_mixture_members_draw_their_mixture(name):
    """Sample mean and covariance of the draws match the mixture's closed forms (4 SE)."""
    m = SUITE[name]
    x = torch.as_tensor(m.draw(N_DRAWS, 3))
    mean, cov = m.mixture.mean(), m.mixture.covariance()
    se = (torch.diagonal(cov) / N_DRAWS).sqrt()
    assert ((x.mean(0) - mean).abs() <= Z * se).all()
    # Var of the sample variance of coordinate i is about (m4 - s^4) / n; bound m4 by the draws' own
    xc = x - x.mean(0)
    var_se = ((xc**4).mean(0) - xc.var(0) ** 2).clamp(min=0).div(N_DRAWS).sqrt()
    assert ((xc.var(0) - torch.diagonal(cov)).abs() <= Z * var_se).all()
    lp = torch.as_tensor(m.log_prob(x[:100].numpy()))
    assert torch.allclose(lp, m.mixture.log_prob(x[:100]), rtol=1e-12, atol=0)


def test_suite_covers_the_required_shapes():
    dims = {m.dim for m in SUITE.values()}
    assert {1, 2, 3, 5, 10, 20} <= dims
    assert len(SUITE) >= 16
    assert {200, 2000, 20000} <= {m.n_train for m in SUITE.values()}
    weights = [m.mixture.weights for m in SUITE.values() if m.mixture is not None]
    assert any(float(w.max() / w.min()) >= 10 for w in weights)  # very unequal weights
    assert any(m.mixture.n_components >= 16 for m in SUITE.values() if m.mixture is not None)
    conds = [float(torch.linalg.cond(c)) for m in SUITE.values() if m.mixture is not None for c in m.mixture.covs]
    assert max(conds) >= 100
    for name, m in SUITE.items():
        x = m.train_data()
        assert x.shape == (m.n_train, m.dim), name
        assert np.array_equal(x, m.train_data()), f"{name}: the training set must be reproducible"


def test_student_t_product_matches_scipy():
    draw, log_prob = student_t_product(3, dof=3.0, scale=2.0)
    x = draw(50, 0)
    expect = stats.t.logpdf(x / 2.0, 3.0).sum(1) - 3 * math.log(2.0)
    np.testing.assert_allclose(log_prob(x), expect, rtol=1e-12)


def test_bounded_supports():
    _, lp_box = uniform_box([0.0, -1.0], [2.0, 1.0])
    assert lp_box(np.array([[1.0, 0.0]]))[0] == pytest.approx(-math.log(4.0))
    assert lp_box(np.array([[2.5, 0.0]]))[0] == -np.inf
    draw, lp_ring = uniform_annulus(1.0, 2.0)
    r = np.linalg.norm(draw(10_000, 0), axis=1)
    assert r.min() >= 1.0 and r.max() <= 2.0
    # P(|x| <= 1.5) = (1.5^2 - 1) / (2^2 - 1) for the uniform law on the annulus
    p = (1.5**2 - 1) / 3
    assert abs((r <= 1.5).mean() - p) < Z * math.sqrt(p * (1 - p) / len(r))
    assert lp_ring(np.array([[0.5, 0.0], [1.5, 0.0]])).tolist() == [-np.inf, -math.log(3 * math.pi)]
