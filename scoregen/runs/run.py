"""A trained run folder as one object: config and checkpoint loaded once, then scored and sampled many times.

    from scoregen.runs import Run
    run = Run.open("runs/moons")                          # config.yaml + checkpoint.pt (EMA weights)
    x = run.sample(1000).samples                          # the run's own sampler, in data units
    y = run.sample(1000, "ddim", steps=20, seed=1).samples
    score = run.score_fn(label=3, guidance=2.0)           # (x, t) -> score, in model units
    run = Run.open("runs/moons", ema_sigma_rel=0.08)      # the post-hoc EMA of that length (posthoc_ema)

The model scores normalized data ("model units"); `to_model_units` / `to_data_units` apply the run's
normalizer and its inverse. `recipe.sample_run(run_dir, ...)` is `Run.open(run_dir).sample(...)`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.images import parse_value_range
from ..sampling.samplers import SampleResult, get_sampler
from ..interop.folders import folder_config, open_folder
from ..training.posthoc_ema import check_fit, combination, reconstruct
from ..training.trainer import load_run
from . import config as C

__all__ = ["Run", "CONFIG_NAME", "load_run_config", "load_run_parts"]

CONFIG_NAME = "config.yaml"


def load_run_config(run_dir) -> dict:
    """RUN_DIR's config.yaml; for a scoregen export or a diffusers folder, the config `interop.folders`
    gives it (without loading its weights)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.exists():
        foreign = folder_config(run_dir)
        if foreign is not None:
            return foreign
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a scoregen run folder "
                                "(make one with `scoregen train --out RUN_DIR`)")
    return C.parse_value(path.read_text(), str(path))  # YAML read as config files are (1e-4 a float)


def load_run_parts(run_dir, device="cpu"):
    """(model, sde, normalizer, meta) of RUN_DIR, as `training.trainer.load_run` gives them for a run folder,
    for an export or a diffusers folder as well."""
    parts = open_folder(run_dir, device=device)
    return parts[:4] if parts is not None else load_run(run_dir, device=device)


