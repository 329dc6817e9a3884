"""Sampling builds no autograd graph: samples of a learned model carry none, and the memory autograd
holds for a backward pass (the tensors it saves) does not grow with the number of steps.

Guidance that needs gradients (DPS, PiGDM, classifier guidance) enables them itself inside its
score function; those samplers still return detached samples.
"""
import pytest
import torch

from scoregen.models import ScoreModel
from scoregen.models.nets import build_net
from scoregen.process.sde import VESDE, VPSDE
from scoregen.sampling import samplers
from scoregen.steering import inverse
from scoregen.steering.operators import MaskOperator


def _model(sde):
    torch.manual_seed(0)
    return ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=8), sde)  # train mode, requires_grad


class SavedBytes:
    """Bytes of the tensors autograd saves for backward while active (0 when nothing is recorded)."""

    def __init__(self):
        self.total = 0

    def pack(self, t):
        self.total += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


SAMPLERS = [("euler_maruyama", {"steps": 5}), ("reverse_diffusion", {"steps": 5}), ("ancestral", {"steps": 5}),
            ("pc", {"steps": 5}), ("ode", {"rtol": 1e-2, "atol": 1e-2}), ("ode_heun", {"steps": 3}),
            ("ode_euler", {"steps": 3}), ("annealed_langevin", {"levels": 3, "steps": 2}), ("langevin", {"steps": 3}),
            ("ddim", {"steps": 3}), ("dpmpp2m", {"steps": 3}), ("dpmpp3m", {"steps": 4}), ("dpmpp2s", {"steps": 3}),
            ("heun", {"steps": 3, "churn": 1.0})]


@pytest.mark.parametrize("name,opts", SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_learned_samples_carry_no_graph(name, opts):
    sde = VPSDE()
    model = _model(sde)
    assert any(p.requires_grad for p in model.parameters())
    with SavedBytes() as saved:
        res = samplers.sample(model.score_fn(), sde, (8, 2), name, generator=torch.Generator().manual_seed(0), **opts)
    assert not res.samples.requires_grad and res.samples.grad_fn is None, name
    assert saved.total == 0, f"{name}: autograd saved {saved.total} bytes for a backward pass"


def test_memory_held_for_backward_does_not_grow_with_steps():
    """1000 steps hold no more than 100 (nothing at all: no graph is recorded)."""
    sde = VESDE(0.01, 5.0)
    model = _model(sde)
    held = {}
    for steps in (100, 1000):
        with SavedBytes() as saved:
            res = samplers.sample(model.score_fn(), sde, (4, 2), "euler_maruyama", steps=steps,
                                  generator=torch.Generator().manual_seed(0))
        held[steps] = saved.total
        assert res.samples.grad_fn is None
    assert held[1000] <= held[100] == 0, held


def test_steering_samplers_detach_and_keep_their_gradients():
    """DPS and a DPS-score under a plain sampler need gradients inside: they enable them and return detached samples."""
    sde = VPSDE()
    model = _model(sde)
    op = MaskOperator(torch.tensor([1.0, 0.0]))
    y = torch.tensor([0.5, 0.0])
    res = inverse.dps(model.score_fn(), sde, sde.prior_sample((4, 2)), operator=op, y=op(y[None]), steps=4)
    assert res.samples.grad_fn is None and torch.isfinite(res.samples).all()
    sf = inverse.dps_score(model.score_fn(), sde, op, op(y[None]), sigma_y=0.1)
    res = samplers.sample(sf, sde, (4, 2), "reverse_diffusion", steps=4)
    assert res.samples.grad_fn is None and torch.isfinite(res.samples).all()
    res = inverse.impute(model.score_fn(), sde, sde.prior_sample((4, 2)), observed=y, mask=torch.tensor([1.0, 0.0]),
                         steps=4)
    assert res.samples.grad_fn is None
