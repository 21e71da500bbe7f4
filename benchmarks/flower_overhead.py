"""What Flower costs: the same experiment through `flwr run` and through a plain loop of the
project's own functions, side by side, timed from launch.

The plain loop runs in its own process (`--plain`) and does exactly what one `flwr run`
round does, with the same code: each noise level trains the global model (`train_local`,
the ClientApp's seeds and data share, its noisy validation accuracy), the replies are fused
(`strategies.fusion.fuse`), and the ServerApp's `Evaluator` checkpoints and evaluates the
global model (clean, validation, PCM). Its accuracies equal `flwr run`'s round by round (the
last table shows both). Each process prints the Evaluator's "[round r/N]" line; the
benchmark timestamps those lines as they arrive (`flwr run --stream` relays the ServerApp's
log, so its times are those of the relay, within about a second).

    python benchmarks/flower_overhead.py --rounds 6

Prints start-up (launch to round 0 evaluated), first-round and steady per-round times of
each; its last line reads `per-round ratio flwr/plain: X.XX; start-up excess: Y.Y s`
(steady rounds 2..N; start-up plus first round of flwr run minus the plain loop's). Before
it, the start-up's pieces, each timed in a fresh process: imports of the ServerApp and
ClientApp modules, the data loading, Ray's start and first actor. Use a
quiet machine, and no other SuperLink on the local ports (Flower would reuse it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUND_LINE = re.compile(r"\[round (\d+)/\d+\] clean (\d+\.\d)%")


def timed_rounds(command: list[str], env: dict | None = None) -> tuple[dict[int, float], dict]:
    """Seconds from launch at which each round's evaluation line appeared, and its clean
    accuracy (percent, as printed)."""
    started = time.monotonic()
    seen: dict[int, float] = {}
    clean: dict[int, str] = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env) as process:
        for line in process.stdout:
            if (match := ROUND_LINE.search(line)) and int(match.group(1)) not in seen:
                seen[int(match.group(1))] = time.monotonic() - started
                clean[int(match.group(1))] = match.group(2)
    if process.returncode:
        raise RuntimeError(f"{command[:3]} exited with {process.returncode}")
    return seen, clean


def plain_loop(rounds: int, overrides: dict, out: Path) -> None:
    """One experiment as a plain loop of the project's functions (see the module doc)."""
    import torch
    from flwr.app import ArrayRecord

    from analogai_fl.checks import prepare
    from analogai_fl.config import dump_yaml
    from analogai_fl.models import model_for
    from analogai_fl.outputs import RunFolder
    from analogai_fl.partitions import client_dataset
    from analogai_fl.server_app import Evaluator
    from analogai_fl.streams import generator, seed_for
    from analogai_fl.training import accuracy, train_local
    from strategies.fusion import fuse

    prepared = prepare(overrides | {"training.rounds": rounds, "output.dir": str(out)})
    exp, data = prepared.exp, prepared.data
    if exp.strategy.name != "msnat" or not exp.fused:
        raise SystemExit("the plain loop reproduces the msnat strategy with FI on only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(exp.seed, "init"))
        global_model = model_for(exp.model, data.shape)
    state = global_model.state_dict()
    evaluator = Evaluator(exp, RunFolder.create(exp.output, dump_yaml(exp.config)), data, 0)
    evaluator(0, ArrayRecord(state))
    for r in range(1, rounds + 1):
        replies = []
        for k in range(exp.clients):
            model = model_for(exp.model, data.shape)
            model.load_state_dict(state)
            setting = exp.local_training(k, exp.client_mu())
            train_local(model, client_dataset(data, exp.data, k), setting, exp.seed,
                        pixel_stats=(data.mean, data.std), server_round=r, noise_index=k)
            noise_gen = generator(exp.seed, "client-evaluation", r, k)
            accuracy(model, data.val, exp.evaluation.batch_size, "cpu", setting.sigma,
                     setting.noise_c, noise_gen, setting.weight_bits)
            replies.append(ArrayRecord({n: t.detach() for n, t in model.state_dict().items()}))
        fused = fuse(replies, [1.0] * len(replies), exp.noise_levels, exp.strategy.bn_buffers)
        state = fused.to_torch_state_dict()
        evaluator(r, fused)


RAY_ACTOR = """
import time, ray
t0 = time.perf_counter(); ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
t1 = time.perf_counter()
@ray.remote
class Actor:
    def ping(self): return 1
ray.get(Actor.remote().ping.remote()); t2 = time.perf_counter(); ray.shutdown()
print(t1 - t0, t2 - t1)
"""

PIECES = {  # label: code run in a fresh interpreter (its wall time is the figure)
    "python + torch import": "import torch",
    "flwr CLI import": "import flwr.cli.app",
    "ServerApp module import (torch, flwr, aihwkit, sklearn)": "import analogai_fl.server_app",
    "ClientApp module import (torch, flwr, sklearn)": "import clients.msnat_client",
    "digits data loading (after imports)": "import time; from analogai_fl.settings import "
    "load; from analogai_fl.data import load_data; e = load({}); t = time.perf_counter(); "
    "load_data(e.data); print(time.perf_counter() - t)",
}


def startup_pieces(env: dict) -> dict[str, float]:
    """Wall seconds of each start-up piece in a fresh process (best of 2): imports, data
    loading, Ray's start and its first actor."""
    cwd = Path(__file__).resolve().parents[1]
    result: dict[str, float] = {}

    def run(code: str) -> tuple[float, str]:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True,
                              capture_output=True, text=True)
        return time.perf_counter() - started, done.stdout.strip().splitlines()[-1:]

    for label, code in PIECES.items():
        walls = [run(code) for _ in range(2)]
        best = min(walls)
        result[label] = float(best[1][0]) if best[1] else best[0]
    init, actor = (float(v) for v in run(RAY_ACTOR)[1][0].split())
    result["ray.init (2 CPUs)"], result["Ray's first actor start and call"] = init, actor
    return result


