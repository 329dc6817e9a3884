"""U-Net score networks for images: the small U-Net of Song et al. 2021's MNIST tutorial (`SeedUNet`) and a
configurable one after DDPM (Ho et al. 2020).

Both follow the nets contract `net(x, c, y=None)`: x (N, C, H, W), c a per-example noise input of
shape (N,) (log std or time, chosen by `models.ScoreModel`), y optional class labels (N,) int64.
They know no SDE: the division of the output by the marginal std that the tutorial's ScoreNet does
inside its network is done by `ScoreModel(scale_by_std=True)`.

References: Ronneberger et al. 2015 (U-Net); Ho et al. 2020 (DDPM U-Net: residual blocks,
GroupNorm, self-attention at chosen resolutions); Dhariwal & Nichol 2021 and Perez et al. 2018
(FiLM: a feature-wise scale and shift from the conditioning); Song et al. 2021 (the
ScoreNet of its MNIST tutorial, with Gaussian random Fourier time features).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding

__all__ = ["SeedUNet", "UNet", "LabelEmbedding", "check_inputs", "make_embedding"]


def check_inputs(x: torch.Tensor, c: torch.Tensor, in_channels: int, name: str) -> None:
    """Fail early with a readable message instead of a shape error from inside a convolution."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name} expects images of shape (N, {in_channels}, H, W), got {tuple(x.shape)}")
    if c.shape != (x.shape[0],):
        raise ValueError(f"{name} expects the noise input c of shape ({x.shape[0]},), got {tuple(c.shape)}")


def make_embedding(kind: str, dim: int, fourier_scale: float) -> nn.Module:
    """'fourier' (Gaussian random features, as in Song et al. 2021) or 'sinusoidal' (DDPM, Ho et al. 2020)
    features of c."""
    if kind == "fourier":
        return GaussianFourierEmbedding(dim, scale=fourier_scale)
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    raise ValueError(f"embedding must be 'fourier' or 'sinusoidal', got {kind!r}")


