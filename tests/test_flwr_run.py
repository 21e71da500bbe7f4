"""End to end through Flower's own CLI: `flwr run .` on the local simulation runtime.

`flwr run --stream` exits 0 even when the ServerApp raised, so every run here is judged by
its status from `flwr ls` and by the files it wrote.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import local_training

from analogai_fl import flwr_cli
from analogai_fl.data import load_data
from analogai_fl.flwr_cli import flwr_env
from analogai_fl.models import build_model
from analogai_fl.settings import Experiment

pytestmark = pytest.mark.e2e  # every test here starts `flwr run`

ENV: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def flwr_home(tmp_path_factory):
    """A private Flower home; the SuperLink started from it is stopped afterwards (one that
    was already running is used as it is and left alone)."""
    home = tmp_path_factory.mktemp("flwr_home")
    ENV.update(flwr_env({"FLWR_HOME": str(home)}))
    yield home
    flwr_cli.stop_local_superlink(home)  # by process id: those started with this FLWR_HOME


def flwr_run(run_config: str) -> tuple[str, str]:
    return flwr_cli.flwr_run(run_config, ENV, timeout=900)


def completed(run_config: str) -> str:
    return flwr_cli.completed_run(run_config, ENV, timeout=900)


def run_folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.exists() else []


def rounds(folder: Path, name: str = "metrics.jsonl") -> list[int]:
    return [json.loads(line)["round"] for line in (folder / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("runs")
    log = completed(f"training.rounds=2 inference.repeats=2 inference.drift_times='1,86400' "
                    f"output.tensorboard=true output.dir='{out}'")
    (folder,) = run_folders(out)
    return folder, log


def test_default_experiment_writes_metrics_with_pcm_entries(default_run):
    folder, log = default_run
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records:
        assert set(r["pcm"]) == {"1s", "1d"}
        assert all(0 <= v["mean"] <= 1 and v["std"] >= 0 for v in r["pcm"].values())
        assert r["protocol"]["name"] == "realistic" and r["protocol"]["device"] == "PCM"
    assert records[-1]["clean_acc"] > records[0]["clean_acc"]
    assert "Test accuracy (%): clean digital vs PCM" in log


def test_all_five_noise_levels_train_each_round_on_two_nodes(default_run):
    folder, _ = default_run
    clients = [json.loads(x) for x in (folder / "clients.jsonl").read_text().splitlines()]
    for r in (1, 2):
        assert sorted(c["sigma"] for c in clients if c["round"] == r) == [
            0.10, 0.15, 0.20, 0.25, 0.30]
    assert all({"train_loss", "train_acc"} <= set(c) for c in clients)


def test_checkpoints_load_as_plain_state_dicts(default_run):
    folder, _ = default_run
    model = build_model("lenet", 1, 10, 32)
    for r in (1, 2):
        model.load_state_dict(torch.load(folder / "checkpoints" / f"round_{r:04d}.pt",
                                         weights_only=True))
    assert (folder / "config.yaml").is_file() and (folder / "summary.json").is_file()


def test_a_run_leaves_its_curves_drawn_from_its_records(default_run):
    from analogai_fl.curves import CURVES_FILE, RunCurves

    folder, _ = default_run
    assert (folder / CURVES_FILE).read_bytes()[:4] == b"\x89PNG"
    curves = RunCurves.read(folder)
    assert [m["round"] for m in curves.metrics] == rounds(folder)
    assert curves.drift_labels() and len(curves.sigmas()) == 5


def test_a_run_resumes_from_its_last_round(default_run):
    folder, _ = default_run
    completed(f"output.resume='{folder}' training.rounds=3 inference.repeats=1")
    assert rounds(folder) == [0, 1, 2, 3]
    # output.tensorboard: the ServerApp's event stream, continued by the resume
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("accuracy/clean")] == [0, 1, 2, 3]
    assert [e.step for e in events.Scalars("accuracy/chip_1d")] == [0, 1, 2, 3]
    assert [e.step for e in events.Scalars("client_loss/sigma_0.3")] == [1, 2, 3]
    assert sorted(set(rounds(folder, "clients.jsonl"))) == [1, 2, 3]
    assert (folder / "checkpoints" / "round_0003.pt").is_file()


def test_fusion_off_from_a_conf_file_keeps_k_models(tmp_path):
    conf = tmp_path / "no_fi.yaml"
    conf.write_text("training:\n  use_fl: false\n  client_num_in_total: 2\n")
    completed(f"conf='{conf}' training.rounds=1 inference.platform.aihwkit=false "
              f"output.dir='{tmp_path / 'runs'}'")
    (folder,) = run_folders(tmp_path / "runs")
    assert folder.name.startswith("no_fi-")
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert [m["sigma"] for m in record["models"]] == [0.10, 0.15]
    assert "pcm" not in record  # the seed's alias switched the analog evaluation off
    assert {p.name for p in (folder / "checkpoints").iterdir()} == {
        "round_0001_noise_0.pt", "round_0001_noise_1.pt"}


def test_a_failing_server_app_is_detected_and_writes_nothing(tmp_path):
    status, log = flwr_run(f"training.rounds=0 output.dir='{tmp_path}'")
    assert status == "finished:failed"
    assert "training.rounds" in log and ">= 1" in log
    assert run_folders(tmp_path) == []


# Every built-in strategy runs one round through Flower, each with a different recovery
# option or partition, so the options are also shown to reach the clients through the
# strategy's train message (the client reads no file of its own).
STRATEGY_RUNS = {
    "fedavg": "recovery.optimizer.sam=true",
    "fedprox": "recovery.adversarial.PGD.use=true recovery.adversarial.PGD.steps=2 "
               "data.partition='iid'",
    "fedavgm": "recovery.adversarial.FGSM.use=true",
    "fedadam": "recovery.qat=true",
    "fedyogi": "recovery.noise_1.act_inject.use=true",
    "fedadagrad": "recovery.optimizer.adaptive=true data.partition='dirichlet' data.alpha=1.0",
}


@pytest.mark.parametrize("strategy", sorted(STRATEGY_RUNS))
def test_each_strategy_runs_a_round_with_noise_levels_and_pcm(strategy, tmp_path):
    from analogai_fl.config import resolve
    from analogai_fl.training import passes_per_example

    options = STRATEGY_RUNS[strategy]
    completed(f"strategy.name='{strategy}' {options} training.client_num_in_total=2 "
              f"training.rounds=1 inference.repeats=1 inference.drift_times='86400' "
              f"output.dir='{tmp_path}'")
    (folder,) = run_folders(tmp_path)
    cfg = resolve({"conf": str(folder / "config.yaml")})
    assert cfg["strategy.name"] == strategy
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["round"] == 1 and 0 <= record["pcm"]["1d"]["mean"] <= 1
    clients = [json.loads(x) for x in (folder / "clients.jsonl").read_text().splitlines()]
    assert sorted(c["sigma"] for c in clients) == [0.10, 0.15]
    for c in clients:
        setting = local_training(cfg, c["sigma"], 0.0, int(c["noise-index"]))
        assert c["sample_passes"] == c["num-examples"] * passes_per_example(setting)
    train_size = len(load_data(Experiment.from_config(cfg).data).train)
    shares = sum(c["num-examples"] for c in clients)
    # full: every client sees the whole training split; iid/dirichlet: disjoint shards of it
    assert shares == (train_size if "partition" in options else 2 * train_size)


# --- faults: refused before any work, any split size, exact resume, divergence ---------------

def test_a_value_the_code_cannot_use_fails_before_a_run_folder_exists(tmp_path):
    status, log = flwr_run(f"inference.protocols.realistic.adc_bits=1 output.dir='{tmp_path}'")
    assert status == "finished:failed"
    assert "'inference.protocols.realistic.adc_bits' expects an integer >= 0, not 1" in log
    assert "ZeroDivisionError" not in log and run_folders(tmp_path) == []


def test_a_last_batch_of_one_example_trains(tmp_path):
    """65 training images, batch 64: the last batch holds one image, and ResNet-18 at 8x8
    has 1x1 maps in its last stage, where BatchNorm needs two values per channel."""
    completed(f"model.name='resnet18' data.image_size=8 data.max_train_examples=65 "
              f"training.client_num_in_total=1 training.rounds=1 training.use_neg=false "
              f"inference.platform.aihwkit.use=false output.dir='{tmp_path}'")
    (folder,) = run_folders(tmp_path)
    (client,) = [json.loads(x) for x in (folder / "clients.jsonl").read_text().splitlines()]
    assert client["num-examples"] == 65


def final_state(folder: Path, server_round: int) -> dict:
    return torch.load(folder / "checkpoints" / f"round_{server_round:04d}.pt", weights_only=True)


def test_a_resumed_fedavgm_run_equals_an_uninterrupted_one(tmp_path):
    """FedAvgM's server momentum is saved with each checkpoint and restored on resume."""
    common = ("strategy.name='fedavgm' training.client_num_in_total=2 "
              "inference.platform.aihwkit.use=false data.max_train_examples=300")
    completed(f"{common} training.rounds=2 output.dir='{tmp_path / 'straight'}'")
    completed(f"{common} training.rounds=1 output.dir='{tmp_path / 'split'}'")
    (split,) = run_folders(tmp_path / "split")
    assert (split / "checkpoints" / "round_0001_server.pt").is_file()
    completed(f"output.resume='{split}' training.rounds=2")
    (straight,) = run_folders(tmp_path / "straight")
    expected, resumed = final_state(straight, 2), final_state(split, 2)
    assert all(torch.equal(resumed[k], v) for k, v in expected.items())
    # a run folder without the server state cannot be resumed as the same experiment
    (split / "checkpoints" / "round_0002_server.pt").unlink()
    status, log = flwr_run(f"output.resume='{split}' training.rounds=3")
    assert status == "finished:failed" and "did not save with round 2" in log
    assert rounds(split) == [0, 1, 2]  # nothing was rewound or appended


