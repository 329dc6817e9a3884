"""A small CNN classifier for 28x28 grey images (MNIST, Fashion-MNIST): its features feed FID/KID.

Inception weights are not available offline, and Inception features are a poor fit for digits
anyway; the standard substitute (Binkowski et al. 2018, "Demystifying MMD GANs", sec. 5) is a
classifier trained on the data set itself, its penultimate layer serving as the feature space.

Architecture: three 3x3 conv + ReLU layers (16, 32, 64 channels) with 2x2 max pools
(28 -> 14 -> 7 -> 3), a dense layer of 128 units with ReLU (the *features*), dropout, and a
linear layer to the 10 classes. About 0.1 M parameters (0.4 MB of float32 weights).

Training (`train_classifier`) is reproducible: fixed seed, a private torch.Generator for the
shuffling and for the augmentation (random shifts of up to 2 pixels), Adam with a cosine
learning-rate decay. Inputs are images in [0, 1] of shape (N, 1, 28, 28).

Rebuild the shipped weights with:  python -m scoregen.evaluation.classifier --dataset mnist

Weights are saved as a scoregen checkpoint (`training/checkpoint.py`: atomic, tensors and plain
data only, {"kind": "feature-classifier", "state_dict", "info"}) and loaded with
`torch.load(weights_only=True)`. The shipped `scoregen/assets/*_classifier.pt` predate the
checkpoint format ({"state_dict", "info"} without its marker) and are still read.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import load_mnist
from ..training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["FeatureClassifier", "train_classifier", "save_classifier", "load_classifier", "classifier_path",
           "classifier_features", "classifier_predict", "accuracy", "CLASSIFIER_DATASETS", "IMAGE_SHAPE"]

#: data sets with a classifier; weights live in scoregen/assets/<name>_classifier.pt
CLASSIFIER_DATASETS = ("mnist", "fashion-mnist")
#: the shape (C, H, W) of the images the classifiers take
IMAGE_SHAPE = (1, 28, 28)
_ASSETS = Path(__file__).resolve().parents[1] / "assets"  # scoregen/assets (package data)
#: the checkpoint's "kind" entry
KIND = "feature-classifier"


class FeatureClassifier(nn.Module):
    """CNN for (N, 1, 28, 28) images in [0, 1]: `forward` gives logits, `features` the 128-d
    penultimate activations used by FID/KID."""

    feature_dim = 128

    def __init__(self, n_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        # batch norm makes a few epochs enough; in eval mode it is a fixed affine map
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(16), nn.BatchNorm2d(32), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64 * 3 * 3, self.feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"the classifier takes images of shape (N, 1, 28, 28) in [0, 1], got {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        h = F.max_pool2d(F.relu(self.bn3(self.conv3(h))), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2 (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def _batched(fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def classifier_features(model: FeatureClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate-layer features (N, 128) of images in [0, 1], computed in eval mode."""
    model.eval()
    dev = next(model.parameters()).device
    return _batched(lambda b: model.features(b.to(dev)).cpu(), images, batch_size)


def classifier_predict(model: FeatureClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (N,) of images in [0, 1]."""
    model.eval()
    dev = next(model.parameters()).device
    return _batched(lambda b: model(b.to(dev)).argmax(1).cpu(), images, batch_size)


def accuracy(model: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((classifier_predict(model, images) == labels).double().mean())


def train_classifier(dataset: str = "mnist", *, data_dir=None, epochs: int = 3, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, threads: int | None = 1, log=print):
    """Train `FeatureClassifier` on the training split of `dataset`; return (model, info).

    info = {"dataset", "test_accuracy", "epochs", "batch_size", "lr", "seed", "seconds"}.
    `threads` sets torch's intra-op threads for the run (1 leaves the machine to others) and
    restores the previous value afterwards.
    """
    if dataset not in CLASSIFIER_DATASETS:
        raise ValueError(f"no classifier recipe for {dataset!r}; choose one of {list(CLASSIFIER_DATASETS)}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        x, y = load_mnist("train", data_dir, name=dataset)
        xt, yt = load_mnist("test", data_dir, name=dataset)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = FeatureClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * math.ceil(len(x) / batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        start = time.time()
        for epoch in range(epochs):
            model.train()
            perm, total = torch.randperm(len(x), generator=gen), 0.0
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(model(_random_shift(x[idx], gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            acc = accuracy(model, xt, yt)
            if log:
                log(f"epoch {epoch + 1}/{epochs}: train loss {total / len(x):.4f}, test accuracy {acc:.4f} "
                    f"({time.time() - start:.0f} s)")
        info = {"dataset": dataset, "test_accuracy": acc, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "seed": seed, "seconds": round(time.time() - start, 1)}
        return model.eval(), info
    finally:
        torch.set_num_threads(old_threads)


def classifier_path(dataset: str) -> Path:
    return _ASSETS / f"{dataset}_classifier.pt"


def save_classifier(model: FeatureClassifier, path, info: dict | None = None) -> Path:
    """Write {'kind', 'state_dict': tensors, 'info': plain data} as a scoregen checkpoint (atomic:
    tmp file + rename; `training.checkpoint.save_checkpoint`)."""
    state = {"kind": KIND, "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
             "info": dict(info or {})}
    return save_checkpoint(path, state)


def load_classifier(dataset: str = "mnist", path=None, device=None) -> FeatureClassifier:
    """The trained classifier for `dataset` (eval mode), from `path` or the shipped assets."""
    path = Path(path) if path is not None else classifier_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier weights at {path}; build them with "
                                f"`python -m scoregen.evaluation.classifier --dataset {dataset}` (a few minutes on a CPU)")
    # the shipped assets predate the checkpoint format: accepted without its marker
    blob = load_checkpoint(path, map_location="cpu", accept_unmarked=True)
    if blob.get("kind", KIND) != KIND:
        raise CheckpointError(f"{path} is a scoregen checkpoint but not a feature classifier (kind={blob['kind']!r})")
    if not isinstance(blob.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a scoregen classifier file (no 'state_dict' entry); rebuild it with "
                              f"`python -m scoregen.evaluation.classifier`")
    model = FeatureClassifier()
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]  # torch's message spans lines: one line, shortened
        raise CheckpointError(f"{path} does not match the FeatureClassifier architecture: {detail}") from None
    model.info = blob.get("info", {})
    return model.to(device or "cpu").eval()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m scoregen.evaluation.classifier", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist", choices=CLASSIFIER_DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="weights file (default: scoregen/assets/<dataset>_classifier.pt)")
    a = p.parse_args(argv)
    model, info = train_classifier(a.dataset, data_dir=a.data_dir, epochs=a.epochs, seed=a.seed, threads=a.threads)
    out = save_classifier(model, a.out or classifier_path(a.dataset), info)
    print(f"{a.dataset}: test accuracy {info['test_accuracy']:.4f} after {info['epochs']} epochs "
          f"({info['seconds']} s); weights written to {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
