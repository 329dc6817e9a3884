"""Guidance: conditional and guided scores as plain `score_fn(x, t)`, so every sampler works unchanged.

Bayes' rule on the noised marginals (Song et al. 2021, "Score-Based Generative Modeling through
SDEs", eq. 14) gives the conditional score

    grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x),

and the two guided scores of the literature weight the conditioning term by w:

    classifier guidance (Dhariwal & Nichol 2021, with a noise-conditional classifier p_phi(y | x, t)):
        s_w(x, t) = s(x, t) + w grad_x log p_phi(y | x, t);
    classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6):
        s_w(x, t) = s(x, t) + w [s(x, t, y) - s(x, t)].

Convention: w = 0 is the unconditional score, w = 1 the conditional one, w > 1 sharpens. Ho &
Salimans write (1 + w') s(x, t, y) - w' s(x, t): the same family with
w' = w - 1. With exact scores the guided score is the score of p_t(x)^(1 - w) p_t(x | y)^w; when
p(x) and p(x | y) are Gaussians of one covariance S, that family is the noised N(m + w (m_y - m), S)
at every t, so sampling it shifts the mean by exactly w (m_y - m) (tests/test_guidance.py).

The conditional and unconditional scores of classifier-free guidance come from one network trained
with label dropout: label n_classes is the "null" label (nets.unet.LabelEmbedding). A network
trained without dropout has never seen that label, so its "unconditional" score is untrained:
`guided_score_fn` refuses it (naming the run's label_dropout).
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

from ..models.score import ScoreModel, batch_time
from ..process.distributions import GaussianMixture
from ..process.sde import SDE
from ..util import ScoreFn

__all__ = ["guided_score_fn", "conditional_score_fn", "classifier_free_guidance", "cfg_combination", "classifier_guidance",
           "bayes_conditional_score", "mixture_classifier", "check_labels", "model_classes"]

#: a noise-conditional classifier: log_prob_fn(x, t) -> (N, K) class logits (or log-probabilities).
LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: class labels: one int for the whole batch, or N of them (a 1-D int tensor or a sequence of ints).
Labels = Union[int, Sequence[int], torch.Tensor]


def model_classes(model: ScoreModel) -> int:
    """The number of classes of a ScoreModel's network (0 for an unconditional one): `net.n_classes`
    (ScoreMLP) or the label table's (`net.label.n_classes`, the U-Nets)."""
    net = getattr(model, "net", None)
    n = getattr(net, "n_classes", None)
    if n is None:
        n = getattr(getattr(net, "label", None), "n_classes", 0)
    return int(n or 0)


def check_labels(y: Labels, n_classes: int, n: int | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """y (an int, or integers of shape (N,)) as an int64 tensor, each in [0, n_classes)."""
    if n_classes < 1:
        raise ValueError("labels were given, but the model is unconditional (trained with n_classes=0); "
                         "train a class-conditional run (model.n_classes > 0) to sample by label")
    t = torch.as_tensor(y, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() > 1:
        raise ValueError(f"a label must be an integer or a 1-D tensor of integers, got {y!r}")
    if t.numel() == 0:
        raise ValueError("no labels were given")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"label {bad} is out of range: this model knows classes 0..{n_classes - 1}")
    if n is not None and t.dim() == 1 and t.shape[0] != n:
        raise ValueError(f"{t.shape[0]} labels given for a batch of {n}")
    return t.long()


def _batch_labels(y: torch.Tensor, n: int) -> torch.Tensor:
    if y.dim() == 0:
        return y.expand(n)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels given for a batch of {n}")
    return y


def _check_weight(w: float) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w != w or abs(w) == float("inf"):
        raise ValueError(f"the guidance weight w must be a finite number (0: unconditional, 1: conditional), got {w!r}")
    return float(w)


def conditional_score_fn(model: ScoreModel, y: Labels) -> ScoreFn:
    """s(x, t, y) of a class-conditional ScoreModel, with the label checked against its classes."""
    labels = check_labels(y, model_classes(model))

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, _batch_labels(labels.to(x.device), x.shape[0]))

    return fn


def _check_dropout(model: ScoreModel, train_config: dict | None) -> None:
    """Refuse guidance (w != 1) with a network whose null label was never trained."""
    n_classes = model_classes(model)
    if n_classes < 1:
        raise ValueError("classifier-free guidance needs a class-conditional model, and this one was trained "
                         "with n_classes=0; train one with model.n_classes > 0 and train.label_dropout > 0")
    if train_config is not None:
        p = float(dict(train_config).get("label_dropout", 0.0) or 0.0)
        if p <= 0:
            raise ValueError("classifier-free guidance needs the unconditional score s(x, t), but this run was "
                             "trained with label_dropout=0, so its null label was never trained; retrain with "
                             "train.label_dropout > 0 (e.g. 0.1), or sample with w=1 (the plain conditional score)")


