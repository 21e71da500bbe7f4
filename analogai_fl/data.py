"""Data sets and their train / validation / test splits."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset


@dataclass(frozen=True)
class Splits:
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    in_channels: int
    num_classes: int
    image_size: int


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
                  image_size=image_size)


def load_data(cfg: Mapping[str, Any]) -> Splits:
    return digits(cfg["data.image_size"], cfg["data.val_fraction"], cfg["data.test_fraction"],
                  cfg["seed"])
