"""Point data as users bring it: any D through the CLI, the data-driven rules on their edge cases,
and held-out early stopping (exact resume, best weights, a disjoint split)."""
import json

import numpy as np
import pytest
import torch

from scoregen.runs import config as C
from scoregen.cli import main
from scoregen.data.points import suggest_sigma_max, suggest_sigma_min
from scoregen.models.score import ScoreModel
from scoregen.models.nets import build_net
from scoregen.runs.recipe import SIGMA_MAX_FACTOR, SIGMA_MIN_FLOOR, build_sde, load_run_config
from scoregen.process.sde import VESDE
from scoregen.training.trainer import Normalizer, TrainConfig, Trainer, load_run, train


@pytest.mark.parametrize("dim", [1, 3, 5, 20, 100])
def test_a_file_of_any_dimension_trains_and_samples_with_no_extra_flag(tmp_path, dim, capsys):
    rng = np.random.default_rng(dim)
    np.save(tmp_path / "x.npy", rng.standard_normal((300, dim)) * 3.0 + 7.0)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "x.npy"), "--out", str(run), "--steps", "30", "--no-progress"]) == 0
    cfg = load_run_config(run)
    assert cfg["model"].get("dim") in (None, dim)
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "--n", "50", "--out", str(out), "--steps", "5"]) == 0
    x = np.load(out)
    assert x.shape == (50, dim) and np.isfinite(x).all()


def test_resuming_on_data_of_another_dimension_names_both_shapes(tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((200, 2)))
    run = tmp_path / "run"
    assert main(["train", "--data", str(path), "--out", str(run), "--steps", "20", "--no-progress"]) == 0
    np.save(path, np.random.default_rng(0).standard_normal((200, 5)))
    capsys.readouterr()
    assert main(["train", "--data", str(path), "--out", str(run), "--steps", "40", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "(200, 2)" in err and "(200, 5)" in err


def _auto_sde(x):
    z = Normalizer.fit(torch.as_tensor(x))(torch.as_tensor(x))
    return build_sde({"name": "ve", "sigma_min": "auto", "sigma_max": "auto"}, z), z


def test_auto_noise_range_on_a_constant_column():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((500, 2)), np.full((500, 1), 3.0)], 1)
    sde, z = _auto_sde(x)
    assert torch.all(z[:, 2] == 0)  # the constant column is centred to exactly 0
    zn = z.numpy()
    assert sde.sigma_max == pytest.approx(SIGMA_MAX_FACTOR * suggest_sigma_max(zn), rel=1e-3)
    assert sde.sigma_min == pytest.approx(max(SIGMA_MIN_FLOOR, suggest_sigma_min(zn)), rel=1e-3)
    assert 0 < sde.sigma_min < sde.sigma_max


def test_auto_noise_range_on_two_points():
    sde, z = _auto_sde(np.array([[0.0, 0.0], [3.0, 4.0]]))
    # centred, the points are +-v/2; the scalar scale is the RMS of their entries, |v| / (2 sqrt(2)),
    # so after standardising they lie 2 sqrt(2) apart whatever v is
    d = float((z[0] - z[1]).norm())
    assert d == pytest.approx(2 * np.sqrt(2), rel=1e-6)
    assert sde.sigma_max == pytest.approx(SIGMA_MAX_FACTOR * d, rel=1e-3)
    assert sde.sigma_min == pytest.approx(0.1 * d, rel=1e-3)  # above the floor


def test_auto_noise_range_ignores_huge_offsets_and_scales():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 3))
    base, _ = _auto_sde(x)
    for shifted in (x + 1e6, x * 1e-3 - 5e3, x * 1e3):
        sde, _ = _auto_sde(shifted)
        assert sde.sigma_max == pytest.approx(base.sigma_max, rel=1e-3)
        assert sde.sigma_min == pytest.approx(base.sigma_min, rel=2e-2)  # float32 rounding of 1e6 + x


