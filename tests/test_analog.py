"""The analog evaluation (`analogai_fl.analog`) on real aihwkit tiles: every layer converted,
the tile settings of a protocol, drift and its compensation, the device models (PCM, ReRAM,
ideal), the n_w sweep and the torch device. A wrong torch imports aihwkit fine and fails only
on the first tile op. The project's own tiles (torch tile, one pass) are in test_tiles.py.
"""

import copy
import dataclasses

import pytest
import torch
from aihwkit.simulator.configs import WeightNoiseType
from helpers import LAYERS, NAMES, build, experiment, protocol_for
from torch import nn
from torch.utils.data import TensorDataset

from analogai_fl import analog, config, schema
from analogai_fl.checks import check_experiment, evaluation_device
from analogai_fl.errors import ConfigError
from analogai_fl.models import MODELS, build_model
from analogai_fl.training import accuracy

TIMES = [1.0, 31536000.0]


def protocol(**changes):
    return dataclasses.replace(experiment().evaluation.protocol, **changes)


# mobilenetv2 (7172 tiles, one per depthwise channel: ~15 s to convert) is covered by
# test_drift_accuracy_converts_every_layer_and_returns_sane_numbers below.
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
    rpu = analog.rpu_config(protocol(tile="cpp", w_noise_type="pcm_read", ir_drop=0.5,
                                     out_bound=8.0, bound_management="none",
                                     noise_management="constant", max_input_size=64,
                                     max_output_size=32, input_range_images=10))
    assert rpu.forward.w_noise_type == WeightNoiseType.PCM_READ and rpu.forward.ir_drop == 0.5
    assert rpu.forward.out_bound == 8.0 and rpu.forward.nm_thres == 1.0
    assert (rpu.forward.bound_management.name, rpu.forward.noise_management.name) == (
        "NONE", "CONSTANT")
    assert (rpu.mapping.max_input_size, rpu.mapping.max_output_size) == (64, 32)
    assert rpu.pre_post.input_range.enable


def test_a_tile_setting_the_torch_tile_cannot_simulate_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="inference.protocols.standard.tile.*ir_drop"):
        experiment(**{"inference.protocols.standard.tile": "torch",
                      "inference.protocols.standard.w_noise_type": "additive"})
    with pytest.raises(ConfigError, match="inference.torch_device.*'cpp' for protocol "
                                          "'standard'"):
        experiment(**{"inference.protocol": "standard", "inference.torch_device": "cuda"})


def _resolution(value: float) -> float:
    return 1 / value if value > 1 else value  # aihwkit takes steps (> 1) or a resolution


def test_the_standard_protocol_is_aihwkits_standard_hwa_preset():
    """`standard`'s defaults build, field for field, the forward, mapping and input-range
    settings, device model and drift compensation of aihwkit's StandardHWATrainingPreset."""
    from aihwkit.simulator.presets import StandardHWATrainingPreset

    preset = StandardHWATrainingPreset()
    mine = analog.rpu_config(experiment().evaluation.protocols["standard"])
    assert type(mine) is type(preset).__mro__[1]  # InferenceRPUConfig: the C++ tile
    for part in ("mapping", "forward", "pre_post"):
        theirs, ours = getattr(preset, part), getattr(mine, part)
        for field in dataclasses.fields(theirs):
            a, b = getattr(theirs, field.name), getattr(ours, field.name)
            if field.name in ("inp_res", "out_res"):
                a, b = _resolution(a), _resolution(b)
            assert a == pytest.approx(b) if isinstance(a, float) else a == b, (part, field.name)
    assert type(mine.noise_model) is type(preset.noise_model)
    assert mine.noise_model.g_max == preset.noise_model.g_max
    assert type(mine.drift_compensation) is type(preset.drift_compensation)


def test_standard_calibrates_its_input_ranges_on_training_images(trained, digits):
    proto = experiment().evaluation.protocols["standard"]
    with pytest.raises(ValueError, match="input_range_images"):
        analog.to_analog(trained, proto)
    ranges = []
    for global_seed, seed in ((5, 0), (6, 0), (5, 1)):  # its own stream, not torch's state
        torch.manual_seed(global_seed)
        ranges.append([t.input_range.item() for t in analog.to_analog(
            trained, proto, calibration=digits.train, seed=seed).analog_tiles()])
    assert ranges[0] == ranges[1] and ranges[0] != [3.0] * len(ranges[0])  # not the init
    assert ranges[0][0] > 0 and ranges[2] == pytest.approx(ranges[0], rel=0.2)
    realistic = analog.to_analog(trained, experiment().evaluation.protocols["realistic"])
    assert all(t.input_range is None for t in realistic.analog_tiles())


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


