"""Analog inference with aihwkit: device noise (PCM, ReRAM or none), read noise, drift,
drift compensation, on aihwkit's C++ tile or its torch tile.

Every setting comes from a named evaluation protocol (`settings.Protocol`), never from
aihwkit's defaults by accident, and is recorded with each result.

Device models (`inference.platform.aihwkit.device`):
    PCM    aihwkit's `PCMLikeNoiseModel(g_max)`: conductance-dependent programming noise,
           power-law drift with device-to-device drift exponents, 1/f read noise growing
           with time (Nandakumar et al., ICECS 2019), g_max from the protocol.
    ReRAM  aihwkit's `ReRamWan2022NoiseModel`: 4th-order polynomial fits of the conductance
           spread measured on the NeuRRAM chip (Wan et al., Nature 2022) at 1 s, 1 day and
           2 days after programming, at the fit's g_max of 40 uS, scaled by
           `inference.reram.noise_scale`. Each time point is an independent draw around the
           target conductance (ReRAM relaxes rather than drifts), so only those three drift
           times exist. aihwkit suggests n_w ~ 0.01 for the short-term read noise the fit
           lacks; here n_w stays whatever the config says.
    ideal  aihwkit's `StateIndependentNoiseModel` with programming noise, drift and read
           noise all scaled to zero: the weights are exactly the digital ones and only the
           protocol's forward settings (DAC/ADC, output noise, n_w, bound management) act.

Tiles (`inference.tile`):
    cpp    `InferenceRPUConfig`, aihwkit's C++ (RPUCuda) tile: one input vector at a time.
    torch  `TorchInferenceRPUConfig` with `tiles.CppMatchingTorchMVM`: aihwkit's torch tile
           differs from the C++ tile in three ways that change results, so the MVM is
           completed to match the C++ semantics vector by vector (tests compare the two).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from aihwkit.inference import (
    GlobalDriftCompensation,
    PCMLikeNoiseModel,
    ReRamWan2022NoiseModel,
    StateIndependentNoiseModel,
)
from aihwkit.inference.calibration import InputRangeCalibrationType, calibrate_input_ranges
from aihwkit.inference.noise.base import BaseNoiseModel
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import InferenceRPUConfig, WeightNoiseType
from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .models import split_grouped_convs
from .noise import NOISY_LAYERS
from .reporting import drift_label
from .schema import RERAM_DRIFT_TIMES
from .settings import Protocol
from .streams import seed_for
from .tiles import (
    CONVERSION_MAP,
    TILES,
    TileState,
    supports_weight_sets,
    tile_state,
    weight_sets,
)

RERAM_G_MAX = 40.0  # uS: the g_max the Wan 2022 polynomial coefficients were fitted at


def _reram(protocol: Protocol) -> BaseNoiseModel:
    model = ReRamWan2022NoiseModel(g_max=RERAM_G_MAX, noise_scale=protocol.reram_noise_scale)
    # aihwkit 1.1.0 takes the coefficients' reference g_max to be g_max itself (noise in uS
    # independent of g_max): only at the fit's own 40 uS is that the published fit.
    if model.coeff_g_max_reference != RERAM_G_MAX:
        raise RuntimeError("ReRamWan2022NoiseModel no longer references its fit to g_max; "
                           "check the ReRAM scaling against this aihwkit version")
    return model


def _ideal(protocol: Protocol) -> BaseNoiseModel:
    return StateIndependentNoiseModel(g_max=protocol.g_max, prog_noise_scale=0.0,
                                      drift_scale=0.0, read_noise_scale=0.0)


DEVICE_MODELS = {
    "PCM": lambda protocol: PCMLikeNoiseModel(g_max=protocol.g_max),
    "ReRAM": _reram,
    "ideal": _ideal,
}


def converter_resolution(bits: int) -> float:
    """aihwkit's step size for a converter of `bits` bits; -1 = no quantisation."""
    return 1.0 / (2**bits - 2) if bits > 0 else -1.0


W_NOISE_TYPES = {"additive": WeightNoiseType.ADDITIVE_CONSTANT,
                 "pcm_read": WeightNoiseType.PCM_READ}
BOUND_MANAGEMENT = {"iterative": BoundManagementType.ITERATIVE,
                    "none": BoundManagementType.NONE}
