"""Point metrics against brute force, Gaussian closed forms, and their own noise floors.

Tolerances: 5 standard deviations of the estimator at the sample size used, from the first-order
(Hoeffding) projection of each U/V-statistic, whose variance is computed here from closed forms.
"""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from scoregen.data import reference_sampler
from scoregen.process.distributions import GaussianMixture, seed_mixture
from scoregen.evaluation.metrics import (
    EnergyDistanceTo,
    component_shares,
    energy_distance,
    knn_radii,
    low_density_fraction,
    median_bandwidth,
    mmd,
    noise_floor,
    noise_floor_to,
    point_metrics,
    precision_recall,
    random_directions,
    sliced_wasserstein,
)


def gauss(n, mean, seed, scale=1.0):
    mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    return mean + scale * np.random.default_rng(seed).standard_normal((n, len(mean)))


def gauss_sampler(mean):
    return lambda n, seed: gauss(n, mean, seed)


def abs_normal_mean(a, s):
    """E|Z| for Z ~ N(a, s^2)."""
    return s * np.sqrt(2 / np.pi) * np.exp(-(a**2) / (2 * s * s)) + a * (1 - 2 * norm.cdf(-a / s))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: with other jobs on the machine, torch's thread pool only adds waiting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dists(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


# --- energy distance ---------------------------------------------------------------------------
def test_energy_distance_matches_brute_force():
    x, y = gauss(7, [0, 0, 0], 0), gauss(5, [1, 0, 0], 1)
    v = 2 * dists(x, y).mean() - dists(x, x).mean() - dists(y, y).mean()
    assert energy_distance(x, y) == pytest.approx(v, rel=1e-10)
    assert energy_distance(torch.from_numpy(x), y) == pytest.approx(v, rel=1e-10)


def test_energy_distance_to_a_fixed_reference_equals_energy_distance():
    ref, x = gauss(50, [3e3, -1.0], 2), gauss(20, [3e3 + 0.5, -1.0], 3)
    to_ref = EnergyDistanceTo(ref)
    assert to_ref(x) == pytest.approx(energy_distance(x, ref), rel=1e-9, abs=1e-12)
    assert to_ref(torch.from_numpy(ref)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match=r"same dimension D, got x \(20, 1\)"):
        to_ref(x[:, :1])


def test_noise_floor_to_a_fixed_reference_centres_on_its_conditional_bias():
    """x of n fresh N(0, 1) draws against one fixed reference y of m: E[V | y] = 2 E_x E_y|X - y|
    - (1 - 1/n) E|X - X'| - mean|y - y'|, computed here from y itself."""
    n, m, R = 200, 400, 40
    y = gauss(m, [0.0], 7)
    floor = noise_floor_to(EnergyDistanceTo(y), gauss_sampler([0.0]), n, repeats=R, seed=5)
    exx = 2 / math.sqrt(math.pi)
    cross = abs_normal_mean(y[:, 0], 1).mean()  # E|X - y_j| for X ~ N(0, 1), averaged over the y_j
    expected = 2 * cross - (1 - 1 / n) * exx - dists(y, y).mean()
    assert abs(floor["mean"] - expected) < 5 * floor["std"] / math.sqrt(R)
    assert floor["reference"] == "fixed" and floor["repeats"] == R
    with pytest.raises(ValueError, match="repeats must be >= 2"):
        noise_floor_to(EnergyDistanceTo(y), gauss_sampler([0.0]), n, repeats=1)


