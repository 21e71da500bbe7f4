"""Validation curves of the ablation's arms at a conf file's budget: has each arm reached its
plateau? (Compare only converged runs: a budget that stops one arm early measures learning
speed, not robustness.)

Each MSNAT-family arm is a real `flwr run` (clean validation accuracy every round, no analog
evaluation); aihwkit's HWA is trained in-process with the same epochs and measured on the
validation split after every epoch (its analog model in eval mode: output noise and
converters on, no weight modifier). One seed (the run config's `seed`). Example:

    python benchmarks/convergence.py --arms vanilla,msnat_no_fl,hwa --run-config "seed=1"

Prints one row per round/epoch and, last, each arm's gain over its final quarter of rounds
(in points of validation accuracy): `gain over the last quarter of rounds (points): vanilla
+X.X, ...`; writes convergence.csv and convergence.png to --out.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from analogai_fl import ablation, hwa
from analogai_fl.checks import prepare
from analogai_fl.config import add_run_config_argument, parse_run_config
from analogai_fl.data import load_data
from analogai_fl.flwr_cli import completed_run, run_config_string
from analogai_fl.outputs import RunFolder
from analogai_fl.reporting import percent, pyplot
from analogai_fl.schema import CONF_KEY, DEFAULT_CONF
from analogai_fl.settings import Experiment
from analogai_fl.training import accuracy


def flwr_curve(name: str, exp: Experiment, overrides: dict, out: Path) -> list[float]:
    arm = ablation.arms(exp)[name]
    run_config = ablation.arm_run_config(name, arm, exp, overrides, exp.seed, out) | {
        "inference.every": 1}
    completed_run(run_config_string(run_config))
    (folder,) = sorted((out / "runs").glob(f"{name}-seed{exp.seed}-*"))[-1:]
    records = RunFolder.open(folder).read_jsonl("metrics.jsonl")
    return [r["val_acc"] for r in records if r["round"] > 0]


def hwa_curve(exp: Experiment) -> list[float]:
    data = load_data(exp.data)
    curve: list[float] = []

    @torch.no_grad()
    def measure(epoch: int, analog: torch.nn.Module) -> None:
        curve.append(accuracy(analog.eval(), data.val, exp.evaluation.batch_size))

    hwa.train_analog(exp.model, exp.hwa, data, exp.rounds * exp.local_epochs, exp.seed,
                     on_epoch=measure)
    return curve


# The ablation's arms that have a curve here: its flwr arms and HWA with the same epochs
# (hwa_compute is the same training, longer).
CURVE_ARMS = tuple(name for name in ablation.ARM_NAMES if name != "hwa_compute")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default=DEFAULT_CONF, metavar="FILE",
                        help="the experiment's conf file (default: %(default)s)")
    parser.add_argument("--arms", default="vanilla,msnat,hwa", metavar="ARM,...",
                        help="comma-separated arms, of " + ", ".join(CURVE_ARMS)
                        + " (default: %(default)s)")
    add_run_config_argument(parser, example='"seed=1 training.rounds=60"')
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the runs, convergence.csv and convergence.png "
                        "(default: a new temporary folder)")
    args = parser.parse_args()
    unknown = sorted(set(args.arms.split(",")) - set(CURVE_ARMS))
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)}; expected some of "
                     + ", ".join(CURVE_ARMS))
    overrides = parse_run_config(args.run_config)
    exp = prepare({CONF_KEY: args.conf} | overrides).exp
    # absolute: flwr run's output.dir is relative to the local SuperLink's directory
    out = Path(args.out or tempfile.mkdtemp(prefix="convergence-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[float]] = {}
    for name in args.arms.split(","):
        started = time.time()
        curves[name] = hwa_curve(exp) if name == "hwa" else flwr_curve(name, exp, overrides, out)
        print(f"{name}: {len(curves[name])} rounds in {time.time() - started:.0f} s", flush=True)
    rounds = max(len(c) for c in curves.values())
    with open(out / "convergence.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["round", *curves])
        for r in range(rounds):
            rows.writerow([r + 1, *(c[r] if r < len(c) else "" for c in curves.values())])
    print("round  " + "  ".join(f"{n:>8}" for n in curves))
    for r in range(rounds):
        print(f"{r + 1:5d}  " + "  ".join(f"{percent(c[r]):>8}" if r < len(c) else " " * 8
                                          for c in curves.values()))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], marker=".", label=name)
    ax.set(xlabel="round (= epoch)", ylabel="validation accuracy (%)",
           title=f"{exp.model} on {exp.data.name}, seed {exp.seed}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=120)
    quarter = {n: 100 * (c[-1] - c[-max(2, len(c) // 4)]) for n, c in curves.items()}
    print(f"wrote {out / 'convergence.csv'}, {out / 'convergence.png'}")
    print("gain over the last quarter of rounds (points): "
          + ", ".join(f"{n} {g:+.1f}" for n, g in quarter.items()))


if __name__ == "__main__":
    main()
