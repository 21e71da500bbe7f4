"""What each recovery option costs and buys: a short default-digits MSNAT run (same seed, same
rounds) per option, through `flwr run`, reporting the final round's clean and PCM accuracy
and the training cost. Example:

    python benchmarks/recovery_options.py --rounds 5 --out runs/recovery-options

Prints each option's Markdown table row (clean, PCM 1s / 1d / 1y, sample passes, wall s) as
its run ends, then the setting and the runs' folder, then the whole table; the last line is
the row of the last option, `| + activation noise (0.1, all clients) | ... |`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from analogai_fl.checks import prepare
from analogai_fl.flwr_cli import completed_run, run_config_string
from analogai_fl.outputs import RunFolder

OPTIONS = {
    "MSNAT (no option)": {},
    "+ SAM": {"recovery.optimizer.sam": True},
    "+ ASAM (rho 0.5)": {"recovery.optimizer.adaptive": True, "recovery.optimizer.rho": 0.5},
    "+ FGSM": {"recovery.adversarial.FGSM.use": True},
    "+ PGD (10 steps)": {"recovery.adversarial.PGD.use": True},
    "+ QAT (4-bit weights, 8-bit inputs)": {"recovery.qat.use": True},
    "+ activation noise (0.1, all clients)": {
        f"recovery.noise_{k}.act_inject.use": True for k in range(5)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, metavar="N",
                        help="rounds of each run, evaluated once at the end (default: "
                        "%(default)s)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the runs (default: a new temporary folder)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds = args.rounds
    # absolute: flwr run's output.dir is relative to the local SuperLink's directory
    out = Path(args.out or tempfile.mkdtemp(prefix="options-")).resolve()
    for option in OPTIONS.values():  # every option's checks before the first run
        prepare(option | {"training.rounds": rounds})
    rows = ["| option | clean | PCM 1s | PCM 1d | PCM 1y | sample passes | wall s |",
            "|---|---|---|---|---|---|---|"]
    for index, (label, option) in enumerate(OPTIONS.items()):
        name = f"option{index}"
        started = time.time()
        completed_run(run_config_string(option | {
            "training.rounds": rounds, "inference.every": rounds,
            "output.dir": str(out), "output.name": name}))
        wall = time.time() - started
        (folder,) = sorted(out.glob(f"{name}-*"))
        run = RunFolder.open(folder)
        final, clients = run.read_jsonl("metrics.jsonl")[-1], run.client_replies()
        pcm = final["pcm"]
        cells = [f"{100 * final['clean_acc']:.1f}",
                 *(f"{100 * pcm[t]['mean']:.1f} ± {100 * pcm[t]['std']:.1f}"
                   for t in ("1s", "1d", "1y")),
                 f"{sum(c['sample_passes'] for c in clients):.3g}", f"{wall:.0f}"]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print(f"\nLeNet on digits, default config, {rounds} rounds, seed 2024, realistic protocol, "
          f"3 repeats; runs in {out}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
