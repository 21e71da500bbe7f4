import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from helpers import experiment

from analogai_fl.schema import SCHEMA
from analogai_fl.wire import join_models, split_models
from strategies import BUILT_INS, build_strategy
from strategies.fusion import fuse
from strategies.msnat import MSNATStrategy

pytestmark = pytest.mark.usefixtures("server_task")


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
    return build_strategy(experiment(**{"strategy.name": name,
                                        "training.client_num_in_total": 2} | changes))


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
    from analogai_fl.errors import ConfigError
    from analogai_fl.settings import load

    with pytest.raises(ConfigError, match="strategy.name.*'msnat', 'fedavg'.*got 'krum'"):
        load({"strategy.name": "krum"})
    with pytest.raises(ConfigError, match="FI off runs only with strategy.name=msnat"):
        load({"strategy.name": "fedadam", "training.use_fl": False})


# --- state that is not a trainable parameter; server state; non-finite replies -------------

def vgg8_cfg(name, **changes):
    return experiment(**{"strategy.name": name, "training.client_num_in_total": 2,
                         "model.name": "vgg8", "data.image_size": 8} | changes)


def vgg8_round(strategy, current, seed, examples=(3, 1)):
    """One round on a real BatchNorm model: each client moves every parameter a little and
    reports running variances of its own (0.007 .. 6.8, as clients measure them)."""
    rng = np.random.default_rng(seed)
    sent = list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid([1])))
    out = []
    for k, (msg, n) in enumerate(zip(sent, examples)):
        model = {}
        for key, a in current.items():
            x = a.numpy()
            if key.endswith("running_var"):
                x = rng.uniform(0.007, 6.8, x.shape).astype(x.dtype)
            elif key.endswith("running_mean"):
                x = rng.normal(0, 1, x.shape).astype(x.dtype)
            elif key.endswith("num_batches_tracked"):
                x = np.asarray(x + 10 * (k + 1), dtype=x.dtype)
            else:
                x = (x + rng.normal(0, 0.01, x.shape)).astype(x.dtype)
            model[key] = Array(np.asarray(x))
        out.append(Message(RecordDict({"arrays": ArrayRecord(model), "metrics": MetricRecord(
            {"num-examples": n, "noise-index": k, "sigma": 0.1, "train_loss": 1.0})}),
            reply_to=msg))
    return out


def vgg8_state():
    import torch

    from analogai_fl.models import build_model
    torch.manual_seed(0)
    return ArrayRecord(build_model("vgg8", 1, 10, 8).state_dict())


@pytest.mark.parametrize("name", ["msnat", *sorted(BUILT_INS)])
def test_buffers_are_averaged_and_only_parameters_see_the_server_optimiser(name):
    """Flower's server optimisers would move BatchNorm running variances by their own step
    (they stay near 1 or go negative); here every strategy averages buffers like FedAvg and
    applies its own update to trainable parameters only."""
    strategy = build_strategy(vgg8_cfg(name, **{"strategy.server_lr": 0.5}))
    assert "0.running_var" not in strategy.buffer_names  # conv 0 has no buffers
    assert {"1.running_var", "1.num_batches_tracked"} <= strategy.buffer_names
    current = vgg8_state()
    out = vgg8_round(strategy, current, seed=1)
    weights = [3.0, 1.0] if name != "msnat" else [1.0, 1.0]  # msnat: uniform by default
    expected = fuse([m.content["arrays"] for m in out], weights, [0.1, 0.1])
    arrays, _ = strategy.aggregate_train(1, out)
    for key in strategy.buffer_names:
        np.testing.assert_allclose(arrays[key].numpy(), expected[key].numpy(), rtol=1e-6)
        assert arrays[key].numpy().dtype == current[key].numpy().dtype
    assert (arrays["1.running_var"].numpy() > 0.007).all()
    moved = arrays["0.weight"].numpy()
    if name in ("fedavg", "fedprox", "msnat"):
        np.testing.assert_allclose(moved, expected["0.weight"].numpy(), rtol=1e-5)
    else:  # the server optimiser's step, not the average, on parameters
        assert not np.allclose(moved, expected["0.weight"].numpy(), rtol=1e-4)


STATEFUL = ["fedavgm", "fedadam", "fedyogi", "fedadagrad"]


