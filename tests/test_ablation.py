"""The ablation command: arms that really differ, one shared evaluation, result files."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import local_training

from analogai_fl import ablation, config, schema
from analogai_fl.ablation import folder as ablation_folder
from analogai_fl.errors import ArmFailed, ConfigError
from analogai_fl.flwr_cli import flwr_env, stop_local_superlink
from analogai_fl.noise import noisy_forward
from analogai_fl.settings import Experiment, load
from analogai_fl.training import passes_per_example
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
    exp = load(sigmas)
    for name, arm in ablation.arms(exp).items():
        if arm.kind != "flwr":
            continue
        run = load(ablation.arm_run_config(
            name, arm, exp, sigmas, 1, tmp_path))
        all_levels = [0.02, 0.04, 0.06, 0.08, 0.1]
        expected = [0.0] if name == "vanilla" else [0.06] if name.startswith(
            "noise_injection") or name in ("multiscale", "hwa_chip") else all_levels
        assert list(run.noise_levels) == pytest.approx(expected), name
        drawn = list(run.training.sigma_levels)
        assert drawn == (pytest.approx(all_levels) if name == "multiscale" else []), name


def test_finetune_lr_is_the_lr_of_every_arm_that_fine_tunes_the_vanilla_model(tmp_path):
    """ablation.finetune_lr: every flwr arm but vanilla trains at it (vanilla, the
    pre-training, keeps training.lr) except the recipe arms, which train at their own lr
    (ablation.hwa_chip_lr, ablation.msnat_hwa_lr; null: ablation.hwa.lr) whatever
    finetune_lr says; null keeps training.lr everywhere; without ablation.pretrained it is
    refused, naming the key."""
    given = {"ablation.pretrained": True, "ablation.finetune_lr": 1e-4, "training.lr": 2e-3,
             "ablation.hwa.lr": 0.007, "ablation.msnat_hwa_lr": 0.003}
    own = {"hwa_chip": 0.007, "msnat_hwa": 0.003}
    for finetune, expected in ((1e-4, 1e-4), (None, 2e-3)):
        overrides = given | {"ablation.finetune_lr": finetune}
        exp = load(overrides)
        for name, arm in ablation.arms(exp).items():
            if arm.kind != "flwr":
                continue
            run = load(ablation.arm_run_config(name, arm, exp, overrides, 1, tmp_path))
            want = 2e-3 if name == "vanilla" else own.get(name, expected)
            assert run.training.lr == want, name
    with pytest.raises(ConfigError, match="ablation.finetune_lr.*ablation.pretrained=true"):
        load({"ablation.finetune_lr": 1e-4})


def test_the_recipe_arms_train_with_hwas_recipe_at_equal_passes_and_mean_noise(digits):
    """hwa_chip and msnat_hwa: the chip's forward with HWA's clip, SGD momentum and weight
    decay, cosine schedule, batch, output noise and converters (`ablation.hwa.*`), no
    feedback loops and no proximal term, uniform fusion; hwa_chip one model at HWA's
    modifier std on the whole split, msnat_hwa the K levels on iid shards: the same sample
    passes per round and the same mean sigma. HWA without its clip trains them unclipped."""
    from analogai_fl.partitions import describe_partition

    overrides = {"ablation.hwa.clip_sigma": 2.0, "ablation.hwa.momentum": 0.8,
                 "ablation.hwa.out_noise": 0.03, "ablation.hwa.lr": 0.004,
                 **{f"recovery.noise_{k}.act_inject.sigma": 0.02 * (k + 1) for k in range(5)}}
    exp = load(overrides)
    runs = {name: load(ablation.arm_run_config(name, ablation.arms(exp)[name], exp,
                                               overrides, 1, Path("/nowhere")))
            for name in ("hwa_chip", "msnat_hwa")}
    for name, run in runs.items():
        setting = run.local_training(0, run.client_mu(), 2)
        assert (setting.optimizer, setting.momentum, setting.weight_decay) == ("sgd", 0.8, 5e-4)
        assert setting.clip_sigma == 2.0 and setting.chip.out_noise == 0.03, name
        assert setting.chip.dac_bits == setting.chip.adc_bits == 8
        assert run.lr_schedule == "cosine" and setting.lr < run.training.lr == 0.004
        assert setting.feedback is None and run.client_mu() == 0.0 and run.fused
        assert run.strategy.weighting == "uniform" and setting.batch_size == 64
    assert runs["hwa_chip"].noise_levels == (0.06,)
    assert runs["hwa_chip"].data.partition == "full"
    assert runs["msnat_hwa"].data.partition == "iid"
    assert sum(runs["msnat_hwa"].noise_levels) / 5 == pytest.approx(0.06)

    def passes(run):
        data = dataclasses.replace(run.data, name="digits")
        shares = describe_partition(digits, data)
        return sum(c["examples"] for c in shares) * passes_per_example(run.training)

    assert passes(runs["hwa_chip"]) == passes(runs["msnat_hwa"])
    unclipped = load(overrides | {"ablation.hwa.clip_type": "none"})
    arm = ablation.arms(unclipped)["msnat_hwa"]
    assert load(ablation.arm_run_config("msnat_hwa", arm, unclipped, overrides, 1,
                                        Path("/nowhere"))).training.clip_sigma == 0.0


@pytest.mark.parametrize("partition", ["full", "iid"])
def test_the_compute_controls_spend_msnats_sample_passes_on_one_model(digits, partition):
    """Sample passes of one round (examples of every client's share x epochs x passes per
    example): the two one-model controls spend exactly MSNAT's."""
    from analogai_fl.partitions import describe_partition

    def per_round(name):
        exp = Experiment.from_config(arm_cfg(name, **{"data.partition": partition}))
        examples = sum(c["examples"] for c in describe_partition(digits, exp.data))
        setting = exp.local_training(0, 0.0)
        return examples * setting.epochs * passes_per_example(setting)

    msnat = per_round("msnat")
    assert per_round("noise_injection") < msnat
    assert per_round("noise_injection_compute") == msnat == per_round("multiscale")
    multiscale = Experiment.from_config(arm_cfg("multiscale"))
    full = Experiment.from_config(arm_cfg("msnat"))
    assert multiscale.training.sigma_levels == full.noise_levels
    assert multiscale.training.feedback == full.training.feedback


