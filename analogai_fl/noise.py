"""Training-time weight noise: every Conv/Linear weight W becomes W + N(0, s^2) per forward.

s = c * sigma * max|W| per tensor, with max|W| treated as a constant, so the gradient passes
straight through to W. The noisy weights are passed to a functional call and never written
into the parameters, so the model stays a plain network that aihwkit converts layer by layer.
With quantisation-aware training the noise is added to the quantised weights, as on a chip
programmed with quantised conductances.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .quantization import quantize_per_channel

NOISY_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def noisy_weight_names(model: nn.Module) -> list[str]:
    """Parameter names of every Conv/Linear weight; biases and norm layers stay clean."""
    return [f"{name}.weight" if name else "weight"
            for name, module in model.named_modules() if isinstance(module, NOISY_LAYERS)]


def noisy_forward(model: nn.Module, x: torch.Tensor, sigma: float, c: float = 1.0,
                  generator: torch.Generator | None = None, in_eval: bool = False,
                  weight_bits: int = 0) -> torch.Tensor:
    """`model(x)` with fresh relative weight noise of level `sigma` (and, with `weight_bits`,
    on per-channel fake-quantised weights).

    In eval mode the pass is noise-free unless `in_eval` asks for noise (e.g. a client
    measuring its accuracy at its own sigma).
    """
    noisy = (sigma > 0 and c > 0) and (model.training or in_eval)
    if not noisy and not weight_bits:
        return model(x)
    params = dict(model.named_parameters())
    weights = {}
    for name in noisy_weight_names(model):
        weight = params[name]
        if weight_bits:
            weight = quantize_per_channel(weight, weight_bits)
        if noisy:
            scale = c * sigma * weight.detach().abs().max()
            weight = weight + scale * torch.randn(weight.shape, generator=generator,
                                                  device=weight.device, dtype=weight.dtype)
        weights[name] = weight
    return functional_call(model, weights, (x,))
