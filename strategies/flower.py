"""Flower's built-in Message-API strategies, each run over the K noise levels.

Each class is Flower's own strategy with `NoiseLevelDispatch` mixed in: one client per noise
level, only trainable parameters through the server optimiser, and the optimiser's state
(`SERVER_STATE`, the attributes Flower 1.42 keeps between rounds) saved with every
checkpoint so that a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from .dispatch import NoiseLevelDispatch

FEDOPT_STATE = {"m_t": dict, "v_t": dict}  # flwr.serverapp.strategy.FedOpt's moments


class FedAvgOverNoiseLevels(NoiseLevelDispatch, FedAvg):
    """Flower's FedAvg, one client per noise level."""


class FedProxOverNoiseLevels(NoiseLevelDispatch, FedProx):
    """Flower's FedProx, one client per noise level."""


class FedAvgMOverNoiseLevels(NoiseLevelDispatch, FedAvgM):
    """Flower's FedAvgM, one client per noise level; its momentum is server state."""

    SERVER_STATE: ClassVar[Mapping[str, type]] = {"momentum_vector": list}


class FedAdamOverNoiseLevels(NoiseLevelDispatch, FedAdam):
    """Flower's FedAdam, one client per noise level; its moments are server state."""

    SERVER_STATE = FEDOPT_STATE


class FedYogiOverNoiseLevels(NoiseLevelDispatch, FedYogi):
    """Flower's FedYogi, one client per noise level; its moments are server state."""

    SERVER_STATE = FEDOPT_STATE


class FedAdagradOverNoiseLevels(NoiseLevelDispatch, FedAdagrad):
    """Flower's FedAdagrad, one client per noise level; its moments are server state."""

    SERVER_STATE = FEDOPT_STATE