class Run:
    """A loaded run: `config` (its config.yaml), `model` (EMA weights, eval mode), `sde`, `normalizer`,
    `meta` (step, train_config, loss_history, data_shape, run_dir), `shape` (one example's shape),
    `points` (point data rather than images), `value_range` (of the images' data units) and `device`.

    A RUN_DIR may also be a scoregen export (`scoregen export`) or a diffusers folder (a saved pipeline or
    unet/ + scheduler/): `interop.folders` loads those, and `meta["source"]` says which it was.

    ema_sigma_rel: load the post-hoc EMA of that relative length at `ema_step` (default: the last
    snapshot) instead of the run's EMA weights, reconstructed from RUN_DIR/posthoc_ema/ by least squares
    (`training.posthoc_ema`); `meta["posthoc_ema"]` then holds its sigma_rel, step and fit residual.
    """

    def __init__(self, run_dir, device="cpu", *, ema_sigma_rel: float | None = None, ema_step: int | None = None):
        self.dir = Path(run_dir)
        parts = open_folder(self.dir, device=device)
        if parts is not None:
            self.model, self.sde, self.normalizer, self.meta, self.config = parts
        else:
            self.config = load_run_config(self.dir)
            self.model, self.sde, self.normalizer, self.meta = load_run(self.dir, device=device)
        if ema_sigma_rel is not None or ema_step is not None:
            self._use_posthoc_ema(ema_sigma_rel, ema_step, foreign=parts is not None)
        self.device = device
        self.shape = tuple(self.meta["data_shape"][1:])
        self.points = len(self.shape) == 1
        self.value_range = parse_value_range((self.config.get("data") or {}).get("value_range") or (0, 1))

    @classmethod
    def open(cls, run_dir, device="cpu", *, ema_sigma_rel: float | None = None, ema_step: int | None = None) -> "Run":
        """Load RUN_DIR's config.yaml and checkpoint.pt once (or an export's or a diffusers folder's parts)."""
        return cls(run_dir, device=device, ema_sigma_rel=ema_sigma_rel, ema_step=ema_step)

    def _use_posthoc_ema(self, sigma_rel, step, foreign: bool) -> None:
        if sigma_rel is None:
            raise ValueError(f"an EMA step ({step}) was given without an EMA length: give ema_sigma_rel too")
        if foreign:
            raise ValueError(f"{self.dir} is a {self.meta.get('source')} folder; post-hoc EMA needs a scoregen run "
                             "folder with posthoc_ema/ snapshots (train with train.posthoc_ema=[0.05,0.1])")
        plan = check_fit(combination(self.dir, sigma_rel, step))
        self.model.load_state_dict(reconstruct(self.dir, sigma_rel, step, plan=plan))
        self.meta["posthoc_ema"] = {"sigma_rel": plan["sigma_rel"], "step": plan["step"],
                                    "snapshots": len(plan["files"]), "relative_residual": plan["relative_residual"]}

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, step={self.meta['step']}, shape={self.shape}, sde={self.sde!r})"

    # --- units ----------------------------------------------------------------------------------
    def to_model_units(self, x: torch.Tensor) -> torch.Tensor:
        """Data (N, ...) in the run's data units -> the normalized units the model scores, on its device."""
        return self.normalizer(torch.as_tensor(x).to(self.device))

    def to_data_units(self, z: torch.Tensor) -> torch.Tensor:
        """Model units -> the run's data units, on the CPU."""
        return self.normalizer.inverse(z).cpu()

    # --- scores and samples -----------------------------------------------------------------------
    def score_fn(self, label=None, guidance: float | None = None):
        """(x, t) -> score in model units: unconditional; with `label`, s(x, t, y); with `guidance` w as
        well, the classifier-free guided s(x, t) + w [s(x, t, y) - s(x, t)] (`steering.guidance`)."""
        if label is None and guidance is None:
            return self.model.score_fn()
        from ..steering.guidance import guided_score_fn  # steering sits below runs; imported when asked for

        return guided_score_fn(self.model, label, guidance, train_config=self.meta["train_config"])

    def sample(self, n: int | None = None, sampler: str | None = None, *, steps: int | None = None,
               seed: int | None = None, batch_size: int | None = None, progress: bool = False,
               return_trajectory: bool = False, label=None, guidance: float | None = None,
               **options) -> SampleResult:
        """Samples in data units, with the run's configured sampler (and its options) by default.

        n, batch_size and seed default to the config's `sample` section (1000, n, 0); `steps` and
        `options` go to the sampler; `label`/`guidance` as in `score_fn`.
        """
        score_fn = self.score_fn(label, guidance)
        sc = dict(self.config.get("sample") or {})
        name = sampler or sc.pop("sampler", "pc")
        fn = get_sampler(name)
        if sampler is None:  # the run's own sampler options apply only to its own sampler
            options = {**{k: v for k, v in sc.items() if k not in C.SAMPLE_KEYS}, **options}
        if get_sampler(name) is get_sampler("consistency") and hasattr(self.model, "sigma_data"):
            options.setdefault("sigma_data", self.model.sigma_data)  # its multistep levels scale with the data
        C.check_sampler_options(name, options)
        n = int(n if n is not None else sc.get("n", 1000))
        batch = int(batch_size or sc.get("batch_size", n))
        if n < 1 or batch < 1:
            raise ValueError(f"the number of samples and the batch size must be positive integers, got n={n}, "
                             f"batch_size={batch}")
        if steps is not None:
            options["steps"] = int(steps)
        device, shape, sde = self.device, self.shape, self.sde
        g = torch.Generator(device=device).manual_seed(int(seed if seed is not None else sc.get("seed", 0)))
        outs, nfe, trajs = [], 0, []
        for start in range(0, n, batch):
            b = min(batch, n - start)
            x = sde.prior_sample((b,) + shape, generator=g, device=device)
            with torch.no_grad():  # a guided score that needs gradients enables them itself
                res = fn(score_fn, sde, x, generator=g, progress=progress, return_trajectory=return_trajectory,
                         **options)
            outs.append(self.to_data_units(res.samples))
            nfe = res.nfe
            if return_trajectory:
                trajs.append(res.trajectory)
        traj = None
        if return_trajectory:
            traj = self.to_data_units(torch.cat(trajs, dim=1).reshape(-1, *shape)).reshape(len(trajs[0]), n, *shape)
        return SampleResult(torch.cat(outs), nfe, traj, res.times if return_trajectory else None)
