"""Drive the project through Flower's own CLI (`flwr run`), as a user would, and judge the run
by its status: `flwr run --stream` exits 0 even when the ServerApp raised."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import PROJECT_DIR

BIN = Path(sys.executable).parent


class RunFailed(RuntimeError):
    """A `flwr run` that did not finish as completed; the message ends with its log."""


def run_config_string(overrides: Mapping[str, Any]) -> str:
    """`--run-config` text (TOML values) for flat overrides: strings quoted, lists as the
    comma-separated strings the config accepts."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (list, tuple)):
            v = ",".join(f"{x:g}" for x in v)
        if isinstance(v, str):
            if "'" in v:
                raise ValueError(f"a run-config value cannot contain a single quote: {v!r}")
            return f"'{v}'"
        return repr(v)

    return " ".join(f"{k}={value(v)}" for k, v in overrides.items())


def flwr_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `flwr` needs: this venv first on PATH, and no per-run dependency
    install (a pinned torch would be downloaded for every run)."""
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                         "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"} | dict(extra or {})


def flwr_run(run_config: str, env: Mapping[str, str] | None = None,
             timeout: float | None = None, superlink: str | None = None) -> tuple[str, str]:
    """(status, log) of `flwr run <project> [superlink] --stream --run-config run_config`;
    status is Flower's, e.g. 'finished:completed' or 'finished:failed'. `superlink` names a
    connection of $FLWR_HOME/config.toml (default: Flower's default, the local simulation)."""
    env = dict(env or flwr_env())
    connection = [superlink] if superlink else []
    done = subprocess.run([BIN / "flwr", "run", str(PROJECT_DIR), *connection, "--stream",
                           "--run-config", run_config], cwd=PROJECT_DIR, env=env,
                          capture_output=True, text=True, timeout=timeout)
    log = done.stdout + done.stderr
    started = re.search(r"Successfully started run (\d+)", log)
    if not started:
        raise RunFailed(f"flwr run did not start a run (exit {done.returncode}):\n{log}")
    listed = subprocess.run([BIN / "flwr", "ls", *connection, "--run-id", started.group(1),
                             "--format", "json"], cwd=PROJECT_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    return json.loads(listed.stdout)["runs"][0]["status"], log


def completed_run(run_config: str, env: Mapping[str, str] | None = None,
                  timeout: float | None = None, superlink: str | None = None) -> str:
    """Log of a run that must complete; RunFailed (with the log's tail) otherwise."""
    status, log = flwr_run(run_config, env, timeout, superlink)
    if status != "finished:completed":
        raise RunFailed(f"flwr run {status}:\n{log[-6000:]}")
    return log


def local_superlink_pids(flwr_home: str | Path) -> list[int]:
    """Process ids of the processes started with FLWR_HOME=`flwr_home`: the detached local
    SuperLink that `flwr run` starts for that Flower home, and what it started (read from
    each process's environment in /proc; Linux)."""
    wanted = f"FLWR_HOME={flwr_home}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if wanted in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def stop_local_superlink(flwr_home: str | Path, grace: float = 10.0) -> list[int]:
    """Stop, by process id, what `local_superlink_pids(flwr_home)` finds: SIGTERM, then
    SIGKILL after `grace` seconds for any still alive. Returns the ids it signalled."""
    import signal
    import time

    pids = local_superlink_pids(flwr_home)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if Path(f"/proc/{p}").exists()
                 and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids
