"""From a configuration (see `config`) to a trained run and its samples.

    cfg = config.load_config("points", ["data.name=moons"])
    trainer = train_run(cfg, "runs/moons")            # writes checkpoint.pt, config.yaml, metrics.jsonl
    x = sample_run("runs/moons", n=1000).samples       # in data units

A run folder holds `config.yaml` (the resolved configuration, the source of the run's defaults)
beside the trainer's `checkpoint.pt` and `metrics.jsonl`. Data are points (N, D) when
`data.name` is a point data set or a .npy/.csv file, images (N, C, H, W) otherwise.

Defaults that need no hand-tuning on point data (Song & Ermon 2020, technique 1, in the
standardized units the trainer works in): `sde.sigma_max: auto` is the largest pairwise
distance of the standardized data, so the VE prior N(0, sigma_max^2 I) is close to p_T.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.points import POINT_DATASETS, load_points, point_dataset_key, suggest_sigma_max, suggest_sigma_min
from ..models.edm import MODEL_CLASSES, estimate_sigma_data, model_class
from ..models.nets import build_net
from ..models.score import ScoreModel
from ..process.sde import make_sde
from ..sampling.samplers import SampleResult
from ..training.trainer import Normalizer, TrainConfig, Trainer
from . import config as C
from ..util import atomic_write
from .run import CONFIG_NAME, Run, load_run_config

__all__ = ["is_point_data", "absolute_data_name", "load_data", "build_sde", "build_model", "train_config",
           "train_run", "resume_config", "run_value_range", "load_run_config", "sample_run", "CONFIG_NAME",
           "consistency_recipe", "load_teacher", "consistency_objective"]


def is_point_data(name) -> bool:
    name = os.fspath(name)
    return point_dataset_key(name) is not None or name.lower().endswith((".npy", ".csv"))


def absolute_data_name(name):
    """A point file's absolute path (so a run folder works from any directory); any other name as it is."""
    if name is None or not is_point_data(name) or not str(name).lower().endswith((".npy", ".csv")):
        return name
    path = Path(os.fspath(name)).expanduser()
    return str(path.resolve()) if path.is_file() else name


def _with_absolute_data(cfg: dict) -> dict:
    data = cfg.get("data") or {}
    return {**cfg, "data": {**data, "name": absolute_data_name(data["name"])}} if data.get("name") else cfg


def load_data(data_cfg: dict):
    """(x, labels or None) for the `data` section: points (N, D) or images (N, C, H, W)."""
    d = dict(data_cfg)
    name = d.pop("name", None)
    if name is None:
        raise ValueError("the configuration names no data set: set data.name (e.g. --data seed)")
    if is_point_data(name):
        x = load_points(name, n=d.get("n"), seed=d.get("seed", 0) or 0)
        return torch.from_numpy(x), None
    from ..data.images import load_images

    keep = {k: v for k, v in d.items() if k not in ("n", "seed") and v is not None}
    try:
        return load_images(name, **keep)
    except ValueError as e:
        if "unknown image data set" not in str(e):
            raise
        raise ValueError(f"unknown data set {name!r}: not a point data set ({sorted(POINT_DATASETS)}, or a .npy/.csv "
                         f"file of shape (N, D)) nor an image data set ({str(e).split('choose one of ')[-1]})") from None


#: sigma_max: auto is this many times the largest pairwise distance (see build_sde)
SIGMA_MAX_FACTOR = 2.0
#: sigma_min: auto is never below this, in standardized units (see build_sde)
SIGMA_MIN_FLOOR = 0.01