@pytest.mark.parametrize("name", STATEFUL)
def test_resumed_strategy_equals_uninterrupted(name, tmp_path):
    """Three rounds in one go vs one round, a checkpoint (models and server state written
    and read back as a run folder does), and a new strategy resuming at round 1."""
    from analogai_fl.outputs import RunFolder
    cfg = vgg8_cfg(name)

    def rounds(strategy, arrays, seeds):  # Flower counts a resumed run's rounds from 1
        for server_round, seed in enumerate(seeds, start=1):
            arrays, _ = strategy.aggregate_train(server_round,
                                                 vgg8_round(strategy, arrays, seed))
        return arrays

    straight = rounds(build_strategy(cfg), vgg8_state(), [1, 2, 3])
    first = build_strategy(cfg)
    after_one = rounds(first, vgg8_state(), [1])
    assert first.server_state(), f"{name} has server state after a round"
    (tmp_path / "checkpoints").mkdir()
    run = RunFolder(tmp_path)
    run.save_checkpoint(1, [after_one.to_torch_state_dict()], True,
                        server_state=first.server_state())
    _, (state,) = run.last_checkpoint(1, True)
    resumed = build_strategy(cfg, round_offset=1)
    start = ArrayRecord(state)
    resumed.load_server_state(run.server_state(1), start)
    continued = rounds(resumed, start, [2, 3])
    for key, a in straight.items():
        np.testing.assert_array_equal(continued[key].numpy(), a.numpy(), err_msg=key)
    # without the server state the continuation is a different experiment
    fresh = rounds(build_strategy(cfg, round_offset=1), ArrayRecord(state), [2, 3])
    assert not np.array_equal(fresh["0.weight"].numpy(), straight["0.weight"].numpy())


def test_stateless_strategies_have_no_server_state():
    for name in ("msnat", "fedavg", "fedprox"):
        strategy = build_strategy(vgg8_cfg(name))
        assert not strategy.SERVER_STATE
        strategy.aggregate_train(1, vgg8_round(strategy, vgg8_state(), 1))
        assert strategy.server_state() == {}


def test_a_diverged_client_stops_the_round_naming_it():
    from analogai_fl.wire import DIVERGED
    from strategies import RoundFailed
    strategy = MSNATStrategy([0.1, 0.2], round_offset=2)
    out = replies(strategy, [A, B], [1, 1])
    bad = out[0]  # noise level 1 (arrival order is reversed)
    bad.content = RecordDict({"metrics": bad.content["metrics"], DIVERGED: ConfigRecord(
        {"reason": "epoch 1, step 1: training loss is nan; try a smaller training.lr"})})
    with pytest.raises(RoundFailed, match=r"round 3: 1 of 2 clients failed.*client noise_1 "
                       r"\(sigma 0.2, node \d+\) diverged: epoch 1, step 1: training loss is "
                       r"nan; try a smaller training.lr"):
        strategy.aggregate_train(1, out)


@pytest.mark.parametrize("what", ["weights", "loss"])
def test_a_non_finite_reply_is_refused(what):
    from strategies import RoundFailed
    strategy = MSNATStrategy([0.1, 0.2])
    nan_model = record(w=np.float32([np.nan, 1.0]), **{"bn.running_mean": np.float32([0.0]),
                       "bn.num_batches_tracked": np.int64(3)})
    out = replies(strategy, [A, nan_model if what == "weights" else B], [1, 1])
    if what == "loss":
        out[0].content["metrics"]["train_loss"] = float("inf")
    with pytest.raises(RoundFailed, match=r"client noise_1 \(sigma 0.2.*non-finite "
                       + ("model \\(w\\)" if what == "weights" else "loss")):
        strategy.aggregate_train(1, out)


def test_a_diverging_server_update_is_refused():
    from strategies import RoundFailed
    strategy = two_levels("fedavgm", **{"strategy.server_lr": 1e38})
    current = record(w=np.float32([0.0, 0.0]))
    sent = list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid([1])))
    out = [Message(RecordDict({"arrays": record(w=np.float32([1e3, 2e3])), "metrics": MetricRecord(
        {"num-examples": 1, "noise-index": k, "sigma": 0.1})}), reply_to=msg)
        for k, msg in enumerate(sent)]
    with pytest.raises(RoundFailed, match="aggregated model is not finite.*strategy.eta or "
                       "strategy.server_lr"):
        strategy.aggregate_train(1, out)


@pytest.mark.parametrize("name,key", [("fedavgm", "strategy.server_lr"),
                                      ("fedadam", "strategy.eta")])
def test_a_diverging_server_update_is_finite_with_a_smaller_server_learning_rate(name, key):
    """The same replies that make the server's update overflow at a huge server learning
    rate aggregate to a finite model at the default one, as the message advises."""
    from strategies import RoundFailed

    def aggregate(rate):
        strategy = two_levels(name, **{key: rate})
        sent = list(strategy.configure_train(1, record(w=np.float32([0.0, 0.0])), ConfigRecord(),
                                             FakeGrid([1])))
        out = [Message(RecordDict({"arrays": record(w=np.float32([1e3, 2e3])),
                                   "metrics": MetricRecord({"num-examples": 1, "noise-index": k,
                                                            "sigma": 0.1})}), reply_to=msg)
               for k, msg in enumerate(sent)]
        return strategy.aggregate_train(1, out)

    with pytest.raises(RoundFailed, match=r"try a smaller server learning rate "
                                          r"\(strategy.eta or strategy.server_lr\)$"):
        aggregate(1e39)
    arrays, _ = aggregate(SCHEMA[key].default)  # the advice, followed: the default rate
    assert np.isfinite(arrays["w"].numpy()).all()
