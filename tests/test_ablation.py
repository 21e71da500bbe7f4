"""The ablation command: arms that really differ, one shared evaluation, result files."""

import csv
import json

import pytest
import torch
from conftest import local_training

from analogai_fl import ablation, config, schema
from analogai_fl.config import ConfigError, resolve
from analogai_fl.flwr_cli import flwr_env, stop_local_superlink
from analogai_fl.noise import noisy_forward
from analogai_fl.settings import Experiment
from strategies import build_strategy


def arm_cfg(name, **changes):
    cfg = config.defaults() | changes
    return cfg | dict(ablation.arms(Experiment.from_config(cfg))[name].overrides)


def levels(cfg):
    return list(Experiment.from_config(cfg).noise_levels)


def test_vanilla_sees_no_noise_and_noise_injection_one_sigma():
    vanilla = arm_cfg("vanilla")
    assert levels(vanilla) == [0.0]
    setting = local_training(vanilla, 0.0, 0.0)
    assert setting.feedback is None
    model = torch.nn.Linear(4, 2).train()
    x = torch.randn(3, 4)
    assert torch.equal(noisy_forward(model, x, setting.sigma), model(x))
    assert levels(arm_cfg("noise_injection")) == [0.2]  # the middle level
    assert levels(arm_cfg("noise_injection", **{
        "ablation.single_sigma": 0.12})) == [0.12]


def test_msnat_arms_differ_in_fusion_and_feedback():
    no_fi, no_fl, full = (build_strategy(Experiment.from_config(arm_cfg(n)))
                          for n in ("msnat_no_fi", "msnat_no_fl", "msnat"))
    assert (no_fi.fusion, no_fl.fusion, full.fusion) == (False, True, True)  # FI off: K models
    assert no_fl.client_mu == 0.0 and full.client_mu > 0
    assert local_training(arm_cfg("msnat_no_fl"), 0.1, 0.0).feedback is None
    assert local_training(arm_cfg("msnat"), 0.1, 0.0).feedback is not None
    assert len(levels(arm_cfg("msnat"))) == 5


def test_one_run_config_of_the_k_sigmas_serves_every_arm(tmp_path):
    sigmas = {f"recovery.noise_{k}.act_inject.sigma": 0.02 * (k + 1) for k in range(5)}
    exp = Experiment.from_config(resolve(sigmas))
    for name, arm in ablation.arms(exp).items():
        if arm.kind != "flwr":
            continue
        run = Experiment.from_config(resolve(ablation.arm_run_config(
            name, arm, exp, sigmas, 1, tmp_path)))
        expected = [0.0] if name == "vanilla" else [0.06] if name == "noise_injection" \
            else [0.02, 0.04, 0.06, 0.08, 0.1]
        assert list(run.noise_levels) == pytest.approx(expected), name


def test_an_arm_that_would_repeat_the_msnat_run_is_not_trained(tmp_path):
    names = list(ablation.ARM_NAMES)
    full = Experiment.from_config(resolve({}))
    assert ablation.same_run_as_msnat(full, {}, names) == []
    no_feedback = {"training.use_neg": False}
    exp = Experiment.from_config(resolve(no_feedback))
    assert ablation.same_run_as_msnat(exp, no_feedback, names) == ["msnat_no_fl"]
    assert ablation.same_run_as_msnat(exp, no_feedback, ["msnat_no_fl"]) == []  # no 'msnat'
    no_fusion = {"training.use_fl": False}
    exp = Experiment.from_config(resolve(no_fusion))
    assert ablation.same_run_as_msnat(exp, no_fusion, names) == ["msnat_no_fi"]


def test_unknown_arm_and_missing_baseline_are_refused(tmp_path):
    cfg = Experiment.from_config(resolve({}))
    with pytest.raises(ValueError, match="unknown arm.*'nope'.*known: vanilla"):
        ablation.run_ablation(cfg, {}, tmp_path, [0], ["nope"])
    with pytest.raises(ValueError, match="'hwa_compute' needs the 'msnat' arm"):
        ablation.run_ablation(cfg, {}, tmp_path, [0], ["hwa_compute"])


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory):
    home = tmp_path_factory.mktemp("flwr_home")
    env = flwr_env({"FLWR_HOME": str(home)})
    out = tmp_path_factory.mktemp("ablation")
    overrides = {"training.rounds": 1, "training.client_num_in_total": 2,
                 "inference.repeats": 1, "inference.drift_times": [1.0, 86400.0],
                 "inference.n_w_sweep": [0.0, 0.2], "ablation.n_w_columns": [0.2]}
    cfg = Experiment.from_config(resolve(overrides))
    try:
        rows = ablation.run_ablation(cfg, overrides, out, [3],
                                     ["vanilla", "msnat_no_fi", "msnat", "hwa"], env=env,
                                     progress=lambda _: None)
    finally:
        stop_local_superlink(home)  # by process id: those started with this FLWR_HOME
    return out, rows


