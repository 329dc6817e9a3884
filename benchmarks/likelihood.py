"""Bits/dim through the probability-flow ODE on 784-dimensional inputs: wall time, NFE, standard error.

[1] The network: seed 001's U-Net (`scoregen.nets.unet.SeedUNet`, 1.1 M parameters) under the VE SDE
of the mnist preset (sigma 0.01..25, eps 1e-5). Measured: the cost per image of one evaluation of
the joint ODE (x and the divergence) with the Hutchinson divergence (forward + one vector-Jacobian
product) and with the exact one (784 products: a chunk is timed and scaled); and end-to-end bits/dim
of dequantized MNIST test images with fixed-step Heun. The weights are a seeded random
initialisation (no trained MNIST model exists here): the cost per evaluation is the real one, but
the field of an untrained net is far rougher than a trained one's (rk45 needs ~1200 NFE on it), so
the NFE of the adaptive solvers here says nothing about a trained model: see [2] and [3].

[2] NFE at a realistic stiffness, and a closed-form check at D = 784: the exact score of a Gaussian
fitted to dequantized MNIST (covariance + I / (12 * 256^2), the dequantization noise), whose
log p_eps is known. Each solver (torch Dormand–Prince 'rk45', scipy 'scipy_rk45', fixed-step 'heun')
gives bits/dim with the Hutchinson divergence (one Rademacher probe), compared with the closed form
at the same dequantized inputs.

[3] The projection: NFE of [2] x cost per evaluation of [1], per image and for the 10,000 MNIST
test images.

    python benchmarks/likelihood.py                          # CPU, one thread, ~2 min
    python benchmarks/likelihood.py --device cuda --images 256 --repeats 1
    python benchmarks/likelihood.py --skip network --skip gaussian --mixture-run RUN_DIR   # [4] only

[4] (optional, --mixture-run): a run trained on the seed mixture, e.g. with the 'points' preset,
    python -c "from scoregen import config, recipe; recipe.train_run(config.load_config('points'), 'runs/mix')"
gives its NLL on fresh mixture draws against the mixture's entropy.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoregen.likelihood import _joint_drift, bits_per_dim, nll_to_bpd  # noqa: E402
from scoregen.models import ScoreModel  # noqa: E402
from scoregen.models.nets.unet import SeedUNet  # noqa: E402
from scoregen.process.distributions import GaussianMixture  # noqa: E402
from scoregen.process.sde import VESDE  # noqa: E402


def mnist_pixels(n: int, split: str = "test"):
    """First n MNIST images as integers 0..255, (n, 1, 28, 28); random pixels if MNIST is absent."""
    try:
        from scoregen.data.images import load_images

        x, _ = load_images("mnist", split, limit=n)
        return torch.round(x * 255).to(torch.uint8), f"MNIST {split} (first {n})"
    except (FileNotFoundError, ValueError) as e:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), f"random pixels ({e})"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_bpd(score_fn, sde, pixels, device, **options):
    sync(device)
    t0 = time.perf_counter()
    res = bits_per_dim(score_fn, sde, pixels.to(device), generator=torch.Generator(device).manual_seed(1), **options)
    sync(device)
    return res, time.perf_counter() - t0


def row(name, div, res, seconds, n_images):
    k = res.bpd_repeats.shape[1]
    se_img = float(res.bpd_se.mean()) if k > 1 else float("nan")
    se_set = float(res.bpd.std() / math.sqrt(len(res.bpd))) if len(res.bpd) > 1 else float("nan")
    print(f"{name:<11} {div:<12} {res.nfe:>5} {seconds / n_images:>10.3f} {float(res.bpd.mean()):>9.4f} "
          f"{se_img:>12.4f} {se_set:>10.4f}")


def eval_cost(fn, state, t, device, reps=2):
    fn(state, t)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(state, t)
    sync(device)
    return (time.perf_counter() - t0) / reps


def part_network(args, device, pixels):
    """Seed 001's U-Net: the cost of one evaluation of the joint ODE per image, and Heun solves."""
    torch.manual_seed(0)
    sde = VESDE(sigma_min=0.01, sigma_max=25.0, eps=1e-5)
    model = ScoreModel(SeedUNet(), sde, cond="t").to(device).eval().requires_grad_(False)
    n_par = sum(p.numel() for p in model.parameters())
    score_fn = model.score_fn()
    b = len(pixels) * args.repeats
    print(f"\n[1] network: scoregen.nets.unet.SeedUNet (seed 001's U-Net), {n_par:,} parameters, random init "
          f"(seed 0); VE sigma 0.01..25, eps 1e-5; batches of {b} = {len(pixels)} images x {args.repeats} "
          f"dequantizations")
    shape = (b, 1, 28, 28)
    x = torch.rand(shape, device=device)
    t = torch.full((b,), 0.5, device=device)
    hutch = _joint_drift(score_fn, sde, shape, torch.randn((1,) + shape, device=device).sign())
    cost_h = eval_cost(hutch, torch.cat([x.reshape(b, -1), x.new_zeros(b, 1)], 1), t, device) / b
    # exact divergence: a chunk of the 784 basis vectors on one image, scaled to 784
    probes = torch.zeros(args.exact_chunk, 1, 784, device=device)
    probes[torch.arange(args.exact_chunk), 0, torch.arange(args.exact_chunk)] = 1.0
    exact = _joint_drift(score_fn, sde, (1, 1, 28, 28), probes.reshape(args.exact_chunk, 1, 1, 28, 28))
    state1 = torch.cat([x[:1].reshape(1, -1), x.new_zeros(1, args.exact_chunk)], 1)
    cost_e = eval_cost(exact, state1, t[:1], device, reps=1) * 784 / args.exact_chunk
    print(f"one evaluation of the joint ODE, per image: Hutchinson (forward + 1 VJP) {cost_h * 1e3:.1f} ms; "
          f"exact (784 VJPs, {args.exact_chunk} timed and scaled) {cost_e:.2f} s")
    print(f"{'solver':<11} {'divergence':<12} {'NFE':>5} {'s/image':>10} {'bpd':>9} {'SE/image':>12} {'SE(set)':>10}")
    common = dict(repeats=args.repeats, rtol=args.rtol, atol=args.atol, divergence="hutchinson", probe="rademacher")
    for solver in args.unet_solvers:
        res, sec = timed_bpd(score_fn, sde, pixels, device, solver=solver, steps=args.heun_steps, grid=args.grid,
                             **common)
        label = f"heun({args.heun_steps})" if solver == "heun" else solver
        row(label, "hutch-1", res, sec, len(pixels))
        if solver == "heun":
            print(f"{label:<11} {'exact':<12} {res.nfe:>5} {cost_e * res.nfe:>10.1f}   (projected: NFE x exact cost)")
    return cost_h, cost_e


