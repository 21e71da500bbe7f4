"""Checks every command runs before any training or evaluation: those that need more than the
config's own keys (`config.resolve` checks each key's range, `settings.Experiment` the
cross-key rules).

    check_experiment(exp)        the model builds and runs at the data set's image shape;
                                 BatchNorm models get training batches of at least 2; every
                                 aihwkit RPU config (each evaluation protocol, the HWA
                                 baseline) builds
    check_client_shares(exp, d)  after the data is loaded: every client's training share can
                                 be trained on

`flwr run` (the ServerApp), `analogai-fl check`, `infer`, `ablate` and the benchmarks call
these, so one mistake gives the same one-line `ConfigError` everywhere, before a run folder
is created or a client is started.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError
from .data import Splits, data_shape
from .models import build_model
from .partitions import describe_partition
from .settings import Experiment


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def configured_model(exp: Experiment) -> nn.Module:
    """A fresh `model.name` for `data.name`'s shape at `data.image_size` (ConfigError, naming
    both keys, where the model cannot take that size); the caller's RNG is left alone."""
    return _model_at(exp.model, exp.data.name, exp.data.image_size)


def _model_at(name: str, data_name: str, size: int) -> nn.Module:
    channels, classes = data_shape(data_name)
    try:
        with torch.random.fork_rng(devices=[]):
            model = build_model(name, channels, classes, size)
            with torch.no_grad():
                model.eval()(torch.zeros(2, channels, size, size))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"keys 'model.name'={name!r} and 'data.image_size'={size} do "
                          f"not fit together: {str(err).splitlines()[0]}") from None
    return model


@dataclass(frozen=True)
class ModelFacts:
    """What the checks and the strategies need to know of the configured model."""

    batchnorm: bool
    buffer_names: frozenset[str]  # state_dict keys that are not trainable parameters


@functools.lru_cache(maxsize=8)
def _model_facts(name: str, data_name: str, size: int) -> ModelFacts:
    built = _model_at(name, data_name, size)
    return ModelFacts(has_batchnorm(built), frozenset(n for n, _ in built.named_buffers()))


def model_facts(exp: Experiment) -> ModelFacts:
    """`ModelFacts` of `configured_model(exp)`, which is built (and run once) only once per
    model, data set and image size in a process: the ServerApp's checks and its strategy
    share it."""
    return _model_facts(exp.model, exp.data.name, exp.data.image_size)


def min_examples_per_batch(exp: Experiment) -> int:
    """2 for a model with BatchNorm (training mode needs two values per channel), else 1."""
    return 2 if model_facts(exp).batchnorm else 1


def check_experiment(exp: Experiment) -> None:
    """Everything about an experiment that can be checked without its data."""
    from . import analog, hwa

    if model_facts(exp).batchnorm:
        for key, size in (("training.batch_size", exp.training.batch_size),
                          ("ablation.hwa.batch_size", exp.hwa.batch_size)):
            if size < 2:
                raise ConfigError(f"key '{key}' expects at least 2 with model '{exp.model}' "
                                  f"(BatchNorm in training mode needs two examples per "
                                  f"batch), got {size}")
    for protocol in exp.evaluation.protocols.values():
        analog.rpu_config(protocol)
    hwa.rpu_config(exp.hwa)
    evaluation_device(exp)


def evaluation_device(exp: Experiment) -> torch.device:
    """The torch device of the analog evaluation in this process (`inference.torch_device`
    resolved); ConfigError naming the key when it is not usable here (no CUDA device)."""
    from . import analog

    try:
        return analog.torch_device(exp.evaluation.torch_device, exp.evaluation.protocol.tile)
    except ValueError as err:
        raise ConfigError(f"key {err}") from None


def check_client_shares(exp: Experiment, splits: Splits) -> None:
    """ConfigError unless every client's share of the training split has enough examples
    to train on."""
    needed = min_examples_per_batch(exp)
    short = [s for s in describe_partition(splits, exp.data) if s["examples"] < needed]
    if short:
        sizes = ", ".join(f"client {s['client']}: {s['examples']}" for s in short)
        raise ConfigError(
            f"data.partition='{exp.data.partition}' leaves {sizes} training example(s); "
            f"model '{exp.model}' needs at least {needed} per client"
            f"{' (BatchNorm)' if needed > 1 else ''}. The training split has "
            f"{len(splits.train)} (data.max_train_examples={exp.data.max_train_examples}) "
            f"for {exp.clients} clients (training.client_num_in_total): use more data, fewer "
            "clients or data.partition='full'")
