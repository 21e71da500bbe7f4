"""Device models, tile choice and `analogai-fl infer` on checkpoints of a tiny in-process run."""

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig

from analogai_fl import analog, cli, config, schema, tiles
from analogai_fl.models import build_model
from analogai_fl.outputs import RunFolder
from analogai_fl.settings import Experiment
from analogai_fl.training import accuracy

TIMES = [1.0, 31536000.0]


def protocol(**keys):
    return Experiment.from_config(config.defaults() | keys).evaluation.protocol


# --- device models ---------------------------------------------------------------------------

def test_ideal_device_without_converters_or_noise_is_the_digital_model(trained, digits):
    proto = dataclasses.replace(protocol(**{"inference.platform.aihwkit.device": "ideal"}),
                                dac_bits=0, adc_bits=0, out_noise=0.0)
    result = analog.drift_accuracy(trained, digits.test, proto, TIMES, repeats=2, seed=0)
    clean = accuracy(trained, digits.test)
    assert [e["mean"] for e in result.values()] == [clean, clean]


def test_ideal_device_keeps_the_protocols_forward_noise(trained, digits):
    proto = protocol(**{"inference.platform.aihwkit.device": "ideal",
                        "inference.platform.aihwkit.n_w": 0.3})
    noisy = analog.drift_accuracy(trained, digits.test, proto, [1.0], repeats=1, seed=0)
    assert noisy["1s"]["mean"] < accuracy(trained, digits.test) - 0.02


def test_pcm_drift_costs_more_accuracy_without_drift_compensation(trained, digits):
    def drop(gdc: bool) -> float:
        proto = protocol(**{"inference.protocols.realistic.drift_compensation": gdc})
        r = analog.drift_accuracy(trained, digits.test, proto, TIMES, repeats=2, seed=0)
        return r["1s"]["mean"] - r["1y"]["mean"]

    assert drop(gdc=False) > drop(gdc=True) + 0.05


def test_reram_converts_and_evaluates_at_its_measured_times(trained, digits):
    from aihwkit.inference import ReRamWan2022NoiseModel
    times = list(schema.RERAM_DRIFT_TIMES)  # the only times the installed aihwkit fits
    assert times == sorted(ReRamWan2022NoiseModel(g_max=analog.RERAM_G_MAX).coeff_dic)
    proto = protocol(**{"inference.platform.aihwkit.device": "ReRAM",
                        "inference.drift_times": times, "inference.reram.noise_scale": 2.0})
    assert proto.reram_noise_scale == 2.0
    rpu = analog.rpu_config(proto)
    assert type(rpu.noise_model).__name__ == "ReRamWan2022NoiseModel"
    assert rpu.noise_model.g_max == analog.RERAM_G_MAX and rpu.noise_model.noise_scale == 2.0
    result = analog.drift_accuracy(trained, digits.test, proto, times, repeats=2, seed=0)
    assert list(result) == ["1s", "1d", "2d"]
    assert all(0.5 < e["mean"] <= 1.0 for e in result.values())


def test_reram_refuses_drift_times_it_has_no_data_for():
    with pytest.raises(config.ConfigError, match="inference.drift_times.*ReRAM.*3600"):
        protocol(**{"inference.platform.aihwkit.device": "ReRAM"})  # default times: 1 h, 1 y


def test_the_three_devices_program_different_weights(trained):
    programmed = {}
    for device in schema.DEVICES:
        times = {"inference.drift_times": [1.0]} if device == "ReRAM" else {}
        proto = protocol(**{"inference.platform.aihwkit.device": device, **times})
        torch.manual_seed(0)
        model = analog.to_analog(trained, proto)
        model.program_analog_weights()
        model.drift_analog_weights(1.0)
        tile = next(model.analog_tiles())
        programmed[device] = tile.tile.get_weights().clone()
    reference = next(analog.to_analog(trained, protocol()).analog_tiles()).tile.get_weights()
    assert torch.allclose(programmed["ideal"], reference, atol=1e-6)
    for device in ("PCM", "ReRAM"):
        assert not torch.allclose(programmed[device], reference, atol=1e-3)
    assert not torch.allclose(programmed["PCM"], programmed["ReRAM"], atol=1e-3)