def planned(overrides, names=ablation.ARM_NAMES, seeds=(1,), out=Path("/tmp/unused")):
    return ablation.plan(load(overrides), overrides, out, seeds, names)


def test_an_arm_that_would_repeat_the_msnat_run_is_not_trained():
    names = list(ablation.ARM_NAMES)
    assert ablation.same_run_as_msnat(planned({})) == []
    no_feedback = {"training.use_neg": False}
    assert ablation.same_run_as_msnat(planned(no_feedback)) == ["msnat_no_fl"]
    assert ablation.same_run_as_msnat(planned(no_feedback, ["msnat_no_fl"])) == []  # no msnat
    no_fusion = {"training.use_fl": False}
    assert ablation.same_run_as_msnat(planned(no_fusion, names, (1, 2))) == ["msnat_no_fi"]


def test_the_plan_resolves_each_run_once_in_training_order(monkeypatch, tmp_path):
    from analogai_fl import settings

    resolved = []
    real = settings.resolve
    monkeypatch.setattr(settings, "resolve", lambda rc: resolved.append(rc) or real(rc))
    overrides = {"training.rounds": 2}
    exp = Experiment.from_config(real(overrides))
    runs = ablation.plan(exp, overrides, tmp_path, [5, 6], ["hwa", "vanilla", "msnat"])
    assert [(r.name, r.seed) for r in runs] == [
        ("vanilla", 5), ("msnat", 5), ("hwa", 5), ("vanilla", 6), ("msnat", 6), ("hwa", 6)]
    assert len(resolved) == 2 * 3  # per seed: the ablation's settings and the two flwr arms
    for run in runs:
        assert run.seed == run.exp.seed == run.base.seed and run.exp.rounds == 2
        assert run.data is runs[0].data if run.seed == 5 else run.data is runs[-1].data
        if run.arm.kind == "hwa":
            assert run.run_config is None and run.exp is run.base
        else:  # what the arm's flwr run will resolve, and its folder in the ablation's
            assert run.exp == load(run.run_config)
            assert run.run_config["output.dir"] == str(tmp_path / "runs")
    assert [r.exp.clients for r in runs[:3]] == [1, 5, 5]
    assert not (tmp_path / "runs").exists()  # planned, nothing written


def test_unknown_arm_and_missing_baseline_are_refused(tmp_path):
    cfg = load({})
    with pytest.raises(ValueError, match="unknown arm.*'nope'.*known: vanilla"):
        ablation.run_ablation(cfg, {}, tmp_path, [0], ["nope"])
    with pytest.raises(ValueError, match="'hwa_compute' needs the 'msnat' arm"):
        ablation.run_ablation(cfg, {}, tmp_path, [0], ["hwa_compute"])


