"""Shared fixtures: small, fast pieces of the real system (no mocks of torch or aihwkit)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from analogai_fl import config
from analogai_fl.data import load_data
from analogai_fl.models import build_model
from analogai_fl.settings import Experiment
from analogai_fl.training import train_local


def experiment(**changes) -> Experiment:
    """The default experiment with `changes` (dotted keys)."""
    return Experiment.from_config(config.defaults() | changes)


def local_training(cfg: dict, sigma: float, proximal_mu: float, noise_index: int = 0):
    """Client `noise_index`'s training setting under `cfg`, at `sigma`."""
    setting = Experiment.from_config(cfg).local_training(noise_index, proximal_mu)
    return dataclasses.replace(setting, sigma=sigma)


@pytest.fixture
def cfg() -> dict:
    return config.defaults()


@pytest.fixture(scope="session")
def digits():
    return load_data(experiment().data)


@pytest.fixture
def lenet(digits):
    torch.manual_seed(0)
    return build_model("lenet", digits.in_channels, digits.num_classes, digits.image_size)


@pytest.fixture(scope="session")
def trained(digits):
    """LeNet trained 3 epochs under weight noise: an accurate model for analog evaluations."""
    torch.manual_seed(0)
    model = build_model("lenet", 1, 10, 32)
    setting = experiment(**{"training.use_neg": False, "training.lr": 3e-3}).training
    for epoch in range(3):
        train_local(model, digits.train, setting, seed=epoch)
    return model.eval()


@pytest.fixture
def server_task(monkeypatch):
    """Flower stamps messages with the running task's identity; pretend to be a ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
