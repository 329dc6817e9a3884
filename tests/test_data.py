"""Point data: the registry, the toys' exact shapes, files and their errors, Standardizer, sigma rules."""
import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from scoregen.data import (
    POINT_DATASETS,
    dataset_mixture,
    load_points,
    reference_sampler,
    suggest_sigma_max,
    suggest_sigma_min,
)
from scoregen.process.distributions import GaussianMixture, seed_dataset, seed_mixture

TOYS = ["moons", "rings", "swissroll", "checkerboard", "8gaussians"]


def rms_radius(x):
    c = x - x.mean(0)
    return float(np.sqrt((c.astype(np.float64) ** 2).sum(1).mean()))


# --- registry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["seed", "mixture", "Mixture"])
def test_seed_names_give_the_seed_dataset_exactly(name):
    x = load_points(name)
    assert x.dtype == np.float32 and x.shape == (300, 2)
    np.testing.assert_array_equal(x, seed_dataset())


def test_mixture_with_n_draws_fresh_points_from_the_mixture():
    n = 4000
    x = load_points("mixture", n=n, seed=3)
    assert x.shape == (n, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, load_points("mixture", n=n, seed=3))
    assert not np.array_equal(x[:300], seed_dataset())
    # sample mean within 5 standard errors of the mixture's mean, per coordinate
    m, cov = seed_mixture().mean().numpy(), seed_mixture().covariance().numpy()
    assert np.all(np.abs(x.mean(0) - m) < 5 * np.sqrt(np.diag(cov) / n))


@pytest.mark.parametrize("name", TOYS)
def test_toys_have_defaults_seeds_and_the_mixtures_spread(name):
    x = load_points(name)
    assert x.shape == (POINT_DATASETS[name].default_n, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, load_points(name))  # fixed default seed
    assert not np.array_equal(load_points(name, 500, seed=1), load_points(name, 500, seed=2))
    # design rule: spread comparable to the mixture's sqrt(tr Cov) = 5.14 (within 25%)
    mix = math.sqrt(float(seed_mixture().covariance().trace()))
    assert 0.75 * mix < rms_radius(load_points(name, n=20000)) < 1.25 * mix


def test_rings_radii_and_noise():
    r = np.linalg.norm(load_points("rings", n=20000).astype(np.float64), axis=1)
    outer, inner = r[r > 4.8], r[r <= 4.8]  # 8 noise std from either ring
    n = len(r)
    assert abs(len(outer) / n - 0.5) < 5 * math.sqrt(0.25 / n)
    for ring, radius in ((outer, 6.4), (inner, 3.2)):
        assert abs(ring.mean() - radius) < 5 * 0.2 / math.sqrt(len(ring))
        assert abs(ring.std() - 0.2) < 5 * 0.2 / math.sqrt(2 * len(ring))


def test_eight_gaussians_centres_and_spread():
    x = load_points("8gaussians", n=16000).astype(np.float64)
    k = np.round(np.arctan2(x[:, 1], x[:, 0]) / (math.pi / 4)).astype(int) % 8
    n = len(x)
    counts = np.bincount(k, minlength=8)
    assert np.all(np.abs(counts / n - 1 / 8) < 5 * math.sqrt(1 / 8 * 7 / 8 / n))
    centres = 5.0 * np.stack([np.cos(k * math.pi / 4), np.sin(k * math.pi / 4)], 1)
    resid = x - centres
    assert np.all(np.abs(resid.mean(0)) < 5 * 0.5 / math.sqrt(n))
    assert np.all(np.abs(resid.var(0) - 0.25) < 5 * 0.25 * math.sqrt(2 / n))


def test_checkerboard_fills_only_black_cells_uniformly():
    x = load_points("checkerboard", n=16000).astype(np.float64)
    assert np.all(np.abs(x) <= 6.0)
    i, j = np.floor(x[:, 0] / 3).astype(int), np.floor(x[:, 1] / 3).astype(int)
    assert np.all((i + j) % 2 == 0)
    n = len(x)
    counts = np.unique(np.stack([i, j], 1), axis=0, return_counts=True)[1]
    assert len(counts) == 8 and np.all(np.abs(counts / n - 1 / 8) < 5 * math.sqrt(1 / 8 * 7 / 8 / n))


# --- reference samplers -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mixture", "moons"])
def test_reference_sampler_draws_fresh_reproducible_samples(name):
    ref = reference_sampler(name)
    a = ref(200, 0)
    assert a.shape == (200, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, ref(200, 0))
    assert not np.array_equal(a, ref(200, 1))
    assert not np.array_equal(a, load_points(name, n=200, seed=0))  # a stream of its own


def test_reference_sampler_of_the_mixture_has_its_mean():
    n = 5000
    x = reference_sampler("seed")(n, 5)
    mix = seed_mixture()
    assert np.all(np.abs(x.mean(0) - mix.mean().numpy()) < 5 * np.sqrt(np.diag(mix.covariance().numpy()) / n))


def test_reference_sampler_and_mixture_for_files_and_unknown_names():
    assert reference_sampler("my_points.csv") is None
    assert dataset_mixture("my_points.npy") is None and dataset_mixture("moons") is None
    assert isinstance(dataset_mixture("seed"), GaussianMixture)
    with pytest.raises(ValueError, match="known names"):
        reference_sampler("spirals")


