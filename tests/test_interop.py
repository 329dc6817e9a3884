"""Issue 15: diffusers folders and k-diffusion denoisers in, k-diffusion denoisers and safetensors exports out.

Models are tiny and randomly initialised (no weights are downloaded). Tests that need diffusers,
k-diffusion or safetensors skip with a reason naming the package where it is absent, except under
CI=true, where `.ci/run` installs them and their absence fails.
"""
import importlib.util
import json
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_shared_data
from scoregen.cli import main
from scoregen.evaluation.image_metrics import evaluate_images
from scoregen.interop.adapters import (DenoiserScoreModel, KDiffusionDenoiser, PredictionScoreModel,
                                       score_from_prediction, ve_for_sigmas)
from scoregen.likelihood import log_likelihood
from scoregen.process.discrete import DiscreteVPSDE
from scoregen.process.distributions import seed_mixture
from scoregen.process.schedules import NoiseGrid, make_grid
from scoregen.process.sde import VESDE, VPSDE
from scoregen.runs import Run, config, recipe
from scoregen.runs.run import load_run_config
from scoregen.sampling import samplers

CI = os.environ.get("CI", "").lower() == "true"
N_TRAIN = 1000


KDIFFUSION_INSTALL = ("pip install --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 "
                      "trampoline==0.1.2")


def need(module: str, package: str | None = None, install: str = 'pip install "scoregen[interop]"'):
    """Import an optional package: skip naming it where absent, fail under CI=true (`.ci/run` installs it)."""
    if importlib.util.find_spec(module) is None:
        msg = f"the optional package {package or module!r} is not installed ({install})"
        if CI:
            pytest.fail(msg + "; under CI=true it must be present")
        pytest.skip(msg)
    return importlib.import_module(module)


def linear_alphas_cumprod(n=N_TRAIN, lo=1e-4, hi=0.02):
    return torch.cumprod(1 - torch.linspace(lo, hi, n, dtype=torch.float64), 0)


# --- the discrete VP process ---------------------------------------------------------------------
def test_discrete_vp_is_exact_at_the_table_times():
    abar = linear_alphas_cumprod()
    sde = DiscreteVPSDE(abar)
    i = torch.arange(N_TRAIN)
    t = sde.time_of_step(i)
    assert torch.allclose(sde.alpha(t) ** 2, abar, rtol=1e-14, atol=0)
    assert torch.allclose(sde.std(t) ** 2, 1 - abar, rtol=1e-12, atol=1e-16)
    betas = 1 - abar[1:] / abar[:-1]  # one DDPM step between table times is sqrt(1 - beta_i) exactly
    assert torch.allclose(sde.alpha(t[1:]) / sde.alpha(t[:-1]), torch.sqrt(1 - betas), rtol=1e-14, atol=0)
    assert torch.allclose(sde.t_from_std(sde.std(t)), t, atol=1e-12)
    assert torch.equal(sde.timestep(t.float()), i.double())  # float32 table times still name their step
    mid = t[:-1] + 0.5 / N_TRAIN  # between table times: a VP process (alpha^2 + std^2 = 1), monotone
    assert torch.allclose(sde.alpha(mid) ** 2 + sde.std(mid) ** 2, torch.ones_like(mid), atol=1e-14)
    assert (sde.std(mid) > sde.std(t[:-1])).all() and (sde.std(mid) < sde.std(t[1:])).all()
    assert sde.eps == 1 / N_TRAIN and sde.T == 1.0 and isinstance(sde, VPSDE)


