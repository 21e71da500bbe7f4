"""MSNAT fusion injection as a Flower Message-API strategy.

Each round every noise level sigma_k gets its own TRAIN message (sent round-robin over the
connected nodes, so Flower's default two simulated SuperNodes run all K levels), and the K
replies are fused into one global model (FedProx-style: clients add the proximal term with the
`proximal-mu` this strategy sends). With fusion off, the K models stay apart: they travel
packed in one ArrayRecord under the keys `"{k}/{name}"`, so checkpoints and the server-side
evaluator see all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedProx
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords, sample_nodes
from flwr.supercore import log

BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
CLIENT_LABELS = ("sigma", "noise-index")  # identify a reply; averaging them means nothing


def aggregate_client_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Flower's weighted metric average, without the client labels."""
    averaged = aggregate_metricrecords(records, weighted_by_key)
    return MetricRecord({k: v for k, v in averaged.items() if k not in CLIENT_LABELS})


def join_models(models: Sequence[ArrayRecord], fused: bool) -> ArrayRecord:
    """What travels between rounds: the global model, or (FI off) the K models packed
    with keys prefixed by the noise index."""
    if fused:
        return models[0]
    return ArrayRecord({f"{k}/{name}": array for k, model in enumerate(models)
                        for name, array in model.items()})


def split_models(arrays: ArrayRecord, count: int, fused: bool) -> list[ArrayRecord]:
    """Inverse of `join_models`: [global model], or the K models."""
    if fused:
        return [arrays]
    models = [ArrayRecord() for _ in range(count)]
    for key, array in arrays.items():
        index, name = key.split("/", 1)
        models[int(index)][name] = array
    return models


def fuse(models: Sequence[ArrayRecord], weights: Sequence[float], sigmas: Sequence[float],
         bn_buffers: str = "average") -> ArrayRecord:
    """Weighted average of the models.

    BatchNorm running statistics follow `bn_buffers`: "average" averages them like weights;
    "lowest_sigma" takes those of the least noisy client. Integer buffers (batch counters)
    take the maximum, since averaging a count has no meaning.
    """
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"fusion weights must sum to a positive number, got {list(weights)}")
    factors = [w / total for w in weights]
    lowest = int(np.argmin(sigmas))
    fused = ArrayRecord()
    for name in models[0].keys():
        arrays = [m[name].numpy() for m in models]
        if np.issubdtype(arrays[0].dtype, np.integer):
            value = np.max(arrays, axis=0)
        elif bn_buffers == "lowest_sigma" and name.endswith(BN_BUFFER_SUFFIXES):
            value = arrays[lowest]
        else:
            value = sum(f * a for f, a in zip(factors, arrays, strict=True))
        fused[name] = Array(np.asarray(value, dtype=arrays[0].dtype))
    return fused


class MSNATStrategy(FedProx):
    """FedProx with one client per noise level and a configurable fusion."""

    def __init__(self, noise_levels: Sequence[float], fusion: bool = True,
                 weighting: str = "uniform", bn_buffers: str = "average",
                 proximal_mu: float = 0.0, round_offset: int = 0,
                 on_client_metrics: Callable[[int, list[dict]], None] | None = None) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                         min_available_nodes=1, proximal_mu=proximal_mu,
                         train_metrics_aggr_fn=aggregate_client_metrics)
        self.noise_levels = list(noise_levels)
        self.fusion = fusion
        self.weighting = weighting
        self.bn_buffers = bn_buffers
        self.round_offset = round_offset
        self.on_client_metrics = on_client_metrics

    def summary(self) -> None:
        log(INFO, "\t├──> MSNAT: sigma %s, fusion %s, weighting %s, BN buffers %s",
            self.noise_levels, self.fusion, self.weighting, self.bn_buffers)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        count = len(self.noise_levels)
        models = split_models(arrays, count, self.fusion)
        all_nodes = max(1, len(list(grid.get_node_ids())))
        nodes, _ = sample_nodes(grid, self.min_available_nodes, all_nodes)
        nodes.sort()
        messages = []
        for k, sigma in enumerate(self.noise_levels):
            content = ConfigRecord(dict(config) | {
                "server-round": server_round + self.round_offset,
                "proximal-mu": self.proximal_mu, "sigma": sigma, "noise-index": k})
            model = models[0 if self.fusion else k]
            messages.append(Message(RecordDict({self.arrayrecord_key: model,
                                                self.configrecord_key: content}),
                                    dst_node_id=nodes[k % len(nodes)],
                                    message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, failed = self._check_and_log_replies(replies, is_train=True)
        if failed:
            reasons = "; ".join(m.error.reason for m in failed)
            raise RuntimeError(f"{len(failed)} of {len(self.noise_levels)} clients failed in "
                               f"round {server_round + self.round_offset}: {reasons}")
        by_index = {int(m.content["metrics"]["noise-index"]): m.content for m in valid}
        if sorted(by_index) != list(range(len(self.noise_levels))):
            raise RuntimeError(f"round {server_round + self.round_offset}: replies for noise "
                               f"levels {sorted(by_index)}, expected all of "
                               f"0..{len(self.noise_levels) - 1}")
        contents = [by_index[k] for k in range(len(self.noise_levels))]
        if self.on_client_metrics:
            self.on_client_metrics(server_round + self.round_offset,
                                   [dict(c["metrics"]) for c in contents])
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        models = [c[self.arrayrecord_key] for c in contents]
        if not self.fusion:
            return join_models(models, fused=False), metrics
        weights = ([1.0] * len(models) if self.weighting == "uniform"
                   else [float(c["metrics"][self.weighted_by_key]) for c in contents])
        return fuse(models, weights, self.noise_levels, self.bn_buffers), metrics