def part_gaussian(args, device):
    train, _ = mnist_pixels(args.fit_images, "train")
    test, _ = mnist_pixels(len(args.gauss_images_range), "test")
    y = (train.double() + 0.5) / 256
    cov = torch.cov(y.reshape(len(y), -1).T) + torch.eye(784, dtype=torch.float64) / (12 * 256**2)
    gm = GaussianMixture.gaussian(y.reshape(len(y), -1).mean(0).numpy(), cov.numpy())
    sde = VESDE(sigma_min=0.01, sigma_max=25.0, eps=1e-5)
    dtype = torch.float64

    def score_fn(x, t):
        return gm.score(x.reshape(len(x), -1).cpu(), sde.alpha(t.cpu()), sde.std(t.cpu())).reshape(x.shape).to(x)

    def prior_exact(z):
        tt = torch.full((len(z),), sde.T, dtype=torch.float64)
        return gm.log_prob(z.reshape(len(z), -1).cpu(), sde.alpha(tt), sde.std(tt)).to(z)

    print(f"\n[2] exact score of a Gaussian fitted to {args.fit_images} dequantized MNIST train images "
          f"(D = 784, float64), {len(test)} test images x {args.repeats} dequantizations, Hutchinson (1 probe)")
    print(f"{'solver':<11} {'NFE':>5} {'s/image':>9} {'bpd ODE':>9} {'bpd exact':>10} {'diff':>8} {'SE/image':>9}")
    nfe = {}
    for solver in args.solvers:
        res, sec = timed_bpd(score_fn, sde, test, device, repeats=args.repeats, dtype=dtype, solver=solver,
                             steps=args.heun_steps, grid=args.grid, rtol=args.rtol, atol=args.atol,
                             divergence="hutchinson",
                             prior_logp=prior_exact)
        x = res.x.reshape(-1, 784).cpu()
        tt = torch.full((len(x),), sde.eps, dtype=torch.float64)
        exact = nll_to_bpd(-gm.log_prob(x, sde.alpha(tt), sde.std(tt)), 784).reshape(args.repeats, -1).T.mean(1)
        label = f"heun({args.heun_steps})" if solver == "heun" else solver
        diff = float((res.bpd.cpu() - exact).mean())
        print(f"{label:<11} {res.nfe:>5} {sec / len(test):>9.3f} {float(res.bpd.mean()):>9.4f} "
              f"{float(exact.mean()):>10.4f} {diff:>8.4f} {float(res.bpd_se.mean()):>9.4f}")
        nfe[label] = res.nfe
    return nfe