@pytest.mark.parametrize("table, word", [([0.9, 0.95], "decreasing"), ([0.9, 0.0], "(0, 1]"), ([0.5], "at least 2")])
def test_discrete_vp_refuses_a_bad_table(table, word):
    with pytest.raises(ValueError, match=word.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        DiscreteVPSDE(table)


# --- predictions -> scores -------------------------------------------------------------------------
def test_predictions_give_the_same_score():
    """eps, x0 and v of one (x0, z) pair map to the same score -z / std."""
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    sde = DiscreteVPSDE(linear_alphas_cumprod())
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    a, s = sde.alpha(t)[:, None], sde.std(t)[:, None]
    x = a * x0 + s * z
    want = -z / s
    for kind, pred in [("epsilon", z), ("sample", x0), ("v_prediction", a * z - s * x0)]:
        got = score_from_prediction(pred, x, sde.alpha(t), sde.std(t), kind)
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10), kind
    with pytest.raises(ValueError, match="'flow'"):
        score_from_prediction(z, x, sde.alpha(t), sde.std(t), "flow")


# --- diffusers ---------------------------------------------------------------------------------------
def tiny_unet(seed=0, size=8):
    diffusers = need("diffusers")
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    """{prediction type: a saved DDPMPipeline folder}, and "bare": a unet/ + scheduler/ pair."""
    diffusers = need("diffusers")
    out = {}
    for kind in ("epsilon", "sample", "v_prediction"):
        d = tmp_path_factory.mktemp(f"pipe-{kind}")
        sched = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, prediction_type=kind)
        diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(d)
        out[kind] = d
    bare = tmp_path_factory.mktemp("bare")
    tiny_unet().save_pretrained(bare / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN).save_pretrained(bare / "scheduler")
    out["bare"] = bare
    return out


@pytest.mark.parametrize("folder", ["epsilon", "bare"])
def test_adapted_epsilon_model_score_is_minus_eps_over_std(pipeline_dirs, folder):
    run = Run.open(pipeline_dirs[folder])
    assert run.meta["source"] == "diffusers" and run.shape == (1, 8, 8) and not run.points
    assert isinstance(run.sde, DiscreteVPSDE) and run.value_range == (-1.0, 1.0)
    unet, sde, score = tiny_unet(), run.sde, run.score_fn()
    abar = need("diffusers").DDPMScheduler(num_train_timesteps=N_TRAIN).alphas_cumprod.double()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for i in [0, 1, 250, 500, 999]:
            t = sde.time_of_step(torch.full((3,), i)).float()
            eps = unet(x, torch.full((3,), float(i))).sample
            want = -eps / math.sqrt(1 - float(abar[i]))
            assert torch.allclose(score(x, t), want, rtol=1e-5, atol=1e-6), i
        mixed = torch.tensor([10, 400, 999])  # one time per example
        want = -unet(x, mixed.float()).sample / torch.sqrt(1 - abar[mixed]).float().view(3, 1, 1, 1)
        assert torch.allclose(score(x, sde.time_of_step(mixed).float()), want, rtol=1e-5, atol=1e-6)


def ddim_loop(diffusers, folder, x, steps):
    """diffusers' own DDIM loop (eta = 0) with the folder's network and schedule."""
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
    cfg = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").config
    sched = diffusers.DDIMScheduler.from_config(cfg, clip_sample=False)
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return x, sched.timesteps


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_ddim_reproduces_diffusers_ddim_scheduler(pipeline_dirs, kind):
    """Same start noise, same timesteps: scoregen's DDIM (eta = 0) on the adapted folder gives diffusers'
    DDIMScheduler loop. diffusers' last step goes to alphas_cumprod = 1 (set_alpha_to_one), i.e. to its
    x0 prediction: scoregen's DDIM with denoise=True (the Tweedie step at the last level)."""
    diffusers = need("diffusers")
    folder = pipeline_dirs[kind]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    want, timesteps = ddim_loop(diffusers, folder, x.clone(), 10)
    run = Run.open(folder)
    grid = NoiseGrid.at_times(run.sde, run.sde.time_of_step(timesteps))
    got = samplers.ddim(run.score_fn(), run.sde, x.clone(), schedule=grid, eta=0.0, denoise=True)
    assert got.nfe == len(timesteps) == 10 and grid.steps == 9  # diffusers' 10 calls: 9 steps + the Tweedie one
    assert torch.allclose(got.samples, want, rtol=1e-4, atol=1e-5), (got.samples - want).abs().max()


