"""Networks built only from plain nn.Conv2d / nn.Linear, so aihwkit converts every layer.

aihwkit's `convert_to_analog` matches layers by exact class: subclasses, parametrized layers
or functional convolutions would silently stay digital. Every builder has the signature
`(in_channels, num_classes, image_size) -> nn.Module` and returns logits; `model_for(name,
shape)` builds one for a data set's `DataShape`, `deployed_model` the same holding trained
weights as they go onto the chip, and `model_facts` says what the checks and the strategies
need to know of a configured model (BatchNorm, buffer names).

ResNet-18 and MobileNetV2 are torchvision's own definitions (imported, not copied), adapted to
small images; VGG-8 has no torchvision definition and is built here.

Grouped convolutions (MobileNetV2's depthwise 3x3 convolutions, groups = channels): aihwkit
1.1.0's analog convolutions refuse them (`_AnalogConvNd.__init__` raises "Only one group is
supported", for every tile, C++ or torch). The digital model keeps torchvision's fast grouped
nn.Conv2d for training; `split_grouped_convs` gives the equivalent model in which every group
is its own plain convolution, so that it becomes its own analog tile holding exactly that
group's weights (a depthwise 3x3 kernel: one 9x1 tile), with its own weight scaling,
conductance range and drift compensation. `merge_grouped_convs` is the inverse. A dense
block-diagonal conversion would compute the same digitally but is not faithful in analog: its
zero weights are programmed, read and drifted like real ones (aihwkit's PCM model gives a
target of 0 uS a programming spread too) and add their noise to every output. The price of
one tile per channel: MobileNetV2 has 7172 tiles, so converting, programming and evaluating
it on CPU costs far more than ResNet-18.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from . import user_model
from .clip import gaussian_clip_
from .config import PROJECT_DIR
from .noise import NOISY_LAYERS
from .quantization import quantize_per_channel

PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


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


VGG8_CONVS = (64, 128, "M", 256, 256, "M", 512, 512, "M")


def vgg8(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """VGG-8: six 3x3 convolutions (64-128-M-256-256-M-512-512-M), each followed by
    BatchNorm and ReLU, then FC(512 * (image_size // 8)^2 -> 1024) - ReLU - FC(1024 ->
    num_classes).

    The convolutions have no bias (the BatchNorm after each one has it) and are initialised
    Kaiming-normal with fan_out; BatchNorm starts at (1, 0), the linear layers keep PyTorch's
    default initialisation.
    """
    side = image_size // 8
    if side < 1:
        raise ValueError(f"vgg8 needs images of at least 8x8, got {image_size}")
    layers: list[nn.Module] = []
    channels = in_channels
    for v in VGG8_CONVS:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        conv = nn.Conv2d(channels, v, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        channels = v
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(channels * side * side, 1024), nn.ReLU(inplace=True),
        nn.Linear(1024, num_classes),
    )


def _small_image_stem(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 stride-1 convolution, initialised as torchvision initialises its convolutions."""
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution taking
    `in_channels` and no max-pooling (torchvision's 7x7 stride-2 convolution and max-pool
    would shrink a 32x32 image to 8x8 before the first block). Blocks, shortcuts (1x1
    downsample convolutions), adaptive average pooling and the `num_classes` head are
    torchvision's; so is the initialisation (Kaiming-normal fan_out, BatchNorm (1, 0)).
    Works for any image_size >= 1 (32x32 ends the last stage at 4x4).
    """
    from torchvision.models import resnet18  # here: 1 s of imports every process would pay

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = _small_image_stem(in_channels, model.conv1.out_channels)
    model.maxpool = nn.Identity()
    return model


# torchvision's MobileNetV2 setting (expansion t, channels c, repeats n, first stride s) with
# the second stage's stride 2 -> 1, as the common CIFAR variants do.
MOBILENETV2_SMALL_IMAGES = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],  # torchvision: stride 2
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def mobilenetv2(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision's MobileNetV2 (width 1.0, its dropout 0.2 before the head) for small images.

    The first convolution takes `in_channels` with stride 1 instead of 2, and the second
    stage (24 channels) keeps stride 1 instead of 2: the total stride is 8 instead of 32,
    so a 32x32 image ends the feature stack at 4x4 (torchvision's strides would leave 1x1).
    Everything else, including the initialisation (Kaiming-normal fan_out convolutions),
    is torchvision's. The depthwise convolutions are grouped nn.Conv2d: convert the model
    to analog through `split_grouped_convs` (see the module docstring).
    """
    from torchvision.models import mobilenet_v2  # here: see resnet18

    model = mobilenet_v2(weights=None, num_classes=num_classes,
                         inverted_residual_setting=MOBILENETV2_SMALL_IMAGES)
    stem = model.features[0][0]
    model.features[0][0] = _small_image_stem(in_channels, stem.out_channels)
    return model


MODELS = {"lenet": lenet, "mlp": mlp, "vgg8": vgg8, "resnet18": resnet18,
          "mobilenetv2": mobilenetv2}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A fresh `MODELS[name]`, or the network of your own that `name` names by import path
    ('package.module:factory', `user_model`), initialised from torch's global generator.
    ValueError when a built-in model cannot take `image_size`; ConfigError naming
    `model.name` when a factory cannot be imported or does not return a module."""
    if name in MODELS:
        return MODELS[name](in_channels, num_classes, image_size)
    factory = user_model.import_factory(name, PROJECT_DIR)
    return user_model.built(name, factory, in_channels, num_classes, image_size)


@dataclass(frozen=True)
class DataShape:
    """What a model must know of its data set: channels per image, number of classes and
    pixels per image side (`data.data_shape` gives it for the settings, `Splits.shape` for
    loaded data)."""

    in_channels: int
    num_classes: int
    image_size: int


def model_for(name: str, shape: DataShape) -> nn.Module:
    """A fresh `name` model for images of `shape`."""
    return build_model(name, shape.in_channels, shape.num_classes, shape.image_size)


@torch.no_grad()
def quantize_weights_(model: nn.Module, bits: int) -> nn.Module:
    """Write the per-channel quantised weights (`quantization.quantize_per_channel`) into
    every Conv/Linear layer of `model`: what a QAT model is deployed (and evaluated) as."""
    for module in model.modules():
        if isinstance(module, NOISY_LAYERS):
            module.weight.copy_(quantize_per_channel(module.weight, bits))
    return model


def deployed_model(name: str, shape: DataShape, state: Mapping[str, torch.Tensor],
                   weight_bits: int = 0, clip_sigma: float = 0.0) -> nn.Module:
    """The `name` model for `shape` holding `state`, as it goes onto the chip: with QAT
    (`weight_bits` > 0, `recovery.qat.weight_bits`) its weights quantised per output
    channel; with `clip_sigma` > 0 (`inference.clip_sigma`) each Conv/Linear weight then
    clipped once to +-clip_sigma stds of its layer (`clip.gaussian_clip_`); in eval mode on
    the CPU. Raises RuntimeError (torch's `load_state_dict`) when `state` does not fit the
    model. The caller's random generator is left alone."""
    with torch.random.fork_rng(devices=[]):
        model = model_for(name, shape)
    model.load_state_dict(state)
    if weight_bits:
        quantize_weights_(model, weight_bits)
    if clip_sigma:
        gaussian_clip_(model, clip_sigma)
    return model.eval()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass(frozen=True)
class ModelFacts:
    """What the checks and the strategies need to know of a configured model."""

    batchnorm: bool
    buffer_names: frozenset[str]  # state_dict keys that are not trainable parameters


@functools.lru_cache(maxsize=8)
def model_facts(name: str, shape: DataShape) -> ModelFacts:
    """`ModelFacts` of the `name` model for `shape`, built and run once on two blank images
    (once per process and model: the ServerApp's checks and its strategy share it). Raises
    ValueError or RuntimeError (torch's) when the model cannot take the shape; the caller's
    random generator is left alone."""
    with torch.random.fork_rng(devices=[]):
        model = model_for(name, shape)
        with torch.no_grad():
            model.eval()(torch.zeros(2, shape.in_channels, shape.image_size, shape.image_size))
    return ModelFacts(has_batchnorm(model), frozenset(n for n, _ in model.named_buffers()))


class GroupedConv(nn.Module):
    """A grouped convolution as `groups` plain convolutions on consecutive channel slices,
    outputs concatenated: the same function as the grouped layer it was built from.

    Deliberately not a Conv subclass: aihwkit converts its children, one tile per group.
    """

    def __init__(self, convs: list[nn.Module]):
        super().__init__()
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.chunk(len(self.convs), dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, parts, strict=True)],
                         dim=1)