def test_sigma_min_has_a_floor_on_dense_low_dimensional_data():
    x = np.random.default_rng(2).standard_normal((20000, 2))
    sde, z = _auto_sde(x)
    assert suggest_sigma_min(z.numpy()) < SIGMA_MIN_FLOOR  # dense 2-D data: nearest neighbours ~0.006 apart
    assert sde.sigma_min == SIGMA_MIN_FLOOR


def test_identical_points_give_a_clear_error():
    with pytest.raises(ValueError, match="identical"):
        _auto_sde(np.ones((10, 2)))


# --- held-out early stopping ----------------------------------------------------------------
def _model(dim=2):
    torch.manual_seed(0)
    return ScoreModel(build_net("mlp", dim=dim, hidden=32, depth=1, emb_dim=16), VESDE(0.01, 5.0))


def _data(n=120):
    return torch.from_numpy(np.random.default_rng(3).standard_normal((n, 2)).astype(np.float32))


def _cfg(**kw):
    base = dict(steps=60, batch_size=32, validation=0.25, validate_every=10, checkpoint_every=0, progress=False)
    return TrainConfig(**{**base, **kw})


def test_held_out_split_is_disjoint_and_seeded():
    data = _data()
    a = Trainer(_model(), data, _cfg())
    b = Trainer(_model(), data, _cfg())
    assert a.val_data.shape[0] == 30 and a.data.shape[0] == 90
    rows = {tuple(r.tolist()) for r in a.data}
    assert not any(tuple(r.tolist()) in rows for r in a.val_data)
    assert torch.equal(a.val_data, b.val_data)


def test_validation_keeps_the_best_ema_and_load_run_uses_it(tmp_path):
    trainer = train(_model(), _data(), _cfg(), tmp_path)
    vals = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if "val_loss" in r]
    assert [r["step"] for r in vals] == list(range(10, 61, 10))
    best = min(vals, key=lambda r: r["val_loss"])
    assert trainer.best["step"] == best["step"]
    model, _, _, meta = load_run(tmp_path)
    assert meta["best_step"] == best["step"] and meta["val_loss"] == pytest.approx(best["val_loss"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, trainer.best["ema"][k]), k
    # the best EMA's held-out loss is what was logged for it
    trainer.ema.load_state_dict(trainer.best["ema"])
    assert trainer.validate() == pytest.approx(best["val_loss"], rel=1e-6)


def test_patience_stops_early_after_that_many_measurements_without_a_best():
    # a learning rate this large makes the held-out loss stop improving quickly
    trainer = train(_model(), _data(), _cfg(steps=2000, lr=0.5, patience=2, grad_clip=0))
    b = trainer.best
    assert b["stopped"] and trainer.step < 2000
    assert trainer.step == b["step"] + 2 * 10


def test_resume_with_validation_is_exact(tmp_path):
    straight = train(_model(), _data(), _cfg(steps=60))
    train(_model(), _data(), _cfg(steps=30), tmp_path)
    resumed = train(_model(), _data(), _cfg(steps=60), tmp_path)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert straight.best["step"] == resumed.best["step"]
    assert straight.best["val_loss"] == resumed.best["val_loss"]


def test_validation_fraction_is_checked():
    with pytest.raises(ValueError, match="validation"):
        TrainConfig(validation=1.5)
    with pytest.warns(UserWarning, match="leaves 0 to validate"):
        trainer = Trainer(_model(), _data(3), _cfg(validation=0.1))
    assert trainer.val_data is None and trainer.data.shape[0] == 3


def test_two_points_train_with_the_defaults(tmp_path):
    np.save(tmp_path / "two.npy", np.array([[0.0, 1.0], [2.0, -1.0]]))
    with pytest.warns(UserWarning, match="without early stopping"):
        assert main(["train", "--data", str(tmp_path / "two.npy"), "--out", str(tmp_path / "r"), "--steps", "20",
                     "--no-progress"]) == 0
    sde = load_run(tmp_path / "r")[1]
    assert sde.sigma_max == pytest.approx(SIGMA_MAX_FACTOR * 2 * np.sqrt(2), rel=1e-3)


def test_points_preset_names_no_dimension():
    assert "dim" not in C.load_config("points", [])["model"]
