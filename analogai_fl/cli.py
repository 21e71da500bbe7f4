"""The `analogai-fl` command: subcommands that work on runs without `flwr run`.

    analogai-fl check [--conf FILE] [--run-config "key=value ..."]
    analogai-fl infer CHECKPOINT [--conf FILE] [--run-config "key=value ..."]
                                 [--model-index K] [--out DIR] [--no-sweep]
    analogai-fl ablate [--conf FILE] [--run-config "..."] [--seeds S,..] [--arms A,..]
    analogai-fl plot RUN_FOLDER [RUN_FOLDER ...] [--labels A,B,..] [--out FILE]
    analogai-fl export CHECKPOINT --out FILE [--conf FILE] [--run-config "key=value ..."]

Each subcommand is a function `add_<name>(subparsers)` that adds its parser and sets
`handler`, registered in `SUBCOMMANDS`. A handler raises `CliError` (or `ConfigError`) for a
user mistake: `main` prints it as one line and returns exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .checks import check_output_place, evaluation_device, prepare
from .cli_checkpoints import add_export, add_infer
from .config import add_run_config_argument, parse_run_config
from .errors import ArmFailed, CliError, ConfigError, WriteFailed
from .outputs import probe_writable
from .schema import CONF_KEY
from .schema_ablation import ARM_NAMES
from .settings import load
from .training import TrainingDiverged

# --- ablate ---------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got '{text}'") from None


def run_ablate(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console

    from . import ablation

    console = Console(width=160, markup=False, highlight=False)
    overrides = parse_run_config(args.run_config)
    conf = {CONF_KEY: str(Path(args.conf).expanduser().resolve())} if args.conf else {}
    exp = load(conf | overrides)
    names = [a.strip() for a in args.arms.split(",")] if args.arms else list(ARM_NAMES)
    unknown = [n for n in names if n not in ARM_NAMES]
    if unknown:
        raise CliError(f"--arms: unknown arm(s) {unknown}; known: "
                       f"{', '.join(ARM_NAMES)}")
    if "hwa_compute" in names and "msnat" not in names:
        raise CliError("--arms: 'hwa_compute' matches the compute of the 'msnat' arm; add it")
    seeds = args.seeds or [exp.seed]
    out = Path(args.out).expanduser() if args.out else (
        exp.output.dir / f"ablation-{time.strftime('%Y%m%d-%H%M%S')}")
    out = out.resolve()
    started = time.time()
    console.print(f"Ablation: arms {names}, seeds {seeds}, {exp.model} on {exp.data.name}, "
                  f"{exp.rounds} rounds x {exp.local_epochs} epoch(s); results in {out}")

    def progress(text: str) -> None:
        console.print(f"[{time.time() - started:6.0f}s] {text}")

    merge = [Path(m).expanduser().resolve() for m in args.merge or []]
    ablation.run_ablation(exp, overrides, out, seeds, names, progress=progress, merge=merge)
    console.print((out / "results.md").read_text())
    written = [out / name for name in ("results.csv", "results.md", "paired.csv", "primary.csv",
                                       "accuracy_vs_n_w.png", "accuracy_vs_drift.png")]
    console.print(f"Wrote {', '.join(str(p) for p in written if p.exists())}")
    return 0


def add_ablate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate", help="vanilla vs noise injection vs MSNAT (w/o FI, w/o FL, full) vs aihwkit "
        "HWA, all evaluated alike",
        description="Train every arm of the ablation on the same data, seed and round/epoch "
        "budget (the MSNAT family through flwr run, aihwkit's hardware-aware training "
        "in-process), then evaluate every model with the same analog protocols: clean "
        "accuracy, PCM accuracy per drift time and an n_w sweep, under every protocol "
        "(standard, realistic, seed). Writes results.csv, results.md, paired.csv, two PNG "
        "plots and, with ablation.primary_contrasts, primary.csv (the pre-registered tests, "
        "Holm-corrected); with ablation.tuning=true only the validation criterion that "
        "chooses recipes. A folder run again continues where it stopped.",
        epilog="example: analogai-fl ablate --seeds 1,2,3 --run-config 'training.rounds=20'")
    parser.add_argument("--conf", help="conf YAML file (default: conf/default.yaml)")
    add_run_config_argument(parser)
    parser.add_argument("--seeds", type=_int_list, metavar="S1,S2,...",
                        help="seeds to repeat the whole ablation with (default: the config's)")
    parser.add_argument("--arms", metavar="A,B,...", help="subset of arms (default: all): "
                        + ", ".join(ARM_NAMES) + "; an arm that would repeat the msnat run "
                        "(msnat_no_fl when FL is already off) is not trained; with "
                        "ablation.pretrained=true vanilla is always trained (the "
                        "pre-training)")
    parser.add_argument("--out", help="results folder (default: <output.dir>/ablation-<time>)")
    parser.add_argument("--merge", action="append", metavar="FOLDER",
                        help="an ablation folder of the same settings whose finished rows "
                        "(other seeds or arms, run side by side) --out lacks: copied in with "
                        "their models first; repeatable")
    parser.set_defaults(handler=run_ablate)


# --- check ----------------------------------------------------------------------------------

def run_check(args: argparse.Namespace) -> int:
    from .config import defaults
    from .reporting import drift_label
    from .schema import DEFAULT_CONF

    overrides = parse_run_config(args.run_config)
    conf = str(Path(args.conf).expanduser().resolve()) if args.conf else DEFAULT_CONF
    # what the ServerApp prepares, without downloading a data set
    prepared = prepare({CONF_KEY: conf} | overrides, download=False, missing_data_ok=True)
    check_output_place(prepared.exp)
    exp, data = prepared.exp, prepared.data
    cfg = exp.config
    default = defaults()
    changed = [f"{k}={v!r}" for k, v in cfg.items()
               if k in default and v != default[k] and k != "output.name"]
    evaluation, training = exp.evaluation, exp.training
    times = ", ".join(drift_label(t) for t in evaluation.drift_times)
    lines = [
        f"OK: flwr run would run {exp.conf} with these overrides:",
        f"  {exp.model} on {exp.data.name} ({exp.data.image_size}x{exp.data.image_size}), "
        f"partition {exp.data.partition}" + ("" if data else
                                              f"; data set not in {exp.data.root} yet: the "
                                              "ServerApp downloads it before round 1"),
        f"  K={exp.clients} noise levels (sigma {', '.join(f'{s:g}' for s in exp.noise_levels)})"
        f", FI {'on' if exp.fused else 'off'}, FL {'on' if exp.feedback else 'off'}, "
        f"strategy {exp.strategy.name}",
        f"  {exp.rounds} rounds x {exp.local_epochs} local epoch(s), batch "
        f"{training.batch_size}, {training.optimizer} lr {training.lr:g}",
        "  evaluation: " + (f"protocol {evaluation.protocol.name}, device "
                            f"{evaluation.protocol.device}, tile {evaluation.protocol.tile}, "
                            f"n_w {evaluation.protocol.n_w:g}, drift times {times}, "
                            f"{evaluation.repeats} repeats, every {evaluation.every} round(s), "
                            f"torch device {evaluation.torch_device} (here: "
                            f"{evaluation_device(exp)})" if evaluation.use
                            else "clean accuracy only"),
        f"  failures: a missing or failed level is sent again up to "
        f"{exp.federation.retries} time(s), reply timeout "
        + (f"{exp.federation.reply_timeout:g} s" if exp.federation.reply_timeout else
           "Flower's") + ("" if exp.federation.inject_failure is None else
                          ", injected failure round {}, level {}".format(
                              *exp.federation.inject_failure)),
        "  output: " + (f"resumes {exp.output.resume}" if exp.output.resume else
                        f"{exp.output.dir}/{exp.output.name}-<time>/"),
        f"  changed from the defaults: {', '.join(changed) if changed else 'nothing'}"]
    print("\n".join(lines))
    return 0


def add_check(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="resolve and validate what `flwr run` would run, without running it",
        description="Resolve the configuration exactly as the ServerApp would (conf file, "
        "then --run-config overrides), run every check it runs before training (each key's "
        "range, the cross-key rules, the model at the data's shape, the aihwkit configs, the "
        "clients' data shares) and print a summary, or the one-line error with exit code 2. "
        "Flower itself refuses an undeclared key with only '[code: 15] Invalid run "
        "configuration.'; this names the key and the closest valid one.",
        epilog="example: analogai-fl check --run-config \"training.rounds=3 "
        "strategy.name='fedadam'\"")
    parser.add_argument("--conf", help="conf YAML file (default: conf/default.yaml)")
    add_run_config_argument(parser)
    parser.set_defaults(handler=run_check)


# --- plot -----------------------------------------------------------------------------------

def run_plot(args: argparse.Namespace) -> int:
    from .curves import CURVES_FILE, RunCurves, plot_curves

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else []
    if labels and len(labels) != len(args.runs):
        raise CliError(f"--labels: {len(labels)} label(s) for {len(args.runs)} run folder(s); "
                       "give one per folder, in the same order")
    runs = [RunCurves.read(Path(folder), labels[i] if labels else None,
                           given_as=f"run folder {i + 1}")
            for i, folder in enumerate(args.runs)]
    if not any(r.metrics or r.clients for r in runs):
        raise CliError(f"nothing to draw: no evaluated round and no client reply in "
                       f"{', '.join(args.runs)} (metrics.jsonl and clients.jsonl are missing or "
                       "empty: has the run started its first round?)")
    for folder, run in zip(args.runs, runs, strict=True):
        if not run.metrics:
            print(f"warning: run folder {folder}: no evaluated round yet (metrics.jsonl is "
                  f"missing or empty); its accuracy panels stay empty", file=sys.stderr)
    if args.out:
        out = Path(args.out)
    elif len(runs) == 1:
        out = Path(args.runs[0]) / CURVES_FILE
    else:
        out = Path(f"curves-{'-vs-'.join(Path(f).resolve().name for f in args.runs)}.png")
    if out.suffix.lower() != ".png":
        raise CliError(f"--out '{out}': expected a .png file")
    probe_writable(out.parent, "--out")
    print(f"Wrote {plot_curves(runs, out)}")
    return 0


def add_plot(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", help="draw the training curves of one run folder, or overlay several",
        description="Clean, validation and on-chip accuracy of the global model per drift "
        "time over the rounds (Monte-Carlo std as a band), and each noise level's training "
        "loss and noisy validation accuracy, read from the run folders' metrics.jsonl and "
        "clients.jsonl. One folder: the same picture as the run's own curves.png. Several: "
        "overlaid, a colour per run.",
        epilog="example: analogai-fl plot runs/fi-on runs/fi-off --labels 'FI on,FI off' "
        "--out fi.png")
    parser.add_argument("runs", nargs="+", metavar="RUN_FOLDER", help="run folders")
    parser.add_argument("--labels", metavar="A,B,...", help="legend names, one per folder "
                        "(default: the folder names)")
    parser.add_argument("--out", help="PNG file (default: <run>/curves.png for one folder, "
                        "curves-<run>-vs-<run>.png in the current folder for several)")
    parser.set_defaults(handler=run_plot)


# --- entry point ----------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_check, add_infer, add_ablate, add_plot, add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analogai-fl", description="AnalogAI-FL tools that work without flwr run.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (CliError, ConfigError) as err:
        print(f"analogai-fl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:  # results written so far are kept
        print(f"analogai-fl {args.command}: training diverged: {err}", file=sys.stderr)
        return 1
    except ArmFailed as err:  # the rows written so far are kept
        print(f"analogai-fl {args.command}: {err}", file=sys.stderr)
        return 1
    except WriteFailed as err:  # a full disk, a folder made read-only meanwhile
        again = (" (it continues where it stopped: the rows and models written are kept)"
                 if args.command == "ablate" else "")
        print(f"analogai-fl {args.command}: error: {err}; free space or make the folder "
              f"writable, then run the same command again{again}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