SMALL = ("training.client_num_in_total=2 training.rounds=3 data.max_train_examples=300 "
         "inference.repeats=1 inference.drift_times='1,86400'")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    completed(f"{SMALL} output.dir='{out}'")
    (folder,) = run_folders(out)
    return folder


def same_rounds(folder: Path, reference: Path) -> None:
    """Every evaluated round of `folder` equals the reference run's, and so does the final
    model (accuracies compared exactly: same seeds, same computation)."""
    def evaluated(f: Path) -> list[tuple]:
        records = [json.loads(x) for x in (f / "metrics.jsonl").read_text().splitlines()]
        return [(r["round"], r["clean_acc"], r["val_acc"],
                 {t: v["mean"] for t, v in r["pcm"].items()}) for r in records]

    assert evaluated(folder) == evaluated(reference)
    final, reference_final = final_state(folder, 3), final_state(reference, 3)
    assert all(torch.equal(final[k], v) for k, v in reference_final.items())


def test_a_failed_client_without_retries_stops_the_run_and_resume_equals_uninterrupted(
        uninterrupted, tmp_path):
    status, log = flwr_run(f"{SMALL} federation.retries=0 federation.inject_failure='2:1' "
                           f"output.dir='{tmp_path}'")
    assert status == "finished:failed"
    (folder,) = run_folders(tmp_path)
    failed = (folder / "failed.txt").read_text()
    assert failed.startswith("round 2: noise level 1 (sigma 0.15) failed after 1 try (try 1 "
                             "on node ")
    assert "noise level 1 fails its first try in round 2" in failed  # the ClientApp's error
    assert rounds(folder) == [0, 1]
    completed(f"output.resume='{folder}' federation.inject_failure='off'")
    same_rounds(folder, uninterrupted)