def build_sde(sde_cfg: dict, data: torch.Tensor | None = None):
    """The forward process, with `auto` noise scales measured on the (standardized) data.

    sigma_max: auto -> SIGMA_MAX_FACTOR x the largest pairwise distance d_max (`data.suggest_sigma_max`).
        Song & Ermon (2020, technique 1) take sigma_max = d_max so that Langevin chains can mix
        between modes; a sampler that *starts* from the prior N(0, sigma_max^2 I) also needs
        p_{sigma_max} close to it, and their gap falls like sigma_max^-4. With the exact score of
        the suite's 2-D mixture, doubling d_max brought the energy distance of every sampler from
        2.1 to 1.8 times the floor (fresh samples: 1.5); it costs log 2 more of the log-sigma range.
    sigma_min: auto -> max(SIGMA_MIN_FLOOR, a tenth of the median nearest-neighbour distance)
        (`data.suggest_sigma_min`). Below the finest scale the N points resolve the minimiser of the
        training loss is the score of the training points themselves; in many dimensions that scale
        is coarse (0.13 standard deviations for 2000 points in D = 20). The floor 0.01 keeps dense,
        low-dimensional data from spending training on scales where smoothing the density by
        N(0, sigma_min^2 I) costs nothing measurable anyway: of order (sigma_min / s)^4 nats per
        coordinate of width s.
    """
    s = dict(sde_cfg)
    name = s.pop("name", "ve")
    for key in ("sigma_max", "sigma_min"):
        if s.get(key) == "auto" and data is None:
            raise ValueError(f"sde.{key}=auto needs the data to measure")
    flat = None if data is None else data.reshape(data.shape[0], -1).numpy()
    if s.get("sigma_max") == "auto":
        s["sigma_max"] = round(SIGMA_MAX_FACTOR * float(suggest_sigma_max(flat)), 4)
    if s.get("sigma_min") == "auto":
        s["sigma_min"] = float(f"{max(SIGMA_MIN_FLOOR, suggest_sigma_min(flat)):.4g}")
    return make_sde(name, **s)


def build_model(model_cfg: dict, sde, data_shape) -> ScoreModel:
    """The score model of the `model` section; `dim` of an MLP defaults to the data's.

    `parameterization: score` (default) wraps the net as ScoreModel(net, sde, cond, scale_by_std,
    scale_input); `parameterization: edm` as EDM's preconditioned denoiser EDMModel(net, sde,
    sigma_data), which fixes the net's input scaling and conditioning (c_in, c_noise = log(sigma) / 4)
    itself, so `cond`, `scale_by_std` and `scale_input` may not be set beside it.
    """
    m = dict(model_cfg)
    net_name = m.pop("net", "mlp")
    kind = m.pop("parameterization", "score") or "score"
    sigma_data = m.pop("sigma_data", None)
    wrap = {k: m.pop(k) for k in ("cond", "scale_by_std", "scale_input") if k in m}
    if kind not in MODEL_CLASSES:
        raise ValueError(f"model.parameterization={kind!r} is unknown: choose one of {sorted(MODEL_CLASSES)}")
    if kind != "score" and wrap:
        raise ValueError(f"model.parameterization={kind} sets the net's conditioning and scaling itself; "
                         f"remove model.{', model.'.join(sorted(wrap))}")
    if kind == "score" and sigma_data is not None:
        raise ValueError("model.sigma_data applies only to model.parameterization=edm or consistency")
    if net_name == "mlp":
        if len(data_shape) != 2:
            raise ValueError(f"the mlp network is for points (N, D); the data have shape {tuple(data_shape)}: "
                             "use an image network (model.net=unet or seed-unet)")
        if m.get("dim") not in (None, data_shape[1]):
            raise ValueError(f"model.dim={m['dim']} does not match the data dimension D={data_shape[1]}")
        m["dim"] = int(data_shape[1])
    net = build_net(net_name, **m)
    options = {"sigma_data": 0.5 if sigma_data is None else sigma_data} if kind != "score" else wrap
    return model_class(kind)(net, sde, **options)


def run_value_range(run_dir, value_range=None) -> tuple[float, float]:
    """`value_range` if given, else the run's data.value_range (config.yaml), else (0, 1).

    A run made by `train.train()` directly has no config.yaml: its images are in [0, 1].
    """
    from ..data.images import parse_value_range

    if value_range is not None:
        return parse_value_range(value_range)
    try:
        vr = (load_run_config(run_dir).get("data") or {}).get("value_range")
    except FileNotFoundError:
        vr = None
    return parse_value_range(vr) if vr is not None else (0.0, 1.0)


def train_config(cfg: dict, **changes) -> TrainConfig:
    loss = dict(cfg.get("loss") or {})
    name = loss.pop("name", "sde")
    return TrainConfig(**{**cfg.get("train", {}), "loss": name, "loss_options": loss, **changes})


