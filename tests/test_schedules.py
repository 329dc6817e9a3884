"""Noise-level schedules and the t <-> sigma <-> log-SNR conversions, against closed forms."""
import math

import pytest
import torch

from scoregen.process.schedules import (SCHEDULES, EDMSchedule, LogSNR, NoiseGrid, Schedule, make_schedule, t_from_log_snr,
                                t_from_sigma)
from scoregen.process.sde import SDE, NoiseLadder, SubVPSDE, VESDE, VPSDE

PROCESSES = [VESDE(), VPSDE(), SubVPSDE(), NoiseLadder(sigma_max=20.0, sigma_min=0.05, L=8)]
IDS = ["ve", "vp", "subvp", "ladder"]
F64_TOL = 1e-12


class ConstantBetaVP(SDE):
    """VP with beta = 2: alpha = e^-t, std = sqrt(1 - e^-2t), so sigma = sqrt(e^2t - 1) and
    t = log(1 + sigma^2) / 2. No closed-form branch in t_from_sigma knows it: it must bisect."""

    name = "const"

    def drift_coef(self, t):
        return -torch.ones_like(t)

    def diffusion(self, t):
        return math.sqrt(2.0) * torch.ones_like(t)

    def alpha(self, t):
        return torch.exp(-t)

    def std(self, t):
        return torch.sqrt(-torch.expm1(-2 * t))

    def t_from_std(self, std):
        return -0.5 * torch.log1p(-std**2)

    def config(self):
        return {"name": "const"}


def _times(sde):
    return torch.linspace(sde.eps, sde.T, 41, dtype=torch.float64)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_t_from_sigma_inverts_sde_sigma(sde):
    t = _times(sde)
    assert torch.allclose(t_from_sigma(sde, sde.sigma(t)), t, rtol=0, atol=F64_TOL)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_t_from_log_snr_inverts_sde_log_snr(sde):
    t = _times(sde)
    assert torch.allclose(t_from_log_snr(sde, sde.log_snr(t)), t, rtol=0, atol=F64_TOL)


def test_log_snr_is_minus_two_log_sigma():
    t = _times(VPSDE())
    for sde in PROCESSES[:3]:
        assert torch.allclose(sde.log_snr(t), -2 * torch.log(sde.sigma(t)), rtol=1e-12, atol=0)


def test_bisection_fallback_matches_closed_form():
    sde = ConstantBetaVP()
    sigma = torch.tensor([1e-3, 0.1, 1.0, 3.0, 100.0], dtype=torch.float64)  # 100 lies beyond sigma(T) = 2.53
    assert torch.allclose(t_from_sigma(sde, sigma), 0.5 * torch.log1p(sigma**2), rtol=1e-12, atol=1e-14)


def test_sigma_zero_is_time_zero():
    for sde in PROCESSES[:3]:
        assert float(t_from_sigma(sde, 0.0)) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_sigma_is_rejected(bad):
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        t_from_sigma(VPSDE(), bad)


# --- schedules ------------------------------------------------------------------------------
def _spacing_is_uniform(v: torch.Tensor) -> bool:
    d = v[1:] - v[:-1]
    return bool(torch.allclose(d, d.mean().expand_as(d), rtol=1e-9, atol=1e-12))


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_grid_runs_from_T_to_eps_and_decreases(sde, name):
    g = make_schedule(name).grid(sde, 12)
    assert g.t.shape == (13,) and g.steps == 12
    assert float(g.t[0]) == sde.T and float(g.t[-1]) == sde.eps
    assert (g.t[1:] < g.t[:-1]).all() and (g.sigma[1:] < g.sigma[:-1]).all()
    assert torch.allclose(g.sigma, sde.sigma(g.t), rtol=1e-12, atol=0)
    assert torch.allclose(g.alpha, sde.alpha(g.t)) and torch.allclose(g.std, sde.std(g.t))


