"""`scoregen evaluate` on a tiny MNIST run, and the periodic sample pictures of `scoregen train --sample-every`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_shared_data
from scoregen.cli import main
from scoregen.evaluation.image_metrics import evaluate_images
from scoregen.runs import config as C

# a seed U-Net of a few hundred parameters on 64 MNIST images: seconds, not minutes
TINY = ["data.limit=64", "train.batch_size=8", "model.channels=[4,8,8,8]", "model.embed_dim=8",
        "train.checkpoint_every=0"]
POINTS = ["model.hidden=16", "model.depth=1", "model.emb_dim=8", "train.checkpoint_every=0"]


def _train(out, *extra, config="mnist-tiny", overrides=TINY):
    return main(["train", "--config", config, "--out", str(out), "--steps", "4", "--no-progress", *extra,
                 *overrides])


def _weights(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    require_shared_data("mnist")
    run = tmp_path_factory.mktemp("img") / "run"
    assert _train(run, "--sample-every", "2") == 0
    return run


@pytest.fixture(scope="module")
def evaluated(image_run, tmp_path_factory):
    """The report of 20 samples drawn with DPM-Solver++ 2M in 2 steps."""
    out = tmp_path_factory.mktemp("eval") / "e.json"
    assert main(["evaluate", str(image_run), "--sampler", "dpmpp2m", "--steps", "2", "--n", "20",
                 "--out", str(out)]) == 0
    return out, json.loads(out.read_text())


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("L"), dtype=float)


def test_periodic_grids_leave_training_unchanged(image_run, tmp_path):
    assert sorted(p.name for p in (image_run / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
    assert _png(image_run / "samples" / "step_000004.png").std() > 0  # a picture, not a blank
    plain = tmp_path / "plain"
    assert _train(plain, "--sample-every", "0") == 0
    assert not (plain / "samples").exists()
    # the pictures draw from a private generator: the run's trajectory is bit-identical
    a, b = _weights(image_run), _weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_points_get_scatter_pictures_on_the_configs_schedule(tmp_path, capsys, monkeypatch):
    from scoregen import plots

    drawn, draw = [], plots.loss_curve
    monkeypatch.setattr(plots, "loss_curve", lambda hist, path: drawn.append(len(hist)) or draw(hist, path))
    run = tmp_path / "pts"
    assert _train(run, config="points", overrides=POINTS + ["train.callback_every=2"]) == 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
    assert drawn == [2, 4, 4] and (run / "loss.png").exists()  # kept current with the pictures, and at the end
    # and `evaluate` sends point runs to `compare`
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "point run" in err and "scoregen compare" in err


def test_evaluate_report_and_grid(evaluated):
    out, r = evaluated
    expected = {"run_dir", "source", "sampler", "steps", "nfe", "seconds", "train_step", "dataset", "n", "n_ref",
                "fid", "fid_floor", "fid_ratio", "kid", "kid_std", "kid_floor", "kid_floor_std", "class_fractions",
                "class_max_dev_points", "test_class_fractions", "precision", "recall", "precision_floor",
                "recall_floor", "pr_k"}
    assert expected <= set(r)
    assert (r["dataset"], r["n"], r["n_ref"], r["sampler"], r["nfe"], r["train_step"]) == ("mnist", 20, 20,
                                                                                            "dpmpp2m", 2, 4)
    frac = np.array(r["class_fractions"])
    assert frac.sum() == pytest.approx(1.0) and np.allclose(frac * 20, np.round(frac * 20))
    assert r["class_max_dev_points"] == pytest.approx(100 * np.abs(frac - 0.1).max())
    assert r["fid_ratio"] == pytest.approx(r["fid"] / r["fid_floor"])
    assert all(0 <= r[k] <= 1 for k in ("precision", "recall", "precision_floor", "recall_floor")) and r["pr_k"] == 3
    # four training steps give noise, far from digits: above the test-vs-train floor
    assert r["fid"] > r["fid_floor"] > 0
    assert _png(out.with_suffix(".png")).std() > 0


def test_evaluate_a_samples_file_from_scoregen_sample(image_run, evaluated, tmp_path):
    """`scoregen sample` then `evaluate --samples` scores the same images as drawing them in `evaluate`."""
    npz = tmp_path / "s.npz"
    assert main(["sample", str(image_run), "--n", "20", "--sampler", "dpmpp2m", "--steps", "2", "--seed", "0",
                 "--out", str(npz)]) == 0
    out = tmp_path / "f.json"
    assert main(["evaluate", str(image_run), "--samples", str(npz), "--out", str(out)]) == 0
    r, drawn = json.loads(out.read_text()), evaluated[1]
    assert r["source"] == str(npz) and r["nfe"] is None
    for key in ("fid", "fid_floor", "kid", "kid_floor", "class_fractions", "precision", "recall", "recall_floor"):
        assert r[key] == pytest.approx(drawn[key], rel=1e-9), key
    # and the file's images through the library give the CLI's numbers
    with np.load(npz) as f:
        direct = evaluate_images(f["images01"], "mnist")
    assert direct["fid"] == pytest.approx(r["fid"], rel=1e-9) and direct["kid"] == pytest.approx(r["kid"], rel=1e-9)


def test_clear_errors(image_run, tmp_path, capsys):
    def err(*argv):
        assert main(["evaluate", *map(str, argv)]) == 2
        return capsys.readouterr().err

    assert "does not exist" in err(tmp_path / "nope")
    digits = tmp_path / "digits"
    digits.mkdir()
    (digits / "config.yaml").write_text(C.dump_config(C.load_config("mnist-tiny", ["data.name=digits"])))
    e = err(digits)
    assert "'digits'" in e and "no classifier" in e and "fashion-mnist" in e
    bad = tmp_path / "bad.npz"
    np.savez(bad, samples=np.zeros((4, 1, 28, 28)))
    e = err(image_run, "--samples", bad)
    assert "images01" in e and "samples" in e
    assert "leave out" in err(image_run, "--samples", bad, "--n", 10)
    assert "does not exist" in err(image_run, "--samples", tmp_path / "missing.npz")
    assert "--n must be at least 2" in err(image_run, "--n", 1)


def test_evaluate_a_post_hoc_ema(tmp_path, capsys):
    """--ema-sigma-rel samples the reconstructed EMA, and the report says which; --samples refuses it."""
    require_shared_data("mnist")
    run = tmp_path / "ema"
    assert _train(run, "train.posthoc_ema=[0.05,0.1]", "train.posthoc_every=2") == 0
    out = tmp_path / "e.json"
    assert main(["evaluate", str(run), "--sampler", "dpmpp2m", "--steps", "2", "--n", "8", "--kid-subsets", "2",
                 "--ema-sigma-rel", "0.2", "--out", str(out)]) == 0
    assert "post-hoc EMA sigma_rel 0.2 at step 4" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["posthoc_ema"]["sigma_rel"] == 0.2 and r["posthoc_ema"]["snapshots"] == 2
    assert main(["evaluate", str(run), "--samples", str(tmp_path / "x.npz"), "--ema-sigma-rel", "0.1"]) == 2
    assert "leave out" in capsys.readouterr().err
