"""The project's aihwkit tiles (`analogai_fl.tiles`), each against the aihwkit code it stands
in for: the tile class `inference.tile` picks, the torch tile that simulates what the C++ tile
simulates (bound management, n_w, zero inputs, patch convolutions), and the PCM evaluation's
weight states in one pass (`tiles.weight_sets`) against one pass per state, on the CPU and on
a GPU where there is one.
"""

import dataclasses

import pytest
import torch
from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig
from helpers import experiment, protocol_for
from torch import nn
from torch.utils.data import TensorDataset

from analogai_fl import analog, tiles
from analogai_fl.models import build_model

TIMES = [1.0, 86400.0, 31536000.0]


def protocol(name="realistic", **changes):
    """Protocol `name` of the default experiment with `changes` (realistic: the evaluation's)."""
    return dataclasses.replace(experiment().evaluation.protocols[name], **changes)


def images(n, channels, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, channels, size, size, generator=g),
                         torch.randint(0, 10, (n,), generator=g))


class Residual(nn.Module):
    """ResNet's parts, small: BatchNorm, a residual sum and a Linear of 1024 inputs that
    aihwkit splits over two tiles (a tile array: max_input_size 512)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(x + self.block(x)))


# --- the tile class and its settings ----------------------------------------------------------

def test_tile_key_picks_the_rpu_config_class_and_both_evaluate(trained, digits):
    configs = {t: analog.rpu_config(protocol_for(**{"inference.tile": t}))
               for t in ("cpp", "torch")}
    assert type(configs["cpp"]) is InferenceRPUConfig
    assert isinstance(configs["torch"], TorchInferenceRPUConfig)
    assert configs["torch"].simulator_tile_class is tiles.CppMatchingTorchTile
    for tile, rpu in configs.items():
        assert rpu.forward.w_noise == 0.0
        proto = protocol_for(**{"inference.tile": tile, "inference.platform.aihwkit.n_w": 0.05})
        model = analog.to_analog(trained, proto)
        assert type(next(model.analog_tiles()).rpu_config) is type(rpu)
        r = analog.drift_accuracy(trained, digits.test, proto, [1.0], repeats=1, seed=0)
        assert r["1s"]["mean"] > 0.7, tile


def test_aihwkits_own_torch_tile_refuses_n_w_which_ours_simulates():
    from aihwkit.exceptions import ConfigError
    from aihwkit.simulator.tiles.torch_tile import TorchSimulatorTile

    rpu = analog.rpu_config(protocol_for(**{"inference.platform.aihwkit.n_w": 0.1}))
    with pytest.raises(ConfigError, match="w_noise"):
        TorchSimulatorTile(4, 2, rpu)
    tiles.CppMatchingTorchTile(4, 2, rpu)


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


# --- weight states in one pass ---------------------------------------------------------------

@pytest.mark.parametrize(("name", "proto"), [("lenet", "realistic"), ("lenet", "seed"),
                                             ("residual", "realistic")])
def test_one_pass_equals_one_pass_per_state_without_per_read_noise(name, proto):
    torch.manual_seed(0)
    model = (Residual() if name == "residual" else build_model(name, 3, 10, 32)).eval()
    data = images(6, 3, 32)
    quiet = protocol(proto, out_noise=0.0, n_w=0.0)  # device noise and drift stay on
    times = TIMES[::2]  # batch 5: six forwards of 1 image x 4 states (2 repeats x 2 times)
    apart = analog.drift_accuracy(model, data, quiet, times, 2, seed=3, batch_size=5,
                                  one_pass=False)
    together = analog.drift_accuracy(model, data, quiet, times, 2, seed=3, batch_size=5)
    assert together == apart
    # the logits themselves, state by state, all images at once
    converted = analog.to_analog(model, quiet)
    states, expected = [], []
    for t in TIMES:
        converted.drift_analog_weights(t)
        states.append(tiles.tile_state(converted))
        with torch.no_grad():
            expected.append(converted(data.tensors[0]))
    with torch.no_grad(), tiles.weight_sets(converted, states) as sets:
        sets.batch = len(data)
        logits = converted(data.tensors[0]).view(len(TIMES), len(data), -1)
    assert torch.allclose(logits, torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_one_pass_agrees_within_the_monte_carlo_spread_with_per_read_noise(trained, digits):
    noisy = protocol(n_w=0.05)  # output noise 0.04 and n_w on: draws in another order
    apart = analog.drift_accuracy(trained, digits.test, noisy, TIMES, 3, seed=1,
                                  one_pass=False)
    together = analog.drift_accuracy(trained, digits.test, noisy, TIMES, 3, seed=1)
    assert together != apart
    for label, entry in apart.items():
        spread = max(entry["std"], together[label]["std"], 1 / len(digits.test))
        assert abs(entry["mean"] - together[label]["mean"]) < 4 * spread, label
    assert together == analog.drift_accuracy(trained, digits.test, noisy, TIMES, 3, seed=1)


def test_weight_sets_restore_the_tiles_and_refuse_the_cpp_tile(trained):
    converted = analog.to_analog(trained, protocol())
    converted.drift_analog_weights(3600.0)
    before = tiles.tile_state(converted)
    later = [tiles.tile_state(converted)]
    with pytest.raises(RuntimeError, match="boom"), tiles.weight_sets(converted, later * 2):
        assert next(converted.analog_tiles()).tile.weight.shape[0] == 2
        raise RuntimeError("boom")
    after = tiles.tile_state(converted)
    assert all(torch.equal(w, w2) and torch.equal(a, a2)
               for (w, a), (w2, a2) in zip(before, after, strict=True))
    assert all(layer.weight_sets is None for layer in converted.analog_layers())
    cpp = analog.to_analog(trained, protocol(tile="cpp"))
    assert not tiles.supports_weight_sets(cpp)
    with pytest.raises(ValueError, match="torch tile"), tiles.weight_sets(cpp, later):
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_evaluation_agrees_with_the_cpu_within_the_monte_carlo_spread(trained, digits):
    proto = protocol()
    cpu = analog.drift_accuracy(trained, digits.test, proto, TIMES, 5, seed=2, device="cpu")
    gpu = analog.drift_accuracy(trained, digits.test, proto, TIMES, 5, seed=2, device="cuda")
    for label, entry in cpu.items():
        spread = max(entry["std"], gpu[label]["std"], 1 / len(digits.test))
        assert abs(entry["mean"] - gpu[label]["mean"]) < 4 * spread, label
