"""Networks built only from plain nn.Conv2d / nn.Linear, so aihwkit converts every layer.

aihwkit's `convert_to_analog` matches layers by exact class: subclasses, parametrized layers
or functional convolutions would silently stay digital.
"""

from __future__ import annotations

from torch import nn


def lenet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """LeNet-5: two 5x5 convolutions with max pooling, three fully connected layers."""
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"lenet needs images of at least 16x16, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def mlp(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Three-layer perceptron on the flattened image (logits out, no softmax)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


MODELS = {"lenet": lenet, "mlp": mlp}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return MODELS[name](in_channels, num_classes, image_size)
