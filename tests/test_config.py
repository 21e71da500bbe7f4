import re
import tomllib
from pathlib import Path

import pytest
import torch

from analogai_fl import config, generate, schema
from analogai_fl.analog import rpu_config
from analogai_fl.config import resolve
from analogai_fl.errors import ConfigError
from analogai_fl.models import MODELS
from analogai_fl.settings import Experiment
from strategies import build_strategy


def exp(cfg) -> Experiment:
    return Experiment.from_config(cfg)


ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_exactly_the_schema_keys():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == config.declared_run_config_keys()
    assert declared.pop(schema.CONF_KEY) == schema.DEFAULT_CONF
    assert set(declared.values()) == {schema.UNSET}  # anything else would shadow the conf file


def test_default_conf_file_lists_every_key_with_its_default():
    assert config.load_yaml(ROOT / schema.DEFAULT_CONF) == config.defaults()


@pytest.mark.parametrize("path", sorted(generate.generated_files(), key=str), ids=str)
def test_generated_key_lists_are_up_to_date(path):
    assert path.read_text() == generate.generated_files()[path], (
        f"{path.name} is stale: run `python -m analogai_fl.generate --write`")


def test_model_choices_match_the_model_registry():
    assert set(schema.SCHEMA["model.name"].choices) == set(MODELS)


def test_precedence_defaults_then_conf_file_then_command_line(tmp_path):
    conf = tmp_path / "exp.yaml"
    conf.write_text("training:\n  rounds: 7\n  lr: 0.01\n")
    cfg = resolve({"conf": str(conf), "training.rounds": 3, "training.batch_size": ""})
    assert cfg["training.rounds"] == 3          # command line beats the file
    assert cfg["training.lr"] == 0.01           # file beats the default
    assert cfg["training.batch_size"] == 64     # "" = not given: default
    assert exp(cfg).output.name == "exp"  # a run folder is named after its conf file


def test_default_conf_is_used_when_none_is_named():
    assert resolve({"conf": ""})["conf"].endswith("conf/default.yaml")


def sigma(k):
    return f"recovery.noise_{k}.act_inject.sigma"


# Each seed key, set away from its default, must change what the code that uses it sees.
SEED_KEYS = {
    "training.batch_size": (16, lambda c: exp(c).training.batch_size == 16),
    "training.use_fl": (False, lambda c: build_strategy(exp(c)).fusion is False),
    "training.use_neg": (False, lambda c: exp(c).training.feedback is None
                         and build_strategy(exp(c)).proximal_mu == 0.0),
    sigma(0): (0.05, lambda c: build_strategy(exp(c)).noise_levels[0] == 0.05),
    sigma(4): (0.5, lambda c: build_strategy(exp(c)).noise_levels[4] == 0.5),
    "inference.platform.aihwkit": (False, lambda c: c["inference.platform.aihwkit.use"] is False),
    "inference.platform.aihwkit.device": (
        "PCM", lambda c: exp(c).evaluation.protocol.device == "PCM"),
    "inference.platform.aihwkit.n_w": (
        0.2, lambda c: rpu_config(exp(c).evaluation.protocol).forward.w_noise == 0.2),
}


@pytest.mark.parametrize("key", sorted(SEED_KEYS))
def test_seed_key_reaches_its_target(key):
    value, reached = SEED_KEYS[key]
    assert reached(resolve({key: value}))


def test_feedback_and_proximal_settings_are_keys():
    cfg = resolve({"training.feedback.offsets": "0.1,0.2", "training.feedback.weights": "1,0.5",
                   "training.feedback.beta": 0.01, "training.feedback.temperature": 2.0,
                   "training.proximal_mu": 0.3})
    fb = exp(cfg).training.feedback
    assert (list(fb.offsets), list(fb.weights), fb.beta, fb.temperature) == (
        [0.1, 0.2], [1.0, 0.5], 0.01, 2.0)
    assert build_strategy(exp(cfg)).proximal_mu == 0.3


def test_fewer_noise_levels():
    cfg = resolve({"training.client_num_in_total": 3})
    assert exp(cfg).noise_levels == (0.10, 0.15, 0.20)