def test_a_client_that_fails_once_is_sent_again_and_the_run_is_unchanged(uninterrupted,
                                                                         tmp_path):
    log = completed(f"{SMALL} federation.retries=1 federation.inject_failure='2:1' "
                    f"output.dir='{tmp_path}'")
    (folder,) = run_folders(tmp_path)
    records = [json.loads(x) for x in (folder / "clients.jsonl").read_text().splitlines()]
    (retry,) = [r for r in records if "retry" in r]
    assert retry["round"] == 2 and retry["retry"]["noise-index"] == 1
    assert retry["retry"]["try"] == 1 and "fails its first try" in retry["retry"]["reason"]
    assert "[round 2] noise level 1 (sigma 0.15) try 1 on node" in log
    same_rounds(folder, uninterrupted)


def test_a_diverging_run_stops_at_the_round_and_resumes_from_the_last_good_one(tmp_path):
    status, log = flwr_run(f"training.rounds=2 training.lr=1000.0 training.optimizer='sgd' "
                           f"training.client_num_in_total=2 inference.platform.aihwkit.use=false "
                           f"output.dir='{tmp_path}'")
    assert status == "finished:failed"
    (folder,) = run_folders(tmp_path)
    failed = (folder / "failed.txt").read_text()
    assert "round 1: 2 of 2 clients failed" in failed
    assert "client noise_0 (sigma 0.1, node" in failed and "training loss is nan" in failed
    assert "try a smaller training.lr (now 1000)" in failed
    assert f"output.resume='{folder}'" in failed and failed.splitlines()[0] in log
    assert rounds(folder) == [0]  # the NaN models were neither evaluated nor checkpointed
    assert list((folder / "checkpoints").iterdir()) == []
    # the advice followed: round 0 is the last good one, so the run starts again from
    # round 1 in the same folder, and ends as the same run without the failure would
    completed(f"output.resume='{folder}' training.lr=0.001 training.optimizer='adam'")
    assert rounds(folder) == [0, 1, 2] and not (folder / "failed.txt").exists()
    completed(f"training.rounds=2 training.client_num_in_total=2 "
              f"inference.platform.aihwkit.use=false output.dir='{tmp_path / 'again'}'")
    (uninterrupted,) = run_folders(tmp_path / "again")

    def accuracies(f: Path) -> list[tuple]:
        return [(r["round"], r["clean_acc"], r["val_acc"]) for r in map(
            json.loads, (f / "metrics.jsonl").read_text().splitlines())]

    assert accuracies(folder) == accuracies(uninterrupted)
    final, reference = final_state(folder, 2), final_state(uninterrupted, 2)
    assert all(torch.equal(final[k], v) for k, v in reference.items())


