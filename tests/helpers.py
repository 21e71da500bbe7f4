"""Plain helpers that several test files share (fixtures are in conftest.py).

Test files import them with `from helpers import ...`: pytest's default "prepend" import mode
puts tests/ (a folder without __init__.py) on sys.path, as it does for conftest.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd
from torch import nn

from analogai_fl import config
from analogai_fl import data as D
from analogai_fl.models import MODELS, build_model
from analogai_fl.settings import Experiment

# ---------------------------------------------------------------- experiments and settings


def experiment(**changes) -> Experiment:
    """The default experiment with `changes` (dotted keys)."""
    return Experiment.from_config(config.defaults() | changes)


def protocol_for(**keys):
    """The evaluation protocol of the default experiment with `keys` (dotted config keys)."""
    return experiment(**keys).evaluation.protocol


def local_training(cfg: dict, sigma: float, proximal_mu: float, noise_index: int = 0):
    """Client `noise_index`'s training setting under `cfg`, at `sigma`."""
    setting = Experiment.from_config(cfg).local_training(noise_index, proximal_mu)
    return dataclasses.replace(setting, sigma=sigma)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`analogai-fl *argv` in this process: (exit code, stdout, stderr)."""
    from analogai_fl import cli

    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- the model zoo

NAMES = sorted(MODELS)
LAYERS = (nn.Conv2d, nn.Linear)


def build(name, in_channels=1, num_classes=10, image_size=32, seed=0):
    """`build_model` with its weights drawn after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return build_model(name, in_channels, num_classes, image_size)


# ---------------------------------------------------------------- run folders


def named(cfg, tmp_path) -> dict:
    """`cfg` writing its run folder under `tmp_path`, named "t-..."."""
    return cfg | {"output.dir": str(tmp_path), "output.name": "t"}


# ---------------------------------------------------------------- tiny data sets on disk
#
# The torchvision sets are tested on tiny files written here in each set's real on-disk
# format (MNIST's idx files, CIFAR's pickled batches, SVHN's .mat files) and read through
# torchvision's real classes by `load_data`. Every image carries its own id in its first
# pixels, so a test can tell which file image a sample came from.

N_TRAIN, N_TEST = 80, 20
SHAPES = {"mnist": (1, 28), "fashionmnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32),
          "svhn": (3, 32)}
