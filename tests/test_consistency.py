"""Consistency models (issue 13): the boundary condition, the sampler, and every objective (CD, CT, ECT)
against the closed form of a Gaussian; resume, the CLI and bad input.

For data N(mu, s^2 I) under VE (x(t) = x(0) + std(t) z, sigma = std) the probability-flow ODE is
affine, and its solution at eps from (x_t, t) is

    f*(x_t, t) = mu + sqrt((s^2 + sigma_eps^2) / (s^2 + sigma_t^2)) (x_t - mu),

so a learned f_theta can be compared with it pointwise, and multistep sampling with f* has an
exact Gaussian law at every step (`_exact_law`).
"""
import json
import math

import numpy as np
import pytest
import torch

from scoregen.cli import main
from scoregen.models.consistency import ConsistencyModel, boundary_sigma, consistency_coefficients
from scoregen.models.edm import model_from_config
from scoregen.models.nets import build_net
from scoregen.process.distributions import GaussianMixture
from scoregen.process.sde import VESDE, VPSDE, SubVPSDE
from scoregen.sampling.samplers import consistency, nfe_per_step, steps_for_nfe
from scoregen.training.consistency import (ConsistencyLoss, curriculum_levels, ect_r, karras_levels,
                                           lognormal_pair_probs)
from scoregen.training.losses import make_loss
from scoregen.training.trainer import TrainConfig, Trainer

MU, S = torch.tensor([2.0, -1.0]), 0.5


def gaussian():
    return GaussianMixture.gaussian(MU.double(), (S**2) * torch.eye(2, dtype=torch.float64))


def exact_f(sde, x, t):
    """f*(x_t, t) of the module docstring (VE)."""
    se = boundary_sigma(sde)
    st = sde.sigma(torch.as_tensor(t, dtype=torch.float64))
    c = torch.sqrt((S**2 + se**2) / (S**2 + st**2)).to(x.dtype).reshape(-1, 1)
    return MU + c * (x - MU)


def exact_cm_score(sde):
    """The score whose Tweedie denoiser is f*: s = (alpha f* - x) / std^2 (VE: alpha = 1)."""
    def fn(x, t):
        return (exact_f(sde, x, t) - x) / sde.std(t.double()).to(x.dtype).reshape(-1, 1) ** 2
    return fn


# --- the model ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [VESDE(0.01, 10.0), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_boundary_condition_is_exact_for_any_weights(sde):
    torch.manual_seed(0)
    m = ConsistencyModel(build_net("mlp", dim=3, hidden=16, depth=1), sde, sigma_data=0.7)
    x = 3 * torch.randn(64, 3)
    assert torch.equal(m.consistency(x, sde.eps), x) or torch.allclose(m.consistency(x, sde.eps), x, rtol=0, atol=1e-6)
    # away from eps the network does act
    assert (m.consistency(x, 0.5) - x).abs().max() > 1e-3


def test_boundary_condition_on_images():
    sde = VESDE(0.002, 80.0, eps=0.033)
    torch.manual_seed(0)
    net = build_net("seed-unet", in_channels=1, channels=[8, 8, 8, 8], embed_dim=16)
    m = ConsistencyModel(net, sde, sigma_data=0.5)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(m.consistency(x, sde.eps), x, atol=1e-6)


def test_coefficients_boundary_and_edm_limit():
    sd, smin = 0.5, 0.002
    c_skip, c_out, c_in, _ = consistency_coefficients(torch.tensor([smin, 80.0], dtype=torch.float64), sd, smin)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
    # for sigma >> sigma_min they are EDM's (Karras et al. 2022, Table 1)
    s = 80.0
    assert math.isclose(float(c_skip[1]), sd**2 / (s**2 + sd**2), rel_tol=1e-4)
    assert math.isclose(float(c_out[1]), s * sd / math.sqrt(s**2 + sd**2), rel_tol=1e-4)
    assert math.isclose(float(c_in[1]), 1 / math.sqrt(s**2 + sd**2), rel_tol=1e-12)


