"""Flower strategies, chosen by `strategy.name`: MSNAT's fusion or one of Flower's built-in
Message-API strategies, each run over the K noise levels by `NoiseLevelDispatch`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from analogai_fl.config import STRATEGY_NAMES, noise_levels

from .msnat import MSNATStrategy, NoiseLevelDispatch

__all__ = ["BUILT_INS", "MSNATStrategy", "NoiseLevelDispatch", "build_strategy"]


def _over_noise_levels(base: type) -> type:
    return type(f"{base.__name__}OverNoiseLevels", (NoiseLevelDispatch, base),
                {"__doc__": f"Flower's {base.__name__}, one client per noise level."})


BUILT_INS: dict[str, tuple[type, Callable[[Mapping[str, Any]], dict]]] = {
    "fedavg": (_over_noise_levels(FedAvg), lambda c: {}),
    "fedprox": (_over_noise_levels(FedProx),
                lambda c: {"proximal_mu": c["training.proximal_mu"]}),
    "fedavgm": (_over_noise_levels(FedAvgM),
                lambda c: {"server_learning_rate": c["strategy.server_lr"],
                           "server_momentum": c["strategy.server_momentum"]}),
    "fedadam": (_over_noise_levels(FedAdam),
                lambda c: {"eta": c["strategy.eta"], "beta_1": c["strategy.beta_1"],
                           "beta_2": c["strategy.beta_2"], "tau": c["strategy.tau"]}),
    "fedyogi": (_over_noise_levels(FedYogi),
                lambda c: {"eta": c["strategy.eta"], "beta_1": c["strategy.beta_1"],
                           "beta_2": c["strategy.beta_2"], "tau": c["strategy.tau"]}),
    "fedadagrad": (_over_noise_levels(FedAdagrad),
                   lambda c: {"eta": c["strategy.eta"], "tau": c["strategy.tau"]}),
}
assert set(BUILT_INS) | {"msnat"} == set(STRATEGY_NAMES)


def client_mu(cfg: Mapping[str, Any]) -> float:
    """mu of the clients' proximal term: part of the feedback loops (`use_neg`), and what
    FedProx is about."""
    use = cfg["training.use_neg"] or cfg["strategy.name"] == "fedprox"
    return cfg["training.proximal_mu"] if use else 0.0


def build_strategy(cfg: Mapping[str, Any], round_offset: int = 0,
                   on_client_metrics: Callable[[int, list[dict]], None] | None = None
                   ) -> NoiseLevelDispatch:
    """The configured strategy over the configured noise levels."""
    name = cfg["strategy.name"]
    common = dict(round_offset=round_offset, on_client_metrics=on_client_metrics)
    if name == "msnat":
        return MSNATStrategy(noise_levels(cfg), fusion=cfg["training.use_fl"],
                             weighting=cfg["strategy.weighting"],
                             bn_buffers=cfg["strategy.bn_buffers"], proximal_mu=client_mu(cfg),
                             **common)
    cls, parameters = BUILT_INS[name]
    return cls(noise_levels(cfg), client_mu=client_mu(cfg), **common, **parameters(cfg))