@pytest.mark.parametrize("run_config,key,expected", [
    ({"training.roundz": 3}, "training.roundz", "did you mean 'training.rounds'"),
    ({"training.rounds": "ten"}, "training.rounds", "an integer"),
    ({"training.rounds": 0}, "training.rounds", ">= 1"),
    ({"training.rounds": True}, "training.rounds", "an integer"),
    ({"training.use_fl": 1}, "training.use_fl", "true or false"),
    ({sigma(1): -0.1}, sigma(1), ">= 0"),
    ({"training.lr": 0.0}, "training.lr", "> 0"),
    ({"training.optimizer": "rmsprop"}, "training.optimizer", "'adam', 'sgd'"),
    ({"inference.platform.aihwkit.device": "FeFET"}, "inference.platform.aihwkit.device",
     "one of 'PCM'"),
    ({"inference.drift_times": "1,soon"}, "inference.drift_times", "a list of numbers"),
    # values the consumers cannot use (ZeroDivisionError, NaN, divergence) are refused
    ({"inference.protocols.realistic.adc_bits": 1}, "inference.protocols.realistic.adc_bits",
     "not 1 (0 = ideal; else at least 2"),
    ({"inference.protocols.realistic.dac_bits": 1}, "inference.protocols.realistic.dac_bits",
     "not 1"),
    ({"inference.protocols.seed.dac_bits": 1}, "inference.protocols.seed.dac_bits", "not 1"),
    ({"inference.protocols.seed.adc_bits": 1}, "inference.protocols.seed.adc_bits", "not 1"),
    ({"ablation.hwa.dac_bits": 1}, "ablation.hwa.dac_bits", "not 1"),
    ({"ablation.hwa.adc_bits": 1}, "ablation.hwa.adc_bits", "not 1"),
    ({"recovery.qat.act_bits": 1}, "recovery.qat.act_bits", "not 1"),
    ({"strategy.beta_1": 1.0}, "strategy.beta_1", "< 1"),
    ({"strategy.beta_2": 1.5}, "strategy.beta_2", "< 1"),
    ({"strategy.server_momentum": 1.0}, "strategy.server_momentum", "< 1"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"seed": 2**32}, "seed", "< 4.29497e+09"),
    ({"data.val_fraction": 1.0}, "data.val_fraction", "< 1"),
    ({"inference.drift_times": "1,-5"}, "inference.drift_times", ">= 0"),
    ({"training.feedback.weights": "1,nan,0.01"}, "training.feedback.weights", "a list"),
    ({"training.feedback.offsets": "inf,0.1,0.15"}, "training.feedback.offsets", "a list"),
])
def test_bad_values_name_the_key_and_the_expectation(run_config, key, expected):
    with pytest.raises(ConfigError) as err:
        resolve(run_config)
    assert key in str(err.value) and expected in str(err.value)


