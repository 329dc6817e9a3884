"""Image data sets as tensors: MNIST, Fashion-MNIST, scikit-learn's 8x8 digits, CIFAR-10, folders.

Every loader returns `(x, y)`: images `x` of shape (N, C, H, W), float32, scaled to a chosen
`value_range` ((0, 1), torchvision's `ToTensor()` convention, or (-1, 1)), and labels `y` of shape
(N,), int64 (all zeros for an unlabelled folder). Nothing here needs torchvision.

Where the files are looked for (first match wins), for MNIST-like sets and CIFAR-10:

1. the `data_dir` argument, when given (and nowhere else);
2. the folder named by the environment variable ``$SCOREGEN_DATA``;
3. the user cache ``$XDG_CACHE_HOME/scoregen`` (default ``~/.cache/scoregen``);
4. the repository's sibling ``../shared/data`` (the project's offline copies).

Inside a root the files may sit in ``ROOT/<name>/`` or directly in ``ROOT/``, each raw or
gzip-compressed (``.gz``). MNIST-like files are checked against the MD5 of their *uncompressed*
bytes (the official release's sums). `download=True` fetches the files from the official
mirrors into `data_dir` (or the user cache) and checks them the same way; it is opt-in and never
used by the tests.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero
bytes, a type byte (0x08 = uint8, ...), a byte giving the number of dimensions, one uint32 per
dimension, then the raw data in C order.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..util import Registry, atomic_write

__all__ = [
    "IMAGE_DATASETS",
    "load_images",
    "load_mnist",
    "load_digits",
    "load_cifar10",
    "load_image_folder",
    "read_idx",
    "search_roots",
    "scale_images",
    "unscale_images",
    "parse_value_range",
    "random_hflip",
]

#: names accepted by `load_images`
IMAGE_DATASETS = ("mnist", "fashion-mnist", "digits", "cifar10", "folder")
_IMAGE_NAMES = Registry("image data set", {n: n for n in IMAGE_DATASETS},
                        {"fashion": "fashion-mnist", "fmnist": "fashion-mnist", "sklearn-digits": "digits"}, sort=False)

# md5 of the *uncompressed* IDX files (official releases; /work/shared/data/README.md).
_IDX_FILES = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
_MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": ["https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR_TAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 R, 1024 G, 1024 B bytes
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# IDX type byte -> numpy big-endian dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


# --- scaling and augmentation -----------------------------------------------------------
def parse_value_range(value_range) -> tuple[float, float]:
    """Accept (0, 1), (-1, 1), [0, 1] (YAML) or the strings '0,1', '[-1,1]', '-1,1'."""
    v = value_range
    if isinstance(v, str):
        v = [p for p in v.strip("[]() ").split(",") if p.strip()]
    try:
        lo, hi = (float(p) for p in v)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be (0, 1) or (-1, 1), got {value_range!r}") from None
    if (lo, hi) not in {(0.0, 1.0), (-1.0, 1.0)}:
        raise ValueError(f"value_range must be (0, 1) or (-1, 1), got {value_range!r}")
    return lo, hi


def scale_images(x01: torch.Tensor, value_range=(0, 1)) -> torch.Tensor:
    """Map images in [0, 1] to `value_range`."""
    lo, hi = parse_value_range(value_range)
    return x01 if lo == 0.0 else x01 * (hi - lo) + lo


def unscale_images(x: torch.Tensor, value_range=(0, 1), clamp: bool = True) -> torch.Tensor:
    """Map images in `value_range` back to [0, 1] (clamped: samples overshoot a little)."""
    lo, hi = parse_value_range(value_range)
    x01 = (x - lo) / (hi - lo)
    return x01.clamp(0.0, 1.0) if clamp else x01


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p (a per-batch augmentation)."""
    device = generator.device if generator is not None else x.device
    flip = (torch.rand(x.shape[0], generator=generator, device=device) < p).to(x.device)
    return torch.where(flip.reshape(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def _check_limit(limit) -> int:
    if int(limit) != limit or int(limit) < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit!r}")
    return int(limit)


def _finish(images: np.ndarray, labels: np.ndarray, value_range, limit) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8-ish (N, C, H, W) array in [0, 255] -> scaled float32 tensor; labels -> int64."""
    if limit is not None:
        images, labels = images[: _check_limit(limit)], labels[: _check_limit(limit)]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)
    return scale_images(x, value_range), torch.from_numpy(np.asarray(labels, dtype=np.int64))


# --- locating files ---------------------------------------------------------------------
def search_roots(data_dir=None) -> list[Path]:
    """Folders searched for data, in order (see the module docstring)."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = []
    if os.environ.get("SCOREGEN_DATA"):
        roots.append(Path(os.environ["SCOREGEN_DATA"]).expanduser())
    roots.append(_cache_dir())
    sibling = Path(__file__).resolve().parents[3] / "shared" / "data"
    if sibling.is_dir():
        roots.append(sibling)
    return roots


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "scoregen"


def _find(name: str, filenames: list[str], data_dir) -> Path | None:
    """The first folder (ROOT/name or ROOT) holding every file, raw or .gz; None if none does."""
    for root in search_roots(data_dir):
        for folder in (root / name, root):
            if all(_existing(folder / f) is not None for f in filenames):
                return folder
    return None


def _existing(path: Path) -> Path | None:
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return p
    return None


def _missing_error(name: str, filenames: list[str], data_dir) -> FileNotFoundError:
    looked = [str(p) for r in search_roots(data_dir) for p in (r / name, r)]
    return FileNotFoundError(
        f"{name} files not found ({', '.join(filenames)}, raw or .gz). Looked in: {', '.join(looked)}. "
        f"Pass data_dir=FOLDER (CLI: --data-dir FOLDER) or set SCOREGEN_DATA to a folder holding them, "
        f"or fetch them into {data_dir or _cache_dir()} with download=True (CLI: the override "
        f"data.download=true, e.g. `scoregen train --config mnist data.download=true`)."
    )


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array, checking the header against the data's size."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{source} is not an IDX file: its header must start with two zero bytes")
    dtype, ndim = _IDX_TYPES.get(raw[2]), raw[3]
    if dtype is None:
        raise ValueError(f"{source}: unknown IDX type byte 0x{raw[2]:02x}; known: {[hex(k) for k in _IDX_TYPES]}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{source}: corrupt IDX header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise ValueError(f"{source}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype[1:])


def read_idx(path, md5: str | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a numpy array; verify the uncompressed bytes' md5."""
    path = Path(path)
    raw = _read_bytes(path)
    if md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != md5:
            raise ValueError(
                f"checksum mismatch for {path}: md5 of the uncompressed bytes is {got}, expected {md5}. "
                f"The file is corrupt or not the official release; delete it and fetch it again."
            )
    return parse_idx(raw, str(path))


def load_mnist(split: str = "train", data_dir=None, *, name: str = "mnist", value_range=(0, 1),
               limit: int | None = None, download: bool = False, verify: bool = True):
    """MNIST or Fashion-MNIST (`name='fashion-mnist'`): 28x28 grey images, 10 classes.

    Returns x (N, 1, 28, 28) float32 in `value_range` and y (N,) int64. `limit` keeps the first
    images only (for tests). 60,000 train and 10,000 test images.
    """
    if name not in _IDX_FILES:
        raise ValueError(f"unknown IDX data set {name!r}; choose one of {sorted(_IDX_FILES)}")
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    files = [f"{_SPLIT_PREFIX[split]}-images-idx3-ubyte", f"{_SPLIT_PREFIX[split]}-labels-idx1-ubyte"]
    folder = _find(name, files, data_dir)
    if folder is None and download:
        folder = _download_idx(name, data_dir)
    if folder is None:
        raise _missing_error(name, files, data_dir)
    sums = _IDX_FILES[name]
    images, labels = (read_idx(_existing(folder / f), sums[f] if verify else None) for f in files)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
    return _finish(images[:, None], labels, value_range, limit)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (fixed https mirrors)
        return r.read()


def _download_idx(name: str, data_dir) -> Path:
    """Fetch all four files of `name`, verify their md5, store them gzip-compressed."""
    target = Path(data_dir).expanduser() if data_dir is not None else _cache_dir() / name
    target.mkdir(parents=True, exist_ok=True)
    for fname, md5 in _IDX_FILES[name].items():
        if _existing(target / fname) is not None:
            continue
        errors = []
        for mirror in _MIRRORS[name]:
            try:
                raw = gzip.decompress(_fetch(mirror + fname + ".gz"))
            except Exception as e:  # network errors vary by platform; try the next mirror
                errors.append(f"{mirror}: {e}")
                continue
            if hashlib.md5(raw).hexdigest() != md5:
                errors.append(f"{mirror}: checksum mismatch")
                continue
            _atomic_write(target / (fname + ".gz"), gzip.compress(raw))
            break
        else:
            raise FileNotFoundError(f"could not download {fname} for {name}: {'; '.join(errors)}")
    return target


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, data)


# --- scikit-learn digits ------------------------------------------------------------------
def load_digits(split: str = "all", *, value_range=(0, 1), limit: int | None = None):
    """scikit-learn's 1,797 8x8 digits (values 0..16), as x (N, 1, 8, 8) and y (N,).

    Splits are fixed: 'test' is every fifth image (360), 'train' the rest (1,437), 'all' both.
    """
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from None
    d = _sk_digits()
    idx = np.arange(len(d.target))
    keep = {"all": idx, "test": idx[idx % 5 == 0], "train": idx[idx % 5 != 0]}
    if split not in keep:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images = d.images[keep[split]].reshape(-1, 1, 8, 8) * (255.0 / 16.0)
    return _finish(images, d.target[keep[split]], value_range, limit)


# --- CIFAR-10 (binary release) ------------------------------------------------------------
def read_cifar_bin(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 bytes (R, G, B planes, 32x32)."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of CIFAR-10 records of {_CIFAR_RECORD} bytes")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {labels.max()} out of range 0..9; not a CIFAR-10 binary file")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(split: str = "train", data_dir=None, *, value_range=(0, 1), limit: int | None = None,
                 download: bool = False):
    """CIFAR-10 from its binary release (data_batch_1..5.bin, test_batch.bin): x (N, 3, 32, 32)."""
    names = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    if split not in names:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    files = names[split]
    folder = _find("cifar10/" + _CIFAR_DIR, files, data_dir) or _find(_CIFAR_DIR, files, data_dir) \
        or _find("cifar10", files, data_dir)
    if folder is None and download:
        folder = _download_cifar(data_dir)
    if folder is None:
        raise _missing_error("cifar10", files, data_dir)
    parts = [read_cifar_bin(_existing(folder / f)) for f in files]
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return _finish(images, labels, value_range, limit)


