"""Gradient accumulation (train.grad_accum), the per-device micro-batch cap (train.micro_batch) and
TensorBoard logging (train.tensorboard)."""
import json
import os

import pytest
import torch

from scoregen.models import ScoreModel
from scoregen.models.nets import build_net
from scoregen.process.distributions import seed_dataset
from scoregen.process.sde import VPSDE
from scoregen.training.trainer import TENSORBOARD_TAGS, TrainConfig, Trainer, micro_batches, train

DATA = torch.from_numpy(seed_dataset(120))
LABELS = torch.arange(120) // 40


def tiny_model(seed=0, n_classes=0):
    torch.manual_seed(seed)
    return ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=8, n_classes=n_classes), VPSDE())


def quiet(**kw):
    base = dict(steps=6, batch_size=32, lr=1e-2, warmup=2, ema_decay=0.9, progress=False, log_every=2,
                checkpoint_every=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("labels", [False, True])
def test_grad_accum_matches_one_batch(labels):
    """K=4 micro-batches take the same steps as K=1 on the whole batch: same data and noise, the
    gradient of the same mean (up to the order of float sums)."""
    extra = dict(labels=LABELS) if labels else {}
    kw = dict(label_dropout=0.3) if labels else {}
    nc = 3 if labels else 0
    one = train(tiny_model(0, nc), DATA, quiet(**kw), **extra)
    four = train(tiny_model(0, nc), DATA, quiet(grad_accum=4, **kw), **extra)
    assert one.step == four.step == 6
    for a, b in ((one.model, four.model), (one.ema, four.ema)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    assert len(four.loss_history) == 6
    torch.testing.assert_close(torch.tensor(four.loss_history), torch.tensor(one.loss_history), rtol=1e-5, atol=1e-6)
    assert one.generator.get_state().equal(four.generator.get_state())  # the same draws


def test_bad_grad_accum_is_refused():
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="grad_accum"):
            quiet(grad_accum=bad)
    with pytest.raises(ValueError, match=r"batch_size=30 .*grad_accum.*4"):
        Trainer(tiny_model(), DATA, quiet(batch_size=30, grad_accum=4))


def test_grad_accum_resumable_override():
    from scoregen.runs.recipe import RESUMABLE
    assert {"grad_accum", "micro_batch", "tensorboard"} <= RESUMABLE["train"]


def _fit_recording(cfg, run_dir=None, **extra):
    """Train, recording the batch size of every forward pass of the trained net and of the EMA net,
    and the gradient (all parameters, flattened) each Adam step is given."""
    trainer = Trainer(tiny_model(0, 3 if "labels" in extra else 0), DATA, cfg, run_dir, **extra)
    seen = {"model": [], "ema": [], "grad": []}
    for key in ("model", "ema"):
        getattr(trainer, key).net.register_forward_hook(
            lambda mod, args, out, key=key: seen[key].append(args[0].shape[0]))
    adam_step = trainer.optimizer.step

    def recording_step(*args, **kw):
        seen["grad"].append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]))
        return adam_step(*args, **kw)

    trainer.optimizer.step = recording_step
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer, seen


@pytest.mark.parametrize("labels", [False, True])
def test_micro_batch_that_does_not_divide_the_batch_matches_one_batch(tmp_path, labels):
    """batch 10, micro_batch 4: K = ceil(10/4) = 3 pieces of 4, 3, 3, each mean weighted by its
    share n_i / n, so every Adam step gets the gradient of the whole batch's mean (float tolerance);
    the same losses and held-out losses, and no forward pass (training or held-out measurement)
    over more than 4 examples.

    The weights are compared at atol 1e-5 = lr / 1000: Adam's first steps move a weight by about
    lr * g / (|g| + 1e-8), which turns a rounding difference in a gradient of size 1e-7 into 1e-6."""
    extra = dict(labels=LABELS) if labels else {}
    kw = dict(batch_size=10, validation=0.2, validate_every=3, **(dict(label_dropout=0.3) if labels else {}))
    one, seen_one = _fit_recording(quiet(**kw), tmp_path / "one", **extra)
    cap, seen = _fit_recording(quiet(micro_batch=4, **kw), tmp_path / "cap", **extra)
    assert cap.micro_batches == [4, 3, 3] and one.micro_batches == [10]
    assert seen["model"] == [4, 3, 3] * 6 and seen_one["model"] == [10] * 6
    assert max(seen["ema"]) == 4 and sum(seen["ema"]) == sum(seen_one["ema"])  # the same held-out examples
    assert len(seen["grad"]) == len(seen_one["grad"]) == 6
    for step, (g, g_one) in enumerate(zip(seen["grad"], seen_one["grad"])):
        torch.testing.assert_close(g, g_one, rtol=1e-5, atol=1e-7, msg=f"gradient of step {step + 1}")
    for a, b in ((one.model, cap.model), (one.ema, cap.ema)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(torch.tensor(cap.loss_history), torch.tensor(one.loss_history), rtol=1e-5, atol=1e-6)
    assert one.generator.get_state().equal(cap.generator.get_state())
    records = [json.loads(ln) for ln in (tmp_path / "cap" / "metrics.jsonl").read_text().splitlines()]
    assert [r["micro_batches"] for r in records if "loss" in r] == [3, 3, 3]
    val = lambda d: [r["val_loss"] for r in (json.loads(ln) for ln in (tmp_path / d / "metrics.jsonl")  # noqa: E731
                                              .read_text().splitlines()) if "val_loss" in r]
    assert len(val("cap")) == 2
    torch.testing.assert_close(torch.tensor(val("cap")), torch.tensor(val("one")), rtol=1e-5, atol=1e-7)


def test_micro_batch_sizes_and_agreement_with_grad_accum():
    assert micro_batches(10, 1, 4) == [4, 3, 3]
    assert micro_batches(32, 1, 8) == [8] * 4 == micro_batches(32, 4, 8) == micro_batches(32, 4)
    assert micro_batches(7, 1, 100) == [7] and micro_batches(9, 1, 1) == [1] * 9
    assert micro_batches(33, 1, 8) == [7, 7, 7, 6, 6]  # ceil(33/8) = 5 pieces, none above 8
    with pytest.raises(ValueError, match=r"grad_accum=3 and micro_batch=8 disagree.*5 micro-batches.*grad_accum=5"):
        micro_batches(33, 3, 8)
    # an agreeing pair is accepted, and micro_batch lifts grad_accum's divisibility rule
    trainer = Trainer(tiny_model(), DATA, quiet(batch_size=30, grad_accum=4, micro_batch=8))
    assert trainer.micro_batches == [8, 8, 7, 7]
    with pytest.raises(ValueError, match=r"grad_accum=2 and micro_batch=8 disagree") as e:
        Trainer(tiny_model(), DATA, quiet(batch_size=30, grad_accum=2, micro_batch=8))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [0, -4, 2.5, "4", True, float("nan")])
