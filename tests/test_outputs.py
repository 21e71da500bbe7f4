"""Run folders (`analogai_fl.outputs`): the reusable config, checkpoints, pruning, rewinding.
The `run` fixture (conftest.py) is a fresh run folder of the default experiment."""

import pytest
import torch
from helpers import named

from analogai_fl import config
from analogai_fl.outputs import RunFolder


def test_run_folder_holds_a_reusable_config(run, cfg, tmp_path):
    assert run.path.name.startswith("t-")
    assert config.load_yaml(run.path / "config.yaml") == named(cfg, tmp_path)


def test_checkpoints_are_plain_state_dicts(run, lenet):
    run.save_checkpoint(1, [lenet.state_dict()], fused=True)
    state = torch.load(run.checkpoints / "round_0001.pt", weights_only=True)
    assert state.keys() == lenet.state_dict().keys()


def test_last_complete_checkpoint_and_pruning(run, lenet):
    states = [lenet.state_dict()] * 2
    for r in (1, 2, 3):
        run.save_checkpoint(r, states, fused=False, keep=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "round_0002_noise_0.pt", "round_0002_noise_1.pt",
        "round_0003_noise_0.pt", "round_0003_noise_1.pt"]
    (run.checkpoints / "round_0003_noise_1.pt").unlink()  # a crash in the middle of saving
    found_round, found = run.last_checkpoint(2, fused=False)
    assert found_round == 2 and len(found) == 2


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(config.ConfigError, match="output.resume.*not a run folder"):
        RunFolder.open(tmp_path)


def test_rewind_drops_the_unfinished_round(run):
    for r in (1, 2, 3):
        run.append_jsonl("metrics.jsonl", {"round": r})
        run.append_jsonl("clients.jsonl", {"round": r, "sigma": 0.1})
    run.rewind(2)
    assert [r["round"] for r in run.read_jsonl("metrics.jsonl")] == [1, 2]
    assert [r["round"] for r in run.read_jsonl("clients.jsonl")] == [1, 2]




def _cut_short(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # a partial copy, a full disk


def test_a_damaged_newest_checkpoint_is_named_and_the_round_before_is_used(run, lenet):
    for r in (1, 2):
        run.save_checkpoint(r, [lenet.state_dict()], fused=True)
    _cut_short(run.checkpoints / "round_0002.pt")
    said = []
    found_round, (state,) = run.last_checkpoint(1, fused=True, warn=said.append)
    assert found_round == 1 and state.keys() == lenet.state_dict().keys()
    (message,) = said
    assert str(run.checkpoints / "round_0002.pt") in message and "damaged" in message
    assert "continuing from round 1" in message
    _cut_short(run.checkpoints / "round_0001.pt")
    said.clear()
    assert run.last_checkpoint(1, fused=True, warn=said.append) is None
    assert len(said) == 2 and all("starting again from round 1" in m for m in said)


def test_a_damaged_line_of_metrics_is_named_with_its_file_and_line(run):
    run.append_jsonl("metrics.jsonl", {"round": 1})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "clean_ac')  # killed while writing
    with pytest.raises(config.ConfigError, match=r"metrics.jsonl' line 2 is damaged"):
        run.read_jsonl("metrics.jsonl")