def _split(conv: nn.Module) -> GroupedConv:
    g = conv.groups
    parts = []
    weights = conv.weight.detach().chunk(g, dim=0)
    biases = conv.bias.detach().chunk(g) if conv.bias is not None else [None] * g
    for weight, bias in zip(weights, biases, strict=True):
        part = type(conv)(conv.in_channels // g, conv.out_channels // g, conv.kernel_size,
                          stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                          bias=bias is not None, padding_mode=conv.padding_mode,
                          device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            part.weight.copy_(weight)
            if bias is not None:
                part.bias.copy_(bias)
        part.train(conv.training)
        parts.append(part)
    split = GroupedConv(parts)
    split.train(conv.training)
    return split


def _merge(split: GroupedConv) -> nn.Module:
    first = split.convs[0]
    g = len(split.convs)
    if any(type(c) is not type(first) for c in split.convs):
        raise TypeError("merge_grouped_convs needs plain digital convolutions in every group")
    conv = type(first)(first.in_channels * g, first.out_channels * g, first.kernel_size,
                       stride=first.stride, padding=first.padding, dilation=first.dilation,
                       groups=g, bias=first.bias is not None, padding_mode=first.padding_mode,
                       device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([c.weight for c in split.convs]))
        if conv.bias is not None:
            conv.bias.copy_(torch.cat([c.bias for c in split.convs]))
    conv.train(split.training)
    return conv


def _replace(model: nn.Module, match, make) -> nn.Module:
    if match(model):
        return make(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))
    return model


def split_grouped_convs(model: nn.Module) -> nn.Module:
    """A copy of `model` in which every grouped nn.Conv1d/2d/3d is a `GroupedConv` of plain
    groups=1 convolutions holding the same weights; `model` itself is left unchanged.

    For aihwkit, whose analog convolutions refuse groups != 1: each group becomes its own
    tile. A model without grouped convolutions comes back as an unchanged copy.
    """
    return _replace(copy.deepcopy(model),
                    lambda m: type(m) in PLAIN_CONVS and m.groups > 1, _split)


def merge_grouped_convs(model: nn.Module) -> nn.Module:
    """Inverse of `split_grouped_convs` (a copy with every `GroupedConv` a grouped conv
    again), e.g. to load the weights of a split model into `build_model`'s structure."""
    return _replace(copy.deepcopy(model), lambda m: isinstance(m, GroupedConv), _merge)
