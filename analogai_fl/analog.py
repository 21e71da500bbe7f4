"""Analog inference with aihwkit: device noise (PCM, ReRAM or none), read noise, drift,
drift compensation, on aihwkit's C++ tile or its torch tile.

Every setting comes from a named evaluation protocol (`config.protocol`), never from
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
    torch  `TorchInferenceRPUConfig` with `CppMatchingTorchMVM` below: aihwkit's torch tile
           differs from the C++ tile in three ways that change results, so the MVM is
           completed to match the C++ semantics vector by vector (tests compare the two).
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
from collections.abc import Iterator, Mapping, Sequence
from numbers import Number
from typing import Any

import torch
from aihwkit.inference import (
    GlobalDriftCompensation,
    PCMLikeNoiseModel,
    ReRamWan2022NoiseModel,
    StateIndependentNoiseModel,
)
from aihwkit.inference.noise.base import BaseNoiseModel
from aihwkit.nn import AnalogConv1d, AnalogConv2d, AnalogConv3d, AnalogLinear
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import (
    InferenceRPUConfig,
    TorchInferenceRPUConfig,
    WeightNoiseType,
)
from aihwkit.simulator.parameters.enums import (
    AnalogMVType,
    BoundManagementType,
    NoiseManagementType,
)
from aihwkit.simulator.parameters.io import IOParameters
from aihwkit.simulator.tiles.analog_mvm import AnalogMVM
from aihwkit.simulator.tiles.torch_tile import TorchSimulatorTile
from aihwkit.simulator.tiles.utils import UniformQuantize
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .config import RERAM_DRIFT_TIMES
from .models import split_grouped_convs
from .noise import NOISY_LAYERS

RERAM_G_MAX = 40.0  # uS: the g_max the Wan 2022 polynomial coefficients were fitted at


def _reram(protocol: Mapping[str, Any]) -> BaseNoiseModel:
    model = ReRamWan2022NoiseModel(g_max=RERAM_G_MAX, noise_scale=protocol["reram_noise_scale"])
    # aihwkit 1.1.0 takes the coefficients' reference g_max to be g_max itself (noise in uS
    # independent of g_max): only at the fit's own 40 uS is that the published fit.
    if model.coeff_g_max_reference != RERAM_G_MAX:
        raise RuntimeError("ReRamWan2022NoiseModel no longer references its fit to g_max; "
                           "check the ReRAM scaling against this aihwkit version")
    return model


def _ideal(protocol: Mapping[str, Any]) -> BaseNoiseModel:
    return StateIndependentNoiseModel(g_max=protocol["g_max"], prog_noise_scale=0.0,
                                      drift_scale=0.0, read_noise_scale=0.0)


DEVICE_MODELS = {
    "PCM": lambda protocol: PCMLikeNoiseModel(g_max=protocol["g_max"]),
    "ReRAM": _reram,
    "ideal": _ideal,
}


# --- The torch tile, completed to simulate what the C++ tile simulates -----------------------
#
# aihwkit 1.1.0's torch MVM (`AnalogMVM`) differs from the C++ tile's forward
# (rpu_forward_backward_pass.cpp, `ForwardBackwardPassIOManaged::forwardVector`) in:
#  1. forward.w_noise: refused. The C++ tile adds, for each input vector x (after input
#     scaling, DAC and input noise) and each output, w_noise * ||x||_2 * N(0, 1) before output
#     noise and ADC, which is exactly y = (W + Xi) x with fresh Xi ~ N(0, w_noise^2) per MVM.
#  2. bound management: the C++ tile repeats the MVM with halved input scale only for the
#     input vectors whose outputs clipped; the torch tile repeats it for the whole batch when
#     any output in the batch clipped, so its noise depends on the batch and is larger.
#  3. an all-zero input vector: the C++ tile returns exact zeros; the torch tile sets its
#     scale to 1 and returns output noise.
# `CppMatchingTorchMVM` implements the C++ semantics, vectorised over all input vectors.


class CppMatchingTorchMVM(AnalogMVM):
    """aihwkit's torch MVM with the C++ tile's per-vector semantics (see above)."""

    @classmethod
    def check_support(cls, io_pars: IOParameters) -> None:
        if io_pars.w_noise_type == WeightNoiseType.ADDITIVE_CONSTANT:
            io_pars = dataclasses.replace(io_pars, w_noise=0.0,
                                          w_noise_type=WeightNoiseType.NONE)
        super().check_support(io_pars)
        if io_pars.bound_management not in (BoundManagementType.NONE,
                                            BoundManagementType.ITERATIVE):
            raise NotImplementedError(f"bound management {io_pars.bound_management} is not "
                                      "implemented in the torch tile here; use the cpp tile")

    @classmethod
    def matmul(cls, weight: torch.Tensor, input_: torch.Tensor, io_pars: IOParameters,
               trans: bool = False, is_test: bool = False, **fwd_pars: Any) -> torch.Tensor:
        if io_pars.is_perfect or io_pars.mv_type == AnalogMVType.IDEAL:
            return cls._matmul(weight, input_, trans)
        if weight.ndim != 2:  # per-sample weights (training-time modifier): aihwkit's own path
            return super().matmul(weight, input_, io_pars, trans, is_test, **fwd_pars)
        if input_.dim() == 1:
            return cls.matmul(weight, input_[None], io_pars, trans, is_test, **fwd_pars)[0]
        io = io_pars
        weight = weight.T if trans else weight  # out_size x in_size
        # Any leading dims (a convolution's patches: N x patches x in_size), never flattened:
        # the input may be a non-contiguous slice of a tile array's input, and a copy of the
        # largest tensor involved costs more than the reductions on it.
        x = input_
        differentiable = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)

        if io.noise_management == NoiseManagementType.ABS_MAX:
            # = aihwkit's |x|.max(), faster than abs() or aminmax
            nm = torch.maximum(x.amax(-1, keepdim=True), -x.amin(-1, keepdim=True))
            if io.nm_thres > 0.0:
                nm = nm.clamp(max=io.nm_thres)
        elif io.noise_management == NoiseManagementType.NONE:
            nm = 1.0
        else:
            nm = cls._compute_noise_management(x, io.noise_management, io)
        if isinstance(nm, Number):
            nm = x.new_full((*x.shape[:-1], 1), float(nm))
        managed = io.noise_management != NoiseManagementType.NONE
        # C++: a vector with noise-management scale <= 0 gives exact zeros (unless input
        # noise is on); a scale <= 0 with input noise on means no scaling.
        zero = (nm <= 0) if managed and io.inp_noise <= 0 else None
        nm = torch.where(nm > 0, nm, torch.ones_like(nm)) if managed else torch.ones_like(nm)

        out, passed = cls._one_pass(weight, x, 1.0 / nm, io, **fwd_pars)
        out = out * (io.out_scale * nm) if differentiable else out.mul_(io.out_scale * nm)
        if zero is not None and bool(zero.any()):
            out = out.masked_fill(zero, 0.0)
            passed = passed | zero.squeeze(-1)

        # Bound management, C++ style: only the vectors whose outputs clipped are repeated
        # with half the input scale, until none clips or the reduction reaches its limit.
        inp_res = io.inp_res
        if inp_res > 0:
            inp_res = (1 / inp_res if inp_res > 1.0 else inp_res) * 2.0 * io.inp_bound
        reduction = 1.0
        bm = io.bound_management != BoundManagementType.NONE
        todo = torch.nonzero(~passed if bm else torch.zeros_like(passed), as_tuple=True)
        while todo[0].numel() > 0:
            if reduction > io.max_bm_factor or (inp_res > 0
                                                and reduction > io.max_bm_res / inp_res):
                break  # the C++ tile accepts the last (clipped) result
            reduction *= 2.0
            scale = 1.0 / (nm[todo] * reduction)
            again, ok = cls._one_pass(weight, x[todo], scale, io, **fwd_pars)
            again = again * (io.out_scale / scale)
            out = out.index_put(todo, again) if differentiable else out.index_put_(todo, again)
            todo = tuple(index[~ok] for index in todo)
        return out

    @staticmethod
    def _quantize_(v: torch.Tensor, res: float, bound: float) -> torch.Tensor:
        """In place, the arithmetic of aihwkit's `UniformQuantize` (deterministic rounding)."""
        res = 1 / res if res > 1.0 else res
        res *= 2 * bound
        return v.div_(res).round_().mul_(res)

    @classmethod
    def _one_pass(cls, weight: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                  io: IOParameters, out_noise_values: torch.Tensor | None = None,
                  **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One analog MVM of each vector (last dim) of `x`, each scaled by its `scale`: the
        normalised outputs and, per vector, whether none of its outputs clipped. The same
        arithmetic as aihwkit's torch tile, in place where no gradient is needed."""
        differentiable = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        if differentiable or io.inp_sto_round or io.out_sto_round:
            prepared = cls._prepare_input(input_=x, scale=scale, scaling=True,
                                          with_asymmetry=io.inp_asymmetry != 0.0, io_pars=io)
        else:
            prepared = x * scale
            if io.inp_res > 0:
                cls._quantize_(prepared, io.inp_res, io.inp_bound)
            if io.inp_bound > 0:
                prepared.clamp_(-io.inp_bound, io.inp_bound)
            if io.inp_noise > 0.0:
                prepared.add_(torch.randn_like(prepared), alpha=io.inp_noise)
            if io.inp_asymmetry != 0.0:
                prepared = torch.where(prepared < 0, prepared * (1.0 - io.inp_asymmetry),
                                       prepared)
        y = prepared @ weight.T
        if io.w_noise_type == WeightNoiseType.ADDITIVE_CONSTANT and io.w_noise > 0:
            y = y + io.w_noise * torch.linalg.vector_norm(prepared, dim=-1, keepdim=True) \
                * torch.randn_like(y)
        if io.out_asymmetry != 0.0:
            y = torch.where(y < 0, y * (1.0 - io.out_asymmetry), y)
        if out_noise_values is not None:
            y = y + torch.randn_like(y) * out_noise_values
        elif io.out_noise > 0:
            y = y + io.out_noise * torch.randn_like(y) if differentiable else y.add_(
                torch.randn_like(y), alpha=io.out_noise)
        if io.out_res > 0:
            if differentiable or io.out_sto_round:
                y = UniformQuantize.apply(y, io.out_res, io.out_bound, io.out_sto_round)
            else:
                cls._quantize_(y, io.out_res, io.out_bound)
        if io.out_bound > 0:
            ok = y.amax(-1) <= io.out_bound
            if io.bm_test_negative_bound:
                ok &= y.amin(-1) >= -io.out_bound
            y = y.clamp(-io.out_bound, io.out_bound) if differentiable else y.clamp_(
                -io.out_bound, io.out_bound)
        else:
            ok = torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)
        return y, ok


