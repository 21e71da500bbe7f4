"""A lean, HWA-style noisy forward for training: the chip's noise sources in one cheap pass.

`chip_forward(model, x, modifier_std, chip)` computes `model(x)` with every Conv/Linear layer
run the way aihwkit's analog tile runs it in a training-mode forward (aihwkit 1.1.0,
`InferenceRPUConfig` / `TorchInferenceRPUConfig` with an ADD_NORMAL weight modifier), per
layer of logical weights W (out x in), input x and digital bias b:

    alpha = max|W| (per tensor; per output row with `columnwise`)   mapping, remapped each pass
    W~    = W / alpha + modifier_std * N(0, 1)                      weight modifier, relative
                                                                    to the mapped max|W| (= 1)
    s     = max|x| of each sample                                   noise management (ABS_MAX)
    u     = clamp(DAC(x / s), -1, 1)                                input DAC, step 2/(2^b - 2)
    v     = ADC(W~ u + out_noise * N(0, 1))                         output noise and ADC, step
                                                                    2 * out_bound/(2^b - 2)
    y     = alpha * s * clamp(v, -out_bound, out_bound) + b         back to logical units

A sample whose outputs clip is run again with its input scale doubled, until none clips or
the reduction reaches aihwkit's limit (`forward.bound_management = ITERATIVE`,
`max_bm_factor` 1000, `max_bm_res` 0.25). Noise is drawn afresh at every pass (as aihwkit's
torch tile draws its modifier); the rounding of both converters passes gradients straight
through (aihwkit's `UniformQuantize`), clipped outputs pass none, and the scales alpha and s
are constants of the pass, so the backward pass is the ideal one of the noisy forward.
out_noise is in aihwkit's units: a fraction of the output of one full-scale input (|x| = s)
on one full-scale weight (|W| = alpha). The sources and formulas are those of aihwkit's
`simulator/tiles/analog_mvm.py`, `periphery.py` and `parameters/io.py`, as
`analogai_fl/tiles.py` reproduces them for inference; tests/test_chip_noise.py compares this
forward with aihwkit's torch tile on the same settings, source by source.

Where it departs from aihwkit, and why:
- Input scaling per sample, not per input vector: for a convolution aihwkit scales every
  patch by its own max|x|, which needs the patches unfolded (the cost this forward avoids);
  a sample's max over all its patches is at least each patch's, so quiet patches see a
  coarser DAC step than on aihwkit's tile. For a Linear layer both are the same.
- One mapping per layer, remapped at every pass (alpha follows the weights, as aihwkit's
  `remap` after every step does), not one per 512-row tile; no learned input ranges (the
  evaluation protocols use ABS_MAX noise management) and no learned output scales.
- Bound management repeats a clipping sample as a whole (aihwkit: each clipping vector).
- An all-zero sample gives exact zeros (aihwkit's C++ tile does the same per vector; its
  torch tile adds output noise to all-zero vectors when others in the batch are non-zero).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .noise import NOISY_LAYERS
from .quantization import quantize_per_channel

# aihwkit's IOParameters: max_bm_factor, max_bm_res (bound management's limits)
MAX_BM_FACTOR = 1000.0
MAX_BM_RES = 0.25


def converter_step(bits: int, bound: float) -> float:
    """The quantisation step of a `bits`-bit converter over [-bound, bound]: aihwkit's
    resolution 1/(2^bits - 2) of the full range 2 * bound; 0 for an ideal converter."""
    return 2.0 * bound / (2**bits - 2) if bits else 0.0


@dataclass(frozen=True)
class ChipNoise:
    """The chip's forward while training (`training.analog.*`), besides the weight modifier,
    whose std is the client's sigma: output noise, converters, output range, mapping."""

    out_noise: float  # std of the output noise (aihwkit forward.out_noise units, see above)
    dac_bits: int  # input DAC resolution in bits, 0 = ideal
    adc_bits: int  # output ADC resolution in bits, 0 = ideal
    out_bound: float  # output range in full-scale products (aihwkit forward.out_bound), 0 = none
    columnwise: bool  # one mapping scale per output row instead of per layer
    bound_management: bool  # repeat a clipping sample with a reduced input scale

    @property
    def quiet(self) -> bool:
        """No source of the forward is on: the forward is the digital one (up to rounding)."""
        return not (self.out_noise or self.dac_bits or self.adc_bits or self.out_bound)


def _round_through(x: torch.Tensor, step: float) -> torch.Tensor:
    """x rounded to a multiple of `step` (round half to even), gradient straight through."""
    return x + (torch.round(x / step) * step - x).detach()


