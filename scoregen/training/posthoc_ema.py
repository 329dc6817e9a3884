"""Post-hoc EMA: keep a few power-function EMAs during training, choose the EMA length afterwards.

Karras, Aittala, Lehtinen, Hellsten, Aila & Laine (2024), "Analyzing and improving the training
dynamics of diffusion models" (EDM2), sec. 3 and app. C, written here from the paper's formulas.

Power-function EMA. After optimizer step t = 1, 2, ... (theta_t the weights after it)

    theta^_t = beta(t) theta^_{t-1} + (1 - beta(t)) theta_t,     beta(t) = (1 - 1/t)^(gamma + 1),

so beta(1) = 0 and, since prod_{s=tau+1..t} beta(s) = (tau/t)^(gamma+1), the weight of theta_tau is

    w_{gamma,t}(tau) = (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1),   1 <= tau <= t   (0 after t),

a discrete power profile that sums to 1 exactly: w(tau) is the integral over (tau-1, tau] of the continuous
profile p(u) = (gamma+1) u^gamma / t^(gamma+1) on [0, t].
Unlike a constant-decay EMA it forgets the random initialisation and its length grows with t.

EMA length. The relative standard deviation of that continuous profile (its std over time divided by t):

    sigma_rel = sqrt( (gamma + 1) / ((gamma + 2)^2 (gamma + 3)) ),

so gamma from sigma_rel is the largest real root of (gamma+2)^2 (gamma+3) = sigma_rel^-2 (gamma+1), i.e. of
gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0 with s = sigma_rel^-2 (sigma_rel 0.05 -> gamma 16.97,
0.10 -> 6.94). sigma_rel is largest, SIGMA_REL_MAX = 0.3003, at gamma = (sqrt(5) - 3)/2 (where
d log sigma_rel^2 / d gamma = 1/(gamma+1) - 2/(gamma+2) - 1/(gamma+3) = 0, i.e. gamma^2 + 3 gamma + 1 = 0);
the larger root is the branch from there to sigma_rel -> 0 (gamma -> infinity).

Reconstruction. Snapshots of the tracks (gamma_i) are stored at steps t_j. Snapshot k = (gamma_k, t_k) is
sum_tau w_k(tau) theta_tau, so a combination sum_k c_k snapshot_k has the profile sum_k c_k w_k. For a
target (gamma, T) the coefficients minimise || sum_k c_k w_k - w_{gamma,T} ||_2 over the steps, the
normal equations G c = b with G_kl = <w_k, w_l>, b_k = <w_k, w_{gamma,T}>. The inner products are taken
over the discrete steps, exactly as the recursion weights them: for profiles (g, t_a) and (h, t_b),

    <w_{g,t_a}, w_{h,t_b}> = C_gh(min(t_a, t_b)) / (t_a^(g+1) t_b^(h+1)),   C_gh(m) = sum_{tau<=m} d_g(tau) d_h(tau),

d_g(tau) = tau^(g+1) - (tau-1)^(g+1); each C_gh is one cumulative sum (in log space, so that tau^(g+1) cannot
overflow) shared by every pair of snapshots with those exponents. The reconstruction's error on any
parameter x is sum_tau (sum_k c_k w_k - w)(tau) x_tau; with r = || sum_k c_k w_k - w ||_2 (`residual`) and
sum_tau (sum_k c_k w_k - w) = sum_k c_k - 1 it is at most r ||x_. - x_T||_2 + |sum_k c_k - 1| |x_T|
(Cauchy-Schwarz), which is what the tests check against EMAs tracked directly.

Files: RUN_DIR/posthoc_ema/ema-<step>.pt, one per snapshot step, each a code-free checkpoint
(`checkpoint.save_checkpoint`, atomic) {"kind", "step", "sigma_rels", "gammas", "tracks": [state dict per
track]}; the running tracks themselves go into the run's checkpoint, so resuming stays exact.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from ..util import check_number
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["SIGMA_REL_MAX", "MAX_RELATIVE_RESIDUAL", "SNAPSHOT_DIR", "gamma_to_sigma_rel", "sigma_rel_to_gamma", "check_sigma_rel",
           "power_weights", "profile_products", "solve_combination", "PowerEMA", "save_snapshot", "snapshots",
           "trim_snapshots", "combination", "reconstruct"]

SNAPSHOT_DIR = "posthoc_ema"
SNAPSHOT_KIND = "scoregen-posthoc-ema"
_NAME = re.compile(r"^ema-(\d+)\.pt$")


def gamma_to_sigma_rel(gamma: float) -> float:
    """sqrt((gamma+1) / ((gamma+2)^2 (gamma+3))), the relative std of the power profile (gamma > -1)."""
    gamma = check_number(gamma, "gamma", lo=-1, lo_open=True, what=" (the power of a power-function EMA)")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


_GAMMA_PEAK = (math.sqrt(5) - 3) / 2
#: the largest sigma_rel a power profile has, at gamma = (sqrt(5) - 3) / 2 (module docstring)
SIGMA_REL_MAX = gamma_to_sigma_rel(_GAMMA_PEAK)


def check_sigma_rel(value, name: str = "sigma_rel") -> float:
    """`value` as a float in (0, SIGMA_REL_MAX], or a one-line ValueError naming it."""
    return check_number(value, name, lo=0, hi=SIGMA_REL_MAX, lo_open=True,
                        what=" (an EMA length relative to the training time; 0.05 and 0.10 are typical)")


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """gamma on the upper branch (gamma >= (sqrt(5) - 3)/2) of gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0,
    s = sigma_rel^-2: the root with the largest real part (at SIGMA_REL_MAX a double root, which the
    eigenvalue solver may return as a pair with a round-off imaginary part)."""
    s = check_sigma_rel(sigma_rel) ** -2
    gamma = max(float(np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max()), _GAMMA_PEAK)
    # one Newton step on f(g) = (g+2)^2 (g+3) - s (g+1) polishes the root (kept on the branch)
    f, df = (gamma + 2) ** 2 * (gamma + 3) - s * (gamma + 1), (gamma + 2) * (3 * gamma + 8) - s
    polished = gamma - f / df if df > 0 else gamma
    return polished if polished >= _GAMMA_PEAK else gamma


def power_weights(gamma: float, step: int, n_steps: int | None = None) -> np.ndarray:
    """w_{gamma,step}(tau) for tau = 1..n_steps (default step): the weight of the weights after optimizer
    step tau in the power EMA at `step` (zero after it); float64, summing to 1."""
    step = int(step)
    if step < 1:
        raise ValueError(f"a power EMA's step must be >= 1, got {step}")
    n = int(step if n_steps is None else n_steps)
    w = np.exp(_log_d(gamma, min(step, n)) - (gamma + 1) * math.log(step))
    return np.concatenate([w, np.zeros(max(n - step, 0))])


def _log_d(gamma: float, n: int) -> np.ndarray:
    """log d_gamma(tau) = log(tau^(g+1) - (tau-1)^(g+1)) = (g+1) log tau + log(1 - (1 - 1/tau)^(g+1)), tau = 1..n,
    computed with log1p/expm1 so that neither overflows nor cancels."""
    tau = np.arange(2, n + 1, dtype=np.float64)
    rest = (gamma + 1) * np.log(tau) + np.log(-np.expm1((gamma + 1) * np.log1p(-1.0 / tau)))
    return np.concatenate([[0.0], rest])[:n]


def profile_products(profiles) -> np.ndarray:
    """The Gram matrix <w_a, w_b> over the discrete steps of power profiles given as (gamma, step) pairs
    (the C_gh cumulative sums of the module docstring, one per pair of distinct gammas)."""
    gammas = np.array([float(g) for g, _ in profiles])
    steps = np.array([int(t) for _, t in profiles])
    if len(profiles) == 0 or steps.min() < 1:
        raise ValueError(f"profiles need steps >= 1, got {steps.tolist()}")
    n = int(steps.max())
    uniq, which = np.unique(gammas, return_inverse=True)
    log_d = [_log_d(g, n) for g in uniq]
    out = np.empty((len(profiles), len(profiles)))
    m = np.minimum.outer(steps, steps) - 1
    norm = (gammas + 1) * np.log(steps)
    for i in range(len(uniq)):
        for j in range(i, len(uniq)):
            log_c = np.logaddexp.accumulate(log_d[i] + log_d[j])
            rows, cols = np.ix_(which == i, which == j)
            block = np.exp(log_c[m[rows, cols]] - norm[rows] - norm[cols])
            out[rows, cols] = block
            out[cols.T, rows.T] = block.T
    return out


def solve_combination(snapshots, gamma: float, step: int) -> dict:
    """Least-squares coefficients of the snapshots ((gamma_k, step_k) pairs) whose profile best matches
    w_{gamma,step}: {"coefficients" (K,), "residual" || sum c_k w_k - w ||_2, "relative_residual" (over
    ||w||_2), "coefficient_sum"}."""
    g = profile_products([*snapshots, (gamma, step)])
    gram, b, norm2 = g[:-1, :-1], g[:-1, -1], g[-1, -1]
    c = np.linalg.lstsq(gram, b, rcond=None)[0]
    r2 = max(float(norm2 - 2 * c @ b + c @ gram @ c), 0.0)
    return {"coefficients": c, "residual": math.sqrt(r2), "relative_residual": math.sqrt(r2 / norm2),
            "coefficient_sum": float(c.sum())}


class PowerEMA:
    """Power-function EMAs of a module's state dict, one track per sigma_rel (module docstring).

    `update(model, step)` after optimizer step `step` (1-based): floating tensors move by
    theta^ <- beta theta^ + (1 - beta) theta with beta = (1 - 1/step)^(gamma+1); other tensors are copied.
    """

    def __init__(self, model: torch.nn.Module, sigma_rels):
        sigma_rels = [check_sigma_rel(s, "train.posthoc_ema entry") for s in sigma_rels]
        if not sigma_rels or len(set(sigma_rels)) != len(sigma_rels):
            raise ValueError(f"post-hoc EMA needs one or more distinct sigma_rels, got {sigma_rels}")
        self.sigma_rels = sigma_rels
        self.gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
        state = model.state_dict()
        self._floats = [k for k, v in state.items() if v.is_floating_point()]
        self._others = [k for k, v in state.items() if not v.is_floating_point()]
        self.tracks = [{k: v.detach().clone() for k, v in state.items()} for _ in sigma_rels]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        state = model.state_dict()
        new = [state[k] for k in self._floats]
        for gamma, track in zip(self.gammas, self.tracks):
            beta = (1.0 - 1.0 / step) ** (gamma + 1)
            torch._foreach_lerp_([track[k] for k in self._floats], new, 1.0 - beta)
            for k in self._others:
                track[k].copy_(state[k])

    def state_dict(self) -> dict:
        return {"sigma_rels": list(self.sigma_rels), "tracks": [dict(t) for t in self.tracks]}

    def load_state_dict(self, state: dict, where: str = "the checkpoint") -> None:
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise ValueError(f"{where} holds post-hoc EMA tracks for sigma_rels {list(state['sigma_rels'])}, not "
                             f"{self.sigma_rels}; the tracks average over the whole run, so they cannot change on "
                             "resume: use a new run folder")
        for track, saved in zip(self.tracks, state["tracks"]):
            for k, v in track.items():
                v.copy_(saved[k])


# --- snapshots in a run folder --------------------------------------------------------------------------
def save_snapshot(run_dir, step: int, ema: PowerEMA) -> Path:
    """Write RUN_DIR/posthoc_ema/ema-<step>.pt atomically: the tracks as they are after `step`."""
    path = Path(run_dir) / SNAPSHOT_DIR / f"ema-{int(step):09d}.pt"
    tracks = [{k: v.detach().cpu() for k, v in t.items()} for t in ema.tracks]
    return save_checkpoint(path, {"kind": SNAPSHOT_KIND, "step": int(step), "sigma_rels": list(ema.sigma_rels),
                                  "gammas": list(ema.gammas), "tracks": tracks})


def snapshots(run_dir) -> list[tuple[int, Path]]:
    """(step, file) of RUN_DIR's post-hoc EMA snapshots, by step."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("ema-*.pt") if (m := _NAME.match(p.name))] \
        if folder.is_dir() else []
    return sorted(found)


