"""Reading a torch file that someone else may have made, without letting it run code.

Every file the product reads with torch goes through `load`: a run's checkpoints (resume),
`model.init`, the ablation's start and saved models, HWA's epoch checkpoints, `infer`,
`export`. It is `torch.load(path, map_location="cpu", weights_only=True)`; a file that
names globals outside torch's own weights-only set is loaded only when every one of them is
a class an aihwkit analog state_dict holds (`accepted_global`):

- a dataclass or an enum defined in `aihwkit.simulator` (the RPU configuration and its
  parameter dataclasses: `InferenceRPUConfig`, `IOParameters`, `MappingParameter`, ...;
  its enums: `WeightNoiseType`, `WeightClipType`, ...; the device dataclasses);
- a tile class (a subclass of aihwkit's `TileModuleBase` or `SimulatorTile`:
  `InferenceTile`, `TorchInferenceTile`, `TileModuleArray`, this project's
  `tiles.CppMatchingTorchTile`) and this project's `tiles.TorchTileRPUConfig`;
- a noise model, drift compensation or conductance converter of `aihwkit.inference`
  (subclasses of `BaseNoiseModel`, `BaseDriftCompensation`, `BaseConductanceConverter`:
  `PCMLikeNoiseModel`, `GlobalDriftCompensation`, `SinglePairConductanceConverter`, ...).

Never a function: weights-only loading lets a file call any global it is allowed with
arguments of its choosing (pytorch/pytorch#189445), and aihwkit has functions that unpickle
their argument (`aihwkit.inference.converter.wpo.loss_fxn`). The names are read from the
file without unpickling it (`torch.serialization.get_unsafe_globals_in_checkpoint`), looked
up only in modules of `aihwkit.simulator`, `aihwkit.inference` and `analogai_fl.tiles`, and
any other global refuses the whole file before anything in it is called.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

# the packages whose classes an analog state_dict may name; nothing outside them is imported
_MODULE_ROOTS = ("aihwkit.simulator.", "aihwkit.inference.")
_PROJECT_TILES = "analogai_fl.tiles"


class Refused(ConfigError):
    """`load` refused `path`: it names `name`, a global `load` does not accept. The message
    names both; nothing in the file was called."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(
            f"'{path}' is refused: it names {name}, which is not a class an aihwkit analog "
            "state_dict holds (only aihwkit's RPU-configuration dataclasses and enums, tiles, "
            "noise models, drift compensations and conductance converters are accepted, never "
            "a function); refused without loading it")
        self.path = path
        self.name = name


class Unreadable(Exception):
    """torch.load failed on a file; `error` is what torch raised and `first_line` its
    first line (for one-line messages)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
        text = str(error).strip()
        self.first_line = text.splitlines()[0] if text else type(error).__name__


def _base_classes() -> tuple[type, ...]:
    from aihwkit.inference.compensation.base import BaseDriftCompensation
    from aihwkit.inference.converter.base import BaseConductanceConverter
    from aihwkit.inference.noise.base import BaseNoiseModel
    from aihwkit.simulator.tiles.base import SimulatorTile, TileModuleBase
    return (TileModuleBase, SimulatorTile, BaseNoiseModel, BaseDriftCompensation,
            BaseConductanceConverter)


def accepted_global(name: str) -> type | None:
    """The class `name` ("module.Class") stands for when `load` accepts it, else None.

    Accepted: a class defined (not merely imported) in a module of `aihwkit.simulator` or
    `aihwkit.inference`, or in `analogai_fl.tiles`, that is a dataclass, an `enum.Enum`, or a
    subclass of aihwkit's tile, noise-model, drift-compensation or conductance-converter base
    classes. Only such modules are imported; a name that does not resolve is None."""
    module_name, _, attribute = name.rpartition(".")
    if not (module_name.startswith(_MODULE_ROOTS) or module_name == _PROJECT_TILES):
        return None
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return None
    if not inspect.isclass(found) or found.__module__ != module_name \
            or found.__qualname__ != attribute:
        return None  # a function, or something another module defined
    if dataclasses.is_dataclass(found) or issubclass(found, enum.Enum) \
            or issubclass(found, _base_classes()):
        return found
    return None


def load(path: Path) -> Any:
    """`torch.load(path)` on the CPU, weights only (torch's own set of globals), and when the
    file names other globals, again with them allowed if every one is a class of an aihwkit
    analog state_dict (`accepted_global`).

    Raises Refused (a ConfigError naming the file and the global) for a file that names any
    other global, before anything in it is called; Unreadable for a file torch cannot load
    (no torch file, cut short: torch raises RuntimeError, EOFError, UnpicklingError, ...)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = err
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        raise Unreadable(first) from None
    if not names:
        raise Unreadable(first)
    allowed = []
    for name in names:
        found = accepted_global(name)
        if found is None:
            raise Refused(path, name)
        allowed.append(found)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise Unreadable(err) from None