class LabelEmbedding(nn.Module):
    """Class labels 0..n_classes-1 plus a null label n_classes (for y=None / label dropout).

    The embedding is *added* to the noise embedding, so every block that sees c sees y too
    (a label table that the forward pass really uses).
    """

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        if int(n_classes) != n_classes or n_classes < 0:
            raise ValueError(f"n_classes must be an integer >= 0, got {n_classes!r}")
        self.n_classes = int(n_classes)
        self.table = nn.Embedding(self.n_classes + 1, dim) if self.n_classes > 0 else None

    def forward(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        if self.table is None:
            if y is not None:
                raise ValueError("this network was built with n_classes=0 (unconditional); pass y=None "
                                 "or build it with n_classes > 0")
            return None
        if y is None:
            y = torch.full((n,), self.n_classes, dtype=torch.long, device=device)
        if y.shape != (n,) or y.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels y must be integers of shape ({n},), got {y.dtype} {tuple(y.shape)}")
        if not torch.compiler.is_compiling() and y.device.type == "cpu" and (
            (y < 0).any() or (y > self.n_classes).any()
        ):
            raise ValueError(f"labels must lie in 0..{self.n_classes} ({self.n_classes} = no label), "
                             f"got values in {int(y.min())}..{int(y.max())}")
        return self.table(y.long())


def _gn(ch: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the most groups (up to max_groups, a power of two) that divide the channels."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if g <= max_groups and ch % g == 0)
    return nn.GroupNorm(groups, ch)


# --- the small U-Net of the Score-SDE MNIST tutorial ----------------------------------------
class SeedUNet(nn.Module):
    """The small time-conditional U-Net ("ScoreNet") of Song et al. 2021's MNIST tutorial, for 28x28 images.

    Time features: emb = SiLU(Dense([sin 2 pi W c, cos 2 pi W c])), W ~ N(0, 30^2) fixed.
    Encoder: 3x3 convolutions without padding (the first with stride 1, then stride 2) to
    channels [32, 64, 128, 256]; after each, a dense projection of emb is added per channel,
    then GroupNorm and SiLU. Decoder: transposed convolutions mirroring them, each taking the
    concatenation with the encoder's feature map of the same size (skip connection).

    Any input of at least 17x17 works (transposed convolutions are told the skip's size);
    28x28 reproduces the tutorial's 28 -> 26 -> 12 -> 5 -> 2 ladder. The tutorial divides the output by
    the marginal std here; this class does not (see `ScoreModel(scale_by_std=True)`).
    """

    def __init__(self, in_channels: int = 1, channels=(32, 64, 128, 256), embed_dim: int = 256,
                 fourier_scale: float = 30.0, n_classes: int = 0):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"SeedUNet has 4 levels: channels must list 4 widths, got {list(channels)}")
        c1, c2, c3, c4 = (int(c) for c in channels)
        self.in_channels = int(in_channels)
        self.embed = nn.Sequential(GaussianFourierEmbedding(embed_dim, scale=fourier_scale),
                                   nn.Linear(embed_dim, embed_dim))
        self.label = LabelEmbedding(n_classes, embed_dim)
        self.n_classes = self.label.n_classes  # the trainer and guidance read it
        # encoder (bias-free convolutions: GroupNorm follows)
        self.conv = nn.ModuleList([
            nn.Conv2d(in_channels, c1, 3, stride=1, bias=False),
            nn.Conv2d(c1, c2, 3, stride=2, bias=False),
            nn.Conv2d(c2, c3, 3, stride=2, bias=False),
            nn.Conv2d(c3, c4, 3, stride=2, bias=False),
        ])
        self.dense = nn.ModuleList([nn.Linear(embed_dim, c) for c in (c1, c2, c3, c4, c3, c2, c1)])
        # the tutorial's GroupNorm(4, 32) first, GroupNorm(32, .) after; fewer groups for narrow widths
        self.norm = nn.ModuleList([_gn(c1, 4), _gn(c2), _gn(c3), _gn(c4)])
        # decoder
        self.tconv = nn.ModuleList([
            nn.ConvTranspose2d(c4, c3, 3, stride=2, bias=False),
            nn.ConvTranspose2d(c3 + c3, c2, 3, stride=2, bias=False),
            nn.ConvTranspose2d(c2 + c2, c1, 3, stride=2, bias=False),
            nn.ConvTranspose2d(c1 + c1, in_channels, 3, stride=1),
        ])
        self.tnorm = nn.ModuleList([_gn(c3), _gn(c2), _gn(c1)])

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(x, c, self.in_channels, "SeedUNet")
        if min(x.shape[-2:]) < 17:
            raise ValueError(f"SeedUNet needs images of at least 17x17 pixels, got {tuple(x.shape[-2:])}")
        emb = self.embed(c)
        lab = self.label(y, x.shape[0], x.device)
        emb = F.silu(emb if lab is None else emb + lab)
        h, skips = x, []
        for i in range(4):
            h = self.conv[i](h) + self.dense[i](emb)[:, :, None, None]
            h = F.silu(self.norm[i](h))
            skips.append(h)
        skips.pop()  # the bottleneck is not concatenated with itself
        for i in range(3):
            skip = skips.pop()
            h = self.tconv[i](h, output_size=skip.shape[-2:])
            h = F.silu(self.tnorm[i](h + self.dense[4 + i](emb)[:, :, None, None]))
            h = torch.cat([h, skip], dim=1)
        return self.tconv[3](h, output_size=x.shape[-2:])


# --- configurable U-Net (DDPM, Ho et al. 2020) --------------------------------------------
class ResBlock(nn.Module):
    """GN -> SiLU -> conv -> FiLM(emb) -> GN -> SiLU -> dropout -> conv, plus a (1x1) shortcut.

    FiLM: h <- GN(h) (1 + s(emb)) + b(emb), with (s, b) a linear map of SiLU(embedding)
    (Perez et al. 2018; the "scale-shift norm" of Dhariwal & Nichol 2021).
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual: x + proj(attn(GN(x)))."""

    def __init__(self, ch: int, heads: int):
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention needs channels ({ch}) divisible by heads ({heads})")
        self.heads, self.norm = heads, _gn(ch)
        self.qkv, self.proj = nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x, emb=None):
        n, ch, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, ch // self.heads, hgt * wid).unbind(1)
        # (N, heads, HW, d) layout for scaled_dot_product_attention
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, ch, hgt, wid))