def trim_snapshots(run_dir, step: int) -> None:
    """Delete the snapshots after `step` (written by a run that stopped past its last checkpoint)."""
    for t, path in snapshots(run_dir):
        if t > step:
            path.unlink()


def _read_snapshot(path: Path, step: int) -> dict:
    snap = load_checkpoint(path)
    if snap.get("kind") != SNAPSHOT_KIND or snap.get("step") != step:
        raise ValueError(f"{path} is not the post-hoc EMA snapshot of step {step} "
                         f"(kind={snap.get('kind')!r}, step={snap.get('step')!r})")
    return snap


#: `check_fit` refuses a reconstruction whose profile misses the target's by more than this (relative L2).
#: On a 7500-step mnist-quick run with tracks 0.05 and 0.10 (30 snapshots each), lengths 0.02-0.2 fit
#: within 0.045 and gave FID 52.7-57.3 (the run's own EMA: 52.7); 0.3 missed by 0.57, its coefficients
#: summed to 0.88 and its FID was 219.5: no EMA of the run at all (`scoregen evaluate --ema-sigma-rel`).
MAX_RELATIVE_RESIDUAL = 0.1


def check_fit(plan: dict, limit: float = MAX_RELATIVE_RESIDUAL) -> dict:
    """The plan of `combination`, or a ValueError when its relative residual exceeds `limit`."""
    r = plan["relative_residual"]
    if not r <= limit:
        raise ValueError(f"the post-hoc EMA sigma_rel={plan['sigma_rel']} at step {plan['step']} cannot be rebuilt from "
                         f"this run's tracks {plan['snapshot_sigma_rels']} ({len(plan['files'])} snapshots): the fit "
                         f"misses its weight profile by {r:.3g} (relative L2, limit {limit}); choose a length nearer "
                         f"the tracked ones, or train with a track of about that length in train.posthoc_ema")
    return plan