def _write_config(run_dir: Path, cfg: dict):
    atomic_write(run_dir / CONFIG_NAME, C.dump_config(cfg))


#: what may change when a run resumes: the schedule and bookkeeping, never the model, data or loss
#: (grad_accum and micro_batch split the same batch differently: the same step up to float rounding, like device)
RESUMABLE = {"train": {"steps", "lr", "lr_decay", "decay_start", "ema_decay", "grad_clip", "checkpoint_every",
                       "log_every", "callback_every", "device", "progress", "patience", "grad_accum",
                       "micro_batch", "tensorboard", "posthoc_every"},
             "data": {"data_dir"}, "sample": None}  # None: every key


def resume_config(saved: dict, overrides) -> dict:
    """The saved recipe of a run with `overrides` applied, refusing changes outside RESUMABLE.

    An override that repeats the saved value is accepted whatever its key, so rerunning the
    command that started a run resumes it.
    """
    cfg = C.apply_overrides(saved, overrides)
    fixed = [f"{s}.{k}" for s in C.SECTIONS for k in sorted(set(saved.get(s) or {}) | set(cfg.get(s) or {}))
             if (saved.get(s) or {}).get(k) != (cfg.get(s) or {}).get(k) and not _resumable(s, k)]
    if fixed:
        allowed = sorted(f"{s}.{k}" for s, keys in RESUMABLE.items() for k in (keys or ["*"]))
        raise ValueError(f"a resumed run keeps its model, data and loss, but the overrides change {fixed} "
                         f"(saved: {[_lookup(saved, key) for key in fixed]}); start a new run with another "
                         f"--out (or --fresh). Changeable on resume: {allowed}")
    C.validate_config(cfg)
    return cfg


def _resumable(section: str, key: str) -> bool:
    return section in RESUMABLE and (RESUMABLE[section] is None or key in RESUMABLE[section])


def _lookup(cfg: dict, key: str):
    section, name = key.split(".", 1)
    return (cfg.get(section) or {}).get(name)


