"""Sample-quality metrics for point clouds: two-sample distances, their noise floors, mixture checks.

All statistics run in float64 on the CPU; pairwise sums go through blocks of at most 4M pairs,
so 5000 x 5000 samples take a fraction of a second on one core and a few tens of MB.

A two-sample statistic is never zero between finite samples, even of one distribution; its
value means something only beside the same statistic between fresh reference samples of the
same sizes (`noise_floor`). `point_metrics` reports both.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..data.points import points_float64
from ..process.distributions import GaussianMixture

__all__ = [
    "energy_distance",
    "EnergyDistanceTo",
    "mmd",
    "median_bandwidth",
    "sliced_wasserstein",
    "random_directions",
    "noise_floor",
    "noise_floor_to",
    "component_shares",
    "low_density_fraction",
    "point_metrics",
    "knn_radii",
    "manifold_coverage",
    "precision_recall",
]

_BLOCK = 1 << 22  # pairs per block: 32 MB of float64


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Both samples as float64 tensors of one dimension, centred on the pooled mean.

    Centring changes no distance but keeps |a|^2 + |b|^2 - 2 a.b (cdist's fast path) accurate.
    """
    x, y = points_float64(x, "x"), points_float64(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension D, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    c = torch.cat([x, y]).mean(0)
    return x - c, y - c


def _distance_blocks(a: torch.Tensor, b: torch.Tensor):
    """(i, |a_k - b_j|^2 for the rows k = i, i+1, ... of a block of a), blocks of at most _BLOCK pairs.

    |a|^2 + |b|^2 - 2 a.b in one addmm is 3-4x faster than cdist; on centred float64 data its
    rounding error (~1e-16 |a|^2) is far below anything the metrics resolve, except on the diagonal
    of a set with itself, where sqrt turns it into ~1e-8 |a| instead of 0: that diagonal is zeroed.
    """
    rows, bb = max(1, _BLOCK // len(b)), (b * b).sum(1)[None]
    for i in range(0, len(a), rows):
        ai = a[i : i + rows]
        d2 = torch.addmm((ai * ai).sum(1)[:, None], ai, b.T, alpha=-2).add_(bb).clamp_min_(0)
        if a is b:
            d2.diagonal(offset=i).zero_()
        yield i, d2


def _pairwise_sum(a: torch.Tensor, b: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """sum_ij fn(|a_i - b_j|^2), blocked over rows of a (`_distance_blocks`); fn may work in place on its argument."""
    return sum(float(fn(d2).sum()) for _, d2 in _distance_blocks(a, b))


def _mean_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return _pairwise_sum(a, b, torch.Tensor.sqrt_) / (len(a) * len(b))


def energy_distance(x, y) -> float:
    """Energy distance, V-statistic: 2 E|X - Y| - E|X - X'| - E|Y - Y'| over all pairs (i = j included).

    Szekely & Rizzo (2013), "Energy statistics: a class of statistics based on distances". The
    population value is >= 0 and 0 only for equal distributions. Counting the i = j pairs (zero
    distance) biases the estimate up by exactly (1/n + 1/m)-weighted self-distances:
    E[V] = D(P, Q) + E|X - X'| / n + E|Y - Y'| / m, which is why the noise floor is not 0.
    """
    x, y = _pair(x, y)
    return 2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)


class EnergyDistanceTo:
    """x -> `energy_distance(x, reference)` for one fixed reference, its term E|Y - Y'| computed once.

    For samples of 1000 against a reference of 5000 that term is 25 of the 31 million pairs, so each
    further sample costs a fifth (`scoregen demo` scores every sampler against one reference). Both
    sets are centred on the reference's mean (centring changes no distance; see `_pair`); the value
    equals `energy_distance`'s up to float rounding (~1e-15).
    """

    def __init__(self, reference):
        y = points_float64(reference, "reference")
        self.center = y.mean(0)
        self.reference = y - self.center
        self.self_term = _mean_distance(self.reference, self.reference)

    def __call__(self, x) -> float:
        x = points_float64(x, "x")
        if x.shape[1] != self.reference.shape[1]:
            raise ValueError(f"x and the reference must have the same dimension D, got x {tuple(x.shape)} and "
                             f"reference {tuple(self.reference.shape)}")
        x = x - self.center
        return 2 * _mean_distance(x, self.reference) - _mean_distance(x, x) - self.self_term


def median_bandwidth(x, y=None, max_points: int = 1000, seed: int = 0) -> float:
    """Median heuristic: the median distance between distinct points of the pooled sample.

    Gretton et al. (2012, JMLR, "A kernel two-sample test"). Computed on a random subset of
    `max_points` pooled points; zero distances (duplicates) are skipped.
    """
    pts = points_float64(x, "x") if y is None else torch.cat(_pair(x, y))
    g = torch.Generator().manual_seed(seed)
    pts = pts[torch.randperm(len(pts), generator=g)[:max_points]]
    i, j = torch.triu_indices(len(pts), len(pts), offset=1)
    d = (pts[i] - pts[j]).norm(dim=1)
    d = d[d > 0]
    if len(d) == 0:
        raise ValueError("median bandwidth undefined: all points are identical")
    return float(d.median())


def mmd(x, y, bandwidth: float | None = None, unbiased: bool = True) -> float:
    """Squared maximum mean discrepancy with the Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 h^2)).

    Gretton et al. (2012), eq. 3 (unbiased U-statistic, the default) / eq. 5 (V-statistic):
      MMD^2_u = sum_{i!=j} k(x_i, x_j) / (n(n-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 mean k(x_i, y_j).
    The unbiased form has expectation exactly MMD^2(P, Q), so it can be slightly negative and
    its noise floor is centred on 0. h defaults to `median_bandwidth(x, y)`; pass a fixed h to
    compare values across runs (as `point_metrics` does).
    """
    x, y = _pair(x, y)
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
    k = lambda d2: d2.mul_(-0.5 / h**2).exp_()  # noqa: E731
    n, m = len(x), len(y)
    sxx, syy, sxy = _pairwise_sum(x, x, k), _pairwise_sum(y, y, k), _pairwise_sum(x, y, k)
    if unbiased:  # k(a, a) = 1 exactly: drop the diagonal
        return (sxx - n) / (n * (n - 1)) + (syy - m) / (m * (m - 1)) - 2 * sxy / (n * m)
    return sxx / n**2 + syy / m**2 - 2 * sxy / (n * m)


def random_directions(n_projections: int, dim: int, seed: int = 0) -> torch.Tensor:
    """n_projections unit vectors uniform on the sphere S^{D-1} (normalised Gaussians), float64."""
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_projections, dim, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def _w2_squared_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 between the empirical measures of each column of a (n, P) and b (m, P).

    W2^2 = int_0^1 (F_a^{-1}(u) - F_b^{-1}(u))^2 du. Both quantile functions are step functions,
    constant between the levels {i/n} u {j/m}, so the integral is a finite sum over those
    intervals (for n = m: the mean squared difference of the sorted samples).
    """
    n, m = len(a), len(b)
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    lo = np.concatenate([[0.0], u[:-1]])
    mid = (lo + u) / 2  # strictly inside the interval: floor(mid * n) is the step's index
    ia, ib = torch.from_numpy(np.floor(mid * n).astype(np.int64)), torch.from_numpy(np.floor(mid * m).astype(np.int64))
    a, b = a.sort(0).values, b.sort(0).values
    return (torch.from_numpy(u - lo)[:, None] * (a[ia] - b[ib]) ** 2).sum(0)


def sliced_wasserstein(x, y, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance SW2 = ( E_theta W2^2(theta.X, theta.Y) )^{1/2}, theta uniform on S^{D-1}.

    Rabin, Peyre, Delon & Bernot (2011); Bonneel et al. (2015). The sphere average is taken over
    `random_directions(n_projections, D, seed)` and each 1-D W2^2 exactly, sample sizes equal or
    not. For N(mu1, I) vs N(mu2, I): W2^2 along theta is (theta.(mu1 - mu2))^2, and SW2 = |mu1 - mu2| / sqrt(D).
    """
    x, y = _pair(x, y)
    theta = random_directions(n_projections, x.shape[1], seed)
    chunk = max(1, _BLOCK // (len(x) + len(y)))
    w2 = torch.cat([_w2_squared_1d(x @ t.T, y @ t.T) for t in theta.split(chunk)])
    return math.sqrt(float(w2.mean()))


def noise_floor(metric: Callable, reference_sampler: Callable, n: int, n_ref: int, repeats: int = 20, seed: int = 1234) -> dict:
    """The statistic between independent fresh reference samples of sizes n and n_ref.

    metric(x, y) -> float; reference_sampler(n, seed) -> (n, D) array. Returns plain floats
    {"mean", "std" (ddof 1), "p95", "repeats"}: a model whose samples score within this spread
    cannot be told from the reference at these sample sizes. Draws use seeds from
    SeedSequence(seed), disjoint from small seeds used elsewhere.
    """
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to estimate a spread, got {repeats}")
    seeds = np.random.SeedSequence(seed).generate_state(2 * repeats, np.uint32).tolist()
    vals = np.array([float(metric(reference_sampler(n, seeds[2 * r]), reference_sampler(n_ref, seeds[2 * r + 1]))) for r in range(repeats)])
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)), "p95": float(np.percentile(vals, 95)), "repeats": repeats}