def test_energy_distance_closed_form_for_shifted_1d_gaussians():
    """N(0,1) vs N(mu,1): E|X-Y| = E|N(-mu, 2)|, E|X-X'| = 2/sqrt(pi); the V-statistic keeps the
    i = j zeros, so E[V] = 2 E|X-Y| - (1 - 1/n) E|X-X'| - (1 - 1/m) E|Y-Y'|."""
    mu, n, m = 1.0, 2000, 1500
    exx = 2 / math.sqrt(math.pi)
    expected = 2 * abs_normal_mean(mu, math.sqrt(2)) - (2 - 1 / n - 1 / m) * exx
    # Hoeffding projection: g1(x) = 2 E_Y|x - Y| - 2 E_X'|x - X'|, g2 likewise
    z = np.random.default_rng(9).standard_normal(200_000)
    var_g = np.var(2 * abs_normal_mean(z - mu, 1) - 2 * abs_normal_mean(z, 1))
    sd = math.sqrt(var_g / n + var_g / m)
    v = energy_distance(gauss(n, 0, 1), gauss(m, mu, 2))
    assert abs(v - expected) < 5 * sd
    assert expected > 10 * sd  # the test can tell mu = 1 from mu = 0


def test_energy_distance_noise_floor_mean_is_its_exact_bias():
    """Same distribution: E[V] = E|X - X'| (1/n + 1/m), the floor noise_floor must centre on."""
    n, m, R = 300, 500, 30
    fl = noise_floor(energy_distance, gauss_sampler([0.0]), n, m, repeats=R, seed=3)
    expected = 2 / math.sqrt(math.pi) * (1 / n + 1 / m)
    assert abs(fl["mean"] - expected) < 5 * fl["std"] / math.sqrt(R)
    assert fl["repeats"] == R and fl["std"] > 0 and fl["p95"] >= fl["mean"]


def test_energy_distance_on_the_mixture_sits_in_its_floor_and_sees_a_shift():
    ref = reference_sampler("mixture")
    fl = noise_floor(energy_distance, ref, 500, 1000, repeats=10, seed=0)
    y = ref(1000, 1)
    assert energy_distance(ref(500, 2), y) < fl["mean"] + 5 * fl["std"]
    assert energy_distance(ref(500, 2) + [1.0, 0.0], y) > fl["mean"] + 10 * fl["std"]


# --- MMD -----------------------------------------------------------------------------------------
def kernel_mean(x, m0, h, s2=1.0):
    """E k(x, X') for X' ~ N(m0, s2 I), Gaussian kernel of bandwidth h, any number of points x."""
    d = x.shape[1]
    return (h * h / (h * h + s2)) ** (d / 2) * np.exp(-((x - m0) ** 2).sum(1) / (2 * (h * h + s2)))


def test_mmd_matches_brute_force_both_forms():
    x, y, h = gauss(6, [0, 0], 0), gauss(4, [1, 1], 1), 0.7
    k = lambda a, b: np.exp(-dists(a, b) ** 2 / (2 * h * h))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    u = (kxx.sum() - 6) / 30 + (kyy.sum() - 4) / 12 - 2 * kxy.mean()
    v = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    assert mmd(x, y, bandwidth=h) == pytest.approx(u, rel=1e-10)
    assert mmd(x, y, bandwidth=h, unbiased=False) == pytest.approx(v, rel=1e-10)


def test_mmd_closed_form_for_shifted_gaussians():
    """MMD^2(N(0,I), N(mu,I)) = 2 (h^2/(h^2+2))^(D/2) (1 - exp(-|mu|^2 / (2 (h^2+2)))), unbiased estimate."""
    mu, h, n, m = np.array([1.0, 0.0]), 1.0, 2000, 1000
    expected = 2 * (h * h / (h * h + 2)) * (1 - math.exp(-(mu @ mu) / (2 * (h * h + 2))))
    # Hoeffding: g1(x) = E k(x, X') - E k(x, Y), g2(y) = E k(y, Y') - E k(X, y); Var = 4 Var g1/n + 4 Var g2/m
    z = gauss(200_000, [0, 0], 7)
    var_g1 = np.var(kernel_mean(z, 0, h) - kernel_mean(z, mu, h))
    var_g2 = np.var(kernel_mean(z + mu, mu, h) - kernel_mean(z + mu, 0, h))
    sd = math.sqrt(4 * var_g1 / n + 4 * var_g2 / m)
    v = mmd(gauss(n, [0, 0], 1), gauss(m, mu, 2), bandwidth=h)
    assert abs(v - expected) < 5 * sd
    assert expected > 10 * sd  # the test can tell mu from 0


