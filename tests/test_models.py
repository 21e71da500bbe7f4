"""The model zoo: shapes, MSNAT training with BatchNorm, noise coverage, full analog conversion.

CPU only and small: a few 32x32 images per model.
"""

import pytest
import torch
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import InferenceRPUConfig
from conftest import experiment, local_training
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock

from analogai_fl import analog, config, schema
from analogai_fl.models import (
    MODELS,
    GroupedConv,
    build_model,
    merge_grouped_convs,
    split_grouped_convs,
)
from analogai_fl.noise import noisy_forward, noisy_weight_names
from analogai_fl.training import make_optimizer, msnat_loss

NAMES = sorted(MODELS)
LAYERS = (nn.Conv2d, nn.Linear)


def build(name, in_channels=1, num_classes=10, image_size=32, seed=0):
    torch.manual_seed(seed)
    return build_model(name, in_channels, num_classes, image_size)


def expected_tiles(model: nn.Module) -> int:
    """One aihwkit tile per Linear and per group of every convolution."""
    return sum(m.groups if isinstance(m, nn.Conv2d) else 1
               for m in model.modules() if isinstance(m, LAYERS))


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
def test_noise_reaches_every_conv_and_linear_weight(name):
    model = build(name).train()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LAYERS)}
    assert sorted(noisy_weight_names(model)) == sorted(f"{n}.weight" for n in layers)
    used = {}
    for n, m in layers.items():
        m.register_forward_pre_hook(lambda mod, _i, n=n: used.update({n: mod.weight.clone()}))
    x = torch.randn(2, 1, 32, 32)
    noisy_forward(model, x, 0.1)
    assert set(used) == set(layers)  # every layer ran ...
    for n, m in layers.items():  # ... with a perturbed weight
        assert not torch.equal(used[n], m.weight), n
    model.eval()  # BN on fixed statistics: compare the same function with and without noise
    assert not torch.allclose(noisy_forward(model, x, 0.1, in_eval=True), model(x))


def test_resnet_shortcut_convolutions_are_noisy():
    names = noisy_weight_names(build("resnet18"))
    for layer in (2, 3, 4):
        assert f"layer{layer}.0.downsample.0.weight" in names


@pytest.mark.parametrize("name", NAMES)
def test_msnat_step_trains_every_parameter_and_batchnorm_statistics(name):
    model = build(name).train()
    setting = local_training(config.defaults() | {"training.use_neg": True}, 0.1,
                                        0.0)
    assert setting.feedback is not None and setting.sigma > 0
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    norms = {n: (m.running_mean.clone(), m.running_var.clone())
             for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    optimizer = make_optimizer(model, setting)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    loss, z0 = msnat_loss(model, x, y, setting, torch.Generator().manual_seed(0))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and z0.shape == (4, 10)
    for n, p in model.named_parameters():
        assert not torch.equal(p, params[n]), f"{n} did not change"
    for n, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            mean, var = norms[n]
            assert not torch.equal(m.running_mean, mean) and not torch.equal(m.running_var, var)
            assert m.num_batches_tracked.item() > 0
    assert (len(norms) > 0) == (name in {"vgg8", "resnet18", "mobilenetv2"})


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


def test_to_analog_maps_grouped_convolutions_to_one_tile_per_group():
    protocol = experiment().evaluation.protocol
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.Flatten(), nn.Linear(8, 2))
    analog_model = analog.to_analog(model, protocol)
    assert len(list(analog_model.analog_layers())) == 4 + 1
    assert model[0].groups == 4  # the argument is left alone


@pytest.mark.parametrize("name", NAMES)
def test_drift_accuracy_converts_every_layer_and_returns_sane_numbers(name, monkeypatch):
    model = build(name, in_channels=3)
    converted = []
    to_analog = analog.to_analog

    def spy(*args, **kwargs):
        converted.append(to_analog(*args, **kwargs))
        return converted[-1]

    monkeypatch.setattr(analog, "to_analog", spy)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    result = analog.drift_accuracy(model, data, experiment().evaluation.protocol, [1.0],
                                   repeats=1, seed=0)
    assert len(converted) == 1
    assert len(list(converted[0].analog_layers())) == expected_tiles(model)
    assert not any(type(m) in LAYERS for m in converted[0].modules())  # nothing left digital
    assert set(result) == {"1s"}
    entry = result["1s"]
    assert 0.0 <= entry["mean"] <= 1.0 and entry["std"] == 0.0 and entry["seconds"] == 1.0
    assert entry["mean"] * 8 == pytest.approx(round(entry["mean"] * 8))  # k of 8 images
