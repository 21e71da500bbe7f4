"""The chip's training forward against aihwkit's own tile: the same function when every source
is off, the same deterministic converters, the same noise statistics per source."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from aihwkit.nn import AnalogLinear
from aihwkit.simulator.configs import TorchInferenceRPUConfig, WeightModifierType
from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType

from analogai_fl.chip_noise import ChipNoise, chip_forward, converter_step
from analogai_fl.models import build_model

QUIET = ChipNoise(out_noise=0.0, dac_bits=0, adc_bits=0, out_bound=0.0, columnwise=False,
                  bound_management=False)
DRAWS = 400


def aihwkit_linear(weight, bias, chip: ChipNoise, modifier_std: float) -> AnalogLinear:
    """aihwkit's torch tile with the settings `chip` stands for (bound management off: its
    torch tile repeats the whole batch, see chip_noise's docstring)."""
    rpu = TorchInferenceRPUConfig()
    rpu.mapping.weight_scaling_omega = 1.0
    rpu.mapping.weight_scaling_columnwise = chip.columnwise
    rpu.mapping.digital_bias = True
    rpu.mapping.learn_out_scaling = False
    io = rpu.forward
    io.out_noise = chip.out_noise
    io.inp_res = 1 / (2**chip.dac_bits - 2) if chip.dac_bits else -1
    io.out_res = 1 / (2**chip.adc_bits - 2) if chip.adc_bits else -1
    io.out_bound = chip.out_bound if chip.out_bound else -1
    io.noise_management = NoiseManagementType.ABS_MAX
    io.bound_management = BoundManagementType.NONE
    rpu.modifier.type = WeightModifierType.ADD_NORMAL if modifier_std else \
        WeightModifierType.NONE
    rpu.modifier.std_dev = modifier_std
    rpu.modifier.rel_to_actual_wmax = True
    layer = AnalogLinear(weight.shape[1], weight.shape[0], bias=True, rpu_config=rpu)
    layer.set_weights(weight, bias)
    return layer.train()


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 6).train()
    x = torch.randn(10, 24) * torch.linspace(0.2, 2.0, 10)[:, None]
    return plain, x


def draws(forward, n=DRAWS) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return torch.stack([forward() for _ in range(n)])


def test_with_every_source_off_it_is_the_digital_forward_and_gradient():
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 32).train()
    x = torch.randn(6, 1, 32, 32)
    for columnwise in (False, True):
        chip = dataclasses.replace(QUIET, columnwise=columnwise)
        assert chip.quiet
        got = chip_forward(model, x, 0.0, chip)
        assert torch.allclose(got, model(x), atol=1e-5)
        (g_chip,) = torch.autograd.grad(got.square().sum(), model[0].weight)
        (g_digital,) = torch.autograd.grad(model(x).square().sum(), model[0].weight)
        assert torch.allclose(g_chip, g_digital, rtol=1e-4, atol=1e-6)
    assert model[0].forward.__func__ is torch.nn.Conv2d.forward  # the layers are restored


@pytest.mark.parametrize("dac,adc,bound", [(8, 0, 0.0), (0, 8, 12.0), (6, 6, 3.0), (8, 8, 12.0)])
def test_the_converters_and_the_output_range_are_aihwkits(linear, dac, adc, bound):
    plain, x = linear
    chip = dataclasses.replace(QUIET, dac_bits=dac, adc_bits=adc, out_bound=bound)
    reference = aihwkit_linear(plain.weight.detach(), plain.bias.detach(), chip, 0.0)
    with torch.no_grad():
        got, expected = chip_forward(plain, x, 0.0, chip), reference(x)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert not torch.allclose(got, plain(x), atol=1e-4)  # the source changes the output
    if bound == 3.0:  # outputs clip at the bound, in full-scale products
        scale = x.abs().amax(1, keepdim=True) * plain.weight.abs().max()
        assert ((got - plain.bias).abs() <= 3.0 * scale + 1e-5).all()


@pytest.mark.parametrize("source", ["modifier", "out_noise", "all"])
def test_each_noise_source_has_aihwkits_mean_and_variance(linear, source):
    plain, x = linear
    std = 0.06 if source in ("modifier", "all") else 0.0
    chip = dataclasses.replace(QUIET, out_noise=0.04 if source != "modifier" else 0.0,
                               **({"dac_bits": 8, "adc_bits": 8, "out_bound": 12.0}
                                  if source == "all" else {}))
    reference = aihwkit_linear(plain.weight.detach(), plain.bias.detach(), chip, std)
    ours = draws(lambda: chip_forward(plain, x, std, chip))
    theirs = draws(lambda: reference(x))
    clean = plain(x).detach()
    spread = theirs.std(0)
    assert (spread > 1e-3).all()  # the source adds noise to every output
    # the means agree within their Monte-Carlo error, the variances within 25 %
    assert ((ours.mean(0) - theirs.mean(0)).abs() <= 4 * spread / DRAWS**0.5 + 2e-3).all()
    assert torch.allclose(ours.var(0), theirs.var(0), rtol=0.25)
    if source != "all":  # noise alone is unbiased; the converters' rounding is not
        assert ((ours.mean(0) - clean).abs() <= 4 * spread / DRAWS**0.5 + 2e-3).all()


def test_bound_management_repeats_only_the_clipping_samples(linear):
    plain, x = linear
    chip = dataclasses.replace(QUIET, out_bound=0.5)  # far below the outputs: many clip
    with torch.no_grad():
        clipped = chip_forward(plain, x, 0.0, chip)
        managed = chip_forward(plain, x, 0.0, dataclasses.replace(chip, bound_management=True))
    assert not torch.allclose(clipped, plain(x), atol=1e-3)
    assert torch.allclose(managed, plain(x), atol=1e-5)  # halved until nothing clips


def test_an_all_zero_sample_gives_exact_zeros_and_the_bias(linear):
    plain, x = linear
    x = x.clone()
    x[3] = 0.0
    chip = dataclasses.replace(QUIET, out_noise=0.5, dac_bits=8, adc_bits=8, out_bound=12.0)
    with torch.no_grad():
        y = chip_forward(plain, x, 0.1, chip)
    assert torch.equal(y[3], plain.bias.detach())


def test_converter_step_is_aihwkits_resolution():
    assert converter_step(8, 1.0) == pytest.approx(2 / 254)
    assert converter_step(8, 12.0) == pytest.approx(24 / 254)
    assert converter_step(0, 12.0) == 0.0
