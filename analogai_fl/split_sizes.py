"""How many images each split of `data.*` holds, checked before any work.

The splits are scikit-learn's `train_test_split` with a float `test_size`: it holds out
ceil(n x fraction) of n images (its documented rounding) and, stratified, needs at least one
image of every class on each side. digits' sizes are known without loading it (scikit-learn's
`load_digits`: 1797 images, 10 classes), so its splits are checked when the settings are
built; a torchvision set's when its files are read (`data.torchvision_splits`).
"""

from __future__ import annotations

import math

from .errors import ConfigError

DIGITS_IMAGES = 1797  # scikit-learn's load_digits (its documentation; tests/test_data.py)
DIGITS_CLASSES = 10


def held_out(n: int, fraction: float) -> int:
    """Images `train_test_split(test_size=fraction)` holds out of `n`: ceil(n x fraction)."""
    return math.ceil(n * fraction)


def _smallest(works, start: float) -> float:
    """The smallest fraction with 4 decimals from `start` up for which `works` holds."""
    f = math.ceil(start * 1e4) / 1e4
    while not works(f) and f < 1:
        f = round(f + 1e-4, 4)
    return f


def _largest(works, start: float) -> float:
    """The largest fraction with 4 decimals from `start` down for which `works` holds."""
    f = math.floor(start * 1e4) / 1e4
    while not works(f) and f > 0:
        f = round(f - 1e-4, 4)
    return f


def check_digits_splits(val_fraction: float, test_fraction: float) -> None:
    """ConfigError naming the key, the images its split would hold and the smallest value
    that works, unless digits' stratified test split (of all images) and validation split
    (of the rest) each hold every class on both sides."""
    n, c = DIGITS_IMAGES, DIGITS_CLASSES
    test = held_out(n, test_fraction)
    if test < c:
        least = _smallest(lambda f: held_out(n, f) >= c, (c - 1) / n)
        raise ConfigError(f"key 'data.test_fraction' = {test_fraction:g} gives a test split of "
                          f"{test} of digits' {n} images; a stratified split needs at least {c} "
                          f"(one per class): use at least {least:g}")
    rest = n - test
    if rest < 2 * c:  # a validation split and a training split of every class each
        most = _largest(lambda f: n - held_out(n, f) >= 2 * c, 1 - 2 * c / n)
        raise ConfigError(f"key 'data.test_fraction' = {test_fraction:g} leaves {rest} of "
                          f"digits' {n} images for validation and training; stratified, they "
                          f"need at least {c} each (one per class): use at most {most:g}")

    def val_size(f: float) -> int:
        return held_out(rest, f / (1 - test_fraction))

    val = val_size(val_fraction)
    if val < c:
        least = _smallest(lambda f: val_size(f) >= c, (c - 1) / rest * (1 - test_fraction))
        raise ConfigError(f"key 'data.val_fraction' = {val_fraction:g} gives a validation "
                          f"split of {val} of digits' {n} images; a stratified split needs at "
                          f"least {c} (one per class): use at least {least:g}")
    if rest - val < c:
        most = _largest(lambda f: rest - val_size(f) >= c, (rest - c) / rest * (1 - test_fraction))
        raise ConfigError(f"key 'data.val_fraction' = {val_fraction:g} leaves {rest - val} of "
                          f"digits' {n} images for training (with data.test_fraction = "
                          f"{test_fraction:g}); a stratified split needs at least {c} (one per "
                          f"class): use at most {most:g}")


def check_training_split(name: str, images: int, val_fraction: float) -> None:
    """ConfigError unless carving `val_fraction` out of a training split of `images` leaves
    at least one image on each side (a torchvision set, whose split falls back to a plain
    random one where stratification is impossible)."""
    val = held_out(images, val_fraction)
    if val < 1 or images - val < 1:
        largest = (images - 1) / images
        raise ConfigError(f"key 'data.val_fraction' = {val_fraction:g} leaves {images - val} "
                          f"of {name}'s {images} training images for training; use at most "
                          f"{math.floor(largest * 1e4) / 1e4:g}")
