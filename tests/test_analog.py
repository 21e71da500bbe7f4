"""Real aihwkit tiles: a wrong torch imports aihwkit fine and fails only on the first tile op."""

import pytest
import torch
from aihwkit.simulator.configs import WeightNoiseType
from torch import nn

from analogai_fl import analog, config
from analogai_fl.models import MODELS, build_model
from analogai_fl.training import LocalTraining, accuracy, train_local


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 32)
    setting = LocalTraining.from_config(config.defaults() | {"training.use_neg": False,
                                                             "training.lr": 3e-3}, 0.1, 0.0)
    for epoch in range(3):
        train_local(model, digits.train, setting, seed=epoch)
    return model


def protocol(**changes):
    return config.protocol(config.defaults()) | changes


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_conv_and_linear_becomes_an_analog_tile(name):
    model = build_model(name, 1, 10, 32)
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
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


def test_pcm_accuracy_repeats_with_fresh_programming(trained, digits, monkeypatch):
    programmed = []
    original = type(analog.to_analog(trained, protocol())).program_analog_weights

    def count(self, *args, **kwargs):
        programmed.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(analog.to_analog(trained, protocol())), "program_analog_weights",
                        count)
    result = analog.pcm_accuracy(trained, digits.test, protocol(), [1.0, 86400.0], repeats=3,
                                 seed=0)
    assert len(programmed) == 3
    assert set(result) == {"1s", "1d"}
    clean = accuracy(trained, digits.test)
    for entry in result.values():
        assert clean - 0.1 < entry["mean"] <= 1.0 and entry["std"] >= 0.0


def test_the_seed_protocol_is_harsher_than_the_realistic_one(trained, digits):
    def pcm_1s(proto):
        return analog.pcm_accuracy(trained, digits.test, proto, [1.0], repeats=1, seed=0)[
            "1s"]["mean"]

    seed = config.protocol(config.defaults() | {"inference.protocol": "seed",
                                                "inference.platform.aihwkit.n_w": 0.1})
    realistic = protocol(n_w=0.1)
    assert pcm_1s(seed) < pcm_1s(realistic) - 0.2


def test_config_knows_exactly_the_implemented_devices():
    assert set(config.DEVICES) == set(analog.DEVICE_MODELS)


def test_drift_labels():
    assert [analog.drift_label(t) for t in (1, 3600, 86400, 31536000, 90, 1.5)] == [
        "1s", "1h", "1d", "1y", "1.5min", "1.5s"]
