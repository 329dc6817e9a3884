"""What `scoregen inpaint`, `restore` and `edit` share: the run, the input, the panels and the outputs.

Inputs (--input) are in the run's data units: a data set name (images: the --split, --n images from
--start, with labels, so PSNR and classifier accuracy can be reported), a .npy/.npz array of
examples (N, ...) or one example, or a PNG/JPEG image (0..255 mapped to the run's value range).
Outputs go to --out (default RUN_DIR/<command>/): panel.png (one row per input: input |
observation | samples | truth when known), outputs.npz (every array) and summary.json.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..data.images import IMAGE_DATASETS, parse_value_range, scale_images, unscale_images
from ..runs.run import Run as LibraryRun
from .common import check_positive, show_progress  # noqa: F401 (show_progress: the commands' progress bars)


def coordinate_label(i: int) -> str:
    from ..plots import coordinate_label as label

    return label(i)


def add_common_arguments(p, command: str) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (config.yaml + checkpoint.pt)")
    p.add_argument("--input", required=True, metavar="NAME|FILE",
                   help="a data set name (e.g. mnist: --n test images from --start), a .npy/.npz array or a PNG")
    p.add_argument("--split", default="test", help="data set split (default test)")
    p.add_argument("--n", type=int, default=None, help="number of input examples, from --start: of a data set "
                   f"(default {DATASET_N}) or of a file's rows (default all)")
    p.add_argument("--start", type=int, default=0, help="index of the first input example (data set or file)")
    p.add_argument("--samples", type=int, default=4, help="samples per input (default 4)")
    p.add_argument("--steps", type=int, default=200, help="sampler steps (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder holding the data files")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, metavar="DIR", help=f"output folder (default RUN_DIR/{command})")
    from .common import add_progress_flag

    add_progress_flag(p)


#: examples read from a data set when --n is not given
DATASET_N = 8


class Run(LibraryRun):
    """A loaded run (`runs.Run`: model, sde, normalizer, config, meta, shape, value_range) with what the
    steering commands add: a clear error for a missing folder, `points` from the data's name, `check`."""

    def __init__(self, run_dir, device="cpu"):
        from ..runs.recipe import is_point_data

        if not Path(run_dir).exists():
            raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
        super().__init__(run_dir, device=device)
        self.cfg = self.config
        name = (self.cfg.get("data") or {}).get("name")  # None for a diffusers folder (images)
        self.points = name is not None and is_point_data(name)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_model_units(x)

    def to_data(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_data_units(z)

    def check(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"the {what} has examples of shape {tuple(x.shape[1:])}, but the run was trained on "
                             f"shape {self.shape}")
        return x


def read_input(spec, run: Run, args):
    """(x (N, ...) float32 in data units, labels (N,) or None, dataset name or None)."""
    name = str(spec)
    key = name.lower().replace("_", "-")
    if key in IMAGE_DATASETS and not run.points:
        from ..data.images import load_images

        n = DATASET_N if args.n is None else args.n
        x, y = load_images(key, args.split, data_dir=args.data_dir, value_range=run.value_range,
                           limit=args.start + n)
        return run.check(x[args.start:], "input"), y[args.start:], key
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"input {name!r} is neither a file nor an image data set name ({list(IMAGE_DATASETS)})")
    x = read_array(path, run.value_range)
    if tuple(x.shape) == run.shape:
        x = x[None]
    x = run.check(x, "input")
    if args.start >= len(x):
        raise ValueError(f"--start {args.start} is past the {len(x)} examples of {name}")
    stop = len(x) if args.n is None else args.start + args.n
    return x[args.start:stop], None, None


def read_array(path: Path, value_range=(0, 1)) -> torch.Tensor:
    """A .npy/.npz array (the first array of an .npz) as float32, or a PNG/JPEG as (1, C, H, W)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return torch.as_tensor(np.load(path)).float()
    if suffix == ".npz":
        with np.load(path) as f:
            return torch.as_tensor(f[f.files[0]]).float()
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        with Image.open(path) as im:
            a = np.asarray(im.convert("L") if im.mode in ("L", "LA", "I", "P", "1") else im.convert("RGB"),
                           dtype=np.float32) / 255.0
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return scale_images(torch.as_tensor(a)[None], value_range)
    raise ValueError(f"cannot read {path}: give a .npy, .npz, .png or .jpg file")


def to_unit(x: torch.Tensor, run: Run) -> torch.Tensor:
    """Images in [0, 1] for pictures and metrics."""
    return unscale_images(x.float(), run.value_range)


def psnr(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]: 10 log10(1 / MSE)."""
    mse = (a01 - b01).pow(2).reshape(a01.shape[0], -1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1 / mse)


