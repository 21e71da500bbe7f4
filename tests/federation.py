"""A secured Flower federation on the loopback interface, for the deployment tests: one
SuperLink (TLS, SuperNode authentication) and SuperNodes, each started with Flower's own
commands exactly as the README gives them, on free ports, and stopped by process group id
(each process is started in a session of its own, so that what it spawned, Flower's
SuperExec, ServerApp and ClientApp processes, is stopped with it and nothing else is)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from analogai_fl.certificates import make_supernode_keys, make_tls
from analogai_fl.flwr_cli import BIN, PROJECT_DIR, flwr_env

CONNECTION = "secure"  # the flwr CLI's connection with the CA certificate
NO_CA = "no-ca"  # the same address without it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds:g} s")


class Federation:
    def __init__(self, folder: Path, supernode_keys: int = 3) -> None:
        self.folder = folder
        self.certs = folder / "certs"
        self.certs.mkdir(parents=True)
        make_tls(self.certs, ["127.0.0.1", "localhost"])
        make_supernode_keys(self.certs, supernode_keys)
        self.port = free_port()
        home = folder / "flwr_home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n\n'
            f'[superlink.{NO_CA}]\naddress = "127.0.0.1:{self.port}"\n')
        self.env = flwr_env({"FLWR_HOME": str(home)})
        self.processes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def start_superlink(self) -> None:
        c = self.certs
        self._start("superlink", [
            str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(c / "ca.crt"),
            "--ssl-certfile", str(c / "server.crt"), "--ssl-keyfile", str(c / "server.key"),
            "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(self.folder / "superlink.db"),
            "--disable-runtime-dependency-installation"])
        wait_for_port(self.port)

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], cwd=PROJECT_DIR, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def register(self, i: int) -> int:
        """Register SuperNode i's public key with the SuperLink; returns its node id."""
        done = self.flwr("supernode", "register", str(self.certs / f"supernode_{i}.pub"),
                         CONNECTION, "--format", "json")
        if done.returncode != 0:
            raise RuntimeError(f"flwr supernode register failed:\n{done.stdout}{done.stderr}")
        return int(json.loads(done.stdout)["node-id"])

    def start_supernode(self, i: int, data_root: Path | None = None,
                        max_retries: int | None = None) -> subprocess.Popen:
        node_config = [f"--node-config=data-root='{data_root}'"] if data_root else []
        retries = ["--max-retries", str(max_retries)] if max_retries is not None else []
        return self._start(f"supernode_{i}", [
            str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(self.certs / f"supernode_{i}"),
            "--port", str(free_port()), *retries, *node_config])

    def online(self) -> dict[int, str]:
        """node id -> status, as `flwr supernode list` reports them."""
        done = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        return {int(n["node-id"]): n["status"] for n in json.loads(done.stdout)["nodes"]}

    def wait_online(self, node_ids: list[int], seconds: float = 90.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status = self.online()
            if all(status.get(n) == "online" for n in node_ids):
                return
            time.sleep(1)
        raise TimeoutError(f"nodes {node_ids} not online after {seconds:g} s: {self.online()}")

    def stop(self, name: str, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """Stop the process started as `name` and what it spawned (its process group)."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):  # children that outlived the leader
            os.killpg(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)