def combination(run_dir, sigma_rel: float, step: int | None = None) -> dict:
    """The plan of `reconstruct`: {"sigma_rel", "gamma", "step", "files", "columns" [(file index, track)],
    "coefficients", "residual", "relative_residual", "coefficient_sum", "snapshot_sigma_rels"}, from the
    snapshots at or before `step` (default: the last snapshot's step)."""
    gamma = sigma_rel_to_gamma(sigma_rel)
    found = snapshots(run_dir)
    if not found:
        raise ValueError(f"{run_dir} holds no post-hoc EMA snapshots ({Path(run_dir) / SNAPSHOT_DIR} is empty or "
                         "missing): train with train.posthoc_ema=[0.05,0.1] to keep them")
    last = found[-1][0]
    step = last if step is None else int(step)
    if not found[0][0] <= step <= last:
        raise ValueError(f"step {step} lies outside the post-hoc EMA snapshots of {run_dir} (steps "
                         f"{found[0][0]}..{last})")
    found = [(t, p) for t, p in found if t <= step]
    head = _read_snapshot(found[-1][1], found[-1][0])
    gammas = [float(g) for g in head["gammas"]]
    columns = [(i, j) for i in range(len(found)) for j in range(len(gammas))]
    fit = solve_combination([(gammas[j], found[i][0]) for i, j in columns], gamma, step)
    return {"sigma_rel": float(sigma_rel), "gamma": gamma, "step": step, "files": found, "columns": columns,
            "snapshot_sigma_rels": [float(s) for s in head["sigma_rels"]], **fit}