def test_ancestral_has_the_mean_and_variance_of_ddpm_step(pipeline_dirs):
    """scoregen's ancestral step on the adapted DDPM is DDPMScheduler.step (variance beta_t, "fixed_large";
    clip_sample off) with the same noise: equal for two noises means equal mean and variance. And DDIM
    at eta = 1 is DDPMScheduler's default step (posterior variance, "fixed_small")."""
    diffusers = need("diffusers")
    folder = pipeline_dirs["epsilon"]
    run = Run.open(folder)
    unet, sde, score = tiny_unet(), run.sde, run.score_fn()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    for variance, sampler, opts in [("fixed_large", samplers.ancestral, {"denoise": False}),
                                    ("fixed_small", samplers.ddim, {"eta": 1.0})]:
        sched = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, variance_type=variance, clip_sample=False)
        sched.set_timesteps(20)  # steps of 50 timesteps: t -> t - 50
        for t in [950, 500, 50]:
            prev = t - 50
            grid = NoiseGrid.at_times(sde, sde.time_of_step(torch.tensor([t, prev])))
            outs = []
            for seed in (0, 1):
                with torch.no_grad():
                    eps = unet(x, torch.tensor(t)).sample
                d = sched.step(eps, torch.tensor(t), x, generator=torch.Generator().manual_seed(seed)).prev_sample
                s = sampler(score, sde, x, schedule=grid, generator=torch.Generator().manual_seed(seed), **opts)
                assert torch.allclose(s.samples, d, rtol=1e-4, atol=1e-5), (variance, t, seed)
                outs.append(s.samples)
            z0, z1 = (torch.randn(x.shape, generator=torch.Generator().manual_seed(k)) for k in (0, 1))
            dz, dx = (z0 - z1).double(), (outs[0] - outs[1]).double()
            std = float((dx * dz).sum() / (dz * dz).sum())  # the step's std: x_s = mean + std z, from two draws
            abar_t, abar_p = float(sched.alphas_cumprod[t]), float(sched.alphas_cumprod[prev])
            beta = 1 - abar_t / abar_p
            var = beta if variance == "fixed_large" else beta * (1 - abar_p) / (1 - abar_t)
            assert math.isclose(std, math.sqrt(var), rel_tol=1e-4), (variance, t, std, math.sqrt(var))
            assert torch.allclose(outs[0] - std * z0, outs[1] - std * z1, atol=1e-5)  # one mean


def test_sample_and_likelihood_commands_take_a_diffusers_folder(pipeline_dirs, tmp_path, capsys):
    folder = pipeline_dirs["epsilon"]
    assert load_run_config(folder)["sample"]["sampler"] == "ddim"
    out = tmp_path / "s.npz"
    assert main(["sample", str(folder), "--n", "4", "--steps", "3", "--out", str(out)]) == 0
    assert np.load(out)["samples"].shape == (4, 1, 8, 8)
    assert main(["sample", str(folder), "--n", "2", "--sampler", "ancestral", "--steps", "4",
                 "--out", str(tmp_path / "a.npz")]) == 0
    nll = tmp_path / "nll.json"
    code = main(["likelihood", str(folder), "--data", "digits", "--n", "2", "--rtol", "1e-3", "--atol", "1e-3",
                 "--no-progress", "--out", str(nll)])
    assert code == 0, capsys.readouterr().err
    s = json.loads(nll.read_text())
    assert s["n"] == 2 and math.isfinite(s["bpd_mean"]) and s["dim"] == 64


