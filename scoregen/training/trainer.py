"""The trainer: a ScoreModel, an objective from `losses`, and a data tensor of any shape (N, ...).

    trainer = train(model, data, TrainConfig(steps=2000, loss="sde"), run_dir="runs/mix")
    model, sde, normalizer, meta = load_run("runs/mix")          # EMA weights, ready to sample

What one step does (Song et al. 2021's recipe): draw a batch of indices and all the loss's noise
from one seeded CPU `torch.Generator`, take an Adam step on the objective (learning rate warmed up
linearly, gradient norm clipped), then update the exponential moving average (EMA) of the weights,
theta_ema <- d theta_ema + (1 - d) theta with d = min(ema_decay, (1 + n) / (10 + n)). Samplers use
the EMA weights.

Held-out selection (`validation` > 0): a fixed, seeded fraction of the examples is kept out of
training; every `validate_every` steps the EMA model's loss on it is measured with noise drawn once
(common random numbers, so two evaluations differ only through the weights), the best EMA weights
so far are kept, and training stops early after `patience` evaluations without improvement. The run
then samples with the best weights. This is early stopping (Prechelt 1998) on the score-matching
objective itself: with the sigma^2 weighting it is, for VE, the likelihood weighting of Song,
Durkan, Murray & Ermon (2021), so the kept weights minimise a held-out bound on the NLL. It is
what keeps a network from memorising few points in many dimensions (at noise levels far below
the nearest-neighbour distance the minimiser of the *training* objective is the score of the
empirical distribution) without a step count tuned to the data.

Exact resume: the checkpoint holds weights, EMA, optimizer moments, the generator's state, the
step and the loss history (and the best held-out loss and weights), so training K steps, stopping and resuming to 2K gives bit-identical
weights to training 2K steps straight.

Distributed: under `torchrun --nproc_per_node=K` (WORLD_SIZE > 1 in the environment) the same
entry point runs DistributedDataParallel (gloo on CPU, nccl on GPU). Every rank draws the same
*global* batch and noise from the shared generator and keeps its 1/K shard, so K processes follow
the same trajectory as one process on the whole batch; rank 0 alone writes checkpoints and logs.

Gradient accumulation (`grad_accum` = K > 1): the step draws the same global batch and noise as
with K = 1, splits this rank's shard of n examples into K micro-batches of n_i examples and
backpropagates each one's mean loss weighted by n_i / n, so the summed gradient is
sum_i (n_i / n) mean_i = (1/n) sum_j loss_j, the gradient of the mean over the whole batch; then one
clip, one Adam step, one EMA update. K = 1 and K > 1 follow the same trajectory up to the order of
floating-point sums, with 1/K of the activations in memory. Under DDP all but the last
micro-batch run under `no_sync()`, so gradients are all-reduced once per step.

A per-device cap (`micro_batch` = m): K = ceil(n / m) micro-batches of near-equal size (n = batch_size
/ processes; the first n mod K hold one example more, so none exceeds m), e.g. n = 10, m = 4 ->
4, 3, 3; held-out measurements go in pieces of at most m too. grad_accum then stays 1 (the default)
or equals that K. `micro_batches(n, grad_accum, micro_batch)` gives the sizes; each log record
states K as `micro_batches`.

Post-hoc EMA (`posthoc_ema` = [sigma_rel, ...], Karras et al. 2024): besides the EMA above, one
power-function EMA per sigma_rel is updated after every step, and every `posthoc_every` steps (and at
the end) they are written to RUN_DIR/posthoc_ema/; `posthoc_ema.reconstruct(run_dir, sigma_rel)` then
gives the EMA of any length by least squares (see that module). The tracks are in the checkpoint, so
resuming is exact; snapshots past the checkpoint's step are deleted on resume, like the log lines.

TensorBoard (`tensorboard` = True): each log record's loss, lr, grad_norm, examples_per_s and
val_loss also go to RUN_DIR/tensorboard/ as scalars (needs `pip install tensorboard`);
RUN_DIR/metrics.jsonl stays the record.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..models.edm import model_from_config
from ..models.score import ScoreModel
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .losses import make_loss
from .posthoc_ema import PowerEMA, check_sigma_rel, save_snapshot, trim_snapshots

__all__ = ["TrainConfig", "micro_batches", "Normalizer", "Trainer", "train", "load_run", "METRICS_NAME"]

METRICS_NAME = "metrics.jsonl"
LR_DECAYS = ("constant", "linear", "cosine")
RUN_KIND = "scoregen-run"
_HOLD_OUT_STREAM = 0x7A11  # seed offset of the held-out split, apart from the training generator's
_VAL_STREAM = 0x7A12  # and of the held-out noise
_VAL_EXAMPLES = 4096  # held-out examples x noise draws per measurement (repeats of a small held-out set)
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_TAGS = ("loss", "lr", "grad_norm", "examples_per_s", "val_loss")  # the log record's keys written as scalars


class TensorBoardMissing(ImportError, ValueError):
    """tensorboard=True without the tensorboard package."""


@dataclass
class TrainConfig:
    """Everything that decides a training run besides the model and the data.

    batch_size is the global batch (split over DDP ranks); grad_clip <= 0 and ema_decay = 0
    switch clipping and averaging off; checkpoint_every = 0 saves only at the end; amp runs the
    forward pass and the loss under bf16 autocast on any device (parameters, gradients and Adam stay
    fp32; a CPU with AMX or AVX512-bf16 trains mnist-edm 1.5x faster); weight_decay is Adam's L2
    penalty. grad_accum = K splits each step's batch into K micro-batches (same data and noise, same
    update up to float rounding, 1/K of the activation memory; batch_size must be divisible by K times
    the number of processes). micro_batch = m (None: no cap) is the most examples one process puts
    through one forward or backward pass: K = ceil(batch_size / processes / m) near-equal
    micro-batches, for any batch size; with it, grad_accum must be 1 (the default) or that K.
    tensorboard also writes the logged scalars to RUN_DIR/tensorboard/.
    validation is the held-out fraction of the examples (0: none), measured every
    validate_every steps; patience > 0 stops after that many measurements without a new best
    (see the module docstring). posthoc_ema lists the sigma_rels of power-function EMAs tracked for
    post-hoc EMA (empty: none), snapshotted every posthoc_every steps (see the module docstring).
    The learning rate warms up linearly over `warmup` steps, then stays at lr ("constant")
    or anneals to 0 at `steps` ("linear", "cosine") from step max(warmup, decay_start): a cool-down
    that can be added when resuming.
    """

    steps: int = 2000
    batch_size: int = 256
    grad_accum: int = 1
    micro_batch: int | None = None
    lr: float = 2e-3
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup: int = 0
    lr_decay: str = "constant"
    decay_start: int = 0
    ema_decay: float = 0.999
    seed: int = 0
    loss: str = "sde"
    loss_options: dict = field(default_factory=dict)
    normalize: bool = True
    label_dropout: float = 0.0
    checkpoint_every: int = 1000
    log_every: int = 100
    callback_every: int = 0
    tensorboard: bool = False
    amp: bool = False
    validation: float = 0.0
    validate_every: int = 250
    patience: int = 0
    posthoc_ema: list = field(default_factory=list)
    posthoc_every: int = 1000
    compile: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        self.loss_options = dict(self.loss_options)
        positive = ("batch_size", "grad_accum", "log_every", "validate_every", "posthoc_every")
        for name in ("steps", "batch_size", "grad_accum", "warmup", "decay_start", "seed", "checkpoint_every", "log_every",
                     "callback_every", "validate_every", "patience", "posthoc_every"):
            v = getattr(self, name)
            if not _is_int(v) or v < (1 if name in positive else 0):
                raise ValueError(f"TrainConfig.{name} must be a non-negative integer"
                                 f"{' >= 1' if name in positive else ''}, got {v!r}")
            setattr(self, name, int(v))  # 4.0 -> 4: slices and sizes need ints
        if self.micro_batch is not None:
            if not _is_int(self.micro_batch) or self.micro_batch < 1:
                raise ValueError(f"TrainConfig.micro_batch must be null (no cap) or an integer >= 1 (the most "
                                 f"examples per forward/backward on one device), got {self.micro_batch!r}")
            self.micro_batch = int(self.micro_batch)
        if not 0 <= self.validation < 1:
            raise ValueError(f"TrainConfig.validation must lie in [0, 1) (the held-out fraction), got {self.validation!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"TrainConfig.lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"TrainConfig.label_dropout must lie in [0, 1), got {self.label_dropout!r}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.posthoc_ema, (list, tuple)):
            raise ValueError(f"TrainConfig.posthoc_ema must be a list of sigma_rels (e.g. [0.05, 0.1]), "
                             f"got {self.posthoc_ema!r}")
        self.posthoc_ema = [check_sigma_rel(s, "TrainConfig.posthoc_ema entry") for s in self.posthoc_ema]
        if len(set(self.posthoc_ema)) != len(self.posthoc_ema):
            raise ValueError(f"TrainConfig.posthoc_ema lists a sigma_rel twice: {self.posthoc_ema}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; accepted: {sorted(known)}")
        return cls(**d)


def _is_int(v) -> bool:
    """An integral number (4 or 4.0), not a bool or a string."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and int(v) == v