NOISE_MANAGEMENT = {"abs_max": NoiseManagementType.ABS_MAX,
                    "constant": NoiseManagementType.CONSTANT}
CALIBRATION_QUANTILE = 0.99995  # aihwkit calibrate_input_ranges' default quantile
CALIBRATION_BATCH = 100


def rpu_config(protocol: Protocol) -> InferenceRPUConfig:
    """The inference tile (`protocol.tile`) configured entirely from the protocol. With
    columnwise weight scaling the per-column scales are output scales (mapping
    learn_out_scaling, out_scaling_columnwise), as in aihwkit's StandardHWATrainingPreset;
    at inference that changes no number. Input ranges (`input_range_images` > 0) are
    enabled here and set by `to_analog`'s calibration."""
    device, tile = protocol.device, protocol.tile
    if device not in DEVICE_MODELS:
        raise ValueError(f"unknown device '{device}'; known: {', '.join(DEVICE_MODELS)}")
    if tile not in TILES:
        raise ValueError(f"unknown tile '{tile}'; known: {', '.join(TILES)}")
    rpu = TILES[tile]()
    mapping, forward = rpu.mapping, rpu.forward
    mapping.weight_scaling_omega = protocol.weight_scaling_omega
    mapping.weight_scaling_columnwise = protocol.weight_scaling_columnwise
    mapping.learn_out_scaling = mapping.out_scaling_columnwise = (
        protocol.weight_scaling_columnwise)
    mapping.max_input_size, mapping.max_output_size = (protocol.max_input_size,
                                                       protocol.max_output_size)
    forward.inp_res = converter_resolution(protocol.dac_bits)
    forward.out_res = converter_resolution(protocol.adc_bits)
    forward.out_noise = protocol.out_noise
    forward.out_bound = protocol.out_bound
    forward.w_noise_type = W_NOISE_TYPES[protocol.w_noise_type]
    forward.w_noise = protocol.n_w
    forward.ir_drop = protocol.ir_drop
    forward.bound_management = BOUND_MANAGEMENT[protocol.bound_management]
    forward.noise_management = NOISE_MANAGEMENT[protocol.noise_management]
    if protocol.noise_management == "constant":
        forward.nm_thres = 1.0  # the preset's: inputs are not rescaled
    rpu.pre_post.input_range.enable = protocol.input_range_images > 0
    rpu.noise_model = DEVICE_MODELS[device](protocol)
    rpu.drift_compensation = GlobalDriftCompensation() if protocol.drift_compensation else None
    return rpu


def convert_every_layer(model: nn.Module, rpu: Any,
                        conversion_map: Mapping[type, type] | None = None,
                        device: torch.device | str = "cpu") -> nn.Module:
    """Analog copy of `model` on `device` (grouped convolutions become one tile per group,
    `models.split_grouped_convs`).

    Raises if any Conv/Linear layer stayed digital: aihwkit skips unknown classes silently,
    and the "analog" accuracy would then be the digital one.
    """
    digital = split_grouped_convs(model).to(device)  # a copy, converted in place
    expected = sum(isinstance(m, NOISY_LAYERS) for m in digital.modules())
    extra = {"conversion_map": conversion_map} if conversion_map else {}
    analog = convert_to_analog(digital, rpu, inplace=True, **extra)
    converted = len(list(analog.analog_layers()))
    if converted != expected:
        raise RuntimeError(f"aihwkit converted {converted} of {expected} Conv/Linear layers; "
                           "use plain nn.Conv2d/nn.Linear without parametrizations")
    return analog


def torch_device(requested: str, tile: str) -> torch.device:
    """Where the analog evaluation runs (`inference.torch_device`): "auto" is the current
    CUDA device when torch sees one and the tile can run there (the torch tile: aihwkit's
    PyPI wheel has no CUDA C++ tiles), else the CPU; "cpu", "cuda" or "cuda:N" as given.
    Raises ValueError for a CUDA device torch does not see."""
    if requested == "auto":
        usable = tile == "torch" and torch.cuda.is_available()
        return torch.device("cuda", torch.cuda.current_device()) if usable else torch.device(
            "cpu")
    device = torch.device(requested)  # cuda with the cpp tile: refused by settings already
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"inference.torch_device '{requested}': torch sees no CUDA device "
                             "here; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"inference.torch_device '{requested}': only "
                             f"{torch.cuda.device_count()} CUDA device(s) here")
    return device


