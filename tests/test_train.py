"""The trainer: exact resume, run folders, normalization, and that training learns the score."""
import json
import math

import numpy as np
import pytest
import torch

from scoregen.models import ScoreModel
from scoregen.models.nets import build_net
from scoregen.process.distributions import GaussianMixture, seed_dataset, seed_mixture
from scoregen.process.sde import VPSDE, make_sde
from scoregen.training.trainer import Normalizer, TrainConfig, Trainer, load_run, train


def tiny_model(seed=0, sde=None, n_classes=0):
    torch.manual_seed(seed)
    net = build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=8, n_classes=n_classes)
    return ScoreModel(net, sde or VPSDE())


def quiet(**kw):
    base = dict(batch_size=32, lr=1e-2, warmup=3, ema_decay=0.9, progress=False, log_every=2, checkpoint_every=0)
    return TrainConfig(**{**base, **kw})


DATA = torch.from_numpy(seed_dataset(120))
LABELS = torch.arange(120) // 40


@pytest.mark.parametrize("setting", ["sde-labels", "ncsn"])
def test_resume_is_bit_identical(tmp_path, setting):
    if setting == "ncsn":
        sde, kw, extra = make_sde("ladder", sigma_max=5.0, sigma_min=0.05, L=5), dict(loss="ncsn"), {}
        n_classes = 0
    else:
        sde, kw = VPSDE(), dict(loss="sde", loss_options={"importance_sampling": True, "weighting": "likelihood"},
                                label_dropout=0.3)
        extra, n_classes = {"labels": LABELS}, 3
    k = 6
    straight = train(tiny_model(0, sde, n_classes), DATA, quiet(steps=2 * k, **kw), tmp_path / "a", **extra)
    train(tiny_model(0, sde, n_classes), DATA, quiet(steps=k, **kw), tmp_path / "b", **extra)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # a log line the stopped run wrote past its checkpoint
        f.write(json.dumps({"step": k + 1, "loss": 0.0}) + "\n")
    # a different initialisation: everything must come from the checkpoint
    resumed = train(tiny_model(1, sde, n_classes), DATA, quiet(steps=2 * k, **kw), tmp_path / "b", **extra)
    assert resumed.step == straight.step == 2 * k
    for a, b in ((straight.model, resumed.model), (straight.ema, resumed.ema)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert resumed.loss_history == straight.loss_history and len(resumed.loss_history) == 2 * k
    lines = lambda d: (tmp_path / d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    strip = lambda ls: [{k_: v for k_, v in json.loads(x).items() if k_ != "examples_per_s"} for x in ls]  # noqa: E731
    assert strip(lines("a")) == strip(lines("b"))


def test_run_folder_contents_and_load_run(tmp_path):
    calls = []
    cfg = quiet(steps=8, checkpoint_every=4, callback_every=4)
    trainer = train(tiny_model(), DATA, cfg, tmp_path, callback=lambda tr, step: calls.append(step))
    assert calls == [4, 8]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert {"loss", "lr", "grad_norm", "examples_per_s"} <= set(records[0])
    model, sde, normalizer, meta = load_run(tmp_path)
    assert meta["step"] == 8 and meta["train_config"]["steps"] == 8 and len(meta["loss_history"]) == 8
    assert sde.config() == trainer.model.sde.config() and not model.training
    for p, q in zip(model.state_dict().values(), trainer.ema.state_dict().values()):
        assert torch.equal(p, q)  # samplers get the EMA weights
    x = torch.randn(5, 2)
    torch.testing.assert_close(model.score_fn()(x, 0.5), trainer.score_fn()(x, 0.5))
    torch.testing.assert_close(normalizer.inverse(normalizer(DATA)), DATA)


def test_ema_averages_and_warmup():
    trainer = Trainer(tiny_model(), DATA, quiet(steps=1, ema_decay=0.5, warmup=4))
    assert [trainer.lr_at(s) for s in range(5)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.step = 100  # past the (1 + n) / (10 + n) ramp: the decay is 0.5
    trainer.train_step()
    for e, p0, p1 in zip(trainer.ema.parameters(), before, trainer.model.parameters()):
        torch.testing.assert_close(e, 0.5 * p0 + 0.5 * p1.detach())


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_lr_cools_down_to_zero_after_decay_start(decay):
    """warmup 2, decay from step 4 to steps = 12: u = (s - 4) / 8 on the analytic curve."""
    trainer = Trainer(tiny_model(), DATA, quiet(steps=12, lr=1.0, warmup=2, lr_decay=decay, decay_start=4))
    shape = (lambda u: 1 - u) if decay == "linear" else (lambda u: 0.5 * (1 + math.cos(math.pi * u)))
    expected = [0.5, 1.0, 1.0, 1.0] + [shape((s - 4) / 8) for s in range(4, 13)]
    assert [trainer.lr_at(s) for s in range(13)] == pytest.approx(expected, abs=1e-12)
    assert trainer.lr_at(12) == 0.0 and 0 < trainer.lr_at(11) < trainer.lr_at(5) < 1.0
    # decay_start before the warm-up ends: the decay waits for it
    early = Trainer(tiny_model(), DATA, quiet(steps=10, lr=1.0, warmup=5, lr_decay="linear", decay_start=0))
    assert early.lr_at(4) == 1.0 and early.lr_at(7) == pytest.approx(0.6)  # u = (7 - 5) / 5


def test_amp_runs_the_forward_in_bf16_and_keeps_fp32_weights():
    """amp = bf16 autocast on the CPU too: layers compute in bf16, parameters and Adam stay fp32, and
    the loss differs from fp32's only by bf16 rounding (8-bit mantissa: relative 2^-8 per rounding;
    the loss passes through a few roundings, so 2^-5 bounds it)."""
    losses = {}
    for amp in (False, True):
        trainer = Trainer(tiny_model(), DATA, quiet(steps=1, amp=amp, seed=3))
        dtypes = []
        first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        losses[amp] = float(trainer.train_step())
        assert set(dtypes) == {torch.bfloat16 if amp else torch.float32}
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizer.state.values())
    assert losses[True] == pytest.approx(losses[False], rel=2 ** -5)
    assert losses[True] != losses[False]


def test_lr_decay_is_checked():
    with pytest.raises(ValueError, match="lr_decay must be one of .*'step'"):
        quiet(lr_decay="step")
    with pytest.raises(ValueError, match="decay_start must be a non-negative integer"):
        quiet(decay_start=-1)


def test_normalizer_points_and_images():
    norm = Normalizer.fit(DATA)
    z = norm(DATA)
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert float(z.pow(2).mean()) == pytest.approx(1.0, rel=1e-5)
    imgs = torch.rand(10, 3, 4, 4) + torch.tensor([0.0, 1.0, 2.0])[:, None, None]
    n2 = Normalizer.fit(imgs)
    assert n2.mean.shape == (3, 1, 1)
    torch.testing.assert_close(n2.inverse(n2(imgs)), imgs)
    torch.testing.assert_close(Normalizer.from_state_dict(n2.state_dict())(imgs), n2(imgs))
    with pytest.raises(ValueError, match="scale"):
        Normalizer(0.0, 0.0)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="unconditional"):
        Trainer(tiny_model(), DATA, quiet(), labels=LABELS)
    with pytest.raises(ValueError, match=r"labels must be \(120,\)"):
        Trainer(tiny_model(n_classes=2), DATA, quiet(), labels=LABELS)
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"step": 3})
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="unknown loss"):
        Trainer(tiny_model(), DATA, quiet(loss="elbo"))
    train(tiny_model(), DATA, quiet(steps=2), tmp_path)
    other = ScoreModel(build_net("mlp", dim=2, hidden=8, depth=1, emb_dim=8), VPSDE())
    with pytest.raises(ValueError, match="another model"):
        Trainer(other, DATA, quiet(steps=4), tmp_path)


