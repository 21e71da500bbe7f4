"""Reports (`analogai_fl.reporting`, `analogai_fl.ablation.report`): drift labels, the
ablation's tables and curves, its paired comparisons, normalised accuracy and collapsed arms."""

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
    from analogai_fl.ablation.report import ablation_markdown
    rows = [_row("a", 1, 0.80), _row("a", 2, 0.90), _row("b", 1, 0.70)]
    md = ablation_markdown(rows, [0.1])
    tables = [part for part in md.split("\n\n") if part.startswith("| method")]
    assert len(tables) == len(schema.PROTOCOLS) + 1  # a table per protocol, validation
    for table in tables:
        assert "| method | seeds |" in table
        # a: two seeds, mean 85.0, sample std 7.1; b: one seed, no spread shown
        assert "| A | 2 | 85.0 ± 7.1 | 85.0 ± 7.1 |" in table
        assert "| B | 1 | 70.0 | 70.0 |" in table


def test_the_validation_table_shows_the_n_w_columns_when_measured():
    from analogai_fl.ablation.report import ablation_markdown
    old = [_row("a", 1, 0.80)]  # a row written before validation measured n_w
    new = [_row("a", 1, 0.80)]
    for name in schema.PROTOCOLS:
        new[0]["val"]["protocols"][name] = new[0]["protocols"][name]
    validation = [p for p in ablation_markdown(new, [0.1]).split("**Validation split**")[1:]]
    assert "| realistic n_w 0.1 |" in validation[0] and "| 80.0 |" in validation[0]
    assert "n_w 0.1 |" not in ablation_markdown(old, [0.1]).split("**Validation split**")[1]


def test_the_plotted_curve_is_the_mean_over_seeds_with_their_spread():
    from analogai_fl.ablation.report import seed_curve
    xs, ys, spread = seed_curve([_row("a", 1, 0.80), _row("a", 2, 0.90)], "realistic", "drift")
    assert xs == [1.0] and ys == pytest.approx([85.0])
    assert spread == pytest.approx([7.0711], abs=1e-3)  # sample std of 80 and 90
    assert seed_curve([_row("a", 1, 0.8)], "seed", "n_w") == ([0.1], [pytest.approx(80.0)],
                                                               None)


def test_each_seed_note_is_listed_once_with_its_seeds():
    from analogai_fl.ablation.report import ablation_markdown
    rows = [_row("a", seed, 0.8) | {"note": f"best of K=5 by validation: sigma {sigma}"}
            for seed, sigma in ((1, 0.04), (2, 0.02), (3, 0.04))]
    md = ablation_markdown(rows, [0.1])
    assert "- A: best of K=5 by validation: sigma 0.02 (seed 2)" in md
    assert "- A: best of K=5 by validation: sigma 0.04 (seeds 1, 3)" in md
    assert md.count("sigma 0.04") == 1


def _scaled(arm, seed, acc, realistic_1s):
    """A row whose realistic PCM 1s accuracy is `realistic_1s` and every other one `acc`."""
    row = _row(arm, seed, acc)
    entry = {"mean": realistic_1s, "std": 0.0, "seconds": 1.0}
    row["protocols"] = dict(row["protocols"]) | {
        "realistic": {"drift": {"1s": entry}, "n_w": row["protocols"]["realistic"]["n_w"]}}
    return row


def test_arms_are_compared_with_the_reference_by_paired_per_seed_differences():
    from analogai_fl.ablation.report import paired_markdown
    # per seed, b - hwa at realistic 1s: +1, +2, +3 points: a win; the seed-to-seed spread
    # of either arm (10 points) is far larger than the lead, but the pairs are consistent
    rows = [_scaled("hwa", s, 0.8, 0.60 + 0.10 * s) for s in (1, 2, 3)] + \
           [_scaled("b", s, 0.8, 0.60 + 0.10 * s + 0.01 * s) for s in (1, 2, 3)] + \
           [_scaled("c", s, 0.8, 0.60 + 0.10 * s + d) for s, d in ((1, 0.02), (2, -0.02),
                                                                   (3, 0.01))]
    md = paired_markdown(rows, ["1s"], [0.1], "hwa")
    realistic = md.split("`realistic`")[1].split("`seed`")[0]
    line_b = next(x for x in realistic.splitlines() if x.startswith("| B |"))
    # mean 2.0, sample std 1.0, t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3) = 2.48
    assert "+2.0 [-0.5, +4.5] no difference shown" in line_b
    line_c = next(x for x in realistic.splitlines() if x.startswith("| C |"))
    assert "no difference shown" in line_c
    # 2 arms x 3 columns (clean, PCM 1s, n_w 0.1) x the protocols
    assert f"These tables make {6 * len(schema.PROTOCOLS)} comparisons" in md
    assert "no reference arm" not in md and "| HWA |" not in realistic