def test_score_sde_ve_folder_maps_to_ve(tmp_path):
    """A ScoreSdeVeScheduler folder: the VE process from sigma_min to sigma_max, network called with std(t)."""
    diffusers = need("diffusers")
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "unet")
    diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0).save_pretrained(tmp_path / "scheduler")
    run = Run.open(tmp_path)
    sde = run.sde
    assert isinstance(sde, VESDE) and load_run_config(tmp_path)["sample"]["sampler"] == "pc"
    ends = sde.std(torch.tensor([sde.T, sde.eps], dtype=torch.float64))
    assert torch.allclose(ends, torch.tensor([50.0, 0.01], dtype=torch.float64), rtol=1e-12)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        want = unet(x, sde.std(t.double()).float()).sample
        assert torch.allclose(run.score_fn()(x, t), want, rtol=1e-5, atol=1e-6)


def test_not_a_diffusers_folder_is_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "X", "transformer": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"unet/config.json.*\['transformer'\]") as e:
        Run.open(tmp_path)
    assert "\n" not in str(e.value)


# --- compare / evaluate on a diffusers folder: classifier FID/KID need 1x28x28 images -------------------
@pytest.fixture(scope="module")
def mnist_pipeline(tmp_path_factory):
    """A saved DDPMPipeline of a random 1x28x28 UNet2DModel (two blocks of 8 and 16 channels, no attention)."""
    diffusers = need("diffusers")
    folder = tmp_path_factory.mktemp("pipe-28")
    diffusers.DDPMPipeline(unet=tiny_unet(size=28), scheduler=diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN)
                           ).save_pretrained(folder)
    return folder


def _one_line_exit(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_evaluate_and_compare_take_a_diffusers_folder(mnist_pipeline, tmp_path, capsys):
    """With --data mnist both commands score the folder's samples; the same 8 DDIM samples (seed 0, 2 steps)
    give the same FID in `compare`'s table as in `evaluate`'s report and through the library."""
    require_shared_data("mnist")
    folder = mnist_pipeline
    report = tmp_path / "e.json"
    code = main(["evaluate", str(folder), "--data", "mnist", "--sampler", "ddim", "--steps", "2", "--n", "8",
                 "--kid-subsets", "2", "--out", str(report)])
    assert code == 0, capsys.readouterr().err
    assert "a model not trained here" in capsys.readouterr().out  # in words, not "step None"
    r = json.loads(report.read_text())
    assert {"run_dir", "source", "sampler", "steps", "nfe", "train_step", "dataset", "n", "n_ref", "fid", "fid_floor",
            "fid_ratio", "kid", "kid_std", "kid_floor", "class_fractions", "class_max_dev_points"} <= set(r)
    assert (r["dataset"], r["n"], r["sampler"], r["nfe"], r["train_step"]) == ("mnist", 8, "ddim", 2, None)
    assert report.with_suffix(".png").is_file()
    x = Run.open(folder).sample(8, "ddim", steps=2, seed=0).samples  # in [-1, 1]
    direct = evaluate_images(x, "mnist", value_range=(-1, 1), kid_subsets=2)
    assert r["fid"] == pytest.approx(direct["fid"], rel=1e-6) and r["fid"] > r["fid_floor"] > 0

    out = tmp_path / "cmp"
    code = main(["compare", str(folder), "--data", "mnist", "--samplers", "ddim", "--nfe", "2", "--n", "8",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    c = json.loads((out / "compare.json").read_text())
    assert {"run_dir", "data", "kind", "metric", "n", "budgets", "floor", "table", "summary"} <= set(c)
    assert (c["data"], c["kind"], c["metric"], c["n"], c["budgets"]) == ("mnist", "images", "fid", 8, [2])
    (cell,) = c["table"]["ddim"]
    assert (cell["nfe"], cell["steps"]) == (2, 2) and cell["value"] == pytest.approx(r["fid"], rel=1e-6)
    assert c["floor"]["mean"] == pytest.approx(r["fid_floor"], rel=1e-9)
    assert (out / "compare.png").stat().st_size > 0


def test_evaluate_and_compare_on_a_diffusers_folder_need_the_data_named(mnist_pipeline, capsys):
    for command in ("evaluate", "compare"):
        err = _one_line_exit([command, str(mnist_pipeline), "--n", "8"], capsys)
        assert "diffusers folder names no data set" in err and "--data" in err, err
        err = _one_line_exit([command, str(mnist_pipeline), "--data", "digits", "--n", "8"], capsys)
        assert "'digits'" in err and "no classifier" in err and "mnist" in err, err
    assert "['mnist', 'fashion-mnist']" in _one_line_exit(["evaluate", str(mnist_pipeline)], capsys)


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_evaluate_and_compare_refuse_other_image_shapes_and_bad_folders(pipeline_dirs, tmp_path, capsys, command):
    """8x8 images have no MNIST classifier: refused before any sampling; a folder that is not a readable
    diffusers folder is named in one line, with or without --data."""
    err = _one_line_exit([command, str(pipeline_dirs["epsilon"]), "--data", "mnist", "--n", "8"], capsys)
    assert "1x8x8 images" in err and "1x28x28" in err, err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "X", "transformer": ["a", "b"]}))
    for extra in (["--data", "mnist"], []):
        err = _one_line_exit([command, str(bad), *extra], capsys)
        assert "unet/config.json" in err and "['transformer']" in err, err


