"""One client's local training under its noise level, the MSNAT loss terms, and the recovery
options (SAM, adversarial training, QAT, activation noise) composed with them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .chip_noise import ChipNoise, chip_forward
from .clip import gaussian_clip_
from .noise import noisy_forward
from .recovery import Attack, Sam, activation_effects, adversarial_example, sam_step
from .schema import LR_SCHEDULES
from .streams import generator, seed_for


@dataclass(frozen=True)
class Feedback:
    """Feedback loops: extra noisy passes at sigma + offset_i, subtracted from the logits."""

    offsets: Sequence[float]
    weights: Sequence[float]
    beta: float
    temperature: float


@dataclass(frozen=True)
class LocalTraining:
    """One client's training setting (built from the config by `settings.Experiment`)."""

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
    act_sigma: float = 0.0  # activation noise (0 = off)
    weight_bits: int = 0  # QAT weight bits (0 = off)
    input_bits: int = 0  # QAT bits of every Conv/Linear input (0 = off)
    sam: Sam | None = None
    attack: Attack | None = None
    chip: ChipNoise | None = None  # training.noise_model=analog: the chip's forward
    clip_sigma: float = 0.0  # LAYER_GAUSSIAN clip after every step, any noise model (0 = off)
    sigma_levels: tuple[float, ...] = ()  # sigma drawn per batch from these (() = sigma)


def scheduled_lr(lr: float, schedule: str, server_round: int, rounds: int) -> float:
    """The lr of round `server_round` (1-based) of `rounds`: `lr` itself with schedule
    "constant"; with "cosine", lr * (1 + cos(pi * (r - 1) / R)) / 2, from `lr` in round 1
    towards 0 (torch's `CosineAnnealingLR` with `T_max` = R and `eta_min` = 0, stepped once per
    round, as aihwkit's HWA tutorial steps it once per epoch). A pure function of the round,
    so a resumed run trains each round at the lr an uninterrupted run would. ValueError for
    another schedule or a round outside 1..R."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r}: expected one of {LR_SCHEDULES}")
    if not 1 <= server_round <= rounds:
        raise ValueError(f"round {server_round} is outside 1..{rounds}")
    if schedule == "constant":
        return lr
    return lr * (1 + math.cos(math.pi * (server_round - 1) / rounds)) / 2


def noisy_pass(model: nn.Module, x: torch.Tensor, sigma: float, noise_c: float,
               generator: torch.Generator | None, weight_bits: int = 0,
               chip: ChipNoise | None = None, in_eval: bool = False) -> torch.Tensor:
    """One forward of `model` under the client's noise model at level `sigma`: weight noise
    (`noise.noisy_forward`, `chip` None) or the chip's forward (`chip_noise.chip_forward`,
    weight modifier std `noise_c * sigma`). In eval mode the pass is noise-free unless
    `in_eval` asks for noise."""
    if chip is None or not (model.training or in_eval):
        return noisy_forward(model, x, sigma, noise_c, generator, in_eval=in_eval,
                             weight_bits=weight_bits)
    return chip_forward(model, x, noise_c * sigma, chip, generator, weight_bits=weight_bits)


def feedback_logits(z0: torch.Tensor, extra: Sequence[torch.Tensor], weights: Sequence[float],
                    beta: float) -> torch.Tensor:
    """z = z0 - beta * sum_i w_i z_i."""
    return z0 - beta * sum(w * z for w, z in zip(weights, extra, strict=True))


def proximal_term(model: nn.Module, anchor: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """mu/2 * ||w - w_anchor||^2 over all trainable parameters (squared L2 norm)."""
    return mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor,
                                                             strict=True))


def msnat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting: LocalTraining,
               noise: torch.Generator | None = None,
               feedback_noise: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch and the main noisy logits z0 (for accuracy). The main pass draws its
    weight noise from `noise`, the feedback passes from `feedback_noise` (default: `noise`);
    None draws from torch's global generator."""
    def forward(sigma: float, draws: torch.Generator | None) -> torch.Tensor:
        return noisy_pass(model, x, sigma, setting.noise_c, draws, setting.weight_bits,
                          setting.chip)

    z0 = forward(setting.sigma, noise)
    fb = setting.feedback
    if fb is None:
        return F.cross_entropy(z0, y), z0
    extra = feedback_noise if feedback_noise is not None else noise
    z = feedback_logits(z0, [forward(setting.sigma + off, extra) for off in fb.offsets],
                        fb.weights, fb.beta)
    return F.cross_entropy(z / fb.temperature, y), z0