def micro_batches(n: int, grad_accum: int = 1, micro_batch: int | None = None) -> list[int]:
    """The sizes of the micro-batches one process splits its n examples into, in order.

    Without a cap, grad_accum = K equal pieces (n divisible by K). With micro_batch = m,
    K = ceil(n / m) near-equal pieces: q = n // K each, the first n mod K one more, so every piece
    is at most m (ceil(n / K) <= m); grad_accum must then be 1 (the default) or that K.
    """
    if micro_batch is None:
        if n % grad_accum:
            raise ValueError(f"{n} examples per process cannot be split into grad_accum={grad_accum} equal "
                             f"micro-batches")
        return [n // grad_accum] * grad_accum
    k = -(-n // micro_batch)
    if grad_accum not in (1, k):
        raise ValueError(f"grad_accum={grad_accum} and micro_batch={micro_batch} disagree: {n} examples per process "
                         f"in pieces of at most {micro_batch} make {k} micro-batches; set grad_accum={k}, or "
                         f"grad_accum=1 to let micro_batch choose, or micro_batch=null")
    q, r = divmod(n, k)
    return [q + 1] * r + [q] * (k - r)


class Normalizer:
    """x -> (x - mean) / scale and back; mean per feature (axis 1: coordinate or channel), scale a scalar.

    Points (N, D) get a per-coordinate mean, images (N, C, H, W) a per-channel one; one scalar
    scale keeps the geometry (isotropic noise stays isotropic).
    """

    def __init__(self, mean=0.0, scale: float = 1.0):
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"Normalizer scale must be a finite number > 0, got {scale!r}")
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.scale = scale

    @classmethod
    def fit(cls, data: torch.Tensor) -> "Normalizer":
        """Mean over every axis but 1, scale = root mean square of the centred data."""
        x = torch.as_tensor(data, dtype=torch.float64)
        if x.dim() < 2:
            raise ValueError(f"data must have shape (N, D) or (N, C, ...), got {tuple(x.shape)}")
        axes = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=axes, keepdim=True)
        scale = float((x - mean).pow(2).mean().sqrt())
        return cls(mean[0].float(), scale if scale > 0 else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device, x.dtype)) / self.scale

    __call__ = forward

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.mean.to(z.device, z.dtype)

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "scale": self.scale}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Normalizer":
        return cls(state["mean"], state["scale"])

    def __repr__(self) -> str:
        return f"Normalizer(mean shape {tuple(self.mean.shape)}, scale={self.scale:.4g})"


