"""The ablation's arms and its plan: what each arm is (`arms`: the overrides of its `flwr run`,
or aihwkit's HWA, or no training), the run config of each (arm, seed), and every run planned
and checked before any work (`plan`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import prepare
from ..data import Splits
from ..schema import CONF_KEY
from ..settings import Experiment
from .folder import RUNS_DIR


@dataclass(frozen=True)
class Arm:
    label: str
    kind: str  # "flwr" (a run of this project), "hwa" (aihwkit's) or "clipped" (no training)
    overrides: Mapping[str, Any] = field(default_factory=dict)


def arms(exp: Experiment) -> dict[str, Arm]:
    """The arms, each as the overrides of its `flwr run` (written, not read, keys). The
    `_analog` arms train under the chip's forward (`training.noise_model=analog`); vanilla
    trains without any noise whatever the noise model. Two controls spend MSNAT's sample
    passes on one model without federation: `noise_injection_compute` (one sigma, more
    epochs) and `multiscale` (MSNAT's K levels drawn per batch, FL as MSNAT's). The two
    recipe arms (`recipe_overrides`) train with aihwkit HWA's recipe on the chip's forward:
    `hwa_chip` one model at HWA's modifier std, `msnat_hwa` the K levels fused on `iid`
    shards, at the same sample passes. `vanilla_clipped` is vanilla's model clipped once at
    HWA's clip, without training (kind "clipped")."""
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
    hwa, recipe = exp.hwa, recipe_overrides(exp)
    return {
        "vanilla": Arm("vanilla (no noise)", "flwr",
                       one_client | {"recovery.noise_0.act_inject.sigma": 0.0,
                                     "training.noise_model": "weight"}),
        "vanilla_clipped": Arm(f"vanilla, clipped once at {hwa.clip_sigma:g} std (no "
                               "training)", "clipped"),
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
        "hwa_chip": Arm(f"HWA recipe on the chip's forward, one model (sigma "
                        f"{hwa.modifier_std:g})", "flwr",
                        recipe | one_client | {
                            "recovery.noise_0.act_inject.sigma": hwa.modifier_std,
                            "data.partition": "full",
                            "training.lr": exp.ablation.hwa_chip_lr or hwa.lr}),
        "msnat_hwa": Arm(f"MSNAT on the HWA recipe (sigma {levels} fused, iid shards)",
                         "flwr", recipe | {"data.partition": "iid",
                                           "training.lr": exp.ablation.msnat_hwa_lr or hwa.lr}),
        "hwa": Arm("aihwkit HWA (same epochs)", "hwa"),
        "hwa_compute": Arm("aihwkit HWA (same compute as MSNAT)", "hwa"),
    }


def recipe_overrides(exp: Experiment) -> dict[str, Any]:
    """aihwkit HWA's recipe (`ablation.hwa.*`) as `flwr run` keys: the chip's forward with
    HWA's output noise and converters, its Gaussian clip after every step (none when
    `ablation.hwa.clip_type` is not gaussian), SGD with its momentum and weight decay, its
    batch size and lr schedule (over the rounds, one local epoch each as HWA's epochs), no
    feedback loops (so no proximal term) and fusion by uniform averaging. The optimiser
    restarts every round (as every flwr arm's), where aihwkit's HWA keeps its momentum."""
    hwa = exp.hwa
    return {"training.noise_model": "analog", "training.analog.out_noise": hwa.out_noise,
            "training.analog.dac_bits": hwa.dac_bits, "training.analog.adc_bits": hwa.adc_bits,
            "training.clip_sigma": hwa.clip_sigma if hwa.clip_type == "gaussian" else 0.0,
            "training.optimizer": "sgd", "training.momentum": hwa.momentum,
            "training.weight_decay": hwa.weight_decay, "training.schedule": hwa.schedule,
            "training.batch_size": hwa.batch_size, "training.use_neg": False,
            "training.use_fl": True, "strategy.name": "msnat",
            "strategy.weighting": "uniform"}


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def arm_run_config(name: str, arm: Arm, exp: Experiment, overrides: Mapping[str, Any],
                   seed: int, out: Path) -> dict[str, Any]:
    """The `--run-config` overrides of one arm's `flwr run`. An arm with fewer noise levels
    than the experiment (vanilla, noise injection: K = 1) drops the command line's settings
    of the levels it does not have (`recovery.noise_k.*` for k >= its K), so that one
    `--run-config` serves every arm. With `ablation.pretrained` and `ablation.finetune_lr`
    set, every arm but vanilla trains at that lr (it fine-tunes vanilla's model), except an
    arm that sets its own `training.lr` (the recipe arms): the arm's overrides come last."""
    k_arm = arm.overrides.get("training.client_num_in_total")
    if k_arm is not None:
        overrides = {key: value for key, value in overrides.items()
                     if not _noise_level_key_beyond(key, k_arm)}
    finetune = exp.ablation.finetune_lr
    lr = {"training.lr": finetune} if finetune is not None and name != "vanilla" else {}
    return {CONF_KEY: exp.conf} | dict(overrides) | lr | dict(arm.overrides) | {
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
    run_config: Mapping[str, Any] | None  # a flwr arm's `flwr run --run-config`; else None
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
    if (exp.ablation.pretrained or "vanilla_clipped" in names) and "vanilla" not in names:
        names = ["vanilla", *names]  # the pre-training of every other arm; what is clipped
    runs = []
    for seed in seeds:
        base = prepare({CONF_KEY: exp.conf} | dict(overrides) | {"seed": seed})
        for name in sorted(names, key=list(table).index):
            arm = table[name]
            if arm.kind != "flwr":
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


