"""Image data: IDX parsing and checksums, real MNIST/Fashion-MNIST slices, digits, CIFAR-10, folders."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_shared_data
from scoregen.data import images
from scoregen.data.images import (load_cifar10, load_digits, load_image_folder, load_images, load_mnist, parse_idx,
                             random_hflip, read_idx, scale_images, unscale_images)

def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def write_fake_mnist(folder: Path, n: int = 7, gz: bool = True):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte"
            raw = idx_bytes(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
    return imgs, labels


# --- IDX ------------------------------------------------------------------------------------
def test_idx_round_trip_raw_and_gz(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), arr)


def test_idx_corrupt_headers_are_named():
    good = idx_bytes(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="two zero bytes"):
        parse_idx(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="unknown IDX type"):
        parse_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="header says shape"):
        parse_idx(good[:-1])
    with pytest.raises(ValueError, match="corrupt IDX header"):
        parse_idx(b"\x00\x00\x08\x05\x00")


def test_checksum_mismatch_and_missing_files(tmp_path):
    imgs, labels = write_fake_mnist(tmp_path / "mnist")
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_mnist("test", tmp_path)
    x, y = load_mnist("test", tmp_path, verify=False)  # the files themselves decode fine
    assert torch.equal(x[:, 0], torch.from_numpy(imgs).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels).long())
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        load_mnist("test", tmp_path / "empty")
    with pytest.raises(ValueError, match="split"):
        load_mnist("valid", tmp_path)


def test_search_order_env_then_cache(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "env" / "mnist", gz=False)
    monkeypatch.setenv("SCOREGEN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    roots = images.search_roots()
    assert roots[:2] == [tmp_path / "env", tmp_path / "cache" / "scoregen"]
    x, _ = load_mnist("train", verify=False, limit=3)
    assert x.shape == (3, 1, 28, 28)
    assert images.search_roots(tmp_path / "x") == [tmp_path / "x"]  # an explicit folder is the only one


# --- real data (small slices) ----------------------------------------------------------------
def test_mnist_test_split_matches_readme():
    folder = require_shared_data("mnist")
    x, y = load_mnist("test", folder)  # md5 of both files verified on the way
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    counts = torch.bincount(y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_fashion_mnist_slice_and_range():
    shared = require_shared_data("fashion-mnist").parent
    x, y = load_images("fashion-mnist", "test", data_dir=shared, value_range=(-1, 1), limit=300)
    assert x.shape == (300, 1, 28, 28) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert y.min() >= 0 and y.max() <= 9


def test_digits_splits_and_scaling():
    xa, ya = load_digits("all")
    xtr, _ = load_digits("train")
    xte, _ = load_digits("test")
    assert xa.shape == (1797, 1, 8, 8) and len(xtr) + len(xte) == 1797
    assert float(xa.min()) == 0.0 and float(xa.max()) == 1.0
    from sklearn.datasets import load_digits as sk

    assert torch.allclose(xa[:, 0] * 16, torch.from_numpy(sk().images).float(), atol=1e-5)
    assert torch.equal(ya, torch.from_numpy(sk().target).long())


# --- CIFAR-10 binary ---------------------------------------------------------------------------
def test_cifar10_binary_records(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    recs = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        lab = rng.integers(0, 10, 3, dtype=np.uint8)
        pix = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([lab[:, None], pix], 1).tobytes())
        recs[name] = (lab, pix)
    x, y = load_cifar10("test", tmp_path)
    lab, pix = recs["test_batch.bin"]
    assert x.shape == (3, 3, 32, 32) and torch.equal(y, torch.from_numpy(lab).long())
    # channel planes: the first 1024 bytes are red, row-major
    assert torch.allclose(x[1, 0, 0, :], torch.from_numpy(pix[1, :32]).float() / 255)
    assert torch.allclose(x[1, 2, 31, 31], torch.tensor(pix[1, 3071] / 255, dtype=torch.float32))
    xt, _ = load_cifar10("train", tmp_path)
    assert xt.shape == (15, 3, 32, 32)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3074)
    with pytest.raises(ValueError, match="whole number of CIFAR-10 records"):
        load_cifar10("test", tmp_path)


# --- folders of images ---------------------------------------------------------------------------
def test_image_folder_resize_crop_labels_and_errors(tmp_path):
    from PIL import Image

    for cls, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        arr = np.zeros((30, 50, 3), np.uint8)
        arr[:, 10:40] = colour  # the centre 30 columns carry the colour, the sides are black
        Image.fromarray(arr).save(tmp_path / cls / "a.png")
        Image.fromarray(arr).save(tmp_path / cls / "b.jpg", quality=95)
    x, y = load_image_folder(tmp_path, size=16)
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    # center crop keeps the coloured middle: cats red, dogs blue
    assert x[0, 0].mean() > 0.9 and x[0, 2].mean() < 0.1 and x[2, 2].mean() > 0.9
    xg, _ = load_image_folder(tmp_path, size=8, grey=True)
    assert xg.shape == (4, 1, 8, 8)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path, size=8)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no PNG/JPEG"):
        load_image_folder(tmp_path / "none")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")


# --- scaling and flips ------------------------------------------------------------------------------
def test_value_ranges_and_flips():
    x01 = torch.rand(5, 1, 4, 4)
    x = scale_images(x01, "[-1,1]")
    assert torch.allclose(unscale_images(x, (-1, 1)), x01, atol=1e-6)
    with pytest.raises(ValueError, match="value_range"):
        scale_images(x01, (0, 255))
    xd, yd = load_images("digits", "test", flip=True)
    n = len(xd) // 2
    assert torch.equal(xd[n:], xd[:n].flip(-1)) and torch.equal(yd[n:], yd[:n])
    with pytest.raises(ValueError, match="unknown image data set"):
        load_images("imagenet")
    with pytest.raises(ValueError, match="limit must be a positive"):
        load_images("digits", limit=0)


def test_random_hflip_rate():
    x = torch.arange(2 * 3, dtype=torch.float32).reshape(1, 1, 2, 3).expand(4000, 1, 2, 3)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_hflip(x, g, p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, g, p=0.0), x)
    flipped = (random_hflip(x, g, p=0.5)[:, 0, 0, 0] == 2).double().mean()
    # Binomial(4000, 1/2): std of the fraction 0.0079; 5 sigma
    assert abs(float(flipped) - 0.5) < 5 * 0.5 / 4000 ** 0.5