def to_analog(model: nn.Module, protocol: Protocol, device: torch.device | str = "cpu",
              calibration: Dataset | None = None, seed: int = 0) -> nn.Module:
    """Analog inference copy of `model` on `device`, in eval mode, configured entirely by
    the protocol (converted on the CPU, then moved).

    With `protocol.input_range_images` > 0, every tile's DAC input range is calibrated on
    the first that many images of `calibration` (all of it when it holds fewer; the
    training split: the same images for every model), with aihwkit's
    `calibrate_input_ranges` (CACHE_QUANTILE at 0.99995, on the noise-free forward, before
    programming; the inputs it keeps drawn from stream "input-ranges" of `seed`, torch's RNG
    forked). aihwkit turns noise management off for
    that (input ranges replace it). Raises ValueError when `calibration` is missing or
    empty."""
    analog = convert_every_layer(model, rpu_config(protocol), CONVERSION_MAP)
    calibrate(analog, protocol, calibration, seed)
    return analog.to(device).eval()


def calibrate(analog: nn.Module, protocol: Protocol, calibration: Dataset | None,
              seed: int) -> None:
    """`to_analog`'s input-range calibration of the converted `analog` (in place; nothing
    when the protocol has no input ranges). ValueError when `calibration` is needed but
    missing or empty."""
    wanted = protocol.input_range_images
    if not wanted:
        return
    if calibration is None or len(calibration) == 0:
        raise ValueError(f"protocol '{protocol.name}' calibrates its input ranges on up "
                         f"to {wanted} training images (input_range_images); got none")
    images = (x for x, _ in batches(calibration, CALIBRATION_BATCH))
    shown = itertools.islice(images, math.ceil(wanted / CALIBRATION_BATCH))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, "input-ranges"))
        calibrate_input_ranges(analog.eval(), InputRangeCalibrationType.CACHE_QUANTILE,
                               (((x,), {}) for x in shown), quantile=CALIBRATION_QUANTILE)


