"""ODE solvers on torch tensors: fixed-step Euler and Heun, and adaptive Dormand–Prince 5(4).

They integrate dx/dt = fn(x, t) where `t` is handed to `fn` as a per-example tensor of shape
(N,), so a probability-flow drift (`SDE.ode_drift`) plugs in directly. Integration may run
backwards (t1 < t0). The adaptive solver keeps the whole state on its device (no host round
trips per step beyond one scalar for step control), and shares one step size across the batch,
as scipy's `solve_ivp` on the flattened batch would.

References: Hairer, Norsett, Wanner, "Solving Ordinary Differential Equations I" (II.4 step-size
control and starting step, II.5 Dormand–Prince coefficients); Dormand & Prince (1980).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..util import time_vector

__all__ = ["ODEResult", "fixed_step", "dopri5"]


@dataclass
class ODEResult:
    x: torch.Tensor
    nfe: int
    trajectory: list | None = None
    times: list | None = None
    n_steps: int = 0
    n_rejected: int = 0


def fixed_step(fn, x, ts, method: str = "euler", record: bool = False, progress=None) -> ODEResult:
    """Integrate over the time grid `ts` (a 1-D sequence) with Euler or Heun's 2nd-order method.

    Euler:  x_{i+1} = x_i + h f(x_i, t_i)
    Heun:   x~ = x_i + h f(x_i, t_i);  x_{i+1} = x_i + h/2 [f(x_i, t_i) + f(x~, t_{i+1})]
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown fixed-step method {method!r}; choose 'euler' or 'heun'")
    ts = [float(t) for t in ts]
    traj, nfe = ([x.detach().cpu()] if record else None), 0
    it = range(len(ts) - 1)
    for i in progress(it) if progress else it:
        t, t_next = ts[i], ts[i + 1]
        h = t_next - t
        d = fn(x, time_vector(t, x))
        nfe += 1
        if method == "heun":
            x_pred = x + h * d
            d2 = fn(x_pred, time_vector(t_next, x))
            nfe += 1
            x = x + 0.5 * h * (d + d2)
        else:
            x = x + h * d
        if record:
            traj.append(x.detach().cpu())
    return ODEResult(x, nfe, traj, ts if record else None, n_steps=len(ts) - 1)


# Dormand–Prince 5(4) tableau (Hairer et al. Table II.5.2).
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]
_E = [b5 - b4 for b5, b4 in zip(_B5, _B4)]


def _rms(v: torch.Tensor) -> torch.Tensor:
    return v.pow(2).mean().sqrt()


def dopri5(fn, x, t0: float, t1: float, rtol: float = 1e-5, atol: float = 1e-5, h0: float | None = None,
           max_steps: int = 100_000, record: bool = False, progress=None) -> ODEResult:
    """Adaptive Dormand–Prince 5(4) with FSAL, from t0 to t1 (either direction).

    A step is accepted when the RMS of err / (atol + rtol max(|x|, |x_new|)) is at most 1; the next
    step is h * clip(0.9 err^(-1/5), 0.2, 10). The error is measured over the whole batch.
    """
    t0, t1 = float(t0), float(t1)
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    t = t0
    k1 = fn(x, time_vector(t, x))
    nfe = 1
    if h0 is None:  # Hairer's starting-step heuristic (II.4), one extra evaluation
        scale = atol + rtol * x.abs()
        d0, d1 = _rms(x / scale), _rms(k1 / scale)
        h = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else float(0.01 * d0 / d1)
        h = min(h, span)
        x1 = x + direction * h * k1
        k2 = fn(x1, time_vector(t + direction * h, x))
        nfe += 1
        d2 = float(_rms((k2 - k1) / scale)) / h
        h1 = max(1e-6, h * 1e-3) if max(float(d1), d2) <= 1e-15 else (0.01 / max(float(d1), d2)) ** (1 / 5)
        h = min(100 * h, h1, span)
    else:
        h = min(abs(h0), span)
    traj = [x.detach().cpu()] if record else None
    times = [t] if record else None
    n_steps = n_rej = 0
    bar = progress(total=span) if progress else None
    while direction * (t1 - t) > 1e-12 * max(1.0, span):
        if n_steps + n_rej >= max_steps:
            raise RuntimeError(f"dopri5: exceeded max_steps={max_steps} at t={t:.6g}; loosen rtol/atol")
        h = min(h, abs(t1 - t))
        hs = direction * h
        ks = [k1]
        for i in range(1, 7):
            xi = x + hs * sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ks.append(fn(xi, time_vector(t + _C[i] * hs, x)))
        nfe += 6
        x_new = xi  # stage 7 is evaluated at the 5th-order solution (FSAL)
        err = hs * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        en = float(_rms(err / scale))
        if en <= 1.0:
            t += hs
            x, k1 = x_new, ks[6]
            n_steps += 1
            if record:
                traj.append(x.detach().cpu())
                times.append(t)
            if bar is not None:
                bar.update(h)
        else:
            n_rej += 1
        factor = 10.0 if en == 0.0 else min(10.0, max(0.2, 0.9 * en ** (-0.2)))
        h = h * (min(1.0, factor) if en > 1.0 else factor)
    if bar is not None:
        bar.close()
    return ODEResult(x, nfe, traj, times, n_steps=n_steps, n_rejected=n_rej)