def passes_per_example(setting: LocalTraining) -> int:
    """Network passes (forward + backward) one training example costs per step: the
    training-cost unit ("sample-gradient evaluations") of the ablation."""
    per_loss = 1 + (len(setting.feedback.offsets) if setting.feedback else 0)
    attack = setting.attack
    losses = (2 if attack else 1) * (2 if setting.sam else 1)  # x (and x_adv); SAM twice
    return per_loss * losses + (attack.steps if attack else 0)


class TrainingDiverged(RuntimeError):
    """A non-finite training loss or weight: the message says where and what to try."""


def check_finite(loss: float, model: nn.Module, where: str, advice: str,
                 weights: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
    """TrainingDiverged if `loss` is not finite or a weight holds a NaN/inf: the parameters
    of `model`, or the named `weights` given (an analog model's, whose tile weights are no
    readable parameters; checked only when asked: after a step, or at the end of training)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"{where}: training loss is {loss}; {advice}")
    named = model.named_parameters() if weights is None else weights
    bad = [n for n, p in named if not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"{where}: non-finite weights in {', '.join(bad[:3])}"
                               f"{' ...' if len(bad) > 3 else ''}; {advice}")


class ShuffledBatches(Sampler[list[int]]):
    """Seeded shuffled batches of `batch_size` indices, with no batch of a single example
    when there are at least two and `batch_size` > 1: a last batch of one joins the batch
    before it (BatchNorm in
    training mode cannot normalise one value per channel). The shuffle is the one
    `DataLoader(shuffle=True, generator=generator)` draws."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator) -> None:
        if size < 1 or batch_size < 1:
            raise ValueError(f"need at least one example and a batch size >= 1, got {size} "
                             f"examples and batch size {batch_size}")
        self.size, self.batch_size, self.generator = size, batch_size, generator

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (rest > 0) - (rest == 1 and full > 0 and self.batch_size > 1)

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator).tolist()
        chunks = [order[i:i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        if self.batch_size > 1 and len(chunks) > 1 and len(chunks[-1]) == 1:
            last = chunks.pop()
            chunks[-1] += last
        yield from chunks  # lazily, as RandomSampler: the loader draws its base seed first


def training_loader(data: Dataset, batch_size: int, seed: int) -> DataLoader:
    """The loader of every training loop of the project (clients, HWA baseline): the same
    draws as `DataLoader(data, batch_size, shuffle=True, generator=seeded)` (which first
    takes its base seed from that generator), without a batch of a single example."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_sampler=ShuffledBatches(len(data), batch_size, generator),
                      generator=generator)


def make_optimizer(model: nn.Module, setting: LocalTraining) -> torch.optim.Optimizer:
    if setting.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=setting.momentum,
                               weight_decay=setting.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=setting.lr,
                            weight_decay=setting.weight_decay)


def train_local(model: nn.Module, data: Dataset, setting: LocalTraining, seed: int,
                device: torch.device | str = "cpu",
                pixel_stats: tuple[Sequence[float], Sequence[float]] | None = None,
                server_round: int = 0, noise_index: int = 0) -> dict[str, float]:
    """Train `model` in place; the proximal anchor is the model as received. Returns the
    mean training loss, the training accuracy (fraction) of the main noisy pass, the
    number of examples and the sample passes (`passes_per_example` x examples seen).

    Every random stream (batch order, weight noise, feedback passes, activation noise,
    attack starts, augmentation, the per-batch sigma of `sigma_levels`) is its own, derived
    from the run's `seed` and (`server_round`, `noise_index`) by `streams.seed_for`. The
    optimiser is fresh each call: clients keep no state between rounds, so a resumed run
    continues exactly and aggregation is not fighting stale momentum. `pixel_stats`
    (per-channel mean, std of the normalisation) lets attacks bound and clamp in pixel
    space. Raises TrainingDiverged.
    """
    device = torch.device(device)
    model.to(device).train()
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model, setting)
    key = (server_round, noise_index)
    noise_gen = generator(seed, "weight-noise", *key, device=device)
    feedback_gen = generator(seed, "feedback", *key, device=device)
    attack_gen = generator(seed, "attack", *key, device=device)
    loader = training_loader(data, setting.batch_size, seed_for(seed, "shuffle", *key))
    levels = setting.sigma_levels
    level_gen = generator(seed, "sigma-draw", *key) if levels else None
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (
        pixel_stats or ((0.0,), (1.0,))))
    attack = setting.attack
    total_loss, correct, seen = 0.0, 0, 0
    # Augmentation draws from torch's global CPU generator: seed it in a fork, so a
    # client's epoch repeats exactly and the caller's generator is left alone.
    with torch.random.fork_rng(devices=[]), activation_effects(
            model, setting.act_sigma, setting.input_bits,
            generator(seed, "activation-noise", *key, device=device)):
        torch.manual_seed(seed_for(seed, "augmentation", *key))
        for epoch in range(setting.epochs):
            for step, (x, y) in enumerate(loader):
                x, y = x.to(device), y.to(device)
                x_adv = None
                if attack:
                    model.eval()  # attack the noise-free model; BN statistics untouched
                    x_adv = adversarial_example(
                        lambda inp: noisy_forward(model, inp, 0.0,
                                                  weight_bits=setting.weight_bits),
                        x, y, attack, mean, std, attack_gen)
                    model.train()
                z0_seen: list[torch.Tensor] = []
                now = setting if not levels else dataclasses.replace(setting, sigma=levels[
                    int(torch.randint(len(levels), (1,), generator=level_gen))])

                def closure(x=x, y=y, x_adv=x_adv, z0_seen=z0_seen, now=now) -> torch.Tensor:
                    loss, z0 = msnat_loss(model, x, y, now, noise_gen, feedback_gen)
                    if x_adv is not None:
                        loss = loss + attack.weight * msnat_loss(
                            model, x_adv, y, now, noise_gen, feedback_gen)[0]
                    if setting.proximal_mu > 0:
                        loss = loss + proximal_term(model, anchor, setting.proximal_mu)
                    z0_seen.append(z0)
                    return loss

                optimizer.zero_grad(set_to_none=True)
                loss = closure()
                loss.backward()
                if setting.sam:
                    sam_step(model, closure, optimizer, setting.sam)
                else:
                    optimizer.step()
                if setting.clip_sigma:
                    gaussian_clip_(model, setting.clip_sigma)
                value = loss.item()
                if not math.isfinite(value):
                    check_finite(value, model, f"epoch {epoch + 1}, step {step + 1}",
                                 f"try a smaller training.lr (now {setting.lr:g})")
                total_loss += value * len(y)
                correct += (z0_seen[0].argmax(1) == y).sum().item()
                seen += len(y)
    check_finite(total_loss, model, f"after {setting.epochs} epoch(s)",
                 f"try a smaller training.lr (now {setting.lr:g})")
    return {"train_loss": total_loss / seen, "train_acc": correct / seen,
            "num-examples": len(data),
            "sample_passes": seen * passes_per_example(setting)}


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, batch_size: int = 512,
             device: torch.device | str = "cpu", sigma: float = 0.0, noise_c: float = 1.0,
             generator: torch.Generator | None = None, weight_bits: int = 0,
             chip: ChipNoise | None = None) -> float:
    """Top-1 accuracy (fraction) in eval mode; `sigma` > 0 measures it under the client's
    noise model (weight noise, or the chip's forward with `chip`; on `weight_bits`-quantised
    weights with QAT)."""
    model.to(device).eval()
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        logits = noisy_pass(model, x, sigma, noise_c, generator, weight_bits, chip,
                            in_eval=sigma > 0)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return correct / total
