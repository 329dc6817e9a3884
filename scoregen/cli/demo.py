"""`scoregen demo`: the main job on the built-in data — train, sample with every sampler, measure, draw."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

HELP = "train on the 3-Gaussian mixture (or any point data), sample with every sampler, write pictures + metrics.json"

#: (sampler, options): each at the fewest steps where it has converged on this data, measured by
#: `python benchmarks/demo_steps.py RUN --big 10000 [--exact]` on the demo's run (seed data, step 2750):
#: D, a sampler's population energy distance to the truth, from 10000 samples, is read as the demo's
#: expected ED/floor at n = 1000, 1 + D / floor mean (sample seed 100; the mean over seeds 100-102 for
#: the SDE samplers, pc and annealed Langevin). "exact": the same sampler with the mixture's exact score, its discretization error alone
#: (at the floor: ~1.0; the measurement's sd is ~0.08). Learned-score values first.
DEMO_SAMPLERS = [
    ("dpmpp2m", {"steps": 25}),  # 1.45 (15 steps 1.55, 10: 2.00); exact 0.92 at 25
    ("heun", {"steps": 25}),  # 49 NFE: 1.44 (15 steps 1.53); exact 0.91
    # 100 steps, up from 50: 1.46 against 1.56 (exact: 1.00 against 1.17 at 50: 50 had not converged)
    ("ddim", {"steps": 100}),
    # rk45 at 1e-3 (44-50 NFE) against the default 1e-5 (80-140 NFE): 1.44 against 1.42; exact 0.91 / 0.92
    ("ode", {"rtol": 1e-3, "atol": 1e-3}),
    # the reverse SDE at 200 steps, down from 1000 (exact: 1.03, 1.03, 0.99 at 200): 1.80, 1.86, 1.91 against
    # 1.79, 1.79, 1.81 at 1000 (500: ~200's). Above the ODE solvers' ~1.45 at any step count: with the
    # learned score the SDE's end law is further from the truth than the ODE's (with the exact one both are at the floor)
    ("reverse_diffusion", {"steps": 200}),
    ("euler_maruyama", {"steps": 200}),
    ("ancestral", {"steps": 200}),
    # 100 steps, down from 500: 1.69 against 2.19 (more corrections at small noise move it off; exact 0.96 at 100)
    ("pc", {"steps": 100, "snr": 0.05}),
    # 20 Langevin steps per level (50 levels), down from the sampler's default 40: exact 1.03 (15: 1.23, 10: 1.28,
    # 5: 1.97; 25 levels of 20: 1.51); learned 2.44, against 3.27 at 40 (seed 100). With this model
    # longer chains at each level settle further into the learned density's errors
    ("annealed_langevin", {"steps": 20}),
    # one level (see run()): with the exact score it stops changing by 500 steps (8.95, 1000: 9.44): the chains
    # keep the prior's split between the basins of the modes; with the learned score they drift between modes
    # and away from the target shares the longer they run (down from 1000)
    ("langevin", {"steps": 500, "step_size": 0.003}),
]


N_PATHS = 60  # sampler paths drawn in trajectories.png
RECORD_LIMIT = 16_000  # n x D up to which the samples' own run keeps its paths: 64 MB for 1000 frames

EXAMPLES = [
    "scoregen demo --out scoregen-demo",
    "scoregen demo --out demo-moons --data moons --samplers dpmpp2m heun pc --no-progress",
]


def add_arguments(p):
    p.add_argument("--out", default="scoregen-demo", help="output folder (default: scoregen-demo)")
    p.add_argument("--data", default="seed", help="point data set or .npy/.csv file "
                   "(default: seed, the 3-Gaussian mixture)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the points preset's)")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--samplers", nargs="*", default=None, help="subset of samplers to run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="retrain even if OUT/run holds a finished run (a rerun "
                   "without it reuses OUT/run, and keeps the other samplers' entries of OUT/metrics.json)")
    from .common import add_progress_flag

    add_progress_flag(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for training, e.g. "
                   "train.lr=1e-3 (values read as YAML)")


def run(args):
    from scoregen import plots
    from scoregen.data.points import dataset_mixture, load_points, reference_sampler
    from scoregen.evaluation.metrics import EnergyDistanceTo, component_shares, noise_floor_to
    from scoregen.runs import config as C
    from scoregen.runs.recipe import train_run
    from scoregen.runs.run import Run

    clock = _Clock()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.name={args.data}", f"train.seed={args.seed}"] + list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = C.load_config("points", overrides)
    data = load_points(args.data)

    from .common import show_progress

    run_dir = out / "run"
    before = _trained_step(run_dir) if not args.fresh else None
    clock.lap()
    trainer = train_run(cfg, run_dir, resume=not args.fresh, progress=show_progress(args))
    train_seconds = clock.lap("train")
    reused = before is not None and before == trainer.step
    if reused:
        print(f"reusing the trained run in {run_dir} (step {trainer.step}); --fresh retrains it")
    elif before is not None:
        print(f"resumed the run in {run_dir} from step {before} to {trainer.step}")
    else:
        print(f"trained {run_dir} for {trainer.step} steps in {train_seconds:.1f} s")
    run = Run.open(out / "run")  # loaded once, sampled by every sampler below
    model, sde, normalizer = run.model, run.sde, run.normalizer

    ref_draw = reference_sampler(args.data)
    mixture = dataset_mixture(args.data)
    reference = torch.as_tensor(ref_draw(5000, 10_000 + args.seed) if ref_draw else data, dtype=torch.float64)
    ed_to_reference = EnergyDistanceTo(reference)  # the reference's own term computed once for every score below
    clock.lap("samplers")
    # the spread of the same statistic for fresh exact samples of n against this same reference
    floor = noise_floor_to(ed_to_reference, ref_draw, args.n, repeats=20) if ref_draw else None
    clock.lap("noise_floor")

    wanted = [s for s in DEMO_SAMPLERS if args.samplers is None or s[0] in args.samplers]
    results, panels, trajs = {}, {}, {}
    for name, opts in wanted:
        if name == "langevin":
            # plain Langevin at one noise level: std 0.05 (standardized units), where the learned score
            # is accurate (at t -> 0 its error grows like 1 / std); it cannot anneal from coarse to fine
            opts = {**opts, "t": round(float(sde.t_from_std(torch.tensor(0.05, dtype=torch.float64))), 5)}
        t1 = time.perf_counter()
        # one run gives the samples and the paths drawn in trajectories.png (its first N_PATHS), where
        # its every frame fits in memory; a second run of N_PATHS points cost as much per step (the
        # network's per-call overhead dominates at 60 points), 40% of the samplers' time
        record = args.n * data.shape[1] <= RECORD_LIMIT
        res = run.sample(args.n, name, seed=args.seed, return_trajectory=record, **opts)
        secs = time.perf_counter() - t1
        x = res.samples
        r = {"nfe": res.nfe, "seconds": round(secs, 3), "energy_distance": ed_to_reference(x), "options": opts}
        if mixture is not None:
            cs = component_shares(x, mixture)
            r["component_shares"], r["max_share_deviation"] = cs["shares"], cs["max_abs_deviation"]
        results[name] = r
        panels[name] = x
        trajs[name] = (res if record else run.sample(N_PATHS, name, seed=args.seed + 1, return_trajectory=True,
                                                     **opts)).trajectory[:, :N_PATHS]
        print(f"{name:18s} NFE {res.nfe:5d}  {secs:6.2f}s  energy distance {r['energy_distance']:.4f}"
              + (f"  shares {np.round(r['component_shares'], 3).tolist()}" if mixture is not None else ""))
    clock.lap("samplers")

    titles = {k: f"{k}\nNFE {v['nfe']}, energy distance {v['energy_distance']:.4f}" for k, v in results.items()}
    floor_txt = (f"; noise floor {floor['mean']:.4f}, p95 {floor['p95']:.4f}" if floor else "")
    pics = {
        "samples": plots.scatter_panels({"data": data, **panels}, out / "samples.png", reference=None,
                                        titles={"data": f"data ({len(data)} points)", **titles},
                                        suptitle=f"{args.n} samples per sampler; energy distance to {len(reference)} "
                                                 f"fresh data points (lower is better){floor_txt}"),
        "trajectories": plots.trajectories(trajs, out / "trajectories.png", reference=data),
        "loss": plots.loss_curve(trainer.loss_history, out / "loss.png"),
        "score_field": _score_field_picture(model, sde, normalizer, mixture, data, out / "score_field.png"),
    }
    clock.lap("pictures")
    seconds, cpu_seconds = clock.split()
    metrics = {
        "data": args.data, "n_data": len(data), "train_steps": trainer.step, "train_seconds": round(train_seconds, 2),
        "seconds": seconds, "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
        "final_loss": float(np.mean(trainer.loss_history[-500:])), "sde": sde.config(), "seed": args.seed,
        "n_samples": args.n, "n_reference": len(reference), "energy_distance_floor": floor,
        "target_shares": mixture.weights.tolist() if mixture is not None else None,
    }
    kept = _previous_results(out / "metrics.json", metrics) if reused else {}
    kept = {k: v for k, v in kept.items() if k not in results}
    if kept:
        print(f"kept the results of {', '.join(kept)} from the previous {out / 'metrics.json'} (same run, n and seed)")
    results = {**kept, **results}
    for r in results.values():
        r["at_noise_floor"] = bool(r["energy_distance"] <= floor["p95"]) if floor else None
    best, verdict = ranking(results, floor)
    metrics.update({"best_sampler": best, "verdict": verdict, "samplers": results,
                    "pictures": {k: str(v) for k, v in pics.items()}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(verdict)
    print(f"{seconds['total']:.1f} s ({cpu_seconds['total']:.1f} s of CPU) with {torch.get_num_threads()} thread(s): "
          + ", ".join(f"{k.replace('_', ' ')} {seconds[k]:.1f}" for k in ("train", "samplers", "noise_floor", "pictures")))
    print(f"wrote {out / 'metrics.json'} and pictures {', '.join(p.name for p in pics.values())}")


class _Clock:
    """Wall and process CPU seconds per phase of the demo (CPU time says what a phase costs where other
    jobs share the machine: with one thread it is about the wall time the phase takes on an idle core)."""

    def __init__(self):
        self.start = self.mark = (time.perf_counter(), time.process_time())
        self.wall, self.cpu = {}, {}

    def lap(self, phase: str | None = None) -> float:
        """Charge the time since the last lap to `phase` (None: to nothing); the wall seconds charged."""
        now = (time.perf_counter(), time.process_time())
        wall, cpu = now[0] - self.mark[0], now[1] - self.mark[1]
        if phase is not None:
            self.wall[phase] = self.wall.get(phase, 0.0) + wall
            self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu
        self.mark = now
        return wall

    def split(self) -> tuple[dict, dict]:
        now = (time.perf_counter(), time.process_time())
        wall = {k: round(v, 2) for k, v in {**self.wall, "total": now[0] - self.start[0]}.items()}
        cpu = {k: round(v, 2) for k, v in {**self.cpu, "total": now[1] - self.start[1]}.items()}
        return wall, cpu


def ranking(results: dict, floor: dict | None) -> tuple[str | None, str]:
    """(best sampler or None, the verdict in words). A sampler is at the noise floor when its energy
    distance is within the 95th percentile of the distance between two fresh samples of the data:
    samplers at the floor cannot be told apart at this n, so none of them is named best."""
    if not results:
        return None, "no sampler was run"
    order = sorted(results, key=lambda k: results[k]["energy_distance"])
    best = order[0]
    ed = results[best]["energy_distance"]
    if floor is None:
        return best, f"best sampler: {best}, energy distance {ed:.4f} (no noise floor for a data file)"
    at = [k for k in order if results[k]["energy_distance"] <= floor["p95"]]
    head = f"noise floor {floor['mean']:.4f} +- {floor['std']:.4f}, p95 {floor['p95']:.4f}"
    if len(at) == len(order) and len(order) > 1:
        return None, (f"all {len(order)} samplers are at the noise floor ({head}): no test on these samples "
                      "tells them apart, so none is best")
    if len(at) > 1:
        return None, (f"{len(at)} samplers are at the noise floor and cannot be told apart: {', '.join(at)} "
                      f"({head}); above it: {', '.join(k for k in order if k not in at)}")
    where = "at" if at else "above"
    return best, f"best sampler: {best}, energy distance {ed:.4f}, {where} the noise floor ({head})"


def _trained_step(run_dir: Path):
    """The step of the checkpoint in run_dir, None where there is none."""
    from scoregen.training.checkpoint import load_checkpoint

    if not (run_dir / "checkpoint.pt").exists():
        return None
    try:
        return int(load_checkpoint(run_dir)["step"])
    except (ValueError, FileNotFoundError, KeyError):
        return None


def _previous_results(path: Path, now: dict) -> dict:
    """The samplers of an earlier metrics.json of the same run, n, seed and data; {} otherwise."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = all(old.get(k) == now[k] for k in ("data", "train_steps", "n_samples", "seed"))
    return dict(old.get("samplers") or {}) if same else {}


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
    # one row per noise level: exact | learned when the law is known, else the learned fields in one row
    order = sorted(fields, key=lambda k: (float(k.rsplit(" ", 1)[1]), k.startswith("learned")))
    return plots.score_fields({k: fields[k] for k in order}, path, lo, hi, ncols=2 if mixture is not None else 3,
                              suptitle="score fields: directions, colour = log10 |score| (data units)")
