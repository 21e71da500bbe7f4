"""End to end through Flower's own CLI: `flwr run .` on the local simulation runtime.

`flwr run --stream` exits 0 even when the ServerApp raised, so every run here is judged by
its status from `flwr ls` and by the files it wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analogai_fl.models import build_model

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def flwr_home(tmp_path_factory):
    """A private Flower home; the SuperLink started from it is stopped afterwards (one that
    was already running is used as it is and left alone)."""
    home = tmp_path_factory.mktemp("flwr_home")
    ENV.update(os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                             "FLWR_HOME": str(home),
                             # dependencies are installed: no per-run sync (and no network)
                             "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
    yield home
    subprocess.run(["pkill", "-f", f"{home}/"], check=False)


def flwr_run(run_config: str) -> tuple[str, str]:
    """(status, log) of `flwr run . --stream --run-config run_config`."""
    done = subprocess.run([BIN / "flwr", "run", ".", "--stream", "--run-config", run_config],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    started = re.search(r"Successfully started run (\d+)", log)
    assert started, f"flwr run did not start a run (exit {done.returncode}):\n{log}"
    listed = subprocess.run([BIN / "flwr", "ls", "--run-id", started.group(1), "--format",
                             "json"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=120)
    return json.loads(listed.stdout)["runs"][0]["status"], log


def completed(run_config: str) -> str:
    status, log = flwr_run(run_config)
    assert status == "finished:completed", f"run {status}:\n{log[-6000:]}"
    return log


def run_folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.exists() else []


def rounds(folder: Path, name: str = "metrics.jsonl") -> list[int]:
    return [json.loads(line)["round"] for line in (folder / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("runs")
    log = completed(f"training.rounds=2 inference.repeats=2 inference.drift_times='1,86400' "
                    f"output.dir='{out}'")
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


def test_a_run_resumes_from_its_last_round(default_run):
    folder, _ = default_run
    completed(f"output.resume='{folder}' training.rounds=3 inference.repeats=1")
    assert rounds(folder) == [0, 1, 2, 3]
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
