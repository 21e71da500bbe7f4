"""Shared fixtures: small, fast pieces of the real system (no mocks of torch or aihwkit)."""

from __future__ import annotations

import pytest
import torch

from analogai_fl import config
from analogai_fl.data import load_data
from analogai_fl.models import build_model


@pytest.fixture
def cfg() -> dict:
    return config.defaults()


@pytest.fixture(scope="session")
def digits():
    return load_data(config.defaults())


@pytest.fixture
def lenet(digits):
    torch.manual_seed(0)
    return build_model("lenet", digits.in_channels, digits.num_classes, digits.image_size)
