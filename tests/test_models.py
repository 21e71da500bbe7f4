"""The model zoo (`analogai_fl.models`): shapes, layouts, state dicts, and grouped
convolutions split for aihwkit.

CPU only and small: a few 32x32 images per model. Every model under weight noise, in an MSNAT
step and converted to analog tiles: test_noise.py, test_training.py, test_analog.py.
"""

import pytest
import torch
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import InferenceRPUConfig
from helpers import LAYERS, NAMES, build
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock

from analogai_fl import schema
from analogai_fl.models import (
    MODELS,
    GroupedConv,
    merge_grouped_convs,
    split_grouped_convs,
)
from analogai_fl.noise import noisy_forward


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels,num_classes,image_size", [(1, 10, 32), (3, 7, 32),
                                                                (1, 10, 28)])
def test_logits_shape(name, in_channels, num_classes, image_size):
    model = build(name, in_channels, num_classes, image_size).eval()
    out = model(torch.randn(3, in_channels, image_size, image_size))
    assert out.shape == (3, num_classes) and torch.isfinite(out).all()


def test_registry_matches_the_config_choices():
    assert tuple(MODELS) == schema.MODEL_NAMES


@pytest.mark.parametrize("name", NAMES)
def test_layers_are_exact_plain_classes_without_parametrizations(name):
    model = build(name)
    for module in model.modules():
        if isinstance(module, LAYERS):
            assert type(module) in LAYERS
            assert not hasattr(module, "parametrizations")


def test_resnet18_is_torchvisions_with_a_cifar_stem():
    model = build("resnet18", in_channels=3)
    assert isinstance(model.layer1[0], BasicBlock)
    stem = model.conv1
    assert (stem.in_channels, stem.kernel_size, stem.stride, stem.padding) == (3, (3, 3),
                                                                               (1, 1), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10
    features = {}
    model.avgpool.register_forward_hook(lambda m, i, o: features.update({"in": i[0]}))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert features["in"].shape == (1, 512, 4, 4)  # total stride 8
    shortcuts = [n for n, m in model.named_modules() if n.endswith("downsample.0")]
    assert shortcuts == ["layer2.0.downsample.0", "layer3.0.downsample.0",
                         "layer4.0.downsample.0"]


def test_mobilenetv2_is_torchvisions_with_small_image_strides():
    model = build("mobilenetv2", in_channels=3)
    assert sum(isinstance(m, InvertedResidual) for m in model.modules()) == 17
    stem = model.features[0][0]
    assert (stem.in_channels, stem.stride) == (3, (1, 1))
    features = {}
    model.features.register_forward_hook(lambda m, i, o: features.update({"map": o}))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert features["map"].shape == (1, 1280, 4, 4)  # total stride 8 (torchvision: 32)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_vgg8_layout_and_kaiming_fan_out_init():
    model = build("vgg8", in_channels=3, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(512 * 4 * 4, 1024), (1024, 10)]
    assert build("vgg8", image_size=28)[-3].in_features == 512 * 3 * 3
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * 3 * 3))
    for conv in convs[2:]:
        expected = (2 / (conv.out_channels * 9)) ** 0.5
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_small_models_refuse_too_small_images():
    with pytest.raises(ValueError):
        build("vgg8", image_size=7)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_keeps_weights_and_batchnorm_buffers(name):
    trained = build(name).train()
    noisy_forward(trained, torch.randn(4, 1, 32, 32), 0.1)  # moves the BN statistics
    fresh = build(name, seed=1)
    fresh.load_state_dict(trained.state_dict())
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(fresh.eval()(x), trained.eval()(x))
    for (n, a), (_, b) in zip(trained.state_dict().items(), fresh.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), n


def test_aihwkit_refuses_grouped_convolutions():
    """The finding behind split_grouped_convs: aihwkit 1.1.0 raises for groups != 1."""
    with pytest.raises(ValueError, match="Only one group is supported"):
        convert_to_analog(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), InferenceRPUConfig())


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),  # depthwise
    nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3, bias=True),  # grouped, multiplier 2
])
def test_split_grouped_convs_is_the_same_function_and_merges_back(conv):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(), conv)
    split = split_grouped_convs(model)
    assert model[1] is conv and conv.groups > 1  # the argument is left alone
    parts = split[1]
    assert isinstance(parts, GroupedConv) and len(parts.convs) == conv.groups
    assert all(type(c) is nn.Conv2d and c.groups == 1 for c in parts.convs)
    x = torch.randn(2, 6, 9, 9)
    assert torch.allclose(split(x), model(x), atol=1e-6)
    merged = merge_grouped_convs(split)
    assert type(merged[1]) is nn.Conv2d and merged[1].groups == conv.groups
    assert merged.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(merged.state_dict()[key], value)


def test_split_mobilenet_block_is_exact_on_noise_free_analog_tiles():
    """The analog form computes what the digital block computes (perfect tiles: no noise, no
    converters), one tile per depthwise channel."""
    torch.manual_seed(0)
    block = InvertedResidual(8, 8, 1, expand_ratio=2).eval()  # residual, 16-channel depthwise
    rpu = InferenceRPUConfig()
    rpu.forward.is_perfect = True
    analog_block = convert_to_analog(split_grouped_convs(block), rpu).eval()
    assert len(list(analog_block.analog_layers())) == 1 + 16 + 1
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(analog_block(x), block(x), atol=1e-4)


def test_split_mobilenetv2_is_the_same_network():
    model = build("mobilenetv2").eval()
    split = split_grouped_convs(model)
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in split.modules())
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(split(x), model(x), atol=1e-5)
    assert merge_grouped_convs(split).state_dict().keys() == model.state_dict().keys()


