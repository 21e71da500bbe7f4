"""The Gaussian weight clip and the weight statistics it acts on.

aihwkit's `WeightClipType.LAYER_GAUSSIAN` (`aihwkit.simulator.parameters.WeightClipParameter`)
clips each layer's weights to +-k standard deviations of that layer's weights. Its HWA recipe
(aihwkit's HWA tutorial; Rasch et al. 2023, Nature Communications 14:5282) applies it after
every optimiser step with k = 2.0-2.5. Here it is used in two places:

- during training, after every optimiser step, for any noise model (`training.clip_sigma`);
- once, before a trained model is programmed (`inference.clip_sigma`): a zero-training
  reference that shows how much of a recipe's robustness a clip alone gives.

Why it matters: on the evaluation tiles the read noise of every MVM is a fixed fraction of the
mapped max|W| (the protocols map max|W| to 1 per tensor), so a layer's noise-to-signal grows
with max|W| / rms(W). `layer_statistics` reports that ratio, which the clip caps near k.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .noise import NOISY_LAYERS


def _clipped_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv/Linear layers of `model` a clip acts on (a weight of one value has no std)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, NOISY_LAYERS) and m.weight.numel() > 1]


@torch.no_grad()
def gaussian_clip_(model: nn.Module, sigma: float) -> nn.Module:
    """Clip every Conv/Linear weight tensor of `model` in place to +-`sigma` * std(W), std
    the unbiased standard deviation over the whole tensor (aihwkit's LAYER_GAUSSIAN); biases
    and norm layers are left alone. Returns `model`. Clipping twice is not clipping once (the
    std shrinks): apply it once per step, or once before programming."""
    for _, module in _clipped_layers(model):
        bound = sigma * module.weight.std()
        module.weight.clamp_(-bound, bound)
    return model


def clipped_copy(model: nn.Module, sigma: float) -> nn.Module:
    """`model` itself when `sigma` is 0 (no clip), else a deep copy clipped once by
    `gaussian_clip_`: the post-hoc clip of `inference.clip_sigma`, which leaves the caller's
    model (and so the checkpoint it came from) unchanged."""
    return gaussian_clip_(copy.deepcopy(model), sigma) if sigma else model


@dataclass(frozen=True)
class LayerStatistics:
    """One Conv/Linear weight tensor: `peak_to_rms` = max|W| / rms(W) (dimensionless; the
    factor by which the read noise, drawn relative to the mapped max|W|, exceeds it relative
    to a typical weight), and `beyond` = the fraction (0..1) of its weights with |W| above
    `k` standard deviations."""

    name: str
    kind: str
    size: int
    peak_to_rms: float
    beyond: float
    k: float


@torch.no_grad()
def layer_statistics(model: nn.Module, k: float = 2.5) -> list[LayerStatistics]:
    """`LayerStatistics` of every Conv/Linear weight of `model`, in module order; `k` in
    standard deviations (2.5: the clip of aihwkit's HWA recipe)."""
    out = []
    for name, module in _clipped_layers(model):
        w = module.weight.detach().float()
        rms = w.pow(2).mean().sqrt()
        out.append(LayerStatistics(
            name=name, kind=type(module).__name__, size=w.numel(),
            peak_to_rms=float(w.abs().max() / rms) if rms > 0 else float("nan"),
            beyond=float((w.abs() > k * w.std()).float().mean()), k=k))
    return out