def _normalized_mixture(norm: Normalizer) -> GaussianMixture:
    """The seed mixture in the trainer's coordinates (x - m) / s."""
    mix, m, s = seed_mixture(), norm.mean.double(), norm.scale
    return GaussianMixture(mix.weights, (mix.means - m) / s, mix.covs / s**2)


def _relative_errors(score_fn, exact, sde, times, n=2000):
    g = torch.Generator().manual_seed(123)
    x0 = exact.sample(n, generator=g)
    errs = []
    for t in times:
        tt = torch.full((n,), t, dtype=torch.float64)
        xt = sde.perturb(x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64)).float()
        with torch.no_grad():
            a, b = score_fn(xt, tt.float()).double(), exact.score_fn(sde)(xt, tt.float()).double()
        errs.append(math.sqrt(float((a - b).pow(2).sum(1).mean() / b.pow(2).sum(1).mean())))
    return np.array(errs)


def test_training_learns_the_mixture_score():
    """A few hundred steps of continuous DSM on the seed data cut the relative L2 error of the EMA
    score against the exact noised-mixture score: 3x where the noise is small (std 0.3 of the data's
    spread), 10x and more at larger noise."""
    sde, times = VPSDE(), [0.1, 0.3, 0.6]
    torch.manual_seed(0)
    model = ScoreModel(build_net("mlp", dim=2), sde)
    before = _relative_errors(model.score_fn(), _normalized_mixture(Normalizer.fit(seed_dataset(3000))), sde, times)
    trainer = train(model, seed_dataset(3000), TrainConfig(steps=300, batch_size=256, ema_decay=0.99, progress=False))
    after = _relative_errors(trainer.score_fn(), _normalized_mixture(trainer.normalizer), sde, times)
    assert (before > 0.9).all()  # an untrained net knows nothing of the score
    assert (after < before / 3).all() and (after[1:] < before[1:] / 10).all(), (before, after)


def test_edm_run_round_trips_through_load_run(tmp_path):
    """A run of another parameterization (EDM's denoiser) is rebuilt as that class by load_run."""
    pre = pytest.importorskip("scoregen.models.edm")
    torch.manual_seed(0)
    model = pre.EDMModel(build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=8), VPSDE(), sigma_data=1.0)
    trainer = train(model, DATA, quiet(steps=4, loss="edm", loss_options={"sigma_data": 1.0}), tmp_path)
    loaded, _, _, meta = load_run(tmp_path)
    assert type(loaded) is pre.EDMModel and meta["step"] == 4
    x = torch.randn(5, 2)
    torch.testing.assert_close(loaded(x, 0.3), trainer.ema(x, 0.3))
