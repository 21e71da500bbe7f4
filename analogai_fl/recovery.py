"""Recovery options that compose with the multi-noise training: sharpness-aware minimisation
(SAM / adaptive SAM), FGSM / PGD adversarial training, activation noise and the input side of
quantisation-aware training (the weight side lives in `noise.noisy_forward`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .noise import NOISY_LAYERS
from .quantization import quantize_dynamic, quantize_per_channel

if TYPE_CHECKING:
    from .data import Splits
    from .settings import Experiment


@dataclass(frozen=True)
class Sam:
    """SAM: step with the gradient taken at w + e, e the worst direction within radius rho.
    Adaptive (ASAM): the neighbourhood is scaled elementwise by |w| + eta."""

    rho: float
    adaptive: bool = False
    eta: float = 0.01


@dataclass(frozen=True)
class Attack:
    """L-inf attack in pixel units; FGSM is one step without projection beyond epsilon."""

    name: str  # "FGSM" or "PGD"
    epsilon: float
    step_size: float
    steps: int
    random_start: bool
    weight: float  # loss = L(x) + weight * L(x_adv)


def sam_perturbation(params: Sequence[nn.Parameter], sam: Sam) -> list[torch.Tensor]:
    """e = rho * T^2 g / ||T g|| from the gradients in `.grad` (T = |w| + eta for ASAM,
    T = 1 for SAM)."""
    with torch.no_grad():
        scales = [p.abs() + sam.eta if sam.adaptive else torch.ones_like(p) for p in params]
        scaled = [t * p.grad for t, p in zip(scales, params, strict=True)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s)
                                                     for s in scaled])).clamp_min(1e-12)
        return [sam.rho * t * s / norm for t, s in zip(scales, scaled, strict=True)]


def sam_step(model: nn.Module, closure: Callable[[], torch.Tensor],
             optimizer: torch.optim.Optimizer, sam: Sam) -> None:
    """One SAM update: gradient at w, move to w + e, gradient there, step from w with it.
    `closure` computes the loss (fresh noise each call); `.grad` holds the first gradient
    when this is called."""
    params = [p for p in model.parameters() if p.grad is not None]
    perturbation = sam_perturbation(params, sam)
    with torch.no_grad():
        for p, e in zip(params, perturbation, strict=True):
            p.add_(e)
    optimizer.zero_grad(set_to_none=True)
    closure().backward()
    with torch.no_grad():
        for p, e in zip(params, perturbation, strict=True):
            p.sub_(e)
    optimizer.step()


def adversarial_example(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        y: torch.Tensor, attack: Attack, mean: torch.Tensor, std: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """x_adv (normalised like x) with |pixel(x_adv) - pixel(x)| <= epsilon and pixel values
    in [0, 1]: the attack works in pixel space, where the bound means something."""
    pixel = (x * std + mean).detach()
    delta = torch.zeros_like(pixel)
    if attack.random_start:
        delta = (torch.rand(pixel.shape, generator=generator, device=x.device, dtype=x.dtype)
                 * 2 - 1) * attack.epsilon
    delta = (pixel + delta).clamp(0, 1) - pixel
    for _ in range(attack.steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(forward((pixel + delta - mean) / std), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + attack.step_size * grad.sign()).clamp(-attack.epsilon,
                                                                   attack.epsilon)
            delta = (pixel + delta).clamp(0, 1) - pixel
    return ((pixel + delta - mean) / std).detach()


@contextmanager
def activation_effects(model: nn.Module, noise_sigma: float = 0.0, input_bits: int = 0,
                       generator: torch.Generator | None = None) -> Iterator[None]:
    """While active, every Conv/Linear layer sees its input fake-quantised to `input_bits`
    (QAT) and, in training mode only, multiplies its output by N(1, noise_sigma^2)."""

    def quantise_input(module, args):
        return (quantize_dynamic(args[0], input_bits), *args[1:])

    def noisy_output(module, args, output):
        if not module.training:
            return None
        factor = torch.randn(output.shape, generator=generator, device=output.device,
                             dtype=output.dtype)
        return output * (1 + noise_sigma * factor)

    handles = []
    for module in model.modules():
        if isinstance(module, NOISY_LAYERS):
            if input_bits:
                handles.append(module.register_forward_pre_hook(quantise_input))
            if noise_sigma:
                handles.append(module.register_forward_hook(noisy_output))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def quantize_weights_(model: nn.Module, bits: int) -> nn.Module:
    """Write the per-channel quantised weights into the model: what a QAT model is deployed
    (and evaluated) as."""
    for module in model.modules():
        if isinstance(module, NOISY_LAYERS):
            module.weight.copy_(quantize_per_channel(module.weight, bits))
    return model


def deployed(model: nn.Module, weight_bits: int) -> nn.Module:
    """The model as it goes onto the chip: with QAT (`weight_bits` > 0) its weights
    quantised per output channel, in place."""
    if weight_bits:
        quantize_weights_(model, weight_bits)
    return model


def deployed_model(exp: Experiment, splits: Splits, state: Mapping[str, torch.Tensor]
                   ) -> nn.Module:
    """The configured model for `splits`' shape holding `state`, as deployed onto the chip
    (quantised weights with QAT), in eval mode on the CPU. Raises RuntimeError (torch's
    `load_state_dict`) when `state` does not fit the model."""
    from .models import build_model

    model = build_model(exp.model, splits.in_channels, splits.num_classes, splits.image_size)
    model.load_state_dict(state)
    return deployed(model, exp.training.weight_bits).eval()