def _dist_info(device_pref: str):
    """(rank, world, device, created_group): joins the torchrun process group when there is one."""
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
        created = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if device_pref == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if world > 1 else "cuda") \
            if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(device_pref)
    return rank, world, device, created


def _adam(params, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with its fused kernel where this torch has one for the device (a third fewer ops per step
    on small point networks, where dispatch dominates), else the multi-tensor one."""
    kw = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, foreach=True, **kw)


class Trainer:
    """Holds model, EMA copy, optimizer, generator and history; `fit()` trains to config.steps.

    model: a ScoreModel (its net from `nets.build_net`); data: (N, ...) tensor or array, raw
    (it is normalized here); labels: optional (N,) class indices for a class-conditional net;
    normalizer: given, else fitted when config.normalize, else identity; callback(trainer, step)
    runs on rank 0 every config.callback_every steps. With a run_dir holding a checkpoint and
    resume=True, training continues from it.
    """

    def __init__(self, model: ScoreModel, data, config: TrainConfig | None = None, run_dir=None, *,
                 labels=None, normalizer: Normalizer | None = None, callback=None, resume: bool = True,
                 loss=None):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"Trainer needs a scoregen.models.ScoreModel, got {type(model).__name__}")
        self.config = cfg = config if config is not None else TrainConfig()
        self.rank, self.world, self.device, self._created_group = _dist_info(cfg.device)
        if cfg.micro_batch is None and cfg.batch_size % (cfg.grad_accum * self.world):
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by grad_accum x processes = "
                             f"{cfg.grad_accum} x {self.world} = {cfg.grad_accum * self.world} (each process's "
                             f"share of the batch is split into grad_accum equal micro-batches)")
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {self.world} processes "
                             f"(each takes an equal share)")
        self.micro_batches = micro_batches(cfg.batch_size // self.world, cfg.grad_accum, cfg.micro_batch)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.writer = None  # the TensorBoard SummaryWriter, opened by fit() on rank 0
        if cfg.tensorboard:
            if self.run_dir is None:
                raise ValueError("tensorboard=True writes into RUN_DIR/tensorboard/: give a run_dir")
            try:
                import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
            except ImportError:
                raise TensorBoardMissing("tensorboard=True needs the tensorboard package: pip install tensorboard "
                                         "(or pip install \"scoregen[tensorboard]\")") from None
        self.callback = callback
        self.model_config = model.config()  # fails early if the net cannot be checkpointed

        raw = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data).float().cpu()
        if raw.dim() < 2 or raw.shape[0] < 1:
            raise ValueError(f"data must have shape (N, ...) with N >= 1, got {tuple(raw.shape)}")
        self.normalizer = normalizer or (Normalizer.fit(raw) if cfg.normalize else Normalizer())
        self.data_shape = list(raw.shape)
        self.data = self.normalizer(raw).to(self.device)
        self.labels = self._check_labels(labels, model, raw.shape[0])
        self.val_data, self.val_labels = self._hold_out()

        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.posthoc = PowerEMA(self.model, cfg.posthoc_ema) if cfg.posthoc_ema else None
        self._snapshot_step = None  # the step of the last post-hoc EMA snapshot written
        # an objective built by the caller (one holding a teacher score function) or from the config
        self.loss = loss if loss is not None else make_loss(cfg.loss, model.sde, **cfg.loss_options)
        self.optimizer = _adam(self.model.parameters(), cfg)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self.step, self.loss_history, self._pending = 0, [], []
        self.best = {"val_loss": math.inf, "step": 0, "ema": None, "since": 0, "stopped": False}
        self._val_draws = None
        if resume and self.run_dir is not None and (self.run_dir / CHECKPOINT_NAME).exists():
            self.load_state_dict(load_checkpoint(self.run_dir / CHECKPOINT_NAME))
        self.forward_model = self.model
        self._ddp = None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = self._ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.forward_model = torch.compile(self.forward_model)

    @staticmethod
    def _check_labels(labels, model, n):
        if labels is None:
            return None
        n_classes = getattr(model.net, "n_classes", 0)
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if n_classes < 1:
            raise ValueError("labels were given but the network is unconditional (build it with n_classes > 0)")
        if y.shape != (n,) or y.dtype.is_floating_point or int(y.min()) < 0 or int(y.max()) >= n_classes:
            raise ValueError(f"labels must be ({n},) integers in [0, {n_classes}), got {y.dtype} {tuple(y.shape)}")
        return y.long()

    def _hold_out(self):
        """Split off config.validation of the examples by a seeded permutation: (val data, val labels).

        self.data (and self.labels) keep the rest; the split depends only on the seed and N, so a
        resumed run splits the same way.
        """
        frac = self.config.validation
        if frac <= 0:
            return None, None
        n = self.data.shape[0]
        n_val = int(round(frac * n))
        if n_val < 1 or n - n_val < 1:  # too few examples to spare any: train on all of them
            warnings.warn(f"validation={frac} of {n} examples leaves {n_val} to validate and {n - n_val} to train "
                          "on; training on all of them without early stopping", stacklevel=3)
            return None, None
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(self.config.seed) + _HOLD_OUT_STREAM))
        val, keep = perm[:n_val], perm[n_val:]
        val_data, self.data = self.data[val.to(self.device)], self.data[keep.to(self.device)]
        val_labels = None
        if self.labels is not None:
            val_labels, self.labels = self.labels[val], self.labels[keep]
        return val_data, val_labels

    # --- one step ------------------------------------------------------------------------
    def _batch(self):
        """This rank's shard of the global batch: (x0, draws, y), all from the shared generator."""
        cfg, g = self.config, self.generator
        idx = torch.randint(0, self.data.shape[0], (cfg.batch_size,), generator=g)
        x0 = self.data[idx.to(self.device)]
        draws = self.loss.draw(x0, g)
        y = None
        if self.labels is not None:
            y = self.labels[idx]
            if cfg.label_dropout > 0:  # classifier-free guidance: the null label n_classes
                drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
                y = torch.where(drop, torch.full_like(y, self.model.net.n_classes), y)
            y = y.to(self.device)
        if self.world > 1:
            b = cfg.batch_size // self.world
            sl = slice(self.rank * b, (self.rank + 1) * b)
            x0, draws = x0[sl], {k: v[sl] for k, v in draws.items()}
            y = None if y is None else y[sl]
        return x0, draws, y

    @torch.no_grad()
    def validate(self) -> float:
        """The EMA model's mean loss on the held-out examples, with noise drawn once for the whole run."""
        if self.val_data is None:
            raise ValueError("this trainer holds no validation data (TrainConfig.validation = 0)")
        if self._val_draws is None:
            reps = max(1, math.ceil(_VAL_EXAMPLES / self.val_data.shape[0]))
            x = self.val_data.repeat(reps, *[1] * (self.val_data.dim() - 1))
            y = None if self.val_labels is None else self.val_labels.repeat(reps).to(self.device)
            g = torch.Generator().manual_seed(int(self.config.seed) + _VAL_STREAM)
            self._val_draws = (x, self.loss.draw(x, g), y)
        x, draws, y = self._val_draws
        b, total = min(self.config.batch_size, self.config.micro_batch or math.inf), 0.0
        self.ema.eval()
        for i in range(0, x.shape[0], b):
            part = {k: v[i:i + b] for k, v in draws.items()}
            total += float(self.loss.per_example(self.ema, x[i:i + b], part, None if y is None else y[i:i + b]).sum())
        return total / x.shape[0]

    def _check_validation(self) -> dict:
        """Measure, keep the best EMA weights, count measurements since the best; the log record."""
        v = self.validate()
        b = self.best
        if v < b["val_loss"]:
            b.update(val_loss=v, step=self.step, since=0,
                     ema={k: t.detach().clone() for k, t in self.ema.state_dict().items()})
        else:
            b["since"] += 1
        if self.config.patience and b["since"] >= self.config.patience:
            b["stopped"] = True
        return {"val_loss": v, "best_step": b["step"]}

    def lr_at(self, step: int) -> float:
        """lr * warm-up * decay at `step` (0-based).

        warm-up = min(1, (step + 1) / warmup); with s0 = max(warmup, decay_start) and
        u = clip((step - s0) / (steps - s0), 0, 1), decay = 1 (constant), 1 - u (linear) or
        (1 + cos(pi u)) / 2 (cosine).
        """
        cfg = self.config
        warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
        s0 = max(cfg.warmup, cfg.decay_start)
        if cfg.lr_decay == "constant" or cfg.steps <= s0:
            return cfg.lr * warm
        u = min(1.0, max(0.0, (step - s0) / (cfg.steps - s0)))
        decay = 1.0 - u if cfg.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * u))
        return cfg.lr * warm * decay

    def train_step(self) -> torch.Tensor:
        cfg = self.config
        self.loss.begin_step(self.step, cfg.steps)
        x0, draws, y = self._batch()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n, k, start, loss = x0.shape[0], len(self.micro_batches), 0, 0.0
        for i, size in enumerate(self.micro_batches):  # each piece's mean x n_i / n: the gradient of the whole mean
            sl = slice(start, start + size)
            start += size
            sync = nullcontext() if self._ddp is None or i == k - 1 else self._ddp.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                    part = self.loss.per_example(self.forward_model, x0[sl], {name: v[sl] for name, v in draws.items()},
                                                 None if y is None else y[sl]).mean() * (size / n)
                part.backward()
            loss = loss + part.detach()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.loss.end_step(self.model)
        self._update_ema()
        self.step += 1
        if self.posthoc is not None:
            self.posthoc.update(self.model, self.step)
        loss = loss.detach()
        if self.world > 1:
            dist.all_reduce(loss)
            loss = loss / self.world
        self._pending.append(loss)
        return loss

    @torch.no_grad()
    def _update_ema(self):
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema_p, p = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_p, p, 1.0 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.model.buffers()):
            b_ema.copy_(b)

    def _flush(self):
        if self._pending:
            values = torch.stack(self._pending).float().cpu().tolist()
            self._pending = []
            self.loss_history.extend(values)
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(f"the loss became {values[-1]} by step {self.step}; "
                                         f"lower lr or set grad_clip > 0")

    # --- the loop ------------------------------------------------------------------------
    def fit(self) -> "Trainer":
        """Train until config.steps, logging, checkpointing and calling back on schedule."""
        cfg, main = self.config, self.rank == 0
        if main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._trim_metrics()
            trim_snapshots(self.run_dir, self.step)
            if cfg.tensorboard and self.writer is None:
                from torch.utils.tensorboard import SummaryWriter
                # on resume, TensorBoard drops events a stopped run logged past the checkpoint
                self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR),
                                            purge_step=self.step + 1 if self.step else None)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and main), desc="train",
                   dynamic_ncols=True)
        t0, s0 = time.perf_counter(), self.step
        while self.step < cfg.steps and not self.best["stopped"]:
            self.train_step()
            bar.update(1)
            step = self.step
            val = None
            if self.val_data is not None and (step % cfg.validate_every == 0 or step == cfg.steps):
                val = self._check_validation()
            if step % cfg.log_every == 0 or step == cfg.steps or self.best["stopped"]:
                self._flush()
                rate = (step - s0) * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
                recent = self.loss_history[-min(cfg.log_every, len(self.loss_history)):]
                record = {"step": step, "loss": float(np.mean(recent)), "lr": self.lr_at(step - 1),
                          "grad_norm": float(self.grad_norm), "examples_per_s": rate,
                          "micro_batches": len(self.micro_batches), **(val or {})}
                bar.set_postfix(loss=f"{record['loss']:.4g}", ex_s=f"{rate:.3g}")
                if main:
                    self._log(record)
                t0, s0 = time.perf_counter(), step
            elif val is not None and main:
                self._log({"step": step, **val})
            if self.posthoc is not None and step % cfg.posthoc_every == 0:
                self._snapshot()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                self.save()
            if main and self.callback is not None and cfg.callback_every and step % cfg.callback_every == 0:
                self._flush()  # the callback sees the loss history up to this step
                self.callback(self, step)
        bar.close()
        if self.posthoc is not None:
            self._snapshot()
        self.save()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self

    def _snapshot(self):
        """Write the post-hoc EMA tracks to RUN_DIR/posthoc_ema/ (rank 0, once per step, with a run_dir)."""
        if self.rank == 0 and self.run_dir is not None and self._snapshot_step != self.step:
            save_snapshot(self.run_dir, self.step, self.posthoc)
            self._snapshot_step = self.step

    def _log(self, record: dict):
        if self.run_dir is not None:
            with open(self.run_dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for tag in TENSORBOARD_TAGS:
                if tag in record:
                    self.writer.add_scalar(tag, record[tag], record["step"])
            self.writer.flush()

    def _trim_metrics(self):
        """After a resume, drop log lines past the checkpoint (written by the run that stopped)."""
        path = self.run_dir / METRICS_NAME
        if not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= self.step]
        if len(keep) != len(lines):
            path.write_text("".join(ln + "\n" for ln in keep))

    # --- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        self._flush()
        return {
            "kind": RUN_KIND,
            "model_config": self.model_config,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"generator": self.generator.get_state()},  # the only randomness a step uses
            "step": self.step,
            "loss_history": torch.tensor(self.loss_history, dtype=torch.float64),
            "normalizer": self.normalizer.state_dict(),
            "train_config": self.config.to_dict(),
            "data_shape": self.data_shape,
            "world_size": self.world,
            "best": dict(self.best),
            "loss_state": self.loss.state_dict(),
            **({"posthoc_ema": self.posthoc.state_dict()} if self.posthoc is not None else {}),
        }

    def load_state_dict(self, state: dict):
        if state.get("kind") != RUN_KIND:
            raise ValueError(f"not a training-run checkpoint (kind={state.get('kind')!r})")
        # the data first: a model built for data of another dimension differs too, but says less
        if list(state["data_shape"]) != self.data_shape:
            raise ValueError(f"the checkpoint in {self.run_dir} was trained on data of shape "
                             f"{tuple(state['data_shape'])}, but the data now have shape {tuple(self.data_shape)}; "
                             "resume with the same data, or start a new run (another run_dir or resume=False)")
        if state["model_config"] != self.model_config:
            raise ValueError(f"the checkpoint in {self.run_dir} is for another model: {state['model_config']} "
                             f"vs {self.model_config}; use a new run_dir or resume=False")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng"]["generator"])
        self.step = int(state["step"])
        self.loss_history = state["loss_history"].tolist()
        self.normalizer = Normalizer.from_state_dict(state["normalizer"])
        if "best" in state:
            self.best = dict(state["best"])
        self.loss.load_state_dict(state.get("loss_state") or {})
        self._load_posthoc(state.get("posthoc_ema"))

    def _load_posthoc(self, saved):
        """The post-hoc EMA tracks of the checkpoint; they cannot be added, dropped or changed on resume."""
        where = f"the checkpoint in {self.run_dir}"
        if self.posthoc is not None and saved is not None:
            self.posthoc.load_state_dict(saved, where)
        elif self.posthoc is not None and self.step > 0:
            raise ValueError(f"{where} was trained {self.step} steps without post-hoc EMA tracks; they average over "
                             f"the whole run, so posthoc_ema={self.config.posthoc_ema} cannot be added on resume: "
                             "use a new run folder")
        elif saved is not None:
            raise ValueError(f"{where} tracks post-hoc EMAs {list(saved['sigma_rels'])}; resume it with "
                             f"posthoc_ema={list(saved['sigma_rels'])} (they cannot be dropped on resume)")

    def save(self):
        """Write RUN_DIR/checkpoint.pt atomically (rank 0 only; no-op without a run_dir)."""
        state = self.state_dict()
        if self.rank == 0 and self.run_dir is not None:
            save_checkpoint(self.run_dir / CHECKPOINT_NAME, state)

    def score_fn(self, y=None):
        """The EMA model's score function (x, t) -> score, in normalized coordinates."""
        return self.ema.score_fn(y)

    def close(self):
        """Close the TensorBoard writer if open; leave the process group if this trainer joined it."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._created_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self._created_group = False


def train(model: ScoreModel, data, config: TrainConfig | None = None, run_dir=None, *, labels=None,
          normalizer: Normalizer | None = None, callback=None, resume: bool = True, loss=None) -> Trainer:
    """Train `model` on `data` to config.steps (see `Trainer`); returns the finished Trainer."""
    trainer = Trainer(model, data, config, run_dir, labels=labels, normalizer=normalizer,
                      callback=callback, resume=resume, loss=loss)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


def load_run(run_dir, device="cpu"):
    """(model with EMA weights in eval mode, sde, normalizer, meta) from RUN_DIR/checkpoint.pt.

    meta: {"step", "train_config", "loss_history" (list), "data_shape", "run_dir", "best_step", "val_loss"}
    (the last two None without held-out data; with them the model holds the best EMA weights). The model scores
    normalized data: map its samples back with normalizer.inverse.
    """
    state = load_checkpoint(run_dir, map_location=device)
    if state.get("kind") != RUN_KIND:
        raise ValueError(f"{run_dir} holds a scoregen checkpoint that is not a training run "
                         f"(kind={state.get('kind')!r})")
    model = model_from_config(state["model_config"])
    best = state.get("best") or {}
    model.load_state_dict(best["ema"] if best.get("ema") is not None else state["ema"])
    model = model.to(device).eval().requires_grad_(False)
    meta = {"step": int(state["step"]), "train_config": state["train_config"],
            "loss_history": state["loss_history"].tolist(), "data_shape": list(state["data_shape"]),
            "run_dir": str(run_dir)}
    held_out = best.get("ema") is not None
    meta.update(best_step=best["step"] if held_out else None, val_loss=best["val_loss"] if held_out else None)
    return model, model.sde, Normalizer.from_state_dict(state["normalizer"]), meta
