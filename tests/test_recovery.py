"""Each recovery option must really change the computation (a no-op would fail here)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import local_training
from torch import nn

from analogai_fl import config
from analogai_fl.config import resolve
from analogai_fl.errors import ConfigError
from analogai_fl.models import deployed_model
from analogai_fl.noise import noisy_forward
from analogai_fl.quantization import quantize_dynamic
from analogai_fl.recovery import (
    Attack,
    Sam,
    activation_effects,
    adversarial_example,
    sam_perturbation,
    sam_step,
)
from analogai_fl.settings import load
from analogai_fl.training import accuracy, passes_per_example, train_local


def quadratic_setup():
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    return model, (lambda: F.cross_entropy(model(x), y))


def gradient(model, closure):
    model.zero_grad()
    closure().backward()
    return model.weight.grad.clone()


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_steps_with_the_gradient_at_the_perturbed_point(adaptive):
    model, closure = quadratic_setup()
    sam, lr = Sam(rho=0.5, adaptive=adaptive, eta=0.01), 0.1
    w = model.weight.detach().clone()
    g = gradient(model, closure)
    scale = (w.abs() + 0.01) if adaptive else torch.ones_like(w)
    e = 0.5 * scale**2 * g / (scale * g).norm()  # rho T^2 g / ||T g||
    with torch.no_grad():
        model.weight.add_(e)
    g_far = gradient(model, closure)
    with torch.no_grad():
        model.weight.copy_(w)

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    calls = []

    def counting_closure():
        calls.append(1)
        return closure()

    gradient(model, counting_closure)
    sam_step(model, counting_closure, optimizer, sam)
    assert len(calls) == 2  # two gradient evaluations per step
    assert torch.allclose(model.weight, w - lr * g_far, atol=1e-6)
    assert not torch.allclose(model.weight, w - lr * g, atol=1e-4)  # not the plain step


def test_asam_perturbation_differs_from_sam():
    model, closure = quadratic_setup()
    with torch.no_grad():
        model.weight.mul_(torch.tensor([[10.0, 0.1, 1.0], [0.1, 10.0, 1.0]]))
    gradient(model, closure)
    params = [model.weight]
    plain, = sam_perturbation(params, Sam(0.1))
    adaptive, = sam_perturbation(params, Sam(0.1, adaptive=True))
    assert plain.norm().item() == pytest.approx(0.1, rel=1e-5)
    assert not torch.allclose(plain / plain.norm(), adaptive / adaptive.norm(), atol=1e-3)


def digits_batch(digits, n=64):
    x, y = digits.train.tensors
    return x[:n], y[:n]


@pytest.mark.parametrize("name,steps,random_start", [("FGSM", 1, False), ("PGD", 10, True)])
def test_attack_raises_the_loss_inside_epsilon_in_pixel_space(digits, lenet, name, steps,
                                                              random_start):
    x, y = digits_batch(digits)
    train_local(lenet, digits.train, local_training(
        config.defaults() | {"training.use_neg": False}, 0.0, 0.0), seed=0)
    lenet.eval()
    mean = torch.tensor(digits.mean).view(1, -1, 1, 1)
    std = torch.tensor(digits.std).view(1, -1, 1, 1)
    eps = 0.1
    attack = Attack(name, eps, eps if name == "FGSM" else 0.025, steps, random_start, 1.0)
    x_adv = adversarial_example(lenet, x, y, attack, mean, std, torch.Generator().manual_seed(0))
    pixel, pixel_adv = x * std + mean, x_adv * std + mean
    assert (pixel_adv - pixel).abs().max().item() <= eps + 1e-5
    assert pixel_adv.min().item() >= -1e-6 and pixel_adv.max().item() <= 1 + 1e-6
    with torch.no_grad():
        assert F.cross_entropy(lenet(x_adv), y) > F.cross_entropy(lenet(x), y) + 0.1


def test_pgd_beats_fgsm_at_the_same_epsilon(digits, lenet):
    x, y = digits_batch(digits, 256)
    train_local(lenet, digits.train, local_training(
        config.defaults() | {"training.use_neg": False}, 0.0, 0.0), seed=0)
    lenet.eval()
    mean = torch.tensor(digits.mean).view(1, -1, 1, 1)
    std = torch.tensor(digits.std).view(1, -1, 1, 1)

    def loss(attack):
        x_adv = adversarial_example(lenet, x, y, attack, mean, std)
        with torch.no_grad():
            return F.cross_entropy(lenet(x_adv), y)

    assert loss(Attack("PGD", 0.1, 0.02, 10, False, 1.0)) > loss(Attack("FGSM", 0.1, 0.1, 1,
                                                                         False, 1.0))


def test_qat_reaches_training_and_deployment(digits, lenet):
    cfg = config.defaults() | {"recovery.qat.use": True, "recovery.qat.weight_bits": 3,
                               "recovery.qat.act_bits": 4, "training.use_neg": False}
    setting = local_training(cfg, 0.0, 0.0)
    assert (setting.weight_bits, setting.input_bits) == (3, 4)
    x, _ = digits_batch(digits, 8)
    lenet.train()
    assert not torch.allclose(noisy_forward(lenet, x, 0.0, weight_bits=3), lenet(x))
    model = copy.deepcopy(lenet)
    train_local(model, digits.train, setting, seed=0)
    model = deployed_model("lenet", digits.shape, model.state_dict(), setting.weight_bits)
    for layer in (model[0], model[3], model[7]):
        for channel in layer.weight.detach():
            assert len(torch.unique(channel)) <= 2**3
    assert accuracy(model, digits.val) > 0.5  # trained to work with its quantised weights


def test_input_quantisation_limits_what_a_layer_sees():
    layer = nn.Linear(100, 1)
    x = torch.randn(4, 100)
    seen = []
    with activation_effects(layer, input_bits=3):
        handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        layer(x)  # hooks run in registration order: this one sees the quantised input
    assert len(torch.unique(seen[-1])) <= 2**3
    assert torch.equal(quantize_dynamic(x, 3), seen[-1])
    layer(x)  # the quantiser is removed afterwards
    assert torch.equal(seen[-1], x)
    handle.remove()


def test_activation_noise_is_multiplicative_and_in_training_mode_only():
    torch.manual_seed(0)
    layer = nn.Linear(8, 64)
    x = torch.randn(512, 8)
    with torch.no_grad():
        clean = layer(x)
        with activation_effects(layer, noise_sigma=0.2):
            ratio = layer(x) / clean  # N(1, 0.2^2) per output element
            layer.eval()
            evaluated = layer(x)
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.01)
    assert ratio.std().item() == pytest.approx(0.2, rel=0.05)
    assert torch.equal(evaluated, clean)


def test_activation_noise_is_per_client(cfg):
    cfg |= {"recovery.noise_1.act_inject.use": True, "recovery.noise_1.act_inject.act_sigma": 0.3}
    assert local_training(cfg, 0.1, 0.0, 0).act_sigma == 0.0
    assert local_training(cfg, 0.1, 0.0, 1).act_sigma == 0.3


def test_options_compose_and_cost_is_counted(digits, lenet):
    base = {"training.use_neg": True, "training.local_epochs": 1}
    plain = local_training(config.defaults() | base, 0.1, 0.01)
    everything = local_training(config.defaults() | base | {
        "recovery.optimizer.sam": True, "recovery.adversarial.PGD.use": True,
        "recovery.adversarial.PGD.steps": 2, "recovery.qat.use": True,
        "recovery.noise_0.act_inject.use": True}, 0.1, 0.01)
    assert passes_per_example(plain) == 4  # main pass + 3 feedback passes
    assert passes_per_example(everything) == 4 * 2 * 2 + 2
    subset = torch.utils.data.Subset(digits.train, range(128))
    results = []
    for setting in (plain, everything):
        model = copy.deepcopy(lenet)
        metrics = train_local(model, subset, setting, seed=0,
                              pixel_stats=(digits.mean, digits.std))
        results.append((model, metrics))
    assert results[1][1]["sample_passes"] == 128 * (4 * 2 * 2 + 2)
    assert not torch.allclose(results[0][0][0].weight, results[1][0][0].weight)


def test_sam_changes_what_training_learns(digits, lenet):
    subset = torch.utils.data.Subset(digits.train, range(256))
    cfg = config.defaults() | {"training.use_neg": False}
    models = []
    for sam in (False, True):
        model = copy.deepcopy(lenet)
        setting = local_training(cfg | {"recovery.optimizer.sam": sam}, 0.0, 0.0)
        train_local(model, subset, setting, seed=0)
        models.append(model)
    assert not torch.allclose(models[0][0].weight, models[1][0].weight, atol=1e-5)


def test_adaptive_alone_switches_on_asam(cfg):
    setting = local_training(cfg | {"recovery.optimizer.adaptive": True}, 0.1, 0.0)
    assert setting.sam == Sam(cfg["recovery.optimizer.rho"], True, cfg["recovery.optimizer.eta"])


def test_fgsm_and_pgd_together_are_refused():
    with pytest.raises(ConfigError, match="FGSM.use.*PGD.use"):
        load({"recovery.adversarial.FGSM.use": True, "recovery.adversarial.PGD.use": True})


def test_seed_qat_key_is_an_alias():
    cfg = resolve({"recovery.qat": True})
    assert cfg["recovery.qat.use"] is True
