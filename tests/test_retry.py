"""The retry policy (strategies.retry.RetryingGrid) against a scripted grid: error replies,
missing replies, exhausted tries, a late reply, a lone node; and the keys behind it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from helpers import experiment

from analogai_fl.config import resolve
from analogai_fl.errors import ConfigError
from strategies.dispatch import RoundFailed
from strategies.msnat import MSNATStrategy
from strategies.retry import RetryingGrid

pytestmark = pytest.mark.usefixtures("server_task")
SIGMAS = [0.1, 0.2, 0.3]


class ScriptedGrid:
    """Replies as scripted per (node, noise level, try): "ok" (default), "error", "silent"
    (never replies), "late" or "late error" (reply, or error, once a later try of its level
    has been sent)."""

    def __init__(self, nodes, script, vanish=False, slow=()):
        self.nodes, self.script, self.vanish = list(nodes), script, vanish
        self.slow = {key: 0 for key in slow}  # "silent" for 3 pulls, then "ok"
        self.sent: dict[str, Message] = {}
        self.log: list[tuple[int, int, int]] = []  # (node, level, try) in sending order

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            message_id = f"m{len(self.sent)}"
            m.metadata.__dict__["_message_id"] = message_id
            self.sent[message_id] = m
            c = m.content["config"]
            self.log.append((m.metadata.dst_node_id, c["noise-index"], c["try"]))
            ids.append(message_id)
        if self.vanish:
            self.nodes = []
        return ids

    def pull_messages(self, message_ids):
        out = []
        for message_id in message_ids:
            m = self.sent[message_id]
            c = m.content["config"]
            key = (m.metadata.dst_node_id, c["noise-index"], c["try"])
            what = self.script.get(key, "ok")
            if key in self.slow:
                self.slow[key] += 1
                what = "ok" if self.slow[key] > 3 else what
            resent = any(level == key[1] and attempt > key[2] for _, level, attempt in self.log)
            if what == "ok" or (what == "late" and resent):
                out.append(Message(RecordDict({"metrics": MetricRecord(
                    {"noise-index": c["noise-index"], "try": c["try"]})}), reply_to=m))
            elif what == "error" or (what == "late error" and resent):
                out.append(Message(Error(code=5, reason="Node Unavailable"), reply_to=m))
        return out


def send(grid, retries=2, reply_timeout=0.0, server_round=4):
    strategy = MSNATStrategy(SIGMAS)
    messages = strategy.configure_train(server_round, strategy.trainable(
        _arrays()), ConfigRecord(), grid)
    retried = []
    retrying = RetryingGrid(grid, retries, reply_timeout, retried.append, poll_seconds=0.01)
    replies = retrying.send_and_receive(messages, timeout=3600)
    return sorted((int(r.content["metrics"]["noise-index"]), int(r.content["metrics"]["try"]))
                  for r in replies), retried


def _arrays():
    return ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})


def test_an_error_reply_is_sent_again_to_the_other_node():
    grid = ScriptedGrid([1, 2], {(2, 1, 1): "error"})  # level 1 goes to node 2 first
    replies, retried = send(grid)
    assert replies == [(0, 1), (1, 2), (2, 1)]  # level 1 answered on its second try
    assert (1, 1, 2) in grid.log  # ... by node 1
    (record,) = retried
    assert record == {"round": 4, "noise-index": 1, "sigma": 0.2, "try": 1, "node": 2,
                      "reason": "error 5: Node Unavailable", "resent_to": 1}


def test_a_missing_reply_is_sent_again_after_the_reply_timeout():
    grid = ScriptedGrid([1, 2], {(1, 0, 1): "silent"})
    replies, retried = send(grid, reply_timeout=0.05)
    assert replies == [(0, 2), (1, 1), (2, 1)]
    assert retried[0]["reason"] == "no reply within 0.05 s" and retried[0]["resent_to"] == 2


def test_without_a_reply_timeout_a_silent_node_is_waited_for_until_the_callers_timeout():
    grid = ScriptedGrid([1, 2], {(1, 0, 1): "silent"})
    strategy = MSNATStrategy(SIGMAS)
    messages = strategy.configure_train(1, strategy.trainable(_arrays()), ConfigRecord(), grid)
    retrying = RetryingGrid(grid, 0, 0.0, poll_seconds=0.01)
    with pytest.raises(RoundFailed, match="no reply within 0.1 s"):
        retrying.send_and_receive(messages, timeout=0.1)


def test_the_round_fails_naming_level_sigma_nodes_and_reasons_once_tries_are_spent():
    script = {(1, 2, 1): "error", (2, 2, 2): "error", (1, 2, 3): "error"}
    with pytest.raises(RoundFailed) as failed:
        send(ScriptedGrid([1, 2], script), retries=2)
    message = str(failed.value)
    assert message.startswith("round 4: noise level 2 (sigma 0.3) failed after 3 tries")
    for attempt, node in ((1, 1), (2, 2), (3, 1)):
        assert f"try {attempt} on node {node}: error 5: Node Unavailable" in message
    with pytest.raises(RoundFailed, match=r"noise level 2 \(sigma 0.3\) failed after 1 try "):
        send(ScriptedGrid([1, 2], script), retries=0)


def test_a_slow_nodes_reply_after_its_timeout_still_counts_and_the_other_is_ignored():
    grid = ScriptedGrid([1, 2], {(1, 0, 1): "late"})
    replies, retried = send(grid, reply_timeout=0.05)
    assert (2, 0, 2) in grid.log and retried[0]["resent_to"] == 2
    assert replies == [(0, 1), (1, 1), (2, 1)]  # try 1 answered first; try 2's reply dropped


def test_an_error_after_the_timeout_does_not_send_the_level_a_third_time():
    grid = ScriptedGrid([1, 2], {(1, 0, 1): "late error", (2, 0, 2): "silent"},
                        slow=[(2, 0, 2)])
    replies, retried = send(grid, reply_timeout=0.05)
    assert [(n, t) for n, level, t in grid.log if level == 0] == [(1, 1), (2, 2)]
    assert len(retried) == 1 and replies == [(0, 2), (1, 1), (2, 1)]


def test_a_level_is_not_sent_again_to_a_node_still_working_on_it():
    grid = ScriptedGrid([1, 2, 3], {(1, 0, 1): "silent", (2, 0, 2): "silent"})
    replies, _ = send(grid, retries=2, reply_timeout=0.05)
    assert [(n, t) for n, level, t in grid.log if level == 0] == [(1, 1), (2, 2), (3, 3)]
    assert replies == [(0, 3), (1, 1), (2, 1)]
    grid = ScriptedGrid([1, 2], {(1, 0, 1): "silent", (2, 0, 2): "silent"})
    with pytest.raises(RoundFailed, match="noise level 0 .* failed after 2 tries"):
        send(grid, retries=1, reply_timeout=0.05)


def test_a_lone_node_gets_the_level_again_and_no_node_fails_the_round():
    grid = ScriptedGrid([5], {(5, 1, 1): "error"})
    replies, retried = send(grid)
    assert replies == [(0, 1), (1, 2), (2, 1)] and retried[0]["resent_to"] == 5
    grid = ScriptedGrid([5], {(5, 1, 1): "error"}, vanish=True)  # gone after sending
    with pytest.raises(RoundFailed, match="noise level 1 .* no node is connected"):
        send(grid)


def test_a_resend_keeps_the_message_and_only_counts_the_try():
    grid = ScriptedGrid([1, 2], {(2, 1, 1): "error"})
    send(grid)
    first, again = (m for m in grid.sent.values() if m.content["config"]["noise-index"] == 1)
    assert again.metadata.message_type == MessageType.TRAIN
    assert again.content["arrays"] is first.content["arrays"]
    assert {k: v for k, v in again.content["config"].items() if k != "try"} == {
        k: v for k, v in first.content["config"].items() if k != "try"}


def test_the_engine_grid_is_reached_through_the_wrapper():
    grid = ScriptedGrid([1], {})
    grid.anything = "engine specific"
    retrying = RetryingGrid(grid, 1, 0.0)
    assert retrying.get_node_ids() == [1] and retrying.anything == "engine specific"


@pytest.mark.parametrize("text", ["2", "0:1", "1:5", "a:b", "1:1:1", ""])
def test_inject_failure_needs_a_round_and_an_existing_level(text):
    with pytest.raises(ConfigError, match="federation.inject_failure.*ROUND:LEVEL"):
        experiment(**{"federation.inject_failure": text})


def test_retry_keys_are_typed_settings():
    assert experiment().federation.inject_failure is None  # 'off' by default
    exp = experiment(**{"federation.retries": 3, "federation.reply_timeout": 12.5,
                        "federation.inject_failure": "2:4"})
    assert (exp.federation.retries, exp.federation.reply_timeout,
            exp.federation.inject_failure) == (3, 12.5, (2, 4))
    with pytest.raises(ConfigError, match="federation.retries.*>= 0"):
        resolve({"federation.retries": -1})
