"""The ServerApp's evaluation (`analogai_fl.server_app.Evaluator`): which rounds it
evaluates, checkpoints and records, with fusion on and off, and after a resume; and a resume
the ServerApp refuses before any work (`run_experiment`). The `run` fixture (conftest.py) is
a fresh run folder of the default experiment."""

import json

import pytest
from flwr.app import ArrayRecord, Context, RecordDict
from helpers import named

from analogai_fl import config
from analogai_fl.checks import prepare
from analogai_fl.errors import ConfigError
from analogai_fl.outputs import RunFolder
from analogai_fl.reporting import final_table
from analogai_fl.schema import CONF_KEY
from analogai_fl.server_app import Evaluator, run_experiment
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


def test_a_resume_without_the_strategys_server_state_is_refused_and_a_new_run_passes(
        tmp_path, cfg, lenet):
    """FedAvgM keeps momentum between rounds: a run folder whose round has no server-state
    file (written before it was saved) is refused before the folder is touched; the new run
    the message asks for (the folder's settings, without output.resume) passes every check."""
    cfg = named(cfg | {"strategy.name": "fedavgm", "training.client_num_in_total": 2},
                tmp_path)
    old = RunFolder.create(Experiment.from_config(cfg).output, config.dump_yaml(cfg))
    old.save_checkpoint(1, [lenet.state_dict()], fused=True)  # and no server state
    before = sorted(p.name for p in old.path.rglob("*"))
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"output.resume": str(old.path)})
    with pytest.raises(ConfigError, match=r"strategy 'fedavgm' keeps server state .* did not "
                                          r"save with round 1 .*Start a new run instead$"):
        run_experiment(None, context)  # refused before the grid is used
    assert sorted(p.name for p in old.path.rglob("*")) == before
    fresh = prepare({CONF_KEY: str(old.path / "config.yaml")})  # the advice, followed
    assert fresh.exp.output.resume == "" and fresh.exp.strategy.name == "fedavgm"
    resumed = prepare(context.run_config).exp.config
    assert {k: v for k, v in fresh.exp.config.items() if k != "output.resume"} == {
        k: v for k, v in resumed.items() if k != "output.resume"}
