"""Exact distributions: Gaussian mixtures in any dimension, and their noised marginals.

A Gaussian mixture stays one under every linear forward process: if x(0) ~ sum_k w_k N(mu_k, S_k)
and x(t) = alpha x(0) + std z, then

    p_t(x) = sum_k w_k N(x; alpha mu_k, alpha^2 S_k + std^2 I),
    grad log p_t(x) = sum_k r_k(x) (alpha^2 S_k + std^2 I)^{-1} (alpha mu_k - x),

with responsibilities r_k(x) proportional to w_k N(x; alpha mu_k, alpha^2 S_k + std^2 I). Writing
S_k = U_k diag(lam_k) U_k^T once makes every time cheap: the noised covariance is
U_k diag(alpha^2 lam_k + std^2) U_k^T. These closed forms are what the tests and demos compare
learned scores, samplers and likelihoods against.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["GaussianMixture", "seed_mixture", "seed_dataset"]


class GaussianMixture:
    """sum_k w_k N(mu_k, S_k) in R^D. Tensors are kept in float64; inputs are cast to it."""

    def __init__(self, weights, means, covs):
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        mu = torch.as_tensor(np.asarray(means, dtype=np.float64))
        S = torch.as_tensor(np.asarray(covs, dtype=np.float64))
        if mu.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(mu.shape)}")
        K, D = mu.shape
        if S.dim() == 2 and S.shape == (K, D):  # diagonal covariances given as variances
            S = torch.diag_embed(S)
        if S.shape != (K, D, D):
            raise ValueError(f"covs must have shape (K, D, D) = {(K, D, D)}, got {tuple(S.shape)}")
        if w.shape != (K,) or (w < 0).any() or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-6):
            raise ValueError(f"weights must be K={K} non-negative numbers summing to 1, got {w.tolist()}")
        lam, U = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))
        if (lam <= 0).any():
            raise ValueError("every covariance must be positive definite")
        self.weights, self.means, self.covs = w, mu, S
        self._lam, self._U = lam, U

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def gaussian(cls, mean, cov) -> "GaussianMixture":
        """A single Gaussian N(mean, cov) as a one-component mixture."""
        mean = np.asarray(mean, dtype=np.float64)
        return cls([1.0], mean[None], np.asarray(cov, dtype=np.float64)[None])

    def affine(self, shift, scale) -> "GaussianMixture":
        """The law of (x - shift) / scale: means (mu_k - shift) / scale, covariances S_k / scale^2."""
        shift = torch.as_tensor(np.asarray(shift, dtype=np.float64)).expand(self.dim)
        return GaussianMixture(self.weights, (self.means - shift) / scale, self.covs / float(scale) ** 2)

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        d = self.means - m
        return (self.weights[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    # --- sampling -------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n i.i.d. draws (float64); with `return_labels`, also the component of each."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        L = self._U * self._lam.sqrt()[:, None, :]  # U diag(sqrt lam): L L^T = S
        x = self.means[k] + torch.einsum("nij,nj->ni", L[k], z)
        return (x, k) if return_labels else x

    # --- noised marginal --------------------------------------------------------------------
    def _per_example(self, x, alpha, std):
        """Projected residuals and variances of every component at every point: (N, K, D) each."""
        x = torch.as_tensor(x).to(torch.float64)
        n = x.shape[0]
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1).expand(n, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float64).reshape(-1, 1, 1).expand(n, 1, 1)
        var = alpha**2 * self._lam[None] + std**2  # (N, K, D)
        resid = x[:, None, :] - alpha * self.means[None]  # (N, K, D)
        proj = torch.einsum("kdj,nkd->nkj", self._U, resid)  # U^T (x - alpha mu)
        return x, proj, var

    def component_log_probs(self, x, alpha=1.0, std=0.0) -> torch.Tensor:
        """log w_k + log N(x; alpha mu_k, alpha^2 S_k + std^2 I), shape (N, K)."""
        x, proj, var = self._per_example(x, alpha, std)
        quad = (proj**2 / var).sum(-1)
        logdet = torch.log(var).sum(-1)
        return torch.log(self.weights)[None] - 0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))

    def log_prob(self, x, alpha=1.0, std=0.0) -> torch.Tensor:
        """log p(x) of the (noised) mixture, shape (N,)."""
        return torch.logsumexp(self.component_log_probs(x, alpha, std), dim=1)

    def responsibilities(self, x, alpha=1.0, std=0.0) -> torch.Tensor:
        """Posterior probability of each component given x, shape (N, K)."""
        return torch.softmax(self.component_log_probs(x, alpha, std), dim=1)

    def classify(self, x) -> torch.Tensor:
        """Most probable component of each point."""
        return self.component_log_probs(x).argmax(1)

    def score(self, x, alpha=1.0, std=0.0) -> torch.Tensor:
        """grad_x log p(x) of the (noised) mixture, shape (N, D), float64."""
        x64, proj, var = self._per_example(x, alpha, std)
        lp = torch.log(self.weights)[None] - 0.5 * ((proj**2 / var).sum(-1) + torch.log(var).sum(-1))
        r = torch.softmax(lp, dim=1)  # (N, K)
        comp = -torch.einsum("kdj,nkj->nkd", self._U, proj / var)  # -Cov_k^{-1} (x - alpha mu_k)
        return (r[..., None] * comp).sum(1)

    def score_fn(self, sde):
        """The exact score s(x, t) = grad log p_t(x) under `sde`, in the dtype and device of x;
        differentiable in x (so `likelihood.log_likelihood` can take its exact divergence)."""

        def fn(x, t):
            t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).cpu()
            s = self.score(x.double().cpu(), sde.alpha(t), sde.std(t))
            return s.to(dtype=x.dtype, device=x.device)

        return fn

    def log_prob_fn(self, sde):
        """The exact log p_t(x) under `sde`, as a function (x, t) -> (N,)."""

        def fn(x, t):
            t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).cpu()
            return self.log_prob(x.double().cpu(), sde.alpha(t), sde.std(t)).to(x.device)

        return fn

    def entropy_mc(self, n: int = 200_000, seed: int = 0) -> tuple[float, float]:
        """Monte-Carlo entropy -E log p(x) and its standard error (no closed form for K > 1)."""
        g = torch.Generator().manual_seed(seed)
        lp = self.log_prob(self.sample(n, generator=g))
        return float(-lp.mean()), float(lp.std() / math.sqrt(n))


# The three anisotropic Gaussians of the 2-D toy mixture behind the `seed` data set (a common DDPM/DDIM
# tutorial target).
SEED_MEANS = [[0.0, 0.0], [6.0, 6.0], [-4.0, 5.0]]
SEED_COVS = [[[1.0, 0.5], [0.5, 1.0]], [[1.5, -0.7], [-0.7, 1.5]], [[0.8, 0.0], [0.0, 2.0]]]


def seed_mixture() -> GaussianMixture:
    """The 3-Gaussian mixture: three anisotropic 2-D Gaussians with means (0, 0), (6, 6) and (-4, 5),
    equal weights (the law of the `seed` data set)."""
    return GaussianMixture([1 / 3] * 3, SEED_MEANS, SEED_COVS)


def seed_dataset(n: int = 300, seed: int = 42) -> np.ndarray:
    """The `seed` data set: n // 3 points per component of `seed_mixture()`, component by component, from
    numpy's default_rng(42), float32 (with the defaults, the fixed 300-point training set)."""
    rng = np.random.default_rng(seed)
    parts = [rng.multivariate_normal(np.array(m), np.array(c), n // 3) for m, c in zip(SEED_MEANS, SEED_COVS)]
    return np.vstack(parts).astype(np.float32)
