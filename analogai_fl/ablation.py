"""The ablation behind the seed's headline figure, as a command: vanilla training, single-sigma
noise injection, MSNAT without fusion injection, MSNAT without feedback loops, full MSNAT, and
aihwkit's hardware-aware training (HWA) as the industry baseline.

Every MSNAT-family arm is a real `flwr run` of this project (the same simulation a user runs),
with the same data, seed and round/epoch budget; HWA trains in-process with aihwkit. Every
resulting model is then evaluated by the same code with the same analog configuration:
clean accuracy, PCM accuracy at each drift time and an n_w sweep, under both evaluation
protocols.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import hwa
from .ablation_folder import (
    RUNS_DIR,
    append_row,
    finished_rows,
    finished_run,
    hwa_checkpoint,
    merge_folders,
    model_path,
    run_folders,
    save_model,
    unfinished_run,
    write_state,
)
from .ablation_report import write_ablation
from .analog import drift_accuracy, n_w_sweep
from .checks import evaluation_device, model_state, prepare
from .comparison import collapse_reason
from .data import Splits
from .errors import ArmFailed, ConfigError
from .flwr_cli import RunFailed, completed_run, run_config_string
from .models import deployed_model
from .outputs import RunFolder
from .reporting import drift_label
from .schema import CONF_KEY
from .schema_ablation import ARM_NAMES
from .settings import Experiment
from .training import TrainingDiverged, accuracy


@dataclass(frozen=True)
class Arm:
    label: str
    kind: str  # "flwr" (a run of this project) or "hwa"
    overrides: Mapping[str, Any] = field(default_factory=dict)


def arms(exp: Experiment) -> dict[str, Arm]:
    """The arms, each as the overrides of its `flwr run` (written, not read, keys). The
    `_analog` arms train under the chip's forward (`training.noise_model=analog`); vanilla
    trains without any noise whatever the noise model. Two controls spend MSNAT's sample
    passes on one model without federation: `noise_injection_compute` (one sigma, more
    epochs) and `multiscale` (MSNAT's K levels drawn per batch, FL as MSNAT's)."""
    one_client = {"training.client_num_in_total": 1, "training.use_neg": False,
                  "training.use_fl": True}
    sigma = exp.ablation.single_sigma
    single = one_client | {"recovery.noise_0.act_inject.sigma": sigma}
    analog = {"training.noise_model": "analog"}
    chip = " on the chip's noise" if exp.training.chip is not None else ""
    # MSNAT's compute per round: K x the training split (data.partition=full: every client
    # sees all of it; iid and dirichlet shards: once), each example costing 1 + (feedback
    # passes) passes. One model on the whole split spends it in `times` as many epochs.
    feedback = exp.training.feedback
    shares = len(exp.noise_levels) if exp.data.partition == "full" else 1
    times = shares * (1 + len(feedback.offsets) if feedback is not None else 1)
    levels = ", ".join(f"{s:g}" for s in exp.noise_levels)
    msnat = ("MSNAT" if exp.fused and exp.feedback else
             f"MSNAT as configured (FI {_on(exp.fused)}, FL {_on(exp.feedback)})")
    return {
        "vanilla": Arm("vanilla (no noise)", "flwr",
                       one_client | {"recovery.noise_0.act_inject.sigma": 0.0,
                                     "training.noise_model": "weight"}),
        "noise_injection": Arm(f"noise injection{chip} (sigma {sigma:g})", "flwr", single),
        "noise_injection_analog": Arm(f"noise injection on the chip's noise (sigma "
                                      f"{sigma:g})", "flwr", single | analog),
        "noise_injection_compute": Arm(
            f"noise injection{chip} (sigma {sigma:g}, MSNAT's compute)", "flwr",
            single | {"training.local_epochs": exp.local_epochs * times}),
        "multiscale": Arm(f"multi-scale, one model{chip} (sigma per batch from {levels})",
                          "flwr", single | {"training.use_neg": exp.feedback,
                                            "training.local_epochs": exp.local_epochs * shares,
                                            "training.sigma_levels": list(exp.noise_levels)}),
        "msnat_no_fi": Arm(f"MSNAT w/o FI{chip}", "flwr", {"training.use_fl": False}),
        "msnat_no_fl": Arm(f"MSNAT w/o FL{chip}", "flwr", {"training.use_neg": False}),
        "msnat": Arm(msnat + chip, "flwr", {}),
        "msnat_analog": Arm(f"{msnat} on the chip's noise", "flwr", analog),
        "hwa": Arm("aihwkit HWA (same epochs)", "hwa"),
        "hwa_compute": Arm("aihwkit HWA (same compute as MSNAT)", "hwa"),
    }


def _on(flag: bool) -> str:
    return "on" if flag else "off"


@dataclass
class Trained:
    model: nn.Module
    sample_passes: int
    wall_seconds: float
    epochs: float
    note: str = ""
    best_val: float | None = None  # the best clean validation accuracy during training


def arm_run_config(name: str, arm: Arm, exp: Experiment, overrides: Mapping[str, Any],
                   seed: int, out: Path) -> dict[str, Any]:
    """The `--run-config` overrides of one arm's `flwr run`. An arm with fewer noise levels
    than the experiment (vanilla, noise injection: K = 1) drops the command line's settings
    of the levels it does not have (`recovery.noise_k.*` for k >= its K), so that one
    `--run-config` serves every arm. With `ablation.pretrained` and `ablation.finetune_lr`
    set, every arm but vanilla trains at that lr (it fine-tunes vanilla's model)."""
    k_arm = arm.overrides.get("training.client_num_in_total")
    if k_arm is not None:
        overrides = {key: value for key, value in overrides.items()
                     if not _noise_level_key_beyond(key, k_arm)}
    finetune = exp.ablation.finetune_lr
    lr = {"training.lr": finetune} if finetune is not None and name != "vanilla" else {}
    return {CONF_KEY: exp.conf} | dict(overrides) | dict(arm.overrides) | lr | {
        "seed": seed, "inference.platform.aihwkit.use": False,  # evaluated below, once
        "output.dir": str(out / RUNS_DIR), "output.name": f"{name}-seed{seed}",
        "output.keep_checkpoints": 1}


def _noise_level_key_beyond(key: str, k_total: int) -> bool:
    """Whether `key` is a setting of noise level k >= `k_total` (`recovery.noise_<k>.*`)."""
    parts = key.split(".")
    return (len(parts) > 1 and parts[0] == "recovery" and parts[1].startswith("noise_")
            and parts[1][len("noise_"):].isdigit() and int(parts[1][len("noise_"):]) >= k_total)


@dataclass(frozen=True)
class ArmRun:
    """One (arm, seed) of an ablation, planned before any work."""

    name: str
    seed: int
    arm: Arm
    run_config: Mapping[str, Any] | None  # a flwr arm's `flwr run --run-config`; HWA: None
    exp: Experiment  # what the arm trains with (a flwr arm: what its run resolves to)
    base: Experiment  # the ablation's settings at this seed: every arm's evaluation
    data: Splits  # the seed's data, which every arm of the seed shares


def plan(exp: Experiment, overrides: Mapping[str, Any], out: Path, seeds: Sequence[int],
         names: Sequence[str]) -> list[ArmRun]:
    """Every (arm, seed) run of the ablation in training order (seed by seed, arms in
    `ARM_NAMES` order), each with its settings resolved once and checked by
    `checks.prepare`: the config its `flwr run` will resolve, its model, its aihwkit
    configs and its clients' data shares. `exp` is the ablation's settings, resolved from
    its conf file and `overrides`. ValueError for an unknown arm name, ConfigError naming
    the key otherwise; nothing is trained or written."""
    table = arms(exp)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {', '.join(table)}")
    if exp.ablation.pretrained and "vanilla" not in names:
        names = ["vanilla", *names]  # the pre-training of every other arm
    runs = []
    for seed in seeds:
        base = prepare({CONF_KEY: exp.conf} | dict(overrides) | {"seed": seed})
        for name in sorted(names, key=list(table).index):
            arm = table[name]
            if arm.kind == "hwa":
                runs.append(ArmRun(name, seed, arm, None, base.exp, base.exp, base.data))
                continue
            run_config = arm_run_config(name, arm, exp, overrides, seed, out)
            runs.append(ArmRun(name, seed, arm, run_config, prepare(run_config).exp,
                               base.exp, base.data))
    return runs


def same_run_as_msnat(runs: Sequence[ArmRun]) -> list[str]:
    """The arms of `runs`, other than 'msnat', whose `flwr run` resolves to the same config
    as the 'msnat' arm's of the same seed (for example 'msnat_no_fl' when the config already
    has `training.use_neg = false`): training them would only repeat the 'msnat' run. Empty
    when 'msnat' is not planned."""
    def identity(run: ArmRun) -> dict[str, Any]:
        return {k: v for k, v in run.exp.config.items() if k != "output.name"}

    msnat = {r.seed: identity(r) for r in runs if r.name == "msnat"}
    repeats = {r.name for r in runs if r.name != "msnat" and r.arm.kind == "flwr"
               and r.seed in msnat and identity(r) == msnat[r.seed]}
    return [n for n in dict.fromkeys(r.name for r in runs) if n in repeats]


def train_flwr_arm(run: ArmRun, out: Path, env: Mapping[str, str] | None,
                   init: Path | None = None) -> Trained:
    """One `flwr run` of the planned run config, starting from the weights in `init` if
    given (`model.init`); returns its final model (with FI off, the one of the K with the
    best validation accuracy, as the server's evaluator selects). An interrupted run of this
    arm and seed in `out` is continued from its last checkpoint (`output.resume`), which
    gives the same model as an uninterrupted run. A run that finished before the ablation
    was stopped (`finished_run`) is read back, not run again; its wall time is then the one
    its summary.json records."""
    folder = finished_run(run.name, run.seed, out)
    if folder is not None:
        wall = float(json.loads((folder / "summary.json").read_text())
                     ["wall_seconds_this_invocation"])
    else:
        run_config = dict(run.run_config or {})
        if init is not None:
            run_config["model.init"] = str(init)
        unfinished = unfinished_run(run.name, run.seed, out)
        if unfinished is not None:
            run_config["output.resume"] = str(unfinished)
        started = time.time()
        completed_run(run_config_string(run_config), env)
        wall = time.time() - started
        folder = unfinished or run_folders(out, run.name, run.seed)[0]
    run_folder, exp, data = RunFolder.open(folder), run.exp, run.data
    found = run_folder.last_checkpoint(exp.clients, exp.fused)
    if found is None:
        raise RunFailed(f"{folder}: the run finished without a checkpoint that reads back")
    _, states = found
    models = [deployed_model(exp.model, data.shape, state, exp.training.weight_bits)
              for state in states]
    best = max(range(len(models)), key=lambda k: accuracy(models[k], data.val))
    passes = sum(c["sample_passes"] for c in run_folder.client_replies())
    note = (f"best of K={exp.clients} by validation: sigma "
            f"{exp.noise_levels[best]:g}") if not exp.fused else ""
    curve = [r["val_acc"] for r in run_folder.read_jsonl("metrics.jsonl")]
    return Trained(models[best], passes, wall, exp.rounds * exp.local_epochs, note,
                   max(curve, default=None))


def train_hwa_arm(run: ArmRun, msnat_passes: int | None, out: Path,
                  init: Path | None = None) -> Trained:
    """aihwkit's HWA for the arm's epochs: the experiment's rounds x local epochs, or for
    'hwa_compute' as many epochs as the seed's 'msnat' arm spent sample passes (both
    counted without a shared pre-training); from the weights in `init` if given, else from
    `model.init` or the seeded fresh model the flwr arms start from. It checkpoints every
    epoch (`hwa_checkpoint`) and continues from there when interrupted; its validation
    accuracy is measured after every epoch (for the collapse check)."""
    exp, data = run.exp, run.data
    epochs = exp.rounds * exp.local_epochs
    if run.name == "hwa_compute":
        if msnat_passes is None:
            raise ValueError("arm 'hwa_compute' needs the 'msnat' arm (its training cost)")
        epochs = max(1, round(msnat_passes / len(data.train)))
    start = init or exp.model_init
    weights = model_state(start, exp, "the HWA arm's start") if start is not None else None
    model, stats = hwa.train_hwa(exp.model, exp.hwa, data, epochs, exp.seed, init=weights,
                                 checkpoint=hwa_checkpoint(out, run.name, run.seed),
                                 validate=True)
    resumed = stats["resumed_after_epoch"]
    return Trained(model, int(stats["sample_gradients"]), stats["wall_s"], epochs,
                   f"continued after epoch {resumed}" if resumed else "",
                   max(stats["val_curve"]))


def _flwr_reason(run: ArmRun, out: Path, error: RunFailed) -> str:
    """Why an arm's `flwr run` failed: the first line of its run folder's failed.txt (the
    reason; its second line is advice for `flwr run`, which ablate replaces), else the
    first line of Flower's status."""
    folders = run_folders(out, run.name, run.seed)
    failed = folders[0] / "failed.txt" if folders else None
    if failed is not None and failed.exists():
        return f"{failed.read_text().splitlines()[0]} (its run folder: {folders[0]})"
    return str(error).splitlines()[0]


def _failure(run: ArmRun, out: Path, reason: str, kept: int, advice: str | None = None
             ) -> str:
    """ArmFailed's message: the arm and seed, the `reason`, what is kept and how to
    continue (`advice`, else the two cases: a cause outside the settings, the settings)."""
    advice = advice or (
        "If the cause is outside the settings (a stopped SuperLink, a full disk), run the "
        "same command again: it keeps those rows and resumes this arm from its last "
        "checkpoint. If the settings cause it (a diverging lr or sigma), change them and "
        "give another --out: a folder holds the rows of one set of settings.")
    return (f"arm '{run.name}' of seed {run.seed} failed: {reason}\n"
            f"The {kept} finished (arm, seed) row(s) in {out} are kept. {advice}")


def evaluate(model: nn.Module, data: Splits, exp: Experiment) -> dict[str, Any]:
    """The same evaluation for every arm: clean accuracy, and under each protocol the
    accuracy on the device at each drift time, the n_w sweep at the first drift time and the
    n_w columns (`ablation.n_w_columns`) also at the last (key "n_w_late": read noise after
    drift), on the test split; with `ablation.validation` the clean and per-drift-time
    accuracies and the n_w columns on the validation split too (key "val"). Accuracies are
    fractions."""
    evaluation, seed = exp.evaluation, exp.seed
    times, repeats = evaluation.drift_times, evaluation.repeats
    device = evaluation_device(exp)

    columns = exp.ablation.n_w_columns

    def on_device(split, protocol, n_w_values) -> dict[str, Any]:
        """Accuracy per drift time, per n_w value at the first drift time and per n_w column
        at the last (a protocol on the C++ tile runs on the CPU)."""
        on = {"batch_size": evaluation.batch_size, "one_pass": evaluation.one_pass,
              "device": device if protocol.tile == "torch" else torch.device("cpu"),
              "calibration": data.train}
        drift = drift_accuracy(model, split, protocol, times, repeats, seed, **on)
        result = {"drift": drift}
        for kind, values, at_time in (("n_w", n_w_values, times[0]),
                                      ("n_w_late", columns, times[-1])):
            if kind == "n_w" or len(times) > 1:
                result[kind] = {n_w: at[drift_label(at_time)] for n_w, at in n_w_sweep(
                    model, split, protocol, values, (at_time,), repeats, seed, **on).items()}
        return result

    protocols = evaluation.protocols.items()
    result: dict[str, Any] = {
        "clean": accuracy(model, data.test),
        "protocols": {name: on_device(data.test, protocol, evaluation.n_w_sweep)
                      for name, protocol in protocols}, "torch_device": str(device)}
    if exp.ablation.validation:  # what recipes are chosen on; same seed, other images
        result["val"] = {"clean": accuracy(model, data.val), "protocols": {
            name: on_device(data.val, protocol, exp.ablation.n_w_columns)
            for name, protocol in protocols}}
    return result


def run_ablation(exp: Experiment, overrides: Mapping[str, Any], out: Path,
                 seeds: Sequence[int], names: Sequence[str] = ARM_NAMES,
                 env: Mapping[str, str] | None = None,
                 progress: Callable[[str], None] = print,
                 merge: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """Train and evaluate every arm for every seed (`exp` resolved from its conf file and
    the command-line `overrides`, which every `flwr run` receives too); returns one row per
    (arm, seed) and writes results.csv, results.md and the plots into `out` (rewritten after
    every arm, so a crash keeps what was finished).

    Every run is planned and checked first (`plan`), before any work. Run again with the
    same `out` and settings (more seeds or arms allowed), it continues: finished (arm, seed)
    rows are kept from `out/rows.jsonl`, an interrupted `flwr run` is resumed from its last
    checkpoint, an interrupted HWA arm after its last epoch; the tables and plots are rendered
    from the folder's rows and the new ones. An arm whose run would be the 'msnat' run
    itself (`same_run_as_msnat`) is not trained. ConfigError (before any work) when `out`
    holds an ablation of other settings. The folders in `merge` (the same settings) give
    `out` the rows it lacks first (`merge_folders`), after the plan is checked."""
    runs = plan(exp, overrides, out, seeds, names)
    if merge:
        progress(f"merged {merge_folders(exp, out, merge, progress)} (arm, seed) row(s) "
                 f"from {', '.join(map(str, merge))}")
    repeats = same_run_as_msnat(runs)
    if repeats:
        progress(f"not trained: {', '.join(repeats)} (the same run as 'msnat' with these "
                 "settings)")
        runs = [r for r in runs if r.name not in repeats]
    rows = finished_rows(exp, out, progress)
    write_state(out, exp)
    done = {(r["arm"], r["seed"]) for r in rows}
    if done:
        progress(f"continuing {out}: {len(done)} (arm, seed) result(s) kept")
    passes = {(r["arm"], r["seed"]): r["sample_passes"] for r in rows}
    rendered = False
    for run in runs:
        if (run.name, run.seed) in done:
            continue
        label = run.arm.label
        init, pre = None, 0  # the pre-training, where the arms fine-tune vanilla's model
        if exp.ablation.pretrained and run.name != "vanilla":
            init, pre = model_path(out, "vanilla", run.seed), passes[("vanilla", run.seed)]
        progress(f"[seed {run.seed}] training {label}"
                 f"{' from the vanilla model' if init else ''} ...")
        if run.arm.kind == "flwr":
            try:
                trained = train_flwr_arm(run, out, env, init)
            except RunFailed as error:
                raise ArmFailed(_failure(run, out, _flwr_reason(run, out, error),
                                         len(rows))) from error
        else:
            msnat = passes.get(("msnat", run.seed))
            try:
                trained = train_hwa_arm(run, None if msnat is None else msnat - pre, out, init)
            except TrainingDiverged as error:  # the settings cause it
                raise ArmFailed(_failure(run, out, str(error), len(rows))) from error
            except ConfigError as error:  # its checkpoint: the message says what to do
                raise ArmFailed(_failure(run, out, str(error), len(rows), advice="Then run "
                                         "the same command again.")) from error
        trained.sample_passes += pre
        passes[(run.name, run.seed)] = trained.sample_passes
        if init is not None:
            trained.note = "; ".join(filter(None, [
                f"fine-tuned from vanilla ({pre:.3g} of its sample passes)", trained.note]))
        save_model(trained.model, model_path(out, run.name, run.seed))
        progress(f"[seed {run.seed}] evaluating {label} ...")
        metrics = evaluate(trained.model, run.data, run.base)
        row = {"arm": run.name, "method": label, "seed": run.seed,
               "epochs": trained.epochs, "sample_passes": trained.sample_passes,
               "pretrained_passes": pre, "model": str(model_path(out, run.name, run.seed)),
               "wall_seconds": round(trained.wall_seconds, 1), "note": trained.note,
               "best_val_during_training": trained.best_val,
               "num_classes": run.data.num_classes, **metrics}
        why = collapse_reason(row)
        if why:
            progress(f"[seed {run.seed}] {label} COLLAPSED: {why}; flagged in the tables, "
                     "its seed left out of the paired differences")
        rows.append(row)
        append_row(out, row)
        hwa_checkpoint(out, run.name, run.seed).unlink(missing_ok=True)  # the row has it
        write_ablation(rows, exp.ablation.n_w_columns, out, exp.ablation.reference)
        rendered = True
    if rows and not rendered:  # nothing left to train: render what the folder holds
        write_ablation(rows, exp.ablation.n_w_columns, out, exp.ablation.reference)
    return rows
