"""The PCM evaluation's weight states in one pass (`tiles.weight_sets`) against one pass per
state, and the choice of the torch device it runs on (`inference.torch_device`)."""

import dataclasses

import pytest
import torch
from conftest import experiment
from torch import nn
from torch.utils.data import TensorDataset

from analogai_fl import analog, tiles
from analogai_fl.checks import check_experiment, evaluation_device
from analogai_fl.config import ConfigError
from analogai_fl.models import build_model

TIMES = [1.0, 86400.0, 31536000.0]


def protocol(name="realistic", **changes):
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
    with pytest.raises(ConfigError, match="needs inference.tile=torch"):
        experiment(**{"inference.torch_device": "cuda", "inference.tile": "cpp"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="inference.torch_device 'cuda:1': torch sees no CUDA"):
        check_experiment(experiment(**{"inference.torch_device": "cuda:1"}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_evaluation_agrees_with_the_cpu_within_the_monte_carlo_spread(trained, digits):
    proto = protocol()
    cpu = analog.drift_accuracy(trained, digits.test, proto, TIMES, 5, seed=2, device="cpu")
    gpu = analog.drift_accuracy(trained, digits.test, proto, TIMES, 5, seed=2, device="cuda")
    for label, entry in cpu.items():
        spread = max(entry["std"], gpu[label]["std"], 1 / len(digits.test))
        assert abs(entry["mean"] - gpu[label]["mean"]) < 4 * spread, label