def test_a_consistent_lead_is_a_win_and_a_consistent_deficit_a_loss():
    from analogai_fl.ablation.report import paired_markdown
    rows = [_scaled("hwa", s, 0.8, 0.60 + 0.10 * s) for s in (1, 2, 3, 4, 5)] + \
           [_scaled("b", s, 0.8, 0.62 + 0.10 * s + 0.001 * s) for s in (1, 2, 3, 4, 5)] + \
           [_scaled("c", s, 0.8, 0.57 + 0.10 * s - 0.001 * s) for s in (1, 2, 3, 4, 5)]
    realistic = paired_markdown(rows, ["1s"], [0.1], "hwa").split("`realistic`")[1]
    assert " win |" in next(x for x in realistic.splitlines() if x.startswith("| B |"))
    assert " loss |" in next(x for x in realistic.splitlines() if x.startswith("| C |"))
    assert "+0.0 [+0.0, +0.0] no difference shown" in realistic  # the equal clean column


def test_without_the_reference_arm_no_comparison_is_made():
    from analogai_fl.ablation.report import ablation_markdown
    md = ablation_markdown([_row("a", 1, 0.8), _row("vanilla", 1, 0.9)], [0.1], "hwa")
    assert "the reference arm 'hwa' (`ablation.reference`) is not in this folder" in md


def test_normalised_accuracy_is_relative_to_the_vanilla_arm_of_the_same_seed():
    from analogai_fl.ablation.report import normalised_rows
    rows = [_row("vanilla", 1, 0.9), _row("a", 1, 0.5), _row("a", 2, 0.5)]
    table = normalised_rows(rows, ["1s"], [0.1])
    assert [(t["arm"], t["seed"]) for t in table] == [("vanilla", 1), ("a", 1)]  # seed 2:
    # no vanilla row, no reference error
    a = table[1]
    # err 0.5, err_FP 0.1, err_chance 0.9: A = 1 - 0.4 / 0.8
    assert a["realistic PCM 1s"] == pytest.approx(0.5)
    assert table[0]["seed n_w 0.1"] == pytest.approx(1.0)


def test_a_collapsed_seed_is_flagged_and_left_out_of_the_pairs():
    """A collapsed model is flagged in every table, and its seed is left out of that arm's
    paired differences (said in the row's title): the other seeds are still compared."""
    from analogai_fl.ablation.report import ablation_markdown, paired_markdown
    rows = [_row("hwa", s, 0.8) for s in (1, 2, 3)] + \
        [_row("b", 1, 0.11), _row("b", 2, 0.85), _row("b", 3, 0.86)]
    md = ablation_markdown(rows, [0.1], "hwa")
    assert "| B COLLAPSED (seed 1) | 3 |" in md
    assert "- COLLAPSED: B, seed 1: clean test accuracy 11.0% is at chance (10%)" in md
    realistic = paired_markdown(rows, ["1s"], [0.1], "hwa").split("`realistic`")[1]
    line = next(x for x in realistic.splitlines()
                if x.startswith("| B (seed 1 left out: B collapsed) |"))
    assert "| +5.5 [" in line  # clean: seeds 2 and 3 only (+5, +6), not the collapse's -69
    only_collapsed = [_row("hwa", 1, 0.8), _row("b", 1, 0.11)]
    assert "no seed left: not compared" in paired_markdown(only_collapsed, ["1s"], [0.1], "hwa")


