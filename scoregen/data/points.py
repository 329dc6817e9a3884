"""Point-cloud data: the 3-Gaussian mixture, 2-D toy sets, user files, standardisation and noise scales.

Every data set is an array of shape (N, D), float32. The toys are drawn in the units of the
3-Gaussian mixture: their RMS distance from their mean is about 5, like the mixture's
sqrt(tr Cov) = 5.14, so one set of training defaults fits them all. Each named data set has an
exact generating distribution, and `reference_sampler(name)` draws fresh samples from it on a
seed stream separate from the data set's, for the metrics' noise floors.

`suggest_sigma_max` and `suggest_sigma_min` choose the noise range from the data (Song & Ermon
2020, "Improved techniques for training score-based generative models", NeurIPS), so a user's own
point cloud needs no hand-tuned sigmas. Both are in the units of the array they are given: apply
them to the data as the model sees it (after `train.Normalizer`, which does the standardisation
with one scalar scale, when the trainer uses it).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..process.distributions import GaussianMixture, seed_dataset, seed_mixture
from ..util import Registry

__all__ = [
    "POINT_DATASETS",
    "PointDataset",
    "point_dataset_key",
    "load_points",
    "check_points",
    "points_float64",
    "reference_sampler",
    "dataset_mixture",
    "suggest_sigma_max",
    "suggest_sigma_min",
]

FILE_SUFFIXES = (".npy", ".csv")
_REFERENCE_STREAM = 0x5EF  # spawn key that keeps reference draws apart from the data sets' own


# --- the toys, each an exact distribution in the mixture's units ------------------------------
def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved half circles (as scikit-learn's make_moons, noise 0.1), x5, centred."""
    n_out = n - n // 2
    t = rng.uniform(0.0, math.pi, n)
    outer = np.stack([np.cos(t[:n_out]), np.sin(t[:n_out])], 1)
    inner = np.stack([1.0 - np.cos(t[n_out:]), 0.5 - np.sin(t[n_out:])], 1)
    x = np.concatenate([outer, inner]) - [0.5, 0.25] + 0.1 * rng.standard_normal((n, 2))
    return 5.0 * x


