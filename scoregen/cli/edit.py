"""`scoregen edit RUN_DIR --input ... --t0 T0`: SDEdit (Meng et al. 2022) image-to-image editing.

Each input is noised to time t0 of the run's SDE, x(t0) = alpha(t0) x + std(t0) z, and the reverse
process runs from there (`inverse.sdedit`): small t0 keeps the input's layout, t0 near T forgets it.
Writes panel.png (input | samples), outputs.npz and summary.json (the distance of the samples to
the inputs, and the classifier's agreement with the input's labels for a labelled data set).
"""
from __future__ import annotations

import time

import torch

from . import _steering as S

HELP = "SDEdit: noise inputs to time t0 and denoise them with a trained run (PNG panel + .npz)"

EXAMPLES = [
    "scoregen edit runs/mix --input points.npy --t0 0.3",
    "scoregen edit runs/mnist --input mnist --n 4 --t0 0.5",
]


def add_arguments(p) -> None:
    S.add_common_arguments(p, "edit")
    p.add_argument("--t0", type=float, required=True, help="noising time in (eps, T]: 0.3-0.6 edits, T resamples")
    p.add_argument("--corrector", choices=("langevin", "none"), default="none")
    p.add_argument("--snr", type=float, default=0.16)


def run(args) -> int:
    from ..steering.inverse import sdedit

    S.check_counts(args)
    run = S.Run(args.run_dir, args.device)
    x, labels, dataset = S.read_input(args.input, run, args)
    n, s = x.shape[0], args.samples
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = sdedit(run.model.score_fn(), run.sde, S.repeat(run.to_model(x), s), t0=args.t0, steps=args.steps,
                     corrector=args.corrector, snr=args.snr, generator=g, progress=S.show_progress(args))
    samples = run.to_data(res.samples).reshape((n, s) + run.shape)
    out = S.out_dir(args, "edit")
    if run.points:
        S.point_panel(x, samples, out / "panel.png",
                      titles={"input": f"input ({n} points)", "samples": f"{s} edits per input (t0={args.t0})"})
    else:
        x01, s01 = S.to_unit(x, run), S.to_unit(samples, run)
        S.image_panel([[x01[i], *s01[i]] for i in range(n)], out / "panel.png",
                      ["input", *[f"edit {k + 1}" for k in range(s)]], suptitle=f"SDEdit from t0={args.t0}")
    dist = (samples - x[:, None]).reshape(n * s, -1).pow(2).mean(1).sqrt()
    summary = {"command": "edit", "run_dir": str(args.run_dir), "input": str(args.input), "t0": args.t0, "n": n,
               "samples": s, "steps": args.steps, "nfe": res.nfe, "seconds": round(time.perf_counter() - t0, 2),
               "rms_change": float(dist.mean()), **S.summary_metrics(samples, x, labels, dataset, run),
               "panel": str(out / "panel.png")}
    S.write_outputs(out, {"input": x, "samples": samples, "labels": labels}, summary)
    return 0
