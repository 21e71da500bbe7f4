"""Training one planned (arm, seed): a `flwr run` of this project, aihwkit's HWA in-process,
or the vanilla model clipped without training. Each continues an interrupted run of its own
(`output.resume`, HWA's epoch checkpoint) and returns the final model with its cost."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .. import hwa
from ..checks import model_state
from ..clip import gaussian_clip_
from ..flwr_cli import RunFailed, completed_run, run_config_string
from ..models import deployed_model
from ..outputs import RunFolder
from ..training import accuracy
from .arms import ArmRun
from .folder import finished_run, hwa_checkpoint, model_path, run_folders, unfinished_run


@dataclass
class Trained:
    model: nn.Module
    sample_passes: int
    wall_seconds: float
    epochs: float
    note: str = ""
    best_val: float | None = None  # the best clean validation accuracy during training


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


def clip_vanilla(run: ArmRun, out: Path) -> Trained:
    """The 'vanilla_clipped' arm: the seed's vanilla model clipped once at HWA's clip
    (`ablation.hwa.clip_sigma` stds per layer, `clip.gaussian_clip_`), no training. Its
    saved model is the clipped one, so `infer` reproduces its row without
    `inference.clip_sigma`."""
    exp, data = run.exp, run.data
    state = model_state(model_path(out, "vanilla", run.seed), exp, "the vanilla model")
    model = gaussian_clip_(deployed_model(exp.model, data.shape, state,
                                          exp.training.weight_bits), exp.hwa.clip_sigma)
    return Trained(model, 0, 0.0, 0, f"clipped at {exp.hwa.clip_sigma:g} std per layer",
                   accuracy(model, data.val))


