"""Embeddings of a per-example scalar noise input c (shape (N,)) into feature vectors (N, dim).

The networks see the noise level only through these features, so that a smooth scalar becomes a
set of oscillations of several frequencies a linear layer can combine.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinusoidalEmbedding", "GaussianFourierEmbedding"]


def _check_dim(name: str, dim: int) -> int:
    if int(dim) != dim or dim < 2 or dim % 2:
        raise ValueError(f"{name} needs an even dim >= 2, got dim={dim!r}")
    return int(dim)


def _check_input(c: torch.Tensor) -> torch.Tensor:
    if c.dim() != 1:
        raise ValueError(f"the noise input c must have shape (N,), got {tuple(c.shape)}")
    return c


class SinusoidalEmbedding(nn.Module):
    """Transformer positional encoding of a scalar (Vaswani et al. 2017; DDPM's time embedding):

        emb(c) = [sin(c w_0), ..., sin(c w_{h-1}), cos(c w_0), ..., cos(c w_{h-1})],
        w_k = max_period^(-k / h),  h = dim / 2.

    Frequencies are geometric from 1 down to 1/max_period, so the lowest ones vary slowly over the
    whole range of c (Vaswani et al. 2017; Ho et al. 2020 use it on the time step, ScoreMLP by default
    on log sigma).
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.dim = _check_dim("SinusoidalEmbedding", dim)
        if not max_period > 1:
            raise ValueError(f"SinusoidalEmbedding needs max_period > 1, got {max_period!r}")
        half = self.dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        # a buffer so the embedding follows .to(device) and sits in the state dict
        self.register_buffer("freqs", freqs.float())

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        args = _check_input(c)[:, None].to(self.freqs.dtype) * self.freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=1)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a scalar (Tancik et al. 2020; the time features of Song et al. 2021):

        emb(c) = [sin(2 pi c W), cos(2 pi c W)],  W ~ N(0, scale^2 I_{dim/2}) drawn once.

    W is fixed (not trained) and kept as a buffer, so a checkpoint carries the exact frequencies.
    NCSN++ uses scale 16 on c = log sigma.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.dim = _check_dim("GaussianFourierEmbedding", dim)
        if not scale > 0:
            raise ValueError(f"GaussianFourierEmbedding needs scale > 0, got {scale!r}")
        self.register_buffer("W", torch.randn(self.dim // 2) * float(scale))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        args = 2 * math.pi * _check_input(c)[:, None].to(self.W.dtype) * self.W[None]
        return torch.cat([args.sin(), args.cos()], dim=1)
