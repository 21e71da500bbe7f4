"""Your own network, by import path: `model.name='package.module:factory'`.

`factory(in_channels, num_classes, image_size) -> torch.nn.Module` has the signature of the
built-in models (`models.MODELS`) and returns logits of shape (N, num_classes) for images of
shape (N, in_channels, image_size, image_size). The module is imported from the project's
directory (the folder with pyproject.toml, which `flwr run` ships to every SuperNode in the
app bundle) or from an installed package.

A network only means something on the chip if aihwkit converts every weight layer of it:
`aihwkit.nn.conversion.convert_to_analog` replaces modules by *exact* class (nn.Linear,
nn.Conv1d/2d/3d) and silently leaves anything else digital, whose accuracy would then not be
the chip's. `check_model` refuses such a network before any work, naming the layer.

A conf file can come from someone else, and importing a module runs it. So the factory must be
a Python function or class defined in the module named (not one it imports), and the module
may not be part of Python's standard library: a conf file cannot turn `os:chown` or the like
into a "factory". A module of your own still runs when imported: read a conf file that names
one before you run it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from .errors import ConfigError
from .schema import MODEL_IMPORT_PATH

KEY = "key 'model.name'"
ANALOG_CLASSES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # aihwkit's default map
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # digital by design
FUNCTIONAL = {F.linear: "linear", F.conv1d: "conv1d", F.conv2d: "conv2d", F.conv3d: "conv3d"}


def is_import_path(name: str) -> bool:
    """Whether `model.name` names a factory by import path rather than a built-in model."""
    return re.fullmatch(MODEL_IMPORT_PATH, name) is not None


def import_factory(path: str, project_dir: Path) -> Callable[[int, int, int], nn.Module]:
    """The factory `path` ('package.module:factory') names, its module imported from the
    installed packages or `project_dir`. ConfigError naming `model.name` when the module
    cannot be imported (with the import error's own message), is part of the standard
    library, lacks the attribute, or the attribute is no function or class defined there."""
    module_name, attribute = path.split(":")
    root = module_name.split(".")[0]
    if root in sys.stdlib_module_names or root in sys.builtin_module_names:
        raise ConfigError(f"{KEY} = '{path}': '{root}' is part of Python's standard library, "
                          "which holds no network factory; name a module of your own")
    if str(project_dir) not in sys.path:
        sys.path.append(str(project_dir))  # after the installed packages: they win
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything while importing
        raise ConfigError(f"{KEY} = '{path}': cannot import '{module_name}' "
                          f"({type(err).__name__}: {err}); it must be importable from the "
                          f"project's directory ({project_dir}) or an installed package"
                          ) from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ConfigError(f"{KEY} = '{path}': module '{module_name}' ({module.__file__}) has "
                          f"no attribute '{attribute}'")
    if not (inspect.isfunction(factory) or inspect.isclass(factory)) or \
            factory.__module__ != module.__name__:
        raise ConfigError(f"{KEY} = '{path}': '{attribute}' is not a function or class "
                          f"defined in '{module_name}' (it is {factory!r}); name the factory "
                          "where it is defined")
    return factory


def built(path: str, factory: Callable[[int, int, int], nn.Module], in_channels: int,
          num_classes: int, image_size: int) -> nn.Module:
    """`factory(in_channels, num_classes, image_size)`; ConfigError naming `model.name`
    when it raises or returns something other than an nn.Module."""
    try:
        model = factory(in_channels, num_classes, image_size)
    except Exception as err:
        raise ConfigError(f"{KEY} = '{path}': {path}({in_channels}, {num_classes}, "
                          f"{image_size}) raised {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{KEY} = '{path}': the factory returned a {type(model).__name__}, "
                          "expected a torch.nn.Module")
    return model


def forward_failed(path: str, shape: tuple[int, ...], err: Exception) -> ConfigError:
    """The refusal of a factory whose forward fails on a batch of input `shape`."""
    return ConfigError(f"{KEY} = '{path}': its forward fails on one batch of the configured "
                       f"data (input shape {shape}): {type(err).__name__}: "
                       f"{str(err).splitlines()[0]}")


class _FunctionalCalls(TorchFunctionMode):
    """Records each functional linear/convolution call of a forward with the innermost
    module running it (the stack kept by the hooks `check_model` registers)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, nn.Module]] = []
        self.outside: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in FUNCTIONAL:
            name, module = self.stack[-1] if self.stack else ("", None)
            if type(module) not in ANALOG_CLASSES:
                where = ("the model's forward" if module is None else
                         f"the forward of the model itself ({type(module).__name__})"
                         if not name else f"layer '{name}' ({type(module).__name__})")
                self.outside.append(f"a functional torch.nn.functional.{FUNCTIONAL[func]} "
                                    f"call in {where}")
        return func(*args, **(kwargs or {}))


def check_model(path: str, model: nn.Module, batch: torch.Tensor, num_classes: int) -> None:
    """ConfigError naming `model.name` and the layer, before any work, when aihwkit would
    not put all of `model` on the chip or it does not run: a Conv/Linear subclass or
    parametrized layer (convert_to_analog matches exact classes), another layer with
    weights of its own (nn.LSTM, nn.ConvTranspose2d, a module using its own nn.Parameter;
    normalisation layers stay digital by design), no Conv/Linear layer at all, a forward
    that fails on `batch` (shape (N, C, H, W), one batch of the configured data) or returns
    other than (N, num_classes), or a functional linear/convolution call outside a plain
    Conv/Linear module."""
    problems = []
    for name, module in model.named_modules():
        where = f"layer '{name}' ({type(module).__name__})"
        if isinstance(module, ANALOG_CLASSES) and type(module) not in ANALOG_CLASSES:
            base = next(c for c in ANALOG_CLASSES if isinstance(module, c)).__name__
            why = "a parametrized layer" if parametrize.is_parametrized(module) else \
                f"a subclass of nn.{base}"
            problems.append(f"{where} is {why}, which aihwkit's convert_to_analog leaves "
                            "digital (it converts exact classes only)")
        elif not isinstance(module, (*ANALOG_CLASSES, *NORMS)) and \
                any(True for _ in module.parameters(recurse=False)):
            problems.append(f"{where} has weights that aihwkit's convert_to_analog leaves "
                            "digital: its accuracy would not be the chip's")
    if not any(type(m) in ANALOG_CLASSES for m in model.modules()):
        problems.append("it has no nn.Linear or nn.Conv1d/2d/3d layer for aihwkit to put on "
                        "the chip")
    if problems:
        raise ConfigError(f"{KEY} = '{path}': {problems[0]}"
                          + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    calls = _FunctionalCalls()

    def enter(name: str, module: nn.Module) -> Callable[..., None]:
        return lambda *_: calls.stack.append((name, module))

    def leave(*_) -> None:  # a forward hook returning a value would replace the output
        calls.stack.pop()

    hooks = [h for name, m in model.named_modules() for h in (
        m.register_forward_pre_hook(enter(name, m)), m.register_forward_hook(leave))]
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), calls:
            model.eval()
            out = model(batch)
    except Exception as err:
        raise forward_failed(path, tuple(batch.shape), err) from None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if calls.outside:
        raise ConfigError(f"{KEY} = '{path}': {calls.outside[0]}, which aihwkit cannot put on "
                          "the chip; use an nn.Linear / nn.Conv2d module instead")
    expected = (len(batch), num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{KEY} = '{path}': its forward returns {shape} for input shape "
                          f"{tuple(batch.shape)}; expected logits of shape {expected}")
