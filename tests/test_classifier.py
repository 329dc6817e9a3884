"""The feature classifier's weights file: a scoregen checkpoint (atomic, code-free), the shipped
unmarked assets still read, and every bad file refused in one line that names it."""

import os

import pytest
import torch

from scoregen.evaluation.classifier import KIND, FeatureClassifier, classifier_path, load_classifier, save_classifier
from scoregen.training import checkpoint as ck
from scoregen.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

torch.set_num_threads(1)


def _model(seed=0):
    torch.manual_seed(seed)
    return FeatureClassifier().eval()


def _one_line_naming(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg


def test_round_trip_through_the_checkpoint_format(tmp_path):
    model = _model()
    info = {"dataset": "mnist", "test_accuracy": 0.99, "epochs": 3}
    path = save_classifier(model, tmp_path / "sub" / "clf.pt", info)
    assert sorted(p.name for p in path.parent.iterdir()) == ["clf.pt"]  # no temporary file left
    state = load_checkpoint(path)  # a marked scoregen checkpoint, read with weights_only=True
    assert state["format"] == ck.FORMAT and state["kind"] == KIND and state["info"] == info
    loaded = load_classifier(path=path)
    assert not loaded.training and loaded.info == info
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(loaded.features(x), model.features(x))


def test_unmarked_files_like_the_shipped_assets_are_read(tmp_path):
    shipped = classifier_path("mnist")
    assert "format" not in torch.load(shipped, weights_only=True)  # the assets predate the format
    assert load_classifier("mnist").info["dataset"] == "mnist"
    model = _model(1)
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": model.state_dict(), "info": {"epochs": 1}}, legacy)
    loaded = load_classifier(path=legacy)
    assert loaded.info == {"epochs": 1}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_missing_file_names_it_and_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt.*python -m scoregen.evaluation.classifier"):
        load_classifier(path=tmp_path / "nope.pt")


def test_corrupt_files_give_one_line_naming_the_file(tmp_path):
    good = save_classifier(_model(), tmp_path / "good.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.pt").write_bytes(os.urandom(2048))
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("trunc.pt", "random.pt", "empty.pt"):
        with pytest.raises(CheckpointError, match="truncated, corrupt") as e:
            load_classifier(path=tmp_path / name)
        _one_line_naming(e, tmp_path / name)


class _Exploit:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_foreign_files_give_one_line_naming_the_file(tmp_path):
    cases = {
        "tensor.pt": (torch.ones(3), "not a scoregen checkpoint"),
        "dict.pt": ({"weights": {"w": torch.ones(2)}}, "no 'state_dict' entry"),
        "other-format.pt": ({"format": "elsewhere", "state_dict": {}}, "not a scoregen checkpoint"),
        "shape.pt": ({"state_dict": {"w": torch.ones(2)}}, "does not match the FeatureClassifier architecture"),
    }
    for name, (obj, match) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match=match) as e:
            load_classifier(path=tmp_path / name)
        _one_line_naming(e, tmp_path / name)
    other = save_checkpoint(tmp_path / "noisy.pt", {"kind": "noisy-classifier", "state_dict": {}})
    with pytest.raises(CheckpointError, match="not a feature classifier") as e:
        load_classifier(path=other)
    _one_line_naming(e, other)
    _Exploit.marker = tmp_path / "PWNED"
    torch.save({"state_dict": {}, "x": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could run code") as e:
        load_classifier(path=tmp_path / "evil.pt")
    _one_line_naming(e, tmp_path / "evil.pt")
    assert not _Exploit.marker.exists()
