"""Post-hoc EMA (training/posthoc_ema.py): the gamma <-> sigma_rel map, the power EMA's weights, the
least-squares reconstruction against EMAs tracked directly, the trainer's snapshots and exact resume,
and the one-line errors.

Tolerance of a reconstruction: with profile residual r = ||sum_k c_k w_k - w||_2 and coefficient sum S,
the error on a parameter x is sum_tau (sum_k c_k w_k - w)(tau) x_tau, at most r ||x_. - x_T||_2 + |S - 1| |x_T|
(Cauchy-Schwarz; both profiles' own weights sum to 1). Float64 trajectories add ~1e-12 of round-off;
float32 ones (the trainer's) a lerp round-off of eps32 |x| per step, at most T eps32 |x| over T steps,
times sum_k |c_k| + 1 for the combination and the direct track.
"""
import math

import numpy as np
import pytest
import torch

from scoregen.cli import main
from scoregen.models import ScoreModel
from scoregen.models.nets import build_net
from scoregen.process.distributions import seed_dataset
from scoregen.process.sde import VPSDE
from scoregen.training import posthoc_ema as P
from scoregen.training.checkpoint import load_checkpoint
from scoregen.training.trainer import TrainConfig, train

EPS32 = float(torch.finfo(torch.float32).eps)


class Vector(torch.nn.Module):
    """A bare parameter vector: the 'model' of a synthetic trajectory."""

    def __init__(self, d, dtype=torch.float64):
        super().__init__()
        self.x = torch.nn.Parameter(torch.zeros(d, dtype=dtype))


def run_trajectory(traj, folder, stored=(0.05, 0.10), every=20, direct=(), record=()):
    """Feed the rows of `traj` (T, D) as the weights after steps 1..T: stored tracks snapshotted into
    `folder` every `every` steps (and at T), direct tracks returned at T and at the steps in `record`."""
    m = Vector(traj.shape[1], traj.dtype)
    tracks, direct_ema = P.PowerEMA(m, stored), P.PowerEMA(m, direct) if direct else None
    seen = {}
    for t, row in enumerate(traj, start=1):
        m.x.data.copy_(row)
        tracks.update(m, t)
        if direct_ema is not None:
            direct_ema.update(m, t)
            if t in record:
                seen[t] = [tr["x"].clone() for tr in direct_ema.tracks]
        if t % every == 0 or t == len(traj):
            P.save_snapshot(folder, t, tracks)
    if direct_ema is not None:
        seen[len(traj)] = [tr["x"].clone() for tr in direct_ema.tracks]
    return seen


def bound(plan, traj, t, roundoff):
    """The module docstring's error bound per coordinate for the EMA at step t of trajectory (T, D)."""
    x = traj[:t].double()
    return (plan["residual"] * (x - x[-1]).norm(dim=0) + abs(plan["coefficient_sum"] - 1) * x[-1].abs()
            + roundoff)


def synthetic(T=600, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    walk = torch.cumsum(0.05 * torch.randn(T, d, generator=g, dtype=torch.float64), 0)
    tau = torch.arange(1, T + 1, dtype=torch.float64)[:, None]
    return walk + torch.sin(tau / 40 + torch.rand(d, generator=g, dtype=torch.float64)) + 2.0


# --- the map gamma <-> sigma_rel ----------------------------------------------------------------------------
def test_sigma_rel_and_gamma_both_ways_and_the_papers_values():
    assert P.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)  # the paper's pairs
    assert P.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for s in [1e-3, 0.01, 0.05, 0.08, 0.1, 0.2, 0.29, 0.3, P.SIGMA_REL_MAX]:
        assert P.gamma_to_sigma_rel(P.sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-12)
    for g in [-0.38, -0.2, 0.0, 1.0, 6.94, 16.97, 100.0, 1e4]:
        assert P.sigma_rel_to_gamma(P.gamma_to_sigma_rel(g)) == pytest.approx(g, rel=1e-9, abs=1e-9)
    grid = np.linspace(-0.99, 50, 20001)
    assert max(P.gamma_to_sigma_rel(g) for g in grid) <= P.SIGMA_REL_MAX  # the largest value there is


