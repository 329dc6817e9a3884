"""Controllable generation, measured: exact checks on Gaussians/mixtures and MNIST figures.

    python benchmarks/guidance.py --parts 1 2 3                      # closed-form checks (a few minutes)
    python benchmarks/guidance.py --parts 4 5 --run /work/runs/mnist-cond-tiny
    python benchmarks/guidance.py --train-cond RUN_DIR               # train the mnist-cond-tiny preset

[1] classifier-free guidance between Gaussians N(m0, S), N(m1, S): sample mean against m0 + w (m1 - m0)
    (exact), and Bayes' conditional score of a mixture component (exact classifier) against the component.
[2] imputation of the seed mixture: observe x_1, KS distance of the x_2 samples to the exact conditional
    p(x_2 | x_1) (a 1-D mixture), for plain replacement, + Langevin, + RePaint resampling, beside the
    KS noise floor (the 99.9% quantile at that n).
[3] a linear inverse problem y = A x + eta with a Gaussian prior: error of every method's sample mean and
    covariance against the exact Gaussian posterior, beside the exact posterior score sampled with the
    same sampler and seed (the floor: finite n and discretization).
[4] MNIST, a class-conditional run: the project classifier's accuracy on the asked class for each
    classifier-free guidance weight w, with classifier-FID against the test split (and its floor).
[5] MNIST inpainting of half-masked test digits (bottom half unknown): PSNR and classifier accuracy.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from scoregen.steering import guidance as G
from scoregen.process.distributions import GaussianMixture, seed_mixture
from scoregen.steering.inverse import (dps, dps_score, impute, mixture_conditional, mixture_posterior, pigdm_score,
                              posterior_score)
from scoregen.process.sde import VESDE, VPSDE
from scoregen.sampling.samplers import reverse_diffusion
from scoregen.steering.operators import MatrixOperator, box_mask


def _prior(sde, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return sde.prior_sample((n, d), generator=g, dtype=torch.float64), g


# --- [1] -------------------------------------------------------------------------------------------------
def part_cfg(n: int) -> dict:
    sde = VPSDE()
    S = np.array([[0.6, 0.25], [0.25, 0.4]])
    m0, m1 = np.zeros(2), np.array([1.0, -0.5])
    u, c = (GaussianMixture.gaussian(m, S).score_fn(sde) for m in (m0, m1))
    rows = []
    for w in (0.0, 0.5, 1.0, 2.0, 4.0):
        x, g = _prior(sde, n, 2, 1)
        out = reverse_diffusion(G.cfg_combination(u, c, w), sde, x, steps=500, generator=g).samples
        want = m0 + w * (m1 - m0)
        se = np.sqrt(np.diag(S) / n)
        rows.append({"w": w, "mean": out.mean(0).tolist(), "expected": want.tolist(),
                     "z": ((out.mean(0).numpy() - want) / se).round(2).tolist()})
        print(f"[1] cfg w={w}: mean {np.round(out.mean(0).numpy(), 4)} expected {want} (z {rows[-1]['z']})")
    mix = seed_mixture()
    comp = []
    for k in range(3):
        x, g = _prior(sde, n, 2, 2 + k)
        fn = G.bayes_conditional_score(mix.score_fn(sde), G.mixture_classifier(mix, sde), k)
        out = reverse_diffusion(fn, sde, x, steps=500, generator=g).samples
        share = float((mix.classify(out) == k).double().mean())
        comp.append({"k": k, "share_in_component": share, "mean": out.mean(0).tolist(), "expected": mix.means[k].tolist()})
        print(f"[1] Bayes conditional of component {k}: {share:.4f} of samples in it, mean {np.round(out.mean(0).numpy(), 3)}"
              f" vs {mix.means[k].numpy()}")
    return {"cfg_gaussians": rows, "bayes_components": comp}


# --- [2] -------------------------------------------------------------------------------------------------
IMPUTE_METHODS = {"replacement": {"corrector": "none"}, "replacement+langevin": {"corrector": "langevin"},
                  "repaint U=10 + langevin": {"corrector": "langevin", "resample": 10}}


def part_impute(n: int, steps: int = 100) -> dict:
    mix, sde = seed_mixture(), VPSDE()
    floor = math.sqrt(-math.log(1e-3 / 2) / 2) / math.sqrt(n)
    rows = []
    for x1 in (0.5, 2.0, -2.0):
        cond = mixture_conditional(mix, [0], [x1])
        w, mu, var = cond.weights.numpy(), cond.means[:, 0].numpy(), cond.covs[:, 0, 0].numpy()

        def cdf(v, w=w, mu=mu, var=var):
            return sum(wk * stats.norm.cdf(v, m, math.sqrt(s)) for wk, m, s in zip(w, mu, var))

        for name, opts in IMPUTE_METHODS.items():
            x, g = _prior(sde, n, 2, 0)
            t0 = time.perf_counter()
            res = impute(mix.score_fn(sde), sde, x, observed=torch.tensor([x1, 0.0]), mask=torch.tensor([1.0, 0.0]),
                         steps=steps, generator=g, **opts)
            x2 = res.samples[:, 1].numpy()
            ks = float(stats.kstest(x2, cdf).statistic)
            rows.append({"x1": x1, "method": name, "ks": ks, "ks_floor": floor, "nfe": res.nfe,
                         "mean": float(x2.mean()), "exact_mean": float((w * mu).sum()),
                         "exact_weights": w.round(4).tolist(), "seconds": round(time.perf_counter() - t0, 1)})
            print(f"[2] x1={x1:+.1f} {name:26s} KS {ks:.4f} (floor {floor:.4f}) mean {x2.mean():+.3f} "
                  f"(exact {(w * mu).sum():+.3f}) NFE {res.nfe}")
    return {"imputation": rows}


# --- [3] -------------------------------------------------------------------------------------------------
def part_inverse(n: int, steps: int = 500) -> dict:
    g0 = torch.Generator().manual_seed(1)
    A = torch.randn(2, 4, generator=g0, dtype=torch.float64)
    y, sy = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3
    op = MatrixOperator(A)
    rows = []
    for prior_name, cov in (("isotropic N(m, 2I)", 2.0 * np.eye(4)), ("anisotropic", np.diag([1.5, 0.5, 1.0, 0.3]))):
        prior = GaussianMixture.gaussian([0.5, -0.3, 0.2, 0.1], cov)
        post = mixture_posterior(prior, A, y, sy)
        pm, pc = post.means[0], post.covs[0]
        v = float(np.trace(cov) / 4)
        for sde in (VPSDE(), VESDE(0.01, 10.0)):
            score = lambda x, t, sde=sde: prior.score(x, sde.alpha(t), sde.std(t))  # noqa: E731 (differentiable)
            methods = {
                "exact posterior score (floor)": post.score_fn(sde),
                "seed 000, constant (literal)": posterior_score(score, sde, op, y, sy, inflate=False),
                "seed 000, noise-inflated": posterior_score(score, sde, op, y, sy),
                "DPS score (Gaussian lik.)": dps_score(score, sde, op, y, sy),
                "PiGDM (autograd J)": pigdm_score(score, sde, op, y, sy, data_var=v),
                "PiGDM (isotropic J)": pigdm_score(score, sde, op, y, sy, data_var=v, jacobian="isotropic"),
            }
            for name, fn in list(methods.items()) + [("DPS sampler zeta=0.3", None), ("DPS sampler zeta=1", None)]:
                x, g = _prior(sde, n, 4, 0)
                if fn is None:
                    out = dps(score, sde, x, operator=op, y=y, steps=steps, zeta=float(name.split("=")[1]), generator=g).samples
                else:
                    with torch.no_grad():
                        out = reverse_diffusion(fn, sde, x, steps=steps, generator=g).samples
                finite = bool(torch.isfinite(out).all()) and float(out.abs().max()) < 1e6
                em = float((out.mean(0) - pm).norm()) if finite else float("nan")
                ec = float(torch.linalg.matrix_norm(torch.cov(out.T) - pc)) if finite else float("nan")
                rows.append({"prior": prior_name, "sde": sde.name, "method": name, "mean_error": em, "cov_error": ec,
                             "diverged": not finite})
                print(f"[3] {prior_name:18s} {sde.name:2s} {name:30s} |mean err| {em:.4f}  ||cov err||_F {ec:.4f}"
                      + ("  (diverged)" if not finite else ""))
    return {"inverse_gaussian": rows}


# --- [4] -------------------------------------------------------------------------------------------------
def part_mnist_guidance(run_dir, n_per_class: int, weights, out: Path, steps: int, sampler: str) -> dict:
    from scoregen.data.images import unscale_images
    from scoregen.evaluation.classifier import classifier_predict, load_classifier
    from scoregen.evaluation.image_metrics import evaluate_images
    from scoregen.plots import image_grid
    from scoregen.runs.recipe import load_run_config
    from scoregen.sampling.samplers import get_sampler
    from scoregen.training.trainer import load_run

    model, sde, norm, meta = load_run(run_dir)
    vr = load_run_config(run_dir)["data"].get("value_range", [0, 1])
    clf = load_classifier("mnist")
    y = torch.arange(10).repeat(n_per_class)
    fn = get_sampler(sampler)
    rows = []
    for w in weights:
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        outs = []
        for start in range(0, len(y), 250):
            yb = y[start:start + 250]
            x = sde.prior_sample((len(yb), 1, 28, 28), generator=g)
            score = G.guided_score_fn(model, yb, w, train_config=meta["train_config"])
            with torch.no_grad():
                outs.append(norm.inverse(fn(score, sde, x, steps=steps, generator=g).samples))
        x01 = unscale_images(torch.cat(outs), vr)
        acc = float((classifier_predict(clf, x01) == y).double().mean())
        ev = evaluate_images(x01, "mnist", model=clf)
        rows.append({"w": w, "accuracy": acc, "fid": ev["fid"], "fid_floor": ev["fid_floor"], "n": len(y),
                     "seconds": round(time.perf_counter() - t0, 1)})
        image_grid(x01[:100], out / f"guidance_w{w:g}.png", nrow=10)
        print(f"[4] w={w:g}: accuracy {acc:.4f} on the asked class, classifier-FID {ev['fid']:.2f} "
              f"(floor {ev['fid_floor']:.2f}), n={len(y)}, {rows[-1]['seconds']} s", flush=True)
    _plot_guidance(rows, out / "guidance_accuracy_fid.png")
    return {"mnist_guidance": rows, "run_dir": str(run_dir), "sampler": sampler, "steps": steps}


def _plot_guidance(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [r["w"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(w, [100 * r["accuracy"] for r in rows], "o-", color="C0")
    ax.set_xlabel("guidance weight w"), ax.set_ylabel("accuracy on the asked class (%)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(w, [r["fid"] for r in rows], "s--", color="C1")
    ax2.axhline(rows[0]["fid_floor"], color="C1", lw=0.8, ls=":")
    ax2.set_ylabel("classifier-FID (dotted: floor)", color="C1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- [5] -------------------------------------------------------------------------------------------------
def part_mnist_inpaint(run_dir, n: int, samples: int, out: Path, steps: int, resample: int) -> dict:
    from scoregen.data.images import load_images, unscale_images
    from scoregen.evaluation.classifier import classifier_predict, load_classifier
    from scoregen.runs.recipe import load_run_config
    from scoregen.training.trainer import load_run

    model, sde, norm, meta = load_run(run_dir)
    vr = load_run_config(run_dir)["data"].get("value_range", [0, 1])
    x, lab = load_images("mnist", "test", value_range=vr, limit=n)
    mask = box_mask((1, 28, 28))
    clf = load_classifier("mnist")
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    obs = norm(x).repeat_interleave(samples, 0)
    with torch.no_grad():
        res = impute(model.score_fn(), sde, sde.prior_sample(obs.shape, generator=g), observed=obs, mask=mask,
                     steps=steps, resample=resample, generator=g)
    s01 = unscale_images(norm.inverse(res.samples), vr)
    t01 = unscale_images(x, vr).repeat_interleave(samples, 0)
    mse = (s01 - t01).pow(2).reshape(len(s01), -1).mean(1)
    psnr = 10 * torch.log10(1 / mse.clamp_min(1e-12))
    acc = float((classifier_predict(clf, s01) == lab.repeat_interleave(samples)).double().mean())
    acc_masked = float((classifier_predict(clf, unscale_images(x, vr) * mask) == lab).double().mean())
    row = {"n": n, "samples": samples, "steps": steps, "resample": resample, "nfe": res.nfe,
           "psnr_mean": float(psnr.mean()), "psnr_se": float(psnr.std() / math.sqrt(len(psnr))),
           "accuracy": acc, "accuracy_on_masked_inputs": acc_masked, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"[5] inpainting (bottom half) of {n} test digits x {samples}: PSNR {row['psnr_mean']:.2f} +- "
          f"{row['psnr_se']:.2f} dB, classifier accuracy {acc:.4f} (on the half-masked inputs {acc_masked:.4f}), "
          f"NFE {res.nfe}, {row['seconds']} s")
    return {"mnist_inpaint": row}


# --- training the conditional preset --------------------------------------------------------------------------
def train_conditional(run_dir, preset: str = "mnist-cond-tiny"):
    """Train `preset` with labels. The U-Nets keep n_classes on their label table, not on the net, and
    recipe.train_run / Trainer read `net.n_classes`: without this attribute they train unconditionally."""
    from scoregen.runs import config as C
    from scoregen.runs.recipe import CONFIG_NAME, build_model, build_sde, load_data, train_config
    from scoregen.training.trainer import Normalizer, Trainer

    cfg = C.load_config(preset)
    run_dir = Path(run_dir)
    x, labels = load_data(cfg["data"])
    tc = train_config(cfg, progress=False)
    normalizer = Normalizer.fit(x) if tc.normalize else Normalizer()
    sde = build_sde(cfg["sde"], normalizer(x))
    cfg["sde"] = sde.config()
    torch.manual_seed(tc.seed)
    model = build_model(cfg["model"], sde, tuple(x.shape))
    model.net.n_classes = G.model_classes(model)
    trainer = Trainer(model, x, tc, run_dir, labels=labels, normalizer=normalizer)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_NAME).write_text(C.dump_config(cfg))
    trainer.fit()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--n", type=int, default=2000, help="samples of the closed-form parts")
    p.add_argument("--run", default="/work/runs/mnist-cond-tiny", help="MNIST run for parts 4 and 5")
    p.add_argument("--weights", nargs="+", type=float, default=[0.0, 1.0, 2.0, 3.0, 5.0])
    p.add_argument("--per-class", type=int, default=30, help="[4] samples per class and weight")
    p.add_argument("--sampler", default="reverse_diffusion")
    p.add_argument("--steps", type=int, default=200, help="[4], [5] sampler steps")
    p.add_argument("--inpaint-n", type=int, default=100)
    p.add_argument("--resample", type=int, default=1, help="[5] RePaint resamplings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/guidance-benchmark", help="JSON and PNG outputs (runs/ is not tracked)")
    p.add_argument("--train-cond", default=None, metavar="RUN_DIR", help="train the mnist-cond-tiny preset and exit")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.train_cond:
        return train_conditional(a.train_cond)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if 1 in a.parts:
        results.update(part_cfg(a.n))
    if 2 in a.parts:
        results.update(part_impute(a.n))
    if 3 in a.parts:
        results.update(part_inverse(a.n))
    if 4 in a.parts:
        results.update(part_mnist_guidance(a.run, a.per_class, a.weights, out, a.steps, a.sampler))
    if 5 in a.parts:
        results.update(part_mnist_inpaint(a.run, a.inpaint_n, 1, out, a.steps, a.resample))
    path = out / f"guidance_parts{''.join(map(str, a.parts))}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
