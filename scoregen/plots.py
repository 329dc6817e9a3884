"""Pictures people look at: sample scatters, image grids, score fields, trajectories, loss curves.

Every function writes one PNG (matplotlib's Agg backend, no screen needed) and returns its path.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["scatter_panels", "image_grid", "score_fields", "trajectories", "loss_curve"]


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _limits(*clouds, margin=0.1):
    pts = np.concatenate([_np(c)[:, :2] for c in clouds])
    lo, hi = np.quantile(pts, 0.001, axis=0), np.quantile(pts, 0.999, axis=0)
    pad = (hi - lo) * margin
    return lo - pad, hi + pad


def scatter_panels(panels: dict, path, reference=None, titles: dict | None = None, ncols: int = 4) -> Path:
    """One scatter panel per entry (name -> (N, D) points; the first two coordinates), each over
    the `reference` points in grey when given."""
    names = list(panels)
    ncols = min(ncols, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.3 * nrows), squeeze=False)
    if _np(panels[names[0]]).shape[1] == 1:  # 1-D points: histograms, nothing to scatter against
        return _histogram_panels(fig, axes, panels, names, reference, titles, path)
    # the frame is the data's (the reference, else the first panel): a diverged sampler must not zoom it out
    lo, hi = _limits(reference if reference is not None else panels[names[0]], margin=0.25)
    for ax, name in zip(axes.flat, names):
        if reference is not None:
            r = _np(reference)
            ax.scatter(r[:, 0], r[:, 1], s=2, c="0.75", label="data")
        x = _np(panels[name])
        ax.scatter(x[:, 0], x[:, 1], s=2, c="C0", alpha=0.6)
        ax.set_title((titles or {}).get(name, name), fontsize=9)
        ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1]), ax.set_aspect("equal", adjustable="box")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, path)


def _histogram_panels(fig, axes, panels, names, reference, titles, path) -> Path:
    """scatter_panels for 1-D points: a density histogram per panel over the reference's."""
    ref = None if reference is None else _np(reference)[:, 0]
    lo, hi = _limits(reference if reference is not None else panels[names[0]], margin=0.25)
    bins = np.linspace(lo[0], hi[0], 61)
    for ax, name in zip(axes.flat, names):
        if ref is not None:
            ax.hist(ref, bins=bins, density=True, color="0.75", label="data")
        ax.hist(_np(panels[name])[:, 0], bins=bins, density=True, color="C0", alpha=0.6, label="samples")
        ax.set_title((titles or {}).get(name, name), fontsize=9)
        ax.set_xlabel("x"), ax.set_ylabel("density")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, path)


def image_grid(images, path, nrow: int | None = None) -> Path:
    """A grid of (N, C, H, W) images with values in [0, 1]."""
    x = np.clip(_np(images), 0, 1)
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = -(-n // nrow)
    grid = np.ones((ncol * (h + 2) + 2, nrow * (w + 2) + 2, c), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = x[i].transpose(1, 2, 0)
    fig = plt.figure(figsize=(grid.shape[1] / 40, grid.shape[0] / 40))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def score_fields(fields: dict, path, lo, hi, n: int = 20) -> Path:
    """Quiver plots of 2-D score fields: fields maps a panel title to a function grid (M, 2) -> (M, 2)."""
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.tensor(np.stack([X.ravel(), Y.ravel()], 1), dtype=torch.float32)
    names = list(fields)
    ncols = min(len(names), 3)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        s = _np(fields[name](pts))
        norm = np.linalg.norm(s, axis=1, keepdims=True) + 1e-12
        u = s / norm  # directions; colour carries the magnitude, which spans decades
        ax.quiver(X, Y, u[:, 0].reshape(X.shape), u[:, 1].reshape(X.shape), np.log10(norm.ravel()).reshape(X.shape),
                  cmap="viridis", scale=30, width=0.004)
        ax.set_title(name, fontsize=9), ax.set_aspect("equal", adjustable="box")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, path)


def trajectories(trajs: dict, path, reference=None, n_paths: int = 60) -> Path:
    """Sampler paths (name -> (K+1, N, 2) frames): lines from the start (light) to the end (dots)."""
    names = list(trajs)
    ncols = min(len(names), 4)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.3 * nrows), squeeze=False)
    ends = [_np(trajs[k])[-1] for k in names] + ([_np(reference)] if reference is not None else [])
    lo, hi = _limits(*ends, margin=0.4)
    for ax, name in zip(axes.flat, names):
        tr = _np(trajs[name])[:, :n_paths, :2]
        if reference is not None:
            r = _np(reference)
            ax.scatter(r[:, 0], r[:, 1], s=2, c="0.8")
        for j in range(tr.shape[1]):
            ax.plot(tr[:, j, 0], tr[:, j, 1], lw=0.6, alpha=0.5)
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=6, c="k", zorder=3)
        ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1]), ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, path)


def loss_curve(history, path) -> Path:
    """Per-step loss and its running mean, log scale."""
    h = np.asarray(history, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(h):
        k = max(1, len(h) // 200)
        smooth = np.convolve(h, np.ones(k) / k, mode="valid")
        ax.plot(h, lw=0.5, alpha=0.3, label="per step")
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, lw=1.5, label=f"mean of {k}")
        ax.legend()
        if (h > 0).all():
            ax.set_yscale("log")
    ax.set_xlabel("step"), ax.set_ylabel("loss")
    return _save(fig, path)
