"""`output.tensorboard` (`analogai_fl.tensorboard_log`): event files that TensorBoard's own
reader loads, a resumed run continuing the stream without repeated rounds, and a clear error
before any work when the package is missing."""

import importlib.util

import pytest
from helpers import experiment
from tensorboard.backend.event_processing.event_accumulator import (  # the test extra has it
    EventAccumulator,
)

from analogai_fl import checks
from analogai_fl.errors import ConfigError
from analogai_fl.tensorboard_log import TENSORBOARD_DIR, TensorBoardLog


def record(r, clean):
    return {"round": r, "clean_acc": clean, "val_acc": clean - 0.01,
            "pcm": {"1s": {"mean": clean - 0.05, "std": 0.01},
                    "1y": {"mean": clean - 0.1, "std": 0.02}}}


def reply(sigma, loss):
    return {"sigma": sigma, "train_loss": loss, "train_acc": 0.5, "val_acc_noisy": 0.6}


def read(path):
    events = EventAccumulator(str(path / TENSORBOARD_DIR))
    events.Reload()
    return events


def steps(events, tag):
    return [(e.step, round(e.value, 4)) for e in events.Scalars(tag)]


def run_rounds(path, first, last, clean, config="seed: 1\n"):
    log = TensorBoardLog(path, first, config)
    if first == 0:
        log.evaluated(record(0, 0.1))
    for r in range(first + 1, last + 1):
        log.clients(r, [reply(0.1, 1.0 / r), reply(0.2, 2.0 / r)])
        log.evaluated(record(r, clean + 0.01 * r))
    log.close()


def test_the_scalars_and_the_config_read_back_with_tensorboards_reader(tmp_path):
    run_rounds(tmp_path, 0, 3, 0.8)
    events = read(tmp_path)
    assert steps(events, "accuracy/clean") == [(0, 10.0), (1, 81.0), (2, 82.0), (3, 83.0)]
    assert steps(events, "accuracy/chip_1y")[-1] == (3, 73.0)
    assert steps(events, "accuracy_std/chip_1y")[-1] == (3, 2.0)
    assert steps(events, "client_loss/sigma_0.2") == [(1, 2.0), (2, 1.0), (3, 0.6667)]
    assert steps(events, "client_validation/sigma_0.1")[0] == (1, 60.0)
    assert "config" in "".join(events.Tags()["tensors"])


def test_a_resumed_run_continues_the_stream_without_repeating_rounds(tmp_path):
    """Rounds 1-4 were logged, but the last checkpoint is round 2 (the process died in round
    4): the resume trains 3 and 4 again, other values this time; TensorBoard shows each round
    once, the resumed values from round 3 on."""
    run_rounds(tmp_path, 0, 4, 0.8)
    run_rounds(tmp_path, 2, 5, 0.5)
    events = read(tmp_path)
    assert steps(events, "accuracy/clean") == [(0, 10.0), (1, 81.0), (2, 82.0), (3, 53.0),
                                               (4, 54.0), (5, 55.0)]
    assert [s for s, _ in steps(events, "client_loss/sigma_0.1")] == [1, 2, 3, 4, 5]


def test_the_key_without_the_package_is_refused_before_any_work(monkeypatch):
    exp = experiment(**{"output.tensorboard": True})
    checks.check_experiment(exp)  # installed: accepted
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"key 'output.tensorboard' = true needs the "
                                          r"'tensorboard' package.*\.\[tensorboard\]"):
        checks.check_experiment(exp)
    checks.check_experiment(experiment())  # off: not needed