def _product(module: nn.Module, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(u, weight)
    if module.padding_mode != "zeros":
        raise ValueError(f"chip_forward supports zero padding only, got {module.padding_mode!r}")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
    return conv(u, weight, None, module.stride, module.padding, module.dilation,
                module.groups)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped to broadcast over a batch `like` (N, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _layer_forward(module: nn.Module, x: torch.Tensor, *, modifier_std: float,
                   out_noise: float, chip: ChipNoise, generator: torch.Generator | None,
                   weight_bits: int) -> torch.Tensor:
    weight = module.weight
    if weight_bits:
        weight = quantize_per_channel(weight, weight_bits)
    if chip.columnwise:
        alpha = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
        mapped = weight / alpha.view(-1, *([1] * (weight.dim() - 1)))
    else:
        alpha = weight.detach().abs().amax().clamp_min(1e-12)
        mapped = weight / alpha
    if modifier_std > 0:
        mapped = mapped + modifier_std * torch.randn(
            mapped.shape, generator=generator, device=mapped.device, dtype=mapped.dtype)
    dac = converter_step(chip.dac_bits, 1.0)
    adc = converter_step(chip.adc_bits, chip.out_bound) if chip.out_bound else 0.0

    def one_pass(inputs: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = inputs / _per_sample(scale, inputs)
        if dac:
            u = _round_through(u, dac).clamp(-1.0, 1.0)
        v = _product(module, u, mapped)
        if out_noise > 0:
            v = v + out_noise * torch.randn(v.shape, generator=generator, device=v.device,
                                            dtype=v.dtype)
        if adc:
            v = _round_through(v, adc)
        if not chip.out_bound:
            return v * _per_sample(scale, v), torch.zeros(len(v), dtype=torch.bool,
                                                          device=v.device)
        clipped = (v.detach().abs() > chip.out_bound).flatten(1).any(1)
        return v.clamp(-chip.out_bound, chip.out_bound) * _per_sample(scale, v), clipped

    scale = x.detach().abs().flatten(1).amax(1)
    silent = scale <= 0  # an all-zero sample: exact zeros, no noise
    scale = torch.where(silent, torch.ones_like(scale), scale)
    y, clipped = one_pass(x, scale)
    if chip.bound_management and chip.out_bound:
        limit = min(MAX_BM_FACTOR, MAX_BM_RES / dac) if dac else MAX_BM_FACTOR
        reduction = 1.0
        todo = torch.nonzero(clipped).flatten()
        while todo.numel() and reduction <= limit:
            reduction *= 2.0
            again, still = one_pass(x[todo], scale[todo] * reduction)
            y = y.index_put((todo,), again)
            todo = todo[still]
    if bool(silent.any()):
        y = y.masked_fill(_per_sample(silent, y), 0.0)
    alpha = alpha.view(1, -1, *([1] * (y.dim() - 2))) if chip.columnwise else alpha
    y = y * alpha
    if module.bias is not None:
        y = y + module.bias.view(1, -1, *([1] * (y.dim() - 2)))
    return y


@contextmanager
def chip_layers(model: nn.Module, modifier_std: float, chip: ChipNoise,
                generator: torch.Generator | None = None, out_noise: float | None = None,
                weight_bits: int = 0) -> Iterator[nn.Module]:
    """While active, every Conv/Linear layer of `model` computes its forward as the chip does
    (module docstring); `out_noise` defaults to `chip.out_noise`. Raises ValueError for a
    convolution with other than zero padding."""
    layers = [m for m in model.modules() if isinstance(m, NOISY_LAYERS)]
    forward = functools.partial(_layer_forward, modifier_std=modifier_std,
                                out_noise=chip.out_noise if out_noise is None else out_noise,
                                chip=chip, generator=generator, weight_bits=weight_bits)
    for layer in layers:
        layer.forward = functools.partial(forward, layer)
    try:
        yield model
    finally:
        for layer in layers:
            del layer.forward


def chip_forward(model: nn.Module, x: torch.Tensor, modifier_std: float, chip: ChipNoise,
                 generator: torch.Generator | None = None, out_noise: float | None = None,
                 weight_bits: int = 0) -> torch.Tensor:
    """`model(x)` on the chip's forward (module docstring), noise drawn from `generator`
    (None: torch's global generator): logits of shape (N, classes) for a batch x of shape
    (N, C, H, W) (or whatever the model takes)."""
    with chip_layers(model, modifier_std, chip, generator, out_noise, weight_bits):
        return model(x)
