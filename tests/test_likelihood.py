"""Likelihood through the probability-flow ODE against closed forms.

For Gaussian data N(m, S), S = U diag(lam) U^T, every noised marginal is N(alpha m, U diag(v_t) U^T)
with v_t = alpha(t)^2 lam + std(t)^2, and the exact-score probability-flow ODE is affine: in the
eigenbasis w = U^T (x - alpha m) evolves as w(t) = w(eps) sqrt(v_t / v_eps) (since
c + g^2 / (2 v) = 1/2 d log v / dt). Hence, with C = log(alpha_T / alpha_eps):
    int_eps^T div f~ dt = 1/2 sum_j log(v_T,j / v_eps,j),
    with a fixed probe u = U^T probe:  D C + sum_j u_j^2 (1/2 log(v_T,j / v_eps,j) - C).
"""
import json
import math

import pytest
import numpy as np
import torch

from scoregen.evaluation import images_bpd, points_nll
from scoregen.likelihood import bits_per_dim, bpd_offset, dequantize, log_likelihood, nll_to_bpd, time_grid
from scoregen.models.nets import NETS
from scoregen.process.distributions import GaussianMixture, seed_mixture
from scoregen.process.sde import SubVPSDE, VESDE, VPSDE
from scoregen.training.trainer import Normalizer

SDES = {"ve": lambda: VESDE(sigma_min=0.01, sigma_max=50.0), "vp": VPSDE, "subvp": SubVPSDE}
TOL_PER_DIM = 1e-3  # nats per dimension, the accuracy asked of the exact-divergence solve


