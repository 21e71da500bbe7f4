"""Flower strategies, chosen by `strategy.name`: MSNAT's fusion or one of Flower's built-in
Message-API strategies, each run over the K noise levels by `NoiseLevelDispatch`."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from analogai_fl.config import STRATEGY_NAMES, noise_levels

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

__all__ = ["BUILT_INS", "MSNATStrategy", "NoiseLevelDispatch", "RoundFailed", "build_strategy"]


def _fedopt(cfg: Mapping[str, Any]) -> dict[str, float]:
    return {"eta": cfg["strategy.eta"], "beta_1": cfg["strategy.beta_1"],
            "beta_2": cfg["strategy.beta_2"], "tau": cfg["strategy.tau"]}


def _no_parameters(cfg: Mapping[str, Any]) -> dict[str, float]:
    return {}


# name -> (class, its parameters from the config)
BUILT_INS: dict[str, tuple[type[NoiseLevelDispatch], Callable[[Mapping[str, Any]], dict]]] = {
    "fedavg": (FedAvgOverNoiseLevels, _no_parameters),
    "fedprox": (FedProxOverNoiseLevels, lambda c: {"proximal_mu": c["training.proximal_mu"]}),
    "fedavgm": (FedAvgMOverNoiseLevels,
                lambda c: {"server_learning_rate": c["strategy.server_lr"],
                           "server_momentum": c["strategy.server_momentum"]}),
    "fedadam": (FedAdamOverNoiseLevels, _fedopt),
    "fedyogi": (FedYogiOverNoiseLevels, _fedopt),
    "fedadagrad": (FedAdagradOverNoiseLevels,
                   lambda c: {"eta": c["strategy.eta"], "tau": c["strategy.tau"]}),
}
assert set(BUILT_INS) | {"msnat"} == set(STRATEGY_NAMES)


def client_mu(cfg: Mapping[str, Any]) -> float:
    """mu of the clients' proximal term: part of the feedback loops (`use_neg`), and what
    FedProx is about."""
    use = cfg["training.use_neg"] or cfg["strategy.name"] == "fedprox"
    return cfg["training.proximal_mu"] if use else 0.0


def model_buffer_names(cfg: Mapping[str, Any]) -> frozenset[str]:
    """State_dict keys of the configured model that are not trainable parameters."""
    from analogai_fl.checks import configured_model

    return frozenset(name for name, _ in configured_model(cfg).named_buffers())


def build_strategy(cfg: Mapping[str, Any], round_offset: int = 0,
                   on_client_metrics: Callable[[int, list[dict]], None] | None = None,
                   buffer_names: Collection[str] | None = None) -> NoiseLevelDispatch:
    """The configured strategy over the configured noise levels; `buffer_names` default to
    the configured model's buffers."""
    name = cfg["strategy.name"]
    common = dict(round_offset=round_offset, on_client_metrics=on_client_metrics,
                  buffer_names=model_buffer_names(cfg) if buffer_names is None else buffer_names)
    if name == "msnat":
        return MSNATStrategy(noise_levels(cfg), fusion=cfg["training.use_fl"],
                             weighting=cfg["strategy.weighting"],
                             bn_buffers=cfg["strategy.bn_buffers"], proximal_mu=client_mu(cfg),
                             **common)
    cls, parameters = BUILT_INS[name]
    return cls(noise_levels(cfg), client_mu=client_mu(cfg), **common, **parameters(cfg))