class CppMatchingTorchTile(TorchSimulatorTile):
    """aihwkit's torch simulator tile running `CppMatchingTorchMVM`."""

    def __init__(self, x_size: int, d_size: int, rpu_config: TorchInferenceRPUConfig,
                 bias: bool = False, analog_mvm: type[AnalogMVM] = CppMatchingTorchMVM):
        super().__init__(x_size, d_size, rpu_config, bias, analog_mvm)


@dataclasses.dataclass
class TorchTileRPUConfig(TorchInferenceRPUConfig):
    """TorchInferenceRPUConfig whose tiles simulate the C++ tile's forward pass."""

    simulator_tile_class: type = CppMatchingTorchTile


TILES = {"cpp": InferenceRPUConfig, "torch": TorchTileRPUConfig}


class PatchConv2d(AnalogConv2d):
    """aihwkit's AnalogConv2d with the same input patches, gathered faster on CPU.

    On CPU aihwkit feeds a convolution's tiles `F.unfold(x).transpose(-1, -2)`; `F.unfold`
    is slow for few channels and the transposed result is copied again before the MVM.
    Strided views give the same (N, L, C*kh*kw) patches, in the same order, in one copy.
    """

    def forward(self, x_input: torch.Tensor) -> torch.Tensor:
        indexed = self.use_indexed if self.use_indexed is not None else x_input.is_cuda
        if indexed or x_input.dim() != 4 or tuple(self.dilation) != (1, 1):
            return super().forward(x_input)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        x = F.pad(x_input, (pw, pw, ph, ph)) if ph or pw else x_input
        n, c = x.shape[:2]
        patches = x.unfold(2, kh, sh).unfold(3, kw, sw)  # N, C, H', W', kh, kw (views)
        h_out, w_out = patches.shape[2:4]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, h_out * w_out, c * kh * kw)
        out = self.analog_module(patches).transpose(-1, -2)
        return out.reshape(n, self.out_channels, h_out, w_out)


