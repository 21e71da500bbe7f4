"""aihwkit's hardware-aware training (HWA): the industry-baseline arm of the ablation.

The project's plain model is converted to analog with an `InferenceRPUConfig` that injects
noise while training (Gaussian weight modifier redrawn every batch, output noise, DAC/ADC
quantisation, weights scaled to the tile's range) and trained with aihwkit's `AnalogSGD`.
The defaults are the recipe of aihwkit's HWA tutorial (`notebooks/tutorial/
hw_aware_training.ipynb`) and of Rasch et al. 2023 (Nature Communications 14:5282): momentum
0.9, weight decay 5e-4, a cosine lr schedule over the epochs, `LAYERWISE_SYMMETRIC` weight
remapping and a `LAYER_GAUSSIAN` clip at 2.5 stds after every step (remapping lets the
mapping scale follow the weights; without it a fixed clip caps every layer's |W| at its size
when converted), best started from a pretrained digital model (`init`; `ablation.pretrained`).
Of `aihwkit.simulator.presets.StandardHWATrainingPreset` it takes the output noise 0.04 and
the 8-bit converters (254 steps), but not its learned input ranges and output scales (a plain
digital model cannot carry them, and the project's evaluator does not use them), its PCM
read noise while training, or its column-wise scaling (the evaluation protocols scale per
tensor). Every number is a key (`ablation.hwa.*`).

Tiles (`ablation.hwa.tile`): the default is aihwkit's C++ tile (`InferenceRPUConfig`), the
tile of its HWA examples. Model init and batch order are seeded, but the C++ tile's noise
generator cannot be seeded from Python, so two runs differ slightly. The pure-torch tile
(`TorchInferenceRPUConfig`) draws all noise from torch's RNG (runs repeat exactly) and runs on
a GPU. The two do not train alike: with every noise source off, the torch tile follows
digital SGD to 1e-7, while the C++ tile's updates depart from it once its iterative bound
management is active (layer outputs beyond `forward.out_bound`); the C++ tile then trains
more slowly (final train loss ~0.4 vs ~0.01 on LeNet/digits, 20 epochs); its models held
0.6 points more accuracy on average, clean and on PCM (3 seeds, within seed noise).

The trained model is brought back to a plain digital model of exactly `build_model`'s
structure, BEFORE any program/drift call on the analog tiles (converting after a PCM
evaluation loop gave chance accuracy), so that `analog.drift_accuracy` evaluates every arm of
the ablation with the same protocol. The weights are read from the tiles with the digital
weight scaling applied (`get_weights`) into a fresh `build_model`, rather than with
`convert_to_digital`, so that the result is exactly the project's class and structure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from aihwkit.optim import AnalogSGD
from aihwkit.optim.context import AnalogContext
from aihwkit.simulator.configs import (
    InferenceRPUConfig,
    TorchInferenceRPUConfig,
    WeightClipType,
    WeightModifierType,
    WeightRemapType,
)
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from . import safe_load
from .analog import convert_every_layer, converter_resolution, cuda_indices
from .data import Splits
from .errors import ConfigError
from .models import merge_grouped_convs, model_for, split_grouped_convs
from .outputs import atomic_write, in_analog_tile
from .settings_ablation import HWASettings
from .streams import seed_for
from .training import accuracy, check_finite, training_loader

# `ablation.hwa.remap` and `.clip_type` -> aihwkit's types (applied by the tile's
# post_update_step after every optimiser step: clip first, then remap)
REMAP = {"layerwise": WeightRemapType.LAYERWISE_SYMMETRIC,
         "channelwise": WeightRemapType.CHANNELWISE_SYMMETRIC, "none": WeightRemapType.NONE}
CLIP = {"gaussian": WeightClipType.LAYER_GAUSSIAN, "fixed": WeightClipType.FIXED_VALUE,
        "none": WeightClipType.NONE}


def rpu_config(hwa: HWASettings) -> InferenceRPUConfig | TorchInferenceRPUConfig:
    """The noisy training tile of the HWA recipe, every setting from `hwa`."""
    tile = hwa.tile
    rpu = InferenceRPUConfig() if tile == "cpp" else TorchInferenceRPUConfig()
    rpu.mapping.weight_scaling_omega = hwa.weight_scaling_omega
    rpu.mapping.weight_scaling_columnwise = hwa.weight_scaling_columnwise
    rpu.mapping.digital_bias = True
    rpu.mapping.learn_out_scaling = False
    rpu.forward.out_noise = hwa.out_noise
    rpu.forward.inp_res = converter_resolution(hwa.dac_bits)
    rpu.forward.out_res = converter_resolution(hwa.adc_bits)
    std = hwa.modifier_std
    rpu.modifier.type = WeightModifierType.ADD_NORMAL if std > 0 else WeightModifierType.NONE
    rpu.modifier.std_dev = std
    rpu.modifier.rel_to_actual_wmax = True
    rpu.modifier.enable_during_test = False
    rpu.remap.type = REMAP[hwa.remap]
    rpu.clip.type = CLIP[hwa.clip_type]
    # aihwkit's weight clipper also caps LAYER_GAUSSIAN at a positive fixed_value (measured:
    # with fixed_value 1.0 and remap the weights never outgrew their initial max), so the
    # fixed value is set only for FIXED_VALUE (negative: none, aihwkit's convention)
    rpu.clip.fixed_value = hwa.clip if hwa.clip_type == "fixed" else -1.0
    rpu.clip.sigma = hwa.clip_sigma
    return rpu


def to_analog_trainable(model: nn.Module, hwa: HWASettings,
                        device: torch.device | str = "cpu") -> nn.Module:
    """Analog copy of `model` with the HWA training tile; raises if a layer stayed digital."""
    if hwa.tile == "cpp" and torch.device(device).type != "cpu":
        raise ValueError(f"key 'ablation.hwa.tile' = 'cpp' runs on the CPU only (the registry's "
                         f"aihwkit wheel has no CUDA tiles); use 'torch' on {device}")
    return convert_every_layer(model, rpu_config(hwa)).to(device)


@torch.no_grad()
def to_digital(analog: nn.Module, template: nn.Module) -> nn.Module:
    """A plain copy of `template`'s class and structure holding `analog`'s logical weights.

    Reads every analog layer's weights with the digital weight scaling applied (the weights
    the layer computes with) and its digital bias; all other parameters and buffers
    (BatchNorm, ...) are copied by name. Call it before any program/drift on `analog`.
    """
    digital = template  # filled in place; the caller passes a fresh build_model
    target = digital.state_dict()
    filled: set[str] = set()
    for name, layer in analog.named_analog_layers():
        weight, bias = layer.get_weights(apply_weight_scaling=True)
        prefix = f"{name}." if name else ""
        w_key = f"{prefix}weight"
        target[w_key].copy_(weight.reshape(target[w_key].shape))
        filled.add(w_key)
        if bias is not None:
            target[f"{prefix}bias"].copy_(bias.reshape(target[f"{prefix}bias"].shape))
            filled.add(f"{prefix}bias")
    for key, value in analog.state_dict().items():
        if key in target and key not in filled:
            target[key].copy_(value)
            filled.add(key)
    missing = set(target) - filled
    if missing:
        raise RuntimeError(f"no value for {sorted(missing)} in the analog model")
    digital.load_state_dict(target)
    return digital.cpu().eval()


def logical_weights(analog: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every weight of an analog model as it computes: each analog layer's tile weights
    (`get_weights`, digital weight scaling applied) and bias, and the digital parameters
    (BatchNorm, ...). The analog layers' own parameters are skipped (their weights are the
    tile's; aihwkit 1.2.0's `AnalogContext` placeholders refuse to be read)."""
    for name, layer in analog.named_analog_layers():
        weight, bias = layer.get_weights(apply_weight_scaling=True)
        yield f"{name}.weight" if name else "weight", weight
        if bias is not None:
            yield f"{name}.bias" if name else "bias", bias
    for name, parameter in analog.named_parameters():
        if not isinstance(parameter, AnalogContext) and not in_analog_tile(name):
            yield name, parameter


