"""Networks of a user's own, named by import path in tests (`model.name='tests.user_models:
<factory>'`): one that converts whole to aihwkit, and one of each kind the checks refuse.
Every factory has the built-in models' signature (in_channels, num_classes, image_size)."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations


def small_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A plain network aihwkit converts whole (every weight layer an exact Conv2d/Linear)."""
    return nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(96, num_classes))


class ScaledConv(nn.Conv2d):
    """A subclass of nn.Conv2d: convert_to_analog matches exact classes and skips it."""


def subclassed(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(ScaledConv(in_channels, 4, 3), nn.Flatten(),
                         nn.Linear(4 * (image_size - 2) ** 2, num_classes))


def parametrized(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), parametrizations.weight_norm(
        nn.Linear(in_channels * image_size ** 2, num_classes)))


class _Functional(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.ones(1, in_channels, 1, 1))
        self.head = nn.Linear(image_size ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.conv2d(x, self.kernel).flatten(1))


def functional(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _Functional(in_channels, num_classes, image_size)


def transposed(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(in_channels, 2, 1), nn.Flatten(),
                         nn.Linear(2 * image_size ** 2, num_classes))


def no_analog_layer(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def wrong_shape(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16, num_classes))  # 4x4 only


def not_a_module(in_channels: int, num_classes: int, image_size: int) -> int:
    return in_channels
