"""One client's local training under its noise level, and the MSNAT loss terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .noise import noisy_forward


@dataclass(frozen=True)
class Feedback:
    """Feedback loops: extra noisy passes at sigma + offset_i, subtracted from the logits."""

    offsets: Sequence[float]
    weights: Sequence[float]
    beta: float
    temperature: float


@dataclass(frozen=True)
class LocalTraining:
    sigma: float
    noise_c: float
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    feedback: Feedback | None  # None: plain cross-entropy on the noisy pass
    proximal_mu: float

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], sigma: float, proximal_mu: float
                    ) -> LocalTraining:
        feedback = Feedback(cfg["training.feedback.offsets"], cfg["training.feedback.weights"],
                            cfg["training.feedback.beta"], cfg["training.feedback.temperature"]
                            ) if cfg["training.use_neg"] else None
        return cls(sigma=sigma, noise_c=cfg["training.noise_scale_c"],
                   epochs=cfg["training.local_epochs"], batch_size=cfg["training.batch_size"],
                   lr=cfg["training.lr"], optimizer=cfg["training.optimizer"],
                   momentum=cfg["training.momentum"], weight_decay=cfg["training.weight_decay"],
                   feedback=feedback, proximal_mu=proximal_mu)


def feedback_logits(z0: torch.Tensor, extra: Sequence[torch.Tensor], weights: Sequence[float],
                    beta: float) -> torch.Tensor:
    """z = z0 - beta * sum_i w_i z_i."""
    return z0 - beta * sum(w * z for w, z in zip(weights, extra, strict=True))


def proximal_term(model: nn.Module, anchor: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """mu/2 * ||w - w_anchor||^2 over all trainable parameters (squared L2 norm)."""
    return mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor,
                                                             strict=True))


def msnat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting: LocalTraining,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch and the main noisy logits z0 (for accuracy)."""
    z0 = noisy_forward(model, x, setting.sigma, setting.noise_c, generator)
    fb = setting.feedback
    if fb is None:
        return F.cross_entropy(z0, y), z0
    extra = [noisy_forward(model, x, setting.sigma + off, setting.noise_c, generator)
             for off in fb.offsets]
    z = feedback_logits(z0, extra, fb.weights, fb.beta)
    return F.cross_entropy(z / fb.temperature, y), z0


def make_optimizer(model: nn.Module, setting: LocalTraining) -> torch.optim.Optimizer:
    if setting.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=setting.momentum,
                               weight_decay=setting.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=setting.lr,
                            weight_decay=setting.weight_decay)


def train_local(model: nn.Module, data: Dataset, setting: LocalTraining, seed: int,
                device: torch.device | str = "cpu") -> dict[str, float]:
    """Train `model` in place; the proximal anchor is the model as received.

    The optimiser is fresh each call: clients keep no state between rounds, so a resumed
    run continues exactly and aggregation is not fighting stale momentum.
    """
    device = torch.device(device)
    model.to(device).train()
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model, setting)
    noise_gen = torch.Generator(device=device).manual_seed(seed)
    loader = DataLoader(data, batch_size=setting.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(setting.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss, z0 = msnat_loss(model, x, y, setting, noise_gen)
            if setting.proximal_mu > 0:
                loss = loss + proximal_term(model, anchor, setting.proximal_mu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(y)
            correct += (z0.argmax(1) == y).sum().item()
            seen += len(y)
    return {"train_loss": total_loss / seen, "train_acc": correct / seen,
            "num-examples": len(data)}


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, batch_size: int = 512,
             device: torch.device | str = "cpu", sigma: float = 0.0, noise_c: float = 1.0,
             generator: torch.Generator | None = None) -> float:
    """Top-1 accuracy in eval mode; `sigma` > 0 measures it under weight noise."""
    model.to(device).eval()
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        logits = noisy_forward(model, x, sigma, noise_c, generator, in_eval=True)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return correct / total
