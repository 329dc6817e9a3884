"""Atomic, code-free checkpoints: round trip, and a clear error for every kind of bad file."""
import os
import pickle

import pytest
import torch

import scoregen.training.checkpoint as ck
from scoregen.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state():
    return {"weights": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7, "name": "mlp",
            "history": [0.5, 0.25], "betas": (0.9, 0.999), "rng": torch.Generator().manual_seed(1).get_state()}


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "checkpoint.pt", _state())
    state = load_checkpoint(path)
    assert state["format"] == ck.FORMAT and state["version"] == ck.VERSION
    torch.testing.assert_close(state["weights"]["w"], _state()["weights"]["w"])
    assert state["step"] == 7 and state["history"] == [0.5, 0.25] and state["betas"] == (0.9, 0.999)
    assert torch.equal(state["rng"], _state()["rng"])
    assert load_checkpoint(tmp_path / "sub")["step"] == 7  # a run folder means its checkpoint.pt
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_and_random_files(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _state()).read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.pt").write_bytes(os.urandom(2048))
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("trunc.pt", "random.pt", "empty.pt"):
        with pytest.raises(CheckpointError, match=f"cannot read .*{name}.*truncated, corrupt"):
            load_checkpoint(tmp_path / name)


class _Exploit:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # creating the file is the "code execution"


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_code_carrying_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "PWNED"
    _Exploit.marker = marker
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save({"format": ck.FORMAT, "version": 1, "x": _Exploit()}, path)
    else:
        path.write_bytes(pickle.dumps({"format": ck.FORMAT, "x": _Exploit()}, protocol=2))
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_torch_file_without_marker(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a scoregen checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="not a scoregen checkpoint"):
        load_checkpoint(tmp_path / "tensor.pt")


def test_newer_version_is_refused(tmp_path):
    torch.save({"format": ck.FORMAT, "version": ck.VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(tmp_path / "new.pt")


def test_save_refuses_objects_and_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", _state())
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"state\['bad'\] is a object"):
        save_checkpoint(path, {"bad": object()})

    def crash(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
