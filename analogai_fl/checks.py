"""Checks every command runs before any training or evaluation: those that need more than the
config's own keys (`config.resolve` checks each key's range and the cross-key rules).

    check_experiment(cfg)        the model builds and runs at the data set's image shape;
                                 BatchNorm models get training batches of at least 2; every
                                 aihwkit RPU config (each evaluation protocol, the HWA
                                 baseline) builds
    check_client_shares(cfg, d)  after the data is loaded: every client's training share can
                                 be trained on

`flwr run` (the ServerApp), `analogai-fl check`, `infer`, `ablate` and the benchmarks call
these, so one mistake gives the same one-line `ConfigError` everywhere, before a run folder
is created or a client is started.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .config import PROTOCOLS, ConfigError, protocol


def data_shape(name: str) -> tuple[int, int]:
    """(channels, classes) of data set `name`, known without reading it."""
    from .data import TORCHVISION_SETS

    if name == "digits":
        return 1, 10
    spec = TORCHVISION_SETS[name]
    return spec.channels, spec.num_classes


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def min_examples_per_batch(cfg: Mapping[str, Any]) -> int:
    """2 for a model with BatchNorm (training mode needs two values per channel), else 1."""
    return 2 if has_batchnorm(configured_model(cfg)) else 1


def configured_model(cfg: Mapping[str, Any]) -> nn.Module:
    """A fresh `model.name` for `data.name`'s shape at `data.image_size` (ConfigError, naming
    both keys, where the model cannot take that size)."""
    from .models import build_model

    channels, classes = data_shape(cfg["data.name"])
    name, size = cfg["model.name"], cfg["data.image_size"]
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
            model = build_model(name, channels, classes, size)
            with torch.no_grad():
                model.eval()(torch.zeros(2, channels, size, size))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"keys 'model.name'={name!r} and 'data.image_size'={size} do not fit "
                          f"together: {str(err).splitlines()[0]}") from None
    return model


def check_experiment(cfg: Mapping[str, Any]) -> None:
    """Everything about a configuration that can be checked without its data."""
    from . import analog, hwa

    if has_batchnorm(configured_model(cfg)):
        for key in ("training.batch_size", "ablation.hwa.batch_size"):
            if cfg[key] < 2:
                raise ConfigError(f"key '{key}' expects at least 2 with model "
                                  f"'{cfg['model.name']}' (BatchNorm in training mode needs "
                                  f"two examples per batch), got {cfg[key]}")
    for name in PROTOCOLS:
        analog.rpu_config(protocol(cfg | {"inference.protocol": name}))
    hwa.rpu_config(cfg)


def check_client_shares(cfg: Mapping[str, Any], data) -> None:
    """ConfigError unless every client's share of the training split has enough examples
    to train on (`data` is `data.load_data`'s `Splits`)."""
    from .data import describe_partition

    needed = min_examples_per_batch(cfg)
    shares = describe_partition(data, cfg)
    short = [s for s in shares if s["examples"] < needed]
    if short:
        sizes = ", ".join(f"client {s['client']}: {s['examples']}" for s in short)
        raise ConfigError(
            f"data.partition='{cfg['data.partition']}' leaves {sizes} training example(s); "
            f"model '{cfg['model.name']}' needs at least {needed} per client"
            f"{' (BatchNorm)' if needed > 1 else ''}. The training split has "
            f"{len(data.train)} (data.max_train_examples={cfg['data.max_train_examples']}) "
            f"for {cfg['training.client_num_in_total']} clients "
            "(training.client_num_in_total): use more data, fewer clients or "
            "data.partition='full'")
