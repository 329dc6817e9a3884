"""A noise-conditional classifier p_phi(y | x(t), t) and its training on noised data, for classifier guidance.

Classifier guidance (Dhariwal & Nichol 2021, Sec. 4; Song et al. 2021, eq. 14) needs grad_x log p_t(y | x) at every
noise level, so the classifier is trained on x(t) = alpha(t) x(0) + std(t) z with t ~ U(eps, T):

    L(phi) = E_{(x0, y), t, z} [ -log p_phi(y | alpha(t) x0 + std(t) z, t) ],

whose minimizer is the exact noisy posterior p_t(y | x(t)). The network sees c = log std(t) and the
input scaled by 1 / sqrt(alpha^2 + std^2) (as `models.ScoreModel` does), so that VE inputs of size
sigma_max stay of unit size.

    clf = NoisyClassifier(build_classifier("mlp", dim=2, n_classes=3), sde)
    train_noisy_classifier(clf, x, labels, steps=2000)
    score = guidance.classifier_guidance(score_fn, clf.log_prob_fn(), y=1, w=2.0)

Data must be in the score model's coordinates (normalized: pass the run's `Normalizer`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.nets.classifier import build_classifier
from ..models.score import batch_time
from ..process.sde import SDE, broadcast_to, make_sde
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..util import check_positive_int

__all__ = ["NoisyClassifier", "train_noisy_classifier", "save_noisy_classifier", "load_noisy_classifier"]

KIND = "scoregen-noisy-classifier"


class NoisyClassifier(nn.Module):
    """logits(x, t) = net(x / sqrt(alpha(t)^2 + std(t)^2), log std(t)); `net` from `build_classifier`."""

    def __init__(self, net: nn.Module, sde: SDE):
        super().__init__()
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be a scoregen.process.sde.SDE, got {type(sde).__name__}")
        self.net, self.sde = net, sde

    @property
    def n_classes(self) -> int:
        return int(self.net.n_classes)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        # a sampler may run in another dtype than the weights (float64 exact scores); autograd follows the cast
        x = x.to(next(self.parameters()).dtype)
        t = batch_time(t, x)
        c_in = torch.rsqrt(self.sde.alpha(t) ** 2 + self.sde.std(t) ** 2)
        return self.net(broadcast_to(c_in, x) * x, torch.log(self.sde.std(t)))

    def log_prob_fn(self):
        """(x, t) -> (N, K) logits, for `guidance.classifier_guidance`."""
        return self.forward

    def config(self) -> dict:
        return {"net": dict(self.net.net_config), "sde": self.sde.config()}


def _as_tensor(a, dtype=None) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t.to(dtype) if dtype is not None else t


def train_noisy_classifier(classifier: NoisyClassifier, data, labels, *, steps: int = 2000, batch_size: int = 256,
                           lr: float = 2e-3, weight_decay: float = 0.0, seed: int = 0, normalizer=None,
                           log_every: int = 0, log=print) -> list[float]:
    """Minimize the cross-entropy on noised data (module docstring) with Adam and a cosine decay.

    data (N, ...) raw examples (mapped by `normalizer` when given), labels (N,) integers in
    [0, n_classes). One seeded CPU generator draws batches, times and noise. Returns the loss of
    every step.
    """
    x = _as_tensor(data, torch.float32)
    y = _as_tensor(labels)
    if y.dtype.is_floating_point or y.shape != (x.shape[0],):
        raise ValueError(f"labels must be {x.shape[0]} integers (one per example), got {y.dtype} {tuple(y.shape)}")
    k = classifier.n_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ValueError(f"labels must lie in 0..{k - 1} (the classifier's classes), got {int(y.min())}..{int(y.max())}")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        check_positive_int(v, name)
    if normalizer is not None:
        x = normalizer(x)
    y = y.long()
    dev = next(classifier.parameters()).device
    sde = classifier.sde
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    history = []
    classifier.train()
    for step in range(int(steps)):
        idx = torch.randint(0, x.shape[0], (int(batch_size),), generator=g)
        x0 = x[idx]
        t = sde.eps + (sde.T - sde.eps) * torch.rand(len(idx), generator=g, dtype=torch.float64)
        xt = sde.perturb(x0.double(), t, torch.randn(x0.shape, generator=g, dtype=torch.float64)).float()
        loss = F.cross_entropy(classifier(xt.to(dev), t.float().to(dev)), y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if log and log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps}: cross-entropy {np.mean(history[-log_every:]):.4f}")
    classifier.eval()
    return history


def save_noisy_classifier(path, classifier: NoisyClassifier, normalizer=None, info: dict | None = None):
    """Write the classifier (config, weights, the data normalizer, plain-data info) atomically."""
    state = {"kind": KIND, "config": classifier.config(),
             "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
             "normalizer": None if normalizer is None else normalizer.state_dict(), "info": dict(info or {})}
    return save_checkpoint(path, state)


def load_noisy_classifier(path, device="cpu"):
    """(NoisyClassifier in eval mode, Normalizer or None, info) from `save_noisy_classifier`'s file."""
    from ..training.trainer import Normalizer

    state = load_checkpoint(path, map_location=device)
    if state.get("kind") != KIND:
        raise ValueError(f"{path} is a scoregen checkpoint but not a noisy classifier (kind={state.get('kind')!r})")
    cfg = state["config"]
    clf = NoisyClassifier(build_classifier(cfg["net"]["name"], **cfg["net"]["kwargs"]), make_sde(**cfg["sde"]))
    clf.load_state_dict(state["state_dict"])
    norm = None if state["normalizer"] is None else Normalizer.from_state_dict(state["normalizer"])
    return clf.to(device).eval(), norm, state["info"]
