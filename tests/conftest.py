"""Shared fixtures: small, fast pieces of the real system (no mocks of torch or aihwkit).

Plain helper functions are in helpers.py; no test file imports from this file.
"""

from __future__ import annotations

import pytest
import torch
from helpers import accept_tiny_files, experiment, named, tiny_cfg, write_data_set

from analogai_fl import config
from analogai_fl import data as D
from analogai_fl import partitions as P
from analogai_fl.data import load_data
from analogai_fl.models import build_model
from analogai_fl.outputs import RunFolder
from analogai_fl.settings import Experiment
from analogai_fl.training import train_local


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


# --- data sets on disk (test_data.py, test_partitions.py, test_idx.py, test_msnat_client.py)


@pytest.fixture
def fresh_caches():
    """Empty the per-process caches of loaded data sets and partitions before and after a
    test (files written under tmp_path must not meet a cached set of another test)."""
    D.torchvision_splits.cache_clear()
    P._cached_partition.cache_clear()
    yield
    D.torchvision_splits.cache_clear()
    P._cached_partition.cache_clear()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """tiny(name, **cfg changes) -> (cfg, written arrays)."""
    def make(name: str, **changes):
        root = tmp_path / name
        written = write_data_set(name, root)
        accept_tiny_files(monkeypatch, name, written["md5s"])
        return tiny_cfg(name, root, **changes), written
    return make


# --- run folders (test_outputs.py, test_server_app.py; test_cli.py has its own `run`)


@pytest.fixture
def run(tmp_path, cfg):
    return RunFolder.create(Experiment.from_config(named(cfg, tmp_path)).output,
                            config.dump_yaml(named(cfg, tmp_path)))
