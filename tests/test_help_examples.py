"""Every example in every command's --help runs (issue 17): on tiny point runs always, on a tiny MNIST
run where the shared data are present. The examples are read from the --help text a user sees; only
the sizes (steps, samples, network width) are made small by options appended after them."""
import numpy as np
import pytest

from conftest import require_shared_data
from scoregen.cli import COMMANDS, main

#: appended to each command's examples so that it runs in seconds (later options win in argparse)
TINY_MLP = ["model.hidden=16", "model.depth=1", "model.emb_dim=8"]
QUICK = {
    "train": ["--steps", "40", "--no-progress", *TINY_MLP],
    "demo": ["--steps", "40", "--n", "64", "--no-progress", *TINY_MLP],
    "distill": ["--steps", "20", "--no-progress"],
    "sample": ["--n", "32"],
    "likelihood": ["--n", "8", "--rtol", "1e-3", "--atol", "1e-3", "--no-progress"],
    "compare": ["--n", "32", "--nfe", "4", "8"],
    "evaluate": ["--n", "8", "--steps", "2", "--kid-subsets", "2"],
    "inpaint": ["--steps", "4", "--samples", "2"],
    "restore": ["--steps", "4", "--samples", "2"],
    "edit": ["--steps", "4", "--samples", "2"],
}
QUICK_IMAGES = {"train": ["--steps", "2", "--no-progress", "data.limit=64", "model.channels=[8,8,8,8]",
                          "model.embed_dim=16"],
                "distill": ["--steps", "2", "--no-progress"],
                "sample": ["--n", "4", "--steps", "2"]}


def help_examples(command, capsys) -> list[str]:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text, f"`scoregen {command} --help` shows no examples"
    lines = text.split("examples:", 1)[1].splitlines()
    return [ln.strip() for ln in lines if ln.strip().startswith("scoregen ")]


def test_every_command_has_examples_and_the_issue_ones_are_there(capsys):
    found = {c: help_examples(c, capsys) for c in COMMANDS}
    assert all(found.values()), found
    assert "scoregen sample runs/mix --sampler ode rtol=1e-4" in found["sample"]
    assert any("snr=0.1" in e for e in found["sample"])
    assert any("churn=40" in e for e in found["evaluate"])


def _run_examples(kind, quick, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    ran = []
    for command in COMMANDS:
        for example in help_examples(command, capsys):
            if ("mnist" in example) != (kind == "images"):
                continue
            argv = example.split()[1:]
            extra = list(quick.get(command, QUICK.get(command, [])))
            if "--samples" in argv and command == "evaluate":  # a file is scored as it is: no --n, --steps
                extra = extra[extra.index("--kid-subsets"):]
            code = main(argv + extra)
            err = capsys.readouterr().err
            assert code == 0, (example, err)
            ran.append(example)
    return ran


def test_point_examples_run(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "my_points.csv", rng.normal(size=(300, 2)), delimiter=",")
    np.save(tmp_path / "points.npy", rng.normal(size=(3, 2)).astype(np.float32))
    np.save(tmp_path / "A.npy", np.array([[1.0, 1.0]]))
    ran = _run_examples("points", {}, capsys, monkeypatch, tmp_path)
    assert {e.split()[1] for e in ran} == set(COMMANDS) - {"evaluate"}  # evaluate scores images only
    assert (tmp_path / "runs" / "mix" / "samples.npy").exists()


def test_image_examples_run(tmp_path, capsys, monkeypatch):
    require_shared_data("mnist")
    ran = _run_examples("images", QUICK_IMAGES, capsys, monkeypatch, tmp_path)
    assert {e.split()[1] for e in ran} >= {"train", "distill", "sample", "evaluate", "inpaint", "restore", "edit"}
