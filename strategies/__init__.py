"""Flower strategies, chosen by `strategy.name`: MSNAT's fusion or one of Flower's built-in
Message-API strategies, each run over the K noise levels by `NoiseLevelDispatch`."""

from __future__ import annotations

from collections.abc import Callable, Collection

from analogai_fl.data import data_shape
from analogai_fl.models import model_facts
from analogai_fl.schema import STRATEGY_NAMES
from analogai_fl.settings import Experiment, StrategySettings

from .dispatch import NoiseLevelDispatch, RoundFailed
from .flower import (
    FedAdagradOverNoiseLevels,
    FedAdamOverNoiseLevels,
    FedAvgMOverNoiseLevels,
    FedAvgOverNoiseLevels,
    FedProxOverNoiseLevels,
    FedYogiOverNoiseLevels,
)
from .msnat import MSNATStrategy

__all__ = ["BUILT_INS", "MSNATStrategy", "NoiseLevelDispatch", "RoundFailed", "build_strategy",
           "keeps_server_state"]


def _fedopt(s: StrategySettings, exp: Experiment) -> dict[str, float]:
    return {"eta": s.eta, "beta_1": s.beta_1, "beta_2": s.beta_2, "tau": s.tau}


def _no_parameters(s: StrategySettings, exp: Experiment) -> dict[str, float]:
    return {}


# name -> (class, its parameters from the settings)
BUILT_INS: dict[str, tuple[type[NoiseLevelDispatch],
                           Callable[[StrategySettings, Experiment], dict]]] = {
    "fedavg": (FedAvgOverNoiseLevels, _no_parameters),
    "fedprox": (FedProxOverNoiseLevels, lambda s, exp: {"proximal_mu": exp.proximal_mu}),
    "fedavgm": (FedAvgMOverNoiseLevels,
                lambda s, exp: {"server_learning_rate": s.server_lr,
                                "server_momentum": s.server_momentum}),
    "fedadam": (FedAdamOverNoiseLevels, _fedopt),
    "fedyogi": (FedYogiOverNoiseLevels, _fedopt),
    "fedadagrad": (FedAdagradOverNoiseLevels, lambda s, exp: {"eta": s.eta, "tau": s.tau}),
}
assert set(BUILT_INS) | {"msnat"} == set(STRATEGY_NAMES)


def model_buffer_names(exp: Experiment) -> frozenset[str]:
    """State_dict keys of the configured model that are not trainable parameters."""
    return model_facts(exp.model, data_shape(exp.data)).buffer_names


def keeps_server_state(exp: Experiment) -> bool:
    """Whether the configured strategy keeps state between rounds (`SERVER_STATE`) that a
    checkpoint must hold for a resume to continue exactly."""
    cls = MSNATStrategy if exp.strategy.name == "msnat" else BUILT_INS[exp.strategy.name][0]
    return bool(cls.SERVER_STATE)


def build_strategy(exp: Experiment, round_offset: int = 0,
                   on_client_metrics: Callable[[int, list[dict]], None] | None = None,
                   buffer_names: Collection[str] | None = None) -> NoiseLevelDispatch:
    """The configured strategy over the configured noise levels; `buffer_names` default to
    the configured model's buffers."""
    common = dict(round_offset=round_offset, on_client_metrics=on_client_metrics,
                  buffer_names=model_buffer_names(exp) if buffer_names is None else buffer_names)
    s = exp.strategy
    if s.name == "msnat":
        return MSNATStrategy(exp.noise_levels, fusion=exp.fused, weighting=s.weighting,
                             bn_buffers=s.bn_buffers, proximal_mu=exp.client_mu(), **common)
    cls, parameters = BUILT_INS[s.name]
    return cls(exp.noise_levels, client_mu=exp.client_mu(), **common, **parameters(s, exp))
