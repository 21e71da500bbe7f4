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
