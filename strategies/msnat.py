"""MSNAT fusion injection as a Flower Message-API strategy, and the per-noise-level dispatch
every strategy of the project shares.

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


class NoiseLevelDispatch:
    """Mixin for a Flower Message-API strategy: every round each noise level sigma_k gets its
    own TRAIN message (round-robin over the connected nodes); the replies must cover every
    level, are ordered by level, and are then aggregated by the strategy it is mixed into.

    A failed or missing client fails the round: silently dropping a noise level would change
    the method being run.
    """

    def __init__(self, noise_levels: Sequence[float], *, client_mu: float = 0.0,
                 round_offset: int = 0,
                 on_client_metrics: Callable[[int, list[dict]], None] | None = None,
                 **strategy_args) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                         min_available_nodes=1, train_metrics_aggr_fn=aggregate_client_metrics,
                         **strategy_args)
        self.noise_levels = list(noise_levels)
        self.client_mu = client_mu
        self.round_offset = round_offset
        self.on_client_metrics = on_client_metrics

    def summary(self) -> None:
        log(INFO, "\t├──> noise levels %s (one client each), proximal mu %s",
            self.noise_levels, self.client_mu)
        super().summary()

    def models_to_send(self, arrays: ArrayRecord) -> list[ArrayRecord]:
        return [arrays] * len(self.noise_levels)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        # The parent records what its server-side update needs (e.g. FedAdam's current
        # arrays); its one-message-per-node list is replaced by one message per level.
        super().configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)
        all_nodes = max(1, len(list(grid.get_node_ids())))
        nodes, _ = sample_nodes(grid, self.min_available_nodes, all_nodes)
        nodes.sort()
        messages = []
        for k, (sigma, model) in enumerate(zip(self.noise_levels, self.models_to_send(arrays),
                                               strict=True)):
            content = ConfigRecord(dict(config) | {
                "server-round": server_round + self.round_offset,
                "proximal-mu": self.client_mu, "sigma": sigma, "noise-index": k})
            messages.append(Message(RecordDict({self.arrayrecord_key: model,
                                                self.configrecord_key: content}),
                                    dst_node_id=nodes[k % len(nodes)],
                                    message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid, failed = self._check_and_log_replies(replies, is_train=True)
        if failed:
            reasons = "; ".join(m.error.reason for m in failed)
            raise RuntimeError(f"{len(failed)} of {len(self.noise_levels)} clients failed in "
                               f"round {server_round + self.round_offset}: {reasons}")
        by_index = {int(m.content["metrics"]["noise-index"]): m for m in valid}
        if sorted(by_index) != list(range(len(self.noise_levels))):
            raise RuntimeError(f"round {server_round + self.round_offset}: replies for noise "
                               f"levels {sorted(by_index)}, expected all of "
                               f"0..{len(self.noise_levels) - 1}")
        ordered = [by_index[k] for k in range(len(self.noise_levels))]
        if self.on_client_metrics:
            self.on_client_metrics(server_round + self.round_offset,
                                   [dict(m.content["metrics"]) for m in ordered])
        return self.aggregate_levels(server_round, ordered)

    def aggregate_levels(self, server_round: int, replies: list[Message]
                         ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The parent strategy's aggregation (weighted by example count), with every array
        cast back to the dtype the clients sent (server optimisers compute in float64)."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        sent = replies[0].content[self.arrayrecord_key]
        return ArrayRecord({k: Array(np.asarray(a.numpy(), dtype=sent[k].numpy().dtype))
                            for k, a in arrays.items()}), metrics


class MSNATStrategy(NoiseLevelDispatch, FedProx):
    """MSNAT fusion injection: FedProx-style rounds over the K noise levels, fused with
    configurable weighting and BatchNorm handling; with fusion off the K models stay apart."""

    def __init__(self, noise_levels: Sequence[float], fusion: bool = True,
                 weighting: str = "uniform", bn_buffers: str = "average",
                 proximal_mu: float = 0.0, round_offset: int = 0,
                 on_client_metrics: Callable[[int, list[dict]], None] | None = None) -> None:
        super().__init__(noise_levels, client_mu=proximal_mu, round_offset=round_offset,
                         on_client_metrics=on_client_metrics, proximal_mu=proximal_mu)
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
