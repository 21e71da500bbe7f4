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

import csv
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from . import hwa
from .analog import drift_label, n_w_sweep, pcm_accuracy
from .checks import check_client_shares, check_experiment
from .config import PROTOCOLS, defaults, load_yaml, noise_levels, protocol, resolve
from .data import Splits, load_data
from .models import build_model
from .outputs import RunFolder
from .recovery import deployed
from .simulation import completed_run, run_config_string
from .training import accuracy


@dataclass(frozen=True)
class Arm:
    label: str
    kind: str  # "flwr" (a run of this project) or "hwa"
    overrides: Mapping[str, Any] = field(default_factory=dict)


def single_sigma(cfg: Mapping[str, Any]) -> float:
    """The single-noise arm's sigma: `ablation.single_sigma`, or the middle MSNAT level."""
    if cfg["ablation.single_sigma"] is not None:
        return cfg["ablation.single_sigma"]
    return statistics.median(noise_levels(cfg))


def arms(cfg: Mapping[str, Any]) -> dict[str, Arm]:
    one_client = {"training.client_num_in_total": 1, "training.use_neg": False,
                  "training.use_fl": True}
    return {
        "vanilla": Arm("vanilla (no noise)", "flwr",
                       one_client | {"recovery.noise_0.act_inject.sigma": 0.0}),
        "noise_injection": Arm(f"noise injection (sigma {single_sigma(cfg):g})", "flwr",
                               one_client | {"recovery.noise_0.act_inject.sigma":
                                             single_sigma(cfg)}),
        "msnat_no_fi": Arm("MSNAT w/o FI", "flwr", {"training.use_fl": False}),
        "msnat_no_fl": Arm("MSNAT w/o FL", "flwr", {"training.use_neg": False}),
        "msnat": Arm("MSNAT", "flwr", {}),
        "hwa": Arm("aihwkit HWA (same epochs)", "hwa"),
        "hwa_compute": Arm("aihwkit HWA (same compute as MSNAT)", "hwa"),
    }


ARM_NAMES = tuple(arms({"ablation.single_sigma": 0.0}))


@dataclass
class Trained:
    model: nn.Module
    sample_passes: int
    wall_seconds: float
    epochs: float
    note: str = ""


def arm_run_config(name: str, arm: Arm, cfg: Mapping[str, Any], overrides: Mapping[str, Any],
                   seed: int, out: Path) -> dict[str, Any]:
    """The `--run-config` overrides of one arm's `flwr run`."""
    return {"conf": cfg["conf"]} | dict(overrides) | dict(arm.overrides) | {
        "seed": seed, "inference.platform.aihwkit.use": False,  # evaluated below, once
        "output.dir": str(out / "runs"), "output.name": f"{name}-seed{seed}",
        "output.keep_checkpoints": 1}


def check_arms(cfg: Mapping[str, Any], overrides: Mapping[str, Any], out: Path,
               seeds: Sequence[int], names: Sequence[str]) -> None:
    """Every check each arm's run needs, for every seed, before any training: the config
    that arm's `flwr run` will resolve, its model, its aihwkit configs and its clients'
    data shares (ConfigError naming the key otherwise)."""
    table = arms(cfg)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {', '.join(table)}")
    for seed in seeds:
        for name in names:
            arm = table[name]
            arm_cfg = resolve(arm_run_config(name, arm, cfg, overrides, seed, out)) if (
                arm.kind == "flwr") else dict(cfg) | {"seed": seed}
            check_experiment(arm_cfg)
            check_client_shares(arm_cfg, load_data(arm_cfg, download=arm_cfg["data.download"]))


