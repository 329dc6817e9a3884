"""FID, KID and the MNIST classifier behind them: closed forms, unbiasedness, real-data accuracy."""

import numpy as np
import pytest
import scipy.linalg
import torch

from conftest import require_shared_data
from scoregen.data.images import load_mnist
from scoregen.evaluation.classifier import accuracy, classifier_path, load_classifier
from scoregen.evaluation.image_metrics import _mmd2_unbiased, class_histogram, evaluate_images, fid, frechet_distance, kid

torch.set_num_threads(1)
def random_spd(d, rng):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- FID -------------------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    a, b = rng.uniform(0.2, 3, 4), rng.uniform(0.2, 3, 4)
    # diagonal covariances: sum (sqrt a - sqrt b)^2 + |mu1 - mu2|^2
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum() + ((mu1 - mu2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # non-commuting covariances against scipy's sqrtm of the (non-symmetric) product
    s1, s2 = random_spd(6, rng), random_spd(6, rng)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-10)


def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(1).normal(size=(500, 32)) * 3 + 1
    assert abs(fid(f, f)) < 1e-9 * np.trace(np.cov(f, rowvar=False))


def test_sample_fid_matches_gaussian_closed_form():
    """Two Gaussians with diagonal covariances, n = 200,000 draws each. The estimator's bias
    (first and second order) is tr(S1 + S2)/n + sum sqrt(a b)/n; its std by the delta method is
    sqrt(4 D^T (S1 + S2) D / n + sum_i 2/n [(sqrt a_i - sqrt b_i)^2 (a_i + b_i)])."""
    rng = np.random.default_rng(2)
    n, mu1, mu2 = 200_000, np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.5, 0.0])
    a, b = np.array([1.0, 0.5, 2.0]), np.array([0.3, 1.5, 2.0])
    x = mu1 + np.sqrt(a) * rng.normal(size=(n, 3))
    y = mu2 + np.sqrt(b) * rng.normal(size=(n, 3))
    exact = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    d = mu1 - mu2
    bias = (a + b).sum() / n + np.sqrt(a * b).sum() / n
    # d/da of (sqrt a - sqrt b)^2 is 1 - sqrt(b/a); Var(a_hat) = 2 a^2 / n
    var_tr = (((1 - np.sqrt(b / a)) ** 2 * 2 * a**2 + (1 - np.sqrt(a / b)) ** 2 * 2 * b**2) / n).sum()
    sd = np.sqrt(4 * d @ ((a + b) * d) / n + var_tr)
    assert abs(fid(x, y) - exact - bias) < 5 * sd


# --- KID -------------------------------------------------------------------------------------
def test_unbiased_mmd_matches_its_double_sum():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 0.3
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    aa = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
    bb = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
    ab = sum(k(a[i], b[j]) for i in range(6) for j in range(5)) / 30
    assert _mmd2_unbiased(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-10)


def test_kid_is_unbiased_where_the_plug_in_estimate_is_not():
    """R = 400 independent pairs of samples (m = 40, d = 5) of one distribution: the mean of the
    U-statistic is within 4 standard errors of 0; the V-statistic (i = j terms kept) is not."""
    rng = np.random.default_rng(4)
    u, v = [], []
    for _ in range(400):
        a, b = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
        u.append(kid(a, b, n_subsets=1, subset_size=40)[0])
        kaa, kbb, kab = ((a @ a.T) / 5 + 1) ** 3, ((b @ b.T) / 5 + 1) ** 3, ((a @ b.T) / 5 + 1) ** 3
        v.append(kaa.mean() + kbb.mean() - 2 * kab.mean())
    u, v = np.array(u), np.array(v)
    assert abs(u.mean()) < 4 * u.std(ddof=1) / np.sqrt(len(u))
    assert v.mean() > 4 * v.std(ddof=1) / np.sqrt(len(v))


