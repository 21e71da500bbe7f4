import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from flwr.supercore.task_identity import TaskIdentity

from strategies import BUILT_INS, build_strategy
from strategies.msnat import MSNATStrategy, fuse, join_models, split_models


def record(**arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def values(rec: ArrayRecord) -> dict:
    return {k: a.numpy().tolist() for k, a in rec.items()}


A = record(w=np.array([1.0, 2.0], dtype=np.float32), **{"bn.running_mean": np.float32([0.0]),
           "bn.num_batches_tracked": np.int64(3)})
B = record(w=np.array([3.0, 6.0], dtype=np.float32), **{"bn.running_mean": np.float32([4.0]),
           "bn.num_batches_tracked": np.int64(5)})


def test_uniform_fusion():
    fused = values(fuse([A, B], [1, 1], sigmas=[0.1, 0.2]))
    assert fused == {"w": [2.0, 4.0], "bn.running_mean": [2.0], "bn.num_batches_tracked": 5}


def test_weighted_fusion_and_dtypes():
    fused = fuse([A, B], [3, 1], sigmas=[0.1, 0.2])
    assert values(fused)["w"] == [1.5, 3.0]  # (3*[1,2] + 1*[3,6]) / 4
    assert fused["w"].numpy().dtype == np.float32
    assert fused["bn.num_batches_tracked"].numpy().dtype == np.int64


def test_bn_buffers_from_lowest_sigma():
    fused = values(fuse([A, B], [1, 1], sigmas=[0.3, 0.1], bn_buffers="lowest_sigma"))
    assert fused["bn.running_mean"] == [4.0] and fused["w"] == [2.0, 4.0]


def test_pack_roundtrip_keeps_models_apart():
    models = split_models(join_models([A, B], fused=False), 2, fused=False)
    assert values(models[0]) == values(A) and values(models[1]) == values(B)


@pytest.fixture(autouse=True)
def server_task(monkeypatch):
    """Flower stamps messages with the running task's identity; pretend to be a ServerApp."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


SIGMAS = [0.1, 0.15, 0.2, 0.25, 0.3]


def test_every_noise_level_gets_its_own_message_over_two_nodes():
    strategy = MSNATStrategy(SIGMAS, proximal_mu=0.01, round_offset=4)
    messages = list(strategy.configure_train(1, A, ConfigRecord({"x": 1}), FakeGrid([7, 3])))
    assert [m.content["config"]["sigma"] for m in messages] == SIGMAS
    assert [m.content["config"]["noise-index"] for m in messages] == [0, 1, 2, 3, 4]
    assert [m.metadata.dst_node_id for m in messages] == [3, 7, 3, 7, 3]
    for m in messages:
        assert m.content["config"]["proximal-mu"] == 0.01
        assert m.content["config"]["server-round"] == 5  # offset of a resumed run
        assert m.content["config"]["x"] == 1
        assert m.metadata.message_type == MessageType.TRAIN


def replies(strategy, models, examples):
    sent = list(strategy.configure_train(1, join_models(models, strategy.fusion),
                                         ConfigRecord(), FakeGrid([1])))
    out = []
    for msg, model, n in zip(sent, models, examples):
        content = RecordDict({"arrays": model, "metrics": MetricRecord({
            "num-examples": n, "train_loss": 1.0, "sigma": msg.content["config"]["sigma"],
            "noise-index": msg.content["config"]["noise-index"]})})
        out.append(Message(content, reply_to=msg))
    return out[::-1]  # arrival order must not matter


def test_fusion_weights_by_examples_and_logs_clients():
    seen = []
    strategy = MSNATStrategy([0.1, 0.2], weighting="examples",
                             on_client_metrics=lambda r, m: seen.append((r, m)))
    fused, metrics = strategy.aggregate_train(1, replies(strategy, [A, B], [3, 1]))
    assert values(fused)["w"] == [1.5, 3.0]
    assert "sigma" not in metrics and metrics["train_loss"] == pytest.approx(1.0)
    assert [m["sigma"] for m in seen[0][1]] == [0.1, 0.2]


def test_fusion_off_returns_the_k_models_unchanged():
    strategy = MSNATStrategy([0.1, 0.2], fusion=False)
    packed, _ = strategy.aggregate_train(1, replies(strategy, [A, B], [1, 1]))
    first, second = split_models(packed, 2, fused=False)
    assert values(first) == values(A) and values(second) == values(B)


def test_a_failed_client_fails_the_round():
    strategy = MSNATStrategy([0.1, 0.2])
    with pytest.raises(RuntimeError, match=r"replies for noise levels \[0\]"):
        strategy.aggregate_train(1, replies(strategy, [A, B], [1, 1])[1:])


def two_levels(name, **changes):
    from analogai_fl import config
    cfg = config.defaults() | {"strategy.name": name, "training.client_num_in_total": 2} | changes
    return build_strategy(cfg)


@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_built_in_strategies_send_one_message_per_noise_level(name):
    strategy = two_levels(name)
    messages = list(strategy.configure_train(1, A, ConfigRecord(), FakeGrid([1, 2])))
    assert [m.content["config"]["sigma"] for m in messages] == [0.1, 0.15]
    assert [m.metadata.dst_node_id for m in messages] == [1, 2]


def test_built_ins_aggregate_their_own_way():
    """Same replies, different strategies: FedAvg averages by examples, FedAdam moves the
    current model with a server-side Adam step, FedAvgM with server momentum."""
    current = record(w=np.float32([0.0, 0.0]))
    new_a, new_b = record(w=np.float32([1.0, 2.0])), record(w=np.float32([3.0, 6.0]))
    results = {}
    for name in ("fedavg", "fedadam", "fedavgm"):
        strategy = two_levels(name, **{"strategy.server_lr": 0.5})
        sent = list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid([1])))
        out = [Message(RecordDict({"arrays": m, "metrics": MetricRecord(
            {"num-examples": n, "noise-index": k, "sigma": 0.1})}), reply_to=msg)
            for k, (msg, m, n) in enumerate(zip(sent, [new_a, new_b], [3, 1]))]
        arrays, _ = strategy.aggregate_train(1, out)
        assert arrays["w"].numpy().dtype == np.float32  # server optimisers compute in float64
        results[name] = values(arrays)["w"]
    assert results["fedavg"] == [1.5, 3.0]
    assert results["fedavgm"] == pytest.approx([0.75, 1.5])  # 0 + 0.5 * (avg - 0)
    assert results["fedadam"] != results["fedavg"]
    assert all(0 < v < 0.1 for v in results["fedadam"])  # eta 0.01 step from 0


def test_proximal_mu_follows_feedback_loops_or_fedprox():
    assert two_levels("fedavg", **{"training.use_neg": False}).client_mu == 0.0
    assert two_levels("fedavg").client_mu == 0.01
    assert two_levels("fedprox", **{"training.use_neg": False}).client_mu == 0.01


def test_unknown_strategy_lists_the_valid_ones():
    from analogai_fl.config import ConfigError, resolve
    with pytest.raises(ConfigError, match="strategy.name.*'msnat', 'fedavg'.*got 'krum'"):
        resolve({"strategy.name": "krum"})
    with pytest.raises(ConfigError, match="FI off runs only with strategy.name=msnat"):
        resolve({"strategy.name": "fedadam", "training.use_fl": False})
