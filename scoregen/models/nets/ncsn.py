"""NCSN: the noise-conditional score network of Song & Ermon (2019), a RefineNet-lite.

    s_theta(x, c) with c the noise input (log sigma_i on the NCSN ladder, or the SDE time),
    trained with the multi-sigma loss sum_i sigma_i^2 E|| s(x + sigma_i z, sigma_i) + z / sigma_i ||^2
    (Song & Ermon 2019, eq. 6; losses.ncsn_loss).

Noise conditioning is by **conditional instance normalisation++** (CIN++, Song & Ermon 2019,
eq. 7): for a feature map x with channel means mu_k, channel stds s_k, and m, v the mean and std
of the mu_k across channels,

    CIN++(x)_k = gamma_k (x_k - mu_k) / s_k + beta_k + alpha_k (mu_k - m) / v.

The paper looks (gamma, beta, alpha) up in a table indexed by the noise level i; here c is a
continuous number, so the three come from a linear map of a Fourier (or sinusoidal) embedding
of c. On a ladder of L levels this is as expressive as the table; between levels it interpolates,
so the same network also serves the continuous-time samplers.

Layout (RefineNet-lite): an encoder of 4 stages of conditional residual blocks (full
resolution; 1/2; 1/4; 1/4 with dilation 2, as in NCSN), then RefineNet blocks that fuse each
stage with the coarser result (multi-resolution fusion by upsampling to the finer size, chained
residual pooling). Downsampling is a ceil-mode mean pool and upsampling interpolates to the skip's
exact size, so any input size works. ELU activations as in the paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import LabelEmbedding, check_inputs, make_embedding

__all__ = ["NCSN", "CondInstanceNormPlus"]


class CondInstanceNormPlus(nn.Module):
    """CIN++ with (gamma, beta, alpha) = affine map of the noise embedding (see module docstring)."""

    def __init__(self, ch: int, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.affine = nn.Linear(emb_dim, 3 * ch)
        # start near the paper's init gamma, alpha ~ N(1, 0.02), beta = 0
        nn.init.normal_(self.affine.weight, std=0.02)
        with torch.no_grad():
            self.affine.bias.copy_(torch.cat([torch.ones(ch), torch.zeros(ch), torch.ones(ch)]))

    def forward(self, x, emb):
        mu = x.mean(dim=(2, 3), keepdim=True)
        s = (x.var(dim=(2, 3), keepdim=True, unbiased=False) + self.eps).sqrt()
        m = mu.mean(dim=1, keepdim=True)
        v = (mu.var(dim=1, keepdim=True, unbiased=False) + self.eps).sqrt()
        gamma, beta, alpha = self.affine(emb)[:, :, None, None].chunk(3, dim=1)
        return gamma * (x - mu) / s + beta + alpha * (mu - m) / v


class NormActConv(nn.Module):
    """CIN++ -> ELU -> 3x3 convolution (optionally dilated)."""

    def __init__(self, cin, cout, emb_dim, dilation=1):
        super().__init__()
        self.norm = CondInstanceNormPlus(cin, emb_dim)
        self.conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)

    def forward(self, x, emb):
        return self.conv(F.elu(self.norm(x, emb)))


class CondResBlock(nn.Module):
    """Two NormActConv units with a shortcut; `down` halves the size by a 2x2 mean pool."""

    def __init__(self, cin, cout, emb_dim, down=False, dilation=1):
        super().__init__()
        self.a = NormActConv(cin, cout, emb_dim, dilation)
        self.b = NormActConv(cout, cout, emb_dim, dilation)
        self.down = down
        self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or down) else nn.Identity()

    def _pool(self, h):
        return F.avg_pool2d(h, 2, ceil_mode=True) if self.down else h

    def forward(self, x, emb):
        h = self._pool(self.b(self.a(x, emb), emb))
        return h + self._pool(self.skip(x))


class RefineBlock(nn.Module):
    """RefineNet block (Lin et al. 2017), lite: residual units per input, multi-resolution
    fusion at the finest input's size, chained residual pooling, one output residual unit."""

    def __init__(self, in_chs, cout, emb_dim, crp_stages=1):
        super().__init__()
        self.adapt = nn.ModuleList([NormActConv(c, cout, emb_dim) for c in in_chs])
        self.crp = nn.ModuleList([NormActConv(cout, cout, emb_dim) for _ in range(crp_stages)])
        self.out = NormActConv(cout, cout, emb_dim)

    def forward(self, xs, emb):
        size = xs[0].shape[-2:]  # inputs listed finest first
        h = sum(F.interpolate(a(x, emb), size=size, mode="bilinear", align_corners=False)
                if x.shape[-2:] != size else a(x, emb) for a, x in zip(self.adapt, xs))
        path = h
        for unit in self.crp:
            path = unit(F.max_pool2d(path, 5, stride=1, padding=2), emb)
            h = h + path
        return h + self.out(h, emb)


