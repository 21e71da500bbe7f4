"""The ServerApp's evaluation (`analogai_fl.server_app.Evaluator`): which rounds it
evaluates, checkpoints and records, with fusion on and off, and after a resume. The `run`
fixture (conftest.py) is a fresh run folder of the default experiment."""

import json

from flwr.app import ArrayRecord

from analogai_fl.reporting import final_table
from analogai_fl.server_app import Evaluator
from analogai_fl.settings import Experiment


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


def test_resumed_evaluator_skips_the_round_it_resumed_from(run, cfg, digits, lenet):
    run.append_jsonl("metrics.jsonl", {"round": 2, "val_acc": 0.5, "clean_acc": 0.5})
    evaluator = Evaluator(Experiment.from_config(cfg | {"inference.platform.aihwkit.use": False}),
                          run, digits,
                          first_round=2)
    assert evaluator(0, ArrayRecord(lenet.state_dict())) is None
    assert [r["round"] for r in evaluator.records] == [2]
    evaluator(1, ArrayRecord(lenet.state_dict()))
    assert json.loads((run.path / "metrics.jsonl").read_text().splitlines()[-1])["round"] == 3