def test_names_follow_the_registries_one_rule():
    from scoregen.data.points import point_dataset_key
    from scoregen.runs.recipe import is_point_data

    assert point_dataset_key("Swiss-Roll") == point_dataset_key("swiss_roll") == "swissroll"
    assert point_dataset_key(" 8 Gaussians ") == "8gaussians" and point_dataset_key("my_points.csv") is None
    np.testing.assert_array_equal(load_points("Swiss-Roll", n=50, seed=3), load_points("swissroll", n=50, seed=3))
    np.testing.assert_array_equal(reference_sampler("SEED")(20, 1), reference_sampler("seed")(20, 1))
    assert isinstance(dataset_mixture("Mixture"), GaussianMixture)
    assert is_point_data("8-gaussians") and not is_point_data("fashion-mnist")


# --- files --------------------------------------------------------------------------------------
def test_npy_and_csv_files_load(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "p.npy", x)
    np.testing.assert_allclose(load_points(tmp_path / "p.npy"), x.astype(np.float32))
    np.savetxt(tmp_path / "plain.csv", x, delimiter=",")
    np.savetxt(tmp_path / "head.csv", x, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "space.CSV", x)
    for f in ("plain.csv", "head.csv", "space.CSV"):
        y = load_points(str(tmp_path / f))
        assert y.shape == (50, 3) and y.dtype == np.float32
        np.testing.assert_allclose(y, x, rtol=1e-6)
    sub = load_points(tmp_path / "p.npy", n=10, seed=1)
    assert sub.shape == (10, 3) and all(any(np.array_equal(r, s) for s in x.astype(np.float32)) for r in sub)
    with pytest.raises(ValueError, match="n=60"):
        load_points(tmp_path / "p.npy", n=60)


def test_single_column_csv_is_one_dimensional_points(tmp_path):
    (tmp_path / "one.csv").write_text("x\n1.0\n2.5\n-3\n")
    np.testing.assert_array_equal(load_points(tmp_path / "one.csv"), np.array([[1.0], [2.5], [-3.0]], np.float32))


def test_unknown_name_lists_names_and_file_types(tmp_path):
    with pytest.raises(ValueError) as e:
        load_points("spirals")
    msg = str(e.value)
    assert "spirals" in msg and all(k in msg for k in POINT_DATASETS) and ".npy" in msg and ".csv" in msg
    (tmp_path / "p.txt").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"p\.txt.*\.npy or \.csv"):
        load_points(tmp_path / "p.txt")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npy"):
        load_points(tmp_path / "nothere.npy")
    (tmp_path / "e.csv").write_text("")
    (tmp_path / "h.csv").write_text("x,y\n")
    np.save(tmp_path / "e.npy", np.zeros((0, 2)))
    for f in ("e.csv", "h.csv", "e.npy"):
        with pytest.raises(ValueError, match="empty"):
            load_points(tmp_path / f)


@pytest.mark.parametrize("shape", [(10,), (4, 3, 2)])
def test_wrong_ndim_names_shape(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.ones(shape))
    with pytest.raises(ValueError, match=r"\(N, D\).*" + re_shape(shape)):
        load_points(tmp_path / "a.npy")


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


def test_non_finite_entries_are_counted_with_first_row(tmp_path):
    x = np.ones((6, 2))
    x[3, 1], x[4, 0], x[5, 1] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(ValueError, match=r"bad\.npy: 3 NaN or infinite.*row 3"):
        load_points(tmp_path / "bad.npy")


def test_non_numeric_csv_and_too_few_points(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n1,2\n3,abc\n")
    with pytest.raises(ValueError, match=r"non-numeric.*abc"):
        load_points(tmp_path / "t.csv")
    (tmp_path / "one.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="at least 2 points, got 1"):
        load_points(tmp_path / "one.csv")
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match="real numbers"):
        load_points(tmp_path / "s.npy")
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        load_points("moons", n=1)


# --- sigma rules ------------------------------------------------------------------------------
def brute_diameter(x):
    return float(pdist(x.astype(np.float64)).max())


def test_sigma_max_is_the_exact_diameter_on_small_sets():
    x = seed_dataset()
    assert suggest_sigma_max(x) == pytest.approx(brute_diameter(x), rel=1e-12)


def test_sigma_max_subsampled_is_close_to_the_diameter():
    x = load_points("moons", n=3000)
    exact = brute_diameter(x)
    est = suggest_sigma_max(x, max_points=200)
    assert 0.99 * exact <= est <= exact * (1 + 1e-12)


def test_sigma_max_on_a_circle_is_its_diameter():
    t = 2 * math.pi * np.arange(1000) / 1000
    x = 3.0 * np.stack([np.cos(t), np.sin(t)], 1)
    assert suggest_sigma_max(x, max_points=100) == pytest.approx(6.0, rel=1e-6)


def test_sigma_min_on_a_grid_is_a_tenth_of_the_spacing():
    g = 0.25 * np.stack(np.meshgrid(np.arange(30), np.arange(30)), -1).reshape(-1, 2)
    assert suggest_sigma_min(g) == pytest.approx(0.025, rel=1e-12)
    assert suggest_sigma_min(np.concatenate([g, g]), max_points=300, fraction=0.2) == pytest.approx(0.05, rel=1e-12)
    with pytest.raises(ValueError, match="identical"):
        suggest_sigma_min(np.zeros((4, 2)))


def test_sigma_min_matches_brute_force_nearest_neighbours():
    x = load_points("swissroll", n=500).astype(np.float64)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert suggest_sigma_min(x) == pytest.approx(0.1 * np.median(d.min(1)), rel=1e-12)
    assert suggest_sigma_min(x) < suggest_sigma_max(x)