def _rescaled(model: nn.Module, c: float) -> nn.Module:
    """The same function with other weights (ReLU and max-pooling are positively
    homogeneous): LeNet's first conv and first linear layer times c, the next layer of each
    divided by c."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for scaled, restored in ((0, 3), (7, 9)):
            model[scaled].weight.mul_(c)
            model[scaled].bias.mul_(c)
            model[restored].weight.div_(c)
    return model


def test_rescaling_the_weights_without_changing_the_function(trained, digits):
    """Under `realistic` (weights mapped per tensor to the tile's range) a network whose
    weights are rescaled without changing its function keeps exactly its accuracy at 1 s
    and 1 y; under `seed` (no weight scaling: the noise and the conductance range are
    absolute) the same function loses accuracy when its weights are 4x larger (measured
    on this model, 3 repeats: 84.2% -> 60.5% at 1 y). So `seed` scores a method also by the
    raw size of its weights: arms whose weights differ in scale (a capped HWA, weight decay)
    are not compared by function alone under it. Under `standard` (columnwise scaling, input
    ranges calibrated on the same images) the rescaled network agrees within the C++ tile's
    unseeded read noise (measured, 8 repeats at 1 s: 89.4 +- 0.6% and 88.5 +- 0.8% at x4)."""
    bigger = _rescaled(trained, 4.0)
    x = next(iter(torch.utils.data.DataLoader(digits.test, batch_size=64)))[0]
    assert torch.allclose(trained(x), bigger(x), atol=1e-4)  # the same function
    protocols = experiment().evaluation.protocols
    times = [1.0, 31536000.0]

    def pcm(model, name):
        return analog.drift_accuracy(model, digits.test, protocols[name], times, repeats=2,
                                     seed=0)

    original, rescaled = pcm(trained, "realistic"), pcm(bigger, "realistic")
    for label, entry in original.items():
        assert rescaled[label]["mean"] == pytest.approx(entry["mean"], abs=1e-9)
    assert pcm(bigger, "seed")["1y"]["mean"] < pcm(trained, "seed")["1y"]["mean"] - 0.1
    standard = protocols["standard"]
    for c in (4.0, 0.25):
        at = {m: analog.drift_accuracy(m, digits.test, standard, times, repeats=2, seed=0,
                                       calibration=digits.train)
              for m in (trained, _rescaled(trained, c))}
        first, second = at.values()
        for label in first:
            assert second[label]["mean"] == pytest.approx(first[label]["mean"], abs=0.04)


def test_config_knows_exactly_the_implemented_devices():
    assert set(schema.DEVICES) == set(analog.DEVICE_MODELS)


# --- every model of the zoo, converted -------------------------------------------------------

def expected_tiles(model: nn.Module) -> int:
    """One aihwkit tile per Linear and per group of every convolution."""
    return sum(m.groups if isinstance(m, nn.Conv2d) else 1
               for m in model.modules() if isinstance(m, LAYERS))


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


# --- device models ---------------------------------------------------------------------------

def test_ideal_device_without_converters_or_noise_is_the_digital_model(trained, digits):
    proto = dataclasses.replace(protocol_for(**{"inference.platform.aihwkit.device": "ideal"}),
                                dac_bits=0, adc_bits=0, out_noise=0.0)
    result = analog.drift_accuracy(trained, digits.test, proto, TIMES, repeats=2, seed=0)
    clean = accuracy(trained, digits.test)
    assert [e["mean"] for e in result.values()] == [clean, clean]


def test_ideal_device_keeps_the_protocols_forward_noise(trained, digits):
    proto = protocol_for(**{"inference.platform.aihwkit.device": "ideal",
                        "inference.platform.aihwkit.n_w": 0.3})
    noisy = analog.drift_accuracy(trained, digits.test, proto, [1.0], repeats=1, seed=0)
    assert noisy["1s"]["mean"] < accuracy(trained, digits.test) - 0.02


def test_pcm_drift_costs_more_accuracy_without_drift_compensation(trained, digits):
    def drop(gdc: bool) -> float:
        proto = protocol_for(**{"inference.protocols.realistic.drift_compensation": gdc})
        r = analog.drift_accuracy(trained, digits.test, proto, TIMES, repeats=2, seed=0)
        return r["1s"]["mean"] - r["1y"]["mean"]

    assert drop(gdc=False) > drop(gdc=True) + 0.05


def test_reram_converts_and_evaluates_at_its_measured_times(trained, digits):
    from aihwkit.inference import ReRamWan2022NoiseModel
    times = list(schema.RERAM_DRIFT_TIMES)  # the only times the installed aihwkit fits
    assert times == sorted(ReRamWan2022NoiseModel(g_max=analog.RERAM_G_MAX).coeff_dic)
    proto = protocol_for(**{"inference.platform.aihwkit.device": "ReRAM",
                        "inference.drift_times": times, "inference.reram.noise_scale": 2.0})
    assert proto.reram_noise_scale == 2.0
    rpu = analog.rpu_config(proto)
    assert type(rpu.noise_model).__name__ == "ReRamWan2022NoiseModel"
    assert rpu.noise_model.g_max == analog.RERAM_G_MAX and rpu.noise_model.noise_scale == 2.0
    result = analog.drift_accuracy(trained, digits.test, proto, times, repeats=2, seed=0)
    assert list(result) == ["1s", "1d", "2d"]
    assert all(0.5 < e["mean"] <= 1.0 for e in result.values())


def test_reram_refuses_drift_times_it_has_no_data_for():
    with pytest.raises(config.ConfigError, match="inference.drift_times.*ReRAM.*3600"):
        protocol_for(**{"inference.platform.aihwkit.device": "ReRAM"})  # default times: 1 h, 1 y


def test_the_three_devices_program_different_weights(trained):
    programmed = {}
    for device in schema.DEVICES:
        times = {"inference.drift_times": [1.0]} if device == "ReRAM" else {}
        proto = protocol_for(**{"inference.platform.aihwkit.device": device, **times})
        torch.manual_seed(0)
        model = analog.to_analog(trained, proto)
        model.program_analog_weights()
        model.drift_analog_weights(1.0)
        tile = next(model.analog_tiles())
        programmed[device] = tile.tile.get_weights().clone()
    reference = next(analog.to_analog(trained, protocol_for()).analog_tiles()).tile.get_weights()
    assert torch.allclose(programmed["ideal"], reference, atol=1e-6)
    for device in ("PCM", "ReRAM"):
        assert not torch.allclose(programmed[device], reference, atol=1e-3)
    assert not torch.allclose(programmed["PCM"], programmed["ReRAM"], atol=1e-3)


@pytest.mark.parametrize("one_pass", [False, True])
def test_n_w_sweep_uses_the_same_device_draws_for_every_n_w(trained, digits, monkeypatch,
                                                            one_pass):
    seen = []  # the first tile's drifted weights at each evaluation (or state taken)
    if one_pass:
        take = analog.tile_state

        def spy(model):
            seen.append(next(model.analog_tiles()).tile.get_weights().clone())
            return take(model)

        monkeypatch.setattr(analog, "tile_state", spy)
    else:
        evaluate = analog.analog_accuracy

        def spy(model, data, batch_size):
            seen.append(next(model.analog_tiles()).tile.get_weights().clone())
            return evaluate(model, data, batch_size)

        monkeypatch.setattr(analog, "analog_accuracy", spy)
    sweep = analog.n_w_sweep(trained, digits.test, protocol_for(), [0.0, 0.3], [1.0, 3600.0],
                             repeats=2, seed=0, one_pass=one_pass)
    per_n_w = len(seen) // 2
    assert per_n_w == 4
    assert all(torch.equal(a, b) for a, b in zip(seen[:per_n_w], seen[per_n_w:]))
    assert not torch.equal(seen[0], seen[2])  # repeats differ, each its own programming
    assert sweep[0.3]["1s"]["mean"] < sweep[0.0]["1s"]["mean"]
    assert sweep[0.0] == analog.drift_accuracy(trained, digits.test, protocol_for(), [1.0, 3600.0],
                                             2, 0, one_pass=one_pass)


# --- the torch device of the evaluation --------------------------------------------------------

def test_the_torch_device_is_chosen_by_key_and_checked_before_any_work(monkeypatch):
    assert evaluation_device(experiment()).type == ("cuda" if torch.cuda.is_available()
                                                    else "cpu")
    assert evaluation_device(experiment(**{"inference.torch_device": "cpu"})).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert analog.torch_device("auto", "torch") == torch.device("cuda", 0)
    assert analog.torch_device("auto", "cpp") == torch.device("cpu")  # no CUDA C++ tiles
    with pytest.raises(ConfigError, match="'inference.torch_device' expects auto, cpu"):
        experiment(**{"inference.torch_device": "gpu"})
    with pytest.raises(ConfigError, match="needs the torch tile"):
        experiment(**{"inference.torch_device": "cuda", "inference.tile": "cpp"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="inference.torch_device 'cuda:1': torch sees no CUDA"):
        check_experiment(experiment(**{"inference.torch_device": "cuda:1"}))


@pytest.mark.parametrize("advised", ["auto", "cpu"])
def test_a_cuda_device_torch_does_not_see_passes_the_checks_as_auto_or_cpu(monkeypatch,
                                                                          advised):
    """Where torch sees no CUDA device, inference.torch_device='cuda' is refused; 'auto' or
    'cpu', as the message says, pass the checks and evaluate on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA device here; use 'auto' or "
                                          "'cpu'$"):
        check_experiment(experiment(**{"inference.torch_device": "cuda"}))
    exp = experiment(**{"inference.torch_device": advised})  # the advice, followed
    check_experiment(exp)
    assert evaluation_device(exp) == torch.device("cpu")
