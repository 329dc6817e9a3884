"""benchmarks/images_peer.py (scoregen against diffusers on MNIST): its table and JSON, end to end on a
budget of a second, and the peer's network sized to scoregen's."""
import importlib.util
import json
from pathlib import Path

import pytest

from conftest import require_shared_data

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("images_peer", ROOT / "benchmarks" / "images_peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_rows_line_up():
    peer = load_benchmark()
    row = {"budget_minutes": 5.0, "model": "diffusers", "sampler": "DDIMPipeline", "nfe": 50, "fid": 12.345,
           "fid_ratio": 2.5, "kid": 0.0123, "class_max_dev_points": 1.7, "train_steps": 2400, "train_seconds": 300.2,
           "sample_seconds": 61.0}
    failed = {**{k: row[k] for k in ("budget_minutes", "model", "sampler", "nfe", "train_steps", "train_seconds")},
              "error": "failed: diverged"}
    lines = peer.table_lines([row, failed])
    assert len(lines) == 4 and len(lines[2]) == len(lines[0])  # header, rule, one full row as wide as the header
    assert "12.35" in lines[2] and "2.50" in lines[2] and "1.7pt" in lines[2] and "2400" in lines[2]
    assert lines[3].startswith("5 min") and lines[3].endswith("failed: diverged")


def test_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    require_shared_data("mnist")
    pytest.importorskip("diffusers")
    peer = load_benchmark()
    out = tmp_path / "peer"
    args = ["--budgets", "0.01", "--n", "8", "--nfe", "2", "--ddpm-steps", "2", "--threads", "1",
            "--sample-batch", "8", "--preset", "mnist-tiny", "--out", str(out), "data.limit=64"]
    result = peer.main(args)
    printed = capsys.readouterr().out
    rows = result["rows"]
    # DDPMPipeline, DDIMPipeline, then the preset's pc on the diffusers model and on scoregen's, at NFE 2
    assert [(r["model"], r["sampler"]) for r in rows] == [
        ("diffusers", "DDPMPipeline"), ("diffusers", "DDIMPipeline"), ("diffusers", "pc (scoregen)"),
        ("scoregen", "pc (scoregen)")]
    assert all("error" not in r and r["nfe"] == 2 and r["fid_floor"] > 0 for r in rows), rows
    assert "command: python benchmarks/images_peer.py --budgets 0.01" in printed
    assert printed.count("0.01 min diffusers DDPMPipeline") == 2  # as it ran, and in the closing table
    saved = json.loads((out / "images_peer.json").read_text())
    assert len(saved["rows"]) == 4 and saved["train"]["b0.01"]["scoregen"]["train_images"] == 64
    assert saved["train"]["b0.01"]["diffusers"]["train_images"] == 64
    assert saved["params"]["scoregen"] == 279633  # mnist-tiny's network
    assert 0.8 < saved["params"]["diffusers"] / saved["params"]["scoregen"] < 1.25
    grids = sorted(p.name for p in (out / "b0.01").glob("grid-*.png"))
    assert grids == ["grid-diffusers-DDIMPipeline-2.png", "grid-diffusers-DDPMPipeline-2.png",
                     "grid-diffusers-pc-2.png", "grid-scoregen-pc-2.png"]
    assert (out / "b0.01" / "diffusers" / "model_index.json").is_file()
    assert (out / "b0.01" / "scoregen" / "checkpoint.pt").is_file()
    # the CPU-budget rows: no 1000-NFE DDPMPipeline (--ddpm-steps 0), no scoregen sampler on the peer
    lean = peer.main(args[:args.index("--ddpm-steps")] + ["--ddpm-steps", "0", "--no-cross"]
                     + args[args.index("--ddpm-steps") + 2:])
    assert [(r["model"], r["sampler"], r["nfe"]) for r in lean["rows"]] == [
        ("diffusers", "DDIMPipeline", 2), ("scoregen", "pc (scoregen)", 2)]


def test_without_diffusers_one_line(monkeypatch):
    peer = load_benchmark()
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)  # as if it were not installed
    with pytest.raises(SystemExit) as e:
        peer.main(["--budgets", "0.01"])
    message = str(e.value)
    assert "\n" not in message and "needs the diffusers library" in message and "pip install" in message