def train_run(cfg: dict, run_dir, *, resume: bool = True, overrides=None, callback=None,
              progress: bool = True) -> Trainer:
    """Train the configured model on the configured data into `run_dir` (resuming if it holds a run).

    A resumed run keeps its saved recipe: with `overrides` (the `key=value` list that made `cfg`)
    those are applied to it, within RESUMABLE (e.g. a longer run with a learning-rate cool-down:
    train.steps, train.lr_decay, train.decay_start); without, only train.steps is taken from `cfg`.
    """
    run_dir = Path(run_dir)
    if resume and (run_dir / CONFIG_NAME).exists():
        if overrides is None:
            steps = cfg.get("train", {}).get("steps")
            overrides = [] if steps is None else [f"train.steps={steps}"]
        overrides = [f"data.name={absolute_data_name(o.split('=', 1)[1])}" if o.startswith("data.name=") else o
                     for o in overrides]
        cfg = resume_config(_with_absolute_data(load_run_config(run_dir)), overrides)
    cfg = consistency_recipe(_with_absolute_data(cfg))  # a data file is recorded by its absolute path
    x, labels = load_data(cfg["data"])
    tc = train_config(cfg, progress=progress)
    teacher = load_teacher(cfg)
    normalizer = teacher[2] if teacher else Normalizer.fit(x) if tc.normalize else Normalizer()
    cfg = dict(cfg, sde=dict(cfg["sde"]), model=dict(cfg["model"]))
    sde = build_sde(cfg["sde"], normalizer(x))
    cfg["sde"] = sde.config()  # record the resolved values (sigma_max: auto -> a number)
    if cfg["model"].get("parameterization") == "consistency" and cfg["model"].get("sigma_data", "auto") == "auto":
        cfg["model"]["sigma_data"] = round(estimate_sigma_data(normalizer(x)), 4)  # the data's std, in model units
    torch.manual_seed(tc.seed)  # the net's initial weights and fixed Fourier features come from the global RNG
    model = build_model(cfg["model"], sde, tuple(x.shape))
    loss = consistency_objective(cfg, model, teacher) if cfg["loss"].get("name") == "consistency" else None
    use_labels = labels if getattr(model.net, "n_classes", 0) else None
    trainer = Trainer(model, x, tc, run_dir, labels=use_labels, normalizer=normalizer, callback=callback,
                      resume=resume, loss=loss)
    _write_config(run_dir, cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


# --- consistency models (training.consistency): from data, or distilled / tuned from a teacher run ---------
def consistency_recipe(cfg: dict) -> dict:
    """`loss.name: consistency` trains a consistency model: model.parameterization becomes consistency
    (sigma_data measured unless given) and the run samples with `consistency` in 2 steps, unless the
    config says otherwise."""
    if (cfg.get("loss") or {}).get("name") != "consistency":
        return cfg
    model = dict(cfg.get("model") or {})
    if model.get("parameterization", "score") == "score":
        for key in ("cond", "scale_by_std", "scale_input"):
            model.pop(key, None)
        model.update(parameterization="consistency", sigma_data=model.get("sigma_data", "auto"))
    elif model["parameterization"] != "consistency":
        raise ValueError(f"loss.name=consistency trains a consistency model, but model.parameterization="
                         f"{model['parameterization']!r}; set model.parameterization=consistency")
    sample = dict(cfg.get("sample") or {})
    if sample.get("sampler") != "consistency":
        sample = {**{k: v for k, v in sample.items() if k in C.SAMPLE_KEYS}, "sampler": "consistency", "steps": 2}
    return dict(cfg, model=model, sample=sample)


def load_teacher(cfg: dict):
    """(model, sde, normalizer, meta) of `loss.teacher` (a run, export or diffusers folder), or None."""
    path = (cfg.get("loss") or {}).get("teacher")
    if path is None:
        return None
    from .run import load_run_parts

    try:
        parts = load_run_parts(path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"loss.teacher={path!r} is not a score model to distill: {e}") from None
    if getattr(parts[0], "parameterization", None) == "consistency":
        raise ValueError(f"loss.teacher={path!r} is a consistency model; distill a score model (a trained run)")
    return parts


def consistency_objective(cfg: dict, model, teacher=None):
    """The consistency loss of cfg["loss"] (sigma_data: the model's), with the teacher run's score function
    if there is one (`load_teacher`); the student starts
    from the teacher's weights when the two networks are the same and the teacher is EDM-preconditioned
    (the consistency preconditioning agrees with EDM's for sigma >> sigma_min)."""
    from ..training.losses import make_loss

    options = {k: v for k, v in cfg["loss"].items() if k not in ("name", "teacher")}
    options.setdefault("sigma_data", model.sigma_data)
    if teacher is None:
        return make_loss("consistency", model.sde, **options)
    t_model, t_sde = teacher[0], teacher[1]
    if t_sde.config() != model.sde.config():
        raise ValueError(f"the teacher's SDE {t_sde.config()} differs from the student's {model.sde.config()}; "
                         "leave the sde section as `scoregen distill` wrote it")
    if getattr(t_model, "parameterization", None) == "edm" and t_model.config()["net"] == model.config()["net"]:
        model.net.load_state_dict(t_model.net.state_dict())
    return make_loss("consistency", model.sde, teacher=t_model.score_fn(), **options)


def sample_run(run_dir, n: int | None = None, sampler: str | None = None, *, steps: int | None = None,
               seed: int | None = None, batch_size: int | None = None, device="cpu", progress: bool = False,
               return_trajectory: bool = False, label: int | None = None, guidance: float | None = None,
               ema_sigma_rel: float | None = None, ema_step: int | None = None, **options) -> SampleResult:
    """Samples in data units from a trained run, with the run's configured sampler by default
    (`Run.open(run_dir, device).sample(...)`: open the Run once to sample a run several times).
    ema_sigma_rel / ema_step: sample the post-hoc EMA of that length (`Run`).

    With `label`, the class-conditional score s(x, t, y); with `guidance` w as well, the
    classifier-free guided score s(x, t) + w [s(x, t, y) - s(x, t)] (see `guidance`).
    """
    run = Run.open(run_dir, device=device, ema_sigma_rel=ema_sigma_rel, ema_step=ema_step)
    return run.sample(n, sampler, steps=steps, seed=seed, batch_size=batch_size, progress=progress,
                      return_trajectory=return_trajectory, label=label, guidance=guidance, **options)
