"""Reading torch files someone else made (`analogai_fl/safe_load.py`): a crafted file that
would run code through an allow-listed callable is refused before anything in it is called,
by every reader of checkpoints and analog state_dicts, and real analog state_dicts still
load."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from aihwkit.inference.converter.wpo import loss_fxn
from helpers import experiment
from torch import nn

from analogai_fl import cli, hwa, safe_load
from analogai_fl.analog import convert_every_layer, rpu_config
from analogai_fl.checks import check_experiment
from analogai_fl.errors import ConfigError
from analogai_fl.outputs import read_checkpoint
from analogai_fl.schema import DEFAULT_CONF, PROTOCOLS


class _CreateFile:
    """Unpickled by plain `pickle.loads`, it creates the file `marker` (a benign payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class _CallLossFxn:
    """Pickled as a REDUCE of aihwkit's `wpo.loss_fxn`, whose first line is
    `pickle.loads(args[0])` (pytorch/pytorch#189445's situation)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self):
        return loss_fxn, (torch.zeros(1), self.payload)


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """A checkpoint whose one tensor is a call of `loss_fxn` with a pickled payload that
    would create `marker`; (file, marker)."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "crafted.pt"
    torch.save({"conv1.weight": _CallLossFxn(pickle.dumps(_CreateFile(marker)))}, path)
    assert "aihwkit.inference.converter.wpo.loss_fxn" in \
        torch.serialization.get_unsafe_globals_in_checkpoint(path)
    return path, marker


def test_a_function_is_never_accepted_and_only_the_classes_of_an_analog_state_dict_are():
    accepted = safe_load.accepted_global
    assert accepted("aihwkit.inference.converter.wpo.loss_fxn") is None
    assert accepted("aihwkit.inference.converter.wpo.pickle") is None  # a module it imports
    assert accepted("aihwkit.simulator.tiles.module.Module") is None  # torch's, re-exported
    assert accepted("aihwkit.optim.analog_optimizer.AnalogSGD") is None  # outside the roots
    assert accepted("os.system") is None and accepted("builtins.eval") is None
    assert accepted("aihwkit.simulator.configs.configs.NoSuchConfig") is None
    from aihwkit.simulator.configs import InferenceRPUConfig, WeightClipType
    from aihwkit.simulator.tiles.inference import InferenceTile
    assert accepted("aihwkit.simulator.configs.configs.InferenceRPUConfig") is InferenceRPUConfig
    assert accepted("aihwkit.simulator.parameters.enums.WeightClipType") is WeightClipType
    assert accepted("aihwkit.simulator.tiles.inference.InferenceTile") is InferenceTile


@pytest.mark.parametrize("reader", ["load", "read_checkpoint", "model.init", "hwa checkpoint"])
def test_a_crafted_file_is_refused_by_every_reader_before_its_payload_runs(crafted, reader):
    path, marker = crafted
    read = {"load": lambda: safe_load.load(path),
            "read_checkpoint": lambda: read_checkpoint(path),
            "model.init": lambda: check_experiment(experiment(**{"model.init": str(path)})),
            "hwa checkpoint": lambda: hwa._read(path, epochs=3)}[reader]
    with pytest.raises(ConfigError) as caught:
        read()
    message = str(caught.value)
    assert str(path) in message
    assert "aihwkit.inference.converter.wpo.loss_fxn" in message and "refused" in message
    assert not marker.exists()


@pytest.mark.parametrize("command", ["infer", "export", "check"])
def test_every_command_refuses_a_crafted_file_in_one_line_and_nothing_runs(
        crafted, command, tmp_path, capsys):
    path, marker = crafted
    argv = {"infer": ["infer", str(path), "--conf", DEFAULT_CONF, "--no-sweep",
                      "--out", str(tmp_path / "infer")],
            "export": ["export", str(path), "--conf", DEFAULT_CONF,
                       "--out", str(tmp_path / "export.pt")],
            "check": ["check", "--run-config", f"model.init='{path}'"]}[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wpo.loss_fxn" in err and str(path) in err
    assert not marker.exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_analog_state_dict_of_every_protocol_loads(protocol, tmp_path):
    """Each protocol's RPU configuration on the C++ tile, and on the project's torch tile
    where the protocol allows it: every global the file names is accepted."""
    chosen = experiment().evaluation.protocols[protocol]
    tiles = ["cpp"] if chosen.w_noise_type == "pcm_read" else ["cpp", "torch"]
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    for tile in tiles:
        analog = convert_every_layer(model, rpu_config(dataclasses.replace(chosen, tile=tile)))
        path = tmp_path / f"{protocol}-{tile}.pt"
        torch.save(analog.state_dict(), path)
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path)  # aihwkit's classes
        state = safe_load.load(path)
        assert set(state) == set(analog.state_dict())
