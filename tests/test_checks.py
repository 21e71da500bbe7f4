"""Every check a configuration needs runs before any work, in every command, with one
message: `analogai-fl check`, `infer`, `ablate` and the ServerApp share `checks` and
`config.resolve`."""

from __future__ import annotations

import time

import pytest
from helpers import experiment, run_cli

from analogai_fl import checks, config, schema
from analogai_fl.data import load_data
from analogai_fl.errors import ConfigError
from analogai_fl.settings import load


@pytest.mark.parametrize("run_config,message", [
    ("training.no_such_key=1", "unknown key 'training.no_such_key' (did you mean "
     "'training.noise_scale_c'?)"),
    ("inference.protocols.realistic.adc_bits=1", "'inference.protocols.realistic.adc_bits' "
     "expects an integer >= 0, not 1"),
    ("strategy.name='fedadam' training.use_fl=false", "FI off runs only with strategy.name=msnat"),
    ("federation.inject_failure='1:7'", "'federation.inject_failure' expects 'ROUND:LEVEL'"),
    ("inference.platform.aihwkit.device='ReRAM'", "with device ReRAM"),
    ("model.name='lenet' data.image_size=8", "'model.name'='lenet' and 'data.image_size'=8 do "
     "not fit together: lenet needs images of at least 16x16"),
    ("model.name='vgg8' data.image_size=8 training.batch_size=1", "'training.batch_size' "
     "expects at least 2 with model 'vgg8'"),
    ("model.name='vgg8' data.image_size=8 ablation.hwa.batch_size=1", "'ablation.hwa.batch_size'"),
    ("model.name='resnet18' data.image_size=8 data.partition='iid' data.max_train_examples=9",
     "leaves client 4: 1 training example(s); model 'resnet18' needs at least 2"),
])
def test_check_refuses_in_one_line_with_exit_code_2(capsys, run_config, message):
    code, out, err = run_cli(capsys, "check", "--run-config", run_config)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_model_without_batchnorm_trains_on_one_example_per_client():
    tiny = {"data.partition": "iid", "data.max_train_examples": 5}
    data = load_data(experiment(**tiny).data)
    checks.check_client_shares(experiment(**tiny), data)  # lenet: one example each is enough
    with pytest.raises(ConfigError, match="needs at least 2 per client"):
        checks.check_client_shares(experiment(**tiny, **{"model.name": "vgg8"}), data)



@pytest.mark.parametrize("key,value", [("data.max_train_examples", "10"),
                                       ("training.client_num_in_total", "4"),
                                       ("data.partition", "'full'")])
def test_a_client_share_too_small_for_batchnorm_passes_after_the_advised_change(capsys, key,
                                                                                value):
    """ResNet-18 on nine examples over five iid clients leaves one client a single example;
    each change the message names (more data, fewer clients, the full partition) passes
    `check`."""
    short = {"model.name": "'resnet18'", "data.image_size": "8", "data.partition": "'iid'",
             "data.max_train_examples": "9"}

    def check(keys):
        return run_cli(capsys, "check", "--run-config",
                       " ".join(f"{k}={v}" for k, v in keys.items()))

    code, _, err = check(short)
    assert code == 2 and err.strip().endswith("use more data, fewer clients or "
                                              "data.partition='full'")
    code, out, err = check(short | {key: value})  # the advice, followed
    assert code == 0 and out.startswith("OK") and err == ""


@pytest.mark.parametrize("run_config", [
    "inference.protocols.realistic.adc_bits=1",
    "inference.platform.aihwkit.device='ReRAM' training.rounds=1",
    "model.name='resnet18' data.image_size=8 training.batch_size=1",
])
def test_ablate_refuses_before_training(capsys, tmp_path, run_config):
    """The same one-line error as `check`, at once: no flwr run is started, no HWA trains."""
    started = time.time()
    code, _, err = run_cli(capsys, "ablate", "--arms", "vanilla,hwa", "--out",
                           str(tmp_path / "out"), "--run-config", run_config)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert time.time() - started < 30 and not (tmp_path / "out").exists()
    _, _, expected = run_cli(capsys, "check", "--run-config", run_config)
    assert err.split("error: ", 1)[1] == expected.split("error: ", 1)[1]


def test_infer_refuses_before_evaluating(capsys, tmp_path, trained):
    import torch
    (tmp_path / "checkpoints").mkdir()
    torch.save(trained.state_dict(), tmp_path / "checkpoints" / "round_0001.pt")
    (tmp_path / "config.yaml").write_text(config.dump_yaml(config.defaults()))
    code, _, err = run_cli(capsys, "infer", str(tmp_path / "checkpoints" / "round_0001.pt"),
                           "--run-config", "inference.protocols.seed.dac_bits=1")
    assert code == 2 and "'inference.protocols.seed.dac_bits'" in err
    assert not (tmp_path / "infer").exists()


def test_every_preset_passes_every_check():
    """What the project ships must pass its own checks (model/size, BatchNorm batches)."""
    for path in sorted(config.PROJECT_DIR.glob("conf/*.yaml")):
        checks.check_experiment(load({schema.CONF_KEY: str(path)}))


def test_checks_leave_the_callers_rng_alone():
    import torch
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    checks.check_experiment(experiment(**{"model.name": "vgg8"}))
    assert torch.equal(torch.rand(3), expected)


def test_a_config_error_is_raised_for_an_impossible_image_size():
    with pytest.raises(ConfigError, match="'model.name'='vgg8' and 'data.image_size'=4 do not fit"):
        checks.model_facts(experiment(**{"model.name": "vgg8", "data.image_size": 4}))


def test_a_bad_model_init_is_refused_in_one_line_naming_the_file(capsys, tmp_path):
    import torch

    from analogai_fl.models import build_model

    missing = tmp_path / "nope.pt"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"no checkpoint")
    other = tmp_path / "mlp.pt"
    torch.save(build_model("mlp", 1, 10, 32).state_dict(), other)
    good = tmp_path / "lenet.pt"
    torch.save(build_model("lenet", 1, 10, 32).state_dict(), good)
    for path, message in ((missing, "does not exist"), (garbage, "is not a checkpoint"),
                          (other, "does not match the configured model 'lenet'")):
        code, out, err = run_cli(capsys, "check", "--run-config", f"model.init='{path}'")
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "key 'model.init'" in err and str(path) in err and message in err
    _, _, err = run_cli(capsys, "check", "--run-config", f"model.init='{other}'")
    assert "missing: 0.weight" in err  # the first keys that differ
    code, out, _ = run_cli(capsys, "check", "--run-config", f"model.init='{good}'")
    assert code == 0 and out.startswith("OK")
