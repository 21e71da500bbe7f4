"""An ablation's folder (`analogai-fl ablate --out DIR`): what its rows were made with
(ablation.json), its finished rows (rows.jsonl), every arm's final model (models/), the flwr
arms' run folders and the HWA arms' epoch checkpoints (runs/). What lets an interrupted or
extended ablation continue where it stopped."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import defaults, dump_yaml
from ..errors import ConfigError
from ..outputs import RunFolder, append_jsonl, atomic_text, atomic_write, read_jsonl
from ..schema import CONF_KEY
from ..settings import Experiment

MODELS_DIR = "models"  # every arm's final model: <arm>-seed<seed>.pt, a plain state_dict
RUNS_DIR = "runs"  # the flwr arms' run folders, the HWA arms' epoch checkpoints


def model_path(out: Path, name: str, seed: int) -> Path:
    """Where the ablation in `out` keeps arm `name`'s final model of `seed`."""
    return out / MODELS_DIR / f"{name}-seed{seed}.pt"


def run_folders(out: Path, name: str, seed: int) -> list[Path]:
    """The flwr run folders of arm `name` and `seed` in `out`, newest first (their names
    end in the start time)."""
    return sorted((out / RUNS_DIR).glob(f"{name}-seed{seed}-*"), reverse=True)


def unfinished_run(name: str, seed: int, out: Path) -> Path | None:
    """The newest run folder of this arm and seed that has a checkpoint but no summary (an
    interrupted `flwr run`, continued with `output.resume`), if any."""
    for folder in run_folders(out, name, seed):
        if not (folder / "summary.json").exists() and any(
                RunFolder(folder).checkpoints.glob("round_*.pt")):
            return folder
    return None


def finished_run(name: str, seed: int, out: Path) -> Path | None:
    """The newest run folder of this arm and seed whose `flwr run` finished (summary.json is
    written last, after its final round), if any. Its arm has no row when the ablation was
    stopped after the run and before the row (during its evaluation): the run is read back,
    not trained again."""
    for folder in run_folders(out, name, seed):
        if (folder / "summary.json").exists():
            return folder
    return None


def hwa_checkpoint(out: Path, name: str, seed: int) -> Path:
    """Where HWA arm `name` of `seed` keeps its state after every epoch until its row is
    written (`hwa.train_analog`: an interrupted arm continues after its last epoch)."""
    return out / RUNS_DIR / f"{name}-seed{seed}" / "hwa_epoch.pt"


def save_model(model: nn.Module, path: Path, config: Mapping[str, Any]) -> None:
    """`model`'s state_dict to `path` (a plain state_dict: `analogai-fl infer` and
    `model.init` read it) and beside it `<stem>.yaml`, the `config` its row was evaluated
    with (`config_beside`: what `infer` and `export` read when no --conf is given), both
    written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    atomic_text(config_beside(path), dump_yaml(config))


def config_beside(model: Path) -> Path:
    """The config saved beside an ablation's model (`save_model`)."""
    return model.with_suffix(".yaml")