def test_unbiased_mmd_floor_centres_on_zero():
    R = 30
    fl = noise_floor(lambda a, b: mmd(a, b, bandwidth=1.0), gauss_sampler([0.0, 0.0]), 200, 300, repeats=R, seed=5)
    assert abs(fl["mean"]) < 5 * fl["std"] / math.sqrt(R)


def test_median_bandwidth_of_a_gaussian():
    """|X - X'| for X ~ N(0, 9) is |N(0, 18)|: median 3 sqrt(2) Phi^-1(3/4). The sample median of
    the U-statistic pairs has sd <= that of n/2 independent pairs: sqrt(1/4) / (f(q) sqrt(n/2))."""
    n = 4000
    q = 3 * math.sqrt(2) * norm.ppf(0.75)
    f = 2 * norm.pdf(q, scale=3 * math.sqrt(2))
    sd = 0.5 / (f * math.sqrt(n / 2))
    assert abs(median_bandwidth(gauss(n, [0.0], 0, scale=3.0), max_points=n) - q) < 5 * sd


# --- sliced Wasserstein --------------------------------------------------------------------------
def test_sliced_w2_in_1d_is_exact_w2_for_unequal_sizes():
    """Brute force: repeat each sample to the common size lcm(n, m), then W2^2 = mean (sorted diff)^2."""
    x, y = gauss(6, [0.0], 0), gauss(4, [0.3], 1, scale=2.0)
    xs, ys = np.sort(np.repeat(x[:, 0], 2)), np.sort(np.repeat(y[:, 0], 3))
    assert sliced_wasserstein(x, y, n_projections=3) == pytest.approx(math.sqrt(((xs - ys) ** 2).mean()), rel=1e-10)


def test_sliced_w2_of_a_translated_sample_is_exact():
    """y = x + mu keeps every projection's order, so W2^2 along theta is (theta . mu)^2 exactly."""
    x, mu = gauss(500, [0, 0, 0], 0), np.array([1.0, -2.0, 0.5])
    theta = random_directions(64, 3, seed=4).numpy()
    assert sliced_wasserstein(x, x + mu, n_projections=64, seed=4) == pytest.approx(
        math.sqrt(((theta @ mu) ** 2).mean()), rel=1e-10
    )


def test_random_directions_are_uniform_on_the_sphere():
    """E (theta . mu)^2 = |mu|^2 / D; theta_1^2 ~ Beta(1/2, (D-1)/2) has variance 2(D-1)/(D^2 (D+2))."""
    D, P = 3, 20000
    theta = random_directions(P, D, seed=0).numpy()
    np.testing.assert_allclose(np.linalg.norm(theta, axis=1), 1.0, atol=1e-12)
    mu = np.array([2.0, -1.0, 0.5])
    sd = (mu @ mu) * math.sqrt(2 * (D - 1) / (D * D * (D + 2)) / P)
    assert abs(((theta @ mu) ** 2).mean() - (mu @ mu) / D) < 5 * sd


def test_sliced_w2_closed_form_for_shifted_gaussians():
    """Independent samples of N(0,I) and N(mu,I): SW2^2 = mean_theta (theta.mu)^2 + 2 mu^T A Delta + O(1/n),
    A = mean theta theta^T, Delta = mean difference ~ N(0, (1/n + 1/m) I). The O(1/n) part is the
    null value, measured by the noise floor."""
    D, n, m, P = 2, 3000, 2000, 256
    mu = np.array([2.0, 0.0])
    theta = random_directions(P, D, seed=0).numpy()
    expected = ((theta @ mu) ** 2).mean()
    sd = 2 * np.linalg.norm((theta.T @ theta / P) @ mu) * math.sqrt(1 / n + 1 / m)
    sw2 = lambda a, b: sliced_wasserstein(a, b, P, seed=0) ** 2  # noqa: E731
    null = noise_floor(sw2, gauss_sampler([0.0, 0.0]), n, m, repeats=5, seed=1)["mean"]
    v = sw2(gauss(n, [0, 0], 1), gauss(m, mu, 2))
    assert abs(v - expected - null) < 5 * sd + null
    assert abs(expected - (mu @ mu) / D) < 0.1 * (mu @ mu) / D  # P = 256 directions average the sphere