def random_gaussian(dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    mean = torch.randn(dim, generator=g, dtype=torch.float64) * 2
    return GaussianMixture.gaussian(mean.numpy(), (a @ a.T + 0.3 * torch.eye(dim, dtype=torch.float64)).numpy())


def exact_score(gm, sde):
    """Differentiable exact score of the noised mixture for x of any shape (N, ...)."""

    def fn(x, t):
        return gm.score(x.reshape(x.shape[0], -1), sde.alpha(t), sde.std(t)).reshape(x.shape).to(x.dtype)

    return fn


def exact_logp(gm, sde, t):
    def fn(x):
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        return gm.log_prob(x.reshape(x.shape[0], -1), sde.alpha(tt), sde.std(tt))

    return fn


def variances(gm, sde, t):
    t = torch.tensor(float(t), dtype=torch.float64)
    return sde.alpha(t) ** 2 * gm._lam[0] + sde.std(t) ** 2


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("law", ["gaussian", "seed_mixture"])
def test_exact_divergence_recovers_log_p_eps(sde_name, law):
    sde = SDES[sde_name]()
    gm = random_gaussian() if law == "gaussian" else seed_mixture()
    x = gm.sample(4, generator=torch.Generator().manual_seed(1))
    res = log_likelihood(exact_score(gm, sde), sde, x, divergence="exact", prior_logp=exact_logp(gm, sde, sde.T))
    want = exact_logp(gm, sde, sde.eps)(x)
    assert res.logp.shape == (4,) and res.logp.dtype == torch.float64
    assert (res.logp - want).abs().max() < TOL_PER_DIM * gm.dim
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    assert res.nfe > 10


def test_exact_divergence_on_replicated_batches_in_higher_dimension():
    """D = 12 > 8 basis vectors: the divergence runs on x replicated once per dimension."""
    sde, gm = VPSDE(), random_gaussian(dim=12, seed=17)
    x = gm.sample(3, generator=torch.Generator().manual_seed(18)).reshape(3, 3, 2, 2)  # image-shaped
    res = log_likelihood(exact_score(gm, sde), sde, x, divergence="auto", prior_logp=exact_logp(gm, sde, sde.T))
    assert res.logp_probes is None and res.z.shape == x.shape
    assert (res.logp - exact_logp(gm, sde, sde.eps)(x)).abs().max() < TOL_PER_DIM * gm.dim


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_heun_grid_is_uniform_in_log_snr(sde_name):
    sde = SDES[sde_name]()
    ts = time_grid(sde, sde.eps, sde.T, 20)
    assert ts[0] == sde.eps and ts[-1] == sde.T and (ts.diff() > 0).all()
    lam = sde.log_snr(ts)
    assert torch.allclose(lam.diff(), (lam[-1] - lam[0]) / 20 * torch.ones(20, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(time_grid(sde, 0.1, 0.9, 4, "uniform"), torch.linspace(0.1, 0.9, 5, dtype=torch.float64))


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_default_prior_is_evaluated_at_the_ode_end_point(sde_name):
    """With the SDE's own prior the model density is the pushforward of the prior by the affine flow."""
    sde = SDES[sde_name]()
    gm = random_gaussian(seed=3)
    x = gm.sample(3, generator=torch.Generator().manual_seed(2))
    res = log_likelihood(exact_score(gm, sde), sde, x, divergence="exact")
    v0, v1 = variances(gm, sde, sde.eps), variances(gm, sde, sde.T)
    a0, a1 = (sde.alpha(torch.tensor(t, dtype=torch.float64)) for t in (sde.eps, sde.T))
    U, m = gm._U[0], gm.means[0]
    z = a1 * m + ((x - a0 * m) @ U * (v1 / v0).sqrt()) @ U.T
    want = sde.prior_logp(z) + 0.5 * torch.log(v1 / v0).sum()
    assert (res.z - z).abs().max() < 1e-3 * z.abs().max()
    assert (res.logp - want).abs().max() < TOL_PER_DIM * gm.dim


def test_hutchinson_probe_is_held_fixed_along_the_solve():
    sde = VPSDE()
    gm = random_gaussian(seed=4)
    x = gm.sample(3, generator=torch.Generator().manual_seed(5))
    probes = torch.randn(2, *x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    res = log_likelihood(exact_score(gm, sde), sde, x, divergence="hutchinson", probes=probes,
                         prior_logp=exact_logp(gm, sde, sde.T))
    v0, v1 = variances(gm, sde, sde.eps), variances(gm, sde, sde.T)
    c = math.log(float(sde.alpha(torch.tensor(sde.T))) / float(sde.alpha(torch.tensor(sde.eps))))
    u2 = (probes @ gm._U[0]) ** 2  # (K, N, D)
    delta = gm.dim * c + (u2 * (0.5 * torch.log(v1 / v0) - c)).sum(-1)  # (K, N)
    want = exact_logp(gm, sde, sde.T)(res.z)[:, None] + delta.T
    assert res.logp_probes.shape == (3, 2)
    assert (res.logp_probes - want).abs().max() < TOL_PER_DIM * gm.dim


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    gm = seed_mixture()
    x = gm.sample(2, generator=torch.Generator().manual_seed(7))
    score, prior = exact_score(gm, sde), exact_logp(gm, sde, sde.T)
    exact = log_likelihood(score, sde, x, divergence="exact", prior_logp=prior)
    k = 200
    est = log_likelihood(score, sde, x, divergence="hutchinson", n_probes=k, probe=probe, prior_logp=prior,
                         generator=torch.Generator().manual_seed(8))
    se = est.logp_se
    assert est.logp_probes.shape == (2, k) and (se > 0).all()
    # the solve itself is accurate to TOL_PER_DIM (test above); the rest is the estimator's noise
    assert ((est.logp - exact.logp).abs() < 4 * se + TOL_PER_DIM * gm.dim).all()
    assert (est.logp_probes.std(1) > 10 * TOL_PER_DIM * gm.dim).all()  # the check above has teeth


def test_float32_and_solvers_agree():
    sde = VPSDE()
    gm = random_gaussian(seed=9)
    x64 = gm.sample(4, generator=torch.Generator().manual_seed(10))
    want = exact_logp(gm, sde, sde.eps)(x64)
    prior = exact_logp(gm, sde, sde.T)
    r32 = log_likelihood(exact_score(gm, sde), sde, x64.float(), divergence="exact", prior_logp=prior)
    assert r32.logp.dtype == torch.float32 and r32.z.dtype == torch.float32
    assert (r32.logp.double() - want).abs().max() < TOL_PER_DIM * gm.dim
    for solver, kw in [("scipy_rk45", {}), ("heun", {"steps": 100})]:
        r = log_likelihood(exact_score(gm, sde), sde, x64, divergence="exact", prior_logp=prior, solver=solver, **kw)
        assert (r.logp - want).abs().max() < TOL_PER_DIM * gm.dim, solver
    assert r.nfe == 200


@pytest.mark.parametrize("lo, hi, shift, scale", [(0.0, 1.0, 0.0, 1.0), (-1.0, 1.0, 0.0, 1.0),
                                                   (0.0, 1.0, 0.45, 0.08)])
def test_bits_per_dim_matches_the_discrete_probability(lo, hi, shift, scale):
    """A Gaussian model of 2x2 'images' in the value range (lo, hi), normalized as z = (x - shift) /
    scale: bpd from the ODE equals -log2 P(k) / D, where P(k) is the exact probability of the pixel
    cell (a product of normal CDF differences), up to the dequantization noise (its standard error)
    and the Jensen gap ~ 1 / (24 L^2 s^2) nats per dimension."""
    sde, levels, d, n, reps = VPSDE(), 256, 4, 3, 16
    gen = torch.Generator().manual_seed(11)
    mean01, sd01 = 0.45, 0.08
    y = mean01 + sd01 * torch.randn(n, 1, 2, 2, generator=gen, dtype=torch.float64)
    pixels = (y * levels).floor().clamp(0, levels - 1).to(torch.uint8)
    b = hi - lo
    mz, sz = (lo + b * mean01 - shift) / scale, b * sd01 / scale  # the data law in model units
    gm = GaussianMixture.gaussian([mz] * d, sz**2 * torch.eye(d).numpy())
    res = bits_per_dim(exact_score(gm, sde), sde, pixels, levels=levels, value_range=(lo, hi), shift=shift,
                       scale=scale, repeats=reps, generator=torch.Generator().manual_seed(12), dtype=torch.float64,
                       divergence="exact", prior_logp=exact_logp(gm, sde, sde.T))
    # every dequantized input lies in its own pixel's cell
    cells = ((res.x - lo) / b * levels).floor()
    assert torch.equal(cells, pixels.double().expand_as(cells))
    # the per-repeat bpd is the derived formula applied to the exact log-density at the inputs
    logp_z = exact_logp(gm, sde, sde.eps)((res.x.reshape(-1, 1, 2, 2) - shift) / scale).reshape(reps, n).T
    by_hand = (-logp_z + d * math.log(scale) - d * math.log(b) + d * math.log(levels)) / (d * math.log(2))
    assert (res.bpd_repeats - by_hand).abs().max() < TOL_PER_DIM / math.log(2)
    # and it bounds -log2 P(k) / D tightly: the model's law in [0, 1] units is N(mu, s^2) per pixel
    t0 = torch.tensor(sde.eps, dtype=torch.float64)
    mu = (shift + scale * sde.alpha(t0) * mz - lo) / b
    s = scale * torch.sqrt(sde.alpha(t0) ** 2 * sz**2 + sde.std(t0) ** 2) / b
    assert_discrete_bound(res.bpd, res.bpd_se, pixels, mu, s, levels)


def assert_discrete_bound(bpd, bpd_se, pixels, mu, s, levels):
    """bpd against -log2 P(k) / D for a model whose law in [0, 1] units is N(mu_i, s^2) per pixel i:
    P(k) is a product of normal CDF differences; bpd exceeds it by the Jensen gap ~ 1 / (24 L^2 s^2)
    nats per dimension, up to the dequantization noise (4 standard errors)."""
    n, d = pixels.shape[0], pixels[0].numel()
    k = pixels.double().reshape(n, d)
    mu = torch.as_tensor(mu, dtype=torch.float64).reshape(-1).expand(d)
    cell = torch.special.ndtr(((k + 1) / levels - mu) / s) - torch.special.ndtr((k / levels - mu) / s)
    discrete_bpd = -torch.log2(cell).sum(1) / d
    gap = 1 / (24 * levels**2 * s**2) / math.log(2)  # bits per dimension
    err = bpd - discrete_bpd
    assert (err > -4 * bpd_se - TOL_PER_DIM).all() and (err < 4 * bpd_se + gap + TOL_PER_DIM).all()
    assert (bpd_se < 0.01).all()


def test_cli_images_bpd_with_a_per_channel_normalizer():
    """2-channel 1x2 images normalized by train.Normalizer (a mean per channel, one scale)."""
    sde, levels, n = VPSDE(), 256, 3
    means01, sd01 = torch.tensor([0.3, 0.6], dtype=torch.float64), 0.07
    y = means01[None, :, None, None] + sd01 * torch.randn(n, 2, 1, 2, generator=torch.Generator().manual_seed(13),
                                                         dtype=torch.float64)
    pixels = (y * levels).floor().clamp(0, levels - 1).to(torch.uint8)
    norm = Normalizer(mean=torch.tensor([0.25, 0.55]).reshape(2, 1, 1), scale=0.1)
    mz = ((means01 - norm.mean.double().reshape(2)) / norm.scale).repeat_interleave(2)  # per dimension
    sz = sd01 / norm.scale
    gm = GaussianMixture.gaussian(mz.numpy(), sz**2 * torch.eye(4).numpy())
    bpd, se, nll, nfe = images_bpd(exact_score(gm, sde), sde, pixels, norm, levels=levels, batch_size=2, repeats=16,
                                   generator=torch.Generator().manual_seed(14), dtype=torch.float64,
                                   divergence="exact", prior_logp=exact_logp(gm, sde, sde.T))
    assert bpd.shape == se.shape == nll.shape == (n,) and len(nfe) == 2
    assert torch.allclose(nll, bpd * 4 * math.log(2))
    t0 = torch.tensor(sde.eps, dtype=torch.float64)
    mu = norm.mean.double().reshape(2).repeat_interleave(2) + norm.scale * sde.alpha(t0) * mz
    s = norm.scale * torch.sqrt(sde.alpha(t0) ** 2 * sz**2 + sde.std(t0) ** 2)
    assert_discrete_bound(bpd, se, pixels, mu, s, levels)


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_cli_points_nll_adds_the_normalizer_jacobian(sde_name):
    """A model of z = (x - m) / s: -log p_X(x) of the raw points is -log p_Z(z) + D log s, checked against
    the noised raw law N(alpha mu + (1 - alpha) m, alpha^2 S + s^2 std^2 I) at t = eps."""
    sde = SDES[sde_name]()
    gm_x = random_gaussian(seed=15)
    m, s = torch.tensor([1.0, -2.0, 3.0]), 4.0
    norm = Normalizer(mean=m, scale=s)
    gm_z = gm_x.affine(m.double().numpy(), s)
    x = gm_x.sample(5, generator=torch.Generator().manual_seed(16))
    nll, nfe = points_nll(exact_score(gm_z, sde), sde, x, norm, batch_size=3, divergence="exact",
                          prior_logp=exact_logp(gm_z, sde, sde.T))
    t0 = torch.tensor(sde.eps, dtype=torch.float64)
    a, sd = sde.alpha(t0), sde.std(t0)
    raw = GaussianMixture.gaussian((a * gm_x.means[0] + (1 - a) * m.double()).numpy(),
                                   (a**2 * gm_x.covs[0] + (s * sd) ** 2 * torch.eye(3, dtype=torch.float64)).numpy())
    assert len(nfe) == 2
    assert (nll + raw.log_prob(x)).abs().max() < TOL_PER_DIM * 3


def test_cli_end_to_end_on_a_tiny_run(tmp_path, capsys):
    from scoregen.cli import main
    from scoregen.models import ScoreModel
    from scoregen.models.nets import build_net
    from scoregen.training.trainer import TrainConfig, train

    model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1), VESDE(sigma_max=10.0))
    train(model, seed_mixture().sample(64).float(), TrainConfig(steps=2, batch_size=16, progress=False,
                                                                checkpoint_every=0, device="cpu"), run_dir=tmp_path)
    out = tmp_path / "ll.json"
    rc = main(["likelihood", str(tmp_path), "--data", "seed", "--n", "6", "--seed", "1", "--hutchinson", "2",
               "--batch-size", "4", "--rtol", "1e-3", "--atol", "1e-3", "--out", str(out), "--no-progress"])
    assert rc == 0 and "nats per example" in capsys.readouterr().out
    summary = json.loads(out.read_text())
    for key in ("nll_mean", "nll_se", "bpd_mean", "bpd_se", "nfe_mean", "seconds"):
        assert key in summary
    assert summary["bpd_mean"] is None and summary["n"] == 6 and len(summary["per_example"]["nll"]) == 6
    assert math.isfinite(summary["nll_mean"]) and summary["nll_se"] > 0


def test_cli_workers_split_the_examples_and_keep_each_share_s_values(tmp_path):
    """--workers 2: the first share is computed exactly as one process computes it (same seed, same
    batches: the adaptive solver's steps depend on the whole batch), the second with seed + 1;
    together they hold every example once, in order."""
    from scoregen.cli import main
    from scoregen.models import ScoreModel
    from scoregen.models.nets import build_net
    from scoregen.training.trainer import TrainConfig, train

    model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1), VESDE(sigma_max=10.0))
    train(model, seed_mixture().sample(64).float(), TrainConfig(steps=2, batch_size=16, progress=False,
                                                                checkpoint_every=0, device="cpu"), run_dir=tmp_path)
    common = ["likelihood", str(tmp_path), "--data", "seed", "--hutchinson", "1", "--rtol", "1e-4", "--atol", "1e-4",
              "--batch-size", "4", "--threads", "1", "--no-progress"]
    assert main(common + ["--n", "8", "--workers", "2", "--out", str(tmp_path / "w2.json")]) == 0
    assert main(common + ["--n", "8", "--out", str(tmp_path / "w1.json")]) == 0
    two, one = (json.loads((tmp_path / f).read_text()) for f in ("w2.json", "w1.json"))
    assert two["n"] == 8 and two["workers"] == 2 and len(two["per_example"]["nll"]) == 8
    assert two["per_example"]["nll"][:4] == one["per_example"]["nll"][:4]  # share 0: examples 0..3, seed 0
    # share 1 (examples 4..7) differs only by its probes (seed + 1): the same points, so close but not equal
    a, b = np.array(two["per_example"]["nll"][4:]), np.array(one["per_example"]["nll"][4:])
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 5.0
    assert main(common + ["--n", "7", "--workers", "0"]) == 2


