"""aihwkit tile extensions: what the project adds beneath aihwkit's own seam
(`simulator/tiles`), so that the torch tile simulates what the C++ tile simulates and
convolutions gather their input patches faster on the CPU.

    CppMatchingTorchMVM   aihwkit's torch MVM with the C++ tile's per-vector semantics
    TorchTileRPUConfig    TorchInferenceRPUConfig whose tiles run it (`inference.tile=torch`)
    PatchConv2d           AnalogConv2d with the same patches, gathered in one copy
    WeightSetLinear       AnalogLinear that can run G weight sets at once
    weight_sets           G programmed/drifted states of a model in one forward pass
    CONVERSION_MAP        the layer map `analog.to_analog` converts with

Tests compare every extension with the aihwkit code it stands in for (tests/test_tiles.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from numbers import Number
from typing import Any

import torch
from aihwkit.nn import AnalogConv1d, AnalogConv2d, AnalogConv3d, AnalogLinear
from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig, WeightNoiseType
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
        sets = weight.ndim == 3 and is_test  # G weight sets (`weight_sets`), not a modifier
        if weight.ndim != 2 and not sets:  # per-sample weights (training-time modifier)
            return super().matmul(weight, input_, io_pars, trans, is_test, **fwd_pars)
        if io_pars.is_perfect or io_pars.mv_type == AnalogMVType.IDEAL:
            return _product(input_, weight.transpose(-1, -2) if trans else weight)
        if input_.dim() == 1:
            return cls.matmul(weight, input_[None], io_pars, trans, is_test, **fwd_pars)[0]
        io = io_pars
        weight = weight.transpose(-1, -2) if trans else weight  # [G x] out_size x in_size
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
        if sets:  # a shared input (leading dim 1) is repeated for each of the G sets
            x, nm = x.expand(*passed.shape, x.shape[-1]), nm.expand(*passed.shape, 1)
        while todo[0].numel() > 0:
            if reduction > io.max_bm_factor or (inp_res > 0
                                                and reduction > io.max_bm_res / inp_res):
                break  # the C++ tile accepts the last (clipped) result
            reduction *= 2.0
            scale = 1.0 / (nm[todo] * reduction)
            again, ok = cls._set_passes(weight, todo[0], x[todo], scale, io, **fwd_pars) \
                if sets else cls._one_pass(weight, x[todo], scale, io, **fwd_pars)
            again = again * (io.out_scale / scale)
            out = out.index_put(todo, again) if differentiable else out.index_put_(todo, again)
            todo = tuple(index[~ok] for index in todo)
        return out

    @classmethod
    def _set_passes(cls, weight: torch.Tensor, set_index: torch.Tensor, x: torch.Tensor,
                    scale: torch.Tensor, io: IOParameters, **fwd_pars: Any
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_one_pass` of vectors `x` (V x in_size), vector v through weight set
        `set_index[v]` of the G x out_size x in_size `weight`."""
        out = x.new_empty(len(x), weight.shape[-2])
        passed = torch.empty(len(x), dtype=torch.bool, device=x.device)
        for g in set_index.unique().tolist():
            chosen = set_index == g
            out[chosen], passed[chosen] = cls._one_pass(weight[g], x[chosen], scale[chosen],
                                                        io, **fwd_pars)
        return out, passed

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
        y = _product(prepared, weight)
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


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for an out_size x in_size `weight` (x: ... x in_size); for G weight sets
    (G x out_size x in_size), x is 1 x ... or G x ... and the result G x ... x out_size."""
    if weight.ndim == 2:
        return x @ weight.T
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # one matrix product per set
    return torch.matmul(flat, weight.transpose(-1, -2)).view(
        weight.shape[0], *x.shape[1:-1], weight.shape[-2])


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


# --- Weight sets: G programmed and drifted states of one model in one forward pass -----------
#
# A PCM evaluation measures the same model in G = repeats x drift times states. Installed
# with `weight_sets`, every tile holds its G weight matrices (G x out x in) and G
# drift-compensation factors; a batch of N images then runs once: the first analog layer
# prepares its N inputs once (patches, noise management, DAC) for all G sets, and every
# later tensor carries G x N images. The simulation per set is unchanged (the same MVM,
# noise, converters and bound management per input vector); only the order of the per-read
# noise draws differs from G separate passes.


@dataclasses.dataclass
class WeightSets:
    """The installed sets: `count` (G) and `batch` (N, the images of the current forward)."""

    count: int
    batch: int = 0

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """A layer input of N (shared) or G x N images as 1 x N x ... or G x N x ..."""
        if x.shape[0] == self.batch:
            return x.unsqueeze(0)
        return x.unflatten(0, (self.count, self.batch))


class PatchConv2d(AnalogConv2d):
    """aihwkit's AnalogConv2d with the same input patches, gathered faster on CPU, and
    able to run G weight sets (`weight_sets`).

    On CPU aihwkit feeds a convolution's tiles `F.unfold(x).transpose(-1, -2)`; `F.unfold`
    is slow for few channels and the transposed result is copied again before the MVM.
    Strided views give the same (N, L, C*kh*kw) patches, in the same order, in one copy.
    """

    weight_sets: WeightSets | None = None

    def forward(self, x_input: torch.Tensor) -> torch.Tensor:
        sets = self.weight_sets
        indexed = self.use_indexed if self.use_indexed is not None else x_input.is_cuda
        if sets is None and (indexed or x_input.dim() != 4 or tuple(self.dilation) != (1, 1)):
            return super().forward(x_input)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        x = F.pad(x_input, (pw, pw, ph, ph)) if ph or pw else x_input
        n, c = x.shape[:2]
        patches = x.unfold(2, kh, sh).unfold(3, kw, sw)  # N, C, H', W', kh, kw (views)
        h_out, w_out = patches.shape[2:4]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, h_out * w_out, c * kh * kw)
        if sets is None:
            out = self.analog_module(patches)
        else:
            out = self.analog_module(sets.view(patches)).flatten(0, 1)
        return out.transpose(-1, -2).reshape(len(out), self.out_channels, h_out, w_out)


class WeightSetLinear(AnalogLinear):
    """aihwkit's AnalogLinear, able to run G weight sets (`weight_sets`)."""

    weight_sets: WeightSets | None = None

    def forward(self, x_input: torch.Tensor) -> torch.Tensor:
        sets = self.weight_sets
        if sets is None:
            return super().forward(x_input)
        return self.analog_module(sets.view(x_input)).flatten(0, 1)


