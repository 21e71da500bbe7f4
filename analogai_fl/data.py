"""Data sets, their train / validation / test splits, and the clients' shares of the training split.

`load_data(DataSettings)` is the entry point (`settings.load` builds the settings);
`data.name` picks

- ``digits``: scikit-learn's 8x8 digits (ships with the package, so it runs offline), a
  stratified train / val / test split of all 1797 images (`data.val_fraction`,
  `data.test_fraction`), upsampled to `data.image_size`, normalised with the training split's
  mean and std (one scalar, as the images are grey), no augmentation; `data.max_train_examples`
  keeps the first N of its (seeded random) training split;
- ``imagefolder``: your own images in torchvision's ImageFolder layout (`image_folder`);
- ``mnist``, ``fashionmnist``, ``cifar10``, ``cifar100``, ``svhn``: read through torchvision's
  own data set classes from `data.root` in torchvision's layout (``MNIST/raw/``,
  ``FashionMNIST/raw/``, ``cifar-10-batches-py/``, ``cifar-100-python/``, and SVHN's
  ``train_32x32.mat`` / ``test_32x32.mat`` directly in `data.root`); MNIST and Fashion-MNIST
  also from a folder holding their four official IDX files as distributed (`idx`), such as
  Debian's ``/usr/share/datasets/fashion-mnist``. The official test split is
  the test set; the validation split is carved from the official training split (stratified,
  seeded by `seed`); `data.max_train_examples` then keeps a seeded random subset of the rest.

Images of the torchvision sets are resized once to `data.image_size` (MNIST's 28 px -> 32 px by
default) and kept in memory as uint8; each sample is converted and normalised when it is read.
Normalisation is per channel with the mean and std of the training split (the whole training
part left after the validation split is carved, un-augmented, resized), computed here rather
than taken from published constants, so it is right for every data set and image size.
`Splits.mean` / `Splits.std` hold these numbers: ``pixel = x * std + mean`` lies in [0, 1].

Augmentation (`data.augment`) touches the training split only: a random crop with zero padding
(4 px at 32 px, scaled with the image size) for every torchvision set, plus random horizontal
flips for CIFAR-10/100 (flipped digits and house numbers are other symbols). It draws from
torch's global random generator (`torch.manual_seed` makes it reproducible).

Nothing is downloaded unless asked: `load_data(data, download=True)` (the server, once, before
any client starts) fetches a missing torchvision set into `data.root`; clients call it with
``download=False`` so that parallel clients never race to download. A missing set, or a failed
download, raises `DataNotFoundError` (a `ConfigError`) naming the folder looked at and how to
get the files there.

The clients' shares of the training split are made in `partitions`.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from . import idx, image_folder
from .errors import ConfigError
from .image_folder import read_image_folder
from .images import ImageDataset, RandomCropFlip, channel_stats, resize_images
from .models import DataShape
from .split_sizes import check_training_split


@dataclass(frozen=True)
class DataSettings:
    """Which data set, how it is split among the clients (`data.*`, seeded by `seed`)."""

    name: str
    root: Path  # `~` expanded, absolute
    download: bool
    augment: bool
    val_fraction: float  # fractions of images (0..1), not percent
    test_fraction: float
    image_size: int  # pixels per side
    max_train_examples: int  # 0 = all
    partition: str
    alpha: float
    seed: int
    clients: int  # K: the partition's number of shares


@dataclass(frozen=True)
class Splits:
    """The three splits of one data set; each yields (normalised float image, long label).

    `mean` and `std` have one entry per channel: ``pixel = x * std + mean`` maps a normalised
    image back to pixel space, [0, 1] (adversarial training clamps there).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    in_channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> DataShape:
        return DataShape(self.in_channels, self.num_classes, self.image_size)


class DataNotFoundError(ConfigError):
    """A torchvision data set is not in `data.root` (or could not be downloaded there)."""


@functools.lru_cache(maxsize=4)
def digits(image_size: int, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """scikit-learn's 8x8 digits (ships with the package, so runs offline), stratified split,
    upsampled to `image_size` and normalised with the training split's mean and std."""
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    index = list(range(len(labels)))
    rest, test = train_test_split(index, test_size=test_fraction, random_state=seed,
                                  stratify=bunch.target)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                  random_state=seed, stratify=bunch.target[rest])
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                           align_corners=False)
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std

    def subset(idx: list[int]) -> TensorDataset:
        return TensorDataset(images[idx], labels[idx])

    return Splits(subset(train), subset(val), subset(test), in_channels=1, num_classes=10,
                  image_size=image_size, mean=(mean.item(),), std=(std.item(),))


@functools.lru_cache(maxsize=4)
def _digits_limited(image_size: int, val_fraction: float, test_fraction: float, seed: int,
                    max_train_examples: int) -> Splits:
    """`digits` with only the first `max_train_examples` (0 = all) of its training split, which
    is in seeded random order; normalisation stays that of the whole training split."""
    splits = digits(image_size, val_fraction, test_fraction, seed)
    if not max_train_examples:
        return splits
    return dataclasses.replace(splits, train=TensorDataset(
        *(t[:max_train_examples] for t in splits.train.tensors)))