@pytest.mark.parametrize("sigma_rel", [0.03, 0.05, 0.1, 0.2, 0.3])
def test_sigma_rel_is_the_relative_std_of_the_weights(sigma_rel):
    # w(tau) is the continuous profile integrated over (tau-1, tau]: tau = ceil(U), U ~ the continuous
    # profile, so sd(tau) = sd(U + delta) with delta in [0, 1): |sd(tau) - sd(U)| <= sd(delta) <= 1/2
    T = 1000
    w = P.power_weights(P.sigma_rel_to_gamma(sigma_rel), T)
    tau = np.arange(1, T + 1)
    mean = (w * tau).sum()
    assert w.sum() == pytest.approx(1, abs=1e-12)
    assert abs(math.sqrt((w * (tau - mean) ** 2).sum()) / T - sigma_rel) <= 0.5 / T


def test_the_recursion_has_the_power_weights(tmp_path):
    # a one-hot trajectory (weights after step tau = e_tau): the EMA at step t is its weight vector itself
    T = 300
    seen = run_trajectory(torch.eye(T, dtype=torch.float64), tmp_path, direct=(0.08, 0.25), record=(120,))
    for t in (120, T):
        for s, got in zip((0.08, 0.25), seen[t]):
            np.testing.assert_allclose(got.numpy(), P.power_weights(P.sigma_rel_to_gamma(s), t, T), atol=1e-13)


# --- the reconstruction ---------------------------------------------------------------------------------------
def test_inner_products_are_those_of_the_weight_vectors():
    prof = [(P.sigma_rel_to_gamma(s), t) for s in (0.05, 0.1) for t in (1, 7, 50, 333, 400)] + [(2.0, 400)]
    w = np.stack([P.power_weights(g, t, 400) for g, t in prof])
    np.testing.assert_allclose(P.profile_products(prof), w @ w.T, rtol=1e-10, atol=1e-300)


def test_reported_residual_is_the_profiles_distance(tmp_path):
    # one-hot again: the reconstruction *is* the combined profile sum_k c_k w_k
    T = 400
    run_trajectory(torch.eye(T, dtype=torch.float64), tmp_path)
    for s, step in [(0.08, None), (0.15, 250), (0.03, None)]:
        plan = P.combination(tmp_path, s, step)
        got = P.reconstruct(tmp_path, s, step, plan=plan)["x"].numpy()
        target = P.power_weights(P.sigma_rel_to_gamma(s), plan["step"], T)
        assert np.linalg.norm(got - target) == pytest.approx(plan["residual"], rel=1e-4, abs=1e-9)
        assert got.sum() == pytest.approx(plan["coefficient_sum"], abs=1e-12)


def test_a_fit_that_misses_its_profile_is_refused(tmp_path):
    # tracks 0.05 and 0.10 cannot make a profile as flat as 0.3's (gamma < 0 weighs the first steps most):
    # check_fit refuses exactly the plans whose relative residual exceeds the limit, naming it
    run_trajectory(torch.eye(400, dtype=torch.float64), tmp_path)
    near, far = P.combination(tmp_path, 0.08), P.combination(tmp_path, 0.3)
    assert near["relative_residual"] < P.MAX_RELATIVE_RESIDUAL < far["relative_residual"]
    assert P.check_fit(near) is near
    with pytest.raises(ValueError, match=rf"sigma_rel=0.3 at step 400 cannot be rebuilt .* misses its weight "
                                         rf"profile by {far['relative_residual']:.3g} \(relative L2, limit 0.1\)"):
        P.check_fit(far)
    assert P.check_fit(far, limit=far["relative_residual"]) is far


def test_reconstruction_matches_emas_tracked_directly(tmp_path):
    traj = synthetic()
    T = len(traj)
    seen = run_trajectory(traj, tmp_path, every=10, direct=(0.08, 0.15), record=(300,))
    for t in (300, T):
        nearest = load_checkpoint(tmp_path / P.SNAPSHOT_DIR / f"ema-{t:09d}.pt")["tracks"][1]["x"]  # sigma_rel 0.10
        for i, s in enumerate((0.08, 0.15)):
            plan = P.combination(tmp_path, s, t)
            err = (P.reconstruct(tmp_path, s, t, plan=plan)["x"] - seen[t][i]).abs()
            tol = bound(plan, traj, t, 1e-12 * traj.abs().max())
            assert (err <= tol).all(), (s, t, float((err - tol).max()))
            # and the bound means something: under a twentieth of the gap to the nearest stored length
            assert float(tol.max()) < 0.05 * float((seen[t][i] - nearest).abs().max()), (s, t)


