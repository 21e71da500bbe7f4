"""Real aihwkit tiles: a wrong torch imports aihwkit fine and fails only on the first tile op."""

import dataclasses

import pytest
import torch
from aihwkit.simulator.configs import WeightNoiseType
from conftest import experiment
from torch import nn

from analogai_fl import analog, schema
from analogai_fl.models import MODELS, build_model
from analogai_fl.reporting import drift_label
from analogai_fl.training import accuracy


def protocol(**changes):
    return dataclasses.replace(experiment().evaluation.protocol, **changes)


# mobilenetv2 (7172 tiles, one per depthwise channel: ~15 s to convert) is covered by
# tests/test_models.py::test_drift_accuracy_converts_every_layer_and_returns_sane_numbers.
@pytest.mark.parametrize("name", sorted(set(MODELS) - {"mobilenetv2"}))
def test_every_conv_and_linear_becomes_an_analog_tile(name):
    model = build_model(name, 1, 10, 32)
    layers = sum(m.groups if isinstance(m, nn.Conv2d) else 1  # a tile per group
                 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    analog_model = analog.to_analog(model, protocol())
    assert len(list(analog_model.analog_layers())) == layers
    assert analog_model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_a_layer_aihwkit_would_leave_digital_is_refused():
    class MyLinear(nn.Linear):  # aihwkit matches exact classes: this stays digital silently
        pass

    with pytest.raises(RuntimeError, match="converted 1 of 2"):
        analog.to_analog(nn.Sequential(nn.Linear(4, 4), MyLinear(4, 2)), protocol())


def test_protocol_sets_every_tile_setting():
    rpu = analog.rpu_config(protocol(dac_bits=8, adc_bits=0, n_w=0.05, out_noise=0.02,
                                     weight_scaling_omega=0.8, drift_compensation=False))
    assert rpu.forward.inp_res == pytest.approx(1 / 254) and rpu.forward.out_res == -1
    assert rpu.forward.w_noise == 0.05
    assert rpu.forward.w_noise_type == WeightNoiseType.ADDITIVE_CONSTANT
    assert rpu.forward.out_noise == 0.02 and rpu.mapping.weight_scaling_omega == 0.8
    assert rpu.drift_compensation is None and rpu.noise_model.g_max == 25.0


def test_drift_without_compensation_shrinks_outputs_and_gdc_restores_them(trained, digits):
    x = digits.test.tensors[0][:128]

    def output_scale(compensate: bool, t: float) -> float:
        torch.manual_seed(0)
        model = analog.to_analog(trained, protocol(drift_compensation=compensate))
        model.drift_analog_weights(t)
        return model(x).abs().mean().item()

    assert output_scale(False, 3.15e7) < 0.8 * output_scale(False, 1.0)
    assert output_scale(True, 3.15e7) == pytest.approx(output_scale(True, 1.0), rel=0.15)


def test_drift_accuracy_repeats_with_fresh_programming(trained, digits, monkeypatch):
    programmed = []
    original = type(analog.to_analog(trained, protocol())).program_analog_weights

    def count(self, *args, **kwargs):
        programmed.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(analog.to_analog(trained, protocol())), "program_analog_weights",
                        count)
    result = analog.drift_accuracy(trained, digits.test, protocol(), [1.0, 86400.0], repeats=3,
                                 seed=0)
    assert len(programmed) == 3
    assert set(result) == {"1s", "1d"}
    clean = accuracy(trained, digits.test)
    for entry in result.values():
        assert clean - 0.1 < entry["mean"] <= 1.0 and entry["std"] >= 0.0


def test_the_seed_protocol_is_harsher_than_the_realistic_one(trained, digits):
    def pcm_1s(proto):
        return analog.drift_accuracy(trained, digits.test, proto, [1.0], repeats=1, seed=0)[
            "1s"]["mean"]

    seed = experiment(**{"inference.protocol": "seed",
                         "inference.platform.aihwkit.n_w": 0.1}).evaluation.protocol
    realistic = protocol(n_w=0.1)
    assert pcm_1s(seed) < pcm_1s(realistic) - 0.2


def test_config_knows_exactly_the_implemented_devices():
    assert set(schema.DEVICES) == set(analog.DEVICE_MODELS)


