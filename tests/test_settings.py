"""`settings.load`: a run config becomes typed settings, and the rules that involve more than
one key refuse a bad combination naming the keys, before any work."""

from __future__ import annotations

import pytest

from analogai_fl import config, schema
from analogai_fl.errors import ConfigError
from analogai_fl.settings import Experiment, load


def sigma(k):
    return f"recovery.noise_{k}.act_inject.sigma"


@pytest.mark.parametrize("run_config,key,expected", [
    ({"training.client_num_in_total": 3, sigma(4): 0.3}, sigma(4), "client_num_in_total is 3"),
    ({"training.client_num_in_total": 6}, sigma(5), "is not set"),
    ({"training.client_num_in_total": 11}, "training.client_num_in_total", "at most 10"),
    ({"training.feedback.offsets": "0.1"}, "training.feedback.weights", "same length"),
    ({"inference.drift_times": "1,1"}, "inference.drift_times", "distinct"),
    ({"inference.platform.aihwkit.device": "ReRAM"}, "inference.drift_times",
     "with device ReRAM"),
    ({"ablation.n_w_columns": "0.1,0.33"}, "ablation.n_w_columns", "does not measure"),
])
def test_cross_key_rules_name_the_keys(run_config, key, expected):
    config.resolve(run_config)  # each value is fine on its own ...
    with pytest.raises(ConfigError) as err:
        load(run_config)  # ... the settings refuse the combination
    assert key in str(err.value) and expected in str(err.value)


def test_load_is_resolve_then_the_typed_settings():
    run_config = {schema.CONF_KEY: schema.DEFAULT_CONF, "training.rounds": 3, "seed": 7,
                  "training.batch_size": schema.UNSET}
    exp = load(run_config)
    assert exp.config == config.resolve(run_config)
    assert (exp.rounds, exp.seed, exp.training.batch_size) == (3, 7, 64)
    assert exp == Experiment.from_config(config.resolve(run_config))


def test_a_spare_sigma_in_a_conf_file_is_allowed_but_not_on_the_command_line(tmp_path):
    conf = tmp_path / "spare.yaml"
    conf.write_text("training:\n  client_num_in_total: 3\nrecovery:\n  noise_4:\n"
                    "    act_inject:\n      sigma: 0.3\n")
    assert load({schema.CONF_KEY: str(conf)}).noise_levels == (0.1, 0.15, 0.2)
    with pytest.raises(ConfigError, match="noise_4.*client_num_in_total is 3"):
        load({schema.CONF_KEY: str(conf), sigma(4): 0.3})


def test_analog_training_defaults_are_the_realistic_protocols_forward():
    keys = schema.SCHEMA
    for mine, theirs in (("out_noise", "out_noise"), ("dac_bits", "dac_bits"),
                         ("adc_bits", "adc_bits"),
                         ("weight_scaling_columnwise", "weight_scaling_columnwise")):
        assert (keys[f"training.analog.{mine}"].default
                == keys[f"inference.protocols.realistic.{theirs}"].default), mine
    assert load({}).training.chip is None  # weight noise stays the default


def test_sigma_scales_the_modifier_and_the_output_noise_only_when_asked():
    exp = load({"training.noise_model": "analog"})
    settings = [exp.local_training(k, 0.0) for k in range(exp.clients)]
    assert [s.sigma for s in settings] == list(exp.noise_levels)  # the modifier's std
    assert {s.chip.out_noise for s in settings} == {0.04}
    scaled = load({"training.noise_model": "analog", "training.analog.out_noise_scales": True})
    mean = sum(scaled.noise_levels) / scaled.clients
    assert [scaled.local_training(k, 0.0).chip.out_noise for k in range(5)] == pytest.approx(
        [0.04 * s / mean for s in scaled.noise_levels])
    assert scaled.training.clip_sigma == 0.0
    assert load({"training.noise_model": "analog", "training.analog.clip_sigma": 2.0}
                ).training.clip_sigma == 2.0
    # the clip works with every noise model (the key before 0.5 is an alias)
    assert load({"training.clip_sigma": 2.0}).training.clip_sigma == 2.0


def test_model_init_is_a_path_with_the_home_folder_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load({}).model_init is None
    assert load({"model.init": "~/start.pt"}).model_init == tmp_path / "start.pt"


def test_noise_level_sigmas_that_do_not_fit_the_clients_load_after_the_advised_change():
    """Six clients without a sixth sigma: setting it, as the message says, loads. A fifth
    sigma given for three clients: raising the clients to five, or removing the key, loads."""
    with pytest.raises(ConfigError, match=r"set a sigma for each of noise_0 .. noise_5$"):
        load({"training.client_num_in_total": 6})
    assert load({"training.client_num_in_total": 6, sigma(5): 0.35}).noise_levels == (
        0.1, 0.15, 0.2, 0.25, 0.3, 0.35)
    spare = {"training.client_num_in_total": 3, sigma(4): 0.4}
    with pytest.raises(ConfigError, match="raise client_num_in_total or remove the key$"):
        load(spare)
    assert load(spare | {"training.client_num_in_total": 5}).noise_levels[4] == 0.4
    del spare[sigma(4)]
    assert load(spare).noise_levels == (0.1, 0.15, 0.2)


@pytest.mark.parametrize("off", ["FGSM", "PGD"])
def test_two_attacks_load_after_choosing_one(off):
    both = {"recovery.adversarial.FGSM.use": True, "recovery.adversarial.PGD.use": True}
    with pytest.raises(ConfigError, match="both true: choose one attack"):
        load(both)
    kept = "PGD" if off == "FGSM" else "FGSM"
    exp = load(both | {f"recovery.adversarial.{off}.use": False})
    assert exp.local_training(0, 0.0).attack.name == kept


@pytest.mark.parametrize("run_config,protocol,it", [
    ({"inference.tile": "torch", "inference.protocols.realistic.ir_drop": 0.5}, "realistic",
     "inference.tile"),
    ({"inference.tile": "torch", "inference.protocols.realistic.ir_drop": 0.5}, "realistic",
     "inference.protocols.realistic.tile"),
    ({"inference.protocols.seed.tile": "torch",
      "inference.protocols.seed.w_noise_type": "pcm_read"}, "seed",
     "inference.protocols.seed.tile"),
])
def test_a_protocol_that_needs_the_cpp_tile_passes_the_checks_with_it_set_to_cpp(
        run_config, protocol, it):
    """IR drop and PCM read noise need aihwkit's C++ tile; setting the key the message names
    (or inference.tile, which it also names) to cpp, as it says, passes every check."""
    from analogai_fl.checks import check_experiment

    with pytest.raises(ConfigError, match=rf"key 'inference.protocols.{protocol}.tile' \(or "
                                          r"inference.tile\) is torch, .* set it to cpp$"):
        load(run_config)
    exp = load(run_config | {it: "cpp"})  # the advice, followed
    check_experiment(exp)
    assert exp.evaluation.protocols[protocol].tile == "cpp"