STATE_FILE = "ablation.json"  # what the folder's rows were made with
ROWS_FILE = "rows.jsonl"  # one finished (arm, seed) per line


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings every row of one ablation folder shares: the resolved config without
    the seed (seeds may be added later), the run name, the conf file's path (its values
    are in the resolved config, so a moved checkout continues its folders) and what only
    the report reads (`ablation.reference`, the primary tests), as JSON types (what the
    folder's file holds, so the two compare)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k not in REPORT_ONLY}))


REPORT_ONLY = ("seed", "output.name", CONF_KEY, "ablation.reference",
               "ablation.primary_contrasts", "ablation.primary_endpoints")


def write_state(out: Path, exp: Experiment) -> None:
    """ablation.json: the settings the folder's rows are made with (`identity`), written
    atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / STATE_FILE, json.dumps({"config": identity(exp.config)}, indent=1))


def append_row(out: Path, row: Mapping[str, Any]) -> None:
    """One finished (arm, seed) row at the end of rows.jsonl, on disk before it returns."""
    append_jsonl(out / ROWS_FILE, row)


def _saved_config(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    try:
        return json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"'{path}' is damaged ({type(err).__name__}: {err}): it records "
                          "the settings this folder's rows were made with; restore it, or "
                          "give another --out") from None


def finished_rows(exp: Experiment, out: Path, warn: Callable[[str], None] = print,
                  given_as: str = "--out") -> list[dict[str, Any]]:
    """The rows already in `out` (empty for a new folder). ConfigError when `out` (the
    folder given as `given_as`) holds an ablation of other settings, naming the keys that
    differ: its rows would not compare;
    ConfigError naming the file (and line) when ablation.json or rows.jsonl is damaged,
    except a last row cut short when the ablation was killed writing it: that row is
    dropped (its arm trains again) and `warn` told so."""
    if not (out / STATE_FILE).exists():
        return []
    # a key added to the schema after the folder was written has its default there
    saved = identity(defaults()) | identity(_saved_config(out))
    mine = identity(exp.config)
    differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {mine.get(k)!r} now"
                          for k in differ[:5]) + ("; ..." if len(differ) > 5 else "")
        advice = ("use the same conf and --run-config to continue it, or another --out"
                  if given_as == "--out" else "only folders of the same settings merge")
        raise ConfigError(f"{given_as} {out}: holds an ablation with other settings "
                          f"({shown}); {advice}")
    rows = read_jsonl(out / ROWS_FILE, warn)
    for row in rows:  # JSON keys are strings; the n_w sweep is keyed by float
        for results in [*row.get("protocols", {}).values(),  # a tuning row has none
                        *row.get("val", {}).get("protocols", {}).values()]:
            for kind in ("n_w", "n_w_late"):  # older folders lack some
                if kind in results:
                    results[kind] = {float(n_w): v for n_w, v in results[kind].items()}
    return rows


def merge_folders(exp: Experiment, out: Path, others: Sequence[Path],
                  warn: Callable[[str], None] = print) -> int:
    """Copy into `out` the finished rows of the ablation folders `others` that `out` lacks
    (by arm and seed), each with its model and its flwr run folders: parts of one ablation
    run side by side (other seeds or arms, one process each) become one folder, whose
    report pairs them all. A row that `out` already has is kept as it is there. Every folder
    is checked before anything is copied: ConfigError, naming it, when it is `out` itself,
    holds no ablation (no ablation.json), holds one of other settings or a damaged file, or
    lacks a row's model. Returns the number of rows copied."""
    theirs = []
    for other in others:
        if other.resolve() == out.resolve():
            raise ConfigError(f"--merge {other}: is the --out folder itself")
        if not (other / STATE_FILE).exists():
            raise ConfigError(f"--merge {other}: no ablation folder (no {STATE_FILE} in it)")
        rows = finished_rows(exp, other, warn, given_as="--merge")
        for row in rows:
            if not model_path(other, row["arm"], row["seed"]).exists():
                raise ConfigError(f"--merge {other}: the model of its row ({row['arm']}, seed "
                                  f"{row['seed']}) is missing: "
                                  f"{model_path(other, row['arm'], row['seed'])}")
        theirs.append((other, rows))
    have = {(r["arm"], r["seed"]) for r in finished_rows(exp, out, warn)}
    write_state(out, exp)
    copied = 0
    for other, rows in theirs:
        for row in rows:
            if (row["arm"], row["seed"]) in have:
                continue
            model = model_path(out, row["arm"], row["seed"])
            model.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model_path(other, row["arm"], row["seed"]), model)
            if config_beside(model_path(other, row["arm"], row["seed"])).exists():
                shutil.copy2(config_beside(model_path(other, row["arm"], row["seed"])),
                             config_beside(model))
            for run in run_folders(other, row["arm"], row["seed"]):
                if not (out / RUNS_DIR / run.name).exists():
                    shutil.copytree(run, out / RUNS_DIR / run.name)
            append_row(out, row | {"model": str(model)})
            have.add((row["arm"], row["seed"]))
            copied += 1
    return copied
