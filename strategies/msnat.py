"""MSNAT fusion injection (FI) as a Flower Message-API strategy.

Each round every noise level sigma_k trains the global model (`NoiseLevelDispatch`), and the
K replies are fused into one global model (`fusion.fuse`), FedProx-style: clients add the
proximal term with the `proximal-mu` this strategy sends. With fusion off the K models stay
apart and travel packed (`analogai_fl.wire.join_models`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from logging import INFO

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedProx
from flwr.supercore import log

from analogai_fl.wire import join_models, split_models

from .dispatch import NoiseLevelDispatch
from .fusion import fuse


class MSNATStrategy(NoiseLevelDispatch, FedProx):
    """MSNAT fusion injection: FedProx-style rounds over the K noise levels, fused with
    configurable weighting and BatchNorm handling; with fusion off the K models stay apart."""

    def __init__(self, noise_levels: Sequence[float], fusion: bool = True,
                 weighting: str = "uniform", bn_buffers: str = "average",
                 proximal_mu: float = 0.0, round_offset: int = 0,
                 on_client_metrics: Callable[[int, list[dict]], None] | None = None,
                 buffer_names: Collection[str] = ()) -> None:
        super().__init__(noise_levels, client_mu=proximal_mu, round_offset=round_offset,
                         on_client_metrics=on_client_metrics, buffer_names=buffer_names,
                         proximal_mu=proximal_mu)
        self.fusion = fusion
        self.weighting = weighting
        self.bn_buffers = bn_buffers

    def summary(self) -> None:
        log(INFO, "\t├──> MSNAT fusion %s, weighting %s, BN buffers %s",
            self.fusion, self.weighting, self.bn_buffers)
        super().summary()

    def models_to_send(self, arrays: ArrayRecord) -> list[ArrayRecord]:
        if self.fusion:
            return super().models_to_send(arrays)
        return split_models(arrays, len(self.noise_levels), fused=False)

    def aggregate_levels(self, server_round: int, replies: list[Message]
                         ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = [m.content for m in replies]
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        models = [c[self.arrayrecord_key] for c in contents]
        if not self.fusion:
            return join_models(models, fused=False), metrics
        weights = ([1.0] * len(models) if self.weighting == "uniform"
                   else [float(c["metrics"][self.weighted_by_key]) for c in contents])
        return fuse(models, weights, self.noise_levels, self.bn_buffers), metrics
