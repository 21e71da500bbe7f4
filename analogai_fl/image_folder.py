"""Your own images: `data.name='imagefolder'` reads torchvision's `ImageFolder` layout.

    <data.root>/train/<class>/<image>.png|jpg|...   the training images, one folder per class
    <data.root>/test/<class>/<image>...             the test images (optional: without it,
                                                    `data.test_fraction` of train/ is held out,
                                                    stratified by class, seeded by `seed`)

Class names are the folder names, sorted (torchvision's `ImageFolder.find_classes`); the test
folder must hold the same classes. Every image is read once (PIL, converted to RGB, as
`torchvision.datasets.folder.default_loader` does, so grey images get three equal channels),
resized to `data.image_size` x `data.image_size` and kept in memory as uint8. From there it is
split and normalised exactly as the torchvision sets (`data.torchvision_splits`): the
validation split carved from the training images, per-channel mean and std of the training
part, `data.max_train_examples`, and with `data.augment` a random crop with zero padding (no
flips: a flipped image of your classes may be another class).

Every problem is a ConfigError naming the key or the file, raised before any training: a
missing folder, a class folder without images, classes that differ between train/ and test/,
an image that cannot be read.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import ConfigError

TRAIN, TEST = "train", "test"


def classes(root: Path) -> list[str]:
    """The sorted class folders of `root`/train; ConfigError naming the folder when it is
    missing or holds no class folder."""
    train = root / TRAIN
    if not train.is_dir():
        raise ConfigError(f"data.name='imagefolder': no folder '{train}' (key 'data.root' = "
                          f"'{root}' must hold train/<class>/<images>, and optionally "
                          "test/<class>/<images>)")
    found = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not found:
        raise ConfigError(f"data.name='imagefolder': '{train}' holds no class folder; expected "
                          "one folder per class, each with its images")
    return found


def _images_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() in IMG_EXTENSIONS)


def _listing(split: Path, names: list[str]) -> tuple[list[Path], list[int]]:
    """Every image file of each class folder of `split` with its class index; ConfigError
    naming a class folder with no image."""
    files, labels = [], []
    for label, name in enumerate(names):
        found = _images_of(split / name)
        if not found:
            raise ConfigError(f"data.name='imagefolder': class folder '{split / name}' holds no "
                              f"image (looked for {', '.join(IMG_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    return files, labels


def _read(files: list[Path], size: int) -> torch.Tensor:
    """uint8 images (N, 3, size, size); ConfigError naming the first file PIL cannot read."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise ConfigError(f"data.name='imagefolder': cannot read image '{path}' "
                              f"({type(err).__name__}: {err})") from None
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        out[i] = TF.resize(image, [size, size], antialias=True)
    return out


@functools.lru_cache(maxsize=2)
def read_image_folder(root: str, image_size: int, test_fraction: float, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                 tuple[str, ...]]:
    """(train images, train labels, test images, test labels, class names) of the folder
    `root` (module docstring): images uint8 (N, 3, image_size, image_size), labels long.
    Without a test/ folder, a stratified, seeded `test_fraction` of train/ is the test split.
    Raises ConfigError (module docstring)."""
    from sklearn.model_selection import train_test_split

    base = Path(root)
    names = classes(base)
    files, labels = _listing(base / TRAIN, names)
    if (base / TEST).is_dir():
        theirs = sorted(p.name for p in (base / TEST).iterdir() if p.is_dir())
        if theirs != names:
            only_train = sorted(set(names) - set(theirs))
            only_test = sorted(set(theirs) - set(names))
            raise ConfigError(f"data.name='imagefolder': the classes of '{base / TEST}' differ "
                              f"from those of '{base / TRAIN}' (only in train: {only_train}; "
                              f"only in test: {only_test})")
        test_files, test_labels = _listing(base / TEST, names)
    else:
        if len(files) < 2 * len(names):
            raise ConfigError(f"data.name='imagefolder': '{base / TRAIN}' has {len(files)} "
                              f"images for {len(names)} classes: too few to hold out a test "
                              "split (add a test/ folder or more images)")
        index = np.arange(len(files))
        try:
            keep, held = train_test_split(index, test_size=test_fraction, random_state=seed,
                                          stratify=labels)
        except ValueError:  # a class too small to stratify
            keep, held = train_test_split(index, test_size=test_fraction, random_state=seed)
        test_files, test_labels = [files[i] for i in held], [labels[i] for i in held]
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    return (_read(files, image_size), torch.tensor(labels, dtype=torch.long),
            _read(test_files, image_size), torch.tensor(test_labels, dtype=torch.long),
            tuple(names))
