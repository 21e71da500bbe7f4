"""The pre-registered primary tests of an ablation: each contrast (`ablation.primary_contrasts`,
arm minus arm) at each endpoint (`ablation.primary_endpoints`, a protocol's test column),
paired by seed, with Holm's correction over all of them (`comparison.holm`).

Two analyses, both printed: intention to treat (every seed both arms have, a collapsed model
included: the primary analysis) and without the seeds where either arm collapsed
(`comparison.collapse_reason`; a sensitivity analysis, Holm-corrected over its own tests).
A contrast is decided only where its Holm-adjusted p-value is below 0.05; everything else in
the report is exploratory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..comparison import Paired, holm, paired_difference
from ..outputs import write_csv
from .report import column_value, left_out, test_columns

ALPHA = 0.05  # family-wise error rate of the primary tests


def primary_tests(rows: Sequence[Mapping[str, Any]], contrasts: Sequence[tuple[str, str]],
                  endpoints: Sequence[tuple[str, str]], n_w_columns: Sequence[float],
                  without_collapsed: bool = False) -> list[dict[str, Any]]:
    """One dict per (contrast, endpoint), in that order: arm, minus (the other arm),
    protocol, column, the `Paired` difference (None where the two arms share no seed) and
    its Holm-adjusted p-value over the tests that have one. Fractions."""
    labels = list(rows[0]["protocols"]["realistic"]["drift"])
    columns = dict(test_columns(rows, labels, n_w_columns))
    tests = []
    for arm, minus in contrasts:
        gone = left_out(rows, arm, minus) if without_collapsed else []
        for protocol, title in endpoints:
            mine, theirs = ({r["seed"]: column_value(r, protocol, columns[title])
                             for r in rows if r["arm"] == name and r["seed"] not in gone}
                            for name in (arm, minus))
            paired = paired_difference(mine, theirs) if set(mine) & set(theirs) else None
            tests.append({"arm": arm, "minus": minus, "protocol": protocol, "column": title,
                          "paired": paired, "left_out": gone})
    tested = [t for t in tests if t["paired"] is not None and t["paired"].p is not None]
    for t, adjusted in zip(tested, holm([t["paired"].p for t in tested]), strict=True):
        t["holm_p"] = adjusted
    return tests


def decision(test: Mapping[str, Any]) -> str:
    """'<arm> better', '<minus> better' (Holm-adjusted p < ALPHA) or 'no difference shown'."""
    paired: Paired | None = test["paired"]
    if paired is None or test.get("holm_p") is None:
        return "not tested (no shared seeds)"
    if test["holm_p"] >= ALPHA:
        return "no difference shown"
    return f"{test['arm'] if paired.mean > 0 else test['minus']} better"


def primary_markdown(rows: Sequence[Mapping[str, Any]], contrasts: Sequence[tuple[str, str]],
                     endpoints: Sequence[tuple[str, str]], n_w_columns: Sequence[float]
                     ) -> str:
    """The primary tests as tables: intention to treat, and (where a seed collapsed)
    without the collapsed seeds."""
    method = {r["arm"]: r["method"] for r in rows}
    missing = sorted({a for c in contrasts for a in c} - set(method))
    if missing:
        return (f"**Pre-registered primary tests**: not yet; arm(s) {', '.join(missing)} "
                "have no row in this folder.")
    m = len(contrasts) * len(endpoints)
    parts = [f"**Pre-registered primary tests** ({m} tests: each contrast at each endpoint; "
             "test accuracy, points, arm minus arm per seed: mean [95% t-interval]; p of the "
             "paired t-test, and Holm-adjusted over the family; decided where the adjusted "
             f"p < {ALPHA:g}). Every other comparison in this report is exploratory."]
    analyses = [("Intention to treat (every seed)", False)]
    if any(left_out(rows, a, b) for a, b in contrasts):
        analyses.append(("Without the collapsed seeds (sensitivity)", True))
    for title, without in analyses:
        lines = [title, "", "| contrast | endpoint | seeds | difference [95% CI] | p | Holm p "
                 "| decision |", "|---|---|---|---|---|---|---|"]
        for t in primary_tests(rows, contrasts, endpoints, n_w_columns, without):
            paired = t["paired"]
            name = f"{method[t['arm']]} − {method[t['minus']]}"
            where = f"`{t['protocol']}` {t['column']}"
            if paired is None:
                lines.append(f"| {name} | {where} | none | | | | {decision(t)} |")
                continue
            p = "" if paired.p is None else f"{paired.p:.3g}"
            holm_p = "" if t.get("holm_p") is None else f"{t['holm_p']:.3g}"
            lines.append(f"| {name} | {where} | {','.join(map(str, paired.seeds))} | "
                         f"{paired.interval_text()} | {p} | {holm_p} | {decision(t)} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_primary_csv(rows: Sequence[Mapping[str, Any]], contrasts: Sequence[tuple[str, str]],
                      endpoints: Sequence[tuple[str, str]], n_w_columns: Sequence[float],
                      path: Path) -> None:
    """primary.csv: one line per analysis and test (differences as fractions)."""
    def line(analysis: str, t: Mapping[str, Any]) -> list[Any]:
        p: Paired | None = t["paired"]
        return [analysis, t["arm"], t["minus"], t["protocol"], t["column"],
                "" if p is None else " ".join(map(str, p.seeds)),
                *(["", "", "", ""] if p is None else [p.mean, p.low, p.high, p.p]),
                t.get("holm_p", ""), decision(t), " ".join(map(str, t["left_out"]))]

    write_csv(path, ["analysis", "arm", "minus", "protocol", "column", "seeds",
                     "mean_difference", "ci95_low", "ci95_high", "p", "holm_p", "decision",
                     "left_out_collapsed"],
              [line(analysis, t)
               for analysis, without in (("intention_to_treat", False),
                                         ("without_collapsed", True))
               for t in primary_tests(rows, contrasts, endpoints, n_w_columns, without)])