def train_flwr_arm(name: str, arm: Arm, cfg: Mapping[str, Any], overrides: Mapping[str, Any],
                   seed: int, out: Path, env: Mapping[str, str] | None) -> Trained:
    """One `flwr run` with the arm's overrides; returns its final model (with FI off, the
    one of the K with the best validation accuracy, as the server's evaluator selects)."""
    run_config = run_config_string(arm_run_config(name, arm, cfg, overrides, seed, out))
    started = time.time()
    completed_run(run_config, env)
    wall = time.time() - started
    (folder,) = sorted((out / "runs").glob(f"{name}-seed{seed}-*"))[-1:]
    run = RunFolder.open(folder)
    run_cfg = defaults() | load_yaml(folder / "config.yaml")
    fused = run_cfg["training.use_fl"]
    count = run_cfg["training.client_num_in_total"]
    _, states = run.last_checkpoint(count, fused)
    data = load_data(run_cfg)
    models = []
    for state in states:
        model = build_model(run_cfg["model.name"], data.in_channels, data.num_classes,
                            data.image_size)
        model.load_state_dict(state)
        models.append(deployed(model, run_cfg))
    best = max(range(len(models)), key=lambda k: accuracy(models[k], data.val))
    passes = sum(c["sample_passes"] for c in run.read_jsonl("clients.jsonl"))
    epochs = run_cfg["training.rounds"] * run_cfg["training.local_epochs"]
    note = f"best of K={count} by validation: sigma {noise_levels(run_cfg)[best]:g}" if (
        not fused) else ""
    return Trained(models[best], passes, wall, epochs, note)


def train_hwa_arm(name: str, cfg: Mapping[str, Any], data: Splits, seed: int,
                  msnat_passes: int | None) -> Trained:
    epochs = cfg["training.rounds"] * cfg["training.local_epochs"]
    if name == "hwa_compute":
        if msnat_passes is None:
            raise ValueError("arm 'hwa_compute' needs the 'msnat' arm (its training cost)")
        epochs = max(1, round(msnat_passes / len(data.train)))
    model, stats = hwa.train_hwa(cfg, data, epochs, seed)
    return Trained(model, int(stats["sample_gradients"]), stats["wall_s"], epochs)


def evaluate(model: nn.Module, data: Splits, cfg: Mapping[str, Any], seed: int
             ) -> dict[str, Any]:
    """The same evaluation for every arm: clean accuracy, and under each protocol the PCM
    accuracy at each drift time and the n_w sweep at the first drift time."""
    result: dict[str, Any] = {"clean": accuracy(model, data.test), "protocols": {}}
    times, repeats = cfg["inference.drift_times"], cfg["inference.repeats"]
    for name in PROTOCOLS:
        base = protocol(cfg | {"inference.protocol": name})
        drift = pcm_accuracy(model, data.test, base, times, repeats, seed)
        sweep = {n_w: at[drift_label(times[0])] for n_w, at in n_w_sweep(
            model, data.test, base, cfg["inference.n_w_sweep"], times[:1], repeats, seed).items()}
        result["protocols"][name] = {"drift": drift, "n_w": sweep}
    return result