CONVERSION_MAP = {nn.Linear: AnalogLinear, nn.Conv1d: AnalogConv1d, nn.Conv2d: PatchConv2d,
                  nn.Conv3d: AnalogConv3d}


def converter_resolution(bits: int) -> float:
    """aihwkit's step size for a converter of `bits` bits; -1 = no quantisation."""
    return 1.0 / (2**bits - 2) if bits > 0 else -1.0


def rpu_config(protocol: Mapping[str, Any]) -> InferenceRPUConfig:
    """The inference tile (`protocol['tile']`) configured entirely from the protocol."""
    device, tile = protocol["device"], protocol["tile"]
    if device not in DEVICE_MODELS:
        raise ValueError(f"unknown device '{device}'; known: {', '.join(DEVICE_MODELS)}")
    if tile not in TILES:
        raise ValueError(f"unknown tile '{tile}'; known: {', '.join(TILES)}")
    rpu = TILES[tile]()
    rpu.mapping.weight_scaling_omega = protocol["weight_scaling_omega"]
    rpu.mapping.weight_scaling_columnwise = protocol["weight_scaling_columnwise"]
    rpu.forward.inp_res = converter_resolution(protocol["dac_bits"])
    rpu.forward.out_res = converter_resolution(protocol["adc_bits"])
    rpu.forward.out_noise = protocol["out_noise"]
    rpu.forward.w_noise_type = WeightNoiseType.ADDITIVE_CONSTANT
    rpu.forward.w_noise = protocol["n_w"]
    rpu.noise_model = DEVICE_MODELS[device](protocol)
    rpu.drift_compensation = GlobalDriftCompensation() if protocol["drift_compensation"] else None
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