def test_drift_labels():
    assert [drift_label(t) for t in (1, 3600, 86400, 31536000, 90, 1.5)] == [
        "1s", "1h", "1d", "1y", "1.5min", "1.5s"]


# --- The torch tile simulates what the C++ tile simulates ------------------------------------

def noise_free(**changes):
    """Deterministic forward: no device noise, no drift compensation, no output noise."""
    return protocol(device="ideal", drift_compensation=False, out_noise=0.0, **changes)


def outputs(model, proto, x, tile, seed=0):
    torch.manual_seed(seed)
    converted = analog.to_analog(model, dataclasses.replace(proto, tile=tile))
    converted.program_analog_weights()
    with torch.no_grad():
        return converted(x)


@pytest.mark.parametrize("name", ["realistic", "seed"])
def test_torch_tile_matches_cpp_tile_without_noise(trained, digits, name):
    proto = experiment().evaluation.protocols[name]
    proto = dataclasses.replace(proto, device="ideal", drift_compensation=False, out_noise=0.0)
    x = digits.test.tensors[0]
    cpp, torch_tile = outputs(trained, proto, x, "cpp"), outputs(trained, proto, x, "torch")
    differ = (cpp - torch_tile).abs() > 1e-4  # float summation order: rare 1-step DAC ties
    assert differ.float().mean() < 1e-2
    assert (cpp.argmax(1) == torch_tile.argmax(1)).float().mean() > 0.99


def test_bound_management_repeats_only_the_clipping_vectors_like_cpp():
    layer = nn.Linear(64, 4, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    x = torch.rand(6, 64)
    x[:3] = x[:3].abs() + 1.0  # sum 64 x 0.5 x ~1.5 = ~48 > out_bound 12: these clip
    proto = noise_free(weight_scaling_omega=1.0)
    cpp = outputs(layer, proto, x, "cpp")
    torch_tile = outputs(layer, proto, x, "torch")
    assert torch.allclose(cpp, torch_tile, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # clipped outputs were recovered by a smaller input scale
        assert torch.allclose(torch_tile, layer(x), rtol=0.05)
    alone = outputs(layer, proto, x[3:], "torch")  # the non-clipping rows without the others
    assert torch.equal(alone, torch_tile[3:])    # the batch does not change a vector's result


def test_additive_weight_noise_n_w_has_the_cpp_tile_statistics():
    """n_w: y = (W + Xi) x with Xi ~ N(0, n_w^2) fresh per MVM, i.e. output noise of std
    n_w * |x| (no weight scaling, converters off, no other noise)."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(1, 16).repeat(400, 1)
    proto = noise_free(n_w=0.1, weight_scaling_omega=0.0, dac_bits=0, adc_bits=0)
    expected = 0.1 * x[0].norm().item()
    for tile in ("cpp", "torch"):
        y = outputs(layer, proto, x, tile)
        assert y.std(0).mean().item() == pytest.approx(expected, rel=0.1), tile
        assert torch.allclose(y.mean(0), layer(x[:1])[0], atol=4 * expected / 20)


def test_an_all_zero_input_vector_gives_exact_zeros_like_cpp():
    layer = nn.Linear(8, 4)
    x = torch.zeros(3, 8)
    x[0] = 1.0
    for tile in ("cpp", "torch"):
        y = outputs(layer, protocol(device="ideal", drift_compensation=False), x, tile)
        assert torch.equal(y[1:], layer.bias.detach().expand(2, 4)), tile  # digital bias only


def test_torch_tile_evaluation_is_reproducible_with_its_seed(trained, digits):
    proto = protocol(tile="torch", n_w=0.05)
    runs = [analog.drift_accuracy(trained, digits.test, proto, [1.0, 3600.0], 2, seed=5)
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_patch_convolution_feeds_the_tiles_exactly_what_aihwkit_would():
    from aihwkit.nn.conversion import convert_to_analog

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2), nn.ReLU(),
                          nn.Conv2d(8, 4, 5)).eval()
    proto = noise_free(tile="torch")
    ours = analog.to_analog(model, proto)
    stock = convert_to_analog(model, analog.rpu_config(proto)).eval()
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 17, 17)
    with torch.no_grad():
        assert torch.equal(ours(x), stock(x))
