"""`RetryingGrid`: the failure policy of a federation of real machines, as a wrapper around
Flower's `Grid` that every strategy of the project sends its messages through.

A noise level whose reply is missing (the SuperNode is gone, or nothing came back within
`federation.reply_timeout` seconds) or failed (an error reply: the ClientApp raised, or
Flower's SuperLink reports the node unavailable after two missed heartbeats) is sent again
with the same content, to another connected node where there is one (the least busy in this
round), up to `federation.retries` times. Only then does the round fail, with `RoundFailed`
naming the round, the level, its sigma, the node and the reason of each try. Every resend is
reported to `on_retry` (the ServerApp logs it and appends it to clients.jsonl).

Resending changes nothing of the computation: a client's seed depends on (run seed, round,
noise level), never on the node or the try, so a round that needed a resend gives the same
models as one that did not. A late reply of an abandoned try is ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from .dispatch import RoundFailed

TRY_KEY = "try"  # in the train config: 1 for the first send of a level, 2 for its first resend


@dataclass
class _Try:
    message: Message
    number: int
    node: int
    deadline: float
    history: list[str]


def _level(message: Message) -> tuple[str, dict]:
    """("round R: noise level K (sigma S)", the config) of a train message."""
    config = next((c for c in message.content.config_records.values()
                   if "noise-index" in c), {})
    if not config:
        return "a message", {}
    return (f"round {config['server-round']}: noise level {config['noise-index']} "
            f"(sigma {config['sigma']:g})", config)


class RetryingGrid(Grid):
    """A `Grid` whose `send_and_receive` applies the retry policy (module docstring);
    everything else is the wrapped grid's. `retries` >= 0; `reply_timeout` in seconds per
    try, 0 = the caller's timeout (Flower's strategies pass 3600 s)."""

    def __init__(self, grid: Grid, retries: int, reply_timeout: float,
                 on_retry: Callable[[dict], None] | None = None,
                 poll_seconds: float = 0.5) -> None:
        self.grid = grid
        self.retries = retries
        self.reply_timeout = reply_timeout
        self.on_retry = on_retry
        self.poll_seconds = poll_seconds

    # --- delegated ------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def __getattr__(self, name: str) -> Any:  # whatever else the engine's grid offers
        return getattr(self.grid, name)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    # --- the policy -----------------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        limit = self.reply_timeout or timeout
        pending: dict[str, _Try] = {}
        for message in messages:
            self._push(pending, message, 1, [], limit)
        replies: list[Message] = []
        failed: list[str] = []
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                attempt = pending.pop(reply.metadata.reply_to_message_id, None)
                if attempt is None:
                    continue  # a late reply of an abandoned try
                if reply.has_error():
                    self._again(pending, failed, attempt,
                                f"error {reply.error.code}: {reply.error.reason}", limit)
                else:
                    replies.append(reply)
            now = time.monotonic()
            for message_id, attempt in list(pending.items()):
                if now >= attempt.deadline:
                    del pending[message_id]
                    self._again(pending, failed, attempt, f"no reply within {limit:g} s",
                                limit)
            if pending:
                time.sleep(self.poll_seconds)
        if failed:
            raise RoundFailed("; ".join(failed))
        return replies

    def _push(self, pending: dict[str, _Try], message: Message, number: int,
              history: list[str], limit: float | None) -> None:
        (message_id,) = self.grid.push_messages([message])
        deadline = time.monotonic() + limit if limit else float("inf")
        pending[message_id] = _Try(message, number, message.metadata.dst_node_id, deadline,
                                   history)

    def _again(self, pending: dict[str, _Try], failed: list[str], attempt: _Try,
               reason: str, limit: float | None) -> None:
        """Resend `attempt`'s content to another node, or record the level as failed."""
        what, config = _level(attempt.message)
        history = [*attempt.history, f"try {attempt.number} on node {attempt.node}: {reason}"]
        if attempt.number > self.retries:
            failed.append(f"{what} failed after {attempt.number} "
                          f"{'try' if attempt.number == 1 else 'tries'} ("
                          + "; ".join(history) + ")")
            return
        node = self._next_node(attempt.node, pending)
        if node is None:
            failed.append(f"{what} failed and no node is connected to resend it to ("
                          + "; ".join(history) + ")")
            return
        content = RecordDict({name: record for name, record in attempt.message.content.items()})
        for name, record in attempt.message.content.config_records.items():
            if "noise-index" in record:
                content[name] = ConfigRecord(dict(record) | {TRY_KEY: attempt.number + 1})
        resend = Message(content, dst_node_id=node,
                         message_type=attempt.message.metadata.message_type,
                         group_id=attempt.message.metadata.group_id)
        if self.on_retry:
            self.on_retry({"round": config.get("server-round"),
                           "noise-index": config.get("noise-index"), "sigma": config.get("sigma"),
                           "try": attempt.number, "node": attempt.node, "reason": reason,
                           "resent_to": node})
        self._push(pending, resend, attempt.number + 1, history, limit)

    def _next_node(self, failed_node: int, pending: dict[str, _Try]) -> int | None:
        """The connected node with the fewest messages in flight, other than `failed_node`
        where there is one (the failed node itself otherwise: a restarted SuperNode)."""
        nodes = sorted(self.grid.get_node_ids())
        others = [n for n in nodes if n != failed_node] or nodes
        if not others:
            return None
        busy = {n: sum(t.node == n for t in pending.values()) for n in others}
        return min(others, key=lambda n: (busy[n], n))