def to_analog(model: nn.Module, protocol: Mapping[str, Any]) -> nn.Module:
    """Analog inference copy of `model` on CPU (the registry wheel has no CUDA tiles), in
    eval mode, configured entirely by the protocol."""
    return convert_every_layer(model, rpu_config(protocol), CONVERSION_MAP).eval()


def percent(x: float) -> str:
    return f"{100 * x:.1f}"


def mean_std(entry: Mapping[str, float]) -> str:
    """A `pcm_accuracy` entry as 'mean ± std' in percent."""
    return f"{percent(entry['mean'])} ± {percent(entry['std'])}"


def drift_label(seconds: float) -> str:
    """1 -> '1s', 3600 -> '1h', 86400 -> '1d', 31536000 -> '1y'."""
    for unit, size in (("y", 31536000), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def batches(data: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) batches in order; a TensorDataset is sliced, not collated per item."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
        for i in range(0, len(y), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
    else:
        yield from DataLoader(data, batch_size=batch_size)


@torch.no_grad()
def analog_accuracy(analog: nn.Module, data: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of an analog model as it is programmed and drifted now."""
    correct = total = 0
    for x, y in batches(data, batch_size):
        correct += (analog(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def _check_drift_times(protocol: Mapping[str, Any], drift_times: Sequence[float]) -> None:
    if protocol["device"] == "ReRAM" and any(t not in RERAM_DRIFT_TIMES for t in drift_times):
        raise ValueError(f"device ReRAM (ReRamWan2022NoiseModel) is defined only at drift "
                         f"times {', '.join(f'{t:g}' for t in RERAM_DRIFT_TIMES)} s, got "
                         f"{', '.join(f'{t:g}' for t in drift_times)}")


def _summary(runs: Mapping[float, list[float]]) -> dict[str, dict[str, float]]:
    return {drift_label(t): {"mean": statistics.fmean(v),
                             "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                             "seconds": t}
            for t, v in runs.items()}


def _stream_seed(*parts: int) -> int:
    """A seed for one stream of noise draws, distinct for each tuple of parts."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


@torch.no_grad()
def pcm_accuracy(model: nn.Module, data: Dataset, protocol: Mapping[str, Any],
                 drift_times: Sequence[float], repeats: int, seed: int,
                 batch_size: int = 512) -> dict[str, dict[str, float]]:
    """Accuracy at each drift time: mean and std over Monte-Carlo repeats, on the protocol's
    device (the name is historical: PCM, ReRAM or ideal).

    The model is converted once. Each repeat draws fresh programming noise
    (`drift_analog_weights` alone would reuse the first programming), then drifts to every
    time from that same programmed state. Noise is drawn from torch's RNG (forked: the
    caller's stays untouched), seeded from (`seed`, repeat) before programming and from
    (`seed`, repeat, drift time) before each drift, so the programmed and drifted weights
    depend only on those, not on what the forward passes drew (n_w, output noise): every
    n_w of a sweep and both tiles see the same device draws. The C++ tile's per-read output
    and weight noise comes from its own generator, which aihwkit 1.1.0 cannot seed.
    """
    _check_drift_times(protocol, drift_times)
    analog = to_analog(model, protocol)
    runs: dict[float, list[float]] = {t: [] for t in drift_times}
    with torch.random.fork_rng():
        for repeat in range(repeats):
            torch.manual_seed(_stream_seed(seed, repeat))
            analog.program_analog_weights()
            for i, t in enumerate(drift_times):
                torch.manual_seed(_stream_seed(seed, repeat, i))
                analog.drift_analog_weights(t)
                runs[t].append(analog_accuracy(analog, data, batch_size))
    return _summary(runs)


def n_w_sweep(model: nn.Module, data: Dataset, protocol: Mapping[str, Any],
              n_ws: Sequence[float], drift_times: Sequence[float], repeats: int, seed: int,
              batch_size: int = 512) -> dict[float, dict[str, dict[str, float]]]:
    """`pcm_accuracy` at each additive weight noise n_w (the protocol's n_w replaced).

    The same seed for every n_w: the programming and drift draws are the same across the
    sweep (common random numbers), so differences between n_w values are not device luck.
    """
    return {n_w: pcm_accuracy(model, data, {**protocol, "n_w": n_w}, drift_times, repeats,
                              seed, batch_size)
            for n_w in n_ws}
