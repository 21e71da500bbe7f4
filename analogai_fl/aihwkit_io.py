"""Models in and out of aihwkit: `analogai-fl export` and reading an analog state_dict back.

Out: `export_model` converts a trained model to aihwkit's own analog layers (`AnalogLinear`,
`AnalogConv2d`; aihwkit's default conversion, no layer class of this project) with the RPU
configuration of an evaluation protocol, built by `analog.rpu_config` on aihwkit's C++ tile
(`stock_rpu_config`; no tile class of this project) and input ranges calibrated as `infer`
does. It writes the whole analog module (`torch.save(model)`), its `state_dict()` for
aihwkit's `load_state_dict(..., load_rpu_config=...)` route, and a text file saying how to
load both. The exported model's accuracy agrees with `analogai-fl infer` within the
Monte-Carlo spread (its noise comes from other draws), exactly where nothing is drawn (the
`ideal` device without read or output noise, `infer` on the C++ tile).

In: `digital_state` reads the weights of an aihwkit analog model's state_dict back into the
configured digital model with aihwkit's own `convert_to_digital` (which undoes the weight
scaling of the mapping), so `infer` and `model.init` take such a file like a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from aihwkit.nn.conversion import convert_to_digital
from aihwkit.simulator.configs import InferenceRPUConfig
from torch import nn
from torch.utils.data import Dataset

from .analog import calibrate, convert_every_layer, rpu_config
from .errors import ConfigError
from .models import DataShape, merge_grouped_convs, model_for
from .settings import Protocol


def stock_rpu_config(protocol: Protocol) -> InferenceRPUConfig:
    """`analog.rpu_config(protocol)` on aihwkit's C++ tile (`InferenceRPUConfig`, every
    setting kept), whatever `protocol.tile`: the project's torch tile simulates the C++
    tile's forward (`tiles.CppMatchingTorchMVM`, tested against it), while aihwkit's own
    torch tile has no read noise n_w and, in aihwkit 1.2.0, cannot be pickled as a whole
    module (`TorchInferenceTile.set_scales` installs a local hook)."""
    return rpu_config(replace(protocol, tile="cpp"))


def export_model(model: nn.Module, protocol: Protocol, out: Path, calibration: Dataset,
                 seed: int, described: str) -> list[Path]:
    """Write `model` converted for `protocol` to `out` (the whole analog module), beside it
    `<out stem>.state_dict.pt` and `<out stem>.txt` (the protocol, `described`: where the
    weights came from, and the lines that load both); returns the three paths. Input ranges
    are calibrated on `calibration` with `seed`, as `analog.to_analog` does."""
    analog = convert_every_layer(model, stock_rpu_config(protocol))
    calibrate(analog, protocol, calibration, seed)
    analog = analog.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.stem + ".state_dict.pt")
    text_path = out.with_name(out.stem + ".txt")
    torch.save(analog, out)
    torch.save(analog.state_dict(), state_path)
    text_path.write_text(_howto(protocol, out, state_path, described))
    return [out, state_path, text_path]


def _howto(protocol: Protocol, out: Path, state_path: Path, described: str) -> str:
    settings = "\n".join(f"  {k}: {v}" for k, v in protocol.record().items())
    return f"""{described}
converted to aihwkit {_aihwkit_version()} analog layers for protocol '{protocol.name}':
{settings}

The whole analog module (the model's class must be importable: pip install analogai-fl):

    import torch
    model = torch.load("{out.name}", weights_only=False).eval()
    model.program_analog_weights()          # programming noise of the protocol's device
    model.drift_analog_weights(86400.0)     # conductance drift to t = 1 day, compensated
    logits = model(images)                  # images normalised as in training

Or the state_dict into an analog model built with any RPU configuration:

    from aihwkit.nn.conversion import convert_to_analog
    analog = convert_to_analog(digital_model, rpu_config)
    analog.load_state_dict(torch.load("{state_path.name}", weights_only=False),
                           load_rpu_config=False)   # True: this file's configuration
"""


def _aihwkit_version() -> str:
    from importlib.metadata import version

    return version("aihwkit")


def digital_state(state: Mapping[str, Any], model: str, shape: DataShape, source: str
                  ) -> dict[str, torch.Tensor]:
    """The digital state_dict of model `model` at `shape` held by an aihwkit analog model's
    `state`, built with the RPU configuration the file holds (its mapping scales the
    weights) and read back by aihwkit's `convert_to_digital`. ConfigError starting with
    `source` (which names the file) when `state` is not of this architecture."""
    configs = [v["rpu_config"] for k, v in state.items()
               if k.endswith("analog_tile_state") and isinstance(v, Mapping) and "rpu_config" in v]
    with torch.random.fork_rng(devices=[]):
        digital = model_for(model, shape)
    try:  # the file's own configuration: the weights need its mapping (scales) to read back
        analog = convert_every_layer(digital, configs[0] if configs else InferenceRPUConfig())
        analog.load_state_dict(dict(state), load_rpu_config=True)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise ConfigError(f"{source}: an aihwkit analog state_dict, but not of the configured "
                          f"model {model} ({first})") from None
    back = merge_grouped_convs(convert_to_digital(analog))
    return {k: v.detach().clone() for k, v in back.state_dict().items()}
