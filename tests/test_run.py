"""The library-level Run: a run folder loaded once, sampled and scored many times (scoregen.runs.Run)."""
import pytest
import torch

from scoregen.evaluation.harness import measure
from scoregen.runs import Run, config, recipe
from scoregen.runs import run as run_module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = config.load_config("points", ["train.steps=10", "train.checkpoint_every=0", "model.hidden=16",
                                        "model.depth=1", "model.emb_dim=8", "sample.n=32"])
    recipe.train_run(cfg, run_dir, progress=False)
    return run_dir


def test_open_loads_config_model_and_units(tiny_run):
    run = Run.open(tiny_run)
    assert run.config == recipe.load_run_config(tiny_run) and run.meta["step"] == 10
    assert run.sde is run.model.sde and run.shape == (2,) and run.points and not run.model.training
    x = torch.randn(5, 2)
    z = run.to_model_units(x)
    assert torch.allclose(z, run.normalizer(x)) and torch.allclose(run.to_data_units(z), x, atol=1e-6)
    t = torch.full((5,), 0.5)
    assert torch.equal(run.score_fn()(z, t), run.model(z, t))


def test_sample_is_what_sample_run_gives(tiny_run):
    run = Run.open(tiny_run)
    default = run.sample(seed=3)
    assert default.samples.shape == (32, 2)  # the config's sample.n
    assert torch.equal(default.samples, recipe.sample_run(tiny_run, seed=3).samples)
    ddim = run.sample(16, "ddim", steps=4, seed=1, batch_size=5, return_trajectory=True)
    again = recipe.sample_run(tiny_run, 16, "ddim", steps=4, seed=1, batch_size=5, return_trajectory=True)
    assert ddim.nfe == again.nfe == 4 and torch.equal(ddim.samples, again.samples)
    assert torch.equal(ddim.trajectory, again.trajectory) and ddim.trajectory.shape[1:] == (16, 2)


def test_measure_loads_the_run_once(tiny_run, monkeypatch):
    loads = []
    real = run_module.load_run
    monkeypatch.setattr(run_module, "load_run", lambda *a, **k: loads.append(a) or real(*a, **k))
    table = measure(tiny_run, ["ddim", "heun"], [2, 4], 16, lambda x: float(x.std()), log=lambda *_: None)
    assert len(loads) == 1 and [r["nfe"] for r in table["ddim"]] == [2, 4]


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a scoregen run folder"):
        Run.open(tmp_path / "nothing")