def test_cli_refuses_data_of_another_shape(tmp_path, capsys):
    """MNIST pixels under a point run: one clear line (needs the MNIST files; skips without them)."""
    from conftest import require_shared_data
    from scoregen.cli import main
    from scoregen.models import ScoreModel
    from scoregen.models.nets import build_net
    from scoregen.training.trainer import TrainConfig, train

    require_shared_data("mnist")
    model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1), VESDE(sigma_max=10.0))
    train(model, seed_mixture().sample(64).float(), TrainConfig(steps=2, batch_size=16, progress=False,
                                                                checkpoint_every=0, device="cpu"), run_dir=tmp_path)
    assert main(["likelihood", str(tmp_path), "--data", "mnist"]) == 2  # shape mismatch: one clear line
    assert "trained on shape [2]" in capsys.readouterr().err


def test_bpd_offset_is_the_change_of_variables():
    # derived in the module docstring: log2 L - log2(hi - lo) bits per dimension
    assert nll_to_bpd(torch.tensor(0.0), 10, 256, (0, 1)).item() == pytest.approx(8.0)
    assert nll_to_bpd(torch.tensor(0.0), 10, 256, (-1, 1)).item() == pytest.approx(7.0)
    assert bpd_offset(5, 17, (0, 1)) == pytest.approx(5 * math.log(17))


