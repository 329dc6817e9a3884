"""`scoregen inpaint`, `restore` and `edit` end to end on small runs (points, and MNIST images when the
shared data are present), and their one-line errors for bad masks and operators."""
import json

import numpy as np
import pytest

from conftest import require_shared_data
from scoregen.cli import main


@pytest.fixture(scope="module")
def point_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "points"
    assert main(["train", "--data", "moons", "--n", "300", "--out", str(out), "--steps", "60", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    require_shared_data("mnist")
    out = tmp_path_factory.mktemp("steer") / "mnist"
    assert main(["train", "--data", "mnist", "--config", "mnist-tiny", "--out", str(out), "--steps", "3", "--no-progress",
                 "data.limit=64", "model.channels=[8,8,8,8]", "model.embed_dim=16"]) == 0
    return out


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_points_inpaint_restore_edit(point_run, tmp_path):
    x = np.array([[0.5, 0.2], [-0.5, 0.8], [1.5, -0.3]], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "A.npy", np.array([[1.0, 1.0]]))
    common = ["--input", str(tmp_path / "x.npy"), "--samples", "5", "--steps", "10"]
    assert main(["inpaint", str(point_run), *common, "--mask", "1,0", "--out", str(tmp_path / "i")]) == 0
    with np.load(tmp_path / "i" / "outputs.npz") as f:
        assert f["samples"].shape == (3, 5, 2)
        assert np.allclose(f["samples"][:, :, 0], x[:, None, 0], atol=1e-5)  # the known coordinate is kept
    assert main(["restore", str(point_run), *common, "--operator", "matrix", "--matrix", str(tmp_path / "A.npy"),
                 "--sigma-y", "0.1", "--out", str(tmp_path / "r")]) == 0
    assert _summary(tmp_path / "r")["nfe"] == 10
    assert main(["edit", str(point_run), *common, "--t0", "0.3", "--out", str(tmp_path / "e")]) == 0
    for sub in "ire":
        assert (tmp_path / sub / "panel.png").stat().st_size > 0


def test_images_inpaint_restore_edit(image_run, tmp_path):
    common = ["--input", "mnist", "--n", "2", "--samples", "2", "--steps", "3"]
    assert main(["inpaint", str(image_run), *common, "--mask", "box", "--resample", "2", "--out", str(tmp_path / "i")]) == 0
    s = _summary(tmp_path / "i")
    assert s["known_fraction"] == 0.5 and 0 <= s["classifier_accuracy"] <= 1 and np.isfinite(s["psnr_mean"])
    for op in ("superres", "blur", "inpaint-random"):
        for method in ("pigdm", "dps"):
            assert main(["restore", str(image_run), *common, "--operator", op, "--method", method,
                         "--out", str(tmp_path / f"r-{op}-{method}")]) == 0
    assert main(["edit", str(image_run), *common, "--t0", "0.5", "--out", str(tmp_path / "e")]) == 0
    with np.load(tmp_path / "e" / "outputs.npz") as f:
        assert f["samples"].shape == (2, 2, 1, 28, 28)


def _bad_files(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2), dtype=np.float32))
    np.save(tmp_path / "m.npy", np.ones((1, 27, 28)))
    np.save(tmp_path / "A.npy", np.ones((1, 3)))


def test_bad_masks_and_operators_points(point_run, tmp_path, capsys):
    """The point cases run without MNIST (the image cases are their own test, which needs it)."""
    _bad_files(tmp_path)
    cases = [
        (["inpaint", str(point_run), "--input", str(tmp_path / "x.npy"), "--mask", "1,0,1"], "mask has shape (3,)"),
        (["restore", str(point_run), "--input", str(tmp_path / "x.npy"), "--operator", "matrix", "--matrix",
          str(tmp_path / "A.npy")], "3 columns"),
    ]
    _check_errors(cases, capsys)


def test_bad_masks_and_operators_images(image_run, tmp_path, capsys):
    _bad_files(tmp_path)
    cases = [
        (["inpaint", str(image_run), "--input", "mnist", "--mask", str(tmp_path / "m.npy")], "mask has shape (1, 27, 28)"),
        (["inpaint", str(image_run), "--input", "mnist", "--mask", "box:20,0,10,28"], "does not fit"),
        (["restore", str(image_run), "--input", "mnist", "--operator", "superres", "--factor", "5"], "factor 5 must divide"),
        (["inpaint", str(image_run), "--input", str(tmp_path / "x.npy"), "--mask", "box"], "trained on shape (1, 28, 28)"),
        (["edit", str(image_run), "--input", "mnist", "--t0", "2"], "t0 must lie in"),
    ]
    _check_errors(cases, capsys)


def _check_errors(cases, capsys):
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
