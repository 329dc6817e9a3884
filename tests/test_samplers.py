"""Every sampler, driven by the exact score of the seed mixture, reproduces the mixture.

The mixture is standardized (as the training pipeline standardizes data) so that each process's
prior matches its p_T. Energy distance at n = 2000 against 5000 fresh mixture samples is compared
with the same statistic for fresh mixture samples of size 2000 (the noise floor); component shares
must be within 3 points of 1/3 (2.8 binomial standard errors at n = 2000).
"""
import math

import pytest
import torch

from scoregen.evaluation.metrics import energy_distance
from scoregen.process.distributions import GaussianMixture, seed_mixture
from scoregen.process.sde import NoiseLadder, SubVPSDE, VESDE, VPSDE
from scoregen.sampling import samplers as S

N, N_REF = 2000, 5000


@pytest.fixture(scope="module")
def target():
    m0 = seed_mixture()
    scale = float(m0.covariance().trace() / m0.dim) ** 0.5
    m = m0.affine(m0.mean(), scale)
    g = torch.Generator().manual_seed(0)
    ref = m.sample(N_REF, generator=g)
    floor = torch.tensor([energy_distance(m.sample(N, generator=g), ref) for _ in range(20)])
    return m, ref, float(torch.quantile(floor, 0.95))


SDES = {"ve": VESDE(0.003, 10.0), "vp": VPSDE(), "subvp": SubVPSDE(), "ladder": NoiseLadder(10.0, 0.003, 100)}
CASES = [
    ("euler_maruyama", {"steps": 500}), ("reverse_diffusion", {"steps": 500}), ("ancestral", {"steps": 500}),
    ("pc", {"steps": 250}), ("ode", {}), ("ode_heun", {"steps": 50}), ("ode_euler", {"steps": 400}),
    ("annealed_langevin", {}),
]


def _check(target, sde, name, opts):
    m, ref, floor95 = target
    sf = m.score_fn(sde)
    res = S.sample(sf, sde, (N, 2), name, generator=torch.Generator().manual_seed(1), dtype=torch.float64, **opts)
    assert res.samples.shape == (N, 2) and torch.isfinite(res.samples).all()
    ed = energy_distance(res.samples, ref)
    shares = torch.bincount(m.classify(res.samples), minlength=3).double() / N
    assert ed < 3 * floor95, f"{name} on {sde!r}: energy distance {ed:.5f} vs floor95 {floor95:.5f}"
    assert (shares - 1 / 3).abs().max() < 0.03, f"{name} on {sde!r}: shares {shares.tolist()}"
    return res


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name,opts", CASES, ids=[c[0] for c in CASES])
def test_sampler_reproduces_mixture(target, sde_name, name, opts):
    sde = SDES[sde_name]
    if name == "ancestral" and sde_name == "subvp":
        with pytest.raises(S.SamplerNotApplicable, match="ancestral"):
            S.sample(lambda x, t: x, sde, (4, 2), name)
        return
    res = _check(target, sde, name, opts)
    if name in ("euler_maruyama", "reverse_diffusion", "ode_euler"):
        assert res.nfe == opts["steps"]
    if name == "ode_heun":
        assert res.nfe == 2 * opts["steps"]


@pytest.mark.parametrize("predictor", ["euler_maruyama", "ancestral"])
def test_pc_with_other_predictors(target, predictor):
    _check(target, SDES["vp"], "pc", {"steps": 250, "predictor": predictor})


def test_nfe_counts_every_evaluation(target):
    m = target[0]
    calls = {"n": 0}
    sde = SDES["ve"]

    def counting(x, t):
        calls["n"] += 1
        return m.score_fn(sde)(x, t)

    for name, opts in [("pc", {"steps": 20, "corrector_steps": 2}), ("ode", {}), ("annealed_langevin", {"levels": 5, "steps": 3}),
                       ("langevin", {"steps": 7})]:
        calls["n"] = 0
        res = S.sample(counting, sde, (16, 2), name, dtype=torch.float64, **opts)
        assert res.nfe == calls["n"], name
    assert S.sample(counting, sde, (16, 2), "pc", steps=20, corrector_steps=2).nfe == 60


