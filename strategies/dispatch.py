"""`NoiseLevelDispatch`: what every strategy of the project shares, mixed into a Flower
Message-API strategy.

- Every round each noise level sigma_k gets its own TRAIN message, sent round-robin over the
  connected nodes (Flower's default two simulated SuperNodes run all K levels).
- The replies must cover every level and be finite; they are ordered by level. A failed,
  missing or diverged client, or a non-finite aggregate, raises `RoundFailed`, which names
  the round, the client and its sigma: silently dropping a noise level (or fusing a NaN
  model) would change the method being run, and nothing of the round is kept.
- Only trainable parameters go through the strategy's own aggregation (a server optimiser's
  step, e.g. FedAdam's). State that is not a trainable parameter (BatchNorm running
  statistics, batch counters: the model's buffers) is averaged with the same weights
  (`fusion.fuse`), as other FL frameworks do: an optimiser step on running variances
  makes them meaningless and can make them negative.
- A server optimiser's own state (FedAvgM's momentum, FedAdam's moments) is exported by
  `server_state` and restored by `load_server_state`, so that a resumed run is the same
  experiment as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from logging import INFO
from typing import ClassVar

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords, sample_nodes
from flwr.supercore import log

from analogai_fl.wire import DIVERGED, TRY_KEY

from .fusion import fuse

CLIENT_LABELS = ("sigma", "noise-index")  # identify a reply; averaging them means nothing


class RoundFailed(RuntimeError):
    """A round that cannot be aggregated; nothing of it was fused or checkpointed."""


def aggregate_client_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Flower's weighted metric average, without the client labels."""
    averaged = aggregate_metricrecords(records, weighted_by_key)
    return MetricRecord({k: v for k, v in averaged.items() if k not in CLIENT_LABELS})


def non_finite(arrays: ArrayRecord) -> list[str]:
    """Names of the arrays holding a NaN or an infinity."""
    return [k for k, a in arrays.items()
            if np.issubdtype(a.numpy().dtype, np.floating) and not np.isfinite(a.numpy()).all()]


def _names(keys: Sequence[str]) -> str:
    return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")