def reconstruct(run_dir, sigma_rel: float, step: int | None = None, *, plan: dict | None = None) -> dict:
    """The state dict of the power EMA of length `sigma_rel` at `step` (default: the last snapshot), as the
    least-squares combination of RUN_DIR's snapshots (module docstring; `combination` gives the plan and
    its residual). Tensors equal in every snapshot (buffers, frozen features) are copied, not combined."""
    plan = plan or combination(run_dir, sigma_rel, step)
    coef = {col: c for col, c in zip(plan["columns"], plan["coefficients"])}
    acc, first, const, latest = {}, {}, {}, {}
    for i, (t, path) in enumerate(plan["files"]):
        snap = _read_snapshot(path, t)
        if [float(s) for s in snap["sigma_rels"]] != plan["snapshot_sigma_rels"]:
            raise ValueError(f"{path} tracks sigma_rels {snap['sigma_rels']}, the later snapshots "
                             f"{plan['snapshot_sigma_rels']}: the snapshots are of different runs")
        for j, track in enumerate(snap["tracks"]):
            for k, v in track.items():
                if k not in first:
                    first[k], const[k] = v, True
                const[k] = const[k] and torch.equal(v, first[k])
                latest[k] = v
                if v.is_floating_point():
                    acc[k] = acc.get(k, 0.0) + float(coef[(i, j)]) * v.double()
    return {k: first[k].clone() if const[k] else acc[k].to(v.dtype) if k in acc else latest[k].clone()
            for k, v in latest.items()}
