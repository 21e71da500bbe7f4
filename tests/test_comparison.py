"""Paired statistics, normalised accuracy and the collapse rule (`analogai_fl.comparison`)."""

import math
import statistics

import pytest

from analogai_fl.comparison import (
    collapse_reason,
    comparison_count,
    normalised_accuracy,
    paired_difference,
)


def test_the_interval_is_the_student_t_interval_of_the_per_seed_differences():
    arm = {1: 0.83, 2: 0.87, 3: 0.81, 4: 0.84}
    ref = {1: 0.80, 2: 0.85, 3: 0.79, 4: 0.81, 9: 0.5}  # seed 9: unpaired, left out
    p = paired_difference(arm, ref)
    differences = [0.03, 0.02, 0.02, 0.03]
    # t(0.975, 3) = 3.182 (any t table)
    half = 3.182 * statistics.stdev(differences) / math.sqrt(4)
    assert p.seeds == (1, 2, 3, 4)
    assert p.mean == pytest.approx(statistics.fmean(differences))
    assert (p.low, p.high) == (pytest.approx(p.mean - half, abs=1e-4),
                               pytest.approx(p.mean + half, abs=1e-4))
    assert p.verdict == "win" and p.text().endswith("win")


def test_the_verdict_follows_the_interval():
    assert paired_difference({1: 0.7, 2: 0.6, 3: 0.5}, {1: 0.8, 2: 0.71, 3: 0.62}
                             ).verdict == "loss"
    assert paired_difference({1: 0.9, 2: 0.6}, {1: 0.8, 2: 0.7}
                             ).verdict == "no difference shown"
    single = paired_difference({1: 0.9}, {1: 0.8})
    assert single.verdict == "one seed" and single.low is None
    assert single.text() == "+10.0 (one seed)"
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({1: 0.9}, {2: 0.8})


def test_normalised_accuracy_is_one_at_the_digital_model_and_zero_at_chance():
    assert normalised_accuracy(0.9, 0.9, 10) == pytest.approx(1.0)
    assert normalised_accuracy(0.1, 0.9, 10) == pytest.approx(0.0)
    assert normalised_accuracy(0.5, 0.9, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="above chance"):
        normalised_accuracy(0.5, 0.1, 10)


def test_collapse_is_at_chance_or_far_below_the_best_validation_during_training():
    row = {"clean": 0.12, "num_classes": 10}
    assert "at chance" in collapse_reason(row)
    assert collapse_reason({"clean": 0.12, "num_classes": 2}) is not None  # below chance 50%
    fine = {"clean": 0.85, "num_classes": 10, "val": {"clean": 0.86},
            "best_val_during_training": 0.88}
    assert collapse_reason(fine) is None
    fell = fine | {"val": {"clean": 0.60}}
    assert "far below the 88.0%" in collapse_reason(fell)
    assert collapse_reason({"clean": 0.85}) is None  # an old row: no curve, 10 classes


def test_the_comparison_count_leaves_out_the_reference():
    assert comparison_count(arms=4, columns=6, protocols=2) == 36
    assert comparison_count(arms=1, columns=6, protocols=2) == 0