class NoiseLevelDispatch:
    """Mixin for a Flower Message-API strategy (see the module docstring).

    `buffer_names`: the state_dict keys that are not trainable parameters (the model's
    buffers); they bypass the parent's aggregation. `SERVER_STATE` names the parent's
    server-optimiser attributes, each a dict (key -> array) or a list aligned with the
    trainable keys (`list`).
    """

    SERVER_STATE: ClassVar[Mapping[str, type]] = {}

    def __init__(self, noise_levels: Sequence[float], *, client_mu: float = 0.0,
                 round_offset: int = 0,
                 on_client_metrics: Callable[[int, list[dict]], None] | None = None,
                 buffer_names: Collection[str] = (), **strategy_args) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                         min_available_nodes=1, train_metrics_aggr_fn=aggregate_client_metrics,
                         **strategy_args)
        self.noise_levels = list(noise_levels)
        self.client_mu = client_mu
        self.round_offset = round_offset
        self.on_client_metrics = on_client_metrics
        self.buffer_names = frozenset(buffer_names)

    def summary(self) -> None:
        log(INFO, "\t├──> noise levels %s (one client each), proximal mu %s",
            self.noise_levels, self.client_mu)
        super().summary()

    def trainable(self, arrays: ArrayRecord) -> ArrayRecord:
        return ArrayRecord({k: a for k, a in arrays.items() if k not in self.buffer_names})

    def models_to_send(self, arrays: ArrayRecord) -> list[ArrayRecord]:
        return [arrays] * len(self.noise_levels)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        # The parent records what its server-side update needs (e.g. FedAdam's current
        # arrays, trainable ones only); its one-message-per-node list is replaced by one
        # message per level.
        super().configure_train(server_round, self.trainable(arrays), ConfigRecord(dict(config)),
                                grid)
        all_nodes = max(1, len(list(grid.get_node_ids())))
        nodes, _ = sample_nodes(grid, self.min_available_nodes, all_nodes)
        nodes.sort()
        messages = []
        for k, (sigma, model) in enumerate(zip(self.noise_levels, self.models_to_send(arrays),
                                               strict=True)):
            content = ConfigRecord(dict(config) | {
                "server-round": server_round + self.round_offset,
                "proximal-mu": self.client_mu, "sigma": sigma, "noise-index": k,
                TRY_KEY: 1})  # resends (retry.RetryingGrid) count on
            messages.append(Message(RecordDict({self.arrayrecord_key: model,
                                                self.configrecord_key: content}),
                                    dst_node_id=nodes[k % len(nodes)],
                                    message_type=MessageType.TRAIN))
        return messages

    def _client(self, msg: Message) -> str:
        metrics = msg.content.metric_records.get("metrics", {}) if not msg.has_error() else {}
        if "noise-index" in metrics:
            k = int(metrics["noise-index"])
            return (f"client noise_{k} (sigma {self.noise_levels[k]:g}, node "
                    f"{msg.metadata.src_node_id})")
        return f"node {msg.metadata.src_node_id}"

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = server_round + self.round_offset
        replies = list(replies)
        problems = [f"{self._client(m)} diverged: {m.content[DIVERGED]['reason']}"
                    for m in replies if not m.has_error() and DIVERGED in m.content]
        replies = [m for m in replies if m.has_error() or DIVERGED not in m.content]
        valid, failed = self._check_and_log_replies(replies, is_train=True)
        problems += [f"{self._client(m)} failed: {m.error.reason}" for m in failed]
        for m in valid:
            loss = m.content["metrics"].get("train_loss", 0.0)
            bad = non_finite(m.content[self.arrayrecord_key])
            if not math.isfinite(loss) or bad:
                problems.append(f"{self._client(m)} sent a non-finite "
                                f"{'model (' + _names(bad) + ')' if bad else 'loss'}")
        if problems:
            raise RoundFailed(f"round {r}: {len(problems)} of {len(self.noise_levels)} clients "
                              f"failed, nothing of this round was aggregated: "
                              f"{'; '.join(problems)}")
        by_index = {int(m.content["metrics"]["noise-index"]): m for m in valid}
        if sorted(by_index) != list(range(len(self.noise_levels))):
            raise RoundFailed(f"round {r}: replies for noise levels {sorted(by_index)}, "
                              f"expected all of 0..{len(self.noise_levels) - 1}")
        ordered = [by_index[k] for k in range(len(self.noise_levels))]
        if self.on_client_metrics:
            self.on_client_metrics(r, [dict(m.content["metrics"]) | {
                "node": m.metadata.src_node_id} for m in ordered])
        arrays, metrics = self.aggregate_levels(server_round, ordered)
        bad = non_finite(arrays)
        if bad:
            raise RoundFailed(f"round {r}: the aggregated model is not finite ({_names(bad)}) "
                              f"although every client's was: the server-side update of "
                              f"strategy {type(self).__name__} diverged; try a smaller server "
                              "learning rate (strategy.eta or strategy.server_lr)")
        return arrays, metrics

    def aggregate_levels(self, server_round: int, replies: list[Message]
                         ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The parent strategy's aggregation of the trainable parameters (weighted by example
        count); buffers averaged with the same weights (integer counters: maximum); every
        array cast back to the dtype the clients sent (server optimisers compute in
        float64)."""
        sent = [m.content[self.arrayrecord_key] for m in replies]
        weights = [float(m.content["metrics"][self.weighted_by_key]) for m in replies]
        for m, arrays in zip(replies, sent, strict=True):
            m.content[self.arrayrecord_key] = self.trainable(arrays)
        trained, metrics = super().aggregate_train(server_round + self.round_offset, replies)
        buffers = fuse([ArrayRecord({k: a for k, a in s.items() if k in self.buffer_names})
                        for s in sent], weights, self.noise_levels)
        return ArrayRecord({k: Array(np.asarray(
            (trained[k] if k in trained else buffers[k]).numpy(), dtype=a.numpy().dtype))
            for k, a in sent[0].items()}), metrics

    # --- the server optimiser's state, saved with each checkpoint ---------------------------

    def _trainable_keys(self) -> list[str]:
        return list(self.current_arrays.keys())

    def server_state(self) -> dict[str, torch.Tensor]:
        """The parent's server-optimiser state as named tensors ("attribute/key"), loadable
        with `torch.load(..., weights_only=True)`; empty for a stateless strategy."""
        state = {}
        for attr, kind in self.SERVER_STATE.items():
            value = getattr(self, attr)
            if value is None:
                continue
            named = dict(zip(self._trainable_keys(), value, strict=True)) if kind is list else value
            state |= {f"{attr}/{k}": torch.from_numpy(np.array(v)) for k, v in named.items()}
        return state

    def load_server_state(self, state: Mapping[str, torch.Tensor], arrays: ArrayRecord) -> None:
        """Restore `server_state()` before the first round of a resumed run; `arrays` is the
        model the run resumes from (its trainable keys order list-typed state)."""
        keys = list(self.trainable(arrays).keys())
        for attr, kind in self.SERVER_STATE.items():
            named = {name.split("/", 1)[1]: t.numpy() for name, t in state.items()
                     if name.split("/", 1)[0] == attr}
            if not named:
                setattr(self, attr, None)
            elif kind is list:
                setattr(self, attr, [named[k] for k in keys])
            else:
                setattr(self, attr, named)