def run_ablation(cfg: Mapping[str, Any], overrides: Mapping[str, Any], out: Path,
                 seeds: Sequence[int], names: Sequence[str] = ARM_NAMES,
                 env: Mapping[str, str] | None = None,
                 progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and evaluate every arm for every seed (`cfg` resolved from its conf file and the
    command-line `overrides`, which every `flwr run` receives too); returns one row per
    (arm, seed) and
    writes results.csv, results.md and the plots into `out` (rewritten after every arm, so
    a crash keeps what was finished)."""
    check_arms(cfg, overrides, out, seeds, names)
    out.mkdir(parents=True, exist_ok=True)
    table = arms(cfg)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        seeded = dict(cfg) | {"seed": seed}
        data = load_data(seeded, download=seeded["data.download"])
        msnat_passes = None
        for name in sorted(names, key=list(table).index):
            arm = table[name]
            progress(f"[seed {seed}] training {arm.label} ...")
            if arm.kind == "flwr":
                trained = train_flwr_arm(name, arm, seeded, overrides, seed, out, env)
                if name == "msnat":
                    msnat_passes = trained.sample_passes
            else:
                trained = train_hwa_arm(name, seeded, data, seed, msnat_passes)
            progress(f"[seed {seed}] evaluating {arm.label} ...")
            metrics = evaluate(trained.model, data, seeded, seed)
            rows.append({"arm": name, "method": arm.label, "seed": seed,
                         "epochs": trained.epochs, "sample_passes": trained.sample_passes,
                         "wall_seconds": round(trained.wall_seconds, 1), "note": trained.note,
                         **metrics})
            write_results(rows, seeded, out)
    return rows


def _flat(row: Mapping[str, Any]) -> dict[str, Any]:
    flat = {k: row[k] for k in ("arm", "method", "seed", "epochs", "sample_passes",
                                "wall_seconds", "clean")}
    for name in PROTOCOLS:
        for label, v in row["protocols"][name]["drift"].items():
            flat[f"{name}_pcm_{label}_mean"] = v["mean"]
            flat[f"{name}_pcm_{label}_std"] = v["std"]
        for n_w, v in row["protocols"][name]["n_w"].items():
            flat[f"{name}_n_w_{n_w:g}_mean"] = v["mean"]
            flat[f"{name}_n_w_{n_w:g}_std"] = v["std"]
    return flat | {"note": row["note"]}


def _spread(values: Sequence[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else (
        f"{mean:.1f}")


def markdown(rows: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> str:
    """One table per protocol, one row per method: mean ± std over seeds (PCM cells of a
    single seed are the mean over Monte-Carlo repeats)."""
    methods = list(dict.fromkeys(r["arm"] for r in rows))
    labels = list(rows[0]["protocols"]["realistic"]["drift"])
    selected = cfg["ablation.n_w_columns"]
    parts = []
    for name in PROTOCOLS:
        head = ["method", "clean", *[f"PCM {x}" for x in labels],
                *[f"n_w {v:g}" for v in selected], "sample passes", "wall s"]
        lines = [f"**Protocol `{name}`** (test accuracy %, PCM with drift compensation per "
                 f"the protocol; n_w columns at {labels[0]})", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in methods:
            mine = [r for r in rows if r["arm"] == arm]
            cells = [mine[0]["method"], _spread([r["clean"] for r in mine])]
            cells += [_spread([r["protocols"][name]["drift"][x]["mean"] for r in mine]) for x in labels]
            cells += [_spread([r["protocols"][name]["n_w"][v]["mean"] for r in mine]) for v in selected]
            cells += [f"{statistics.fmean(r['sample_passes'] for r in mine):.3g}",
                      f"{statistics.fmean(r['wall_seconds'] for r in mine):.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    seeds = sorted({r["seed"] for r in rows})
    notes = sorted({f"- {r['method']}: {r['note']}" for r in rows if r["note"]})
    return "\n\n".join(parts) + (f"\n\nSeeds: {seeds}. " + "Sample passes: network passes x "
                                 "examples spent in training (the compute budget).\n") + (
        "\n".join(notes) + "\n" if notes else "")


def write_results(rows: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any],
                  out: Path) -> None:
    flat = [_flat(r) for r in rows]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    (out / "results.md").write_text(markdown(rows, cfg))
    plot(rows, out)


def plot(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    """accuracy_vs_n_w.png and accuracy_vs_drift.png: one line per method, one panel per
    protocol, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["arm"] for r in rows))
    for kind, xlabel, fname in (("n_w", "aihwkit n_w", "accuracy_vs_n_w.png"),
                                ("drift", "time after programming (s)",
                                 "accuracy_vs_drift.png")):
        fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(6 * len(PROTOCOLS), 4.2),
                                 squeeze=False)
        for ax, name in zip(axes[0], PROTOCOLS):
            for arm in methods:
                mine = [r for r in rows if r["arm"] == arm]
                points = mine[0]["protocols"][name][kind]
                xs = [points[k]["seconds"] for k in points] if kind == "drift" else list(points)
                ys = [100 * statistics.fmean(r["protocols"][name][kind][k]["mean"] for r in mine)
                      for k in points]
                ax.plot(xs, ys, marker="o", label=mine[0]["method"])
            if kind == "drift":
                ax.set_xscale("log")
            ax.set(title=f"protocol {name}", xlabel=xlabel, ylabel="test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