def test_a_run_that_diverges_later_resumes_from_its_last_good_round(tmp_path):
    common = "training.client_num_in_total=2 inference.platform.aihwkit.use=false"
    completed(f"{common} training.rounds=1 output.dir='{tmp_path}'")
    (folder,) = run_folders(tmp_path)
    status, _ = flwr_run(f"output.resume='{folder}' training.rounds=2 training.lr=1000.0 "
                         "training.optimizer='sgd'")
    assert status == "finished:failed"
    assert "round 2: 2 of 2 clients failed" in (folder / "failed.txt").read_text()
    assert "its last good round is 1" in (folder / "failed.txt").read_text()
    assert rounds(folder) == [0, 1]
    assert not (folder / "checkpoints" / "round_0002.pt").exists()
    completed(f"output.resume='{folder}' training.rounds=2 training.lr=0.001 "
              "training.optimizer='adam'")
    assert rounds(folder) == [0, 1, 2] and not (folder / "failed.txt").exists()


def test_the_cleanup_stops_exactly_the_processes_of_its_flower_home(tmp_path):
    import os
    import sys
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env=os.environ | {"FLWR_HOME": str(tmp_path / "ours")})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env=os.environ | {"FLWR_HOME": str(tmp_path / "other")})
    try:
        assert flwr_cli.local_superlink_pids(tmp_path / "ours") == [ours.pid]
        assert flwr_cli.stop_local_superlink(tmp_path / "ours") == [ours.pid]
        assert ours.wait(timeout=10) != 0 and other.poll() is None  # the other one lives on
    finally:
        other.kill()
        other.wait()


def test_an_analog_run_from_a_checkpoint_resumes_exactly(tmp_path):
    """HWA's recipe through flwr run (the chip's forward, the clip, SGD with weight decay, a
    cosine schedule, no client validation) from model.init: the run starts from the
    checkpoint's model (round 0 measures it), each round trains at its scheduled lr, and a
    resumed run equals an uninterrupted one, lrs included."""
    from analogai_fl.training import scheduled_lr

    start = tmp_path / "start.pt"
    torch.manual_seed(3)
    torch.save(build_model("lenet", 1, 10, 32).state_dict(), start)
    common = (f"training.noise_model='analog' model.init='{start}' training.client_num_in_total=2 "
              "training.use_neg=false inference.platform.aihwkit.use=false "
              "data.max_train_examples=300 training.schedule='cosine' training.optimizer='sgd' "
              "training.lr=0.01 training.clip_sigma=2.5 training.weight_decay=0.0005 "
              "training.client_validation=false")
    completed(f"{common} training.rounds=2 output.dir='{tmp_path / 'straight'}'")
    completed(f"{common} training.rounds=1 output.dir='{tmp_path / 'split'}'")
    (split,) = run_folders(tmp_path / "split")
    completed(f"output.resume='{split}' training.rounds=2")
    (straight,) = run_folders(tmp_path / "straight")
    expected, resumed = final_state(straight, 2), final_state(split, 2)
    assert all(torch.equal(resumed[k], v) for k, v in expected.items())
    for folder in (straight, split):
        replies = [json.loads(x) for x in (folder / "clients.jsonl").read_text().splitlines()]
        assert [(c["round"], c["lr"]) for c in replies] == [
            (r, pytest.approx(scheduled_lr(0.01, "cosine", r, 2))) for r in (1, 1, 2, 2)]
        assert not any("val_acc_noisy" in c for c in replies)
    first = json.loads((straight / "metrics.jsonl").read_text().splitlines()[0])
    assert first["round"] == 0
    from analogai_fl.data import load_data
    from analogai_fl.settings import load
    from analogai_fl.training import accuracy

    exp = load({})
    model = build_model("lenet", 1, 10, 32)
    model.load_state_dict(torch.load(start, weights_only=True))
    data = load_data(dataclasses.replace(exp.data, max_train_examples=300))
    assert first["clean_acc"] == accuracy(model, data.test)  # round 0 is the checkpoint