def _download_cifar(data_dir) -> Path:
    target = Path(data_dir).expanduser() if data_dir is not None else _cache_dir() / "cifar10"
    target.mkdir(parents=True, exist_ok=True)
    blob = _fetch(_CIFAR_URL)
    if hashlib.md5(blob).hexdigest() != _CIFAR_TAR_MD5:
        raise ValueError(f"checksum mismatch for {_CIFAR_URL}; expected md5 {_CIFAR_TAR_MD5}")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        # the "data" filter refuses absolute paths and links out of `target` (Python >= 3.10.12)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(target, **kwargs)
    return target / _CIFAR_DIR


# --- folders of PNG / JPEG -----------------------------------------------------------------
def load_image_folder(root, *, size: int = 32, grey: bool = False, value_range=(0, 1),
                      limit: int | None = None):
    """Every PNG/JPEG under `root`, resized (shorter side to `size`) and center-cropped to size x size.

    Labels follow the torchvision ImageFolder convention: images in sub-folders get the index of
    their sub-folder in sorted order; images directly in `root` get label 0 when there are no
    sub-folders with images. Returns x (N, 1 or 3, size, size) and y (N,).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no PNG/JPEG images ({', '.join(sorted(_IMAGE_SUFFIXES))}) found under {root}")
    if limit is not None:
        paths = paths[: _check_limit(limit)]
    classes = sorted({p.relative_to(root).parts[0] for p in paths if len(p.relative_to(root).parts) > 1})
    out, labels = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if grey else "RGB")
                out.append(_resize_crop(im, int(size)))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
        parts = p.relative_to(root).parts
        labels.append(classes.index(parts[0]) if len(parts) > 1 else 0)
    images = np.stack(out)
    images = images[:, None] if grey else images.transpose(0, 3, 1, 2)
    return _finish(images, np.asarray(labels), value_range, None)


def _resize_crop(im, size: int) -> np.ndarray:
    from PIL import Image

    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


# --- one entry point -------------------------------------------------------------------------
def load_images(name: str, split: str = "train", *, data_dir=None, value_range=(0, 1), flip: bool = False,
                limit: int | None = None, download: bool = False, root=None, size: int = 32,
                grey: bool = False):
    """Load an image data set by name: 'mnist', 'fashion-mnist', 'digits', 'cifar10' or 'folder'.

    'folder' reads `root` (or `data_dir`) with `size`/`grey`. `flip=True` appends the mirrored
    copy of every image (a fixed augmentation for data that is symmetric left-right; for a
    per-batch random flip use `random_hflip`). Returns x (N, C, H, W) float32 and y (N,) int64.
    """
    key = _IMAGE_NAMES.key(name)
    if key in ("mnist", "fashion-mnist"):
        x, y = load_mnist(split, data_dir, name=key, value_range=value_range, limit=limit, download=download)
    elif key == "digits":
        x, y = load_digits(split, value_range=value_range, limit=limit)
    elif key == "cifar10":
        x, y = load_cifar10(split, data_dir, value_range=value_range, limit=limit, download=download)
    elif key == "folder":
        folder = root if root is not None else data_dir
        if folder is None:
            raise ValueError("data set 'folder' needs root=FOLDER (or data_dir=FOLDER) with PNG/JPEG images")
        x, y = load_image_folder(folder, size=size, grey=grey, value_range=value_range, limit=limit)
    if flip:
        x, y = torch.cat([x, x.flip(-1)]), torch.cat([y, y])
    return x, y
