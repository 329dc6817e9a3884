"""Noise-conditional classifiers p_phi(y | x(t), t) for classifier guidance (Dhariwal & Nichol 2021).

Like the score networks they know no SDE: `net(x, c)` takes the per-example noise input c (shape (N,),
log std(t) in practice) and returns class logits (N, n_classes). `noisy_classifier.NoisyClassifier`
adds the SDE (c = log std(t), input scaling) and the training on noised data.

    ClassifierMLP   points (N, D): the FiLM residual trunk of `ScoreMLP` with a K-way head.
    ClassifierCNN   images (N, C, H, W): the U-Net's FiLM ResBlocks on a downsampling path, then
                    global average pooling and a linear head (the encoder half of Dhariwal &
                    Nichol's guidance classifier, at toy width).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...util import Registry
from .mlp import EMBEDDINGS, FiLMBlock
from .unet import ResBlock, check_inputs, make_embedding

__all__ = ["ClassifierMLP", "ClassifierCNN", "CLASSIFIERS", "build_classifier"]


def _check_int(owner: str, **values) -> None:
    for name, (v, lo) in values.items():
        if isinstance(v, bool) or int(v) != v or v < lo:
            raise ValueError(f"{owner} needs an integer {name} >= {lo}, got {name}={v!r}")


class ClassifierMLP(nn.Module):
    """logits(x, c) for points (N, dim): Linear -> `depth` FiLM blocks modulated by MLP(emb(c)) -> Linear."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 128, depth: int = 3, emb_dim: int = 64,
                 embedding: str = "sinusoidal"):
        super().__init__()
        _check_int("ClassifierMLP", dim=(dim, 1), n_classes=(n_classes, 2), hidden=(hidden, 1), depth=(depth, 1),
                   emb_dim=(emb_dim, 2))
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; choose one of {sorted(EMBEDDINGS)}")
        self.dim, self.n_classes = int(dim), int(n_classes)
        self.embed = EMBEDDINGS[embedding](int(emb_dim))
        self.cond = nn.Sequential(nn.Linear(int(emb_dim), hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(self.dim, hidden)
        self.blocks = nn.ModuleList(FiLMBlock(hidden) for _ in range(int(depth)))
        self.out = nn.Linear(hidden, self.n_classes)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ClassifierMLP(dim={self.dim}) takes points of shape (N, {self.dim}), got {tuple(x.shape)}")
        if c.shape != (x.shape[0],):
            raise ValueError(f"the noise input c must have shape ({x.shape[0]},), got {tuple(c.shape)}")
        e = self.cond(self.embed(c))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        return self.out(F.silu(h))


class ClassifierCNN(nn.Module):
    """logits(x, c) for images: conv -> [ResBlock(FiLM from the noise embedding) -> 2x2 average pool]
    per width in `channels` -> GroupNorm, SiLU, global average pool -> Linear."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, channels=(16, 32, 64), emb_dim: int = 64,
                 embedding: str = "fourier", fourier_scale: float = 16.0):
        super().__init__()
        widths = [int(c) for c in channels]
        _check_int("ClassifierCNN", in_channels=(in_channels, 1), n_classes=(n_classes, 2), emb_dim=(emb_dim, 2))
        if not widths or min(widths) < 1:
            raise ValueError(f"ClassifierCNN needs a non-empty list of positive channel widths, got {list(channels)}")
        self.in_channels, self.n_classes = int(in_channels), int(n_classes)
        self.embed = nn.Sequential(make_embedding(embedding, int(emb_dim), fourier_scale),
                                   nn.Linear(int(emb_dim), int(emb_dim)), nn.SiLU(), nn.Linear(int(emb_dim), int(emb_dim)))
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        cins = [widths[0]] + widths[:-1]
        self.blocks = nn.ModuleList(ResBlock(a, b, int(emb_dim), 0.0) for a, b in zip(cins, widths))
        self.norm = nn.GroupNorm(next(g for g in (8, 4, 2, 1) if widths[-1] % g == 0), widths[-1])
        self.head = nn.Linear(widths[-1], self.n_classes)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_inputs(x, c, self.in_channels, "ClassifierCNN")
        emb = self.embed(c)
        h = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.blocks) - 1 and min(h.shape[-2:]) >= 2:
                h = F.avg_pool2d(h, 2)
        h = F.silu(self.norm(h)).mean(dim=(2, 3))
        return self.head(h)


#: name -> classifier class; each takes plain-data keyword arguments only (for checkpoints)
CLASSIFIERS: Registry[type[nn.Module]] = Registry("classifier network", {"mlp": ClassifierMLP, "cnn": ClassifierCNN})


def build_classifier(name: str, **kwargs) -> nn.Module:
    """Build the classifier `name` ('mlp' or 'cnn') with `kwargs`; records them as `net.net_config`."""
    name = CLASSIFIERS.key(name)
    try:
        net = CLASSIFIERS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad options for classifier network {name!r}: {e}") from None
    net.net_config = {"name": name, "kwargs": dict(kwargs)}
    return net
