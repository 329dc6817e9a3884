"""The recipe builds what the configuration names: EDM's preconditioned model beside the score model."""
import pytest
import torch

from conftest import require_shared_data
from scoregen.models import ScoreModel
from scoregen.models.edm import EDMModel
from scoregen.process.sde import VESDE
from scoregen.runs.config import load_config
from scoregen.runs.recipe import build_model, resume_config, sample_run, train_run
from scoregen.training.trainer import load_run

SEED_UNET = {"net": "seed-unet", "in_channels": 1, "channels": [8, 16, 16, 16], "embed_dim": 16}
IMAGES = (4, 1, 28, 28)


def test_parameterization_selects_the_model_class():
    sde = VESDE(0.002, 80.0)
    edm = build_model({**SEED_UNET, "parameterization": "edm", "sigma_data": 0.7}, sde, IMAGES)
    assert type(edm) is EDMModel and edm.sigma_data == 0.7 and edm.config()["parameterization"] == "edm"
    plain = build_model({**SEED_UNET, "cond": "t", "scale_by_std": True}, sde, IMAGES)
    assert type(plain) is ScoreModel and plain.cond == "t"
    assert build_model({**SEED_UNET, "parameterization": "edm"}, sde, IMAGES).sigma_data == 0.5


@pytest.mark.parametrize("model, match", [
    ({"parameterization": "denoiser"}, "model.parameterization='denoiser' is unknown"),
    ({"parameterization": "edm", "cond": "t"}, "remove model.cond"),
    ({"parameterization": "edm", "scale_by_std": True}, "remove model.scale_by_std"),
    ({"sigma_data": 0.5}, "model.sigma_data applies only to model.parameterization=edm"),
    ({"parameterization": "edm", "sigma_data": -1.0}, "sigma_data must be a positive number"),
])
def test_bad_parameterizations_are_named(model, match):
    with pytest.raises(ValueError, match=match):
        build_model({**SEED_UNET, **model}, VESDE(0.002, 80.0), IMAGES)


def test_edm_preset_trains_resumes_and_samples(tmp_path):
    data_dir = require_shared_data("mnist")
    torch.set_num_threads(1)
    overrides = [f"data.data_dir={data_dir}", "data.limit=64", "train.steps=2", "train.batch_size=8",
                 "train.checkpoint_every=2", "model.channels=[8,16,16,16]", "model.embed_dim=16"]
    cfg = load_config("mnist-edm", overrides)
    train_run(cfg, tmp_path / "run", progress=False)
    model, sde, _, meta = load_run(tmp_path / "run")
    assert type(model) is EDMModel and meta["step"] == 2 and meta["train_config"]["loss"] == "edm"
    # EDM's sigma range: the exact VE std is 0.002 at t = eps and 80 at t = T
    assert float(sde.std(torch.tensor(sde.eps, dtype=torch.float64))) == pytest.approx(0.002, rel=0.01)
    assert float(sde.std(torch.tensor(sde.T, dtype=torch.float64))) == pytest.approx(80.0, rel=1e-6)
    cfg["train"]["steps"] = 3
    train_run(cfg, tmp_path / "run", progress=False)
    assert load_run(tmp_path / "run")[3]["step"] == 3
    res = sample_run(tmp_path / "run", n=3, steps=2)  # the preset's own sampler: EDM Heun, 2 steps
    assert res.samples.shape == (3, 1, 28, 28) and res.nfe == 3 and torch.isfinite(res.samples).all()


def test_resume_takes_schedule_overrides_and_refuses_model_changes():
    saved = load_config("mnist-tiny", ["train.steps=10"])
    cooled = resume_config(saved, ["train.steps=20", "train.lr_decay=cosine", "train.decay_start=10",
                                   "sample.sampler=pc", "data.name=mnist", "model.net=seed-unet"])
    assert cooled["train"]["steps"] == 20 and cooled["train"]["lr_decay"] == "cosine"
    assert cooled["sample"]["sampler"] == "pc" and cooled["model"] == saved["model"]  # repeated values pass
    for bad, key in (("model.channels=[4,8,8,8]", "model.channels"), ("data.limit=5", "data.limit"),
                     ("loss.name=dsm", "loss.name"), ("train.batch_size=3", "train.batch_size")):
        with pytest.raises(ValueError, match=rf"change \[[^]]*'{key}'[^]]*\].*another --out"):
            resume_config(saved, ["train.steps=20", bad])


def test_cli_resume_with_a_cool_down(tmp_path):
    """A run resumed with a longer schedule and a linear decay logs the decayed learning rates."""
    import json

    from scoregen.cli import main

    run = tmp_path / "run"
    model = ["model.hidden=8", "model.depth=1", "model.emb_dim=4", "train.log_every=1", "train.warmup=0",
             "train.lr=1e-3"]

    def train(steps, *extra):
        return main(["train", "--config", "points", "--out", str(run), "--no-progress", "--steps", str(steps),
                     *model, *extra])

    assert train(2) == 0
    assert train(6, "train.lr_decay=linear", "train.decay_start=2") == 0
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])  # lr at steps 0..5: 1 - (s - 2) / 4
    assert train(8, "model.hidden=9") == 2  # the model cannot change under a run
