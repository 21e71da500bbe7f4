"""Reporting: every table, CSV file, plot and number format the project prints or writes.

    mean_std / percent / drift_label   one format for accuracies (percent, 1 decimal) and
                                       drift times ("1s", "1h", "1d", "1y")
    final_table                        a run's clean vs analog accuracy (ServerApp, at the end)
    infer_tables / write_infer         `analogai-fl infer`: tables, drift.csv, n_w_sweep.csv,
                                       infer.png

`analogai-fl ablate`'s report is `ablation.report`.

Accuracies are fractions (0..1) everywhere in the data and percent only when formatted.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from .outputs import atomic_write, write_csv


def percent(x: float) -> str:
    """A fraction as percent with one decimal: 0.9734 -> '97.3'."""
    return f"{100 * x:.1f}"


def mean_std(mean: float, std: float | None = None) -> str:
    """'mean ± std' in percent ('mean' alone without a spread)."""
    return percent(mean) if std is None else f"{percent(mean)} ± {percent(std)}"


def entry_text(entry: Mapping[str, float]) -> str:
    """An `analog.drift_accuracy` entry ({'mean', 'std'} over Monte-Carlo repeats)."""
    return mean_std(entry["mean"], entry["std"])


def spread(values: Sequence[float]) -> str:
    """Mean ± sample std of per-seed values (the mean alone for one seed)."""
    return mean_std(statistics.fmean(values),
                    statistics.stdev(values) if len(values) > 1 else None)


def drift_label(seconds: float) -> str:
    """1 -> '1s', 3600 -> '1h', 86400 -> '1d', 31536000 -> '1y'."""
    for unit, size in (("y", 31536000), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def save_png(fig: Any, path: Path, dpi: int) -> None:
    """A matplotlib figure as the PNG file `path`, written atomically (`atomic_write`: a
    failed write keeps the previous picture; WriteFailed names the file)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- a run ----------------------------------------------------------------------------------

def final_table(records: Sequence[Mapping[str, Any]], fused: bool) -> tuple[Table, dict]:
    """Clean vs PCM accuracy per drift time: final round and best round by validation."""
    final = records[-1]
    best = max(records, key=lambda rec: rec["val_acc"])
    labels = list(final.get("pcm", {}))
    table = Table(title="Test accuracy (%): clean digital vs PCM (mean ± std over repeats)")
    for column in ["model", "round", "sigma", "val", "clean", *[f"PCM {x}" for x in labels]]:
        table.add_column(column, justify="left" if column == "model" else "right")

    def add(name: str, rec: Mapping[str, Any], sigma: str) -> None:
        pcm = [entry_text(rec["pcm"][x]) for x in labels]
        table.add_row(name, str(rec["round"]), sigma, percent(rec["val_acc"]),
                      percent(rec["clean_acc"]), *pcm)

    if fused:
        add("global (final)", final, "all")
        add("global (best val)", best, "all")
    else:
        for m in final["models"]:
            add(f"noise_{m['noise_index']} (final)", {**m, "round": final["round"]},
                f"{m['sigma']:g}")
    summary = {"final": final, "best_round_by_val": best["round"], "best": best}
    return table, summary


# --- analogai-fl infer ----------------------------------------------------------------------

