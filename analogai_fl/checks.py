"""Checks every command runs before any training or evaluation: those that need more than the
config's own keys (`config.resolve` checks each key's range, `settings.load` the cross-key
rules), and `prepare`, the one sequence every entry point starts with.

    prepare(run_config)          settings.load, check_experiment, the data (downloaded where
                                 `data.download` allows), check_user_model, and for a run
                                 check_client_shares
    check_output_place(exp)      what writes a run (the ServerApp, `check`): the output place
                                 is made and written to
    check_experiment(exp)        the model builds and runs at the data set's image shape;
                                 BatchNorm models get training batches of at least 2; every
                                 aihwkit RPU config (each evaluation protocol, the HWA
                                 baseline) builds
    check_user_model(exp, d)     a network of your own converts whole to aihwkit and runs
                                 on one batch of the data
    check_client_shares(exp, d)  after the data is loaded: every client's training share can
                                 be trained on

`flwr run` (the ServerApp), `analogai-fl check`, `infer`, `ablate` and the benchmarks call
`prepare` (or these checks), so one mistake gives the same one-line `ConfigError`
everywhere, before a run folder is created or a client is started.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import models, tensorboard_log, user_model
from .data import DataNotFoundError, Splits, data_shape, load_data
from .errors import ConfigError
from .models import ModelFacts
from .outputs import probe_writable, read_model_state
from .partitions import describe_partition
from .settings import Experiment, load


def model_facts(exp: Experiment) -> ModelFacts:
    """`models.model_facts` of the configured model (`model.name` for `data.name`'s shape at
    `data.image_size`); ConfigError naming both keys where the model cannot take that size."""
    try:
        return models.model_facts(exp.model, data_shape(exp.data))
    except ConfigError:  # a model of your own, or your images: the message names the key
        raise
    except (ValueError, RuntimeError) as err:
        if user_model.is_import_path(exp.model):
            shape = data_shape(exp.data)
            raise user_model.forward_failed(exp.model, (2, shape.in_channels, shape.image_size,
                                                        shape.image_size), err) from None
        raise ConfigError(f"keys 'model.name'={exp.model!r} and 'data.image_size'="
                          f"{exp.data.image_size} do not fit together: "
                          f"{str(err).splitlines()[0]}") from None


def model_state(path: Path, exp: Experiment, source: str = "") -> dict[str, torch.Tensor]:
    """The weights in `path` for the configured model (`outputs.read_model_state`): a run's
    checkpoint, any plain state_dict of `model.name` at `data.name`'s shape, or the
    state_dict of an aihwkit analog model of it (read back by `aihwkit_io.digital_state`).
    ConfigError naming the file (after `source`) and the first keys that differ."""
    from .aihwkit_io import digital_state

    shape = data_shape(exp.data)
    with torch.random.fork_rng(devices=[]):
        expected = models.model_for(exp.model, shape).state_dict()
    described = (f"'{exp.model}' ({shape.in_channels} channel(s), {shape.image_size}x"
                 f"{shape.image_size}, {shape.num_classes} classes; {exp.data.name})")
    named = f"{source}: '{path}'" if source else f"'{path}'"
    return read_model_state(path, expected, described, source,
                            lambda state: digital_state(state, exp.model, shape, named))


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
    if exp.model_init is not None:
        model_state(exp.model_init, exp, "key 'model.init'")
    if exp.output.tensorboard:
        tensorboard_log.check_installed()


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


@dataclass(frozen=True)
class Prepared:
    """A run's checked settings and its data."""

    exp: Experiment
    data: Splits | None  # None only where `prepare` allowed missing data


def prepare(run_config: Mapping[str, Any], *, download: bool = True, training: bool = True,
            missing_data_ok: bool = False) -> Prepared:
    """What every entry point does before any work: the settings (`settings.load`), every
    check of `check_experiment`, the data set, and with `training` the clients' shares of it
    (`check_client_shares`). With `download`, a missing torchvision set is fetched first
    where `data.download` is on (the ServerApp, once, before any client starts). With
    `missing_data_ok`, a set that is missing but would be downloaded (`data.download`)
    gives `data=None` instead of an error (`analogai-fl check`, which downloads nothing).
    Raises ConfigError (or `data.DataNotFoundError`) naming the key, file or folder."""
    exp = load(run_config)
    check_experiment(exp)
    try:
        data = load_data(exp.data, download=download and exp.data.download)
    except DataNotFoundError:
        if missing_data_ok and exp.data.download:
            check_user_model(exp, None)
            return Prepared(exp, None)
        raise
    check_user_model(exp, data)
    if training:
        check_client_shares(exp, data)
    return Prepared(exp, data)


def check_output_place(exp: Experiment) -> None:
    """The run's output place is made and written to before any work (`outputs.probe_
    writable`): the run folder to resume (`output.resume`) or `output.dir`. ConfigError
    naming the key and the reason (a read-only file system, a file in the way)."""
    if exp.output.resume:  # a folder that is not there is refused as no run folder
        folder = Path(exp.output.resume).expanduser()
        if folder.is_dir():
            probe_writable(folder, "key 'output.resume'")
    else:
        probe_writable(exp.output.dir.expanduser(), "key 'output.dir'")


def check_user_model(exp: Experiment, data: Splits | None) -> None:
    """A network of your own (`model.name='package.module:factory'`): `user_model.check_model`
    on one batch of the loaded data (two images; zeros of the configured shape when the data
    is not there yet). Built-in models are left alone: they are built to convert whole."""
    if not user_model.is_import_path(exp.model):
        return
    shape = data_shape(exp.data)
    if data is not None and len(data.train) >= 2:
        batch = torch.stack([data.train[i][0] for i in range(2)])
    else:
        batch = torch.zeros(2, shape.in_channels, shape.image_size, shape.image_size)
    with torch.random.fork_rng(devices=[]):
        model = models.model_for(exp.model, shape)
    user_model.check_model(exp.model, model, batch, shape.num_classes)
