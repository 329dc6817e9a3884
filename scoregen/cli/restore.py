"""`scoregen restore RUN_DIR --operator NAME --input ...`: posterior sampling for y = A x + noise.

The input is the clean data: the command measures it, y = A x + sigma_y z (in data units), and
samples x given y with one of the methods of `inverse` (the posterior scores run through the
reverse-diffusion sampler; `dps` is its own sampler):

    pigdm            PiGDM (Song et al. 2023), default; --jacobian isotropic (default, stable) or autograd
    dps              the DPS sampler (Chung et al. 2023), step --zeta
    dps-score        DPS's Gaussian-likelihood score
    posterior        the approximate posterior score (Song et al. 2021, eq. 14), noise-inflated (Jalal et al. 2021)
    posterior-const  the same, literally (clean-data likelihood at every t; often unstable)

Operators: inpaint-random (--keep), inpaint-box (--box), superres (--factor), blur (--blur-sigma),
colorize; for points `matrix` with --matrix FILE.npy (m, D). Writes panel.png (observation |
samples | truth), outputs.npz and summary.json (PSNR, the classifier's accuracy for labelled data).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import _steering as S

HELP = "solve a linear inverse problem (inpainting, super-resolution, deblurring, colorization) by posterior sampling"
METHODS = ("pigdm", "dps", "dps-score", "posterior", "posterior-const")

EXAMPLES = [
    "scoregen restore runs/mix --input points.npy --operator matrix --matrix A.npy --sigma-y 0.1",
    "scoregen restore runs/mnist --input mnist --n 4 --operator superres --factor 2",
]


def add_arguments(p) -> None:
    from ..steering.operators import OPERATORS

    S.add_common_arguments(p, "restore")
    p.add_argument("--operator", required=True, choices=list(OPERATORS) + ["matrix"])
    p.add_argument("--method", choices=METHODS, default="pigdm")
    p.add_argument("--sigma-y", type=float, default=0.05, help="measurement noise std in data units (default 0.05)")
    p.add_argument("--zeta", type=float, default=1.0, help="DPS step size")
    p.add_argument("--data-var", type=float, default=None,
                   help="PiGDM's per-coordinate data variance in model units (default: 1 for a normalized run, "
                        "else the inputs' variance)")
    p.add_argument("--jacobian", choices=("isotropic", "autograd"), default="isotropic",
                   help="pigdm: Jacobian of Tweedie's estimate (isotropic: r_t^2 / sigma_t^2, no backward pass)")
    p.add_argument("--keep", type=float, default=0.5, help="inpaint-random: fraction of known pixels")
    p.add_argument("--box", default=None, help="inpaint-box: TOP,LEFT,HEIGHT,WIDTH (default bottom half)")
    p.add_argument("--factor", type=int, default=2, help="superres: pooling factor")
    p.add_argument("--blur-sigma", type=float, default=1.5, help="blur: Gaussian kernel std in pixels")
    p.add_argument("--matrix", default=None, help="matrix: a .npy file holding A (m, D)")


def build_operator(args, shape):
    from ..steering.operators import MatrixOperator, make_operator

    if args.operator == "matrix":
        if not args.matrix:
            raise ValueError("--operator matrix needs --matrix FILE.npy holding A of shape (m, D)")
        import numpy as np

        if not Path(args.matrix).is_file():
            raise FileNotFoundError(f"matrix file {args.matrix} does not exist")
        return MatrixOperator(torch.as_tensor(np.load(args.matrix)), shape)
    opts = {"inpaint-random": {"keep": args.keep, "seed": args.seed},
            "inpaint-box": {"box": [int(v) for v in args.box.split(",")] if args.box else None},
            "superres": {"factor": args.factor}, "blur": {"sigma": args.blur_sigma}, "colorize": {}}[args.operator]
    return make_operator(args.operator, shape, **opts)


def model_observation(op, y, run, sigma_y):
    """y = A x + e in data units -> A z + e / s in model units z = (x - m) / s: (y - A m) / s, sigma_y / s."""
    norm = run.normalizer
    m = norm.mean.reshape((-1,) + (1,) * (len(run.shape) - 1)) if norm.mean.dim() else norm.mean
    am = op(torch.zeros((1,) + run.shape) + m)
    return (y - am) / norm.scale, sigma_y / norm.scale


def run(args) -> int:
    from ..sampling.samplers import reverse_diffusion
    from ..steering import inverse

    S.check_counts(args)
    if not args.sigma_y >= 0:
        raise ValueError(f"--sigma-y must be >= 0, got {args.sigma_y}")
    run = S.Run(args.run_dir, args.device)
    x, labels, dataset = S.read_input(args.input, run, args)
    op = build_operator(args, run.shape)
    n, s = x.shape[0], args.samples
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    y = op(x) + args.sigma_y * torch.randn((n,) + op.out_shape, generator=g)
    ym, sym = model_observation(op, y, run, args.sigma_y)
    ym = S.repeat(ym, s).to(args.device)
    start = run.sde.prior_sample((n * s,) + run.shape, generator=g, device=args.device)
    score, sde = run.model.score_fn(), run.sde
    t0 = time.perf_counter()
    if args.method == "dps":
        res = inverse.dps(score, sde, start, operator=op, y=ym, steps=args.steps, zeta=args.zeta, generator=g,
                          progress=S.show_progress(args))
    else:
        if args.method == "pigdm":
            # standardised training data have variance 1; otherwise (e.g. a diffusers folder) measure it
            trained = run.cfg.get("train") or {}
            standardised = trained.get("normalize", True) if trained else False
            v = args.data_var or (1.0 if standardised else float(run.to_model(x).var()))
            fn = inverse.pigdm_score(score, sde, op, ym, sym, data_var=v, jacobian=args.jacobian)
        elif args.method == "dps-score":
            fn = inverse.dps_score(score, sde, op, ym, sym)
        else:
            fn = inverse.posterior_score(score, sde, op, ym, sym, inflate=args.method == "posterior")
        with torch.no_grad():
            res = reverse_diffusion(fn, sde, start, steps=args.steps, generator=g, progress=S.show_progress(args))
    samples = run.to_data(res.samples.detach()).reshape((n, s) + run.shape)
    out = S.out_dir(args, "restore")
    if run.points:
        S.point_panel(x, samples, out / "panel.png", truth=x,
                      titles={"input": f"input ({n} points)", "samples": f"{s} posterior samples per input",
                              "truth": "truth (the input)"})
    else:
        shown = S.to_unit(op.adjoint(y) / op.gram if op.out_shape != run.shape else y, run)
        s01, x01 = S.to_unit(samples, run), S.to_unit(x, run)
        S.image_panel([[shown[i], *s01[i], x01[i]] for i in range(n)], out / "panel.png",
                      ["observed", *S.sample_headings(s), "truth"],
                      suptitle=f"{args.operator}, sigma_y={args.sigma_y}, {args.method}")
    resid = (op(samples.reshape((n * s,) + run.shape)) - S.repeat(y, s)).reshape(n * s, -1).norm(dim=1)
    summary = {"command": "restore", "run_dir": str(args.run_dir), "input": str(args.input), "operator": args.operator,
               "method": args.method, "sigma_y": args.sigma_y, "n": n, "samples": s, "steps": args.steps,
               "nfe": res.nfe, "seconds": round(time.perf_counter() - t0, 2),
               "residual_rms": float(resid.mean()) / math.sqrt(math.prod(op.out_shape)),
               **S.summary_metrics(samples, x, labels, dataset, run), "panel": str(out / "panel.png")}
    S.write_outputs(out, {"input": x, "observation": y, "samples": samples, "labels": labels}, summary)
    return 0