def summary(times: dict[int, float]) -> tuple[float, float, float]:
    """(start-up, first round, mean steady round) in seconds."""
    rounds = sorted(times)
    steady = [times[r] - times[r - 1] for r in rounds[2:]]
    return times[0], times[1] - times[0], statistics.fmean(steady)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from analogai_fl.config import add_run_config_argument, parse_run_config

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, metavar="N",
                        help="rounds of each run, at least 3: steady rounds are 2..N "
                        "(default: %(default)s)")
    add_run_config_argument(parser, "conf/default.yaml for both runs (the plain loop needs "
                            "strategy msnat with FI on)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for both runs' folders and the private FLWR_HOME "
                        "(default: a new temporary folder)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the start-up pieces (imports, data, Ray) table")
    parser.add_argument("--plain", metavar="OUT", help=argparse.SUPPRESS)  # the plain loop
    args = parser.parse_args()
    if not args.plain and args.rounds < 3:
        parser.error("--rounds must be at least 3 (steady rounds are 2..N)")
    from analogai_fl.flwr_cli import (
        BIN,
        PROJECT_DIR,
        flwr_env,
        run_config_string,
        stop_local_superlink,
    )

    overrides = parse_run_config(args.run_config)
    if args.plain:
        plain_loop(args.rounds, overrides, Path(args.plain))
        return
    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(
        prefix="flower-overhead-"))
    out.mkdir(parents=True, exist_ok=True)
    home = out / "flwr_home"
    env = flwr_env({"FLWR_HOME": str(home)})
    given = run_config_string(overrides)  # repeated flags merged as flwr run merges them
    run_config = f"{given} training.rounds={args.rounds} output.dir='{out / 'flwr'}'"
    try:
        flwr_times, flwr_clean = timed_rounds(
            [str(BIN / "flwr"), "run", str(PROJECT_DIR), "--stream", "--run-config",
             run_config.strip()], env)
    finally:
        stop_local_superlink(home)
    plain_times, plain_clean = timed_rounds(
        [sys.executable, __file__, "--rounds", str(args.rounds), "--run-config",
         given, "--plain", str(out / "plain")], env)
    rows = {"flwr run": summary(flwr_times), "plain loop": summary(plain_times)}
    print(f"{'':12} {'start-up s':>11} {'round 1 s':>10} {'steady s/round':>15}")
    for name, (startup, first, steady) in rows.items():
        print(f"{name:12} {startup:11.1f} {first:10.1f} {steady:15.2f}")
    print("clean test accuracy % per round, flwr run vs plain loop: " + json.dumps(
        {r: [flwr_clean[r], plain_clean.get(r)] for r in sorted(flwr_clean)}))
    if not args.no_breakdown:
        print("start-up pieces, each in a fresh process (wall s):")
        for label, seconds in startup_pieces(env).items():
            print(f"  {label:58} {seconds:6.2f}")
    (f_start, f_first, f_steady), (p_start, p_first, p_steady) = rows.values()
    print(f"per-round ratio flwr/plain: {f_steady / p_steady:.2f}; start-up excess: "
          f"{(f_start + f_first) - (p_start + p_first):.1f} s")


if __name__ == "__main__":
    main()
