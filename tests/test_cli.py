"""The `analogai-fl` commands (`analogai_fl.cli`): `infer` on checkpoints of a tiny
in-process run, the summary `check` prints, and `ablate`'s own argument checks.

That every command runs the configuration checks before any work is in test_checks.py; the
ablation itself in test_ablation.py.
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from analogai_fl import cli, config
from analogai_fl.models import build_model
from analogai_fl.outputs import RunFolder
from analogai_fl.settings import Experiment

# --- analogai-fl infer -----------------------------------------------------------------------

# (the ablation's n_w columns, 0.1 and 0.2 by default, must be among the swept values)
QUICK = "inference.repeats=2 inference.drift_times='1,86400' inference.n_w_sweep='0.1,0.2'"


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained):
    """A tiny run folder as the ServerApp writes it: config.yaml and round checkpoints
    (round 1 fused; round 2 with fusion off, two noise levels)."""
    cfg = config.defaults() | {"output.dir": str(tmp_path_factory.mktemp("runs")),
                               "output.name": "tiny"}
    folder = RunFolder.create(Experiment.from_config(cfg).output, config.dump_yaml(cfg))
    folder.save_checkpoint(1, [trained.state_dict()], fused=True)
    torch.manual_seed(1)
    other = build_model("lenet", 1, 10, 32).state_dict()  # untrained: chance accuracy
    folder.save_checkpoint(2, [trained.state_dict(), other], fused=False)
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_infer_writes_tables_csv_and_plot(run, capsys):
    checkpoint = run.checkpoints / "round_0001.pt"
    assert cli.main(["infer", str(checkpoint), "--run-config", QUICK]) == 0
    out = run.path / "infer" / "round_0001"
    drift = read_csv(out / "drift.csv")
    assert [(r["model"], r["drift"]) for r in drift] == [("global", "1s"), ("global", "1d")]
    assert all(0.7 < float(r["mean"]) <= 1.0 and r["device"] == "PCM" for r in drift)
    sweep = read_csv(out / "n_w_sweep.csv")
    assert [(float(r["n_w"]), r["drift"]) for r in sweep] == [
        (0.1, "1s"), (0.1, "1d"), (0.2, "1s"), (0.2, "1d")]
    assert (out / "infer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "clean" in printed and "n_w sweep" in printed and "1d" in printed


def test_infer_options_reach_the_evaluation(run, tmp_path, capsys):
    checkpoint = run.checkpoints / "round_0001.pt"
    assert cli.main(["infer", str(checkpoint), "--out", str(tmp_path), "--no-sweep",
                     "--run-config", "inference.platform.aihwkit.device='ReRAM' "
                     "inference.drift_times='1,172800' inference.repeats=1 "
                     "inference.tile='cpp' inference.protocols.realistic.drift_compensation="
                     "false"]) == 0
    assert [r["drift"] for r in read_csv(tmp_path / "drift.csv")] == ["1s", "2d"]
    assert {r["device"] for r in read_csv(tmp_path / "drift.csv")} == {"ReRAM"}
    assert not (tmp_path / "n_w_sweep.csv").exists()
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "ReRAM" in printed and "tile cpp" in printed and "GDC off" in printed


def test_infer_with_fusion_off_evaluates_each_model_or_the_chosen_one(run, tmp_path):
    round_2 = run.checkpoints / "round_0002.pt"  # stands for round_0002_noise_{0,1}.pt
    assert cli.main(["infer", str(round_2), "--no-sweep", "--out", str(tmp_path / "all"),
                     "--run-config", "inference.repeats=1 inference.drift_times='1'"]) == 0
    rows = read_csv(tmp_path / "all" / "drift.csv")
    assert [r["model"] for r in rows] == ["noise_0", "noise_1"]
    assert float(rows[0]["mean"]) > float(rows[1]["mean"]) + 0.3  # trained vs untrained
    assert cli.main(["infer", str(round_2), "--model-index", "1", "--no-sweep", "--out",
                     str(tmp_path / "one"), "--run-config",
                     "inference.repeats=1 inference.drift_times='1'"]) == 0
    assert [r["model"] for r in read_csv(tmp_path / "one" / "drift.csv")] == ["noise_1"]


def error_of(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_infer_rejects_bad_checkpoints_in_one_line(run, tmp_path, capsys):
    missing = tmp_path / "round_0009.pt"
    assert "does not exist" in error_of(["infer", str(missing)], capsys)
    garbage = run.checkpoints / "round_0050.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    try:
        err = error_of(["infer", str(garbage)], capsys)
        assert str(garbage) in err and "is not a checkpoint" in err
    finally:
        garbage.unlink()
    mlp = run.checkpoints / "round_0051.pt"
    torch.save(build_model("mlp", 1, 10, 32).state_dict(), mlp)
    try:
        err = error_of(["infer", str(mlp)], capsys)
        assert str(mlp) in err and "does not match the configured model 'lenet'" in err
        assert "missing" in err and "unexpected" in err
    finally:
        mlp.unlink()
    wrong_classes = tmp_path / "lenet100.pt"
    torch.save(build_model("lenet", 1, 100, 32).state_dict(), wrong_classes)
    err = error_of(["infer", str(wrong_classes), "--conf", str(run.path / "config.yaml")],
                   capsys)
    assert "shape" in err and "(100, 84) vs (10, 84)" in err


def test_infer_rejects_bad_options_in_one_line(run, tmp_path, capsys):
    checkpoint = str(run.checkpoints / "round_0001.pt")
    assert "inference.repeats" in error_of(
        ["infer", checkpoint, "--run-config", "inference.repeats=0"], capsys)
    assert "unknown key" in error_of(["infer", checkpoint, "--run-config", "nope=1"], capsys)
    assert "inference.drift_times" in error_of(
        ["infer", checkpoint, "--run-config", "inference.platform.aihwkit.device='ReRAM'"],
        capsys)
    assert "--model-index" in error_of(["infer", checkpoint, "--model-index", "1"], capsys)
    lonely = tmp_path / "round_0001.pt"
    lonely.write_bytes((run.checkpoints / "round_0001.pt").read_bytes())
    assert "--conf" in error_of(["infer", str(lonely)], capsys)  # no run folder around it


@pytest.mark.e2e
def test_console_script_is_installed_and_runs_infer(run, tmp_path):
    script = Path(sys.executable).parent / "analogai-fl"
    done = subprocess.run([str(script), "infer", str(run.checkpoints / "round_0001.pt"),
                           "--no-sweep", "--out", str(tmp_path), "--run-config",
                           "inference.repeats=1 inference.drift_times='1'"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "drift.csv").is_file() and (tmp_path / "infer.png").is_file()
    bad = subprocess.run([str(script), "infer", str(tmp_path / "nothing.pt")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_run_folder_of_an_earlier_version_still_loads(run, tmp_path):
    """Run folders written before `ablation.validation` existed (and before checkpoints had
    server-state files) evaluate as they are: missing keys take their defaults."""
    import shutil

    import yaml
    old = tmp_path / "old-run"
    shutil.copytree(run.path, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["ablation"]["validation"]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    assert cli.main(["infer", str(old / "checkpoints" / "round_0001.pt"), "--no-sweep",
                     "--run-config", "inference.repeats=1 inference.drift_times='1'"]) == 0
    assert read_csv(old / "infer" / "round_0001" / "drift.csv")[0]["drift"] == "1s"


# --- analogai-fl check and ablate -----------------------------------------------------------

def test_check_prints_what_flwr_run_would_run(capsys):
    code, out, _ = run_cli(capsys, "check", "--run-config",
                           "training.rounds=3 strategy.name='fedadam'")
    assert code == 0
    assert "lenet on digits" in out and "strategy fedadam" in out and "3 rounds" in out
    assert "changed from the defaults: training.rounds=3, strategy.name='fedadam'" in out
    assert "sent again up to 2 time(s), reply timeout Flower's" in out
    _, out, _ = run_cli(capsys, "check", "--run-config", "federation.retries=0 "
                        "federation.reply_timeout=30 federation.inject_failure='2:1'")
    assert "up to 0 time(s), reply timeout 30 s, injected failure round 2, level 1" in out


def test_check_merges_repeated_run_config_flags_as_flwr_run_does(capsys):
    code, out, _ = run_cli(capsys, "check", "--run-config", "training.rounds=2",
                           "--run-config", "inference.repeats=1")
    assert code == 0 and "2 rounds" in out
    assert "training.rounds=2, inference.repeats=1" in out
    err = error_of(["check", "--run-config", "training.rounds=2", "--run-config",
                    "training.lr=0.1"], capsys)
    assert "training.rounds would be dropped" in err


def test_check_refuses_a_split_too_small_to_stratify_in_one_line(capsys):
    err = error_of(["check", "--run-config", "data.val_fraction=0.001"], capsys)
    assert "'data.val_fraction' = 0.001 gives a validation split of 2" in err
    assert err.endswith("use at least 0.0051")


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


def test_infer_of_a_checkpoint_outside_a_run_folder_works_with_conf_as_advised(tmp_path,
                                                                               capsys):
    """A checkpoint copied out of its run folder has no config.yaml two levels up; passing
    --conf FILE, as the message says, evaluates it."""
    lonely = tmp_path / "round_0001.pt"
    torch.save(build_model("lenet", 1, 10, 32).state_dict(), lonely)
    conf = tmp_path / "saved.yaml"
    conf.write_text(config.dump_yaml(config.defaults()))
    quick = ["--no-sweep", "--out", str(tmp_path / "out"), "--run-config",
             "inference.repeats=1 inference.drift_times='1'"]
    assert error_of(["infer", str(lonely), *quick], capsys).endswith("; pass --conf FILE")
    assert cli.main(["infer", str(lonely), "--conf", str(conf), *quick]) == 0
    assert [r["drift"] for r in read_csv(tmp_path / "out" / "drift.csv")] == ["1s"]


def test_ablate_accepts_hwa_compute_once_msnat_is_added_as_advised(tmp_path, capsys,
                                                                    monkeypatch):
    """--arms hwa_compute alone is refused; with msnat added, as the message says, the
    command plans both arms and passes their checks (`ablation.plan`, which trains nothing;
    the training that would follow is replaced here by the plan alone)."""
    from analogai_fl import ablation

    planned = []

    def plan_only(exp, overrides, out, seeds, names, progress=print, merge=()):
        assert list(merge) == []  # no --merge given
        planned.extend((r.name, r.seed) for r in ablation.plan(exp, overrides, out, seeds, names))
        out.mkdir(parents=True)
        (out / "results.md").write_text("planned\n")

    monkeypatch.setattr(ablation, "run_ablation", plan_only)
    argv = ["ablate", "--seeds", "0", "--out", str(tmp_path / "out")]
    assert error_of([*argv, "--arms", "hwa_compute"], capsys).endswith("arm; add it")
    assert cli.main([*argv, "--arms", "msnat,hwa_compute"]) == 0  # the advice, followed
    assert planned == [("msnat", 0), ("hwa_compute", 0)]