def test_a_collapsed_arm_is_not_compared_in_the_csv_nor_normalised_and_plots_say_so(
        tmp_path):
    """The collapsed reference of the issue (HWA at chance): paired.csv leaves its seed out
    of every pair and says so, and a collapsed vanilla row neither crashes the normalised
    table (A is undefined against a chance-level digital model) nor enters it."""
    import csv

    from analogai_fl.ablation.report import normalised_markdown, write_ablation
    rows = [_row("hwa", 1, 0.10), _row("hwa", 2, 0.8)] + \
        [_row("b", s, 0.9) for s in (1, 2)] + [_row("vanilla", 1, 0.10), _row("vanilla", 2, 0.9)]
    write_ablation(rows, [0.1], tmp_path, "hwa")
    lines = list(csv.DictReader((tmp_path / "paired.csv").read_text().splitlines()))
    assert lines and all(x["left_out_collapsed"] == "1" and x["seeds"] == "2"
                         and x["verdict"] == "one seed" for x in lines)
    clean_b = next(x for x in lines if x["arm"] == "b" and x["column"] == "clean")
    assert float(clean_b["mean_difference"]) == pytest.approx(0.1)  # seed 2: 0.9 - 0.8
    md = normalised_markdown(rows, ["1s"], [0.1])
    assert "Left out, collapsed: hwa seed 1, vanilla seed 1" in md
    assert "| B | 1 |" in md and "| HWA | 1 |" in md  # seed 2 only
    assert (tmp_path / "accuracy_vs_drift.png").stat().st_size > 0


def test_the_paired_csv_has_a_line_per_protocol_column_and_arm(tmp_path):
    import csv

    from analogai_fl.ablation.report import write_ablation
    rows = [_row("hwa", s, 0.8) for s in (1, 2)] + [_row("b", s, 0.9) for s in (1, 2)]
    write_ablation(rows, [0.1], tmp_path, "hwa")
    lines = list(csv.DictReader((tmp_path / "paired.csv").read_text().splitlines()))
    assert len(lines) == len(schema.PROTOCOLS) * 3  # protocols x (clean, PCM 1s, n_w 0.1), one arm
    assert {(x["arm"], x["reference"], x["seeds"]) for x in lines} == {("b", "hwa", "1 2")}
    assert float(lines[0]["mean_difference"]) == pytest.approx(0.1)
    results = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert [x["collapsed"] for x in results] == ["", "", "", ""]


def test_n_w_after_drift_is_a_column_of_every_table_when_measured(tmp_path):
    import csv

    from analogai_fl.ablation.report import ablation_markdown, write_ablation
    rows = [_row("hwa", s, 0.8) for s in (1, 2)] + [_row("b", s, 0.9) for s in (1, 2)]
    for r in rows:  # n_w 0.1 at 1 y: 10 points below, for every arm
        late = {"mean": r["clean"] - 0.1, "std": 0.0, "seconds": 31536000.0}
        r["protocols"] = {name: dict(p, n_w_late={0.1: late}) for name, p in
                          r["protocols"].items()}
    md = ablation_markdown(rows, [0.1], "hwa")
    # each protocol's table and its paired differences (no vanilla: no normalised table)
    assert md.count(" n_w 0.1 at 1y |") == 2 * len(schema.PROTOCOLS)
    assert f"make {2 * 4 * len(schema.PROTOCOLS)} comparisons" not in md  # one arm only
    assert f"make {4 * len(schema.PROTOCOLS)} comparisons" in md
    assert "| B | 2 | 90.0 ± 0.0 | 90.0 ± 0.0 | 90.0 ± 0.0 | 80.0 ± 0.0 |" in md
    write_ablation(rows, [0.1], tmp_path, "hwa")
    lines = list(csv.DictReader((tmp_path / "paired.csv").read_text().splitlines()))
    assert len(lines) == len(schema.PROTOCOLS) * 4
    results = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert float(results[0]["standard_n_w_0.1_1y_mean"]) == pytest.approx(0.7)


def test_holm_adjusts_p_values_step_down_by_hand():
    """Holm 1979 on four p-values: sorted 0.005, 0.01, 0.03, 0.04 get 4x, 3x, 2x, 1x, each at
    least the one before: 0.02, 0.03, 0.06, 0.06 (the last raised to its predecessor)."""
    from analogai_fl.comparison import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_the_paired_t_test_p_value_matches_scipys_and_a_constant_shift():
    from scipy import stats

    from analogai_fl.comparison import paired_difference

    arm, ref = {1: 0.5, 2: 0.62, 3: 0.55}, {1: 0.4, 2: 0.45, 3: 0.5}
    p = paired_difference(arm, ref).p
    assert p == pytest.approx(stats.ttest_rel([0.5, 0.62, 0.55], [0.4, 0.45, 0.5]).pvalue)
    assert paired_difference({1: 0.6, 2: 0.7}, {1: 0.5, 2: 0.6}).p == 0.0  # every seed +0.1
    assert paired_difference({1: 0.6}, {1: 0.5}).p is None  # one seed: no test


