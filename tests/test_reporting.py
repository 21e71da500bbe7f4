"""Reports (`analogai_fl.reporting`): drift labels, the ablation's tables, curves and the
seed-spread verdict on who leads."""

import pytest

from analogai_fl import schema
from analogai_fl.reporting import drift_label


def test_drift_labels():
    assert [drift_label(t) for t in (1, 3600, 86400, 31536000, 90, 1.5)] == [
        "1s", "1h", "1d", "1y", "1.5min", "1.5s"]


def _row(arm, seed, acc):
    """An ablation row as `run_ablation` writes it, every accuracy `acc` (a fraction)."""
    entry = {"mean": acc, "std": 0.0, "seconds": 1.0}
    protocol = {"drift": {"1s": entry}, "n_w": {0.1: entry}}
    return {"arm": arm, "method": arm.upper(), "seed": seed, "epochs": 1, "sample_passes": 10,
            "wall_seconds": 1.0, "note": "", "clean": acc,
            "protocols": {name: protocol for name in schema.PROTOCOLS},
            "val": {"clean": acc, "protocols": {name: {"drift": {"1s": entry}}
                                                for name in schema.PROTOCOLS}}}


def test_the_table_gives_each_method_its_seed_count_and_spread():
    from analogai_fl.reporting import ablation_markdown
    rows = [_row("a", 1, 0.80), _row("a", 2, 0.90), _row("b", 1, 0.70)]
    md = ablation_markdown(rows, [0.1])
    tables = [part for part in md.split("\n\n") if part.startswith("| method")]
    assert len(tables) == 3  # the realistic, seed and validation tables
    for table in tables:
        assert "| method | seeds |" in table
        # a: two seeds, mean 85.0, sample std 7.1; b: one seed, no spread shown
        assert "| A | 2 | 85.0 ± 7.1 | 85.0 ± 7.1 |" in table
        assert "| B | 1 | 70.0 | 70.0 |" in table


def test_the_validation_table_shows_the_n_w_columns_when_measured():
    from analogai_fl.reporting import ablation_markdown
    old = [_row("a", 1, 0.80)]  # a row written before validation measured n_w
    new = [_row("a", 1, 0.80)]
    for name in schema.PROTOCOLS:
        new[0]["val"]["protocols"][name] = new[0]["protocols"][name]
    validation = [p for p in ablation_markdown(new, [0.1]).split("**Validation split**")[1:]]
    assert "| realistic n_w 0.1 |" in validation[0] and "| 80.0 |" in validation[0]
    assert "n_w 0.1 |" not in ablation_markdown(old, [0.1]).split("**Validation split**")[1]


def test_the_plotted_curve_is_the_mean_over_seeds_with_their_spread():
    from analogai_fl.reporting import seed_curve
    xs, ys, spread = seed_curve([_row("a", 1, 0.80), _row("a", 2, 0.90)], "realistic", "drift")
    assert xs == [1.0] and ys == pytest.approx([85.0])
    assert spread == pytest.approx([7.0711], abs=1e-3)  # sample std of 80 and 90
    assert seed_curve([_row("a", 1, 0.8)], "seed", "n_w") == ([0.1], [pytest.approx(80.0)],
                                                               None)


def test_each_seed_note_is_listed_once_with_its_seeds():
    from analogai_fl.reporting import ablation_markdown
    rows = [_row("a", seed, 0.8) | {"note": f"best of K=5 by validation: sigma {sigma}"}
            for seed, sigma in ((1, 0.04), (2, 0.02), (3, 0.04))]
    md = ablation_markdown(rows, [0.1])
    assert "- A: best of K=5 by validation: sigma 0.02 (seed 2)" in md
    assert "- A: best of K=5 by validation: sigma 0.04 (seeds 1, 3)" in md
    assert md.count("sigma 0.04") == 1


def test_a_lead_inside_the_seed_spread_is_not_called_a_win():
    from analogai_fl.reporting import leader
    wide = leader({"A": [0.80, 0.86, 0.83], "B": [0.81, 0.82, 0.80]})  # stds 3.0 and 1.0
    assert wide.startswith("A 83.0 ± 3.0 leads B 81.0 ± 1.0 by 2.0 points")
    assert wide.endswith("within the seed spread (3.0), not a win")
    tight = leader({"B": [0.81, 0.82, 0.80], "A": [0.84, 0.85, 0.83]})
    assert tight.startswith("A 84.0 ± 1.0 leads B") and tight.endswith("a win, beyond the "
                                                                         "seed spread")
    assert leader({"A": [0.9], "B": [0.8, 0.7]}).endswith("one seed, no spread to judge by")
    assert "the only method" in leader({"A": [0.9, 0.8]})
