"""`analogai-fl ablate`'s report: results.csv, results.md (a table per protocol, the validation
table, paired differences against the reference arm and the normalised accuracy), paired.csv
and the two plots. The statistics themselves live in `comparison`.

Accuracies are fractions (0..1) in the data and percent only when formatted.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..comparison import (
    Paired,
    collapse_reason,
    comparison_count,
    normalised_accuracy,
    paired_difference,
)
from ..outputs import atomic_text, write_csv
from ..reporting import drift_label, pyplot, save_png, spread
from ..schema import PROTOCOLS
from ..schema_ablation import CRITERION_PROTOCOL


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
        for n_w, v in row["protocols"][name].get("n_w_late", {}).items():
            at = drift_label(v["seconds"])
            flat[f"{name}_n_w_{n_w:g}_{at}_mean"] = v["mean"]
            flat[f"{name}_n_w_{n_w:g}_{at}_std"] = v["std"]
    if "val" in row:
        flat["val_clean"] = row["val"]["clean"]
        for name in PROTOCOLS:
            results = row["val"]["protocols"][name]
            for label, v in results["drift"].items():
                flat[f"val_{name}_pcm_{label}_mean"] = v["mean"]
            for n_w, v in results.get("n_w", {}).items():
                flat[f"val_{name}_n_w_{n_w:g}_mean"] = v["mean"]
            for n_w, v in results.get("n_w_late", {}).items():
                flat[f"val_{name}_n_w_{n_w:g}_{drift_label(v['seconds'])}_mean"] = v["mean"]
    return flat | {"collapsed": collapse_reason(row) or "", "note": row["note"]}


def ablation_markdown(rows: Sequence[Mapping[str, Any]], n_w_columns: Sequence[float],
                      reference: str = "hwa") -> str:
    """One table per protocol, one row per method: mean ± std over its seeds (the sample
    std; column "seeds" says how many, as methods may have different numbers in a folder
    still being filled), the validation table, the paired differences against the
    `reference` arm and the normalised accuracy. A PCM cell of one seed is the mean over
    Monte-Carlo repeats. A method with a collapsed seed (`comparison.collapse_reason`) is
    marked "COLLAPSED" in every table, with the reason below."""
    methods = list(dict.fromkeys(r["arm"] for r in rows))
    collapsed = {(r["arm"], r["seed"]): why for r in rows if (why := collapse_reason(r))}

    def title(arm: str) -> str:
        seeds = sorted(s for a, s in collapsed if a == arm)
        method = next(r["method"] for r in rows if r["arm"] == arm)
        return method + (f" COLLAPSED (seed {', '.join(map(str, seeds))})" if seeds else "")

    labels = list(rows[0]["protocols"]["realistic"]["drift"])
    selected = n_w_columns
    columns = test_columns(rows, labels, selected)[1:]
    parts = []
    for name in PROTOCOLS:
        head = ["method", "seeds", "clean", *[title for title, _ in columns], "sample passes",
                "wall s"]
        lines = [f"**Protocol `{name}`** (test accuracy %, PCM with drift compensation per "
                 f"the protocol; n_w columns at {labels[0]} unless marked)", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in methods:
            mine = [r for r in rows if r["arm"] == arm]
            cells = [title(arm), str(len(mine)), spread([r["clean"] for r in mine])]
            cells += [spread([column_value(r, name, column) for r in mine])
                      for _, column in columns]
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
            cells = [title(arm), str(len(mine)), spread([v["clean"] for v in mine])]
            cells += [spread([v["protocols"][name]["drift"][x]["mean"] for v in mine])
                      for name in PROTOCOLS for x in labels]
            cells += [spread([v["protocols"][name]["n_w"][n_w]["mean"] for v in mine])
                      for name in PROTOCOLS for n_w in val_n_w]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    parts.append(paired_markdown(rows, labels, selected, reference))
    parts.append(normalised_markdown(rows, labels, selected))
    seeds = sorted({r["seed"] for r in rows})
    by_note: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        if r["note"]:
            by_note.setdefault((r["method"], r["note"]), []).append(r["seed"])
    notes = [f"- {method}: {note} (seed{'s' if len(s) > 1 else ''} "
             f"{', '.join(map(str, sorted(s)))})" for (method, note), s in sorted(by_note.items())]
    notes += [f"- COLLAPSED: {title(arm).split(' COLLAPSED')[0]}, seed {seed}: {why}"
              for (arm, seed), why in collapsed.items()]
    return "\n\n".join(parts) + (f"\n\nSeeds: {seeds}. " + "Sample passes: network passes x "
                                 "examples spent in training (the compute budget).\n") + (
        "\n".join(notes) + "\n" if notes else "")


def _late_label(rows: Sequence[Mapping[str, Any]], n_w_columns: Sequence[float]) -> str | None:
    """The drift time of the n_w columns measured after drift ("n_w_late"), when every row
    has them (folders written before 0.3 do not)."""
    try:
        late = [r["protocols"][name]["n_w_late"][v] for r in rows for name in PROTOCOLS
                for v in n_w_columns]
    except KeyError:
        return None
    return drift_label(late[0]["seconds"]) if late else None


def test_columns(rows: Sequence[Mapping[str, Any]], labels: Sequence[str],
             n_w_columns: Sequence[float]) -> list[tuple[str, Any]]:
    """The test columns compared: (title, row -> fraction under a protocol's results)."""
    late = _late_label(rows, n_w_columns)
    return [("clean", None)] + [(f"PCM {x}", ("drift", x)) for x in labels] + \
        [(f"n_w {v:g}", ("n_w", v)) for v in n_w_columns] + \
        ([(f"n_w {v:g} at {late}", ("n_w_late", v)) for v in n_w_columns] if late else [])


def column_value(row: Mapping[str, Any], protocol: str, column: Any) -> float:
    if column is None:
        return row["clean"]
    kind, key = column
    return row["protocols"][protocol][kind][key]["mean"]


def _paired(rows: Sequence[Mapping[str, Any]], arm: str, reference: str, protocol: str,
            column: Any, gone: Sequence[int]) -> Paired | None:
    """`arm` - `reference` in one column under `protocol`, paired by seed over the seeds
    not in `gone` (theirs: `left_out`); None when no seed is left."""
    def by_seed(name: str) -> dict[int, float]:
        return {r["seed"]: column_value(r, protocol, column) for r in rows
                if r["arm"] == name and r["seed"] not in gone}

    mine, theirs = by_seed(arm), by_seed(reference)
    return paired_difference(mine, theirs) if set(mine) & set(theirs) else None


def left_out(rows: Sequence[Mapping[str, Any]], arm: str, reference: str) -> list[int]:
    """The seeds at which `arm` or `reference` collapsed (`comparison.collapse_reason`): a
    pair with a collapsed model compares a failure, so it is left out of the paired
    difference, and the tables say so (the collapse itself is flagged in every table)."""
    return sorted({r["seed"] for r in rows if r["arm"] in (arm, reference)
                   and collapse_reason(r)})


def paired_markdown(rows: Sequence[Mapping[str, Any]], labels: Sequence[str],
                    n_w_columns: Sequence[float], reference: str) -> str:
    """Per protocol, every arm against the `reference` arm: the paired per-seed difference
    of each test column, mean [95% t-interval] in points and its verdict
    (`comparison.Paired`), and how many comparisons the tables make. An arm with a collapsed
    seed (`comparison.collapse_reason`) is flagged instead of compared."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    method = {r["arm"]: r["method"] for r in rows}
    if reference not in arms:
        return (f"**Paired differences**: none; the reference arm '{reference}' "
                "(`ablation.reference`) is not in this folder.")
    columns = test_columns(rows, labels, n_w_columns)
    count = comparison_count(len(arms), len(columns), len(PROTOCOLS))
    head = ["arm - " + method[reference], *[title for title, _ in columns]]
    parts = [f"**Paired differences against {method[reference]}** (test, points: the arm "
             "minus the reference per seed, mean [95% t-interval] over the seeds both have "
             "where neither collapsed; a win only when the interval is above zero, a loss "
             f"when below). These tables make {count} comparisons: at 95% each, about "
             f"{0.05 * count:.1f} false wins or losses are expected between equal arms."]
    for name in PROTOCOLS:
        lines = [f"`{name}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in arms:
            if arm == reference:
                continue
            gone = left_out(rows, arm, reference)
            who = " and ".join(method[a] for a in (arm, reference) if any(
                r["arm"] == a and r["seed"] in gone and collapse_reason(r) for r in rows))
            title = method[arm] + (f" (seed {', '.join(map(str, gone))} left out: {who} "
                                   "collapsed)" if gone else "")
            pairs = [_paired(rows, arm, reference, name, column, gone) for _, column in columns]
            cells = ["no seed left: not compared" if p is None else p.text() for p in pairs]
            lines.append("| " + " | ".join([title, *cells]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def normalised_rows(rows: Sequence[Mapping[str, Any]], labels: Sequence[str],
                    n_w_columns: Sequence[float]) -> list[dict[str, Any]]:
    """Per row whose seed has a vanilla row: Rasch et al. 2023's normalised accuracy A
    (`comparison.normalised_accuracy`, against that vanilla row's clean test accuracy) of
    every analog test column, keyed "<protocol> <title>" (fractions; A = 1: the digital
    model's accuracy, 0: chance)."""
    vanilla = {r["seed"]: r["clean"] for r in rows
               if r["arm"] == "vanilla" and not collapse_reason(r)}
    out = []
    for r in rows:  # a collapsed row (or vanilla) has no meaningful A: left out, flagged
        if r["seed"] not in vanilla or collapse_reason(r):
            continue
        values = {f"{name} {title}": normalised_accuracy(
            column_value(r, name, column), vanilla[r["seed"]], r.get("num_classes", 10))
            for name in PROTOCOLS for title, column in test_columns(rows, labels, n_w_columns)[1:]}
        out.append({"arm": r["arm"], "method": r["method"], "seed": r["seed"], **values})
    return out


def normalised_markdown(rows: Sequence[Mapping[str, Any]], labels: Sequence[str],
                        n_w_columns: Sequence[float]) -> str:
    """The normalised accuracy (`normalised_rows`) per arm: mean ± std over seeds."""
    table = normalised_rows(rows, labels, n_w_columns)
    left_out = sorted({f"{r['arm']} seed {r['seed']}" for r in rows if collapse_reason(r)})
    note = (f" Left out, collapsed: {', '.join(left_out)} (a collapsed vanilla row leaves its "
            "seed out).") if left_out else ""
    if not table:
        return ("**Normalised accuracy**: none; it needs the vanilla arm of the same seed, "
                "not collapsed." + note)
    keys = [k for k in table[0] if k not in ("arm", "method", "seed")]
    lines = ["**Normalised accuracy** A = 1 - (err - err_FP) / (err_chance - err_FP) (Rasch "
             "et al. 2023; err_FP: the vanilla arm's clean test error of the same seed; "
             "A x 100, mean ± std over seeds)." + note, "",
             "| " + " | ".join(["method", "seeds", *keys]) + " |",
             "|" + "---|" * (len(keys) + 2)]
    for arm in dict.fromkeys(t["arm"] for t in table):
        mine = [t for t in table if t["arm"] == arm]
        lines.append("| " + " | ".join([mine[0]["method"], str(len(mine)),
                                        *[spread([t[k] for t in mine]) for k in keys]]) + " |")
    return "\n".join(lines)


def write_paired_csv(rows: Sequence[Mapping[str, Any]], labels: Sequence[str],
                     n_w_columns: Sequence[float], reference: str, path: Path) -> None:
    """paired.csv: one line per (protocol, column, arm) against `reference` (fractions)."""
    arms = [a for a in dict.fromkeys(r["arm"] for r in rows) if a != reference]

    def lines():
        if reference not in {r["arm"] for r in rows}:
            return
        for name in PROTOCOLS:
            for title, column in test_columns(rows, labels, n_w_columns):
                for arm in arms:  # as in the markdown table: collapsed seeds left out
                    seeds = left_out(rows, arm, reference)
                    gone = " ".join(map(str, seeds))
                    p = _paired(rows, arm, reference, name, column, seeds)
                    if p is None:
                        yield [name, title, arm, reference, "", "", "", "",
                               "no seed left: not compared", gone]
                        continue
                    yield [name, title, arm, reference, " ".join(map(str, p.seeds)), p.mean,
                           p.low, p.high, p.verdict, gone]

    write_csv(path, ["protocol", "column", "arm", "reference", "seeds", "mean_difference",
                     "ci95_low", "ci95_high", "verdict", "left_out_collapsed"], lines())


def write_ablation(rows: Sequence[Mapping[str, Any]], n_w_columns: Sequence[float],
                   out: Path, reference: str = "hwa", lead: str = "") -> None:
    """results.csv, results.md (`n_w_columns`: the n_w values shown; `lead`, markdown, at
    its top), paired.csv (against the `reference` arm) and the plots. Rows of a tuning run
    (`ablation.tuning`) give results.md's criterion table and results.csv only
    (`write_tuning`)."""
    if any(r.get("tuning") for r in rows):
        write_tuning(rows, out)
        return
    flat = [_flat_row(r) for r in rows]
    header = list(flat[0])
    write_csv(out / "results.csv", header, [[f.get(k, "") for k in header] for f in flat])
    atomic_text(out / "results.md", (lead + "\n\n" if lead else "")
                + ablation_markdown(rows, n_w_columns, reference))
    labels = list(rows[0]["protocols"]["realistic"]["drift"])
    write_paired_csv(rows, labels, n_w_columns, reference, out / "paired.csv")
    plot_ablation(rows, out)


def criterion(row: Mapping[str, Any]) -> float:
    """A tuning row's selection criterion: the mean of its validation accuracies under
    `CRITERION_PROTOCOL` over the drift times measured (a fraction)."""
    drift = row["val"]["protocols"][CRITERION_PROTOCOL]["drift"]
    return statistics.fmean(v["mean"] for v in drift.values())


def tuning_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The tuning table: per arm, mean ± std over seeds of the validation clean accuracy,
    of each drift time under `CRITERION_PROTOCOL` and of the criterion, each seed's
    criterion, sample passes and wall time. Percent."""
    labels = list(rows[0]["val"]["protocols"][CRITERION_PROTOCOL]["drift"])
    head = ["method", "seeds", "val clean", *[f"{CRITERION_PROTOCOL} {x}" for x in labels],
            "criterion", "per seed", "sample passes", "wall s"]
    lines = [f"**Tuning** (validation accuracy %; criterion: the mean over {', '.join(labels)}"
             f" under `{CRITERION_PROTOCOL}`; mean ± std over seeds; no test figure is "
             "measured)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        drift = [r["val"]["protocols"][CRITERION_PROTOCOL]["drift"] for r in mine]
        flagged = [r["seed"] for r in mine if collapse_reason(r)]
        lines.append("| " + " | ".join([
            mine[0]["method"] + (f" COLLAPSED (seed {flagged})" if flagged else ""),
            str(len(mine)), spread([r["val"]["clean"] for r in mine]),
            *[spread([d[x]["mean"] for d in drift]) for x in labels],
            spread([criterion(r) for r in mine]),
            ", ".join(f"{r['seed']}: {100 * criterion(r):.2f}" for r in mine),
            f"{statistics.fmean(r['sample_passes'] for r in mine):.3g}",
            f"{statistics.fmean(r['wall_seconds'] for r in mine):.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def write_tuning(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    """results.md (`tuning_markdown`) and results.csv (one line per row: its criterion and
    validation accuracies, fractions) of a tuning run."""
    atomic_text(out / "results.md", tuning_markdown(rows))
    labels = list(rows[0]["val"]["protocols"][CRITERION_PROTOCOL]["drift"])
    write_csv(out / "results.csv",
              ["arm", "method", "seed", "criterion", "val_clean",
               *[f"val_{CRITERION_PROTOCOL}_pcm_{x}_mean" for x in labels], "sample_passes",
               "wall_seconds", "collapsed"],
              [[r["arm"], r["method"], r["seed"], criterion(r), r["val"]["clean"],
                *[r["val"]["protocols"][CRITERION_PROTOCOL]["drift"][x]["mean"]
                  for x in labels], r["sample_passes"], r["wall_seconds"],
                collapse_reason(r) or ""] for r in rows])


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
                collapsed = sum(1 for r in mine if collapse_reason(r))
                ax.errorbar(xs, ys, yerr=spread, marker="o", capsize=3,
                            linestyle=":" if collapsed else "-",
                            label=f"{mine[0]['method']} ({len(mine)} seed"
                                  f"{'s' if len(mine) > 1 else ''}"
                                  f"{f', {collapsed} COLLAPSED' if collapsed else ''})")
            if kind == "drift":
                ax.set_xscale("log")
            ax.set(title=f"protocol {name}", xlabel=xlabel, ylabel="test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        save_png(fig, out / fname, dpi=120)
        plt.close(fig)
