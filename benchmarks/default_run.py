"""Wall time and peak memory of `flwr run .` (the default experiment, or with overrides).

Memory is the peak over time of the summed proportional set size (PSS, shared libraries
split fairly) of every process that belongs to the run: the local SuperLink, Ray and its
workers, the ServerApp and the ClientApps (Linux: read from /proc). Example:

    python benchmarks/default_run.py --run-config "training.rounds=2"

Prints the run's final table and, last, `wall time: X.X s   peak memory (PSS, all run
processes): Y.YY GiB`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from analogai_fl.config import add_run_config_argument, parse_run_config
from analogai_fl.flwr_cli import flwr_env, run_config_string

ROOT = Path(__file__).resolve().parents[1]
MARKERS = ("flwr", "flower", "ray", "raylet", "gcs_server")


def pss_of_run_kib() -> int:
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if not any(m in cmdline for m in MARKERS) or int(pid) == os.getpid():
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_config_argument(parser, "conf/default.yaml (default: none, the default experiment)")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    env = flwr_env()
    command = [str(bin_dir / "flwr"), "run", ".", "--stream"]
    if args.run_config:  # repeated flags merged (or refused) as analogai-fl's commands do
        command += ["--run-config", run_config_string(parse_run_config(args.run_config))]
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, pss_of_run_kib())
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.time()
    sampler.start()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    done.set()
    sampler.join()
    wall = time.time() - started
    tail = [line for line in result.stdout.splitlines() if "Results in" in line
            or line.startswith(("│", "┃"))]
    print("\n".join(tail))
    print(f"wall time: {wall:.1f} s   peak memory (PSS, all run processes): "
          f"{peak / 1024 ** 2:.2f} GiB")


if __name__ == "__main__":
    main()
