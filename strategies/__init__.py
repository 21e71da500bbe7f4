"""Flower strategies, chosen by `strategy.name`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from analogai_fl.config import noise_levels

from .msnat import MSNATStrategy

__all__ = ["MSNATStrategy", "build_strategy"]


def build_strategy(cfg: Mapping[str, Any], round_offset: int = 0,
                   on_client_metrics: Callable[[int, list[dict]], None] | None = None
                   ) -> MSNATStrategy:
    """The configured strategy. The proximal term belongs to the feedback loops (`use_neg`)."""
    return MSNATStrategy(
        noise_levels(cfg), fusion=cfg["training.use_fl"], weighting=cfg["strategy.weighting"],
        bn_buffers=cfg["strategy.bn_buffers"],
        proximal_mu=cfg["training.proximal_mu"] if cfg["training.use_neg"] else 0.0,
        round_offset=round_offset, on_client_metrics=on_client_metrics)