def test_bad_conf_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml' not found"):
        resolve({"conf": "missing.yaml"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'training.epochs'"):
        resolve({"conf": str(bad)})
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve({"conf": str(bad)})


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


PRESETS = sorted(p for p in (ROOT / "conf").glob("*.yaml") if p.name != "default.yaml")


def test_presets_mirror_the_seed_experiments():
    names = {p.stem for p in PRESETS}
    for stem in ("resnet18_cifar10_client_5_noise_0.1_0.3", "vgg8_cifar10_client_5_noise_0.1_0.3",
                 "vgg8_cifar10_client_3_noise_0.05_0.15", "lenet_mnist_client_5_noise_0.1_0.3",
                 "mlp_mnist_client_5_noise_0.1_0.3"):
        assert {f"{stem}_{fi}_{fl}" for fi in "TF" for fl in "TF"} <= names
    assert {"resnet18_cifar10_client_5_noise_0.1_0.3_T_T_sam",
            "lenet_mnist_client_5_noise_0.1_0.3_T_T_fgsm",
            "lenet_mnist_client_5_noise_0.1_0.3_T_T_pgd"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_validates_and_says_what_its_name_says(path):
    from analogai_fl.data import TORCHVISION_SETS

    cfg = resolve({"conf": str(path)})
    arch, data, _, k, _, low, high, fi, fl, *option = path.stem.split("_")
    assert (cfg["model.name"], cfg["data.name"]) == (arch, data)
    sigmas = exp(cfg).noise_levels
    assert len(sigmas) == int(k) and (min(sigmas), max(sigmas)) == (float(low), float(high))
    assert (cfg["training.use_fl"], cfg["training.use_neg"]) == (fi == "T", fl == "T")
    option_keys = {"sam": "recovery.optimizer.sam", "asam": "recovery.optimizer.adaptive",
                   "fgsm": "recovery.adversarial.FGSM.use",
                   "pgd": "recovery.adversarial.PGD.use"}
    budget = [o for o in option if o == "cpu"]  # sized for a 2-core CPU: a fixed subset
    if budget:
        assert cfg["data.max_train_examples"] > 0 and cfg["inference.every"] > 1
    if "recipe" in option:  # the pre-registered experiment on HWA's recipe: its analysis
        assert cfg["ablation.primary_contrasts"] and cfg["ablation.primary_endpoints"]
        assert cfg["ablation.pretrained"]
    option = [o for o in option if o not in ("cpu", "recipe")]
    assert [k for k in option_keys.values() if cfg[k]] == [option_keys[o] for o in option]
    spec = TORCHVISION_SETS[data]
    model = MODELS[arch](spec.channels, spec.num_classes, cfg["data.image_size"]).eval()
    assert model(torch.zeros(2, spec.channels, 32, 32)).shape == (2, spec.num_classes)


@pytest.mark.parametrize("flags", [
    ["training.rounds=2", "inference.repeats=1"],
    ["training.rounds=2 seed=3", "seed=4"],
    ["seed=1"],
])
def test_repeated_run_config_flags_merge_as_flowers_own_merge(flags):
    from flwr.common.config import parse_config_args

    assert config.parse_run_config(flags) == parse_config_args(flags)


def test_every_commands_run_config_flag_collects_repeats_for_the_same_merge():
    """The flag that every command and benchmark adds (`add_run_config_argument`) keeps each
    repeat, so `parse_run_config` sees all of them: the merge tested above, not argparse's
    last-one-wins."""
    import argparse

    parser = argparse.ArgumentParser()
    config.add_run_config_argument(parser)
    given = ["seed=3 training.rounds=2", "data.name='mnist'"]
    args = parser.parse_args([a for flag in given for a in ("--run-config", flag)])
    assert args.run_config == given
    assert config.parse_run_config(args.run_config) == {
        "seed": 3, "training.rounds": 2, "data.name": "mnist"}
    assert parser.parse_args([]).run_config == []  # no overrides


def test_a_flag_that_flower_would_drop_silently_is_refused():
    from flwr.common.config import parse_config_args

    flags = ["training.rounds=2", "training.lr=0.1"]
    assert parse_config_args(flags) == {"training.lr": 0.1}  # Flower: rounds gone, no word
    with pytest.raises(ConfigError, match=r"given 2 times.*training.rounds would be dropped"):
        config.parse_run_config(flags)


def test_flags_flower_would_drop_are_kept_when_given_in_one_run_config_as_advised():
    """The refusal says to give the keys in one --run-config; doing so keeps every key."""
    flags = ["training.rounds=2", "training.lr=0.1"]
    with pytest.raises(ConfigError, match="give them in one --run-config"):
        config.parse_run_config(flags)
    merged = config.parse_run_config([" ".join(flags)])  # the advice, followed
    assert merged == {"training.rounds": 2, "training.lr": 0.1}
    assert (exp(resolve(merged)).rounds, exp(resolve(merged)).training.lr) == (2, 0.1)


def test_a_conf_file_not_found_is_found_by_the_path_the_message_asks_for(tmp_path, monkeypatch):
    """A conf file named relative to neither the project nor the working folder is not found;
    an absolute path, or one relative to the project, as the message says, finds it."""
    import os

    conf = tmp_path / "confs" / "exp.yaml"
    conf.parent.mkdir()
    conf.write_text("training:\n  rounds: 7\n")
    monkeypatch.chdir(tmp_path)  # "exp.yaml" is in neither the project nor tmp_path
    with pytest.raises(ConfigError, match="'exp.yaml' not found .*pass a path relative to "
                                          "the project or an absolute one"):
        resolve({"conf": "exp.yaml"})
    for given in (str(conf), os.path.relpath(conf, config.PROJECT_DIR)):  # the advice
        assert resolve({"conf": given})["training.rounds"] == 7, given


@pytest.mark.parametrize("text, expected", [
    ("training:\n  rounds: 2\ntraining:\n  lr: 0.1\n",
     "key 'training' is given twice, on lines 1 and 3"),
    ("training:\n  rounds: 2\n  lr: 0.1\n  rounds: 3\n",
     "key 'training.rounds' is given twice, on lines 2 and 4"),
    ("training:\n  rounds: 2\ntraining.rounds: 3\n",
     "key 'training.rounds' is set twice, on lines 2 and 3"),
    ("recovery:\n  qat: true\n  qat.use: false\n",
     "key 'recovery.qat.use' is set twice, on lines 2 and 3"),
])
def test_a_key_given_twice_in_a_conf_file_is_refused_naming_both_lines(tmp_path, capsys, text,
                                                                        expected):
    """PyYAML keeps the last of repeated keys (a repeated section drops a whole table), and
    flattening would keep one of two spellings of a setting: both are refused, by every
    reader of conf files (`check`, the ServerApp through `config.resolve`)."""
    from analogai_fl import cli

    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=re.escape(expected)):
        resolve({"conf": str(path)})
    assert cli.main(["check", "--conf", str(path)]) == 2
    assert expected in " ".join(capsys.readouterr().err.split())