def cfg_combination(uncond_fn: ScoreFn, cond_fn: ScoreFn, w: float) -> ScoreFn:
    """s(x, t) + w [s(x, t, y) - s(x, t)] from two score functions (e.g. exact ones): uncond_fn = s(x, t),
    cond_fn = s(x, t, y). w = 0 and w = 1 call only the one they need."""
    w = _check_weight(w)
    if w == 0.0:
        return uncond_fn
    if w == 1.0:
        return cond_fn

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        u = uncond_fn(x, t)
        return u + w * (cond_fn(x, t) - u)

    return fn


def classifier_free_guidance(model: ScoreModel, y: Labels, w: float) -> ScoreFn:
    """s(x, t) + w [s(x, t, y) - s(x, t)] from one class-conditional ScoreModel.

    Both scores come from one forward pass over the doubled batch [x, x] with labels [y, null].
    w = 1 needs only the conditional pass, w = 0 only the unconditional one.
    """
    w = _check_weight(w)
    n_classes = model_classes(model)
    labels = check_labels(y, n_classes)
    if w == 1.0:
        return conditional_score_fn(model, labels)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        t = batch_time(t, x)
        null = torch.full((n,), n_classes, dtype=torch.long, device=x.device)
        if w == 0.0:
            return model(x, t, null)
        lab = _batch_labels(labels.to(x.device), n)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([lab, null]))
        cond, uncond = both[:n], both[n:]
        return uncond + w * (cond - uncond)

    return fn


def guided_score_fn(model: ScoreModel, y: Labels | None = None, w: float | None = 1.0, *,
                    train_config: dict | None = None) -> ScoreFn:
    """The score function a sampler needs for `scoregen sample RUN_DIR --label Y --guidance W`.

    model: a ScoreModel (e.g. from `train.load_run`); y: None (unconditional), an int or (N,) ints;
    w: the classifier-free guidance weight (0 unconditional, 1 or None conditional, > 1 sharper);
    train_config: the run's saved training options (`load_run(...)[3]["train_config"]`), used to
    refuse guidance (w != 1) on a network trained without label dropout. Labels out of range and
    labels for an unconditional model raise ValueError.
    """
    w = 1.0 if w is None else _check_weight(w)
    if y is None:
        if w != 1.0:
            raise ValueError(f"a guidance weight (w={w}) needs a label to guide toward; pass y")
        return model.score_fn()
    if w != 1.0:
        _check_dropout(model, train_config)
    return classifier_free_guidance(model, y, w)


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: LogProbFn, y: Labels, w: float = 1.0) -> ScoreFn:
    """s(x, t) + w grad_x log p(y | x, t) (Dhariwal & Nichol 2021, eq. (10)-(11) in score form).

    log_prob_fn(x, t) -> (N, K) class logits (or log-probabilities) of a noise-conditional
    classifier; it is log-softmaxed here, so unnormalized logits are fine. The gradient is taken
    with autograd, also inside a torch.no_grad() sampling loop.
    """
    w = _check_weight(w)
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dim() > 1:
        raise ValueError(f"a label must be an integer or a 1-D tensor of integers, got {y!r}")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = score_fn(x, t)
        if w == 0.0:
            return s
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = log_prob_fn(xg, t)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the classifier must return logits of shape ({x.shape[0]}, K), "
                                 f"got {tuple(logits.shape)}")
            k = logits.shape[1]
            lab = _batch_labels(y.to(x.device).long(), x.shape[0])
            if int(lab.min()) < 0 or int(lab.max()) >= k:
                raise ValueError(f"label out of range: the classifier knows classes 0..{k - 1}, "
                                 f"got {int(lab.min())}..{int(lab.max())}")
            logp = torch.log_softmax(logits, dim=1).gather(1, lab[:, None]).sum()
            (grad,) = torch.autograd.grad(logp, xg)
        return s + w * grad.to(s.dtype)

    return fn


def bayes_conditional_score(score_fn: ScoreFn, log_prob_fn: LogProbFn, y: Labels) -> ScoreFn:
    """grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x): classifier guidance at w = 1."""
    return classifier_guidance(score_fn, log_prob_fn, y, 1.0)


def mixture_classifier(mixture: GaussianMixture, sde: SDE) -> LogProbFn:
    """The exact noisy classifier of a Gaussian mixture whose components are the classes:

        log p_t(k | x) = log w_k + log N(x; alpha mu_k, alpha^2 S_k + std^2 I) - log p_t(x),

    returned as (x, t) -> (N, K) logits (differentiable in x), in x's dtype.
    """

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).cpu()
        lp = mixture.component_log_probs(x.double().cpu(), sde.alpha(t), sde.std(t))
        return lp.to(dtype=x.dtype, device=x.device)

    return fn