def test_config_round_trip_keeps_the_parameterization():
    sde = VESDE(0.01, 10.0)
    torch.manual_seed(0)
    m = ConsistencyModel(build_net("mlp", dim=2, hidden=16, depth=1), sde, sigma_data=0.9)
    m2 = model_from_config(m.config())
    m2.load_state_dict(m.state_dict())
    assert isinstance(m2, ConsistencyModel) and m2.sigma_data == 0.9
    x = torch.randn(8, 2)
    assert torch.equal(m(x, 0.3), m2(x, 0.3))


def test_score_view_gives_back_f_exactly():
    """The sampler reads f_hat from the score: one step is f(x_T, T)."""
    sde = VESDE(0.01, 10.0)
    torch.manual_seed(0)
    m = ConsistencyModel(build_net("mlp", dim=2, hidden=16, depth=1), sde, sigma_data=1.0).eval()
    x = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0))
    res = consistency(m.score_fn(), sde, x.clone(), steps=1)
    with torch.no_grad():
        direct = m.consistency(x, sde.T)
    assert res.nfe == 1
    torch.testing.assert_close(res.samples, direct, rtol=1e-5, atol=1e-5)


# --- the sampler with the exact consistency function -------------------------------------------------------
def _exact_law(sde, levels_sigma, prior_std):
    """Mean and variance per coordinate after Algorithm 1 with f*: N(0, prior^2) -> f* -> renoise -> f* ..."""
    se = boundary_sigma(sde)
    mean, var = torch.zeros(2, dtype=torch.float64), prior_std**2
    for i, sig in enumerate(levels_sigma):
        if i > 0:
            var = var + sig**2 - se**2
        c = math.sqrt((S**2 + se**2) / (S**2 + sig**2))
        mean, var = MU.double() + c * (mean - MU.double()), c**2 * var
    return mean, var


@pytest.mark.parametrize("steps,sigmas,sigma_data", [(1, None, None), (2, None, None), (2, [0.8], None),
                                                     (4, None, None), (2, None, S), (3, None, S)])
def test_multistep_sampling_with_the_exact_function_has_the_exact_gaussian_law(steps, sigmas, sigma_data):
    sde = VESDE(0.01, 10.0)
    n = 20000
    x = sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = consistency(exact_cm_score(sde), sde, x, steps=steps, sigmas=sigmas, sigma_data=sigma_data,
                      generator=torch.Generator().manual_seed(2), return_trajectory=True)
    assert res.nfe == steps and res.trajectory.shape[0] == steps + 1
    from scoregen.process.schedules import make_grid
    from scoregen.sampling.samplers import CM_FIRST_LEVEL

    grid = make_grid(sde, steps, "edm")
    if sigma_data is not None:  # EDM's rho = 7 spacing from CM_FIRST_LEVEL sigma_data down to sigma_min
        hi, lo = (CM_FIRST_LEVEL * sigma_data) ** (1 / 7), boundary_sigma(sde) ** (1 / 7)
        sigmas = [(hi + i / (steps - 1) * (lo - hi)) ** 7 for i in range(steps - 1)]
        assert math.isclose(sigmas[0], CM_FIRST_LEVEL * S)
    levels = [float(grid.sigma[0])] + (list(sigmas) if sigmas else [float(v) for v in grid.sigma[1:steps]])
    mean, var = _exact_law(sde, levels, sde.prior_std())
    se_mean = math.sqrt(var / n)
    assert (res.samples.mean(0) - mean).abs().max() < 4.5 * se_mean
    # the sample variance of n normals has sd var sqrt(2 / (n - 1))
    assert (res.samples.var(0) - var).abs().max() < 4.5 * var * math.sqrt(2 / (n - 1))
    # and several steps bring the law to the data's, N(mu, s^2 + sigma_eps^2)
    if steps >= 2:
        assert abs(float(res.samples.var(0).mean()) - S**2) < 0.05 * S**2


def test_sampler_registry_and_bad_levels():
    assert nfe_per_step("consistency") == 1 and steps_for_nfe("consistency", 4) == 4
    sde = VESDE(0.01, 10.0)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="sigmas=\\[20.0\\]"):
        consistency(exact_cm_score(sde), sde, x, steps=2, sigmas=[20.0])
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        consistency(exact_cm_score(sde), sde, x, steps=0)


