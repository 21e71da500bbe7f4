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
from .outputs import atomic_text, atomic_write
from .settings import Protocol


def stock_rpu_config(protocol: Protocol) -> InferenceRPUConfig:
    """`analog.rpu_config(protocol)` on aihwkit's C++ tile (`InferenceRPUConfig`, every
    setting kept), whatever `protocol.tile`: the project's torch tile simulates the C++
    tile's forward (`tiles.CppMatchingTorchMVM`, tested against it), while aihwkit's own
    torch tile has no read noise n_w and, in aihwkit 1.2.0, cannot be pickled as a whole
    module (`TorchInferenceTile.set_scales` installs a local hook)."""
    return rpu_config(replace(protocol, tile="cpp"))


def export_model(model: nn.Module, protocol: Protocol, out: Path, calibration: Dataset,
                 seed: int, described: str, model_name: str, shape: DataShape) -> list[Path]:
    """Write `model` (the configured `model_name` at `shape`) converted for `protocol` to
    `out` (the whole analog module), beside it `<out stem>.state_dict.pt` and `<out
    stem>.txt` (the protocol, `described`: where the weights came from, and two scripts that
    load them, each runnable as written: `howto_scripts`); returns the three paths. Input
    ranges are calibrated on `calibration` with `seed`, as `analog.to_analog` does."""
    analog = convert_every_layer(model, stock_rpu_config(protocol))
    calibrate(analog, protocol, calibration, seed)
    analog = analog.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.stem + ".state_dict.pt")
    text_path = out.with_name(out.stem + ".txt")
    atomic_write(out, lambda tmp: torch.save(analog, tmp))
    atomic_write(state_path, lambda tmp: torch.save(analog.state_dict(), tmp))
    whole, state = howto_scripts(protocol, out, state_path, model_name, shape)
    settings = "\n".join(f"  {k}: {v}" for k, v in protocol.record().items())
    atomic_text(text_path, f"""{described}
converted to aihwkit {_aihwkit_version()} analog layers for protocol '{protocol.name}':
{settings}

1. The whole analog module (its layers' classes come from aihwkit, the model's from this
package: pip install analogai-fl). torch.load with weights_only=False runs the file's pickle:
load only files you made or trust.

{_indented(whole)}

2. The state_dict into an analog model you build with aihwkit. The state_dict holds each
layer's mapping scales, so the target RPU configuration needs this file's mapping: aihwkit
accepts them only with mapping.weight_scaling_omega set as below (with aihwkit's default, 0,
load_state_dict fails with "Unexpected key(s) ... mapping_scales"); the tile sizes decide how
many tiles a layer has, and calibrated input ranges need input_range enabled. Any other
setting (device, noise, converters) may differ:

{_indented(state)}
""")
    return [out, state_path, text_path]


def howto_scripts(protocol: Protocol, out: Path, state_path: Path, model_name: str,
                  shape: DataShape) -> tuple[str, str]:
    """Two Python scripts, each complete and runnable as written in the folder of the files
    (a test runs both): load the whole module, program, drift and run it; build an analog
    model with stock aihwkit and the mapping settings this state_dict needs, and load it."""
    images = f"torch.zeros(2, {shape.in_channels}, {shape.image_size}, {shape.image_size})"
    columnwise = protocol.weight_scaling_columnwise
    whole = f"""import torch

model = torch.load("{out.name}", weights_only=False).eval()
images = {images}  # your images, normalised as in training
model.program_analog_weights()  # programming noise of the protocol's device
model.drift_analog_weights(86400.0)  # conductance drift to t = 1 day, compensated
logits = model(images)
print(logits.shape)"""
    state = f"""import torch
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import InferenceRPUConfig

from analogai_fl.models import DataShape, model_for, split_grouped_convs

rpu_config = InferenceRPUConfig()  # or any other inference configuration, with this mapping:
rpu_config.mapping.weight_scaling_omega = {protocol.weight_scaling_omega!r}
rpu_config.mapping.weight_scaling_columnwise = {columnwise!r}
rpu_config.mapping.learn_out_scaling = {columnwise!r}
rpu_config.mapping.out_scaling_columnwise = {columnwise!r}
rpu_config.mapping.max_input_size = {protocol.max_input_size!r}
rpu_config.mapping.max_output_size = {protocol.max_output_size!r}
rpu_config.pre_post.input_range.enable = {protocol.input_range_images > 0!r}  # the DAC ranges
digital = split_grouped_convs(model_for("{model_name}", DataShape({shape.in_channels}, \
{shape.num_classes}, {shape.image_size})))
analog = convert_to_analog(digital, rpu_config)
analog.load_state_dict(torch.load("{state_path.name}", weights_only=False),
                       load_rpu_config=False)  # True: also this file's whole configuration
print(analog({images}).shape)"""
    return whole, state


def _indented(script: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in script.splitlines())


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