# --- mixtures ----------------------------------------------------------------------------------
def bayes_error(mix, n=200_000):
    """P(classify(X) != true component), an upper bound on |E share_k - w_k| summed over k."""
    x, k = mix.sample(n, generator=torch.Generator().manual_seed(11), return_labels=True)
    return float((mix.classify(x) != k).double().mean())


@pytest.mark.parametrize(
    "mix",
    [seed_mixture(), GaussianMixture([0.2, 0.5, 0.3], [[0, 0, 0], [20, 0, 0], [0, 20, 0]], np.ones((3, 3)))],
    ids=["seed", "unequal-3d"],
)
def test_component_shares_of_exact_samples_are_binomial(mix):
    n = 3000
    out = component_shares(mix.sample(n, generator=torch.Generator().manual_seed(0)), mix)
    w, s = np.array(out["weights"]), np.array(out["shares"])
    np.testing.assert_allclose(w, mix.weights.numpy())
    assert s.sum() == pytest.approx(1.0)
    assert np.all(np.abs(s - w) < 5 * np.sqrt(w * (1 - w) / n) + bayes_error(mix))
    assert out["max_abs_deviation"] == pytest.approx(np.abs(s - w).max())


def test_component_shares_see_a_collapsed_component():
    mix = seed_mixture()
    x = torch.tensor(mix.means[[0, 0, 1]].numpy()).repeat(100, 1)  # 2/3 on component 0, none on 2
    assert component_shares(x, mix)["max_abs_deviation"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="dimension 3"):
        component_shares(np.zeros((4, 3)), mix)


def test_low_density_fraction_is_one_minus_level_for_exact_samples():
    mix, n, p, n_mc = seed_mixture(), 20000, 0.001, 100_000
    x = mix.sample(n, generator=torch.Generator().manual_seed(1))
    sd = math.sqrt(p * (1 - p) * (1 / n + 1 / n_mc))  # sample count + threshold estimated from n_mc draws
    assert abs(low_density_fraction(x, mix, 1 - p, n_mc) - p) < 5 * sd
    assert low_density_fraction(x[:2000] + torch.tensor([3.0, -3.0], dtype=torch.float64), mix) > 0.1


