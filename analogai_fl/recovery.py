"""Recovery options that compose with the multi-noise training: sharpness-aware minimisation
(SAM / adaptive SAM), FGSM / PGD adversarial training, activation noise and the input side of
quantisation-aware training (the weight side lives in `noise.noisy_forward` while training
and in `models.deployed_model` on the chip)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .noise import NOISY_LAYERS
from .quantization import quantize_dynamic


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