def test_bad_micro_batch_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match=r"micro_batch .*got " + __import__("re").escape(repr(bad))) as e:
        quiet(micro_batch=bad)
    assert "\n" not in str(e.value)


def test_micro_batch_through_the_command_line(tmp_path):
    from scoregen.cli import main
    out = tmp_path / "run"
    assert main(["train", "--data", "seed", "--out", str(out), "--steps", "4", "--batch-size", "50", "--no-progress",
                 "train.micro_batch=16", "train.log_every=2", "model.hidden=16"]) == 0
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["micro_batches"] for r in records if "loss" in r] == [4, 4]  # ceil(50 / 16): 13, 13, 12, 12
    assert "micro_batch: 16" in (out / "config.yaml").read_text()


def test_bad_micro_batch_on_the_command_line_is_one_line(tmp_path, capsys):
    from scoregen.cli import main
    assert main(["train", "--data", "seed", "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress",
                 "train.micro_batch=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "micro_batch" in err and "got 0" in err


def _tensorboard():
    if os.environ.get("CI") == "true":  # CI installs the test extra: tensorboard must be there
        import tensorboard  # noqa: F401
    else:
        pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    return EventAccumulator


def _scalars(run_dir):
    acc = _tensorboard()(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_match_metrics(tmp_path):
    _tensorboard()
    cfg = quiet(steps=8, log_every=3, validation=0.2, validate_every=2, tensorboard=True)
    train(tiny_model(), DATA, cfg, tmp_path)
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    got = _scalars(tmp_path)
    assert set(got) == set(TENSORBOARD_TAGS)
    for tag in TENSORBOARD_TAGS:
        want = [(r["step"], r[tag]) for r in records if tag in r]
        assert [s for s, _ in got[tag]] == [s for s, _ in want], tag
        torch.testing.assert_close(torch.tensor([v for _, v in got[tag]]),  # stored as float32
                                   torch.tensor([v for _, v in want], dtype=torch.float32), msg=tag)
    assert [s for s, _ in got["loss"]] == [3, 6, 8] and [s for s, _ in got["val_loss"]] == [2, 4, 6, 8]


def test_tensorboard_resume_drops_events_past_the_checkpoint(tmp_path):
    """A run stopped after its step-4 checkpoint had logged steps 5 and 6; resumed, TensorBoard (like
    metrics.jsonl) shows each step once, the new run's values after the checkpoint."""
    _tensorboard()

    def crash(trainer, step):
        raise KeyboardInterrupt

    cfg = dict(log_every=1, checkpoint_every=4, tensorboard=True)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(), DATA, quiet(steps=8, callback_every=6, **cfg), tmp_path, callback=crash)
    assert [s for s, _ in _scalars(tmp_path)["loss"]] == list(range(1, 7))
    train(tiny_model(), DATA, quiet(steps=8, **cfg), tmp_path)
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    got = _scalars(tmp_path)["loss"]
    assert [s for s, _ in got] == [r["step"] for r in records] == list(range(1, 9))
    torch.testing.assert_close(torch.tensor([v for _, v in got]),
                               torch.tensor([r["loss"] for r in records], dtype=torch.float32))


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(ImportError, match="pip install tensorboard") as e:
        Trainer(tiny_model(), DATA, quiet(tensorboard=True), tmp_path)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="run_dir"):
        Trainer(tiny_model(), DATA, quiet(tensorboard=True))  # no run_dir to write into


def test_cli_train_sends_scalars_and_sample_pictures_to_tensorboard(tmp_path):
    from scoregen.cli import main
    acc_cls = _tensorboard()
    out = tmp_path / "run"
    assert main(["train", "--data", "seed", "--out", str(out), "--steps", "10", "--sample-every", "5",
                 "--no-progress", "train.tensorboard=true", "train.grad_accum=2", "train.log_every=5",
                 "model.hidden=16"]) == 0
    acc = acc_cls(str(out / "tensorboard"))
    acc.Reload()
    assert {"loss", "lr", "grad_norm", "examples_per_s"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Images("samples")] == [5, 10]