def write_infer(results: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    """drift.csv, n_w_sweep.csv (if swept) and infer.png in `out`, each written atomically
    (WriteFailed naming the file)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "drift.csv"]
    write_csv(written[0], ["model", "device", "n_w", "drift", "seconds", "mean", "std",
                           "clean_acc"],
              [[r["model"], r["protocol"]["device"], r["protocol"]["n_w"], label,
                e["seconds"], e["mean"], e["std"], r["clean_acc"]]
               for r in results for label, e in r["drift"].items()])
    if any("n_w_sweep" in r for r in results):
        written.append(out / "n_w_sweep.csv")
        write_csv(written[-1], ["model", "device", "n_w", "drift", "seconds", "mean", "std"],
                  [[r["model"], r["protocol"]["device"], n_w, label, e["seconds"], e["mean"],
                    e["std"]] for r in results
                   for n_w, per_time in r.get("n_w_sweep", {}).items()
                   for label, e in per_time.items()])
    written.append(out / "infer.png")
    plot_infer(results, written[-1])
    return written


def plot_infer(results: Sequence[Mapping[str, Any]], path: Path) -> None:
    plt = pyplot()
    swept = any("n_w_sweep" in r for r in results)
    fig, axes = plt.subplots(1, 2 if swept else 1, figsize=(11 if swept else 5.5, 4),
                             squeeze=False)
    ax = axes[0][0]
    for r in results:
        entries = list(r["drift"].values())
        line = ax.errorbar([e["seconds"] for e in entries], [100 * e["mean"] for e in entries],
                           yerr=[100 * e["std"] for e in entries], marker="o", capsize=3,
                           label=f"{r['model']} (clean {percent(r['clean_acc'])}%, dashed)")
        ax.axhline(100 * r["clean_acc"], linestyle="--", color=line[0].get_color(), lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s)")
    ax.set_ylabel("test accuracy (%)")
    proto = results[0]["protocol"]
    ax.set_title(f"{proto['device']}, protocol {proto['name']}, n_w {proto['n_w']:g}")
    ax.legend(fontsize=8)
    if swept:
        ax = axes[0][1]
        for r in results:
            sweep = r.get("n_w_sweep", {})
            for label in next(iter(sweep.values()), {}):
                ax.errorbar(list(sweep), [100 * sweep[n][label]["mean"] for n in sweep],
                            yerr=[100 * sweep[n][label]["std"] for n in sweep], marker="o",
                            capsize=3, label=f"{r['model']} {label}")
        ax.set_xlabel("additive weight noise n_w")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{proto['device']}: accuracy vs n_w")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)
    plt.close(fig)


def infer_tables(results: Sequence[Mapping[str, Any]]) -> list[Any]:
    proto = results[0]["protocol"]
    labels = list(results[0]["drift"])
    drift = Table(title=f"Test accuracy (%): clean digital vs {proto['device']} "
                        f"(protocol {proto['name']}, tile {proto['tile']}, n_w {proto['n_w']:g},"
                        f" GDC {'on' if proto['drift_compensation'] else 'off'}; mean ± std "
                        "over repeats)")
    for column in ["model", "clean", *labels]:
        drift.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        drift.add_row(r["model"], percent(r["clean_acc"]),
                      *[entry_text(r["drift"][x]) for x in labels])
    out = [drift]
    if any("n_w_sweep" in r for r in results):
        sweep = Table(title=f"n_w sweep: {proto['device']} test accuracy (%) at each drift time")
        for column in ["model", "n_w", *labels]:
            sweep.add_column(column, justify="left" if column == "model" else "right")
        for r in results:
            for n_w, per_time in r.get("n_w_sweep", {}).items():
                sweep.add_row(r["model"], f"{n_w:g}", *[entry_text(per_time[x]) for x in labels])
        out.append(sweep)
    if all("layers" in r for r in results):
        out.append(layer_table(results))
    return out


def layer_table(results: Sequence[Mapping[str, Any]]) -> Any:
    """Each evaluated model's Conv/Linear weights as programmed (`clip.layer_statistics`):
    max|W|/rms(W), which scales the read noise relative to a typical weight, and the share of
    weights beyond k standard deviations of their layer (k = 2.5: the HWA recipe's clip)."""
    k = results[0]["layers"][0]["k"] if results[0]["layers"] else 2.5
    clip = results[0].get("clip_sigma", 0.0)
    table = Table(title="Weights as programmed" + (f" (after inference.clip_sigma {clip:g})"
                                                   if clip else "")
                  + f": per layer, max|W|/rms(W) and % of weights beyond {k:g} std")
    for column in ("model", "layer", "kind", "weights", "max|W|/rms(W)", f"% > {k:g} std"):
        table.add_column(column, justify="left" if column in ("model", "layer", "kind")
                         else "right")
    for r in results:
        for layer in r["layers"]:
            table.add_row(r["model"], layer["name"], layer["kind"], str(layer["size"]),
                          f"{layer['peak_to_rms']:.2f}", f"{100 * layer['beyond']:.2f}")
    return table
