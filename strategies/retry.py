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
models as one that did not. A try that timed out is still waited for (its node may only be
slow, e.g. working through a queue of levels): whichever try of a level answers first is
used, and the replies of its other tries are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from analogai_fl.wire import TRY_KEY

from .dispatch import RoundFailed


@dataclass
class _Try:
    level: int  # index into the messages of this call
    number: int
    node: int
    deadline: float
    timed_out: bool = False


@dataclass
class _Level:
    message: Message  # the first send
    tries: int = 0
    history: list[str] = field(default_factory=list)
    done: bool = False


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
    try, 0 = the caller's timeout (Flower's strategies pass 3600 s); `poll_seconds` between
    pulls of the replies (default: the wrapped grid's `pull_interval`, else 1 s)."""

    def __init__(self, grid: Grid, retries: int, reply_timeout: float,
                 on_retry: Callable[[dict], None] | None = None,
                 poll_seconds: float | None = None) -> None:
        self.grid = grid
        self.retries = retries
        self.reply_timeout = reply_timeout
        self.on_retry = on_retry
        # as often as the engine's own grid polls (simulation: 0.1 s), else every second
        self.poll_seconds = poll_seconds if poll_seconds is not None else float(
            getattr(grid, "pull_interval", 1.0))

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
        levels = [_Level(m) for m in messages]
        pending: dict[str, _Try] = {}  # message id -> try still waited for
        for index, level in enumerate(levels):
            self._push(pending, levels, index, level.message.metadata.dst_node_id, limit)
        replies: list[Message] = []
        failed: list[str] = []
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                attempt = pending.pop(reply.metadata.reply_to_message_id, None)
                if attempt is None or levels[attempt.level].done:
                    continue  # another try of this level answered first
                level = levels[attempt.level]
                if not reply.has_error():
                    level.done = True
                    replies.append(reply)
                    continue
                level.history.append(f"try {attempt.number} on node {attempt.node}: error "
                                     f"{reply.error.code}: {reply.error.reason}")
                # a try that had timed out was sent again already
                self._again(pending, levels, attempt, failed, limit, not attempt.timed_out)
            now = time.monotonic()
            for attempt in list(pending.values()):
                if not attempt.timed_out and now >= attempt.deadline:
                    attempt.timed_out = True  # still waited for: a slow node may answer
                    levels[attempt.level].history.append(
                        f"try {attempt.number} on node {attempt.node}: no reply within "
                        f"{limit:g} s")
                    self._again(pending, levels, attempt, failed, limit)
            for message_id, attempt in list(pending.items()):
                if levels[attempt.level].done:
                    del pending[message_id]
            if pending:
                time.sleep(self.poll_seconds)
        if failed:
            raise RoundFailed("; ".join(failed))
        return replies

    def _push(self, pending: dict[str, _Try], levels: list[_Level], index: int, node: int,
              limit: float | None) -> None:
        level = levels[index]
        level.tries += 1
        message = level.message
        if level.tries > 1:  # the same content, with its try number, to `node`
            content = RecordDict(dict(message.content.items()))
            for name, record in message.content.config_records.items():
                if "noise-index" in record:
                    content[name] = ConfigRecord(dict(record) | {TRY_KEY: level.tries})
            message = Message(content, dst_node_id=node,
                              message_type=message.metadata.message_type,
                              group_id=message.metadata.group_id)
        (message_id,) = self.grid.push_messages([message])
        deadline = time.monotonic() + limit if limit else float("inf")
        pending[message_id] = _Try(index, level.tries, node, deadline)

    def _again(self, pending: dict[str, _Try], levels: list[_Level], attempt: _Try,
               failed: list[str], limit: float | None, resend: bool = True) -> None:
        """After a failed or timed-out try: send the level again (if `resend`), or, with its
        tries spent and none of them still awaited in time, record it as failed."""
        level = levels[attempt.level]
        what, config = _level(level.message)
        waiting = [t for t in pending.values()
                   if t.level == attempt.level and not t.timed_out]
        if level.tries > self.retries or not resend:
            if not waiting:
                level.done = True
                failed.append(f"{what} failed after {level.tries} "
                              f"{'try' if level.tries == 1 else 'tries'} ("
                              + "; ".join(level.history) + ")")
            return
        busy_with_it = {t.node for t in pending.values() if t.level == attempt.level}
        node = self._next_node(attempt.node, pending, busy_with_it)
        if node is None:
            level.done = True
            failed.append(f"{what} failed and no node is connected to send it to again ("
                          + "; ".join(level.history) + ")")
            return
        if self.on_retry:
            self.on_retry({"round": config.get("server-round"),
                           "noise-index": config.get("noise-index"), "sigma": config.get("sigma"),
                           "try": attempt.number, "node": attempt.node,
                           "reason": level.history[-1].split(": ", 1)[1], "resent_to": node})
        self._push(pending, levels, attempt.level, node, limit)

    def _next_node(self, failed_node: int, pending: dict[str, _Try],
                   busy_with_it: set[int]) -> int | None:
        """The connected node to send a level to again: one not already working on it,
        other than `failed_node` where there is one (that node itself otherwise: a
        restarted SuperNode), with the fewest messages in flight."""
        nodes = sorted(self.grid.get_node_ids())
        if not nodes:
            return None
        candidates = ([n for n in nodes if n not in busy_with_it and n != failed_node]
                      or [n for n in nodes if n != failed_node] or nodes)
        load = {n: sum(t.node == n for t in pending.values()) for n in candidates}
        return min(candidates, key=lambda n: (load[n], n))
