"""Guidance against closed forms: Bayes' conditional score of a mixture component, the exact mean shift
of classifier-free guidance between Gaussians, a trained noise-conditional classifier, and the errors."""
import math

import numpy as np
import pytest
import torch

from scoregen.steering import guidance as G
from scoregen.process.distributions import GaussianMixture
from scoregen.models import ScoreModel
from scoregen.models.nets import build_net
from scoregen.models.nets.classifier import build_classifier
from scoregen.steering.noisy_classifier import (NoisyClassifier, load_noisy_classifier, save_noisy_classifier,
                                       train_noisy_classifier)
from scoregen.process.sde import VESDE, VPSDE
from scoregen.sampling.samplers import reverse_diffusion

# three well-separated components in 2-D (the "classes")
MIX = GaussianMixture([0.5, 0.3, 0.2], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]],
                      [[[0.5, 0.2], [0.2, 0.4]], [[0.3, 0.0], [0.0, 0.6]], [[0.4, -0.1], [-0.1, 0.3]]])
# chi-square quantile at p = 1e-3 with 2 degrees of freedom: -2 ln(1e-3)
CHI2_2 = -2 * math.log(1e-3)


def _mean_chi2(x, mean, cov):
    """N (xbar - mean)^T cov^{-1} (xbar - mean) ~ chi2_D when x are N draws of a law with that mean and cov."""
    d = x.mean(0) - torch.as_tensor(mean, dtype=x.dtype)
    return float(x.shape[0] * d @ torch.linalg.solve(torch.as_tensor(cov, dtype=x.dtype), d))


def _cov_ok(x, cov, z=4.5):
    """Every entry of the sample covariance within z standard errors, Var(S_ij) = (C_ii C_jj + C_ij^2) / N."""
    c = torch.as_tensor(cov, dtype=x.dtype)
    se = torch.sqrt((torch.outer(c.diagonal(), c.diagonal()) + c**2) / x.shape[0])
    return bool(((torch.cov(x.T) - c).abs() <= z * se).all()), (torch.cov(x.T) - c) / se


def _sample(score_fn, sde, n, steps=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sde.prior_sample((n, 2), generator=g, dtype=torch.float64)
    with torch.no_grad():
        return reverse_diffusion(score_fn, sde, x, steps=steps, generator=g).samples


# --- Bayes' rule with the exact noisy classifier ------------------------------------------------------
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 8.0)], ids=["vp", "ve"])
def test_bayes_conditional_score_is_the_component_score(sde):
    """grad log p_t(x) + grad log p_t(k | x) = grad log N(x; alpha mu_k, alpha^2 S_k + std^2 I), pointwise."""
    g = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = sde.eps + (1 - sde.eps) * torch.rand(64, generator=g, dtype=torch.float64)
    for k in range(3):
        fn = G.bayes_conditional_score(MIX.score_fn(sde), G.mixture_classifier(MIX, sde), k)
        comp = GaussianMixture.gaussian(MIX.means[k].numpy(), MIX.covs[k].numpy())
        exact = comp.score(x, sde.alpha(t), sde.std(t))
        assert torch.allclose(fn(x, t), exact, rtol=1e-9, atol=1e-9)


def test_classifier_guidance_w1_samples_the_component():
    sde, k, n = VPSDE(), 1, 2000
    fn = G.classifier_guidance(MIX.score_fn(sde), G.mixture_classifier(MIX, sde), k, w=1.0)
    x = _sample(fn, sde, n)
    assert _mean_chi2(x, MIX.means[k], MIX.covs[k]) < CHI2_2
    ok, z = _cov_ok(x, MIX.covs[k])
    assert ok, z
    assert (MIX.classify(x) == k).double().mean() > 0.99


# --- classifier-free guidance ---------------------------------------------------------------------------
def test_cfg_mean_shift_between_gaussians_is_exact():
    """With p(x) = N(m0, S), p(x | y) = N(m1, S), the guided score is the noised N(m0 + w (m1 - m0), S) at
    every t, so the samples have that mean (and covariance S) for every w, beyond 1 too."""
    sde, n = VPSDE(), 2000
    S = np.array([[0.6, 0.25], [0.25, 0.4]])
    m0, m1 = np.array([0.0, 0.0]), np.array([1.0, -0.5])
    uncond = GaussianMixture.gaussian(m0, S).score_fn(sde)
    cond = GaussianMixture.gaussian(m1, S).score_fn(sde)
    for w, seed in ((0.0, 1), (1.0, 2), (3.0, 3)):
        x = _sample(G.cfg_combination(uncond, cond, w), sde, n, seed=seed)
        assert _mean_chi2(x, m0 + w * (m1 - m0), S) < CHI2_2, w
        ok, z = _cov_ok(x, S)
        assert ok, (w, z)


def _tiny_conditional_model(n_classes=3):
    torch.manual_seed(0)
    return ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1, n_classes=n_classes), VPSDE()).double().eval()