def noise_floor_to(metric_to: Callable, reference_sampler: Callable, n: int, repeats: int = 20, seed: int = 1234) -> dict:
    """`noise_floor` against one fixed reference: metric_to(x) -> float (e.g. `EnergyDistanceTo(reference)`)
    for independent fresh samples x of size n. This is the spread of the statistic for exact samples
    scored against the very reference the model's samples are scored against (the reference's own
    luck, shared by every score, is held fixed), at a fifth of the cost for energy distance with a
    reference 5x larger than n. Returns {"mean", "std" (ddof 1), "p95", "repeats", "reference": "fixed"}."""
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to estimate a spread, got {repeats}")
    seeds = np.random.SeedSequence(seed).generate_state(repeats, np.uint32).tolist()
    vals = np.array([float(metric_to(reference_sampler(n, s))) for s in seeds])
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)), "p95": float(np.percentile(vals, 95)),
            "repeats": repeats, "reference": "fixed"}


def component_shares(x, mixture: GaussianMixture) -> dict:
    """Share of the points assigned to each component by `mixture.classify` (max posterior).

    Returns {"shares": [...], "weights": [...], "max_abs_deviation": max_k |share_k - w_k|}.
    For exact mixture draws each share is binomial around w_k (plus the Bayes error of the
    classifier, negligible for well separated components), so the deviation is
    O(sqrt(w (1 - w) / n)).
    """
    x = points_float64(x, "x")
    if x.shape[1] != mixture.dim:
        raise ValueError(f"points of dimension {x.shape[1]} do not match the mixture's dimension {mixture.dim}")
    counts = torch.bincount(mixture.classify(x), minlength=mixture.n_components).double()
    shares = counts / len(x)
    return {
        "shares": shares.tolist(),
        "weights": mixture.weights.tolist(),
        "max_abs_deviation": float((shares - mixture.weights).abs().max()),
    }


