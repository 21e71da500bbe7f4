"""Reporting: every table, CSV file, plot and number format the project prints or writes.

    mean_std / percent / drift_label   one format for accuracies (percent, 1 decimal) and
                                       drift times ("1s", "1h", "1d", "1y")
    final_table                        a run's clean vs analog accuracy (ServerApp, at the end)
    infer_tables / write_infer         `analogai-fl infer`: tables, drift.csv, n_w_sweep.csv,
                                       infer.png
    ablation_markdown / write_ablation `analogai-fl ablate`: results.csv, results.md (with
                                       who leads each column, `leader`) and the two plots

Accuracies are fractions (0..1) everywhere in the data and percent only when formatted.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from .schema import PROTOCOLS


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
    """drift.csv, n_w_sweep.csv (if swept) and infer.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "drift.csv"]
    with open(written[0], "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["model", "device", "n_w", "drift", "seconds", "mean", "std",
                       "clean_acc"])
        for r in results:
            for label, e in r["drift"].items():
                rows.writerow([r["model"], r["protocol"]["device"], r["protocol"]["n_w"], label,
                               e["seconds"], e["mean"], e["std"], r["clean_acc"]])
    if any("n_w_sweep" in r for r in results):
        written.append(out / "n_w_sweep.csv")
        with open(written[-1], "w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(["model", "device", "n_w", "drift", "seconds", "mean", "std"])
            for r in results:
                for n_w, per_time in r.get("n_w_sweep", {}).items():
                    for label, e in per_time.items():
                        rows.writerow([r["model"], r["protocol"]["device"], n_w, label,
                                       e["seconds"], e["mean"], e["std"]])
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
    fig.savefig(path, dpi=120)
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
    return out


# --- analogai-fl ablate ---------------------------------------------------------------------

def _flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    flat = {k: row[k] for k in ("arm", "method", "seed", "epochs", "sample_passes",
                                "wall_seconds", "clean")}
    for name in PROTOCOLS:
        for label, v in row["protocols"][name]["drift"].items():
            flat[f"{name}_pcm_{label}_mean"] = v["mean"]
            flat[f"{name}_pcm_{label}_std"] = v["std"]
        for n_w, v in row["protocols"][name]["n_w"].items():
            flat[f"{name}_n_w_{n_w:g}_mean"] = v["mean"]
            flat[f"{name}_n_w_{n_w:g}_std"] = v["std"]
    if "val" in row:
        flat["val_clean"] = row["val"]["clean"]
        for name in PROTOCOLS:
            results = row["val"]["protocols"][name]
            for label, v in results["drift"].items():
                flat[f"val_{name}_pcm_{label}_mean"] = v["mean"]
            for n_w, v in results.get("n_w", {}).items():
                flat[f"val_{name}_n_w_{n_w:g}_mean"] = v["mean"]
    return flat | {"note": row["note"]}


def ablation_markdown(rows: Sequence[Mapping[str, Any]], n_w_columns: Sequence[float]) -> str:
    """One table per protocol, one row per method: mean ± std over its seeds (the sample
    std; column "seeds" says how many, as methods may have different numbers in a folder
    still being filled), and the validation table. A PCM cell of one seed is the mean over
    Monte-Carlo repeats."""
    methods = list(dict.fromkeys(r["arm"] for r in rows))
    labels = list(rows[0]["protocols"]["realistic"]["drift"])
    selected = n_w_columns
    parts = []
    for name in PROTOCOLS:
        head = ["method", "seeds", "clean", *[f"PCM {x}" for x in labels],
                *[f"n_w {v:g}" for v in selected], "sample passes", "wall s"]
        lines = [f"**Protocol `{name}`** (test accuracy %, PCM with drift compensation per "
                 f"the protocol; n_w columns at {labels[0]})", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in methods:
            mine = [r for r in rows if r["arm"] == arm]
            cells = [mine[0]["method"], str(len(mine)), spread([r["clean"] for r in mine])]
            results = [r["protocols"][name] for r in mine]
            cells += [spread([p["drift"][x]["mean"] for p in results]) for x in labels]
            cells += [spread([p["n_w"][v]["mean"] for p in results]) for v in selected]
            cells += [f"{statistics.fmean(r['sample_passes'] for r in mine):.3g}",
                      f"{statistics.fmean(r['wall_seconds'] for r in mine):.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if all("val" in r for r in rows):
        val_n_w = [v for v in selected
                   if all(v in r["val"]["protocols"][n].get("n_w", {})
                          for r in rows for n in PROTOCOLS)]
        head = ["method", "seeds", "val clean",
                *[f"{name} PCM {x}" for name in PROTOCOLS for x in labels],
                *[f"{name} n_w {v:g}" for name in PROTOCOLS for v in val_n_w]]
        lines = ["**Validation split** (accuracy %: the split that chooses recipes; the tables "
                 f"above are test; n_w columns at {labels[0]})", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in methods:
            mine = [r["val"] for r in rows if r["arm"] == arm]
            cells = [next(r["method"] for r in rows if r["arm"] == arm), str(len(mine)),
                     spread([v["clean"] for v in mine])]
            cells += [spread([v["protocols"][name]["drift"][x]["mean"] for v in mine])
                      for name in PROTOCOLS for x in labels]
            cells += [spread([v["protocols"][name]["n_w"][n_w]["mean"] for v in mine])
                      for name in PROTOCOLS for n_w in val_n_w]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    parts.append(leaders_markdown(rows, labels, selected))
    seeds = sorted({r["seed"] for r in rows})
    by_note: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        if r["note"]:
            by_note.setdefault((r["method"], r["note"]), []).append(r["seed"])
    notes = [f"- {method}: {note} (seed{'s' if len(s) > 1 else ''} "
             f"{', '.join(map(str, sorted(s)))})" for (method, note), s in sorted(by_note.items())]
    return "\n\n".join(parts) + (f"\n\nSeeds: {seeds}. " + "Sample passes: network passes x "
                                 "examples spent in training (the compute budget).\n") + (
        "\n".join(notes) + "\n" if notes else "")


def leader(per_method: Mapping[str, Sequence[float]]) -> str:
    """Who leads one column of the ablation (`per_method`: method -> its per-seed accuracies,
    fractions), as one sentence: the best mean and the runner-up, each mean ± sample std over
    seeds, and the verdict. A lead counts as a win only beyond the seed spread, i.e. larger
    than the larger of the two sample stds (the project's rule: a difference inside the seed
    spread is not a win); with one seed on either side there is no spread to judge by."""
    ranked = sorted(per_method, key=lambda m: statistics.fmean(per_method[m]), reverse=True)
    best = ranked[0]
    if len(ranked) == 1:
        return f"{best} {spread(per_method[best])} (the only method)"
    second = ranked[1]
    a, b = per_method[best], per_method[second]
    lead = statistics.fmean(a) - statistics.fmean(b)
    said = f"{best} {spread(a)} leads {second} {spread(b)} by {100 * lead:.1f} points"
    if min(len(a), len(b)) < 2:
        return said + ": one seed, no spread to judge by"
    width = max(statistics.stdev(a), statistics.stdev(b))
    return said + (": a win, beyond the seed spread" if lead > width
                   else f": within the seed spread ({100 * width:.1f}), not a win")


def leaders_markdown(rows: Sequence[Mapping[str, Any]], labels: Sequence[str],
                     n_w_columns: Sequence[float]) -> str:
    """Per protocol and test column (PCM at each drift time, each n_w column), `leader`."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["**Who leads** (test, mean ± std over seeds; a lead is a win only when larger "
             "than the larger seed std of the two)", ""]
    for name in PROTOCOLS:
        columns = [(f"PCM {x}", "drift", x) for x in labels] + \
                  [(f"n_w {v:g}", "n_w", v) for v in n_w_columns]
        for title, kind, key in columns:
            per_method = {m: [r["protocols"][name][kind][key]["mean"] for r in rows
                              if r["method"] == m] for m in methods}
            lines.append(f"- `{name}` {title}: {leader(per_method)}")
    return "\n".join(lines)


def write_ablation(rows: Sequence[Mapping[str, Any]], n_w_columns: Sequence[float],
                   out: Path) -> None:
    """results.csv, results.md (`n_w_columns`: the n_w values shown) and the plots."""
    flat = [_flat_row(r) for r in rows]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    (out / "results.md").write_text(ablation_markdown(rows, n_w_columns))
    plot_ablation(rows, out)


def seed_curve(rows: Sequence[Mapping[str, Any]], protocol: str, kind: str
               ) -> tuple[list[float], list[float], list[float] | None]:
    """One method's curve over its seeds' `rows` under `protocol`: x (seconds after
    programming for kind "drift", n_w for "n_w"), the mean test accuracy in percent and its
    sample std over seeds in points (None with one seed)."""
    points = rows[0]["protocols"][protocol][kind]
    xs = [points[k]["seconds"] for k in points] if kind == "drift" else list(points)
    per_point = [[100 * r["protocols"][protocol][kind][k]["mean"] for r in rows]
                 for k in points]
    ys = [statistics.fmean(v) for v in per_point]
    spread = [statistics.stdev(v) for v in per_point] if len(rows) > 1 else None
    return xs, ys, spread


def plot_ablation(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    """accuracy_vs_n_w.png and accuracy_vs_drift.png: one line per method, one panel per
    protocol, the mean over seeds with bars of +- one std over seeds (`seed_curve`)."""
    plt = pyplot()
    methods = list(dict.fromkeys(r["arm"] for r in rows))
    for kind, xlabel, fname in (("n_w", "aihwkit n_w", "accuracy_vs_n_w.png"),
                                ("drift", "time after programming (s)",
                                 "accuracy_vs_drift.png")):
        fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(6 * len(PROTOCOLS), 4.2),
                                 squeeze=False)
        for ax, name in zip(axes[0], PROTOCOLS, strict=True):
            for arm in methods:
                mine = [r for r in rows if r["arm"] == arm]
                xs, ys, spread = seed_curve(mine, name, kind)
                ax.errorbar(xs, ys, yerr=spread, marker="o", capsize=3,
                            label=f"{mine[0]['method']} ({len(mine)} seed"
                                  f"{'s' if len(mine) > 1 else ''})")
            if kind == "drift":
                ax.set_xscale("log")
            ax.set(title=f"protocol {name}", xlabel=xlabel, ylabel="test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
