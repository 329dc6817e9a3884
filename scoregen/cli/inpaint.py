"""`scoregen inpaint RUN_DIR --input IMG_OR_NPY --mask MASK`: fill in the unknown part of inputs.

Predictor-corrector sampling with the known part replaced by the forward-noised observation at every
step, optionally with RePaint's resampling (`inverse.impute`). Masks: a file (.npy/.png, nonzero =
known), `box[:TOP,LEFT,HEIGHT,WIDTH]` (default: the bottom half unknown), `random[:KEEP]` (each pixel
known with probability KEEP, default 0.5), or for points a comma list of 0/1 per coordinate (`1,0`).
Writes panel.png (observation | samples | input), outputs.npz and summary.json (PSNR and the
classifier's accuracy on the completions when the input is a labelled data set).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import _steering as S

HELP = "inpaint / impute the unknown part of inputs under a mask with a trained run (PNG panel + .npz)"

EXAMPLES = [
    "scoregen inpaint runs/mix --input points.npy --n 4 --mask 1,0",
    "scoregen inpaint runs/mnist --input mnist --n 4 --mask box --resample 2",
]


def add_arguments(p) -> None:
    S.add_common_arguments(p, "inpaint")
    p.add_argument("--mask", required=True, metavar="MASK",
                   help="FILE (.npy/.png, nonzero = known), box[:TOP,LEFT,H,W] (default bottom half unknown), "
                        "random[:KEEP], or for points a comma list like 1,0")
    p.add_argument("--resample", type=int, default=1, help="RePaint resamplings per level (1 = none)")
    p.add_argument("--jump", type=int, default=1, help="RePaint jump length in levels")
    p.add_argument("--corrector", choices=("langevin", "none"), default="langevin")
    p.add_argument("--snr", type=float, default=0.16, help="Langevin corrector signal-to-noise ratio")


def parse_mask(spec: str, shape, seed: int = 0) -> torch.Tensor:
    from ..steering.operators import box_mask, check_mask, random_mask

    text = str(spec)
    kind, _, rest = text.partition(":")
    try:
        if kind == "box" and len(shape) == 3:
            return box_mask(shape, [int(v) for v in rest.split(",")] if rest else None)
        if kind == "random":
            return random_mask(shape, float(rest) if rest else 0.5, seed)
        if Path(text).is_file():
            from ._steering import read_array

            m = read_array(Path(text))
            m = m.reshape(m.shape[1:]) if m.dim() == len(shape) + 1 and m.shape[0] == 1 else m
            return check_mask((m != 0).float(), shape)
        if "," in text or text in ("0", "1"):
            return check_mask(torch.tensor([float(v) for v in text.split(",")]), shape)
    except ValueError as e:
        if "mask" in str(e) or "box" in str(e) or "keep" in str(e):
            raise
        raise ValueError(f"cannot read the mask {spec!r}: {e}") from None
    raise ValueError(f"mask {spec!r} is not a file, box[:TOP,LEFT,H,W], random[:KEEP] or a comma list of 0/1")


def run(args) -> int:
    from ..steering.inverse import impute

    S.check_counts(args)
    run = S.Run(args.run_dir, args.device)
    x, labels, dataset = S.read_input(args.input, run, args)
    mask = parse_mask(args.mask, run.shape, args.seed)
    n, s = x.shape[0], args.samples
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    start = run.sde.prior_sample((n * s,) + run.shape, generator=g, device=args.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = impute(run.model.score_fn(), run.sde, start, observed=S.repeat(run.to_model(x), s), mask=mask.to(args.device),
                     steps=args.steps, resample=args.resample, jump=args.jump, corrector=args.corrector, snr=args.snr,
                     generator=g, progress=S.show_progress(args))
    samples = run.to_data(res.samples).reshape((n, s) + run.shape)
    out = S.out_dir(args, "inpaint")
    if run.points:
        unknown = [i for i in range(run.shape[0]) if float(mask.reshape(-1)[i]) == 0]
        i, j = S.point_coords(run.shape[0], unknown)
        names = {k: S.coordinate_label(k) for k in (i, j)}
        what = ", ".join(f"{names[k]} {'imputed' if k in unknown else 'known'}" for k in (i, j))
        S.point_panel(x, samples, out / "panel.png", coords=(i, j),
                      titles={"input": f"input ({n} points)", "samples": f"{s} imputations per input"},
                      suptitle=f"{what}; unknown: {', '.join(map(S.coordinate_label, unknown)) or 'none'}")
    else:
        x01 = S.to_unit(x, run)
        shown = x01 * mask + 0.5 * (1 - mask)  # unknown pixels grey
        s01 = S.to_unit(samples, run)
        S.image_panel([[shown[i], *s01[i], x01[i]] for i in range(n)], out / "panel.png",
                      ["observed", *S.sample_headings(s), "input"],
                      suptitle=f"inpainting, mask {args.mask}: grey = unknown pixels")
    summary = {"command": "inpaint", "run_dir": str(args.run_dir), "input": str(args.input), "n": n, "samples": s,
               "steps": args.steps, "resample": args.resample, "jump": args.jump, "corrector": args.corrector,
               "nfe": res.nfe, "known_fraction": float(mask.mean()), "seconds": round(time.perf_counter() - t0, 2),
               **S.summary_metrics(samples, x if dataset else None, labels, dataset, run), "panel": str(out / "panel.png")}
    S.write_outputs(out, {"input": x, "mask": mask, "samples": samples, "labels": labels}, summary)
    return 0
