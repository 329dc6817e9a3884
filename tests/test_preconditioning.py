"""EDM preconditioning: coefficients, the denoiser <-> score algebra, and the loss, against closed forms.

For Gaussian data N(m, S) the exact denoiser is D*(x_hat; sigma) = m + S (S + sigma^2 I)^{-1} (x_hat - m),
so an "oracle" network that inverts the preconditioning must give back the exact score of every process.
"""
import math

import pytest
import torch
from torch import nn

from scoregen.models.edm import EDMModel, edm_coefficients, estimate_sigma_data, model_from_config
from scoregen.models.nets import build_net
from scoregen.process.distributions import GaussianMixture
from scoregen.process.schedules import t_from_sigma
from scoregen.process.sde import SubVPSDE, VESDE, VPSDE
from scoregen.training.losses import EDMLoss

SDES = [VESDE(), VPSDE(), SubVPSDE()]
IDS = ["ve", "vp", "subvp"]
MEAN = torch.tensor([0.5, -1.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
GAUSS = GaussianMixture.gaussian(MEAN, COV)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def exact_denoiser(x_hat, sigma):
    """m + S (S + sigma^2 I)^{-1} (x_hat - m), per example."""
    eye = torch.eye(2)
    A = COV @ torch.linalg.inv(COV + sigma[:, None, None] ** 2 * eye)  # (N, 2, 2)
    return MEAN + torch.einsum("nij,nj->ni", A, x_hat - MEAN)


class OracleNet(nn.Module):
    """F = (D* - c_skip x_hat) / c_out, recovered from its inputs c_in x_hat and c_noise = log(sigma) / 4."""

    def __init__(self, sigma_data, denoiser):
        super().__init__()
        self.sigma_data, self.denoiser = sigma_data, denoiser

    def forward(self, u, c, y=None):
        sigma = torch.exp(4 * c)
        c_skip, c_out, c_in, _ = edm_coefficients(sigma, self.sigma_data)
        shape = (-1,) + (1,) * (u.dim() - 1)
        x_hat = u / c_in.reshape(shape)
        return (self.denoiser(x_hat, sigma) - c_skip.reshape(shape) * x_hat) / c_out.reshape(shape)


def test_coefficients_give_unit_variance_input_and_target():
    # EDM App. B.6: Var[c_in x_hat] = 1 and Var[(x0 - c_skip x_hat) / c_out] = 1 for Var x0 = sd^2.
    sigma = torch.exp(torch.linspace(-7, 5, 50))
    for sd in (0.5, 1.0, 2.0):
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
        assert torch.allclose(c_in**2 * (sd**2 + sigma**2), torch.ones_like(sigma), rtol=1e-12)
        target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
        assert torch.allclose(target_var, torch.ones_like(sigma), rtol=1e-12)
        assert torch.allclose(c_noise, torch.log(sigma) / 4)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_oracle_network_gives_the_exact_score_and_denoiser(sde):
    model = EDMModel(OracleNet(0.7, exact_denoiser), sde, sigma_data=0.7)
    g = torch.Generator().manual_seed(0)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(64, generator=g)
    x = sde.perturb(GAUSS.sample(64, generator=g), t, torch.randn(64, 2, generator=g))
    exact = GAUSS.score_fn(sde)(x, t)
    s = model(x, t)
    assert torch.allclose(s, exact, rtol=1e-7, atol=1e-9 * float(exact.abs().max()))
    assert torch.allclose(model.denoise(x, t), sde.tweedie_denoise(x, t, exact), rtol=1e-8, atol=1e-8)
    fn = model.score_fn()
    assert torch.equal(fn(x, t), s)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_image_shaped_input(sde):
    v = 0.3  # pixels i.i.d. N(0, v): D* = v / (v + sigma^2) x_hat, score = -x / (alpha^2 v + std^2)
    net = OracleNet(0.5, lambda x_hat, sigma: (v / (v + sigma**2)).reshape(-1, 1, 1, 1) * x_hat)
    model = EDMModel(net, sde, sigma_data=0.5)
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.05, 0.9, 5)
    expected = -x / (sde.alpha(t) ** 2 * v + sde.std(t) ** 2).reshape(-1, 1, 1, 1)
    assert torch.allclose(model(x, t), expected, rtol=1e-9)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_loss_at_a_fixed_level_has_the_posterior_variance_as_mean(sde):
    """With the exact denoiser, E ||D - x0||^2 = tr Cov[x0 | x_hat] = sum_i l_i sigma^2 / (l_i + sigma^2)."""
    sd, sigma, n = 0.5, 0.8, 20000
    loss = EDMLoss(sde, sigma_data=sd)
    g = torch.Generator().manual_seed(2)
    x0 = GAUSS.sample(n, generator=g)
    s = torch.full((n,), sigma)
    draws = {"t": t_from_sigma(sde, s), "sigma": s, "z": torch.randn(n, 2, generator=g)}
    oracle = EDMModel(OracleNet(sd, exact_denoiser), sde, sigma_data=sd)
    per = loss.per_example(oracle, x0, draws)
    lam = torch.linalg.eigvalsh(COV)
    expected = 0.5 * (sigma**2 + sd**2) / (sigma * sd) ** 2 * float((lam * sigma**2 / (lam + sigma**2)).sum())
    se = float(per.std()) / math.sqrt(n)
    assert abs(float(per.mean()) - expected) < 4 * se
    # any score model gives the same loss through D = x_hat + alpha sigma^2 s
    assert torch.allclose(loss.per_example(GAUSS.score_fn(sde), x0, draws), per, rtol=1e-7)


def test_loss_draws_log_normal_levels_within_the_process_range():
    sde, n = VESDE(), 20000  # VE's range [1.3e-4, 50] clips a negligible 1e-5 of N(-1.2, 1.2^2)
    loss = EDMLoss(sde, p_mean=-1.2, p_std=1.2)
    d = loss.draw(torch.zeros(n, 2), generator=torch.Generator().manual_seed(3))
    ls = torch.log(d["sigma"])
    assert abs(float(ls.mean()) + 1.2) < 4 * 1.2 / math.sqrt(n)
    assert abs(float(ls.std()) - 1.2) < 4 * 1.2 / math.sqrt(2 * n)
    assert torch.allclose(sde.sigma(d["t"]), d["sigma"], rtol=1e-10)
    vp = EDMLoss(VPSDE(), p_mean=-6.0, p_std=1.0)  # mostly below sigma(eps) = 0.0105: clipped to it
    dv = vp.draw(torch.zeros(1000, 2), generator=torch.Generator().manual_seed(4))
    assert float(dv["t"].min()) == pytest.approx(VPSDE().eps, rel=1e-9)
    assert float(dv["t"].max()) <= 1.0


def test_config_round_trip_and_dispatch():
    net = build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=8)
    model = EDMModel(net, VPSDE(), sigma_data=1.0).float()
    cfg = model.config()
    assert cfg["parameterization"] == "edm" and cfg["sigma_data"] == 1.0
    again = model_from_config(cfg)
    assert type(again) is EDMModel and again.sigma_data == 1.0
    again.float().load_state_dict(model.state_dict())
    x, t = torch.randn(7, 2, dtype=torch.float32), torch.full((7,), 0.4, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(again(x, t), model(x, t))


def test_estimate_sigma_data():
    x = torch.randn(40000, 2, generator=torch.Generator().manual_seed(5)) * 0.5
    assert estimate_sigma_data(x) == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(2 * 80000))


@pytest.mark.parametrize("call, match", [
    (lambda: EDMModel(OracleNet(1, exact_denoiser), VPSDE(), sigma_data=0.0), "sigma_data must be a positive number"),
    (lambda: EDMLoss(VPSDE(), sigma_data=-1), "sigma_data must be a positive number"),
    (lambda: EDMLoss(VPSDE(), p_std=0), "p_std must be a positive number"),
    (lambda: EDMLoss(VPSDE(), eps=2.0), r"eps must lie in \(0, T=1.0\)"),
    (lambda: model_from_config({"parameterization": "v"}), "unknown parameterization 'v'"),
])
def test_bad_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()
