"""The point-data generalisation suite: the defaults on every member of `scoregen.suite`, beside two peers.

For each member, with the `points` preset's defaults only (the training set is written to a .npy
file and trained through the same path a user's file takes):

- ED/floor: energy distance of 2000 samples (the preset's sampler) against a fixed reference of
  10000 exact draws, divided by the noise floor's mean (fresh exact samples of 2000 against the same
  reference size). `data/floor` is the same ratio for the N training points themselves: what a
  perfect copy of the training set would score, the bound that N puts on any estimator;
- shares: the largest |share - weight| over a mixture's components, in points (percent);
- NLL gap: the paired mean of (model NLL - true NLL) per dimension on 2000 fresh exact points, in
  nats, with its standard error (the points' own randomness cancels in the difference);
- the peers on the same training points: scikit-learn's Gaussian KDE (coordinates standardised,
  bandwidth by 5-fold cross-validation over a log grid) and GaussianMixture (full covariances,
  the true number of components for mixtures, BIC over 1..10 otherwise; coordinates standardised);
  their NLL gaps and their samples' ED/floor are printed beside ours;
- wall time of our training and of our sampling + likelihood.

    python benchmarks/points_suite.py [--members a,b,...] [--threads 2] [--json out.json] [--no-peers] [KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scoregen.runs import config as C
from scoregen.evaluation.harness import points_nll
from scoregen.evaluation.metrics import component_shares, energy_distance, noise_floor
from scoregen.runs.recipe import sample_run, train_run
from scoregen.data.suite import SUITE
from scoregen.training.trainer import load_run

N_SAMPLES, N_REF, N_NLL = 2000, 10000, 2000
REF_SEED, NLL_SEED = 10_000, 20_000


def model_nll(run_dir, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """-log p_X(x) in nats under a run (evaluation.harness.points_nll: the normalizer's Jacobian included)."""
    model, sde, normalizer, _ = load_run(run_dir)
    nll, _ = points_nll(model.score_fn(), sde, torch.as_tensor(x, dtype=torch.float32), normalizer,
                        batch_size=batch_size)
    return nll.double().numpy()


class _Standardised:
    """z = (x - mean) / std per coordinate (std 1 where a column is constant); log|dz/dx| = -sum log std."""

    def __init__(self, x):
        self.mean, self.std = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
        self.log_jac = -float(np.log(self.std).sum())

    def __call__(self, x):
        return (x - self.mean) / self.std

    def inverse(self, z):
        return z * self.std + self.mean


def kde_peer(train: np.ndarray, seed: int = 0):
    """scikit-learn KernelDensity on standardised coordinates, bandwidth by 5-fold CV: (nll_fn, sampler)."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity

    st = _Standardised(train)
    z = st(train)
    scott = len(z) ** (-1.0 / (z.shape[1] + 4))
    grid = {"bandwidth": scott * np.logspace(-1.3, 0.5, 16)}
    cv = GridSearchCV(KernelDensity(kernel="gaussian"), grid, cv=5).fit(z)
    kde = cv.best_estimator_
    return (lambda x: -(kde.score_samples(st(x)) + st.log_jac),
            lambda n: st.inverse(kde.sample(n, random_state=seed)), {"bandwidth": float(kde.bandwidth)})


def gmm_peer(train: np.ndarray, n_components: int | None, seed: int = 0):
    """scikit-learn GaussianMixture (full covariances) with K given, else chosen by BIC over 1..10."""
    from sklearn.mixture import GaussianMixture as SKGMM

    st = _Standardised(train)
    z = st(train)
    ks = [n_components] if n_components else range(1, 11)
    fits = [SKGMM(k, covariance_type="full", n_init=3, random_state=seed).fit(z) for k in ks]
    gmm = min(fits, key=lambda g: g.bic(z))
    return (lambda x: -(gmm.score_samples(st(x)) + st.log_jac),
            lambda n: st.inverse(gmm.sample(n)[0]), {"components": int(gmm.n_components)})


def _gap(nll_model, nll_true, dim):
    d = (nll_model - nll_true) / dim
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def evaluate_member(name, overrides, work: Path, peers: bool = True) -> dict:
    m = SUITE[name]
    train = m.train_data()
    path = work / f"{name}.npy"
    np.save(path, train.astype(np.float32))
    cfg = C.load_config("points", [f"data.name={path}"] + list(overrides))
    run_dir = work / f"run-{name}"
    t0 = time.perf_counter()
    train_run(cfg, run_dir, resume=False, progress=False)
    train_s = time.perf_counter() - t0

    ref = m.draw(N_REF, REF_SEED)
    floor = noise_floor(energy_distance, m.draw, N_SAMPLES, N_REF, repeats=10)["mean"]
    row = {"member": name, "dim": m.dim, "n_train": len(train), "train_seconds": train_s,
           "data_ed_ratio": energy_distance(train, ref) / floor, "floor": floor}
    t1 = time.perf_counter()
    res = sample_run(run_dir, n=N_SAMPLES, seed=1)
    x = res.samples.double().numpy()
    row["sample_seconds"] = time.perf_counter() - t1
    row["nfe"] = res.nfe
    row["ed_ratio"] = energy_distance(x, ref) / floor
    if m.mixture is not None:
        row["share_dev_pts"] = 100 * component_shares(x, m.mixture)["max_abs_deviation"]
    fresh = m.draw(N_NLL, NLL_SEED) if m.log_prob is not None else None
    if fresh is not None:
        true_nll = -m.log_prob(fresh)
        t2 = time.perf_counter()
        row["nll_gap"], row["nll_gap_se"] = _gap(model_nll(run_dir, fresh), true_nll, m.dim)
        row["nll_seconds"] = time.perf_counter() - t2
    if peers:
        for peer, fit in (("kde", lambda: kde_peer(train)),
                          ("gmm", lambda: gmm_peer(train, m.mixture.n_components if m.mixture else None))):
            nll_fn, sampler, info = fit()
            xs = sampler(N_SAMPLES)
            row[f"{peer}_ed_ratio"] = energy_distance(xs, ref) / floor
            row[f"{peer}_info"] = info
            if m.mixture is not None:
                row[f"{peer}_share_dev_pts"] = 100 * component_shares(xs, m.mixture)["max_abs_deviation"]
            if fresh is not None:
                row[f"{peer}_nll_gap"], row[f"{peer}_nll_gap_se"] = _gap(nll_fn(fresh), true_nll, m.dim)
    return row


def _fmt(v, spec="6.2f"):
    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "-".rjust(int(spec.split(".")[0]))


def print_row(r):
    gap = (f"{r['nll_gap']:+.3f}±{r['nll_gap_se']:.3f}" if "nll_gap" in r else "-").rjust(13)
    peer_gap = "  ".join((f"{r[p + '_nll_gap']:+.3f}" if p + "_nll_gap" in r else "-").rjust(7) for p in ("kde", "gmm"))
    peer_ed = "  ".join(_fmt(r.get(p + "_ed_ratio"), "5.2f") for p in ("kde", "gmm"))
    print(f"{r['member']:16s} {r['dim']:3d} {r['n_train']:6d} {_fmt(r['ed_ratio'], '6.2f')} {_fmt(r['data_ed_ratio'], '6.2f')}"
          f" {_fmt(r.get('share_dev_pts'), '5.1f')} {gap}  {peer_gap}   {peer_ed}  {r['train_seconds']:6.1f}"
          f" {r['sample_seconds'] + r.get('nll_seconds', 0):6.1f}", flush=True)


HEADER = (f"{'member':16s} {'D':>3s} {'N':>6s} {'ED/fl':>6s} {'data':>6s} {'share':>5s} {'NLL gap/dim':>13s}  "
          f"{'KDE gap':>7s}  {'GMM gap':>7s}   {'KDE ED':>5s}  {'GMM ED':>5s}  {'train':>6s} {'eval':>6s}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default=None, help=f"comma-separated subset of: {','.join(SUITE)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--work", default=None, help="folder for the data files and runs (default: a temporary one)")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every member (for experiments)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print("command: python benchmarks/points_suite.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    names = a.members.split(",") if a.members else list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        p.error(f"unknown members {unknown}; choose from {list(SUITE)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(HEADER)
        for name in names:
            rows.append(evaluate_member(name, a.overrides, work, peers=not a.no_peers))
            print_row(rows[-1])
    worst = max(rows, key=lambda r: r["ed_ratio"])
    print(f"\nworst ED/floor: {worst['member']} {worst['ed_ratio']:.2f}")
    gaps = [r for r in rows if "nll_gap" in r and r["n_train"] >= 2000]
    if gaps:
        w = max(gaps, key=lambda r: r["nll_gap"])
        print(f"worst NLL gap/dim (N >= 2000): {w['member']} {w['nll_gap']:+.4f} ± {w['nll_gap_se']:.4f}")
    if not a.no_peers:
        worse = [r["member"] for r in rows if "kde_nll_gap" in r and r["nll_gap"] > r["kde_nll_gap"]]
        print(f"members where the KDE's NLL gap is below ours: {worse or 'none'}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "overrides": a.overrides}, indent=2))


if __name__ == "__main__":
    main()