# --- tiles -----------------------------------------------------------------------------------

def test_tile_key_picks_the_rpu_config_class_and_both_evaluate(trained, digits):
    configs = {t: analog.rpu_config(protocol(**{"inference.tile": t})) for t in ("cpp", "torch")}
    assert type(configs["cpp"]) is InferenceRPUConfig
    assert isinstance(configs["torch"], TorchInferenceRPUConfig)
    assert configs["torch"].simulator_tile_class is tiles.CppMatchingTorchTile
    for tile, rpu in configs.items():
        assert rpu.forward.w_noise == 0.0
        proto = protocol(**{"inference.tile": tile, "inference.platform.aihwkit.n_w": 0.05})
        model = analog.to_analog(trained, proto)
        assert type(next(model.analog_tiles()).rpu_config) is type(rpu)
        r = analog.drift_accuracy(trained, digits.test, proto, [1.0], repeats=1, seed=0)
        assert r["1s"]["mean"] > 0.7, tile


def test_aihwkits_own_torch_tile_refuses_n_w_which_ours_simulates():
    from aihwkit.exceptions import ConfigError
    from aihwkit.simulator.tiles.torch_tile import TorchSimulatorTile

    rpu = analog.rpu_config(protocol(**{"inference.platform.aihwkit.n_w": 0.1}))
    with pytest.raises(ConfigError, match="w_noise"):
        TorchSimulatorTile(4, 2, rpu)
    tiles.CppMatchingTorchTile(4, 2, rpu)


@pytest.mark.parametrize("one_pass", [False, True])
def test_n_w_sweep_uses_the_same_device_draws_for_every_n_w(trained, digits, monkeypatch,
                                                            one_pass):
    seen = []  # the first tile's drifted weights at each evaluation (or state taken)
    if one_pass:
        take = analog.tile_state

        def spy(model):
            seen.append(next(model.analog_tiles()).tile.get_weights().clone())
            return take(model)

        monkeypatch.setattr(analog, "tile_state", spy)
    else:
        evaluate = analog.analog_accuracy

        def spy(model, data, batch_size):
            seen.append(next(model.analog_tiles()).tile.get_weights().clone())
            return evaluate(model, data, batch_size)

        monkeypatch.setattr(analog, "analog_accuracy", spy)
    sweep = analog.n_w_sweep(trained, digits.test, protocol(), [0.0, 0.3], [1.0, 3600.0],
                             repeats=2, seed=0, one_pass=one_pass)
    per_n_w = len(seen) // 2
    assert per_n_w == 4
    assert all(torch.equal(a, b) for a, b in zip(seen[:per_n_w], seen[per_n_w:]))
    assert not torch.equal(seen[0], seen[2])  # repeats differ, each its own programming
    assert sweep[0.3]["1s"]["mean"] < sweep[0.0]["1s"]["mean"]
    assert sweep[0.0] == analog.drift_accuracy(trained, digits.test, protocol(), [1.0, 3600.0],
                                             2, 0, one_pass=one_pass)


# --- --run-config parsing --------------------------------------------------------------------

def test_run_config_string_is_parsed_like_flwr_run():
    parsed = config.parse_run_config("inference.repeats=5 inference.drift_times='1,86400' "
                                     "inference.platform.aihwkit.device=\"ReRAM\" "
                                     "inference.protocols.realistic.drift_compensation=false")
    assert parsed == {"inference.repeats": 5, "inference.drift_times": "1,86400",
                      "inference.platform.aihwkit.device": "ReRAM",
                      "inference.protocols.realistic.drift_compensation": False}
    assert config.parse_run_config("") == {}
    for bad in ("inference.repeats", "inference.repeats=", "x=[1,"):
        with pytest.raises(config.ConfigError, match="--run-config"):
            config.parse_run_config(bad)


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