def test_kid_within_its_std_for_one_distribution_and_far_outside_for_two():
    rng = np.random.default_rng(5)
    a, b, c = rng.normal(size=(600, 8)), rng.normal(size=(600, 8)), rng.normal(size=(600, 8)) + 0.5
    same, same_std = kid(a, b, n_subsets=50, subset_size=300)
    diff, diff_std = kid(a, c, n_subsets=50, subset_size=300)
    assert same_std > 0 and abs(same) < 3 * same_std
    assert diff > 10 * diff_std
    with pytest.raises(ValueError, match="feature dimensions"):
        kid(a, b[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        fid(np.full((3, 2), np.nan), a[:, :2])


# --- the classifier and the report on real MNIST -------------------------------------------------
def test_classifier_weights_are_small_and_safe():
    path = classifier_path("mnist")
    assert path.is_file(), f"{path} must ship with the package (python -m scoregen.classifier)"
    assert path.stat().st_size < 1_000_000
    blob = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())


def test_classifier_accuracy_and_histogram_on_real_test_images():
    x, y = load_mnist("test", require_shared_data("mnist"), limit=500)
    model = load_classifier("mnist")
    acc = accuracy(model, x, y)
    assert acc > 0.97
    # each class's predicted share can differ from its true share by at most the error rate
    hist = class_histogram(x, "mnist", model=model)
    true = np.bincount(y.numpy(), minlength=10) / len(y)
    assert hist.sum() == pytest.approx(1.0) and np.abs(hist - true).max() <= (1 - acc) + 1e-12


def test_evaluate_images_real_vs_noise():
    folder = require_shared_data("mnist")
    model = load_classifier("mnist")
    real, _ = load_mnist("train", folder, limit=400)  # real digits stand in for perfect samples
    rep = evaluate_images(real, "mnist", folder, model=model, kid_subsets=50)
    assert rep["n"] == rep["n_ref"] == 400 and rep["fid_floor"] > 0
    assert abs(rep["kid"]) < 3 * rep["kid_std"]
    assert sum(rep["class_fractions"]) == pytest.approx(1.0)
    assert rep["class_max_dev_points"] == pytest.approx(100 * max(abs(f - 0.1) for f in rep["class_fractions"]))
    noise = torch.rand(400, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    bad = evaluate_images(noise * 2 - 1, "mnist", folder, value_range=(-1, 1), model=model, kid_subsets=50)
    assert bad["fid"] > 10 * bad["fid_floor"] and bad["kid"] > 10 * bad["kid_std"]
    assert bad["fid_ratio"] > 10 * rep["fid_ratio"]
    with pytest.raises(ValueError, match="NaN"):
        evaluate_images(torch.full((4, 1, 28, 28), float("nan")), "mnist", folder, model=model)


def test_precision_recall_of_real_collapsed_and_noise_images():
    """Real digits against the test images score like the floor (real vs real at the same sizes): within
    4 binomial standard errors of a difference of two fractions of n, 4 sqrt(2 p (1 - p) / n). A generator
    collapsed onto one training digit covers no test image (its manifold is that one point), and noise
    lies in no real digit's neighbourhood."""
    folder = require_shared_data("mnist")
    model = load_classifier("mnist")
    n = 400
    real, _ = load_mnist("train", folder, limit=n)
    rep = evaluate_images(real, "mnist", folder, model=model, kid_subsets=5)
    assert rep["pr_k"] == 3
    for key in ("precision", "recall"):
        p = rep[f"{key}_floor"]
        assert 0.75 < p < 1 and abs(rep[key] - p) <= 4 * np.sqrt(2 * p * (1 - p) / n), key
    collapsed = evaluate_images(real[:1].repeat(n, 1, 1, 1), "mnist", folder, model=model, kid_subsets=5)
    assert collapsed["recall"] == 0.0 and collapsed["precision"] in (0.0, 1.0)
    noise = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert evaluate_images(noise, "mnist", folder, model=model, kid_subsets=5)["precision"] == 0.0
