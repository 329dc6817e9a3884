"""Sample quality for images: FID and KID on classifier features, and the class histogram.

FID (Heusel et al. 2017) is the Frechet (2-Wasserstein) distance between Gaussians fitted to two
feature sets,

    FID = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr( (S_a^{1/2} S_b S_a^{1/2})^{1/2} ),

using tr((S_a S_b)^{1/2}) = tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}): the inner matrix is symmetric
positive semi-definite, so an eigen-decomposition gives the trace without the complex-valued
`sqrtm` of a non-symmetric product (clipping the round-off negatives to zero).

KID (Binkowski et al. 2018, "Demystifying MMD GANs") is the squared MMD with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, estimated without bias (the U-statistic, i != j terms only),
averaged over random subsets; its std over the subsets is reported beside it. FID is biased
upwards at finite n, KID is not; both are only comparable at equal sample sizes, which is why
`evaluate_images` prints the test-vs-train value at the same sizes as the floor.

Precision and recall (Kynkaanniemi et al. 2019, `metrics.precision_recall`): the fraction of samples
inside the k-NN manifold of the test features (k = 3), and the fraction of test features inside the
samples' manifold; a blurry or mode-dropping model loses recall, one that makes implausible images
loses precision. Two real samples of one distribution score below 1 at finite n, so the floor is the
same pair of numbers between the test and the training subset (disjoint real sets of the same sizes).

The features are the 128-d penultimate activations of `classifier.FeatureClassifier`, trained on
the data set itself (the offline substitute for Inception features; Binkowski et al. sec. 5).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.images import load_mnist, unscale_images
from .classifier import CLASSIFIER_DATASETS, classifier_features, classifier_predict, load_classifier
from .metrics import precision_recall

__all__ = ["frechet_distance", "fid", "kid", "precision_recall", "class_histogram", "evaluate_images"]


def _as_features(f, name: str) -> np.ndarray:
    a = f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
    if a.ndim != 2 or len(a) < 2:
        raise ValueError(f"{name} must be features of shape (N >= 2, D), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(a)).sum())} NaN or infinite values")
    return a.astype(np.float64)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}) (see module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"frechet_distance needs means (D,) and covariances (D, D) of one D, got "
                         f"{mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ cov2 @ root1
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_cross)


def fid(feats_a, feats_b) -> float:
    """FID between two feature sets (N_a, D), (N_b, D): means and unbiased covariances."""
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _cubic_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    g = a @ b.T
    g /= a.shape[1]
    g += 1
    return g * g * g  # much faster than g ** 3 (numpy's general power)


def _mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 (U-statistic) with the cubic polynomial kernel."""
    kaa, kbb, kab = _cubic_kernel(a, a), _cubic_kernel(b, b), _cubic_kernel(a, b)
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def kid(feats_a, feats_b, *, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0):
    """KID: mean and std over `n_subsets` random subsets (without replacement, `subset_size` from
    each set, capped at the smaller set) of the unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3."""
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 features, got subset_size={subset_size}")
    rng = np.random.default_rng(seed)
    vals = [_mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(n_subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def _to_unit(images, value_range) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must have shape (N, 1, 28, 28), got {tuple(x.shape)}")
    x = x.detach().float().cpu()
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"images hold {bad} NaN or infinite values; a diverged sampler cannot be scored")
    return unscale_images(x, value_range)


def class_histogram(images, dataset: str = "mnist", *, value_range=(0, 1), model=None) -> np.ndarray:
    """Fractions of the images the data set's classifier assigns to each of its 10 classes."""
    model = model or load_classifier(dataset)
    pred = classifier_predict(model, _to_unit(images, value_range))
    return np.bincount(pred.numpy(), minlength=10) / len(pred)


def _ref_subset(dataset, split, n, data_dir, seed):
    x, y = load_mnist(split, data_dir, name=dataset)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def evaluate_images(samples, dataset_name: str, data_dir=None, *, value_range=(0, 1), model=None,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0, pr_k: int = 3) -> dict:
    """FID/KID of `samples` against the test split, beside the test-vs-train floor at equal sizes.

    samples: (N, 1, 28, 28) in `value_range` (clamped to it). The reference is a random subset of
    m = min(N, 10000) test images; the floor compares those test images with N training images
    (both seeded), so both numbers carry the same finite-sample bias. KID uses `kid_subsets`
    subsets of min(kid_subset_size, N // 2) features. Precision and recall use k-NN manifolds with
    k = pr_k, their floor the same statistic with the training images in the samples' place. Also the class histogram
    of the samples and its largest deviation from uniform, in percentage points.
    """
    if dataset_name not in CLASSIFIER_DATASETS:
        raise ValueError(f"image metrics exist for {list(CLASSIFIER_DATASETS)}, not {dataset_name!r}")
    x = _to_unit(samples, value_range)
    n = len(x)
    if n < 2:
        raise ValueError(f"evaluate_images needs at least 2 samples, got {n}")
    model = model or load_classifier(dataset_name)
    test, test_y = _ref_subset(dataset_name, "test", min(n, 10000), data_dir, seed)
    train, _ = _ref_subset(dataset_name, "train", n, data_dir, seed + 1)
    f_s, f_test, f_train = (classifier_features(model, t) for t in (x, test, train))
    # subsets of at most half the samples, so that they differ and their spread means something
    kid_opts = {"n_subsets": kid_subsets, "subset_size": min(kid_subset_size, max(n // 2, 2)), "seed": seed}
    k, k_std = kid(f_s, f_test, **kid_opts)
    k0, k0_std = kid(f_train, f_test, **kid_opts)
    pr, pr0 = precision_recall(f_test, f_s, pr_k), precision_recall(f_test, f_train, pr_k)
    frac = np.bincount(classifier_predict(model, x).numpy(), minlength=10) / n
    out = {
        "dataset": dataset_name, "n": n, "n_ref": len(test),
        "fid": fid(f_s, f_test), "fid_floor": fid(f_train, f_test),
        "kid": k, "kid_std": k_std, "kid_floor": k0, "kid_floor_std": k0_std,
        "precision": pr["precision"], "recall": pr["recall"], "precision_floor": pr0["precision"],
        "recall_floor": pr0["recall"], "pr_k": pr["k"],
        "class_fractions": frac.tolist(),
        "class_max_dev_points": float(100 * np.abs(frac - 0.1).max()),
        "test_class_fractions": (np.bincount(test_y.numpy(), minlength=10) / len(test_y)).tolist(),
    }
    out["fid_ratio"] = out["fid"] / out["fid_floor"] if out["fid_floor"] > 0 else float("inf")
    return out