@pytest.mark.e2e
def test_every_arm_is_evaluated_alike_and_written(tiny_ablation):
    out, rows = tiny_ablation
    assert [r["arm"] for r in rows] == ["vanilla", "msnat_no_fi", "msnat", "hwa"]
    for r in rows:
        assert 0 <= r["clean"] <= 1 and r["seed"] == 3
        for name in schema.PROTOCOLS:
            results = r["protocols"][name]
            assert set(results["drift"]) == {"1s", "1d"} and set(results["n_w"]) == {0.0, 0.2}
    passes = {r["arm"]: r["sample_passes"] for r in rows}
    assert passes["vanilla"] < passes["msnat"]  # one clean pass vs K clients x 4 passes
    assert passes["msnat"] == 2 * 4 * passes["vanilla"]
    assert "best of K=2" in rows[1]["note"]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["arm"] for t in table] == [r["arm"] for r in rows]
    assert {"realistic_pcm_1d_mean", "seed_n_w_0.2_mean", "sample_passes"} <= set(table[0])
    md = (out / "results.md").read_text()
    assert md.count("| MSNAT | 1 |") == 3 and "n_w 0.2" in md  # per protocol, and validation
    assert "- `seed` PCM 1d: " in md and "one seed, no spread" in md  # who leads each column
    # validation measured alongside test, for choosing on validation and reporting on test
    for r in rows:
        assert 0 <= r["val"]["clean"] <= 1
        assert set(r["val"]["protocols"]["seed"]["drift"]) == {"1s", "1d"}
    assert "val_realistic_pcm_1d_mean" in table[0] and "**Validation split**" in md
    for png in ("accuracy_vs_n_w.png", "accuracy_vs_drift.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
def test_an_interrupted_ablation_continues_where_it_stopped(tiny_ablation, tmp_path_factory):
    out, rows = tiny_ablation
    home = tmp_path_factory.mktemp("flwr_home_again")
    env = flwr_env({"FLWR_HOME": str(home)})
    overrides = {"training.rounds": 1, "training.client_num_in_total": 2,
                 "inference.repeats": 1, "inference.drift_times": [1.0, 86400.0],
                 "inference.n_w_sweep": [0.0, 0.2], "ablation.n_w_columns": [0.2]}
    cfg = Experiment.from_config(resolve(overrides))
    # interrupted after msnat's last checkpoint, before its summary and its row were written
    (msnat_run,) = (out / "runs").glob("msnat-seed3-*")
    (msnat_run / "summary.json").unlink()
    kept = (out / ablation.ROWS_FILE).read_text().splitlines()
    (out / ablation.ROWS_FILE).write_text("\n".join(kept[:2]) + "\n")  # vanilla, msnat_no_fi
    said = []
    try:
        again = ablation.run_ablation(cfg, overrides, out, [3],
                                      ["vanilla", "msnat_no_fi", "msnat"], env=env,
                                      progress=said.append)
    finally:
        stop_local_superlink(home)
    assert "2 (arm, seed) result(s) kept" in said[0]
    assert not any("training MSNAT w/o FI" in s or "vanilla" in s for s in said)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        p.name for p in (out / "runs").iterdir() if p.name.split("-seed")[0] in
        {"vanilla", "msnat_no_fi", "msnat"})  # no new run folder: msnat's was resumed
    assert len(list((out / "runs").glob("msnat-seed3-*"))) == 1
    assert (msnat_run / "summary.json").exists()
    before = {r["arm"]: r for r in rows}
    for row in again:  # the same models and evaluation: the same figures
        assert row["clean"] == before[row["arm"]]["clean"]
        assert row["protocols"] == before[row["arm"]]["protocols"]


def test_an_ablation_folder_of_other_settings_is_refused_before_any_work(tmp_path):
    first = Experiment.from_config(resolve({"training.rounds": 1}))
    saved = ablation._identity(first.config)
    del saved["federation.retries"]  # a folder written before that key existed
    saved["conf"] = "/elsewhere/conf/default.yaml"  # and by a checkout since moved
    (tmp_path / ablation.STATE_FILE).write_text(json.dumps({"config": saved}))
    assert ablation.finished_rows(Experiment.from_config(resolve(
        {"training.rounds": 1, "seed": 7})), tmp_path) == []  # other seeds may be added
    other = Experiment.from_config(resolve({"training.rounds": 2}))
    with pytest.raises(ConfigError, match="training.rounds: 1 there, 2 now"):
        ablation.run_ablation(other, {}, tmp_path, [0], ["vanilla"])
    retries = Experiment.from_config(resolve({"training.rounds": 1, "federation.retries": 3}))
    with pytest.raises(ConfigError, match="federation.retries: 2 there, 3 now"):
        ablation.finished_rows(retries, tmp_path)  # the missing key has its default there
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,message", [
    (["--arms", "vanilla,nope"], "unknown arm(s) ['nope']"),
    (["--arms", "hwa_compute"], "add it"),
    (["--run-config", "ablation.n_w_columns='0.12'"], "does not measure"),
    (["--run-config", "training.rounds=0"], "training.rounds"),
    (["--seeds", "x"], "comma-separated integers"),
])
def test_ablate_command_refuses_bad_input_before_training(args, message, tmp_path, capsys):
    from analogai_fl.cli import main

    try:
        code = main(["ablate", "--out", str(tmp_path / "out"), *args])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained


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


@pytest.mark.e2e
def test_a_rerun_with_nothing_left_renders_every_row_of_the_folder(tiny_ablation):
    out, _ = tiny_ablation
    kept = (out / ablation.ROWS_FILE).read_text()
    (out / "results.md").unlink()
    overrides = {"training.rounds": 1, "training.client_num_in_total": 2,
                 "inference.repeats": 1, "inference.drift_times": [1.0, 86400.0],
                 "inference.n_w_sweep": [0.0, 0.2], "ablation.n_w_columns": [0.2]}
    said = []
    rows = ablation.run_ablation(Experiment.from_config(resolve(overrides)), overrides, out,
                                 [3], ["vanilla"], progress=said.append)
    assert not any("training" in s for s in said)
    assert (out / ablation.ROWS_FILE).read_text() == kept
    in_folder = [json.loads(line) for line in kept.splitlines()]  # not only the vanilla arm
    assert len(in_folder) >= 3
    assert sorted(r["arm"] for r in rows) == sorted(r["arm"] for r in in_folder)
    md = (out / "results.md").read_text()
    for row in in_folder:  # one line per protocol and in the validation table
        assert md.count(f"| {row['method']} | 1 |") == 3


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