@dataclass(frozen=True)
class _TorchvisionSet:
    cls_name: str  # class in torchvision.datasets
    channels: int
    num_classes: int
    flip: bool  # horizontal flips are a valid augmentation (natural images)

    def cls(self) -> type:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.cls_name)

    def folder(self, root: Path) -> Path:
        """Where torchvision keeps (and looks for) this set's files under `root`."""
        cls = self.cls()
        if hasattr(cls, "resources"):  # MNIST family: <root>/<ClassName>/raw
            return root / cls.__name__ / "raw"
        if hasattr(cls, "base_folder"):  # CIFAR: <root>/cifar-10-batches-py etc.
            return root / cls.base_folder
        return root  # SVHN: the .mat files directly in root

    def files(self) -> list[str]:
        cls = self.cls()
        if hasattr(cls, "resources"):
            return [name.removesuffix(".gz") for name, _ in cls.resources]
        if hasattr(cls, "base_folder"):
            return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [cls.split_list[split][1] for split in ("train", "test")]

    def open(self, root: Path, train: bool, download: bool) -> Any:
        split = {"split": "train" if train else "test"} if self.cls_name == "SVHN" else {
            "train": train}
        return self.cls()(str(root), download=download, **split)

    def arrays(self, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, C, H, W) and long labels of one official split."""
        data = self.open(root, train, download=False)
        images = torch.as_tensor(np.asarray(data.data))
        if self.cls_name in ("MNIST", "FashionMNIST"):
            images = images.unsqueeze(1)  # (N, 28, 28)
        elif self.cls_name.startswith("CIFAR"):
            images = images.permute(0, 3, 1, 2)  # stored (N, H, W, C)
        labels = data.labels if self.cls_name == "SVHN" else data.targets
        return images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long)


IDX_SETS = ("MNIST", "FashionMNIST")  # also read from a folder of their official IDX files

TORCHVISION_SETS: dict[str, _TorchvisionSet] = {
    "mnist": _TorchvisionSet("MNIST", 1, 10, flip=False),
    "fashionmnist": _TorchvisionSet("FashionMNIST", 1, 10, flip=False),
    "cifar10": _TorchvisionSet("CIFAR10", 3, 10, flip=True),
    "cifar100": _TorchvisionSet("CIFAR100", 3, 100, flip=True),
    "svhn": _TorchvisionSet("SVHN", 3, 10, flip=False),
}


def data_shape(data: DataSettings) -> DataShape:
    """The shape of `data.name`'s images at `data.image_size`, known without reading them."""
    if data.name == "digits":
        return DataShape(1, 10, data.image_size)
    if data.name == "imagefolder":  # RGB, one class per folder of train/
        return DataShape(3, len(image_folder.classes(data.root)), data.image_size)
    spec = TORCHVISION_SETS[data.name]
    return DataShape(spec.channels, spec.num_classes, data.image_size)


def _how_to_get(name: str, spec: _TorchvisionSet, root: Path) -> str:
    return (f"To get it: run once with data.download=true on a machine with internet access "
            f"(the server downloads it into data.root before any client starts), or fetch it "
            f"elsewhere (torchvision.datasets.{spec.cls_name}(root, download=True)) and copy "
            f"the files {', '.join(spec.files())} into {spec.folder(root)}; or set data.root to "
            f"the folder that already holds them (now data.root={root})"
            + (", or to a folder holding the official IDX files as distributed (gzipped or "
               "not), e.g. Debian's dataset-fashion-mnist: "
               "data.root='/usr/share/datasets/fashion-mnist'" if spec.cls_name in IDX_SETS
               else "") + ".")


def _read(name: str, root: Path) -> tuple[torch.Tensor, ...]:
    spec = TORCHVISION_SETS[name]
    # MNIST and Fashion-MNIST files look alike: each is checked by content as it is read
    if spec.cls_name in IDX_SETS and idx.files_in(root):  # the official files, as distributed
        return (*idx.read_split(root, train=True, name=name),
                *idx.read_split(root, train=False, name=name))
    if spec.cls_name in IDX_SETS:  # torchvision's layout: torchvision reads them
        idx.check_content(spec.folder(root), name)
    try:
        return (*spec.arrays(root, train=True), *spec.arrays(root, train=False))
    except RuntimeError as err:  # torchvision: "Dataset not found [or corrupted]. ..."
        raise DataNotFoundError(
            f"data.name='{name}': torchvision's {spec.cls_name} found no usable data set in "
            f"{spec.folder(root)} (looked for {', '.join(spec.files())}; torchvision says: "
            f"{str(err).splitlines()[0]}). {_how_to_get(name, spec, root)}") from None