def test_a_stored_length_at_a_snapshot_step_gives_that_snapshot(tmp_path):
    traj = synthetic(T=400)
    run_trajectory(traj, tmp_path)
    for step, path in P.snapshots(tmp_path)[2::7]:
        stored = load_checkpoint(path)["tracks"]
        for j, s in enumerate((0.05, 0.10)):
            plan = P.combination(tmp_path, s, step)
            assert plan["relative_residual"] < 1e-6
            got = P.reconstruct(tmp_path, s, step, plan=plan)["x"]
            torch.testing.assert_close(got, stored[j]["x"], rtol=0, atol=1e-10 * float(traj.abs().max()))


# --- in the trainer -------------------------------------------------------------------------------------------
DATA = torch.from_numpy(seed_dataset(120))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=8), VPSDE())


def quiet(**kw):
    base = dict(batch_size=32, lr=1e-2, warmup=3, ema_decay=0.9, progress=False, log_every=4, checkpoint_every=0,
                posthoc_ema=[0.05, 0.1], posthoc_every=5)
    return TrainConfig(**{**base, **kw})


def test_trainer_snapshots_reconstruct_a_directly_tracked_ema(tmp_path):
    T, probe = 60, {}

    def track(trainer, step):  # the EMA of length 0.08 tracked directly, and the weights it averages
        if "ema" not in probe:
            probe["ema"], probe["traj"] = P.PowerEMA(trainer.model, [0.08]), []
        probe["ema"].update(trainer.model, step)
        probe["traj"].append(torch.cat([v.detach().flatten() for v in trainer.model.state_dict().values()]))

    trainer = train(tiny_model(), DATA, quiet(steps=T, callback_every=1), tmp_path, callback=track)
    assert [t for t, _ in P.snapshots(tmp_path)] == list(range(5, T + 1, 5))
    plan = P.combination(tmp_path, 0.08)
    assert plan["step"] == T
    got = torch.cat([v.flatten() for v in P.reconstruct(tmp_path, 0.08, plan=plan).values()]).double()
    want = torch.cat([v.flatten() for v in probe["ema"].tracks[0].values()]).double()
    traj = torch.stack(probe["traj"])
    roundoff = (np.abs(plan["coefficients"]).sum() + 1) * T * EPS32 * traj.abs().max(0).values
    assert ((got - want).abs() <= bound(plan, traj, T, roundoff)).all()
    # the last snapshot holds the trainer's live tracks as they ended
    last = load_checkpoint(P.snapshots(tmp_path)[-1][1])["tracks"]
    for saved, live in zip(last, trainer.posthoc.tracks):
        assert all(torch.equal(saved[k], live[k]) for k in live)


def test_resume_with_posthoc_tracks_is_exact(tmp_path):
    k = 6
    straight = train(tiny_model(), DATA, quiet(steps=2 * k, posthoc_every=4), tmp_path / "a")
    train(tiny_model(), DATA, quiet(steps=k, posthoc_every=4), tmp_path / "b")
    stale = tmp_path / "b" / P.SNAPSHOT_DIR / "ema-000000010.pt"  # written past the checkpoint by a stopped run
    stale.write_bytes((tmp_path / "b" / P.SNAPSHOT_DIR / "ema-000000004.pt").read_bytes())
    resumed = train(tiny_model(1), DATA, quiet(steps=2 * k, posthoc_every=4), tmp_path / "b")
    for a, b in zip(straight.posthoc.tracks, resumed.posthoc.tracks):
        assert all(torch.equal(a[n], b[n]) for n in a)
    steps_b = [t for t, _ in P.snapshots(tmp_path / "b")]
    assert steps_b == [4, 6, 8, 12]  # the stale step-10 file is gone; 6 is where the first part ended
    for t, path in P.snapshots(tmp_path / "a"):  # 4, 8, 12
        a, b = load_checkpoint(path), load_checkpoint(tmp_path / "b" / P.SNAPSHOT_DIR / path.name)
        assert all(torch.equal(x[n], y[n]) for x, y in zip(a["tracks"], b["tracks"]) for n in x), t