def test_bad_input_is_refused_with_a_clear_message():
    sde, gm = VPSDE(), seed_mixture()
    x = gm.sample(2)
    detached = gm.score_fn(sde)
    with pytest.raises(ValueError, match="differentiable"):
        log_likelihood(lambda x, t: detached(x.detach(), t), sde, x, divergence="exact")
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(exact_score(gm, sde), sde, x, divergence="trace")
    with pytest.raises(ValueError, match="solver"):
        log_likelihood(exact_score(gm, sde), sde, x, solver="rk4")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(exact_score(gm, sde), sde, x, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="eps"):
        log_likelihood(exact_score(gm, sde), sde, x, eps=2.0)
    with pytest.raises(ValueError, match="floating"):
        log_likelihood(exact_score(gm, sde), sde, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="0..255"):
        dequantize(torch.tensor([[0.5, 3.0]]))
    with pytest.raises(ValueError, match="0..255"):
        bits_per_dim(exact_score(gm, sde), sde, torch.tensor([[0, 256]]))


def test_cli_bits_per_dim_of_a_tiny_image_run(tmp_path, capsys):
    """The image path end to end: run config's value range, MNIST pixels, bits/dim in the summary."""
    from conftest import require_shared_data
    from scoregen.cli import main
    from scoregen.runs import config as C
    from scoregen.runs.recipe import train_run

    require_shared_data("mnist")
    if "seed-unet" not in NETS:
        pytest.skip("the 'seed-unet' network of the mnist presets is not registered in scoregen.nets yet")
    cfg = C.load_config("mnist-tiny", ["data.limit=8", "data.value_range=[-1,1]", "train.steps=1",
                                       "train.batch_size=4", "model.channels=[4,8,8,8]", "model.embed_dim=8"])
    train_run(cfg, tmp_path, progress=False)
    out = tmp_path / "ll.json"
    rc = main(["likelihood", str(tmp_path), "--data", "mnist", "--n", "3", "--hutchinson", "1", "--solver", "heun",
               "--steps", "2", "--repeats", "2", "--out", str(out), "--no-progress"])
    assert rc == 0 and "bits/dim" in capsys.readouterr().out
    s = json.loads(out.read_text())
    assert s["n"] == 3 and s["dim"] == 784 and s["nfe_mean"] == 4 and len(s["per_example"]["bpd"]) == 3
    # the summary's NLL is the discrete NLL bound: bpd * D ln 2 (with the [-1, 1] offset inside bpd)
    assert s["nll_mean"] == pytest.approx(s["bpd_mean"] * 784 * math.log(2), rel=1e-6)
    assert math.isfinite(s["bpd_se"]) and s["bpd_se"] > 0