# --- the report ----------------------------------------------------------------------------------
def test_point_metrics_report_is_plain_and_consistent():
    ref, mix = reference_sampler("mixture"), seed_mixture()
    x, y = ref(200, 0), ref(400, 1)
    out = point_metrics(x, y, mix, reference_sampler=ref, repeats=3)
    json.dumps(out)  # plain numbers only
    assert out["energy_distance"] == pytest.approx(energy_distance(x, y))
    assert out["mmd2"] == pytest.approx(mmd(x, y, bandwidth=out["mmd_bandwidth"]))
    assert out["sliced_w2"] == pytest.approx(sliced_wasserstein(x, y))
    assert (out["n_samples"], out["n_reference"], out["dim"]) == (200, 400, 2)
    assert out["max_share_deviation"] == pytest.approx(component_shares(x, mix)["max_abs_deviation"])
    floors = out["floor"]
    assert set(floors) == {"energy_distance", "mmd2", "sliced_w2", "max_share_deviation", "low_density_fraction"}
    assert all(set(f) == {"mean", "std", "p95", "repeats"} for f in floors.values())
    assert "floor" not in point_metrics(x, y)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"same dimension.*\(5, 2\).*\(5, 3\)"):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    bad = np.ones((5, 2))
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="y: 1 NaN.*row 2"):
        mmd(np.zeros((5, 2)), bad)
    with pytest.raises(ValueError, match=r"x: expected an array of shape \(N, D\)"):
        sliced_wasserstein(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(np.zeros((5, 2)), np.ones((5, 2)), bandwidth=0.0)
    with pytest.raises(ValueError, match="repeats"):
        noise_floor(energy_distance, gauss_sampler([0.0]), 5, 5, repeats=1)



# --- precision and recall (Kynkaanniemi et al. 2019) -----------------------------------------------------------
def brute_precision_recall(real, fake, k):
    """The paper's definition, loop by loop: f(x, Phi) = 1 if |x - phi| <= |phi - NN_k(phi)| for some phi."""
    def inside(x, phi, radii):
        return any(np.linalg.norm(x - q) <= r for q, r in zip(phi, radii))

    out = []
    for ref, query in ((real, fake), (fake, real)):
        radii = [sorted(np.linalg.norm(ref[i] - ref[j]) for j in range(len(ref)) if j != i)[k - 1]
                 for i in range(len(ref))]
        out.append(np.mean([inside(x, ref, radii) for x in query]))
    return tuple(out)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_match_brute_force(k, monkeypatch):
    import scoregen.evaluation.metrics as M

    rng = np.random.default_rng(k)
    real, fake = rng.normal(size=(60, 3)), 0.8 * rng.normal(size=(45, 3)) + 1.0
    want = brute_precision_recall(real, fake, k)
    got = precision_recall(real, fake, k)
    assert (got["precision"], got["recall"]) == pytest.approx(want, abs=1e-12)
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1  # a case with points on both sides
    monkeypatch.setattr(M, "_BLOCK", 97)  # many row blocks of odd sizes: the same answer
    assert precision_recall(real, fake, k) == got
    radii = np.sort(np.linalg.norm(real[:, None] - real[None], axis=-1), axis=1)[:, k]
    np.testing.assert_allclose(knn_radii(real, k).numpy(), radii, rtol=1e-10)


def test_precision_recall_closed_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    same = precision_recall(a, a.copy())
    assert (same["precision"], same["recall"]) == (1.0, 1.0)  # every point is in its own set's manifold
    far = precision_recall(a, rng.normal(size=(300, 8)) + 100.0)  # 100 apart, radii of a few units
    assert (far["precision"], far["recall"]) == (0.0, 0.0)
    # a collapsed generator (one point, repeated): radii 0, so it covers no real point; the point, the
    # real cloud's centre, lies inside the real manifold
    collapsed = precision_recall(a, np.zeros((300, 8)))
    assert (collapsed["precision"], collapsed["recall"]) == (1.0, 0.0)


def test_a_generator_of_one_of_two_modes():
    """Real: two modes 50 apart (2-D, unit spread), the mode of each of N points drawn with probability
    1/2; generated: n draws of mode A only. The modes' balls never reach across, so exactly

        precision = precision of the generated set against the real points of mode A,
        recall    = (N_A / N) x recall of the real points of mode A,

    and N_A / N is binomial: within 4 sqrt(1/4N) of 1/2. Against its own mode the generator is a second
    sample of one distribution, scoring near 1 in 2-D (above 0.9 at these sizes), so precision is ~1 and
    recall ~0.5 x that."""
    rng = np.random.default_rng(1)
    N, n = 4000, 2000
    in_a = rng.random(N) < 0.5
    real = rng.normal(size=(N, 2)) + np.where(in_a[:, None], 0.0, 50.0)
    fake = rng.normal(size=(n, 2))
    got, own = precision_recall(real, fake), precision_recall(real[in_a], fake)
    assert got["precision"] == own["precision"]
    assert got["recall"] == pytest.approx(in_a.mean() * own["recall"], abs=1e-12)
    assert got["precision"] > 0.9 and own["recall"] > 0.9
    assert abs(got["recall"] - 0.5 * own["recall"]) <= 4 * math.sqrt(0.25 / N)


def test_precision_recall_bad_k_is_named():
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\].*got 5"):
        precision_recall(np.zeros((5, 2)), np.ones((9, 2)), k=5)
    with pytest.raises(ValueError, match=r"k must be an integer.*got 0"):
        precision_recall(np.zeros((5, 2)), np.ones((5, 2)), k=0)
    with pytest.raises(ValueError, match=r"same dimension"):
        precision_recall(np.zeros((5, 2)), np.ones((5, 3)))