def test_tracks_cannot_change_on_resume(tmp_path):
    train(tiny_model(), DATA, quiet(steps=4, posthoc_ema=[]), tmp_path / "plain")
    with pytest.raises(ValueError, match=r"trained 4 steps without post-hoc EMA tracks.*cannot be added"):
        train(tiny_model(), DATA, quiet(steps=8), tmp_path / "plain")
    train(tiny_model(), DATA, quiet(steps=4), tmp_path / "tracked")
    with pytest.raises(ValueError, match=r"sigma_rels \[0.05, 0.1\], not \[0.2\]"):
        train(tiny_model(), DATA, quiet(steps=8, posthoc_ema=[0.2]), tmp_path / "tracked")
    with pytest.raises(ValueError, match=r"resume it with posthoc_ema=\[0.05, 0.1\]"):
        train(tiny_model(), DATA, quiet(steps=8, posthoc_ema=[]), tmp_path / "tracked")


# --- errors -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -0.1, 0.31, 1.0, float("nan"), "a"])
def test_bad_sigma_rels_are_named(bad, tmp_path):
    with pytest.raises(ValueError, match=r"posthoc_ema entry must be a number in \(0, 0.300283\].*got " + repr(bad)[:3]):
        TrainConfig(posthoc_ema=[0.05, bad])
    with pytest.raises(ValueError, match=r"sigma_rel must be a number in \(0, 0.300283\].*got " + repr(bad)[:3]):
        P.sigma_rel_to_gamma(bad)


def test_other_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"posthoc_ema lists a sigma_rel twice: \[0.05, 0.05\]"):
        TrainConfig(posthoc_ema=[0.05, 0.05])
    with pytest.raises(ValueError, match=r"posthoc_ema must be a list.*got 0.05"):
        TrainConfig(posthoc_ema=0.05)
    with pytest.raises(ValueError, match=r"posthoc_every must be a non-negative integer >= 1, got 0"):
        TrainConfig(posthoc_every=0)
    train(tiny_model(), DATA, quiet(steps=4, posthoc_ema=[]), tmp_path / "plain")
    with pytest.raises(ValueError, match=r"holds no post-hoc EMA snapshots .*train.posthoc_ema"):
        P.reconstruct(tmp_path / "plain", 0.08)
    train(tiny_model(), DATA, quiet(steps=10), tmp_path / "run")
    with pytest.raises(ValueError, match=r"sigma_rel must be a number in \(0, 0.300283\].*got 0.4"):
        P.reconstruct(tmp_path / "run", 0.4)
    with pytest.raises(ValueError, match=r"step 3 lies outside the post-hoc EMA snapshots .*steps 5..10"):
        P.reconstruct(tmp_path / "run", 0.08, step=3)


def test_command_line(tmp_path, capsys):
    run = str(tmp_path / "run")
    tiny = ["model.hidden=16", "model.depth=1", "model.emb_dim=8", "--no-progress"]
    assert main(["train", "--data", "seed", "--out", run, "--steps", "30", "train.posthoc_ema=[0.05,0.1]",
                 "train.posthoc_every=10", *tiny]) == 0
    capsys.readouterr()
    out = str(tmp_path / "s.npy")
    assert main(["sample", run, "--n", "16", "--steps", "5", "--ema-sigma-rel", "0.08", "--out", out]) == 0
    assert '"posthoc_ema": {"sigma_rel": 0.08, "step": 30, "snapshots": 3' in capsys.readouterr().out
    for argv, msg in [(["--ema-sigma-rel", "0.4"], "got 0.4"), (["--ema-step", "20"], "without an EMA length"),
                      (["--ema-sigma-rel", "0.08", "--ema-step", "50"], "step 50 lies outside"),
                      # a length the tracks cannot reach is refused, not sampled from a profile that is no EMA
                      (["--ema-sigma-rel", "0.3"], "cannot be rebuilt from this run's tracks [0.05, 0.1]")]:
        assert main(["sample", run, "--n", "4", "--out", out, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    # the tracks are part of the run's recipe: a resumed run keeps them
    assert main(["train", "--data", "seed", "--out", run, "--steps", "40", "train.posthoc_ema=[0.2]", *tiny]) == 2
    assert "train.posthoc_ema" in capsys.readouterr().err
    assert main(["train", "--data", "seed", "--out", run, "--steps", "40", "train.posthoc_every=5", *tiny]) == 0
    assert [t for t, _ in P.snapshots(run)] == [10, 20, 30, 35, 40]
