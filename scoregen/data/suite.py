"""A generalisation suite for point data: distributions with known truth in many shapes.

Every default of the point pipeline is judged on all of these at once (benchmarks/points_suite.py),
never on one data set. Each `SuiteMember` has an exact sampler `draw(n, seed) -> (n, D) float64`
and, where one exists, the exact log-density `log_prob(x) -> (n,)`, so a model's samples can be
compared with fresh true draws (energy distance against its noise floor) and its likelihood with the
true one on the same fresh points (the paired NLL gap).

The members cover what users bring:

- Gaussian mixtures in D = 1, 2, 3, 5, 10, 20: equal and very unequal weights (1:10), isotropic and
  anisotropic components (condition number 400), well separated and overlapping, few (2) and many
  (16, a 4 x 4 grid) modes; the 3-Gaussian mixture (`seed`) at training sizes N = 200, 300 (its
  fixed data set), 2000 and 20000;
- heavy tails (a product of Student-t with 3 degrees of freedom) and bounded support (uniform on a
  box and on an annulus);
- the 3-Gaussian mixture scaled by 1e-3 and 1e3, and shifted by 1e3;
- the 2-D toys of `data.POINT_DATASETS` (moons, Swiss roll, checkerboard, rings), judged against
  fresh draws of their own generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .points import POINT_DATASETS
from ..process.distributions import GaussianMixture, seed_dataset, seed_mixture

__all__ = ["SuiteMember", "SUITE", "suite_member", "suite_names", "student_t_product", "uniform_box",
           "uniform_annulus", "random_mixture"]


@dataclass(frozen=True)
class SuiteMember:
    """One data set of the suite: `n_train` points drawn by `train_data()`, exact law `draw`.

    draw(n, seed) -> (n, D) float64 exact samples; log_prob(x) -> (n,) exact log-density in nats
    (None when no closed form is used); mixture: the GaussianMixture behind it (for component
    shares), else None.
    """

    name: str
    description: str
    dim: int
    n_train: int
    draw: Callable[[int, int], np.ndarray]
    log_prob: Callable[[np.ndarray], np.ndarray] | None = None
    mixture: GaussianMixture | None = None
    data: Callable[[], np.ndarray] | None = None  # a fixed training set (`seed_dataset`), else draw(n_train, 0)

    def train_data(self) -> np.ndarray:
        """The training set: the member's fixed one, or `draw(n_train, seed=0)`."""
        x = self.data() if self.data is not None else self.draw(self.n_train, 0)
        return np.asarray(x, dtype=np.float64)


# --- exact distributions without a Gaussian-mixture form -------------------------------------
def student_t_product(dim: int, dof: float = 3.0, scale: float = 1.0):
    """(draw, log_prob) of x = scale * t with independent Student-t coordinates of `dof` degrees.

    log p(x) = sum_i [ log G((v + 1)/2) - log G(v/2) - 1/2 log(v pi) - log scale
                       - (v + 1)/2 log(1 + (x_i / scale)^2 / v) ].
    """
    v = float(dof)
    const = math.lgamma((v + 1) / 2) - math.lgamma(v / 2) - 0.5 * math.log(v * math.pi) - math.log(scale)

    def draw(n, seed):
        return scale * np.random.default_rng(seed).standard_t(v, size=(n, dim))

    def log_prob(x):
        u = np.asarray(x, dtype=np.float64) / scale
        return (const - (v + 1) / 2 * np.log1p(u**2 / v)).sum(1)

    return draw, log_prob