CLASSES = {"mnist": 10, "fashionmnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}


def settings(cfg: dict):
    return Experiment.from_config(cfg).data


def load_data(cfg: dict, download: bool = False) -> D.Splits:
    return D.load_data(settings(cfg), download)


def tiny_images(name: str, n: int, offset: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, H, W) uint8 images with channel-dependent brightness, and labels.

    Pixels [0, 0] and [0, 1] of channel 0 hold the image's id (offset + i) in base 256.
    """
    channels, side = SHAPES[name]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, channels, side, side), dtype=np.uint8)
    for c in range(channels):  # make the channels differ, so per-channel stats matter
        images[:, c] = (images[:, c].astype(np.int64) * (c + 1) // 4 + 20 * c).astype(np.uint8)
    ids = np.arange(offset, offset + n)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids % 256, ids // 256
    labels = np.arange(n) % CLASSES[name]
    rng.shuffle(labels)
    return images, labels


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, type 0x08 = uint8, ndim), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_pickle(path: Path, obj: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return md5(path)


def write_data_set(name: str, root: Path, seed: int = 0) -> dict:
    """Writes a tiny `name` under `root` in torchvision's layout; returns its arrays and md5s."""
    train_x, train_y = tiny_images(name, N_TRAIN, 0, seed)
    test_x, test_y = tiny_images(name, N_TEST, N_TRAIN, seed + 1)
    md5s: dict[str, str] = {}
    if name in ("mnist", "fashionmnist"):
        raw = root / {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[name] / "raw"
        write_idx(raw / "train-images-idx3-ubyte", train_x[:, 0])
        write_idx(raw / "train-labels-idx1-ubyte", train_y)
        write_idx(raw / "t10k-images-idx3-ubyte", test_x[:, 0])
        write_idx(raw / "t10k-labels-idx1-ubyte", test_y)
    elif name == "cifar10":
        folder = root / "cifar-10-batches-py"
        for i, chunk in enumerate(np.array_split(np.arange(N_TRAIN), 5)):
            md5s[f"data_batch_{i + 1}"] = write_pickle(
                folder / f"data_batch_{i + 1}",
                {"data": train_x[chunk].reshape(len(chunk), -1), "labels": train_y[chunk].tolist()})
        md5s["test_batch"] = write_pickle(folder / "test_batch", {
            "data": test_x.reshape(N_TEST, -1), "labels": test_y.tolist()})
        md5s["batches.meta"] = write_pickle(folder / "batches.meta", {
            "label_names": [f"class{i}" for i in range(10)]})
    elif name == "cifar100":
        folder = root / "cifar-100-python"
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            md5s[split] = write_pickle(folder / split, {
                "data": x.reshape(len(x), -1), "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist()})
        md5s["meta"] = write_pickle(folder / "meta", {
            "fine_label_names": [f"class{i}" for i in range(100)]})
    elif name == "svhn":
        root.mkdir(parents=True, exist_ok=True)
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            path = root / f"{split}_32x32.mat"
            # SVHN stores X as (H, W, C, N) and the digit 0 as label 10
            scipy.io.savemat(path, {"X": x.transpose(2, 3, 1, 0),
                                    "y": np.where(y == 0, 10, y).reshape(-1, 1)})
            md5s[f"{split}_32x32.mat"] = md5(path)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "md5s": md5s}


def accept_tiny_files(monkeypatch: pytest.MonkeyPatch, name: str, md5s: dict) -> None:
    """torchvision checks the md5 of CIFAR's and SVHN's official files: point its md5 tables
    at the tiny files' md5s (the production code keeps the check)."""
    if name == "cifar10" or name == "cifar100":
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        monkeypatch.setattr(cls, "train_list", [[f, md5s[f]] for f, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[f, md5s[f]] for f, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})
    elif name == "svhn":
        table = {split: [url, file, md5s.get(file, digest)]
                 for split, (url, file, digest) in tvd.SVHN.split_list.items()}
        monkeypatch.setattr(tvd.SVHN, "split_list", table)


def tiny_cfg(name: str, root: Path, **changes) -> dict:
    return config.defaults() | {"data.name": name, "data.root": str(root),
                                "data.val_fraction": 0.25, "data.augment": False} | changes


def write_idx_folder(folder: Path, gzipped: bool) -> dict:
    """The four official Fashion-MNIST file names directly in `folder` (tiny contents)."""
    import gzip
    train_x, train_y = tiny_images("fashionmnist", N_TRAIN, 0, 0)
    test_x, test_y = tiny_images("fashionmnist", N_TEST, N_TRAIN, 1)
    for stem, array in (("train-images-idx3-ubyte", train_x[:, 0]),
                        ("train-labels-idx1-ubyte", train_y),
                        ("t10k-images-idx3-ubyte", test_x[:, 0]),
                        ("t10k-labels-idx1-ubyte", test_y)):
        write_idx(folder / stem, array)
        if gzipped:
            raw = (folder / stem).read_bytes()
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            (folder / stem).unlink()
    return {"train_x": train_x, "test_x": test_x, "test_y": test_y}


def pixels(x: torch.Tensor, splits: D.Splits) -> torch.Tensor:
    """Normalised image back to uint8 pixels via Splits.mean / Splits.std."""
    mean, std = torch.tensor(splits.mean).view(-1, 1, 1), torch.tensor(splits.std).view(-1, 1, 1)
    return (x * std + mean).mul(255).round().to(torch.uint8)


def image_id(x: torch.Tensor, splits: D.Splits) -> int:
    p = pixels(x, splits)
    return int(p[0, 0, 0]) + 256 * int(p[0, 0, 1])