class UNet(nn.Module):
    """A configurable U-Net score network (after DDPM, Ho et al. 2020).

    Levels l = 0..L-1 (L = len(channel_mults)) work at resolution H / 2^l with
    base_channels * channel_mults[l] channels and `num_res_blocks` ResBlocks each; self-attention
    follows every ResBlock of the levels in `attn_levels` and sits in the middle block when
    `mid_attn`. The noise input c passes through a sinusoidal or Gaussian Fourier embedding and a
    two-layer MLP to a vector of 4 * base_channels that conditions every ResBlock by FiLM; with
    n_classes > 0 a label embedding (null label n_classes for y=None) is added to it.

    Inputs whose sides are not multiples of 2^(L-1) are padded (edge replication) and the output
    cropped back, so any size works; multiples avoid the padding.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 64, channel_mults=(1, 2, 2),
                 num_res_blocks: int = 2, attn_levels=(1,), mid_attn: bool = True, heads: int = 4,
                 dropout: float = 0.1, embedding: str = "sinusoidal", fourier_scale: float = 16.0,
                 n_classes: int = 0, out_channels: int | None = None):
        super().__init__()
        mults = [int(m) for m in channel_mults]
        if not mults or min(mults) < 1 or base_channels < 1 or num_res_blocks < 1:
            raise ValueError(f"UNet needs base_channels >= 1, num_res_blocks >= 1 and positive channel_mults, "
                             f"got {base_channels}, {num_res_blocks}, {list(channel_mults)}")
        bad = [lvl for lvl in attn_levels if not 0 <= int(lvl) < len(mults)]
        if bad:
            raise ValueError(f"attn_levels {bad} out of range: levels are 0..{len(mults) - 1}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.levels = int(in_channels), len(mults)
        emb_dim = 4 * base_channels
        self.embed = nn.Sequential(make_embedding(embedding, base_channels, fourier_scale),
                                   nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = LabelEmbedding(n_classes, emb_dim)
        self.n_classes = self.label.n_classes  # the trainer and guidance read it
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def block(cin, cout, level):
            layers = [ResBlock(cin, cout, emb_dim, dropout)]
            if level in attn_levels:
                layers.append(SelfAttention(cout, heads))
            return nn.ModuleList(layers)

        self.down, skip_ch, ch = nn.ModuleList(), [base_channels], base_channels
        for lvl, m in enumerate(mults):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_channels * m, lvl))
                ch = base_channels * m
                skip_ch.append(ch)
            if lvl < self.levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skip_ch.append(ch)
        mid = [ResBlock(ch, ch, emb_dim, dropout)] + ([SelfAttention(ch, heads)] if mid_attn else [])
        self.mid = nn.ModuleList(mid + [ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for lvl in reversed(range(self.levels)):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_ch.pop(), base_channels * mults[lvl], lvl))
                ch = base_channels * mults[lvl]
            if lvl > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)]))
        self.out = nn.Sequential(_gn(ch), nn.SiLU(), nn.Conv2d(ch, out_channels or in_channels, 3, padding=1))

    @staticmethod
    def _run(layers, h, emb):
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, (ResBlock, SelfAttention)) else layer(h)
        return h

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_inputs(x, c, self.in_channels, "UNet")
        emb = self.embed(c)
        lab = self.label(y, x.shape[0], x.device)
        emb = emb if lab is None else emb + lab
        height, width = x.shape[-2:]
        k = 2 ** (self.levels - 1)
        pad_h, pad_w = -height % k, -width % k
        if pad_h or pad_w:  # replicate edges to the next multiple of 2^(L-1); cropped below
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layers, h, emb)
        return self.out(h)[..., :height, :width]