CONVERSION_MAP = {nn.Linear: WeightSetLinear, nn.Conv1d: AnalogConv1d, nn.Conv2d: PatchConv2d,
                  nn.Conv3d: AnalogConv3d}

TileState = list[tuple[torch.Tensor, torch.Tensor]]


def _tiles(analog: nn.Module) -> Iterator[tuple[nn.Module, Any]]:
    for layer in analog.analog_layers():
        for tile in layer.analog_tiles():
            yield layer, tile


def supports_weight_sets(analog: nn.Module) -> bool:
    """Whether every analog layer of `analog` can run weight sets: PatchConv2d without
    dilation or WeightSetLinear, on the torch tile (`CppMatchingTorchTile`)."""
    return all((isinstance(layer, WeightSetLinear) or (
        isinstance(layer, PatchConv2d) and tuple(layer.dilation) == (1, 1)))
        and isinstance(tile.tile, CppMatchingTorchTile) for layer, tile in _tiles(analog))


@torch.no_grad()
def tile_state(analog: nn.Module) -> TileState:
    """A copy of each tile's present weights (as programmed and drifted, out x in) and
    drift-compensation factor alpha, for `weight_sets`."""
    return [(tile.tile.weight.detach().clone(), tile.alpha.detach().clone())
            for _, tile in _tiles(analog)]


@contextlib.contextmanager
def weight_sets(analog: nn.Module, states: Sequence[TileState]) -> Iterator[WeightSets]:
    """Install the G `states` (`tile_state`) in `analog`'s tiles for one forward pass of
    all of them: inside, set `.batch` to the number of images N before each forward; the
    output holds set g's N results at rows g*N .. g*N + N - 1. The tiles' own weights and
    alpha are restored on exit. Raises ValueError if `analog` cannot (`supports_weight_sets`).
    """
    if not supports_weight_sets(analog):
        raise ValueError("weight sets need the torch tile (inference.tile=torch) and "
                         "Conv2d (no dilation) / Linear layers only")
    sets = WeightSets(len(states))
    saved = []
    try:
        for index, (layer, tile) in enumerate(_tiles(analog)):
            saved.append((layer, tile, tile.tile.weight.data, tile.alpha))
            dims = 4 if isinstance(layer, PatchConv2d) else 3  # G x N [x L] x out
            tile.tile.weight.data = torch.stack([state[index][0] for state in states])
            tile.alpha = torch.stack([state[index][1].reshape(-1) for state in states]).view(
                sets.count, *[1] * (dims - 2), -1)
            layer.weight_sets = sets
        yield sets
    finally:
        for layer, tile, weight, alpha in saved:
            tile.tile.weight.data, tile.alpha = weight, alpha
            layer.weight_sets = None
