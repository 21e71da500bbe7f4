import json

import pytest
import torch
from flwr.app import ArrayRecord

from analogai_fl import config
from analogai_fl.outputs import RunFolder
from analogai_fl.reporting import final_table
from analogai_fl.server_app import Evaluator
from analogai_fl.settings import Experiment


def named(cfg, tmp_path) -> dict:
    return cfg | {"output.dir": str(tmp_path), "output.name": "t"}


@pytest.fixture
def run(tmp_path, cfg):
    return RunFolder.create(Experiment.from_config(named(cfg, tmp_path)).output,
                            config.dump_yaml(named(cfg, tmp_path)))


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


def test_evaluator_records_every_evaluated_round(run, cfg, digits, lenet):
    cfg = cfg | {"inference.repeats": 2, "inference.drift_times": [1.0, 86400.0],
                 "inference.every": 2, "training.rounds": 3}
    evaluator = Evaluator(Experiment.from_config(cfg), run, digits, first_round=0)
    arrays = ArrayRecord(lenet.state_dict())
    assert evaluator(1, arrays) is None               # not an evaluation round ...
    assert (run.checkpoints / "round_0001.pt").exists()  # ... but checkpointed
    metrics = evaluator(2, arrays)
    assert metrics is not None and evaluator(3, arrays) is not None  # last round always
    records = run.read_jsonl("metrics.jsonl")
    assert [r["round"] for r in records] == [2, 3]
    assert set(records[0]["pcm"]) == {"1s", "1d"}
    assert records[0]["protocol"]["name"] == "realistic"
    assert metrics["pcm_1d"] == records[0]["pcm"]["1d"]["mean"]
    table, summary = final_table(records, fused=True)
    assert summary["final"]["round"] == 3 and table.row_count == 2


def test_evaluator_with_fusion_off_reports_each_model(run, cfg, digits, lenet):
    from analogai_fl.wire import join_models
    cfg = cfg | {"training.use_fl": False, "training.client_num_in_total": 2,
                 "inference.platform.aihwkit.use": False}
    evaluator = Evaluator(Experiment.from_config(cfg), run, digits, first_round=0)
    evaluator(1, join_models([ArrayRecord(lenet.state_dict())] * 2, fused=False))
    record = run.read_jsonl("metrics.jsonl")[0]
    assert [m["sigma"] for m in record["models"]] == [0.10, 0.15]
    assert "pcm" not in record  # aihwkit off: clean accuracy only
    assert (run.checkpoints / "round_0001_noise_1.pt").exists()


def test_rewind_drops_the_unfinished_round(run):
    for r in (1, 2, 3):
        run.append_jsonl("metrics.jsonl", {"round": r})
        run.append_jsonl("clients.jsonl", {"round": r, "sigma": 0.1})
    run.rewind(2)
    assert [r["round"] for r in run.read_jsonl("metrics.jsonl")] == [1, 2]
    assert [r["round"] for r in run.read_jsonl("clients.jsonl")] == [1, 2]


def test_resumed_evaluator_skips_the_round_it_resumed_from(run, cfg, digits, lenet):
    run.append_jsonl("metrics.jsonl", {"round": 2, "val_acc": 0.5, "clean_acc": 0.5})
    evaluator = Evaluator(Experiment.from_config(cfg | {"inference.platform.aihwkit.use": False}),
                          run, digits,
                          first_round=2)
    assert evaluator(0, ArrayRecord(lenet.state_dict())) is None
    assert [r["round"] for r in evaluator.records] == [2]
    evaluator(1, ArrayRecord(lenet.state_dict()))
    assert json.loads((run.path / "metrics.jsonl").read_text().splitlines()[-1])["round"] == 3