@pytest.mark.parametrize("sde", PROCESSES[:3], ids=IDS[:3])
def test_each_schedule_has_its_defining_spacing(sde):
    K, rho = 9, 7.0
    g = {name: make_schedule(name).grid(sde, K) for name in ("uniform_t", "log_std", "log_snr")}
    assert _spacing_is_uniform(g["uniform_t"].t)
    assert _spacing_is_uniform(torch.log(g["log_std"].std))
    assert _spacing_is_uniform(sde.log_snr(g["log_snr"].t))
    edm = EDMSchedule(rho).grid(sde, K)
    assert _spacing_is_uniform(edm.sigma ** (1 / rho))


def test_edm_schedule_matches_karras_eq5():
    # EDM's own numbers: sigma_max = 80, sigma_min = 0.002, rho = 7, N = 18 levels (17 steps here).
    s = EDMSchedule(7.0).sigmas(80.0, 0.002, 17)
    i = torch.arange(18, dtype=torch.float64)
    expected = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert torch.allclose(s, expected, rtol=1e-12)


def test_log_std_and_log_snr_coincide_for_ve():
    sde = VESDE()
    assert torch.allclose(make_schedule("log_std").times(sde, 7), make_schedule("log_snr").times(sde, 7), atol=1e-12)


def test_schedule_objects_and_aliases():
    s = EDMSchedule(rho=3.0)
    assert make_schedule(s) is s
    assert isinstance(make_schedule("karras"), EDMSchedule) and make_schedule("edm", rho=5).rho == 5.0
    assert isinstance(make_schedule("log_sigma"), LogSNR)
    assert isinstance(NoiseGrid.at_times(VPSDE(), [0.5, 0.1]), NoiseGrid)


@pytest.mark.parametrize("call, match", [
    (lambda: make_schedule("cosine"), "unknown schedule 'cosine'; choose one of"),
    (lambda: make_schedule("log_snr", rho=7), "takes no option"),
    (lambda: make_schedule(EDMSchedule(), rho=7), "pass a name instead"),
    (lambda: EDMSchedule(rho=0), "rho must be a positive number"),
    (lambda: make_schedule("edm").grid(VPSDE(), 0), "steps must be a positive integer"),
    (lambda: make_schedule("uniform_t").grid(VPSDE(), 2.5), "steps must be a positive integer"),
    (lambda: make_schedule("edm").grid(VPSDE(), 5, eps=1.5), r"eps must lie in \(0, T=1.0\)"),
])
def test_bad_schedule_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_base_schedule_is_abstract():
    with pytest.raises(NotImplementedError):
        Schedule().grid(VPSDE(), 3)


@pytest.mark.parametrize("sde", [VESDE(), SubVPSDE()], ids=["ve", "subvp"])
def test_sigma_floor_ends_the_grid_with_one_step_to_eps(sde):
    K, floor = 8, 0.01
    g = LogSNR(sigma_floor=floor).grid(sde, K)
    assert float(g.t[-1]) == sde.eps and float(g.sigma[-1]) < floor
    assert float(g.sigma[-2]) == pytest.approx(floor, rel=1e-10)
    assert _spacing_is_uniform(torch.log(g.sigma[:-1]))  # K - 1 geometric steps down to the floor
    e = EDMSchedule(rho=7.0, sigma_floor=floor).grid(sde, K)
    assert _spacing_is_uniform(e.sigma[:-1] ** (1 / 7)) and float(e.sigma[-2]) == pytest.approx(floor, rel=1e-10)


def test_sigma_floor_outside_the_range_changes_nothing():
    sde = VPSDE()  # sigma(eps) = 0.0105 > 0.01
    assert torch.equal(LogSNR(sigma_floor=0.01).times(sde, 6), LogSNR().times(sde, 6))
    assert torch.equal(LogSNR(sigma_floor=1e3).times(sde, 6), LogSNR().times(sde, 6))


def test_bad_sigma_floor_is_rejected():
    with pytest.raises(ValueError, match="sigma_floor must be None or a positive number"):
        make_schedule("log_snr", sigma_floor=-1.0)
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['sigma_floor'\]"):
        make_schedule("uniform_t", sigma_floor=0.01)