TINY = {"training.rounds": 1, "training.client_num_in_total": 2, "inference.repeats": 1,
        "inference.drift_times": [1.0, 86400.0], "inference.n_w_sweep": [0.0, 0.2],
        "ablation.n_w_columns": [0.2]}  # the settings of `tiny_ablation`


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory):
    home = tmp_path_factory.mktemp("flwr_home")
    env = flwr_env({"FLWR_HOME": str(home)})
    out = tmp_path_factory.mktemp("ablation")
    overrides = {"training.rounds": 1, "training.client_num_in_total": 2,
                 "inference.repeats": 1, "inference.drift_times": [1.0, 86400.0],
                 "inference.n_w_sweep": [0.0, 0.2], "ablation.n_w_columns": [0.2]}
    cfg = load(overrides)
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
    # per protocol, validation and normalised accuracy
    assert md.count("| MSNAT | 1 |") == 5 and "n_w 0.2" in md
    # each arm against the reference (HWA), paired by seed: one seed gives no interval
    assert "**Paired differences against aihwkit HWA" in md and "(one seed)" in md
    assert "These tables make 45 comparisons" in md  # 3 arms x (clean, 1s, 1d, n_w, n_w 1d) x 3
    assert "**Normalised accuracy**" in md
    with open(out / "paired.csv") as f:
        paired = list(csv.DictReader(f))
    assert {p["arm"] for p in paired} == {"vanilla", "msnat_no_fi", "msnat"}
    assert all(p["reference"] == "hwa" and p["verdict"] == "one seed" for p in paired)
    for r in rows:  # what the collapse check reads
        assert r["num_classes"] == 10 and 0 < r["best_val_during_training"] <= 1
    assert not list((out / "runs").glob("hwa-seed3/hwa_epoch.pt"))  # the row holds it now
    # validation measured alongside test, for choosing on validation and reporting on test
    for r in rows:
        assert 0 <= r["val"]["clean"] <= 1
        assert set(r["val"]["protocols"]["seed"]["drift"]) == {"1s", "1d"}
        assert set(r["val"]["protocols"]["seed"]["n_w"]) == {0.2}  # the n_w columns, at 1s
        late = r["protocols"]["standard"]["n_w_late"]  # and after drift, at the last time
        assert set(late) == {0.2} and late[0.2]["seconds"] == 86400.0
    assert {"val_realistic_pcm_1d_mean", "val_seed_n_w_0.2_mean"} <= set(table[0])
    assert "**Validation split**" in md and "| seed n_w 0.2 |" in md
    for png in ("accuracy_vs_n_w.png", "accuracy_vs_drift.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
def test_an_interrupted_ablation_continues_where_it_stopped(tiny_ablation, tmp_path_factory):
    done, rows = tiny_ablation
    out = tmp_path_factory.mktemp("interrupted") / "ablation"
    shutil.copytree(done, out)  # the fixture's folder stays whole for the other tests
    home = tmp_path_factory.mktemp("flwr_home_again")
    env = flwr_env({"FLWR_HOME": str(home)})
    overrides = {"training.rounds": 1, "training.client_num_in_total": 2,
                 "inference.repeats": 1, "inference.drift_times": [1.0, 86400.0],
                 "inference.n_w_sweep": [0.0, 0.2], "ablation.n_w_columns": [0.2]}
    cfg = load(overrides)
    # interrupted after msnat's last checkpoint, before its summary and its row were written;
    # msnat_no_fi's run had finished, its row (written after its evaluation) had not
    (msnat_run,) = (out / "runs").glob("msnat-seed3-*")
    (msnat_run / "summary.json").unlink()
    (no_fi_run,) = (out / "runs").glob("msnat_no_fi-seed3-*")
    no_fi_wall = json.loads((no_fi_run / "summary.json").read_text())[
        "wall_seconds_this_invocation"]
    kept = (out / ablation_folder.ROWS_FILE).read_text().splitlines()
    (out / ablation_folder.ROWS_FILE).write_text(kept[0] + "\n")  # vanilla
    folders = sorted(p.name for p in (out / "runs").iterdir())
    said = []
    try:
        again = ablation.run_ablation(cfg, overrides, out, [3],
                                      ["vanilla", "msnat_no_fi", "msnat"], env=env,
                                      progress=said.append)
    finally:
        stop_local_superlink(home)
    assert "1 (arm, seed) result(s) kept" in said[0]
    assert not any("training vanilla" in s for s in said)
    # msnat's run was resumed in its folder, msnat_no_fi's finished one read back: no new run
    assert sorted(p.name for p in (out / "runs").iterdir()) == folders
    assert len(list((out / "runs").glob("msnat-seed3-*"))) == 1
    assert (msnat_run / "summary.json").exists()
    assert {r["arm"]: r for r in again}["msnat_no_fi"]["wall_seconds"] == round(no_fi_wall, 1)
    before = {r["arm"]: r for r in rows}
    for row in again:  # the same models and evaluation: the same figures
        assert row["clean"] == before[row["arm"]]["clean"]
        old = before[row["arm"]]["protocols"]
        for name, result in row["protocols"].items():
            if name != "standard":  # seeded torch tile: exactly
                assert result == old[name], name
                continue
            for label, entry in result["drift"].items():  # C++ tile: unseeded read noise
                assert entry["mean"] == pytest.approx(old[name]["drift"][label]["mean"],
                                                      abs=0.06)


@pytest.mark.e2e
def test_the_clipped_arm_and_the_primary_tests_join_a_finished_folder(tiny_ablation,
                                                                      tmp_path, capsys):
    """vanilla_clipped is vanilla's saved model clipped once at HWA's clip, no training (its
    sample passes are vanilla's), evaluated like every arm; its saved model is the clipped
    one, and `infer` on it gives its row without --conf. The pre-registration keys only
    change the report:
    given on a finished folder they lead results.md with the primary tests and write
    primary.csv, and nothing is trained again."""
    from analogai_fl.cli import main
    from analogai_fl.clip import gaussian_clip_
    from analogai_fl.models import build_model

    done, _ = tiny_ablation
    out = tmp_path / "ablation"
    shutil.copytree(done, out)
    overrides = TINY | {"ablation.primary_contrasts": "msnat-hwa,msnat-vanilla_clipped",
                        "ablation.primary_endpoints": "realistic PCM 1d,standard n_w 0.2"}
    said = []
    rows = ablation.run_ablation(load(overrides), overrides, out, [3],
                                 ["vanilla", "vanilla_clipped", "msnat", "hwa"],
                                 progress=said.append)
    assert [s for s in said if "] training" in s] == [
        "[seed 3] training vanilla, clipped once at 2.5 std (no training) from the vanilla "
        "model ..."]
    by_arm = {r["arm"]: r for r in rows}
    clipped, vanilla = by_arm["vanilla_clipped"], by_arm["vanilla"]
    assert clipped["sample_passes"] == vanilla["sample_passes"] and "clipped" in clipped["note"]
    model = build_model("lenet", 1, 10, 32)
    model.load_state_dict(torch.load(ablation_folder.model_path(out, "vanilla", 3)))
    saved = torch.load(ablation_folder.model_path(out, "vanilla_clipped", 3))
    assert all(torch.equal(saved[k], v) for k, v in gaussian_clip_(model, 2.5)
               .state_dict().items())
    md = (out / "results.md").read_text()
    assert md.startswith("**Pre-registered primary tests** (4 tests")
    assert "| MSNAT − vanilla, clipped once at 2.5 std (no training) | `realistic` PCM 1d | 3 |" \
        in md  # one seed: no interval, no test
    assert len((out / "primary.csv").read_text().splitlines()) == 1 + 2 * 4
    capsys.readouterr()  # no --conf: the config its row was evaluated with is beside it
    assert main(["infer", str(ablation_folder.model_path(out, "vanilla_clipped", 3)),
                 "--no-sweep", "--out", str(tmp_path / "infer"),
                 "--run-config", "inference.drift_times='1,86400' inference.repeats=1"]) == 0
    printed = capsys.readouterr().out
    assert f"{100 * clipped['clean']:.1f}" in printed and "max|W|/rms(W)" in printed
    with open(tmp_path / "infer" / "drift.csv") as f:
        drift = {r["drift"]: float(r["mean"]) for r in csv.DictReader(f)}
    assert drift == pytest.approx({label: v["mean"] for label, v in
                                   clipped["protocols"]["realistic"]["drift"].items()}, abs=1e-9)


@pytest.mark.e2e
def test_pretrained_arms_fine_tune_the_vanilla_model_and_every_model_is_saved(tmp_path):
    """ablation.pretrained: vanilla trains first (from scratch), the chip-noise MSNAT arm and
    HWA start from its saved model and count its sample passes; every arm's final model is
    in <out>/models and `infer` on it gives its row's clean accuracy."""
    home = tmp_path / "flwr_home"
    env = flwr_env({"FLWR_HOME": str(home)})
    overrides = {"training.rounds": 1, "training.client_num_in_total": 2,
                 "inference.repeats": 1, "inference.drift_times": [1.0],
                 "inference.n_w_sweep": [0.0, 0.2], "ablation.n_w_columns": [0.2],
                 "ablation.pretrained": True}
    said = []
    try:
        rows = ablation.run_ablation(load(overrides), overrides, tmp_path / "out", [3],
                                     ["msnat_analog", "hwa"], env=env, progress=said.append)
    finally:
        stop_local_superlink(home)
    by_arm = {r["arm"]: r for r in rows}
    assert list(by_arm) == ["vanilla", "msnat_analog", "hwa"]  # vanilla added, trained first
    vanilla = by_arm["vanilla"]["sample_passes"]
    for arm in ("msnat_analog", "hwa"):
        assert by_arm[arm]["pretrained_passes"] == vanilla
        assert by_arm[arm]["sample_passes"] > vanilla
        assert "fine-tuned from vanilla" in by_arm[arm]["note"]
    assert any("training MSNAT" in s and "from the vanilla model" in s for s in said)
    (run,) = (tmp_path / "out" / "runs").glob("msnat_analog-seed3-*")
    assert f"init: {tmp_path / 'out' / 'models' / 'vanilla-seed3.pt'}" in (
        run / "config.yaml").read_text()
    from analogai_fl.cli import main

    for arm, row in by_arm.items():
        assert Path(row["model"]) == tmp_path / "out" / "models" / f"{arm}-seed3.pt"
        report = tmp_path / f"infer-{arm}"
        assert main(["infer", row["model"], "--conf", str(run / "config.yaml"), "--no-sweep",
                     "--out", str(report)]) == 0  # the run's seed 3, repeats, drift times
        with open(report / "drift.csv") as f:
            (measured,) = list(csv.DictReader(f))
        assert float(measured["clean_acc"]) == row["clean"]
        assert float(measured["mean"]) == row["protocols"]["realistic"]["drift"]["1s"]["mean"]


def test_an_ablation_folder_of_other_settings_is_refused_before_any_work(tmp_path):
    first = load({"training.rounds": 1})
    saved = ablation_folder.identity(first.config)
    del saved["federation.retries"]  # a folder written before that key existed
    saved["conf"] = "/elsewhere/conf/default.yaml"  # and by a checkout since moved
    (tmp_path / ablation_folder.STATE_FILE).write_text(json.dumps({"config": saved}))
    assert ablation_folder.finished_rows(load(
        {"training.rounds": 1, "seed": 7}), tmp_path) == []  # other seeds may be added
    other = load({"training.rounds": 2})
    with pytest.raises(ConfigError, match="training.rounds: 1 there, 2 now"):
        ablation.run_ablation(other, {}, tmp_path, [0], ["vanilla"])
    retries = load({"training.rounds": 1, "federation.retries": 3})
    with pytest.raises(ConfigError, match="federation.retries: 2 there, 3 now"):
        ablation_folder.finished_rows(retries, tmp_path)  # the missing key has its default there
    assert not (tmp_path / "runs").exists()


def test_a_damaged_ablation_folder_file_is_named_and_a_row_cut_short_is_dropped(tmp_path):
    """rows.jsonl's last row cut short by a kill is dropped with a warning (its arm trains
    again); a damaged row before others, or a damaged ablation.json, is refused naming the
    file (and line) before any work."""
    exp = load({"training.rounds": 1})
    ablation_folder.write_state(tmp_path, exp)
    for seed in (0, 1):
        ablation_folder.append_row(tmp_path, {"arm": "vanilla", "seed": seed, "protocols": {}})
    rows_file = tmp_path / ablation_folder.ROWS_FILE
    with open(rows_file, "a") as f:
        f.write('{"arm": "msnat", "se')  # killed while writing
    said = []
    rows = ablation_folder.finished_rows(exp, tmp_path, said.append)
    assert [r["seed"] for r in rows] == [0, 1]
    assert "rows.jsonl' line 3, its last, is damaged" in said[0]
    lines = rows_file.read_text().splitlines()
    rows_file.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    with pytest.raises(ConfigError, match="rows.jsonl' line 2 is damaged"):
        ablation.run_ablation(exp, {}, tmp_path, [0], ["vanilla"])
    (tmp_path / ablation_folder.STATE_FILE).write_text('{"config": {"seed"')
    with pytest.raises(ConfigError, match="ablation.json' is damaged .*another --out"):
        ablation.run_ablation(exp, {}, tmp_path, [0], ["vanilla"])
    assert not (tmp_path / "runs").exists()


def test_an_ablation_folder_refused_for_its_settings_or_damage_continues_as_advised(tmp_path):
    """A folder of other settings: the same settings continue it, and another --out starts
    afresh. A damaged ablation.json: restoring it continues the folder with its rows, and
    another --out starts afresh. (`finished_rows` is what `ablate` reads first.)"""
    out = tmp_path / "out"
    first = load({"training.rounds": 1})
    ablation_folder.write_state(out, first)
    ablation_folder.append_row(out, {"arm": "vanilla", "seed": 0, "protocols": {}})
    other = load({"training.rounds": 2})
    with pytest.raises(ConfigError, match="use the same conf and --run-config to continue "
                                          "it, or another --out$"):
        ablation_folder.finished_rows(other, out)
    assert [r["arm"] for r in ablation_folder.finished_rows(load({"training.rounds": 1}),
                                                            out)] == ["vanilla"]
    assert ablation_folder.finished_rows(other, tmp_path / "another") == []
    state = out / ablation_folder.STATE_FILE
    saved = state.read_text()
    state.write_text(saved[:20])  # cut short
    with pytest.raises(ConfigError, match="ablation.json' is damaged .*restore it, or give "
                                          "another --out$"):
        ablation_folder.finished_rows(first, out)
    state.write_text(saved)  # restored
    assert [r["arm"] for r in ablation_folder.finished_rows(first, out)] == ["vanilla"]
    assert ablation_folder.finished_rows(first, tmp_path / "another") == []


def _folder_with_rows(out, exp, rows, run_folders=()):
    ablation_folder.write_state(out, exp)
    for arm, seed, clean in rows:
        ablation_folder.save_model(torch.nn.Linear(2, 2),
                                   ablation_folder.model_path(out, arm, seed), exp.config)
        ablation_folder.append_row(out, {"arm": arm, "seed": seed, "clean": clean,
                                         "model": "elsewhere", "protocols": {}})
    for name in run_folders:
        (out / ablation_folder.RUNS_DIR / name).mkdir(parents=True)
        (out / ablation_folder.RUNS_DIR / name / "metrics.jsonl").write_text("{}\n")


def test_merge_copies_the_rows_a_folder_lacks_with_their_models_and_checks_every_folder_first(
        tmp_path):
    """Parts of one ablation run side by side: --merge copies the rows --out lacks, with
    their models and run folders; a row --out has is kept as it is. A folder of other
    settings, without an ablation, the --out folder itself or one that lacks a model is
    refused by name, before anything is copied."""
    exp = load({"training.rounds": 1})
    out, part = tmp_path / "out", tmp_path / "part"
    _folder_with_rows(out, exp, [("vanilla", 1, 0.5)])
    _folder_with_rows(part, exp, [("vanilla", 1, 0.9), ("msnat", 1, 0.7), ("vanilla", 2, 0.6)],
                      ["msnat-seed1-20261205-000000", "vanilla-seed2-20261205-000000"])
    other = tmp_path / "other"
    _folder_with_rows(other, load({"training.rounds": 2}), [("hwa", 1, 0.8)])
    lacking = tmp_path / "lacking"
    _folder_with_rows(lacking, exp, [("hwa", 1, 0.8)])
    ablation_folder.model_path(lacking, "hwa", 1).unlink()
    rows_before = (out / ablation_folder.ROWS_FILE).read_text()
    refused = [([other], f"--merge {other}: holds an ablation with other settings "
                         r"\(training.rounds: 2 there, 1 now\); only folders of the same "
                         "settings merge"),
               ([tmp_path / "none"], "no ablation folder"),
               ([out], "is the --out folder itself"),
               ([part, lacking], r"the model of its row \(hwa, seed 1\) is missing")]
    for folders, message in refused:
        with pytest.raises(ConfigError, match=message):
            ablation_folder.merge_folders(exp, out, folders)
        assert (out / ablation_folder.ROWS_FILE).read_text() == rows_before  # nothing copied
        assert not (out / ablation_folder.RUNS_DIR).exists()
    assert ablation_folder.merge_folders(exp, out, [part]) == 2
    rows = {(r["arm"], r["seed"]): r for r in ablation_folder.finished_rows(exp, out)}
    assert list(rows) == [("vanilla", 1), ("msnat", 1), ("vanilla", 2)]
    assert rows[("vanilla", 1)]["clean"] == 0.5  # the row --out had is kept
    for key in [("msnat", 1), ("vanilla", 2)]:
        model = ablation_folder.model_path(out, *key)
        assert rows[key]["model"] == str(model) and model.exists()
        assert ablation_folder.config_beside(model).exists()  # what infer reads
        assert torch.equal(torch.load(model)["weight"],
                           torch.load(ablation_folder.model_path(part, *key))["weight"])
    assert sorted(p.name for p in (out / ablation_folder.RUNS_DIR).iterdir()) == [
        "msnat-seed1-20261205-000000", "vanilla-seed2-20261205-000000"]
    assert ablation_folder.merge_folders(exp, out, [part]) == 0  # merged once only


@pytest.mark.e2e
def test_ablate_merge_renders_parts_run_side_by_side_as_one_folder(tiny_ablation, tmp_path,
                                                                   capsys):
    """`ablate --merge PART`: the rows --out lacks come from PART, so nothing is trained and
    the report holds every arm (without the merge, msnat and hwa would train again here)."""
    from analogai_fl.cli import main

    out, rows = tiny_ablation
    whole, part = tmp_path / "whole", tmp_path / "part"
    shutil.copytree(out, whole)
    shutil.copytree(out, part)
    lines = (out / ablation_folder.ROWS_FILE).read_text().splitlines()
    (whole / ablation_folder.ROWS_FILE).write_text("\n".join(lines[:2]) + "\n")
    (part / ablation_folder.ROWS_FILE).write_text("\n".join(lines[2:]) + "\n")
    for arm in ("msnat", "hwa"):  # whole has nothing of theirs
        ablation_folder.model_path(whole, arm, 3).unlink()
        for run in (whole / ablation_folder.RUNS_DIR).glob(f"{arm}-seed3*"):
            shutil.rmtree(run)
    (whole / "results.md").unlink()
    assert main(["ablate", "--seeds", "3", "--arms", "vanilla,msnat_no_fi,msnat,hwa",
                 "--out", str(whole), "--merge", str(part), "--run-config",
                 "training.rounds=1 training.client_num_in_total=2 inference.repeats=1 "
                 "inference.drift_times='1,86400' inference.n_w_sweep='0,0.2' "
                 "ablation.n_w_columns='0.2'"]) == 0
    said = capsys.readouterr().out
    assert f"merged 2 (arm, seed) row(s) from {part}" in said and "] training" not in said
    merged = [json.loads(line) for line in
              (whole / ablation_folder.ROWS_FILE).read_text().splitlines()]
    assert [(r["arm"], r["clean"]) for r in merged] == [(r["arm"], r["clean"]) for r in rows]
    assert (whole / "results.md").read_text().count("| MSNAT | 1 |") == 5


@pytest.mark.e2e
def test_a_rerun_with_nothing_left_renders_every_row_of_the_folder(tiny_ablation):
    out, _ = tiny_ablation
    kept = (out / ablation_folder.ROWS_FILE).read_text()
    (out / "results.md").unlink()
    overrides = {"training.rounds": 1, "training.client_num_in_total": 2,
                 "inference.repeats": 1, "inference.drift_times": [1.0, 86400.0],
                 "inference.n_w_sweep": [0.0, 0.2], "ablation.n_w_columns": [0.2]}
    said = []
    rows = ablation.run_ablation(load(overrides), overrides, out,
                                 [3], ["vanilla"], progress=said.append)
    assert not any("training" in s for s in said)
    assert (out / ablation_folder.ROWS_FILE).read_text() == kept
    in_folder = [json.loads(line) for line in kept.splitlines()]  # not only the vanilla arm
    assert len(in_folder) >= 3
    assert sorted(r["arm"] for r in rows) == sorted(r["arm"] for r in in_folder)
    md = (out / "results.md").read_text()
    for row in in_folder:  # one line per protocol (3), in the validation and normalised tables
        assert md.count(f"| {row['method']} | 1 |") == 5




def test_a_collapsed_hwa_arm_is_flagged_in_the_log_the_tables_and_the_csv(tmp_path):
    """HWA at lr 1e6 as 0.1.0 ran it (fixed clip, no remap, plain constant-lr SGD): the clip
    keeps the weights
    finite, so nothing diverges, but the model is at chance; the ablation says so instead of
    reporting it like any other row. (With remapping the loss turns nan and the arm stops as
    diverged.)"""
    overrides = {"training.rounds": 1, "inference.repeats": 1, "inference.drift_times": [1.0],
                 "inference.n_w_sweep": [0.0], "ablation.n_w_columns": [0.0],
                 "ablation.hwa.lr": 1e6, "ablation.hwa.clip_type": "fixed",
                 "ablation.hwa.remap": "none", "ablation.hwa.momentum": 0.0,
                 "ablation.hwa.weight_decay": 0.0, "ablation.hwa.schedule": "constant"}
    said = []
    rows = ablation.run_ablation(load(overrides), overrides, tmp_path, [0], ["hwa"],
                                 progress=said.append)
    assert rows[0]["clean"] <= 0.15
    assert any("COLLAPSED" in s and "at chance" in s for s in said)
    assert "COLLAPSED (seed 0)" in (tmp_path / "results.md").read_text()
    with open(tmp_path / "results.csv") as f:
        assert "at chance" in next(csv.DictReader(f))["collapsed"]


HWA_FAST = {"training.rounds": 1, "inference.repeats": 1, "inference.drift_times": [1.0],
            "inference.n_w_sweep": [0.0], "ablation.n_w_columns": [0.0],
            "ablation.validation": False}


def test_a_diverging_hwa_arm_ends_ablate_in_a_few_lines_saying_to_change_the_settings(
        tmp_path, capsys):
    """aihwkit's recipe (remap, Gaussian clip) at lr 1e6: the loss turns nan; `ablate` names
    the arm, the seed and the reason, keeps what it had and says what to change, in a few
    lines and without a traceback (before: a TrainingDiverged that named no arm)."""
    from analogai_fl.cli import main

    out = tmp_path / "out"
    argv = ["ablate", "--arms", "hwa", "--seeds", "0", "--out", str(out), "--run-config",
            "training.rounds=1 inference.repeats=1 ablation.hwa.lr=1e6"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "arm 'hwa' of seed 0 failed: HWA baseline" in err and "Traceback" not in err
    assert "try a smaller ablation.hwa.lr (now 1e+06)" in err
    assert "The 0 finished (arm, seed) row(s)" in err and "another --out" in err
    assert len(err.splitlines()) <= 3


def test_a_damaged_hwa_checkpoint_is_named_and_its_advice_works_when_followed(tmp_path):
    """Seed 0 finishes; seed 1's epoch checkpoint is cut short. The ablation stops naming
    the file, keeps seed 0's row and says to delete it and run the same command again;
    doing exactly that trains seed 1 and keeps seed 0's row as it was."""
    exp = load(HWA_FAST)
    ablation.run_ablation(exp, HWA_FAST, tmp_path, [0], ["hwa"], progress=lambda _: None)
    kept = (tmp_path / ablation_folder.ROWS_FILE).read_text()
    damaged = ablation_folder.hwa_checkpoint(tmp_path, "hwa", 1)
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ArmFailed) as failed:
        ablation.run_ablation(exp, HWA_FAST, tmp_path, [0, 1], ["hwa"],
                              progress=lambda _: None)
    message = str(failed.value)
    assert f"arm 'hwa' of seed 1 failed: HWA checkpoint {damaged}: not readable" in message
    assert "The 1 finished (arm, seed) row(s)" in message
    assert "delete it" in message and "run the same command again" in message
    damaged.unlink()  # the advice, followed
    rows = ablation.run_ablation(exp, HWA_FAST, tmp_path, [0, 1], ["hwa"],
                                 progress=lambda _: None)
    assert sorted(r["seed"] for r in rows) == [0, 1]
    assert (tmp_path / ablation_folder.ROWS_FILE).read_text().startswith(kept)


@pytest.mark.e2e
def test_a_failed_arm_ends_ablate_in_a_few_lines_saying_how_to_continue(tmp_path, capsys):
    """At lr 1e8 the noise-injection arm diverges in round 1 and its run fails; `ablate`
    says which arm and seed, why (the run's failed.txt), what is kept and how to continue,
    and exits 1 without a traceback."""
    from analogai_fl.cli import main

    home = tmp_path / "flwr_home"
    env_home = {"FLWR_HOME": str(home)}
    out = tmp_path / "out"
    run_config = ("training.rounds=1 inference.repeats=1 inference.drift_times='1' "
                  "inference.n_w_sweep='0' ablation.n_w_columns='0' training.lr=1e8")
    argv = ["ablate", "--arms", "noise_injection", "--seeds", "0", "--out", str(out),
            "--run-config", run_config]
    import os
    saved = {k: os.environ.get(k) for k in env_home}
    os.environ.update(env_home)
    try:
        assert main(argv) == 1
    finally:
        stop_local_superlink(home)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    err = capsys.readouterr().err
    assert "arm 'noise_injection' of seed 0 failed" in err and "Traceback" not in err
    assert "diverged" in err and "The 0 finished (arm, seed) row(s)" in err
    assert "another --out" in err and len(err.splitlines()) <= 4