def classifier_accuracy(samples01: torch.Tensor, labels: torch.Tensor, dataset: str) -> float | None:
    """Accuracy of the project's classifier on (N, S, 1, 28, 28) completions against the N labels."""
    from ..evaluation.classifier import CLASSIFIER_DATASETS, classifier_predict, load_classifier

    if dataset not in CLASSIFIER_DATASETS or tuple(samples01.shape[2:]) != (1, 28, 28):
        return None
    n, s = samples01.shape[:2]
    pred = classifier_predict(load_classifier(dataset), samples01.reshape(n * s, 1, 28, 28)).reshape(n, s)
    return float((pred == labels[:, None]).double().mean())


def image_panel(rows: list[list[torch.Tensor]], path, headings: list[str], suptitle: str | None = None) -> Path:
    """One row of [0, 1] images (C, H, W) per input under a heading per column; images of another
    size are resized (nearest) to the first one's."""
    from ..plots import image_table

    c, h, w = rows[0][0].shape
    table = []
    for r in rows:
        cells = []
        for im in r:
            if tuple(im.shape[-2:]) != (h, w):
                im = torch.nn.functional.interpolate(im[None], size=(h, w), mode="nearest")[0]
            cells.append(im.expand(c, h, w))
        table.append(cells)
    return image_table(table, headings, path, suptitle=suptitle)


def sample_headings(s: int) -> list[str]:
    return [f"sample {k + 1}" for k in range(s)]


def point_coords(d: int, unknown=()) -> tuple[int, int]:
    """The two coordinates a point panel shows: a known one against the first unknown one (so an imputed
    coordinate is always in the picture), else the first two."""
    if d < 2:
        raise ValueError(f"point panels need D >= 2 coordinates, got D={d}")
    unknown = [int(i) for i in unknown]
    known = [i for i in range(d) if i not in unknown]
    if unknown and known:
        return known[0], unknown[0]
    return 0, 1


def point_panel(inputs, samples, path, truth=None, coords=(0, 1), titles: dict | None = None,
                suptitle: str | None = None) -> Path:
    from ..plots import scatter_panels

    panels = {"input": inputs.reshape(-1, inputs.shape[-1]).numpy(),
              "samples": samples.reshape(-1, samples.shape[-1]).numpy()}
    if truth is not None:
        panels["truth"] = truth.reshape(-1, truth.shape[-1]).numpy()
    return scatter_panels(panels, path, coords=coords, titles=titles, suptitle=suptitle)


def out_dir(args, command: str) -> Path:
    out = Path(args.out) if args.out else Path(args.run_dir) / command
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_outputs(out: Path, arrays: dict, summary: dict) -> None:
    np.savez_compressed(out / "outputs.npz", **{k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                                                for k, v in arrays.items() if v is not None})
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}))


def check_counts(args) -> None:
    check_positive(n=args.n, samples=args.samples, steps=args.steps)
    if args.start < 0:
        raise ValueError(f"--start must be >= 0, got {args.start}")
    if args.threads:
        torch.set_num_threads(args.threads)


def repeat(x: torch.Tensor, s: int) -> torch.Tensor:
    """(N, ...) -> (N * s, ...), each example s times in a row."""
    return x.repeat_interleave(s, dim=0)


def summary_metrics(samples_data, truth, labels, dataset, run: Run) -> dict:
    """PSNR (images, against the truth) and the classifier's accuracy on the samples, when they apply."""
    out = {}
    if truth is None or run.points:
        return out
    n, s = samples_data.shape[:2]
    s01, t01 = to_unit(samples_data, run), to_unit(truth, run)
    p = psnr(s01.reshape(n * s, *s01.shape[2:]), repeat(t01, s))
    out["psnr_mean"], out["psnr_se"] = float(p.mean()), float(p.std() / math.sqrt(len(p))) if len(p) > 1 else 0.0
    if labels is not None and dataset is not None:
        out["classifier_accuracy"] = classifier_accuracy(s01, labels, dataset)
    return out
