"""`analogai-fl ablate`: every planned (arm, seed) trained, evaluated and written as a row,
continuing a folder where it stopped (`run_ablation`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..comparison import collapse_reason
from ..errors import ArmFailed, ConfigError
from ..flwr_cli import RunFailed
from ..outputs import probe_writable
from ..schema_ablation import ARM_NAMES
from ..settings import Experiment
from ..training import TrainingDiverged
from .arms import ArmRun, plan, same_run_as_msnat
from .evaluate import evaluate
from .folder import (
    append_row,
    finished_rows,
    hwa_checkpoint,
    merge_folders,
    model_path,
    run_folders,
    save_model,
    write_state,
)
from .primary import primary_markdown, write_primary_csv
from .report import write_ablation
from .train import clip_vanilla, train_flwr_arm, train_hwa_arm


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
    probe_writable(out, "--out")  # after every check, before any work
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
        if (exp.ablation.pretrained or run.arm.kind == "clipped") and run.name != "vanilla":
            init, pre = model_path(out, "vanilla", run.seed), passes[("vanilla", run.seed)]
        progress(f"[seed {run.seed}] training {label}"
                 f"{' from the vanilla model' if init else ''} ...")
        if run.arm.kind == "clipped":
            trained = clip_vanilla(run, out)
        elif run.arm.kind == "flwr":
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
        if init is not None and run.arm.kind != "clipped":
            trained.note = "; ".join(filter(None, [
                f"fine-tuned from vanilla ({pre:.3g} of its sample passes)", trained.note]))
        save_model(trained.model, model_path(out, run.name, run.seed), run.base.config)
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
        write_report(rows, exp, out)
        rendered = True
    if rows and not rendered:  # nothing left to train: render what the folder holds
        write_report(rows, exp, out)
    return rows


def write_report(rows: Sequence[dict[str, Any]], exp: Experiment, out: Path) -> None:
    """The folder's report (`report.write_ablation`), led by the pre-registered primary
    tests where `ablation.primary_contrasts` names them (and primary.csv)."""
    settings = exp.ablation
    lead = ""
    if settings.primary_contrasts and not settings.tuning:
        lead = primary_markdown(rows, settings.primary_contrasts, settings.primary_endpoints,
                                settings.n_w_columns)
        if "not yet" not in lead:
            write_primary_csv(rows, settings.primary_contrasts, settings.primary_endpoints,
                              settings.n_w_columns, out / "primary.csv")
    write_ablation(rows, settings.n_w_columns, out, settings.reference, lead)
