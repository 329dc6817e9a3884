"""The command line end to end on small runs, and its errors for bad input."""
import json

import numpy as np
import pytest

from scoregen.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", "moons", "--n", "500", "--out", str(out), "--steps", "150", "--no-progress",
                 "--checkpoint-every", "100"]) == 0
    return out


def test_train_writes_a_resumable_run(run_dir, capsys):
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl", "loss.png"):
        assert (run_dir / name).exists(), name
    # resuming to more steps continues from step 150
    assert main(["train", "--data", "moons", "--n", "500", "--out", str(run_dir), "--steps", "200", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 200


@pytest.mark.parametrize("sampler", ["dpmpp2m", "pc", "ode"])
def test_sample_writes_points_and_picture(run_dir, tmp_path, capsys, sampler):
    out = tmp_path / "s.npy"
    assert main(["sample", str(run_dir), "--n", "64", "--out", str(out), "--sampler", sampler, "--steps", "10"]) == 0
    x = np.load(out)
    assert x.shape == (64, 2) and np.isfinite(x).all()
    assert out.with_suffix(".png").exists()
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["nfe"] > 0


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "100", "--n", "200", "--samplers", "dpmpp2m", "pc"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["samplers"]) == {"dpmpp2m", "pc"}
    for v in metrics["samplers"].values():
        assert v["energy_distance"] >= 0 and len(v["component_shares"]) == 3
    for pic in ("samples.png", "score_field.png", "trajectories.png", "loss.png"):
        assert (out / pic).stat().st_size > 1000, pic


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "bogus", "--out", "{tmp}/r"], "unknown data set 'bogus'"),
    (["train", "--data", "{tmp}/missing.npy", "--out", "{tmp}/r"], "missing.npy"),
    (["train", "--data", "{tmp}/nan.npy", "--out", "{tmp}/r"], "NaN"),
    (["train", "--data", "{tmp}/flat.npy", "--out", "{tmp}/r"], "(N, D)"),
    (["train", "--data", "moons", "--out", "{tmp}/r", "train.bogus_key=3"], "bogus_key"),
    (["sample", "{tmp}/not_a_run"], "not a scoregen run folder"),
])
def test_bad_input_gets_one_clear_line(tmp_path, capsys, argv, message):
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_sampler_and_corrupt_checkpoint(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "--sampler", "bogus"]) == 2
    assert "unknown sampler 'bogus'" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (broken / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes()[:1000])
    assert main(["sample", str(broken)]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_key_values_may_follow_options(run_dir, tmp_path, capsys):
    """`sample RUN --steps 3 snr=0.05` applies snr like `sample RUN snr=0.05 --steps 3`; strays still fail."""
    def draw(name, first, last):
        out = tmp_path / f"{name}.npy"
        assert main(["sample", str(run_dir), *first, "--n", "32", "--sampler", "pc", "--steps", "3",
                     "--out", str(out), *last]) == 0
        return np.load(out)

    before = draw("before", ["snr=0.05"], [])
    np.testing.assert_array_equal(draw("after", [], ["snr=0.05"]), before)
    assert not np.array_equal(draw("default", [], []), before)  # the option did change the draw
    with pytest.raises(SystemExit):
        main(["sample", str(run_dir), "--steps", "3", "snr=0.05", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