def train_analog(model_name: str, hwa: HWASettings, data: Splits, epochs: int, seed: int,
                 device: torch.device | str = "cpu",
                 on_epoch: Callable[[int, nn.Module], None] | None = None,
                 init: Mapping[str, torch.Tensor] | None = None,
                 checkpoint: Path | None = None, validate: bool = False
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """HWA training of a fresh `build_model` (init, batch order and the torch tile's noise
    from `streams.seed_for(seed, ...)`: the same initial model as the flwr arms of the same
    seed), or of the weights `init` (a state_dict of that model: fine-tuning a pretrained
    model); returns the ANALOG model (train mode left on) and the training statistics.
    `on_epoch(epoch, analog)` is called after each epoch (1-based; e.g. a validation
    curve), outside the seeded RNG. With `validate`, the analog model's accuracy on the
    validation split (eval mode: no weight modifier; output noise and converters on) is
    measured after each epoch: stats["val_curve"], fractions.

    With `checkpoint` (a file path), the state after every epoch is written there
    atomically (tile weights, optimiser, schedule, the loader's and torch's RNG, the
    curve), and a run that finds the file continues after its epoch. On the torch tile
    without remapping that gives exactly the uninterrupted run. With remapping it continues
    from the same state but not bit for bit: aihwkit 1.2's torch-tile remap replaces the
    tile's weight tensor and leaves the analog context on the old one, which loading a
    state_dict re-binds, and the gradients after that differ slightly (measured: weights
    within 1e-3 after two more epochs, tests/test_hwa.py). The C++ tile's own noise
    generator cannot be saved, so there it continues with other draws (as two C++ runs
    differ anyway). ValueError for fewer than one epoch, or a checkpoint of more epochs than
    `epochs` or that cannot be read (naming the file)."""
    if epochs < 1:
        raise ValueError(f"HWA training needs at least one epoch, got {epochs}")
    start, cpu_start = time.perf_counter(), time.process_time()
    device = torch.device(device)
    cuda = cuda_indices(device)
    with torch.random.fork_rng(devices=cuda):  # seeded draws, caller's RNG untouched
        torch.manual_seed(seed_for(seed, "init"))  # the flwr arms' initial model too
        model = model_for(model_name, data.shape)
        if init is not None:
            model.load_state_dict(init)
        analog = to_analog_trainable(model, hwa, device)
        saved = _read(checkpoint, epochs) if checkpoint is not None and checkpoint.exists() \
            else None
        if saved is not None:  # before the optimiser: loading replaces the tiles' parameters
            analog.load_state_dict(saved["model"])
        torch.manual_seed(seed_for(seed, "hwa-noise"))  # the torch tile's training noise
        optimizer = AnalogSGD(analog.parameters(), lr=hwa.lr, momentum=hwa.momentum,
                              weight_decay=hwa.weight_decay)
        optimizer.regroup_param_groups(analog)
        schedule = CosineAnnealingLR(optimizer, T_max=epochs) if hwa.schedule == "cosine" \
            else None
        loader = training_loader(data.train, hwa.batch_size, seed_for(seed, "shuffle"))
        done, curve = 0, []
        if saved is not None:
            done, curve = saved["epoch"], list(saved["val_curve"])
            optimizer.load_state_dict(saved["optimizer"])
            if schedule is not None:
                schedule.load_state_dict(saved["schedule"])
            loader.generator.set_state(saved["loader_rng"])
            torch.set_rng_state(saved["torch_rng"])
        analog.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for epoch in range(done, epochs):
            loss_sum, correct, seen = 0.0, 0, 0  # statistics of the last epoch
            for step, (x, y) in enumerate(loader):
                x, y = x.to(device), y.to(device)
                logits = analog(x)  # noisy: weight modifier, output noise, DAC/ADC
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()  # also clips the tile weights
                value = loss.item()
                if not math.isfinite(value):
                    check_finite(value, analog, f"HWA baseline, epoch {epoch + 1}, step "
                                 f"{step + 1}", f"try a smaller ablation.hwa.lr (now "
                                 f"{hwa.lr:g})", logical_weights(analog))
                loss_sum += value * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            if schedule is not None:
                schedule.step()
            if validate:
                with torch.random.fork_rng(devices=cuda):  # the training draws stay the same
                    curve.append(accuracy(analog, data.val, device=device))
            if checkpoint is not None:
                _save(checkpoint, epoch + 1, curve, analog, optimizer, schedule, loader,
                      {"loss_sum": loss_sum, "correct": correct, "seen": seen})
            if on_epoch is not None:
                with torch.random.fork_rng(devices=cuda):
                    on_epoch(epoch + 1, analog)
            analog.train()
        if saved is not None and done == epochs:  # finished before: its last epoch's figures
            last = saved["last_epoch"]
            loss_sum, correct, seen = last["loss_sum"], last["correct"], last["seen"]
    check_finite(loss_sum, analog, f"HWA baseline after {epochs} epoch(s)",
                 f"try a smaller ablation.hwa.lr (now {hwa.lr:g})", logical_weights(analog))
    examples = len(data.train)
    stats = {
        "method": "hwa",
        "tile": hwa.tile,
        "epochs": epochs,
        "resumed_after_epoch": done,
        "train_examples": examples,
        # one noisy forward + one backward per example per epoch, no extra passes
        "sample_gradients": examples * epochs,
        "forward_passes": examples * epochs,
        # last epoch, measured on the noisy training-mode passes
        "train_loss": loss_sum / seen,
        "train_acc": correct / seen,
        "val_curve": curve,
        "wall_s": time.perf_counter() - start,  # this process's part, when resumed
        "cpu_s": time.process_time() - cpu_start,  # this process's CPU time, all threads
    }
    return analog, stats


def _save(path: Path, epoch: int, curve: list[float], analog: nn.Module,
          optimizer: torch.optim.Optimizer, schedule: Any, loader: Any,
          last_epoch: Mapping[str, float]) -> None:
    """One epoch's training state to `path`, written atomically (see `train_analog`)."""
    state = {"epoch": epoch, "val_curve": list(curve), "model": analog.state_dict(),
             "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict() if schedule is not None else None,
             "loader_rng": loader.generator.get_state(), "torch_rng": torch.get_rng_state(),
             "last_epoch": dict(last_epoch)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _read(path: Path, epochs: int) -> dict[str, Any]:
    """The state `_save` wrote to `path` (`safe_load.load`); ConfigError naming the file
    when it cannot be read, is refused (`safe_load.Refused`: it names a global outside an
    analog state_dict's classes) or holds more epochs than `epochs`."""
    try:
        state = safe_load.load(path)
    except safe_load.Unreadable as error:
        raise ConfigError(f"HWA checkpoint {path}: not readable ({error.first_line}); delete "
                          "it to train this arm again from its start") from None
    try:
        done = int(state["epoch"])
    except (TypeError, KeyError, ValueError) as error:
        raise ConfigError(f"HWA checkpoint {path}: not an epoch checkpoint ({error!r}); "
                          "delete it to train this arm again from its start") from None
    if done > epochs:
        raise ConfigError(f"HWA checkpoint {path}: {done} epochs done, more than the "
                          f"{epochs} this arm trains; delete it to train this arm again from "
                          "its start")
    return state


def train_hwa(model_name: str, hwa: HWASettings, data: Splits, epochs: int, seed: int,
              device: torch.device | str = "cpu",
              init: Mapping[str, torch.Tensor] | None = None,
              checkpoint: Path | None = None, validate: bool = False
              ) -> tuple[nn.Module, dict[str, Any]]:
    """aihwkit HWA training (`train_analog`, with its checkpoint and validation curve);
    returns a plain digital `build_model` with the trained weights (on CPU, eval mode) and
    the statistics (wall_s includes the conversion back)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    analog, stats = train_analog(model_name, hwa, data, epochs, seed, device, init=init,
                                 checkpoint=checkpoint, validate=validate)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        template = model_for(model_name, data.shape)
    digital = merge_grouped_convs(to_digital(analog, split_grouped_convs(template))).eval()
    stats["wall_s"] = time.perf_counter() - start
    stats["cpu_s"] = time.process_time() - cpu_start
    return digital, stats