def test_model_cfg_is_the_combination_of_its_two_scores():
    model = _tiny_conditional_model()
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 0.4, dtype=torch.float64)
    null = torch.full((8,), 3)
    uncond, cond = model(x, t, null), model(x, t, torch.full((8,), 2))
    for w in (0.0, 1.0, 2.5, -0.5):
        got = G.guided_score_fn(model, 2, w, train_config={"label_dropout": 0.1})(x, t)
        assert torch.allclose(got, uncond + w * (cond - uncond), atol=1e-12)
    # one label per example
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    got = G.guided_score_fn(model, y, 2.0, train_config={"label_dropout": 0.1})(x, t)
    assert torch.allclose(got, uncond + 2.0 * (model(x, t, y) - uncond), atol=1e-12)
    assert torch.equal(G.guided_score_fn(model)(x, t), uncond)


def test_guidance_errors():
    model = _tiny_conditional_model()
    with pytest.raises(ValueError, match="label 3 is out of range.*0..2"):
        G.guided_score_fn(model, 3, 2.0, train_config={"label_dropout": 0.1})
    with pytest.raises(ValueError, match="label -1 is out of range"):
        G.conditional_score_fn(model, -1)
    with pytest.raises(ValueError, match="label_dropout=0"):
        G.guided_score_fn(model, 1, 2.0, train_config={"label_dropout": 0.0})
    G.guided_score_fn(model, 1, 1.0, train_config={"label_dropout": 0.0})  # plain conditional: fine
    uncond_model = ScoreModel(build_net("mlp", dim=2, hidden=8, depth=1), VPSDE())
    with pytest.raises(ValueError, match="n_classes=0"):
        G.guided_score_fn(uncond_model, 1, 2.0)
    with pytest.raises(ValueError, match="unconditional"):
        G.guided_score_fn(uncond_model, 1, 1.0)
    with pytest.raises(ValueError, match="needs a label"):
        G.guided_score_fn(model, None, 2.0)
    with pytest.raises(ValueError, match="finite number"):
        G.guided_score_fn(model, 1, float("nan"))
    with pytest.raises(ValueError, match="integer"):
        G.check_labels(1.5, 3)
    fn = G.classifier_guidance(MIX.score_fn(VPSDE()), G.mixture_classifier(MIX, VPSDE()), 5)
    with pytest.raises(ValueError, match="classes 0..2"):
        fn(torch.zeros(2, 2, dtype=torch.float64), torch.full((2,), 0.5))


# --- a trained noise-conditional classifier ---------------------------------------------------------------
def test_trained_noisy_classifier_guides_to_its_class(tmp_path):
    """Trained on noised mixture draws, the classifier's cross-entropy approaches the exact noisy posterior's
    (the minimum), and guiding the exact unconditional score with it puts the samples in the asked class."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(0)
    x, lab = MIX.sample(20000, generator=g, return_labels=True)
    torch.manual_seed(0)
    clf = NoisyClassifier(build_classifier("mlp", dim=2, n_classes=3, hidden=64, depth=2), sde)
    hist = train_noisy_classifier(clf, x.float(), lab, steps=200, batch_size=256, lr=3e-3, seed=0, log_every=0)
    assert len(hist) == 200
    # cross-entropy on fresh noised draws against the exact posterior's (its conditional entropy)
    xv, yv = MIX.sample(4000, generator=g, return_labels=True)
    t = sde.eps + (1 - sde.eps) * torch.rand(4000, generator=g, dtype=torch.float64)
    xt = sde.perturb(xv, t, torch.randn(xv.shape, generator=g, dtype=torch.float64))
    with torch.no_grad():
        ce_model = torch.nn.functional.cross_entropy(clf(xt.float(), t.float()).double(), yv)
        ce_exact = torch.nn.functional.cross_entropy(G.mixture_classifier(MIX, sde)(xt, t), yv)
    assert float(ce_model - ce_exact) < 0.05, (float(ce_model), float(ce_exact))

    path = save_noisy_classifier(tmp_path / "clf.pt", clf, info={"steps": 200})
    clf2, norm, info = load_noisy_classifier(path)
    assert norm is None and info == {"steps": 200}
    score = G.classifier_guidance(MIX.score_fn(sde), clf2.log_prob_fn(), 2, w=2.0)
    xs = _sample(score, sde, 400, steps=200, seed=5)
    assert (MIX.classify(xs) == 2).double().mean() > 0.95


def test_unet_classes_come_from_the_label_table():
    """The U-Nets keep n_classes on their label embedding; guidance reads it there."""
    torch.manual_seed(0)
    net = build_net("unet", base_channels=8, channel_mults=[1, 1], num_res_blocks=1, attn_levels=[], mid_attn=False,
                    dropout=0.0, n_classes=10)
    model = ScoreModel(net, VESDE(0.01, 5.0))
    model = model.double()  # the batched pass [x, x] must equal two passes to round-off
    assert G.model_classes(model) == 10
    x, t = torch.randn(2, 1, 12, 12, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        got = G.guided_score_fn(model, 9, 3.0, train_config={"label_dropout": 0.1})(x, t)
        u, c = model(x, t, torch.full((2,), 10)), model(x, t, torch.full((2,), 9))
    assert float((c - u).abs().max()) > 1e-6  # the label matters
    assert torch.allclose(got, u + 3.0 * (c - u), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="label 10 is out of range"):
        G.guided_score_fn(model, 10, 3.0, train_config={"label_dropout": 0.1})