def batches(data: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) batches in order; a TensorDataset is sliced, not collated per item."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
        for i in range(0, len(y), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
    else:
        yield from DataLoader(data, batch_size=batch_size)


def _device_of(analog: nn.Module) -> torch.device:
    return next(analog.parameters()).device


@torch.no_grad()
def analog_accuracy(analog: nn.Module, data: Dataset, batch_size: int = 128) -> float:
    """Top-1 accuracy of an analog model as it is programmed and drifted now."""
    device = _device_of(analog)
    correct = total = 0
    for x, y in batches(data, batch_size):
        correct += (analog(x.to(device)).argmax(1) == y.to(device)).sum().item()
        total += len(y)
    return correct / total


@torch.no_grad()
def weight_set_accuracy(analog: nn.Module, states: Sequence[TileState], data: Dataset,
                        batch_size: int = 128) -> list[float]:
    """Top-1 accuracy of `analog` in each of the G tile states (`tiles.tile_state`), all in
    one pass over `data` (`tiles.weight_sets`): about `batch_size` images x sets per
    forward. Returns G fractions, in the order of `states`."""
    device = _device_of(analog)
    with weight_sets(analog, states) as sets:
        correct = torch.zeros(sets.count, dtype=torch.long, device=device)
        total = 0
        for x, y in batches(data, max(1, batch_size // sets.count)):
            sets.batch = len(y)
            logits = analog(x.to(device)).view(sets.count, len(y), -1)
            correct += (logits.argmax(-1) == y.to(device)).sum(1)
            total += len(y)
    return (correct.double() / total).tolist()


def _check_drift_times(protocol: Protocol, drift_times: Sequence[float]) -> None:
    if protocol.device == "ReRAM" and any(t not in RERAM_DRIFT_TIMES for t in drift_times):
        raise ValueError(f"device ReRAM (ReRamWan2022NoiseModel) is defined only at drift "
                         f"times {', '.join(f'{t:g}' for t in RERAM_DRIFT_TIMES)} s, got "
                         f"{', '.join(f'{t:g}' for t in drift_times)}")


def _summary(runs: Mapping[float, list[float]]) -> dict[str, dict[str, float]]:
    return {drift_label(t): {"mean": statistics.fmean(v),
                             "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                             "seconds": t}
            for t, v in runs.items()}


@torch.no_grad()
def drift_accuracy(model: nn.Module, data: Dataset, protocol: Protocol,
                   drift_times: Sequence[float], repeats: int, seed: int,
                   batch_size: int = 128, device: torch.device | str = "cpu",
                   one_pass: bool = True, calibration: Dataset | None = None
                   ) -> dict[str, dict[str, float]]:
    """Accuracy (fraction, 0..1) at each drift time (seconds after programming): mean and
    std over Monte-Carlo repeats, on the protocol's device (PCM, ReRAM or ideal), keyed by
    `reporting.drift_label` ("1s", "1d", ...). Raises ValueError for ReRAM at a drift time
    its noise model lacks.

    The model is converted once. Each repeat draws fresh programming noise
    (`drift_analog_weights` alone would reuse the first programming), then drifts to every
    time from that same programmed state. Noise is drawn from torch's RNG (forked: the
    caller's stays untouched), each stream its own (`streams.seed_for`): "programming" of
    (`seed`, repeat) before programming, "drift" of (`seed`, repeat, drift-time index)
    before each drift, "read" before the forward passes, so the programmed and drifted
    weights depend only on those, not on what the forward passes drew (n_w, output noise):
    every n_w of a sweep and both tiles see the same device draws. The C++ tile's per-read
    output and weight noise comes from its own generator, which aihwkit 1.1.0 cannot seed.

    With `one_pass` (and the torch tile) the repeats x drift times states are measured in
    one pass over `data` (`tiles.weight_sets`): the same device draws and the same
    simulation, but the per-read noise (output noise, n_w) is drawn in another order than
    in one pass per state, so the accuracies agree within the Monte-Carlo spread (exactly
    when no per-read noise is on). On `device` (a CUDA device needs the torch tile) the
    draws come from that device's generator. A protocol with input ranges calibrates them on
    `calibration` (the training split; `to_analog`), once, before the first programming.
    """
    _check_drift_times(protocol, drift_times)
    analog = to_analog(model, protocol, device, calibration, seed)
    together = one_pass and supports_weight_sets(analog)
    runs: dict[float, list[float]] = {t: [] for t in drift_times}
    states: list[TileState] = []
    with torch.random.fork_rng(devices=cuda_indices(device)):
        for repeat in range(repeats):
            torch.manual_seed(seed_for(seed, "programming", repeat))
            analog.program_analog_weights()
            for i, t in enumerate(drift_times):
                torch.manual_seed(seed_for(seed, "drift", repeat, i))
                analog.drift_analog_weights(t)
                if together:
                    states.append(tile_state(analog))
                else:
                    torch.manual_seed(seed_for(seed, "read", repeat, i))
                    runs[t].append(analog_accuracy(analog, data, batch_size))
        if together:
            torch.manual_seed(seed_for(seed, "read"))
            measured = iter(weight_set_accuracy(analog, states, data, batch_size))
            for _ in range(repeats):
                for t in drift_times:
                    runs[t].append(next(measured))
    return _summary(runs)


def cuda_indices(device: torch.device | str) -> list[int]:
    """The CUDA device index `device` means, as `torch.random.fork_rng(devices=...)` takes
    it: [] for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def n_w_sweep(model: nn.Module, data: Dataset, protocol: Protocol,
              n_ws: Sequence[float], drift_times: Sequence[float], repeats: int, seed: int,
              batch_size: int = 128, device: torch.device | str = "cpu", one_pass: bool = True,
              calibration: Dataset | None = None
              ) -> dict[float, dict[str, dict[str, float]]]:
    """`drift_accuracy` at each read noise n_w (the protocol's n_w replaced, of its
    `w_noise_type`).

    The same seed for every n_w: the programming and drift draws are the same across the
    sweep (common random numbers), so differences between n_w values are not device luck.
    """
    return {n_w: drift_accuracy(model, data, protocol.with_n_w(n_w), drift_times, repeats,
                                seed, batch_size, device, one_pass, calibration)
            for n_w in n_ws}