# --- the level rules ---------------------------------------------------------------------------------------
def test_level_rules():
    sig = karras_levels(0.002, 80.0, 18)
    assert math.isclose(float(sig[0]), 0.002) and math.isclose(float(sig[-1]), 80.0) and bool((sig.diff() > 0).all())
    # iCT's curriculum: 10 levels + 1 at the start, doubling 7 times to 1280 + 1 (Song & Dhariwal 2023, eq. 7)
    assert curriculum_levels(0, 8000) == 11 and curriculum_levels(1000, 8000) == 21
    assert curriculum_levels(7999, 8000) == 1281
    # lognormal pair sampling: p_i is the N(-1.1, 2^2) mass of log sigma in [log sigma_i, log sigma_{i+1}],
    # renormalized over [sigma_min, sigma_max]; checked against draws, within 4 binomial standard errors
    p = lognormal_pair_probs(sig, -1.1, 2.0)
    draws = torch.exp(-1.1 + 2.0 * torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    draws = draws[(draws >= sig[0]) & (draws < sig[-1])]
    freq = torch.bucketize(draws, sig[1:-1], right=True).bincount(minlength=len(p)).double() / len(draws)
    assert math.isclose(float(p.sum()), 1.0)
    assert torch.all((freq - p).abs() < 4 * torch.sqrt(p * (1 - p) / len(draws)) + 1e-12), (freq, p)
    t = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    assert torch.all(ect_r(t, 0, 800, sigma_min=0.002) == 0.002)  # stage 0: denoising score matching of f
    r = ect_r(t, 800, 800, sigma_min=0.002)  # last stage: gap t n(t) / 2^8
    assert torch.all(r < t) and torch.all(t - r <= t * 9 / 256 + 1e-12)


# --- convergence of every objective to the closed form -------------------------------------------------------
def _fit(method, steps, **options):
    sde = VESDE(0.01, 10.0)
    g = gaussian()
    data = g.sample(4000, generator=torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    model = ConsistencyModel(build_net("mlp", dim=2, hidden=64, depth=2), sde, sigma_data=float(data.std()))
    teacher = g.score_fn(sde) if method == "cd" else None
    loss = make_loss("consistency", sde, method=method, teacher=teacher, sigma_data=model.sigma_data, **options)
    cfg = TrainConfig(steps=steps, batch_size=256, lr=2e-3, lr_decay="cosine", normalize=False, ema_decay=0.99,
                      progress=False, log_every=steps)
    return Trainer(model, data, cfg, loss=loss).fit(), sde


def _relative_errors(trainer, sde):
    """rms ||f_theta - f*|| over points at several noise levels, in units of the posterior spread of x(0)
    given x_t, sqrt(D) sigma s / sqrt(sigma^2 + s^2): the scale on which any one-step map is judged (the
    identity map scores ~ sigma / s at large sigma, the data mean ~ 1 / 1)."""
    g = gaussian()
    x0 = g.sample(2000, generator=torch.Generator().manual_seed(5)).float()
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(6))
    out = {}
    for sig in (0.1, 0.5, 2.0, 8.0):
        from scoregen.process.schedules import t_from_sigma

        t = torch.full((2000,), float(t_from_sigma(sde, [sig])[0]))
        xt = x0 + sig * z
        with torch.no_grad():
            f = trainer.ema.consistency(xt, t)
        target = exact_f(sde, xt, t)
        spread = math.sqrt(2) * sig * S / math.sqrt(sig**2 + S**2)
        out[sig] = float((f - target).norm(dim=1).pow(2).mean().sqrt()) / spread
    return out


@pytest.mark.parametrize("method,steps,bound", [("cd", 1500, 0.15), ("ct", 2000, 0.25), ("ect", 3000, 0.25)])
def test_every_objective_converges_to_the_gaussian_consistency_function(method, steps, bound):
    trainer, sde = _fit(method, steps)
    errors = _relative_errors(trainer, sde)
    # the exact denoiser E[x(0) | x_t], a different map, scores (1 - r) sqrt(s^2 + sigma^2) / sigma with
    # r = s / sqrt(s^2 + sigma^2): 0.10, 0.41, 0.78, 0.94 at these levels; the identity sigma / s at large sigma
    assert max(errors.values()) < bound, errors


# --- resume, CLI, bad input -----------------------------------------------------------------------------------
def _teacher(tmp_path):
    out = tmp_path / "teacher"
    assert main(["train", "--data", "seed", "--out", str(out), "--steps", "30", "--no-progress", "model.hidden=16",
                 "model.depth=1", "model.emb_dim=8"]) == 0
    return out


class _Stop(Exception):
    pass


def _stop_at(step):
    def callback(trainer, k):
        if k == step:
            raise _Stop  # a run killed right after its checkpoint at `step`
    return callback


@pytest.mark.parametrize("method,extra", [("cd", []), ("cd", ["loss.target_decay=0.9"]), ("ct", [])],
                         ids=["cd", "cd-ema-target", "ct-curriculum"])
def test_distill_resumes_exactly(tmp_path, capsys, method, extra):
    """A run stopped at its step-20 checkpoint and resumed gives the weights of one that never stopped
    (cosine learning rate, CT's curriculum and an EMA target all depend on the step)."""
    from scoregen.runs.distill import distill_config
    from scoregen.runs.recipe import train_run
    from scoregen.training.checkpoint import load_checkpoint

    teacher = _teacher(tmp_path)
    over = ["train.checkpoint_every=10", "train.callback_every=10", *extra]
    cfg = distill_config(teacher, method=method, steps=40, overrides=over)
    with pytest.raises(_Stop):
        train_run(cfg, tmp_path / "a", progress=False, callback=_stop_at(20), overrides=over)
    assert load_checkpoint(tmp_path / "a" / "checkpoint.pt")["step"] == 20
    train_run(cfg, tmp_path / "a", progress=False, overrides=over)
    train_run(cfg, tmp_path / "b", progress=False, overrides=over)
    a, b = (load_checkpoint(tmp_path / k / "checkpoint.pt") for k in ("a", "b"))
    assert a["step"] == b["step"] == 40
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert (a["loss_state"] != {}) == bool(extra)
    if extra:
        for name, v in a["loss_state"]["target"].items():
            assert torch.equal(v, b["loss_state"]["target"][name])
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "a"), "--n", "50", "--steps", "1", "--out", str(tmp_path / "s.npy")]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["nfe"] == 1 and np.load(tmp_path / "s.npy").shape == (50, 2)