class NCSN(nn.Module):
    """Noise-conditional RefineNet-lite score network with CIN++ (Song & Ermon 2019).

    ngf: base width (the paper uses 64 on MNIST/CIFAR-10; 32 keeps CPU runs short).
    embedding / fourier_scale: features of c (Fourier scale 16 suits c = log sigma, as NCSN++).
    crp_stages: chained-residual-pooling stages per RefineBlock (RefineNet uses 2; 1 halves the
    cost of the 5x5 max pools, the slowest part on a CPU).
    n_classes > 0 adds a label embedding (null label n_classes for y=None) to the noise embedding.
    """

    def __init__(self, in_channels: int = 1, ngf: int = 32, emb_dim: int = 64, embedding: str = "fourier",
                 fourier_scale: float = 16.0, crp_stages: int = 1, n_classes: int = 0):
        super().__init__()
        if int(ngf) < 1 or int(emb_dim) < 2:
            raise ValueError(f"NCSN needs ngf >= 1 and emb_dim >= 2, got ngf={ngf}, emb_dim={emb_dim}")
        self.in_channels, f = int(in_channels), int(ngf)
        self.embed = nn.Sequential(make_embedding(embedding, emb_dim, fourier_scale),
                                   nn.Linear(emb_dim, emb_dim), nn.ELU(), nn.Linear(emb_dim, emb_dim))
        self.label = LabelEmbedding(n_classes, emb_dim)
        self.n_classes = self.label.n_classes  # the trainer and guidance read it
        self.conv_in = nn.Conv2d(in_channels, f, 3, padding=1)
        e = emb_dim
        self.stages = nn.ModuleList([
            nn.ModuleList([CondResBlock(f, f, e), CondResBlock(f, f, e)]),
            nn.ModuleList([CondResBlock(f, 2 * f, e, down=True), CondResBlock(2 * f, 2 * f, e)]),
            nn.ModuleList([CondResBlock(2 * f, 2 * f, e, down=True), CondResBlock(2 * f, 2 * f, e)]),
            nn.ModuleList([CondResBlock(2 * f, 2 * f, e, dilation=2), CondResBlock(2 * f, 2 * f, e, dilation=2)]),
        ])
        self.refine = nn.ModuleList([
            RefineBlock([2 * f], 2 * f, e, crp_stages),
            RefineBlock([2 * f, 2 * f], 2 * f, e, crp_stages),
            RefineBlock([2 * f, 2 * f], f, e, crp_stages),
            RefineBlock([f, f], f, e, crp_stages),
        ])
        self.out = NormActConv(f, in_channels, e)

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(x, c, self.in_channels, "NCSN")
        emb = self.embed(c)
        lab = self.label(y, x.shape[0], x.device)
        emb = emb if lab is None else emb + lab
        h, feats = self.conv_in(x), []
        for stage in self.stages:
            for block in stage:
                h = block(h, emb)
            feats.append(h)
        h = self.refine[0]([feats[3]], emb)
        for refine, skip in zip(self.refine[1:], reversed(feats[:3])):
            h = refine([skip, h], emb)
        return self.out(h, emb)