def uniform_box(lo, hi):
    """(draw, log_prob) of the uniform law on the box prod_i [lo_i, hi_i]: log p = -sum log(hi - lo) inside."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    log_vol = float(np.log(hi - lo).sum())

    def draw(n, seed):
        return np.random.default_rng(seed).uniform(lo, hi, size=(n, len(lo)))

    def log_prob(x):
        x = np.asarray(x, dtype=np.float64)
        inside = ((x >= lo) & (x <= hi)).all(1)
        return np.where(inside, -log_vol, -np.inf)

    return draw, log_prob


def uniform_annulus(r_in: float, r_out: float):
    """(draw, log_prob) of the uniform law on {r_in <= |x| <= r_out} in 2-D: p = 1 / (pi (r_out^2 - r_in^2)).

    Exact draws: the radius by inverting its CDF (r^2 - r_in^2) / (r_out^2 - r_in^2), the angle uniform.
    """
    log_area = math.log(math.pi * (r_out**2 - r_in**2))

    def draw(n, seed):
        rng = np.random.default_rng(seed)
        r = np.sqrt(rng.uniform(r_in**2, r_out**2, n))
        a = rng.uniform(0.0, 2 * math.pi, n)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)

    def log_prob(x):
        r = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
        return np.where((r >= r_in) & (r <= r_out), -log_area, -np.inf)

    return draw, log_prob


def random_mixture(dim: int, k: int, separation: float = 4.0, seed: int = 0, weights=None,
                   condition: float = 4.0) -> GaussianMixture:
    """K Gaussians in R^D with means N(0, separation^2 I / 2) apart and random covariances.

    Covariance k: R diag(l) R^T, R a random rotation, l log-uniform in [1/sqrt(condition), sqrt(condition)]
    (so its condition number is at most `condition`); weights equal unless given.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, dim)) * separation / math.sqrt(2)
    covs = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        lam = np.exp(rng.uniform(-0.5, 0.5, dim) * math.log(condition))
        covs.append((q * lam) @ q.T)
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return GaussianMixture(w, means, np.stack(covs))


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _mixture_member(name, description, mix: GaussianMixture, n_train=2000, data=None) -> SuiteMember:
    def draw(n, seed):
        return mix.sample(int(n), generator=torch.Generator().manual_seed(int(seed))).numpy()

    def log_prob(x):
        return mix.log_prob(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()

    return SuiteMember(name, description, mix.dim, n_train, draw, log_prob, mix, data)


def _toy_member(key: str) -> SuiteMember:
    spec = POINT_DATASETS[key]

    def draw(n, seed):
        return spec.draw(int(n), int(seed)).astype(np.float64)

    return SuiteMember(key, spec.description + " (no closed-form density)", 2, spec.default_n, draw)


def _build_suite() -> dict[str, SuiteMember]:
    seed = seed_mixture()
    aniso = [(_rotation(a) * np.array([4.0, 0.01])) @ _rotation(a).T for a in (0.3, 1.9)]  # R diag(std^2) R^T
    grid = np.array([[i, j] for i in range(4) for j in range(4)], dtype=np.float64) * 4.0 - 6.0
    members = [
        _mixture_member("gmm1d", "1-D, 3 unequal components of different widths",
                        GaussianMixture([0.3, 0.5, 0.2], [[-3.0], [0.0], [2.5]], [[[0.25]], [[1.0]], [[0.09]]])),
        _mixture_member("seed300", "the 3-Gaussian mixture, its fixed 300 points", seed, 300, seed_dataset),
        _mixture_member("seed_n200", "the 3-Gaussian mixture, N = 200", seed, 200),
        _mixture_member("seed_n2000", "the 3-Gaussian mixture, N = 2000", seed, 2000),
        _mixture_member("seed_n20000", "the 3-Gaussian mixture, N = 20000", seed, 20000),
        _mixture_member("unequal2d", "2 separated Gaussians, weights 1:10",
                        GaussianMixture([1 / 11, 10 / 11], [[-4.0, 0.0], [4.0, 0.0]], np.stack([np.eye(2)] * 2))),
        _mixture_member("aniso2d", "2 crossing Gaussians of stds 2 and 0.1 (condition number 400)",
                        GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], np.stack(aniso))),
        _mixture_member("overlap2d", "2 overlapping Gaussians (means 1.5 std apart)",
                        GaussianMixture([0.5, 0.5], [[-0.75, 0.0], [0.75, 0.0]], np.stack([np.eye(2)] * 2))),
        _mixture_member("grid16", "16 Gaussians on a 4 x 4 grid, spacing 4, std 0.5",
                        GaussianMixture(np.full(16, 1 / 16), grid, np.stack([0.25 * np.eye(2)] * 16))),
        _mixture_member("gmm3d", "3-D, 4 random anisotropic components", random_mixture(3, 4, seed=3)),
        _mixture_member("gmm5d", "5-D, 3 random anisotropic components", random_mixture(5, 3, seed=5)),
        _mixture_member("gmm10d", "10-D, 4 random anisotropic components", random_mixture(10, 4, seed=10)),
        _mixture_member("gmm20d", "20-D, 4 random anisotropic components", random_mixture(20, 4, seed=20)),
        SuiteMember("student_t2d", "heavy tails: product of two Student-t, 3 degrees of freedom", 2, 2000,
                    *student_t_product(2, 3.0)),
        SuiteMember("box3d", "bounded support: uniform on [-1, 1] x [0, 2] x [-3, 3]", 3, 2000,
                    *uniform_box([-1.0, 0.0, -3.0], [1.0, 2.0, 3.0])),
        SuiteMember("annulus2d", "bounded support: uniform on the annulus 1 <= |x| <= 2", 2, 2000,
                    *uniform_annulus(1.0, 2.0)),
        _mixture_member("seed_scale1e-3", "the 3-Gaussian mixture x 1e-3", seed.affine(np.zeros(2), 1e3)),
        _mixture_member("seed_scale1e3", "the 3-Gaussian mixture x 1e3", seed.affine(np.zeros(2), 1e-3)),
        _mixture_member("seed_offset1e3", "the 3-Gaussian mixture + (1e3, -1e3)",
                        seed.affine(np.array([-1e3, 1e3]), 1.0)),
    ] + [_toy_member(k) for k in ("moons", "swissroll", "checkerboard", "rings")]
    return {m.name: m for m in members}


SUITE: dict[str, SuiteMember] = _build_suite()


def suite_names() -> list[str]:
    return list(SUITE)


def suite_member(name: str) -> SuiteMember:
    if name not in SUITE:
        raise ValueError(f"unknown suite member {name!r}; choose one of {', '.join(SUITE)}")
    return SUITE[name]