def _download(name: str, root: Path) -> None:
    """torchvision's download of `name`, staged in a temporary folder and moved into `root`
    only once both splits opened: a failed download leaves `root` as it was."""
    spec = TORCHVISION_SETS[name]
    with tempfile.TemporaryDirectory(prefix="analogai-fl-download-") as staging:
        try:
            for train in (True, False):
                spec.open(Path(staging), train, download=True)
        except Exception as err:
            reason = " ".join(str(err).split())[:300]
            raise DataNotFoundError(
                f"data.name='{name}': downloading {spec.cls_name} into {spec.folder(root)} "
                f"failed ({type(err).__name__}: {reason}). Does this machine have internet "
                f"access? {_how_to_get(name, spec, root)}") from err
        for file in sorted(p for p in Path(staging).rglob("*") if p.is_file()):
            target = root / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(file, target)


def split_validation(labels: np.ndarray, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: stratified by label, seeded; a plain seeded random split where
    stratification is impossible (a class with one example, or fewer val slots than classes)."""
    index = np.arange(len(labels))
    try:
        train, val = train_test_split(index, test_size=val_fraction, random_state=seed,
                                      stratify=labels)
    except ValueError:
        train, val = train_test_split(index, test_size=val_fraction, random_state=seed)
    return np.asarray(train), np.asarray(val)


def _augmentation(spec: _TorchvisionSet, image_size: int) -> RandomCropFlip:
    """Random crop with zero padding 4 at 32 px (scaled with the size), flips for CIFAR."""
    return RandomCropFlip(padding=max(1, round(4 * image_size / 32)), flip=spec.flip)


@functools.lru_cache(maxsize=2)
def torchvision_splits(name: str, root: str, image_size: int, val_fraction: float,
                       max_train_examples: int, augment: bool, seed: int) -> Splits:
    """A torchvision data set from `root` (never downloads; see `load_data`)."""
    spec = TORCHVISION_SETS[name]
    train_x, train_y, test_x, test_y = _read(name, Path(root))
    return _splits(name, root, (resize_images(train_x, image_size), train_y,
                                resize_images(test_x, image_size), test_y), spec.channels,
                   spec.num_classes, val_fraction, max_train_examples,
                   _augmentation(spec, image_size) if augment else None, seed)


def _splits(name: str, root: str, arrays: tuple[torch.Tensor, ...], channels: int,
            num_classes: int, val_fraction: float, max_train_examples: int,
            aug: RandomCropFlip | None, seed: int) -> Splits:
    """Train / validation / test of uint8 images already at their size (`arrays`: train
    images, labels, test images, labels): the validation split carved from the training
    images (stratified, seeded), normalised with the training part's per-channel statistics,
    then `max_train_examples` of the rest."""
    train_x, train_y, test_x, test_y = arrays
    if len(train_y) < 2:
        raise ConfigError(f"data.name='{name}': the training split in {root} has "
                          f"{len(train_y)} image(s); need at least 2 to carve a validation split")
    check_training_split(name, len(train_y), val_fraction)
    train_idx, val_idx = split_validation(train_y.numpy(), val_fraction, seed)
    train_images = train_x[torch.from_numpy(train_idx)]
    mean, std = channel_stats(train_images)  # of the whole training part, whatever the limit
    if max_train_examples:  # train_idx is in seeded random order: its head is a random choice
        train_idx = train_idx[:max_train_examples]
        train_images = train_images[:max_train_examples]
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return Splits(
        train=ImageDataset(train_images, train_y[train_idx], mean, std, aug),
        val=ImageDataset(train_x[val_idx], train_y[val_idx], mean, std),
        test=ImageDataset(test_x, test_y, mean, std),
        in_channels=channels, num_classes=num_classes, image_size=train_x.shape[-1],
        mean=tuple(mean.tolist()), std=tuple(std.tolist()))


def _image_folder(data: DataSettings) -> Splits:
    """`data.name='imagefolder'` (`image_folder`): your own images, split as the torchvision
    sets; augmentation without flips."""
    *arrays, names = read_image_folder(str(data.root), data.image_size, data.test_fraction,
                                       data.seed)
    aug = RandomCropFlip(padding=max(1, round(4 * data.image_size / 32)), flip=False)
    return _splits("imagefolder", str(data.root), tuple(arrays), 3, len(names),
                   data.val_fraction, data.max_train_examples, aug if data.augment else None,
                   data.seed)


def load_data(data: DataSettings, download: bool = False) -> Splits:
    """The splits of `data.name` (cached per process: Ray's client processes call this every
    round). `download=True` first fetches a missing torchvision set into `data.root`: the
    server passes `data.download`, once, before clients start; clients pass False."""
    if data.name == "digits":
        return _digits_limited(data.image_size, data.val_fraction, data.test_fraction,
                               data.seed, data.max_train_examples)
    if data.name == "imagefolder":
        return _image_folder(data)
    if data.name not in TORCHVISION_SETS:
        raise ConfigError(f"key 'data.name' expects one of 'digits', "
                          f"{', '.join(repr(n) for n in TORCHVISION_SETS)}, got {data.name!r}")
    args = (data.name, str(data.root), data.image_size, data.val_fraction,
            data.max_train_examples, data.augment, data.seed)
    try:
        return torchvision_splits(*args)
    except DataNotFoundError:
        if not download:
            raise
    _download(data.name, data.root)
    return torchvision_splits(*args)