def test_train_with_the_consistency_loss_makes_a_consistency_run(tmp_path, capsys):
    out = tmp_path / "ct"
    assert main(["train", "--data", "seed", "--loss", "consistency", "--out", str(out), "--steps", "20",
                 "--no-progress", "model.hidden=16", "model.depth=1", "model.emb_dim=8"]) == 0
    from scoregen.runs.run import Run

    run = Run.open(out)
    assert isinstance(run.model, ConsistencyModel) and run.config["sample"]["sampler"] == "consistency"
    assert run.sample(10, steps=1).nfe == 1


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    sde = VESDE(0.01, 10.0)
    with pytest.raises(ValueError, match="unknown consistency metric .*'lpips'"):
        ConsistencyLoss(sde, method="ct", metric="lpips")
    with pytest.raises(ValueError, match="unknown consistency method .*'xx'"):
        ConsistencyLoss(sde, method="xx")
    with pytest.raises(ValueError, match="needs a teacher score function"):
        ConsistencyLoss(sde, method="cd")
    (tmp_path / "empty").mkdir()
    assert main(["distill", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert "empty" in err and len(err.splitlines()) == 1
    teacher = _teacher(tmp_path)
    assert main(["distill", str(teacher), "--out", str(tmp_path / "o2"), "--steps", "0", "--no-progress"]) != 0
    assert "--steps must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["distill", str(teacher), "--out", str(tmp_path / "o3"), "--no-progress", "loss.metric=lpips"]) != 0
    err = capsys.readouterr().err.strip()
    assert "'lpips'" in err and len(err.splitlines()) == 1
    assert main(["distill", str(teacher), "--out", str(tmp_path / "cd"), "--steps", "5", "--no-progress"]) == 0
    assert main(["distill", str(tmp_path / "cd"), "--out", str(tmp_path / "o4"), "--no-progress"]) != 0
    assert "already a consistency model" in capsys.readouterr().err