def test_trajectory_is_recorded(target):
    m = target[0]
    sde = SDES["vp"]
    res = S.sample(m.score_fn(sde), sde, (8, 2), "euler_maruyama", steps=30, return_trajectory=True)
    assert res.trajectory.shape == (31, 8, 2) and res.times.shape == (31,)
    assert torch.equal(res.trajectory[-1], res.samples)
    assert res.times[0] == pytest.approx(1.0) and res.times[-1] == pytest.approx(sde.eps)


def test_langevin_samples_a_gaussian():
    """Plain Langevin needs no annealing on a unimodal target: mean and covariance within 5 SE
    (plus the O(step) bias of the unadjusted chain: its stationary covariance is
    S (I - e S^{-1} / 2)^{-1}, within e / (2 lambda_min) = 1.7% of S at e = 0.01)."""
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    g = GaussianMixture.gaussian(mean, cov)
    sde = VESDE(0.001, 10.0)
    n = 4000
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    res = S.langevin(lambda x, t: g.score(x), sde, x0, steps=3000, step_size=0.01,
                     generator=torch.Generator().manual_seed(4))
    x = res.samples
    se = (torch.diagonal(cov) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    emp = torch.cov(x.T)
    assert torch.allclose(emp, cov, atol=5 * float(cov.max()) * math.sqrt(2 / n) + 0.02 * float(cov.max()))


def test_langevin_does_not_mix_between_modes_but_keeps_them(target):
    """Started from the mixture itself, Langevin keeps it (stationarity), shares within 3 points."""
    m, ref, floor95 = target
    x0 = m.sample(N, generator=torch.Generator().manual_seed(5))
    res = S.langevin(lambda x, t: m.score(x), SDES["ve"], x0, steps=300, snr=0.05, generator=torch.Generator().manual_seed(6))
    shares = torch.bincount(m.classify(res.samples), minlength=3).double() / N
    assert (shares - 1 / 3).abs().max() < 0.03
    assert energy_distance(res.samples, ref) < 3 * floor95


def test_ald_step_size_minimises_variance_ratio():
    gamma, T = 1.1, 10
    e = S.ald_step_size(gamma, 1.0, T)

    def ratio(u):
        return (1 - u) ** (2 * T) * (gamma**2 - 2 / (2 - u)) + 2 / (2 - u)

    assert ratio(e) <= min(ratio(e * 0.9), ratio(e * 1.1))
    assert 1.0 < ratio(e) < gamma**2
    with pytest.raises(ValueError, match="gamma"):
        S.ald_step_size(0.9, 1.0, 10)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="unknown sampler 'bogus'.*annealed_langevin"):
        S.get_sampler("bogus")
    assert S.get_sampler("ALD") is S.annealed_langevin and S.get_sampler("predictor-corrector") is S.predictor_corrector


def test_bad_options_are_named():
    sde = SDES["ve"]
    with pytest.raises(ValueError, match="predictor 'nope'"):
        S.sample(lambda x, t: x, sde, (4, 2), "pc", predictor="nope")
    with pytest.raises(ValueError, match="ODE method 'rk99'"):
        S.sample(lambda x, t: x, sde, (4, 2), "ode", method="rk99")
    with pytest.raises(ValueError, match="steps"):
        S.sample(lambda x, t: x, sde, (4, 2), "euler_maruyama", steps=0)


def test_samplers_work_on_image_shapes():
    """Shapes stay generic: a Gaussian over (N, 1, 4, 4) images, exact score, every sampler runs."""
    g = GaussianMixture.gaussian(torch.zeros(16), torch.eye(16) * 0.25)
    sde = VPSDE()
    sf16 = g.score_fn(sde)

    def sf(x, t):
        return sf16(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    for name in S.sampler_names():
        res = S.sample(sf, sde, (6, 1, 4, 4), name, steps=5) if name not in ("ode",) else S.sample(sf, sde, (6, 1, 4, 4), name)
        assert res.samples.shape == (6, 1, 4, 4) and torch.isfinite(res.samples).all(), name
