"""Fake quantisation with a straight-through estimator (quantisation-aware training).

The forward pass sees quantised values; the backward pass treats rounding as the identity,
so the full-precision weights keep learning. Symmetric, zero-centred grids, because analog
conductance pairs encode signed weights symmetrically.
"""

from __future__ import annotations

import torch


def _straight_through(x: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    return x + (quantised - x).detach()


def quantize_per_channel(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Each output channel (dim 0) on its own grid of 2^(b-1)-1 steps either side of 0,
    scaled by that channel's max|W|: at most 2^b - 1 distinct values per channel."""
    levels = 2 ** (bits - 1) - 1
    scale = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-12) / levels
    scale = scale.view(-1, *([1] * (weight.dim() - 1)))
    return _straight_through(weight, torch.round(weight / scale).clamp(-levels, levels) * scale)


def quantize_dynamic(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor symmetric quantisation on the batch's own max|x| (like a DAC whose range
    follows its input, aihwkit's abs-max noise management)."""
    levels = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax().clamp_min(1e-12) / levels
    return _straight_through(x, torch.round(x / scale).clamp(-levels, levels) * scale)
