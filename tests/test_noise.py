"""Weight noise in the forward pass (`analogai_fl.noise`): its size, a fresh draw per
forward, the straight-through gradient, and every conv and linear weight of every model."""

import pytest
import torch
from helpers import LAYERS, NAMES, build
from torch import nn

from analogai_fl.models import MODELS, build_model
from analogai_fl.noise import noisy_forward, noisy_weight_names


@pytest.mark.parametrize("sigma,c", [(0.1, 1.0), (0.3, 0.7776)])
def test_noise_std_is_c_sigma_max_abs_w(sigma, c):
    torch.manual_seed(0)
    layer = nn.Linear(200, 200, bias=False).train()
    eye = torch.eye(200)
    clean = layer(eye)
    noise = noisy_forward(layer, eye, sigma, c) - clean  # row i = column i of E^T
    expected = c * sigma * layer.weight.abs().max().item()
    assert noise.mean().abs().item() < 0.02 * expected
    assert noise.std().item() == pytest.approx(expected, rel=0.03)


def test_noise_is_redrawn_every_forward():
    layer = nn.Linear(10, 10).train()
    x = torch.randn(4, 10)
    assert not torch.equal(noisy_forward(layer, x, 0.2), noisy_forward(layer, x, 0.2))


def test_gradient_passes_straight_through():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).train()
    x = torch.randn(8, 5)
    layer(x).sum().backward()
    clean_grad = layer.weight.grad.clone()
    layer.zero_grad()
    noisy_forward(layer, x, 0.3).sum().backward()
    # d/dW of sum(x (W+E)^T) does not depend on E: straight through means identical gradients.
    assert torch.allclose(layer.weight.grad, clean_grad)


def test_no_noise_in_eval_mode_unless_asked(lenet):
    x = torch.randn(4, 1, 32, 32)
    lenet.eval()
    assert torch.equal(noisy_forward(lenet, x, 0.3), lenet(x))
    assert not torch.equal(noisy_forward(lenet, x, 0.3, in_eval=True), lenet(x))
    lenet.train()
    assert not torch.equal(noisy_forward(lenet, x, 0.3), lenet(x))
    assert torch.equal(noisy_forward(lenet, x, 0.0), lenet(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_conv_and_linear_weight_is_noisy_biases_clean(name):
    model = build_model(name, 1, 10, 32).train()
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {}

    def record(module, _inputs):  # what the layer really uses during the noisy pass
        bias = None if module.bias is None else module.bias.detach().clone()
        seen[module] = (module.weight.detach().clone(), bias)

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        m.register_forward_pre_hook(record)
    noisy_forward(model, torch.randn(2, 1, 32, 32), 0.2)
    assert len(noisy_weight_names(model)) == len(layers) == len(seen)
    names = {m: n for n, m in model.named_modules()}
    for m, (weight, bias) in seen.items():
        assert not torch.equal(weight, originals[f"{names[m]}.weight"])
        if bias is not None:  # convolutions followed by BatchNorm have none
            assert torch.equal(bias, originals[f"{names[m]}.bias"])
    for n, p in model.named_parameters():  # noise never leaks into the parameters
        assert torch.equal(p, originals[n])


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