def _rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two concentric circles of radii 6.4 and 3.2 (scikit-learn's factor 0.5), radial noise 0.2."""
    r = np.where(np.arange(n) < n - n // 2, 6.4, 3.2) + 0.2 * rng.standard_normal(n)
    t = rng.uniform(0.0, 2 * math.pi, n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    """The 2-D Swiss roll t (cos t, sin t), t ~ U[1.5 pi, 4.5 pi], noise 1 (as FFJORD), x0.5."""
    t = rng.uniform(1.5 * math.pi, 4.5 * math.pi, n)
    x = t[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + rng.standard_normal((n, 2))
    return 0.5 * x


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 black cells of a 4x4 board of 3x3 cells centred at 0 (as FFJORD, x3)."""
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return 3.0 * np.stack([x1, x2], 1)


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Eight equal-weight N(c_k, 0.5^2 I) with c_k on the circle of radius 5 at angles k pi/4."""
    angle = rng.integers(0, 8, n) * (math.pi / 4)
    return 5.0 * np.stack([np.cos(angle), np.sin(angle)], 1) + 0.5 * rng.standard_normal((n, 2))


def _mixture(n: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(int(seed))
    return seed_mixture().sample(n, generator=g).numpy()


def _toy(fn: Callable[[int, np.random.Generator], np.ndarray]) -> Callable[[int, int], np.ndarray]:
    return lambda n, seed: fn(n, np.random.default_rng(seed))


@dataclass(frozen=True)
class PointDataset:
    """A named data set: `draw(n, seed)` samples its exact distribution; `default_n` points."""

    description: str
    default_n: int
    draw: Callable[[int, int], np.ndarray]


_MIXTURE = PointDataset("the 3-component 2-D Gaussian mixture (seed_dataset: its fixed 300 points)", 300, _mixture)
#: named point data sets, looked up by the registries' one name rule (`util.normalize_name`)
POINT_DATASETS: Registry[PointDataset] = Registry("point data set", {
    "seed": _MIXTURE,
    "mixture": _MIXTURE,
    "moons": PointDataset("two interleaved half circles", 2000, _toy(_moons)),
    "rings": PointDataset("two concentric circles", 2000, _toy(_rings)),
    "swissroll": PointDataset("2-D Swiss roll", 2000, _toy(_swissroll)),
    "checkerboard": PointDataset("uniform on a 4x4 checkerboard's black cells", 2000, _toy(_checkerboard)),
    "8gaussians": PointDataset("eight Gaussians on a circle", 2000, _toy(_eight_gaussians)),
})


# --- loading and validation -----------------------------------------------------------------
def _known() -> str:
    return ", ".join(sorted(POINT_DATASETS))


def point_dataset_key(name) -> str | None:
    """The registered name of the point data set `name` stands for (case, spaces, '-' and '_' ignored:
    the registries' one rule), or None when it names none (e.g. a file)."""
    try:
        return POINT_DATASETS.key(os.fspath(name))
    except ValueError:
        return None


def _is_file_name(name: str) -> bool:
    return name.lower().endswith(FILE_SUFFIXES)


def check_points(x, source: str = "points", dtype=np.float32) -> np.ndarray:
    """Validate a point cloud: real numbers, shape (N, D) with N >= 2, all finite; cast to dtype."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{source}: expected real numbers, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{source} is empty (shape {x.shape}); expected points of shape (N, D)")
    if x.ndim != 2:
        hint = " (for 1-D data use shape (N, 1))" if x.ndim == 1 else ""
        raise ValueError(f"{source}: expected an array of shape (N, D), got shape {x.shape}{hint}")
    if x.shape[0] < 2:
        raise ValueError(f"{source}: need at least 2 points, got {x.shape[0]}")
    x = np.ascontiguousarray(x, dtype=dtype)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad.any(1))[0])
        raise ValueError(
            f"{source}: {int(bad.sum())} NaN or infinite entries (in {np.dtype(dtype).name}), first in row {row}"
        )
    return x


def _read_csv(path: str) -> np.ndarray:
    """Comma- (or whitespace-) separated numbers; a first line that is not numeric is a header."""
    with open(path) as f:
        first = f.readline()
    delimiter = "," if "," in first else None
    try:
        [float(v) for v in first.split(delimiter)]
        header = 0
    except ValueError:
        header = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # numpy warns on empty input; we raise below
        try:
            return np.loadtxt(path, delimiter=delimiter, skiprows=header, ndmin=2, dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"{path}: non-numeric CSV ({e}); expected rows of numbers") from None


def _read_file(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"point file not found: {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty; expected points of shape (N, D)")
    if path.lower().endswith(".csv"):
        return _read_csv(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot read {path!r} as a .npy array of shape (N, D): {e}") from None


def _subsample(x: np.ndarray, n: int, seed: int, source: str) -> np.ndarray:
    if n > len(x):
        raise ValueError(f"n={n} is more than the {len(x)} points in {source}")
    return x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))]


def load_points(name_or_path, n: int | None = None, seed: int = 0) -> np.ndarray:
    """A point cloud (N, D) float32 by registry name or from a .npy/.csv file.

    Names (see POINT_DATASETS): "seed"/"mixture" is the 3-Gaussian mixture's fixed data set
    (`seed_dataset()`, 300 points) unless n or a non-zero seed is given, then n (default 300)
    fresh draws from `seed_mixture()`. A toy gives its `default_n` points (or n) drawn with `seed`.
    A file gives all its rows, or a random subset of n rows chosen with `seed`.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    name = os.fspath(name_or_path)
    key = point_dataset_key(name)
    if key is not None:
        spec = POINT_DATASETS[key]
        if spec is _MIXTURE and n is None and seed == 0:
            return seed_dataset()
        x = spec.draw(spec.default_n if n is None else int(n), seed)
        return check_points(x, f"data set {key!r}")
    if not _is_file_name(name):
        if os.path.exists(name):
            raise ValueError(f"unsupported point file {name!r}: files must be .npy or .csv")
        raise ValueError(f"unknown point data set {name!r}; known names: {_known()}; files must be .npy or .csv")
    x = check_points(_read_file(name), name)
    return x if n is None else _subsample(x, int(n), seed, name)


def reference_sampler(name) -> Callable[[int, int], np.ndarray] | None:
    """Fresh exact draws `(n, seed) -> (n, D) float32` from a named data set's distribution.

    Seeds are mapped into a stream of their own, so `reference_sampler(name)(n, s)` never repeats
    `load_points(name, n, seed=s)`. None for a user file (no distribution is known).
    """
    key = point_dataset_key(name)
    if key is None:
        if _is_file_name(os.fspath(name).strip().lower()):
            return None
        raise ValueError(f"unknown point data set {name!r}; known names: {_known()}; files must be .npy or .csv")
    draw = POINT_DATASETS[key].draw

    def sample(n: int, seed: int = 0) -> np.ndarray:
        fresh = int(np.random.SeedSequence([int(seed), _REFERENCE_STREAM]).generate_state(1, np.uint64)[0] >> 1)
        return draw(int(n), fresh).astype(np.float32)

    return sample


def dataset_mixture(name) -> GaussianMixture | None:
    """The exact GaussianMixture behind a named data set ("seed"/"mixture"), else None."""
    key = point_dataset_key(name)
    return seed_mixture() if key is not None and POINT_DATASETS[key] is _MIXTURE else None


# --- noise scales from the data -------------------------------------------------------------
def points_float64(x, source: str = "points") -> torch.Tensor:
    """`check_points` for numpy arrays or torch tensors, as a float64 CPU tensor."""
    x = x.detach().cpu().numpy() if torch.is_tensor(x) else x
    return torch.from_numpy(check_points(x, source, np.float64))


def _block_rows(cols: int, entries: int = 1 << 22) -> int:
    return max(1, entries // max(cols, 1))


def suggest_sigma_max(x, max_points: int = 2000, seed: int = 0) -> float:
    """sigma_1 = the largest Euclidean distance between two data points (Song & Ermon 2020, technique 1).

    Then the noised data p_{sigma_1} is close to N(mean, sigma_1^2 I) and a sampler can start
    there. For speed the maximum runs over a random subset of `max_points` points plus the
    extreme points of the data along the axes and 32 random directions (the ends of the diameter
    are extreme along nearby directions), so it is close to the exact diameter.
    """
    x = points_float64(x)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.cat([torch.eye(x.shape[1], dtype=torch.float64)[:32], torch.randn(32, x.shape[1], generator=g, dtype=torch.float64)])
    proj = x @ dirs.T
    keep = torch.randperm(len(x), generator=g)[:max_points]
    pts = x[torch.unique(torch.cat([keep, proj.argmax(0), proj.argmin(0)]))]
    rows = _block_rows(len(pts))
    return max(float(torch.cdist(pts[i : i + rows], pts).max()) for i in range(0, len(pts), rows))


def suggest_sigma_min(x, fraction: float = 0.1, max_points: int = 2000, seed: int = 0) -> float:
    """sigma_min = fraction x the median distance from a data point to its nearest neighbour.

    Rule (ours; Song & Ermon 2020 only ask for sigma_L "small enough"): the nearest-neighbour
    distance is the finest scale a finite training set resolves. Noise a tenth of it leaves
    p_{sigma_min} equal to the data distribution at that resolution, while going further would
    only teach the network the single training points. The median runs over `max_points` random
    query points against all N points; exact duplicates (distance 0) are skipped.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    x = points_float64(x)
    g = torch.Generator().manual_seed(seed)
    queries = torch.randperm(len(x), generator=g)[:max_points]
    rows, nn = _block_rows(len(x)), []
    for i in range(0, len(queries), rows):
        q = queries[i : i + rows]
        d = torch.cdist(x[q], x, compute_mode="donot_use_mm_for_euclid_dist")
        d[d == 0] = math.inf  # the point itself and exact duplicates
        nn.append(d.min(1).values)
    nn = torch.cat(nn)
    nn = nn[torch.isfinite(nn)]
    if len(nn) == 0:
        raise ValueError("cannot suggest sigma_min: all points are identical")
    return fraction * float(nn.median())
