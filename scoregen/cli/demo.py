"""`scoregen demo`: the main job on the built-in data — train, sample with every sampler, measure, draw."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

HELP = "train on the seed's 3-Gaussian mixture (or any point data), sample with every sampler, write pictures + metrics.json"

#: (sampler, options): each at a step count where it has converged on this kind of data
DEMO_SAMPLERS = [
    ("dpmpp2m", {"steps": 25}),
    ("heun", {"steps": 25}),
    ("ddim", {"steps": 50}),
    ("ode", {}),
    ("reverse_diffusion", {"steps": 1000}),
    ("euler_maruyama", {"steps": 1000}),
    ("ancestral", {"steps": 1000}),
    ("pc", {"steps": 500, "snr": 0.05}),
    ("annealed_langevin", {}),
    ("langevin", {"steps": 1000, "step_size": 0.003}),
]


def add_arguments(p):
    p.add_argument("--out", default="scoregen-demo", help="output folder (default: scoregen-demo)")
    p.add_argument("--data", default="seed", help="point data set or .npy/.csv file (default: the seed's mixture)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the points preset's)")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--samplers", nargs="*", default=None, help="subset of samplers to run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="retrain even if OUT/run holds a finished run")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for training")


def run(args):
    from scoregen import plots
    from scoregen.data.points import dataset_mixture, load_points, reference_sampler
    from scoregen.evaluation.metrics import component_shares, energy_distance, noise_floor
    from scoregen.runs import config as C
    from scoregen.runs.recipe import train_run
    from scoregen.runs.run import Run

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.name={args.data}", f"train.seed={args.seed}"] + list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = C.load_config("points", overrides)
    data = load_points(args.data)

    t0 = time.perf_counter()
    trainer = train_run(cfg, out / "run", resume=not args.fresh)
    train_seconds = time.perf_counter() - t0
    run = Run.open(out / "run")  # loaded once, sampled by every sampler below
    model, sde, normalizer = run.model, run.sde, run.normalizer

    ref_draw = reference_sampler(args.data)
    mixture = dataset_mixture(args.data)
    reference = torch.as_tensor(ref_draw(5000, 10_000 + args.seed) if ref_draw else data, dtype=torch.float64)
    floor = noise_floor(energy_distance, ref_draw, args.n, len(reference), repeats=20) if ref_draw else None

    wanted = [s for s in DEMO_SAMPLERS if args.samplers is None or s[0] in args.samplers]
    results, panels, trajs = {}, {}, {}
    for name, opts in wanted:
        if name == "langevin":
            # plain Langevin at one noise level: std 0.05 (standardized units), where the learned score
            # is accurate (at t -> 0 its error grows like 1 / std); it cannot hop between modes
            opts = {**opts, "t": round(float(sde.t_from_std(torch.tensor(0.05, dtype=torch.float64))), 5)}
        t1 = time.perf_counter()
        res = run.sample(args.n, name, seed=args.seed, **opts)
        secs = time.perf_counter() - t1
        x = res.samples
        r = {"nfe": res.nfe, "seconds": round(secs, 3), "energy_distance": energy_distance(x, reference),
             "options": opts}
        if mixture is not None:
            cs = component_shares(x, mixture)
            r["component_shares"], r["max_share_deviation"] = cs["shares"], cs["max_abs_deviation"]
        results[name] = r
        panels[name] = x
        tr = run.sample(60, name, seed=args.seed + 1, return_trajectory=True, **opts)
        trajs[name] = tr.trajectory
        print(f"{name:18s} NFE {res.nfe:5d}  {secs:6.2f}s  energy distance {r['energy_distance']:.4f}"
              + (f"  shares {np.round(r['component_shares'], 3).tolist()}" if mixture is not None else ""))

    best = min(results, key=lambda k: results[k]["energy_distance"]) if results else None
    titles = {k: f"{k}\nNFE {v['nfe']}, ED {v['energy_distance']:.4f}" for k, v in results.items()}
    pics = {
        "samples": plots.scatter_panels({"data": data, **panels}, out / "samples.png", reference=None,
                                        titles={"data": f"data ({len(data)} points)", **titles}),
        "trajectories": plots.trajectories(trajs, out / "trajectories.png", reference=data),
        "loss": plots.loss_curve(trainer.loss_history, out / "loss.png"),
        "score_field": _score_field_picture(model, sde, normalizer, mixture, data, out / "score_field.png"),
    }
    metrics = {
        "data": args.data, "n_data": len(data), "train_steps": trainer.step, "train_seconds": round(train_seconds, 2),
        "final_loss": float(np.mean(trainer.loss_history[-500:])), "sde": sde.config(),
        "n_samples": args.n, "n_reference": len(reference),
        "energy_distance_floor": floor, "best_sampler": best, "samplers": results,
        "pictures": {k: str(v) for k, v in pics.items()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    floor_txt = f" (noise floor {floor['mean']:.4f} +- {floor['std']:.4f}, p95 {floor['p95']:.4f})" if floor else ""
    if best:
        print(f"best sampler: {best}, energy distance {results[best]['energy_distance']:.4f}{floor_txt}")
    print(f"wrote {out / 'metrics.json'} and pictures {', '.join(p.name for p in pics.values())}")


def _score_field_picture(model, sde, normalizer, mixture, data, path):
    """The learned score beside the exact one (when the data's law is known) at three noise levels,
    in data units: s_data(x) = s_model((x - mean) / scale) / scale."""
    from scoregen import plots

    scale, mean = normalizer.scale, normalizer.mean
    lo, hi = np.quantile(data, 0.0, axis=0) - 2, np.quantile(data, 1.0, axis=0) + 2
    fields = {}
    for t in (0.05, 0.3, 0.6):
        tt = torch.tensor([t], dtype=torch.float64)
        std_n = float(sde.std(tt))

        def learned(p, t=t):
            with torch.no_grad():
                return model(normalizer(p), torch.full((len(p),), t)) / scale

        fields[f"learned, noise std {std_n * scale:.2f}"] = learned
        if mixture is not None:
            def exact(p, a=float(sde.alpha(tt)), s=std_n):
                # x_data(t) = a x_data(0) + (1 - a) mean + s scale z: a noised mixture shifted by (1 - a) mean
                return mixture.score(p.double() - (1 - a) * mean.double(), a, s * scale)

            fields[f"exact, noise std {std_n * scale:.2f}"] = exact
    order = sorted(fields, key=lambda k: (float(k.rsplit(" ", 1)[1]), k.startswith("learned")))
    return plots.score_fields({k: fields[k] for k in order}, path, lo, hi)