def low_density_fraction(x, mixture: GaussianMixture, level: float = 0.999, n_mc: int = 100_000, seed: int = 0) -> float:
    """Fraction of points outside the mixture's highest-density region of probability `level`.

    The region is {log p >= q}, q the (1 - level) quantile of log p(X), X ~ mixture, estimated from
    n_mc exact draws. Exact samples score 1 - level (0.001 by default); samples in places the
    mixture almost never visits push it up.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    g = torch.Generator().manual_seed(seed)
    q = torch.quantile(mixture.log_prob(mixture.sample(n_mc, generator=g)), 1 - level)
    return float((mixture.log_prob(points_float64(x, "x")) < q).double().mean())


def point_metrics(samples, reference, mixture: GaussianMixture | None = None, *, reference_sampler: Callable | None = None,
                  repeats: int = 20, n_projections: int = 256, seed: int = 0) -> dict:
    """All point metrics of `samples` against `reference`, as plain JSON-ready numbers.

    Keys: n_samples, n_reference, dim, energy_distance, mmd2 (unbiased, bandwidth = median
    heuristic on the reference, recorded as mmd_bandwidth), sliced_w2; with a mixture also
    component_shares, mixture_weights, max_share_deviation, low_density_fraction. With a
    reference_sampler, "floor" maps each scalar metric to its noise_floor at these sample sizes.
    """
    x, y = points_float64(samples, "samples"), points_float64(reference, "reference")
    h = median_bandwidth(y, seed=seed)
    fns: dict[str, Callable] = {
        "energy_distance": energy_distance,
        "mmd2": lambda a, b: mmd(a, b, bandwidth=h),
        "sliced_w2": lambda a, b: sliced_wasserstein(a, b, n_projections, seed),
    }
    out: dict = {"n_samples": len(x), "n_reference": len(y), "dim": x.shape[1]}
    out.update({k: f(x, y) for k, f in fns.items()})
    out["mmd_bandwidth"] = h
    if mixture is not None:
        cs = component_shares(x, mixture)
        out.update(component_shares=cs["shares"], mixture_weights=cs["weights"], max_share_deviation=cs["max_abs_deviation"])
        out["low_density_fraction"] = low_density_fraction(x, mixture)
        fns["max_share_deviation"] = lambda a, b: component_shares(a, mixture)["max_abs_deviation"]
        fns["low_density_fraction"] = lambda a, b: low_density_fraction(a, mixture)
    if reference_sampler is not None:
        out["floor"] = {k: noise_floor(f, reference_sampler, len(x), len(y), repeats, seed=seed + 1234) for k, f in fns.items()}
    return out


# --- precision and recall (k-NN manifolds) -----------------------------------------------------------
def _f64(x, name: str) -> torch.Tensor:
    return x if torch.is_tensor(x) and x.dtype == torch.float64 and x.dim() == 2 else points_float64(x, name)


def _check_k(k, n: int, name: str) -> int:
    if isinstance(k, bool) or int(k) != k or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, {n - 1}] (fewer than the {n} points of {name}), got {k!r}")
    return int(k)


def knn_radii(x, k: int = 3) -> torch.Tensor:
    """|x_i - NN_k(x_i)|: each point's distance to its k-th nearest other point of x (duplicates count,
    at distance 0), blocked so that 10k x 10k points take tens of MB."""
    x = _f64(x, "x")
    k = _check_k(k, len(x), "x")
    # the point itself is at distance 0, the smallest: the (k+1)-th smallest distance is the k-th other
    return torch.cat([d2.topk(k + 1, dim=1, largest=False).values[:, k] for _, d2 in _distance_blocks(x, x)]).sqrt_()


def manifold_coverage(query, ref, radii) -> torch.Tensor:
    """(N_query,) bool: whether query_i lies in the manifold of ref, the union of the closed balls
    {x : |x - ref_j| <= radii_j} (Kynkaanniemi et al. 2019, eq. 1)."""
    query, ref = _f64(query, "query"), _f64(ref, "ref")
    r2 = torch.as_tensor(radii, dtype=torch.float64).square()[None]
    if r2.shape != (1, len(ref)):
        raise ValueError(f"radii must hold one radius per reference point ({len(ref)}), got shape {tuple(r2.shape[1:])}")
    return torch.cat([(d2 <= r2).any(dim=1) for _, d2 in _distance_blocks(query, ref)])


def precision_recall(real, fake, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi, Karras, Laine, Lehtinen & Aila 2019).

    The manifold of a set Phi is the union of balls around each phi in Phi of radius |phi - NN_k(phi)|,
    its distance to its k-th nearest neighbour in Phi; f(x, Phi) = 1 when x lies in it. Then

        precision = mean_{g in fake} f(g, real)     (the generated samples that look real)
        recall    = mean_{r in real} f(r, fake)     (the real data the generator covers)

    on features (N, D) of any D; k = 3 is the paper's choice. Both are fractions of finite samples: at
    equal sizes two samples of one distribution score below 1 (by how much depends on k, D and N), so a
    value is read beside the same statistic between two real samples of the same sizes (the floor).
    Returns {"precision", "recall", "k", "n_real", "n_fake"}.
    """
    r, g = _pair(real, fake)
    k = _check_k(k, min(len(r), len(g)), "the smaller set")
    precision = float(manifold_coverage(g, r, knn_radii(r, k)).double().mean())
    recall = float(manifold_coverage(r, g, knn_radii(g, k)).double().mean())
    return {"precision": precision, "recall": recall, "k": k, "n_real": len(r), "n_fake": len(g)}