def part_mixture(run_dir, n: int, seed: int):
    """A run trained on the seed mixture: its NLL on fresh mixture draws against the true entropy.

    The NLL is a cross-entropy, H(p) + KL(p || p_model) >= H(p); the paired difference
    -log p_model(x) + log p(x) on the same points estimates the KL with a smaller standard error.
    """
    from scoregen.data import load_points
    from scoregen.evaluation import points_nll
    from scoregen.process.distributions import seed_mixture
    from scoregen.training.trainer import load_run

    model, sde, normalizer, meta = load_run(run_dir)
    x = torch.from_numpy(load_points("seed", n=n, seed=seed))
    t0 = time.perf_counter()
    nll, nfe = points_nll(model.score_fn(), sde, x, normalizer, batch_size=500, divergence="exact")
    sec = time.perf_counter() - t0
    gm = seed_mixture()
    true = -gm.log_prob(x.double())
    h, h_se = gm.entropy_mc(400_000, seed=3)
    kl = nll.double() - true
    print(f"\n[4] run {run_dir} (step {meta['step']}), {n} fresh mixture draws (seed {seed}), exact divergence, rk45:")
    print(f"NLL {float(nll.mean()):.4f} +- {float(nll.std()) / math.sqrt(n):.4f} nats; true entropy {h:.4f} +- "
          f"{h_se:.4f} (Monte Carlo, 400k); paired excess (KL estimate) {float(kl.mean()):.4f} +- "
          f"{float(kl.std()) / math.sqrt(n):.4f}; NFE {np.mean(nfe):.0f} per batch of 500; {sec:.1f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4, help="MNIST test images for the network part")
    p.add_argument("--repeats", type=int, default=2, help="dequantization repeats per image (for the SE)")
    p.add_argument("--solvers", nargs="+", default=["rk45", "scipy_rk45", "heun"], help="solvers of part [2]")
    p.add_argument("--unet-solvers", nargs="+", default=["rk45", "scipy_rk45", "heun"],
                   help="solvers run end to end on the untrained U-Net")
    p.add_argument("--heun-steps", type=int, default=50)
    p.add_argument("--grid", default="log_snr", help="Heun time grid: log_snr or uniform")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--exact-chunk", type=int, default=16, help="basis vectors timed for the exact divergence")
    p.add_argument("--fit-images", type=int, default=10000, help="train images the Gaussian of part 2 is fitted to")
    p.add_argument("--gauss-images", type=int, default=8, help="test images for part 2")
    p.add_argument("--skip", choices=["network", "gaussian"], action="append", default=[])
    p.add_argument("--mixture-run", default=None, metavar="RUN_DIR",
                   help="also [4]: NLL of a run trained on the seed mixture (e.g. the 'points' preset) vs the entropy")
    p.add_argument("--mixture-n", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default; on a shared CPU one thread is steadier and faster)")
    args = p.parse_args(argv)
    args.gauss_images_range = range(args.gauss_images)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    words = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    print("command: python " + " ".join(shlex.quote(a) for a in words))
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} torch threads")
    print(f"device: {name}; torch {torch.__version__}; rtol = {args.rtol}, atol = {args.atol}")
    t0 = time.perf_counter()
    cost_h = cost_e = None
    if "network" not in args.skip:
        pixels, source = mnist_pixels(args.images)
        print(f"data: {source}")
        cost_h, cost_e = part_network(args, device, pixels)
    nfe = part_gaussian(args, device) if "gaussian" not in args.skip else {}
    if cost_h is not None and nfe:
        print("\n[3] projection for the U-Net at the stiffness of [2] (NFE of [2] x cost per evaluation of [1]):")
        for label, k in nfe.items():
            print(f"{label:<11} NFE {k:>4}: Hutchinson {k * cost_h:7.2f} s/image ({k * cost_h * 10000 / 3600:6.2f} h "
                  f"for the 10,000 test images), exact {k * cost_e:8.1f} s/image")
    if args.mixture_run:
        part_mixture(args.mixture_run, args.mixture_n, seed=1)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
