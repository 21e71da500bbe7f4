"""Paired per-seed comparisons of the ablation's arms, normalised accuracy and collapsed arms.

Every arm of one seed shares that seed's data split, initial model and programming draws
(`streams.seed_for`), so two arms are compared by their per-seed DIFFERENCES, not by their
separate means: mean difference and its 95% Student-t interval over the seeds both arms have
(`paired_difference`). A lead is a win only when that interval excludes zero; a table of m
comparisons at 95% each shows about 0.05 x m false "wins" between equal arms, so the report
says how many comparisons it makes (`comparison_count`).

The normalised accuracy is that of Rasch et al. 2023 (Nature Communications 14:5282, the
benchmark behind aihwkit's `StandardHWATrainingPreset`):
A = 1 - (err - err_FP) / (err_chance - err_FP), with err the arm's error, err_FP the
floating-point reference's clean error (here: the vanilla arm's clean test error of the same
seed) and err_chance = 1 - 1/classes. A = 1: as good as the digital model; A = 0: chance.

Accuracies are fractions (0..1) throughout; differences are fractions too (0.013 = 1.3
points).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Paired:
    """The paired difference (arm - reference) over `seeds`: mean, and the 95% t-interval
    [low, high] (None for fewer than two seeds: no interval). Fractions."""

    seeds: tuple[int, ...]
    mean: float
    low: float | None
    high: float | None
    p: float | None = None  # two-sided paired t-test of a zero mean difference

    @property
    def verdict(self) -> str:
        """'win' (interval above zero), 'loss' (below), 'no difference shown' (holds
        zero) or 'one seed' (no interval)."""
        if self.low is None or self.high is None:
            return "one seed"
        if self.low > 0:
            return "win"
        if self.high < 0:
            return "loss"
        return "no difference shown"

    def interval_text(self) -> str:
        """'+1.3 [+0.2, +2.4]' in points (one decimal); '+1.3 (one seed)' without one."""
        mean = f"{100 * self.mean:+.1f}"
        if self.low is None or self.high is None:
            return f"{mean} (one seed)"
        return f"{mean} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"

    def text(self) -> str:
        """'+1.3 [+0.2, +2.4] win' in points (one decimal)."""
        if self.low is None or self.high is None:
            return self.interval_text()
        return f"{self.interval_text()} {self.verdict}"


def paired_difference(arm: Mapping[int, float], reference: Mapping[int, float]) -> Paired:
    """arm - reference over the seeds both have (`arm`, `reference`: seed -> accuracy).
    The interval is mean ± t_{0.975, n-1} x s / sqrt(n), s the sample std of the n per-seed
    differences (scipy.stats.t); `p` is the two-sided p-value of the paired t-test
    (scipy.stats.ttest_1samp of the differences against 0; 1.0 when every difference is 0).
    ValueError when the two share no seed."""
    seeds = tuple(sorted(set(arm) & set(reference)))
    if not seeds:
        raise ValueError(f"no seed in common: arm has {sorted(arm)}, reference "
                         f"{sorted(reference)}")
    differences = [arm[s] - reference[s] for s in seeds]
    mean = statistics.fmean(differences)
    if len(seeds) < 2:
        return Paired(seeds, mean, None, None)
    spread = statistics.stdev(differences)
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(seeds) - 1)) * spread / \
        math.sqrt(len(seeds))
    if spread == 0:  # the t statistic is undefined; a constant non-zero shift is certain
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(stats.ttest_1samp(differences, 0.0).pvalue)
    return Paired(seeds, mean, mean - half, mean + half, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6:65-70), in the
    order given: with p_(1) <= ... <= p_(m) sorted, adj_(i) = max over j <= i of
    min(1, (m - j + 1) p_(j)). Rejecting where adj < alpha keeps the family-wise error rate
    at alpha over the m tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def normalised_accuracy(accuracy: float, clean_fp: float, num_classes: int) -> float:
    """Rasch et al. 2023's A = 1 - (err - err_FP) / (err_chance - err_FP), with err = 1 -
    `accuracy`, err_FP = 1 - `clean_fp` and err_chance = 1 - 1/`num_classes`. ValueError when
    the floating-point model is no better than chance (A is undefined)."""
    err, err_fp, err_chance = 1 - accuracy, 1 - clean_fp, 1 - 1 / num_classes
    if err_chance - err_fp <= 0:
        raise ValueError(f"normalised accuracy needs a reference above chance; its clean "
                         f"accuracy is {clean_fp:.3f} with {num_classes} classes")
    return 1 - (err - err_fp) / (err_chance - err_fp)


# A row counts as collapsed when its clean test accuracy is within this many points
# (fraction) of chance, or this far below the best clean validation accuracy its training
# reached (the model it ended with is not the one it had learnt).
NEAR_CHANCE = 0.05
FAR_BELOW_BEST = 0.20


def collapse_reason(row: Mapping[str, Any]) -> str | None:
    """Why an ablation row's model collapsed, or None. Reads the row's "clean" (test; a
    tuning row, which has no test figure: its validation "clean"), "num_classes" and, where
    the training recorded it, "best_val_during_training" (fractions); rows without
    "num_classes" (written before 0.3) are judged on 10 classes."""
    chance = 1 / row.get("num_classes", 10)
    split, clean = ("test", row["clean"]) if "clean" in row else (
        "validation", row["val"]["clean"])
    if clean <= chance + NEAR_CHANCE:
        return f"clean {split} accuracy {100 * clean:.1f}% is at chance " \
               f"({100 * chance:.0f}%)"
    best = row.get("best_val_during_training")
    if best is not None and row.get("val", {}).get("clean", best) < best - FAR_BELOW_BEST:
        return (f"its final clean validation accuracy {100 * row['val']['clean']:.1f}% is "
                f"far below the {100 * best:.1f}% it reached during training")
    return None


def comparison_count(arms: int, columns: int, protocols: int) -> int:
    """How many paired comparisons a table of `arms` arms (the reference among them) against
    the reference makes over `columns` test columns under `protocols` protocols."""
    return max(arms - 1, 0) * columns * protocols

