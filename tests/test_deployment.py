"""The app on Flower's Deployment Engine: a SuperLink and SuperNodes started with Flower's own
commands (tests/federation.py), TLS on every connection, SuperNode authentication, runs
submitted with `flwr run . <connection>`; a lost SuperNode handled by the retry policy.
Loopback interface and free ports only; every process started here is stopped by its
process group id."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from federation import CONNECTION, NO_CA, Federation

from analogai_fl.flwr_cli import completed_run, flwr_run

pytestmark = [pytest.mark.deployment, pytest.mark.e2e]
FAST = "inference.repeats=1 inference.drift_times='1,31536000'"
SIGMAS = [0.10, 0.15, 0.20, 0.25, 0.30]  # the default experiment's


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("federation"))
    try:
        fed.start_superlink()
        fed.nodes = {i: fed.register(i) for i in (1, 2)}  # key 3 stays unregistered
        for i in (1, 2):
            fed.start_supernode(i, data_root=fed.folder / f"node_{i}_data")
        fed.wait_online(list(fed.nodes.values()))
        yield fed
    finally:
        fed.stop_all()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def only_folder(parent: Path) -> Path:
    (folder,) = [p for p in parent.iterdir() if p.is_dir()]
    return folder


def test_two_secured_supernodes_run_the_default_experiment(federation, tmp_path):
    started = time.time()
    completed_run(f"training.rounds=2 {FAST} output.dir='{tmp_path}'", federation.env,
                  timeout=900, superlink=CONNECTION)
    print(f"\n2 rounds on the Deployment Engine (2 SuperNodes, TLS): "
          f"{time.time() - started:.0f} s wall")
    folder = only_folder(tmp_path)
    metrics = lines(folder / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert all(set(m["pcm"]) == {"1s", "1y"} for m in metrics)
    assert metrics[-1]["clean_acc"] > metrics[0]["clean_acc"]
    clients = lines(folder / "clients.jsonl")
    assert sorted(c["sigma"] for c in clients if c["round"] == 2) == [
        0.10, 0.15, 0.20, 0.25, 0.30]
    assert {c["node"] for c in clients} == set(federation.nodes.values())  # both, only them
    assert (folder / "summary.json").is_file() and (folder / "checkpoints").is_dir()


def test_an_unregistered_supernode_is_refused(federation):
    node = federation.start_supernode(3, max_retries=1)
    try:
        code = node.wait(120)
    finally:
        federation.stop("supernode_3")
    assert code != 0
    assert "Failed to activate SuperNode" in federation.log("supernode_3")
    assert set(federation.online()) == set(federation.nodes.values())


def test_the_cli_without_the_ca_certificate_cannot_submit_a_run(federation):
    def runs() -> int:
        return len(json.loads(federation.flwr("ls", CONNECTION, "--format", "json").stdout)
                   ["runs"])

    before = runs()
    refused = federation.flwr("run", ".", NO_CA, "--run-config", "training.rounds=1")
    assert refused.returncode != 0
    assert "Connection to the SuperLink is unavailable" in refused.stdout + refused.stderr
    assert runs() == before


def _run_in_background(federation, run_config: str) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        result["status"], result["log"] = flwr_run(run_config, federation.env, 1200, CONNECTION)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} after {seconds:g} s")


def _lose_node_2_after_round_1(federation, out: Path) -> Path:
    """Wait for the run's round 1 to be evaluated, then kill SuperNode 2 and everything it
    started (its ClientApp too); returns the run folder."""
    _wait_for(lambda: out.exists() and any(out.iterdir()), 300, "no run folder")
    folder = only_folder(out)
    _wait_for(lambda: any(m["round"] == 1 for m in lines(folder / "metrics.jsonl")), 600,
              "round 1 not evaluated")
    federation.stop("supernode_2", sig=signal.SIGKILL)
    return folder


def _restart_node_2(federation) -> None:
    federation.start_supernode(2, data_root=federation.folder / "node_2_data")
    federation.wait_online([federation.nodes[2]])


def test_a_lost_supernode_is_retried_on_the_other_and_rejoins(federation, tmp_path):
    one, two = federation.nodes[1], federation.nodes[2]
    thread, result = _run_in_background(
        federation, f"training.rounds=4 {FAST} federation.retries=2 "
        f"federation.reply_timeout=0 output.dir='{tmp_path}'")
    try:
        folder = _lose_node_2_after_round_1(federation, tmp_path)
        _wait_for(lambda: any("retry" in c for c in lines(folder / "clients.jsonl")), 300,
                  "no retry recorded")
    finally:
        _restart_node_2(federation)  # a SuperNode that restarts mid-run
        thread.join(1200)
    assert result["status"] == "finished:completed", result["log"][-3000:]
    clients = lines(folder / "clients.jsonl")
    retries = [c for c in clients if "retry" in c]
    assert retries and all(r["round"] == 2 and r["retry"]["node"] == two
                           and r["retry"]["resent_to"] == one for r in retries)
    assert "Node Unavailable" in retries[0]["retry"]["reason"]  # Flower's, from heartbeats
    replied = [c for c in clients if "retry" not in c]
    assert sorted(c["noise-index"] for c in replied if c["round"] == 2) == [0, 1, 2, 3, 4]
    assert two in {c["node"] for c in replied if c["round"] >= 3}  # rejoined, used again
    assert [m["round"] for m in lines(folder / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert "sent again to node" in result["log"]


def test_without_retries_a_lost_supernode_fails_the_run_and_resume_continues(federation,
                                                                            tmp_path):
    two = federation.nodes[2]
    thread, result = _run_in_background(
        federation, f"training.rounds=3 {FAST} federation.retries=0 "
        f"output.dir='{tmp_path}'")
    try:
        folder = _lose_node_2_after_round_1(federation, tmp_path)
        thread.join(1200)
    finally:
        _restart_node_2(federation)
    assert result["status"] == "finished:failed"
    failure = (folder / "failed.txt").read_text()
    ordered = sorted(federation.nodes.values())  # levels go round-robin over sorted ids
    lost = [k for k in range(5) if ordered[k % 2] == two]
    for k in lost:
        assert f"round 2: noise level {k} (sigma {SIGMAS[k]:g}) failed after 1 try" in failure
    assert f"try 1 on node {two}: error 5: Error: Node Unavailable" in failure
    assert "output.resume=" in failure
    assert [m["round"] for m in lines(folder / "metrics.jsonl")] == [0, 1]
    completed_run(f"output.resume='{folder}' federation.retries=2", federation.env,
                  timeout=900, superlink=CONNECTION)
    assert [m["round"] for m in lines(folder / "metrics.jsonl")] == [0, 1, 2, 3]


def test_the_federation_outlived_every_test(federation):
    """The SuperLink and both SuperNodes (node 2 restarted) are still up: losing a node, a
    failed run and a refused node did not take the federation down."""
    for name, process in federation.processes.items():
        assert process.poll() is None, f"{name} died: {federation.log(name)[-2000:]}"
    assert all(federation.online()[n] == "online" for n in federation.nodes.values())
