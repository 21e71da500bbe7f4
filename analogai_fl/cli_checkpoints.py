"""The `analogai-fl` commands that read a checkpoint: `infer` (evaluate it again, under any
protocol, device or drift times) and `export` (write it as an aihwkit analog model). Both
resolve the run's saved config (or `--conf`) plus `--run-config` overrides (`infer_config`)
and run every check before any work (`checks.prepare`)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checks import evaluation_device, prepare
from .config import add_run_config_argument, parse_run_config
from .errors import CliError
from .outputs import CHECKPOINT, probe_writable
from .schema import CONF_KEY
from .settings import Experiment

# --- infer ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    path: Path
    label: str  # "global" or "noise_K"


def find_checkpoints(path: Path, model_index: int | None) -> list[Checkpoint]:
    """The checkpoint file(s) to evaluate.

    `round_NNNN.pt` of a run with fusion off does not exist: the round has one file per noise
    level, `round_NNNN_noise_K.pt`; then all of them are evaluated, or the one `model_index`
    names. A `round_NNNN_noise_K.pt` path is that one model.
    """
    match = CHECKPOINT.fullmatch(path.name)
    if path.is_file():
        if model_index is not None:
            raise CliError(f"--model-index picks one of the round_NNNN_noise_K.pt files of a "
                           f"run with fusion off (name the round as round_NNNN.pt); "
                           f"'{path}' is already a single model")
        label = f"noise_{match.group(2)}" if match and match.group(2) else "global"
        return [Checkpoint(path, label)]
    if path.is_dir():
        raise CliError(f"'{path}' is a folder; expected a checkpoint file such as "
                       "runs/<run>/checkpoints/round_0015.pt")
    if match and match.group(2) is None:
        per_model = {int(m.group(2)): p for p in path.parent.glob(f"round_{match.group(1)}_*.pt")
                     if (m := CHECKPOINT.fullmatch(p.name)) and m.group(2) is not None}
        if per_model:
            found = [Checkpoint(per_model[k], f"noise_{k}") for k in sorted(per_model)]
            if model_index is None:
                return found
            chosen = [c for c in found if c.label == f"noise_{model_index}"]
            if not chosen:
                raise CliError(f"--model-index {model_index}: round {match.group(1)} in "
                               f"'{path.parent}' has models "
                               f"{', '.join(c.label for c in found)}")
            return chosen
    raise CliError(f"checkpoint '{path}' does not exist (expected a file such as "
                   "runs/<run>/checkpoints/round_0015.pt, or round_NNNN_noise_K.pt with "
                   "fusion off)")


def infer_config(checkpoint: Path, conf: str | None,
                 run_config: str | list[str]) -> dict[str, Any]:
    """The run config of `infer` and `export`: `conf` as the conf file, else the config
    saved with the checkpoint (an ablation's model: `<stem>.yaml` beside it; a run's
    checkpoint: the run folder's config.yaml, two levels above), plus the `--run-config`
    overrides."""
    if conf is not None:
        conf_path = Path(conf).expanduser()
        if not conf_path.is_file():
            raise CliError(f"--conf '{conf}' does not exist (expected a YAML conf file)")
    else:
        beside = checkpoint.resolve().with_suffix(".yaml")
        conf_path = beside if beside.is_file() else \
            checkpoint.resolve().parent.parent / "config.yaml"
        if not conf_path.is_file():
            raise CliError(f"no config for '{checkpoint}': expected '{beside.name}' beside it "
                           f"(an ablation's model) or the run folder's config.yaml at "
                           f"'{conf_path}'; pass --conf FILE")
    return {CONF_KEY: str(conf_path.resolve()), **parse_run_config(run_config)}


def load_model(checkpoint: Path, exp: Experiment, data) -> Any:
    """The configured model with the checkpoint's weights, as deployed onto the chip (QAT's
    quantisation, `inference.clip_sigma`'s clip); ConfigError naming the file when it is no
    checkpoint of that model."""
    from .checks import model_state
    from .models import deployed_model

    state = model_state(checkpoint, exp)
    return deployed_model(exp.model, data.shape, state, exp.training.weight_bits,
                          exp.evaluation.clip_sigma)


def evaluate_checkpoint(checkpoint: Checkpoint, exp: Experiment, data, sweep: bool
                        ) -> dict[str, Any]:
    from .analog import drift_accuracy, n_w_sweep
    from .clip import layer_statistics
    from .training import accuracy

    model = load_model(checkpoint.path, exp, data)
    evaluation = exp.evaluation
    proto, times, repeats, batch = (evaluation.protocol, evaluation.drift_times,
                                    evaluation.repeats, evaluation.batch_size)
    device, one_pass = evaluation_device(exp), evaluation.one_pass
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint.path), "model": checkpoint.label,
        "protocol": proto.record(), "torch_device": str(device),
        "clean_acc": accuracy(model, data.test, batch),
        "drift": drift_accuracy(model, data.test, proto, times, repeats, exp.seed, batch,
                                device, one_pass, data.train),
        "layers": [dataclasses.asdict(s) for s in layer_statistics(model)],
        "clip_sigma": evaluation.clip_sigma}
    if sweep:  # the protocol's own n_w was just measured, with the same seed
        others = [n for n in evaluation.n_w_sweep if n != proto.n_w]
        measured = n_w_sweep(model, data.test, proto, others, times, repeats, exp.seed, batch,
                             device, one_pass, data.train)
        result["n_w_sweep"] = {n: result["drift"] if n == proto.n_w else measured[n]
                               for n in evaluation.n_w_sweep}
    return result


def run_infer(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .reporting import infer_tables, write_infer

    console = Console(width=160, markup=False, highlight=False)
    given = Path(args.checkpoint).expanduser()
    checkpoints = find_checkpoints(given, args.model_index)
    prepared = prepare(infer_config(checkpoints[0].path, args.conf, args.run_config),
                       training=False)  # every check before any evaluation
    exp, data = prepared.exp, prepared.data
    out = Path(args.out).expanduser() if args.out else (
        given.resolve().parent.parent / "infer" / given.stem)
    probe_writable(out, "--out" if args.out else "the run folder's infer/ (give --out FOLDER "
                   "to write elsewhere)")  # before the evaluation, not after it
    results = [evaluate_checkpoint(c, exp, data, sweep=not args.no_sweep) for c in checkpoints]
    for table in infer_tables(results):
        console.print(table)
    written = write_infer(results, out)
    console.print(f"Wrote {', '.join(str(p) for p in written)}")
    return 0


def add_infer(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer", help="evaluate a saved model on simulated analog hardware (no training)",
        description="Evaluate a checkpoint of a run (runs/<run>/checkpoints/round_NNNN.pt) on "
        "simulated analog hardware: clean accuracy, accuracy at each drift time and an n_w "
        "sweep, as tables, CSV and a PNG plot. Device, drift times, repeats, n_w sweep, drift "
        "compensation and tile are config keys (inference.*), set with --run-config.",
        epilog="example: analogai-fl infer runs/default-20261129-101500/checkpoints/"
        "round_0015.pt --run-config \"inference.platform.aihwkit.device='ReRAM' "
        "inference.drift_times='1,86400,172800' inference.repeats=5\"")
    parser.add_argument("checkpoint", help="checkpoint file; with fusion off round_NNNN.pt "
                        "stands for all of the round's round_NNNN_noise_K.pt files")
    parser.add_argument("--conf", help="conf YAML file (default: the run folder's config.yaml, "
                        "two levels above the checkpoint)")
    add_run_config_argument(parser, "the conf file", example="\"inference.repeats=5 "
                            "inference.protocols.realistic.drift_compensation=false\"")
    parser.add_argument("--model-index", type=int, metavar="K", help="fusion off: evaluate "
                        "only noise level K's model of the round")
    parser.add_argument("--out", help="output folder (default: <run>/infer/<checkpoint "
                        "name>/)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the n_w sweep")
    parser.set_defaults(handler=run_infer)


# --- export ---------------------------------------------------------------------------------

def run_export(args: argparse.Namespace) -> int:
    from .aihwkit_io import export_model

    checkpoint = Path(args.checkpoint).expanduser()
    if checkpoint.is_dir() or not checkpoint.exists():
        raise CliError(f"'{checkpoint}': expected a checkpoint file (a run's round_NNNN.pt, "
                       "a plain state_dict or an aihwkit analog state_dict)")
    out = Path(args.out).expanduser()
    if out.suffix != ".pt":
        raise CliError(f"--out '{out}': expected a .pt file")
    prepared = prepare(infer_config(checkpoint, args.conf, args.run_config), training=False)
    probe_writable(out.parent, "--out")  # before the conversion
    exp, data = prepared.exp, prepared.data
    model = load_model(checkpoint, exp, data)
    protocol = exp.evaluation.protocol
    written = export_model(model, protocol, out, data.train, exp.seed,
                           f"{exp.model} from '{checkpoint.resolve()}'", exp.model, data.shape)
    print(f"Wrote {', '.join(str(p) for p in written)} (protocol '{protocol.name}', "
          f"{protocol.device}, {protocol.tile} tile)")
    return 0


def add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a checkpoint as an aihwkit analog model",
        description="Convert a checkpoint to aihwkit's analog layers with the RPU "
        "configuration of the evaluation protocol that infer evaluates with (device, noise, "
        "converters, drift compensation: inference.* keys), input ranges calibrated as infer "
        "does, and write the whole module (torch.load(FILE, weights_only=False)), its "
        "state_dict (FILE's stem + .state_dict.pt) and how to load both (+ .txt).",
        epilog="example: analogai-fl export runs/<run>/checkpoints/round_0015.pt --out "
        "lenet_pcm.pt --run-config \"inference.protocol='standard'\"")
    parser.add_argument("checkpoint", help="a checkpoint file")
    parser.add_argument("--out", required=True, help="the analog model's file (.pt)")
    parser.add_argument("--conf", help="conf YAML file (default: the run folder's config.yaml)")
    add_run_config_argument(parser)
    parser.set_defaults(handler=run_export)
