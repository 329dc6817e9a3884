"""Pictures people look at: sample scatters, image grids, score fields, trajectories, loss curves.

Every function writes one PNG (matplotlib's Agg backend, no screen needed) and returns its path.
Every axis is labelled: point coordinates are named x[i] (which two of D are shown, when D > 2),
panels that overlay several things carry a legend, colour scales a colour bar, and tables of images
a heading per column.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["scatter_panels", "image_grid", "image_table", "score_fields", "trajectories", "loss_curve",
           "coordinate_label"]


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _save(fig, path, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _limits(*clouds, margin=0.1):
    pts = np.concatenate([_np(c)[:, :2] for c in clouds])
    lo, hi = np.quantile(pts, 0.001, axis=0), np.quantile(pts, 0.999, axis=0)
    pad = (hi - lo) * margin
    return lo - pad, hi + pad


def coordinate_label(i: int, d: int | None = None) -> str:
    """The name of coordinate i of D-dimensional points in pictures."""
    return f"x[{i}]" if d is None else f"x[{i}] (of D={d})" if d > 2 else f"x[{i}]"


def _label_axes(ax, coords, d):
    ax.set_xlabel(coordinate_label(coords[0], d), fontsize=8)
    ax.set_ylabel(coordinate_label(coords[1], d), fontsize=8)
    ax.tick_params(labelsize=7)


def scatter_panels(panels: dict, path, reference=None, titles: dict | None = None, ncols: int = 4,
                   coords=(0, 1), suptitle: str | None = None) -> Path:
    """One scatter panel per entry (name -> (N, D) points; the coordinates `coords`, named on the axes),
    each over the `reference` points in grey when given (with a legend)."""
    names = list(panels)
    ncols = min(ncols, len(names))
    nrows = -(-len(names) // ncols)
    i, j = coords
    d = _np(panels[names[0]]).shape[1]
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.4 * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    if d == 1:  # 1-D points: histograms, nothing to scatter against
        return _histogram_panels(fig, axes, panels, names, reference, titles, path, suptitle)
    # the frame is the data's (the reference, else the first panel): a diverged sampler must not zoom it out
    frame = _np(reference if reference is not None else panels[names[0]])[:, [i, j]]
    lo, hi = _limits(frame, margin=0.25)
    for ax, name in zip(axes.flat, names):
        if reference is not None:
            r = _np(reference)
            ax.scatter(r[:, i], r[:, j], s=2, c="0.75", label="data")
        x = _np(panels[name])
        ax.scatter(x[:, i], x[:, j], s=2, c="C0", alpha=0.6, label=name if reference is not None else None)
        ax.set_title((titles or {}).get(name, name), fontsize=9)
        ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1]), ax.set_aspect("equal", adjustable="box")
        _label_axes(ax, coords, d)
        if reference is not None:
            ax.legend(fontsize=7, markerscale=3, loc="upper right")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def _histogram_panels(fig, axes, panels, names, reference, titles, path, suptitle=None) -> Path:
    """scatter_panels for 1-D points: a density histogram per panel over the reference's."""
    ref = None if reference is None else _np(reference)[:, 0]
    lo, hi = _limits(reference if reference is not None else panels[names[0]], margin=0.25)
    bins = np.linspace(lo[0], hi[0], 61)
    for ax, name in zip(axes.flat, names):
        if ref is not None:
            ax.hist(ref, bins=bins, density=True, color="0.75", label="data")
        ax.hist(_np(panels[name])[:, 0], bins=bins, density=True, color="C0", alpha=0.6, label="samples")
        ax.set_title((titles or {}).get(name, name), fontsize=9)
        ax.set_xlabel(coordinate_label(0), fontsize=8), ax.set_ylabel("density", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
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


def image_table(rows: list[list], headings: list[str], path, row_labels: list[str] | None = None,
                cell_inches: float = 1.15, suptitle: str | None = None) -> Path:
    """A table of [0, 1] images (C, H, W), one row per input, a heading over every column."""
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches * ncols + 0.4, cell_inches * nrows + 0.5),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(row):
                im = np.clip(_np(row[c]), 0, 1)
                ax.imshow(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
            if r == 0 and c < len(headings):
                ax.set_title(headings[c], fontsize=8)
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _save(fig, path)


def score_fields(fields: dict, path, lo, hi, n: int = 20, ncols: int = 3, suptitle: str | None = None) -> Path:
    """Quiver plots of 2-D score fields: fields maps a panel title to a function grid (M, 2) -> (M, 2),
    filled row by row `ncols` to a row. Arrows give directions; their colour the magnitude |score|,
    on a log scale shared by every panel and shown by the colour bar."""
    from matplotlib.colors import Normalize

    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.tensor(np.stack([X.ravel(), Y.ravel()], 1), dtype=torch.float32)
    names = list(fields)
    ncols = min(len(names), ncols)
    nrows = -(-len(names) // ncols)
    values = {name: _np(fields[name](pts)) for name in names}
    logs = {name: np.log10(np.linalg.norm(v, axis=1) + 1e-12) for name, v in values.items()}
    allv = np.concatenate(list(logs.values()))
    norm = Normalize(vmin=float(np.quantile(allv, 0.01)), vmax=float(np.quantile(allv, 0.99)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.5 * ncols + 1.0, 3.4 * nrows), squeeze=False)
    q = None
    for ax, name in zip(axes.flat, names):
        s = values[name]
        u = s / (np.linalg.norm(s, axis=1, keepdims=True) + 1e-12)  # directions; colour carries the magnitude
        q = ax.quiver(X, Y, u[:, 0].reshape(X.shape), u[:, 1].reshape(X.shape), logs[name].reshape(X.shape),
                      cmap="viridis", norm=norm, scale=30, width=0.004)
        ax.set_title(name, fontsize=9), ax.set_aspect("equal", adjustable="box")
        _label_axes(ax, (0, 1), 2)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(w_pad=2.0)
    if q is not None:
        fig.colorbar(q, ax=axes.ravel().tolist(), shrink=0.85, label="log10 |score|")
    return _save(fig, path, tight=False)


def trajectories(trajs: dict, path, reference=None, n_paths: int = 60) -> Path:
    """Sampler paths (name -> (K+1, N, 2) frames): lines from the start (open circles) to the end (dots),
    with a legend."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    names = list(trajs)
    ncols = min(len(names), 4)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.5 * nrows), squeeze=False)
    ends = [_np(trajs[k])[-1] for k in names] + ([_np(reference)] if reference is not None else [])
    lo, hi = _limits(*ends, margin=0.4)
    d = _np(trajs[names[0]]).shape[-1]
    for ax, name in zip(axes.flat, names):
        tr = _np(trajs[name])[:, :n_paths, :2]
        if reference is not None:
            r = _np(reference)
            ax.scatter(r[:, 0], r[:, 1], s=2, c="0.8")
        # one artist for all paths (a Line2D each cost ~2 s of the demo's 10 x 60 paths of 500+ frames)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        ax.add_collection(LineCollection(list(tr.transpose(1, 0, 2)), lw=0.6, alpha=0.5,
                                         colors=[colors[j % len(colors)] for j in range(tr.shape[1])]))
        ax.scatter(tr[0, :, 0], tr[0, :, 1], s=8, facecolors="none", edgecolors="0.5", lw=0.5, zorder=2)
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=6, c="k", zorder=3)
        ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1]), ax.set_title(name, fontsize=9)
        _label_axes(ax, (0, 1), d)
        handles = [Line2D([], [], color="C0", lw=0.8, label="path"),
                   Line2D([], [], ls="", marker="o", mfc="none", mec="0.5", ms=4, label="start (prior)"),
                   Line2D([], [], ls="", marker="o", color="k", ms=3, label="end (sample)")]
        if reference is not None:
            handles.append(Line2D([], [], ls="", marker="o", color="0.8", ms=3, label="data"))
        ax.legend(handles=handles, fontsize=6, loc="upper right")
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
