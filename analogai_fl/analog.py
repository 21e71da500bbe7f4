"""Analog inference with aihwkit: PCM programming noise, read noise, drift, drift compensation.

Every setting comes from a named evaluation protocol (`config.protocol`), never from
aihwkit's defaults by accident, and is recorded with each result.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import InferenceRPUConfig, WeightNoiseType
from torch import nn
from torch.utils.data import Dataset

from .noise import NOISY_LAYERS
from .training import accuracy

DEVICE_MODELS = {"PCM": lambda protocol: PCMLikeNoiseModel(g_max=protocol["g_max"])}


def _resolution(bits: int) -> float:
    """aihwkit's step size for a converter of `bits` bits; -1 = no quantisation."""
    return 1.0 / (2**bits - 2) if bits > 0 else -1.0


def rpu_config(protocol: Mapping[str, Any]) -> InferenceRPUConfig:
    """The C++ inference tile configured entirely from the protocol."""
    device = protocol["device"]
    if device not in DEVICE_MODELS:
        raise ValueError(f"unknown device '{device}'; known: {', '.join(DEVICE_MODELS)}")
    rpu = InferenceRPUConfig()
    rpu.mapping.weight_scaling_omega = protocol["weight_scaling_omega"]
    rpu.mapping.weight_scaling_columnwise = protocol["weight_scaling_columnwise"]
    rpu.forward.inp_res = _resolution(protocol["dac_bits"])
    rpu.forward.out_res = _resolution(protocol["adc_bits"])
    rpu.forward.out_noise = protocol["out_noise"]
    rpu.forward.w_noise_type = WeightNoiseType.ADDITIVE_CONSTANT
    rpu.forward.w_noise = protocol["n_w"]
    rpu.noise_model = DEVICE_MODELS[device](protocol)
    rpu.drift_compensation = GlobalDriftCompensation() if protocol["drift_compensation"] else None
    return rpu


def to_analog(model: nn.Module, protocol: Mapping[str, Any]) -> nn.Module:
    """Analog copy of `model` (on CPU: the registry wheel has no CUDA tiles).

    Raises if any Conv/Linear layer stayed digital: aihwkit skips unknown classes silently,
    and the "analog" accuracy would then be the digital one.
    """
    digital = copy.deepcopy(model).cpu().eval()
    expected = sum(isinstance(m, NOISY_LAYERS) for m in digital.modules())
    analog = convert_to_analog(digital, rpu_config(protocol))
    converted = len(list(analog.analog_layers()))
    if converted != expected:
        raise RuntimeError(f"aihwkit converted {converted} of {expected} Conv/Linear layers; "
                           "use plain nn.Conv2d/nn.Linear without parametrizations")
    return analog.eval()


def drift_label(seconds: float) -> str:
    """1 -> '1s', 3600 -> '1h', 86400 -> '1d', 31536000 -> '1y'."""
    for unit, size in (("y", 31536000), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@torch.no_grad()
def pcm_accuracy(model: nn.Module, data: Dataset, protocol: Mapping[str, Any],
                 drift_times: Sequence[float], repeats: int, seed: int,
                 batch_size: int = 512) -> dict[str, dict[str, float]]:
    """Accuracy at each drift time: mean and std over Monte-Carlo repeats.

    Each repeat draws fresh programming noise (`drift_analog_weights` alone would reuse the
    first programming), then drifts to every time from that same programmed state.
    """
    analog = to_analog(model, protocol)
    runs: dict[float, list[float]] = {t: [] for t in drift_times}
    with torch.random.fork_rng():  # seeded noise draws without touching the caller's RNG
        torch.manual_seed(seed)
        for _ in range(repeats):
            analog.program_analog_weights()
            for t in drift_times:
                analog.drift_analog_weights(t)
                runs[t].append(accuracy(analog, data, batch_size))
    return {drift_label(t): {"mean": statistics.fmean(v),
                             "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                             "seconds": t}
            for t, v in runs.items()}