def test_the_primary_tests_are_holm_corrected_with_and_without_a_collapsed_seed(tmp_path):
    """Two contrasts x two endpoints = 4 tests: each a paired t-test over the seeds, adjusted
    by Holm over the 4; a collapsed seed (clean at chance) stays in the intention-to-treat
    analysis and is left out of the sensitivity analysis, which the table shows too."""
    from analogai_fl.ablation.primary import primary_markdown, primary_tests, write_primary_csv
    from analogai_fl.comparison import holm, paired_difference

    gains = {1: 0.02, 2: 0.03, 3: 0.025, 4: 0.035}
    rows = [_row("base", s, 0.80) for s in gains]
    rows += [_row("fused", s, 0.80 + g) for s, g in gains.items()]
    rows += [_row("one", s, 0.80 + (0.01 if s != 4 else -0.7)) for s in gains]  # 4 collapses
    for r in rows:
        r["protocols"]["realistic"] = dict(r["protocols"]["realistic"],
                                           drift={"1s": {"mean": r["clean"] - 0.01,
                                                         "std": 0.0, "seconds": 1.0}})
    contrasts = [("fused", "base"), ("fused", "one")]
    endpoints = [("standard", "PCM 1s"), ("realistic", "PCM 1s")]
    tests = primary_tests(rows, contrasts, endpoints, [0.1])
    assert [(t["arm"], t["minus"], t["protocol"]) for t in tests] == [
        ("fused", "base", "standard"), ("fused", "base", "realistic"),
        ("fused", "one", "standard"), ("fused", "one", "realistic")]
    fused = {s: 0.80 + g for s, g in gains.items()}
    expected = [paired_difference(fused, {s: 0.80 for s in gains}),
                paired_difference(fused, {s: 0.80 + (0.01 if s != 4 else -0.7) for s in gains})]
    raw = [expected[0].p, expected[0].p, expected[1].p, expected[1].p]
    assert [t["paired"].p for t in tests] == pytest.approx(raw)
    assert [t["holm_p"] for t in tests] == pytest.approx(holm(raw))
    assert tests[0]["paired"].seeds == (1, 2, 3, 4) and tests[0]["holm_p"] < 0.05
    without = primary_tests(rows, contrasts, endpoints, [0.1], without_collapsed=True)
    assert without[2]["paired"].seeds == (1, 2, 3) and without[2]["left_out"] == [4]
    md = primary_markdown(rows, contrasts, endpoints, [0.1])
    assert "4 tests" in md and "Intention to treat" in md and "Without the collapsed" in md
    assert "| FUSED − BASE | `standard` PCM 1s | 1,2,3,4 | +2.8 [" in md
    assert "| fused better |" in md
    write_primary_csv(rows, contrasts, endpoints, [0.1], tmp_path / "primary.csv")
    lines = (tmp_path / "primary.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 4 and lines[-1].endswith(",4")
    missing = primary_markdown(rows, [("fused", "hwa")], endpoints, [0.1])
    assert "not yet" in missing and "hwa" in missing


def test_a_tuning_run_reports_only_the_validation_criterion(tmp_path):
    """ablation.tuning rows hold the validation split under the criterion's protocol only:
    the report gives each arm's criterion (the mean over the drift times), per seed and
    over seeds, and writes no test table."""
    from analogai_fl.ablation.report import criterion, write_ablation

    def tuning_row(arm, seed, accs):
        drift = {label: {"mean": a, "std": 0.0, "seconds": s} for (label, s), a in zip(
            (("1h", 3600.0), ("1d", 86400.0), ("1y", 31536000.0)), accs, strict=True)}
        return {"arm": arm, "method": arm.upper(), "seed": seed, "epochs": 1, "note": "",
                "sample_passes": 10, "wall_seconds": 1.0, "tuning": True, "num_classes": 10,
                "val": {"clean": 0.9, "protocols": {"standard": {"drift": drift}}}}

    rows = [tuning_row("a", 2024, (0.9, 0.8, 0.7)), tuning_row("a", 2025, (0.8, 0.8, 0.8))]
    assert criterion(rows[0]) == pytest.approx(0.8)
    write_ablation(rows, [0.1], tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| A | 2 | 90.0 ± 0.0 | 85.0 ± 7.1 | 80.0 ± 0.0 | 75.0 ± 7.1 | 80.0 ± 0.0 | " \
           "2024: 80.00, 2025: 80.00 |" in md
    assert "Protocol" not in md and not (tmp_path / "paired.csv").exists()
    assert "criterion" in (tmp_path / "results.csv").read_text().splitlines()[0]