# --- k-diffusion --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kdiff():
    """k-diffusion's sampling.py (and the utils.py it imports) as published. Its package __init__ imports
    the whole training stack (kornia, clip, wandb, ...), so the two modules are loaded from the installed
    package's folder directly; utils.py imports torchvision only for PIL conversions, stubbed while it
    loads where torchvision is absent. No k-diffusion code is copied."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        need("k_diffusion", "k-diffusion", KDIFFUSION_INSTALL)
    for mod, pkg in [("torchsde", "torchsde"), ("torchdiffeq", "torchdiffeq"), ("trampoline", "trampoline"),
                     ("PIL", "pillow"), ("safetensors", "safetensors")]:
        need(mod, pkg, KDIFFUSION_INSTALL)
    root = Path(spec.submodule_search_locations[0])
    name = "_kdiffusion_for_tests"
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(root)]
    saved = {k: sys.modules.get(k) for k in [name, f"{name}.utils", f"{name}.sampling", "torchvision",
                                            "torchvision.transforms", "torchvision.transforms.functional"]}
    sys.modules[name] = pkg
    stub = importlib.util.find_spec("torchvision") is None
    if stub:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms,
                            "torchvision.transforms.functional": tv.transforms.functional})
    try:
        for sub in ("utils", "sampling"):
            s = importlib.util.spec_from_file_location(f"{name}.{sub}", root / f"{sub}.py")
            m = importlib.util.module_from_spec(s)
            sys.modules[f"{name}.{sub}"] = m
            s.loader.exec_module(m)
            setattr(pkg, sub, m)
    finally:
        if stub:
            for k in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
                del sys.modules[k]
    yield pkg.sampling
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.01, sigma_max=20.0), VPSDE()], ids=["ve", "vp"])
def test_kdiffusion_samplers_on_the_scoregen_denoiser_match_scoregen(kdiff, sde):
    """k-diffusion's sample_euler / sample_heun driven by `KDiffusionDenoiser` on the sigmas of a scoregen
    grid give scoregen's DDIM (eta = 0: Euler in sigma) and EDM Heun (final_euler off: k-diffusion takes
    Heun steps down to any sigma > 0) on that grid; k-diffusion works in x_hat = x / alpha."""
    score = seed_mixture().score_fn(sde)
    D = KDiffusionDenoiser(score, sde)
    grid = make_grid(sde, 12, "edm")
    assert math.isclose(D.sigma_max, float(grid.sigma[0])) and math.isclose(D.sigma_min, float(grid.sigma[-1]))
    x = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(4))
    sigmas = grid.sigma.float()
    a0, aK = float(grid.alpha[0]), float(grid.alpha[-1])
    pairs = [(kdiff.sample_euler, samplers.ddim(score, sde, x, schedule=grid, eta=0.0)),
             (kdiff.sample_heun, samplers.heun(score, sde, x, schedule=grid, final_euler=False))]
    for fn, ours in pairs:
        theirs = aK * fn(D, x / a0, sigmas, disable=True)
        assert torch.allclose(theirs, ours.samples, rtol=1e-4, atol=1e-4), (fn.__name__, (theirs - ours.samples).abs().max())


def test_denoiser_round_trip_gives_the_score_back():
    """score -> D(x, sigma) -> score on VE is the identity, per example, at every tested level."""
    sde = ve_for_sigmas(0.01, 20.0)
    score = seed_mixture().score_fn(sde)
    back = DenoiserScoreModel(KDiffusionDenoiser(score, sde), 0.01, 20.0)
    x = torch.randn(5, 2, dtype=torch.float64) * 3
    t = torch.tensor([sde.eps, 0.1, 0.4, 0.7, 1.0], dtype=torch.float64)
    assert torch.allclose(back(x, t), score(x, t), rtol=1e-7, atol=1e-10)  # float64 round-off of t(sigma)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        KDiffusionDenoiser(score, sde)(x, torch.zeros(5))


# --- exact likelihood through an adapted network -----------------------------------------------------
class GaussianEpsilonUNet(torch.nn.Module):
    """UNet-shaped (sample, timestep) -> .sample: the exact epsilon of data N(mu, s^2 I) under a DDPM table."""

    def __init__(self, sde: DiscreteVPSDE, mu: torch.Tensor, s: float):
        super().__init__()
        self.sde, self.mu, self.s = sde, mu, s

    def forward(self, sample, timestep):
        t = (timestep.to(torch.float64) + 1) / self.sde.N
        a, sd = self.sde.alpha(t).view(-1, 1, 1, 1), self.sde.std(t).view(-1, 1, 1, 1)
        var = a**2 * self.s**2 + sd**2
        score = -(sample.to(torch.float64) - a * self.mu) / var
        return types.SimpleNamespace(sample=(-sd * score).to(sample.dtype))


def test_exact_likelihood_through_an_adapted_model_matches_the_closed_form():
    sde = DiscreteVPSDE(linear_alphas_cumprod())
    mu, s = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64).view(1, 1, 4, 4), 0.3
    model = PredictionScoreModel(GaussianEpsilonUNet(sde, mu, s), sde, "epsilon", noise_input=sde.timestep,
                                 output=lambda out: out.sample)
    x = (mu + s * torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64))

    def gauss_logp(t):
        def fn(z):
            a, sd = float(sde.alpha(torch.tensor(t))), float(sde.std(torch.tensor(t)))
            var = a**2 * s**2 + sd**2
            return (-0.5 * ((z - a * mu) ** 2).flatten(1).sum(1) / var - 0.5 * 16 * math.log(2 * math.pi * var))
        return fn

    res = log_likelihood(model.score_fn(), sde, x, divergence="exact", prior_logp=gauss_logp(sde.T),
                         rtol=1e-7, atol=1e-7)
    want = gauss_logp(sde.eps)(x)
    assert torch.allclose(res.logp.double(), want, rtol=0, atol=2e-4), (res.logp - want).abs().max()
    bpd = -res.logp / (16 * math.log(2))
    assert torch.allclose(bpd.double(), -want / (16 * math.log(2)), atol=2e-4 / (16 * math.log(2)))


# --- export / reload ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    need("safetensors")
    run_dir = tmp_path_factory.mktemp("run")
    cfg = config.load_config("points", ["train.steps=10", "train.checkpoint_every=0", "model.hidden=16",
                                        "model.depth=1", "model.emb_dim=8", "sample.n=32"])
    recipe.train_run(cfg, run_dir, progress=False)
    return run_dir


@pytest.fixture
def exported(tiny_run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    return out


def test_export_round_trip_is_bit_identical(tiny_run, exported, tmp_path):
    st = need("safetensors.torch", "safetensors")
    a, b = Run.open(tiny_run), Run.open(exported)
    assert sorted(p.name for p in exported.iterdir()) == ["model.safetensors", "scoregen_export.json"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)
    assert sorted(st.load_file(str(exported / "model.safetensors"))) == sorted(sa)
    assert b.config == a.config and b.meta["step"] == a.meta["step"] and b.sde.config() == a.sde.config()
    assert torch.equal(b.normalizer.mean, a.normalizer.mean) and b.normalizer.scale == a.normalizer.scale
    for sampler, steps in [("ddim", 5), ("pc", 5)]:
        assert torch.equal(a.sample(64, sampler, steps=steps, seed=7).samples,
                           b.sample(64, sampler, steps=steps, seed=7).samples)
    # every RUN_DIR command reads the export: sample and likelihood
    assert main(["sample", str(exported), "--n", "16", "--steps", "4", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (16, 2)
    assert main(["likelihood", str(exported), "--n", "4", "--rtol", "1e-3", "--atol", "1e-3", "--no-progress",
                 "--out", str(tmp_path / "l.json")]) == 0


def _rewrite_tensors(folder, change):
    st = need("safetensors.torch", "safetensors")
    f = folder / "model.safetensors"
    tensors = st.load_file(str(f))
    change(tensors)
    st.save_file(tensors, str(f))


def _rewrite_config(folder, change):
    f = folder / "scoregen_export.json"
    desc = json.loads(f.read_text())
    change(desc)
    f.write_text(json.dumps(desc))


def _one_line_error(folder, pattern, capsys):
    with pytest.raises(ValueError, match=pattern) as e:
        Run.open(folder)
    assert "\n" not in str(e.value)
    assert main(["sample", str(folder), "--n", "2"]) == 2  # the command says it in one line too
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("scoregen sample: error:")
    return str(e.value)


def test_export_with_a_missing_tensor_names_it(exported, capsys):
    name = sorted(Run.open(exported).model.state_dict())[0]
    _rewrite_tensors(exported, lambda t: t.pop(name))
    _one_line_error(exported, f"lacks the tensor '{name}'", capsys)


def test_export_with_an_extra_tensor_names_it(exported, capsys):
    _rewrite_tensors(exported, lambda t: t.update({"net.stray.weight": torch.zeros(3)}))
    _one_line_error(exported, "holds the tensor 'net.stray.weight'", capsys)


def test_export_whose_config_does_not_match_names_the_tensor_or_key(exported, capsys):
    def wider(d):
        d["model_config"]["net"]["kwargs"]["hidden"] = 32

    _rewrite_config(exported, wider)
    _one_line_error(exported, r"tensor '[^']+' has shape \[\d+(, \d+)*\], but .* expects", capsys)
    _rewrite_config(exported, lambda d: d.update(colour="blue"))
    _one_line_error(exported, "unknown key 'colour'", capsys)
    _rewrite_config(exported, lambda d: (d.pop("colour"), d.pop("model_config")))
    _one_line_error(exported, "lacks the key 'model_config'", capsys)
    _rewrite_config(exported, lambda d: d.update(model_config={"net": {"name": "mlp", "kwargs": {"widht": 3}},
                                                              "sde": {"name": "vp"}}))
    _one_line_error(exported, "widht", capsys)


@pytest.mark.parametrize("argv", [
    ["inpaint", "--mask", "box"],
    ["restore", "--operator", "superres", "--factor", "2"],
    ["edit", "--t0", "0.5"],
])
def test_steering_commands_take_a_diffusers_folder(pipeline_dirs, tmp_path, capsys, argv):
    """inpaint / restore / edit on a pipeline folder: 8x8 digits match the tiny UNet's shape."""
    folder = pipeline_dirs["epsilon"]
    out = tmp_path / argv[0]
    code = main([argv[0], str(folder), "--input", "digits", "--n", "2", "--steps", "4", "--no-progress",
                 "--out", str(out), *argv[1:]])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["command"] == argv[0] and summary["n"] == 2
    assert (out / "panel.png").exists()
