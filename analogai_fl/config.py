"""Loading a run's configuration: defaults, conf file and command-line overrides, each value
type- and range-checked against `schema.SCHEMA`, errors naming the key.

A run's effective configuration is built as

    schema defaults  <  the chosen conf YAML file  <  ``flwr run --run-config`` overrides.

Flower only accepts overrides for keys declared in pyproject's ``[tool.flwr.app.config]``,
and fuses them into those declared values before the app sees them. So pyproject declares
every key with the value ``""`` ("not given on the command line"); anything else there is
an override (`generate` writes the declarations). `resolve` returns the flat, dotted dict
(the format of config.yaml and of the train message), each key checked on its own; the
cross-key rules run where the typed settings are built, `settings.load`.
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .schema import ALIASES, CONF_KEY, DEFAULT_CONF, SCHEMA, UNSET
from .schema_key import accepted_choice

PROJECT_DIR = Path(__file__).resolve().parents[1]


def defaults() -> dict[str, Any]:
    return {k: (list(v.default) if isinstance(v.default, list) else v.default)
            for k, v in SCHEMA.items()}


def declared_run_config_keys() -> set[str]:
    """The keys pyproject must declare so that `--run-config` accepts them."""
    return set(SCHEMA) | set(ALIASES) | {CONF_KEY}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _canonical(name: str, source: str) -> str:
    name = ALIASES.get(name, name)
    if name not in SCHEMA:
        close = difflib.get_close_matches(name, list(SCHEMA) + list(ALIASES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{source}: unknown key '{name}'{hint}. docs/configuration.md lists every key."
        )
    return name


def _coerce(name: str, value: Any, source: str) -> Any:
    key = SCHEMA[name]
    bad = ConfigError(f"{source}: key '{name}' expects {key.expectation()}, got {value!r}")
    if value is None:
        if key.nullable:
            return None
        raise bad
    kind = key.type
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise bad
    elif kind is list:
        items = value.split(",") if isinstance(value, str) else value
        try:
            value = [float(x) for x in items]
        except (TypeError, ValueError):
            raise bad from None
        if not value:
            raise bad
    if key.choices and not accepted_choice(key, value):
        raise bad
    if kind in (int, float, list):
        for x in value if kind is list else [value]:
            if not math.isfinite(x) or x in key.forbidden:
                raise bad
            if key.minimum is not None and (x < key.minimum or (key.above_minimum
                                                               and x == key.minimum)):
                raise bad
            if key.maximum is not None and x >= key.maximum:
                raise bad
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    """Flat, type-checked settings of one conf file."""
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"conf file '{path}' does not exist (expected a YAML file, e.g. "
                          f"{DEFAULT_CONF})")
    text = path.read_text()
    try:
        _refuse_repeated_keys(path, yaml.compose(text, Loader=yaml.SafeLoader))
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"conf file '{path}' is not valid YAML: {err}") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"conf file '{path}' must hold a mapping of keys, got "
                          f"{type(tree).__name__}")
    return {(c := _canonical(k, source)): _coerce(c, v, source) for k, v in flatten(tree).items()}


def _refuse_repeated_keys(path: Path, root: yaml.Node | None) -> None:
    """ConfigError naming the file, the key and both lines when a key is given twice: in one
    mapping (PyYAML keeps the last and silently drops the first, a whole table for a
    section), or as the same setting written two ways (`training: {rounds: ..}` and
    `training.rounds: ..`, or a key and its alias)."""
    if not isinstance(root, yaml.MappingNode):
        return
    settings: dict[str, int] = {}

    def walk(node: yaml.MappingNode, prefix: str) -> None:
        lines: dict[str, int] = {}
        for key_node, value in node.value:
            key, line = f"{key_node.value}", key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(f"conf file '{path}': key '{prefix}{key}' is given twice, on "
                                  f"lines {lines[key]} and {line} (YAML would keep only the "
                                  "second); merge them into one")
            lines[key] = line
            if isinstance(value, yaml.MappingNode) and value.value:
                walk(value, f"{prefix}{key}.")
                continue
            name = ALIASES.get(f"{prefix}{key}", f"{prefix}{key}")
            if name in settings:
                raise ConfigError(f"conf file '{path}': key '{name}' is set twice, on lines "
                                  f"{settings[name]} and {line}; keep one")
            settings[name] = line

    walk(root, "")


def _find_conf(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    for base in (PROJECT_DIR, Path.cwd()):
        if (base / path).is_file():
            return base / path
    raise ConfigError(f"conf file '{name}' not found (looked in {PROJECT_DIR} and "
                      f"{Path.cwd()}); pass a path relative to the project or an absolute one")


def command_line_overrides(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys `run_config` sets (canonical names, checked values), without the conf file's
    name and the keys left at `UNSET`. ConfigError naming an unknown key or a bad value."""
    overrides = {_canonical(k, "--run-config"): v for k, v in run_config.items()
                 if k != CONF_KEY and v != UNSET}
    return {k: _coerce(k, v, "--run-config") for k, v in overrides.items()}


def resolve(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Effective config of a run: the flat dict of every schema key and `CONF_KEY` (the conf
    file's path), each value type- and range-checked (ConfigError naming the key and file).

    `run_config` is Flower's fused run config (pyproject values, `""` = not overridden).
    With `output.resume` set, the resumed run's saved config replaces the conf file. The
    cross-key rules are not checked here: `settings.load` builds and checks the settings.
    """
    overrides = command_line_overrides(run_config)
    if overrides.get("output.resume"):
        conf_path = Path(overrides["output.resume"]).expanduser() / "config.yaml"
    else:
        conf_path = _find_conf(str(run_config.get(CONF_KEY) or DEFAULT_CONF))
    from_file = load_yaml(conf_path)
    cfg = defaults() | from_file | overrides
    cfg[CONF_KEY] = str(conf_path)
    return cfg


def add_run_config_argument(parser: argparse.ArgumentParser, overrides_of: str = "the conf file",
                            example: str = "") -> None:
    """Add `--run-config "KEY=VALUE ..."` to a command line (repeatable; read what it
    collects, a list of strings, with `parse_run_config`): the same flag, syntax and merge
    as `flwr run --run-config` for every command and benchmark. `overrides_of` names what
    the values override in the help text; `example` (optional) is shown there."""
    parser.add_argument("--run-config", action="append", default=[], metavar='"KEY=VALUE ..."',
                        help=f"overrides of {overrides_of}, same keys and TOML syntax as flwr "
                        f"run --run-config{', e.g. ' + example if example else ''}; "
                        "repeatable, merged as flwr run merges")


def parse_run_config(texts: str | Sequence[str]) -> dict[str, Any]:
    """Flat overrides from one or more `--run-config` strings ("key=value key=value", TOML
    values; or one .toml file), parsed and merged by Flower's own parser exactly as
    `flwr run . --run-config A --run-config B` does (flwr 1.42: a later flag replaces each
    top-level table it touches as a whole). Raises ConfigError for text Flower would skip
    silently, and where a later flag drops keys an earlier one set (Flower's merge does so
    without a word; one --run-config holding all of them is what was meant)."""
    import re

    import click
    from flwr.common.config import parse_config_args

    texts = [texts] if isinstance(texts, str) else list(texts)
    pairs = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")  # Flower's pattern, to find
    for text in texts:                                          # what it would silently skip
        leftover = pairs.sub("", text).strip()
        if leftover and not (len(texts) == 1 and text.strip().endswith(".toml")):
            raise ConfigError(f"--run-config: cannot parse '{leftover}': expected "
                              "space-separated key=value pairs with TOML values, e.g. "
                              "\"inference.repeats=5 inference.platform.aihwkit.device='ReRAM'\"")
    try:
        merged = parse_config_args(texts)
        given = {k for text in texts[:-1] for k in parse_config_args([text])}
    except (click.ClickException, ValueError) as err:
        message = err.message if isinstance(err, click.ClickException) else str(err)
        raise ConfigError(f"--run-config: {message}") from None
    dropped = sorted(given - set(merged))
    if dropped:
        raise ConfigError(f"--run-config given {len(texts)} times: Flower's merge (flwr run's "
                          "too) keeps only the last flag's value of each top-level table, so "
                          f"{', '.join(dropped)} would be dropped; give them in one "
                          "--run-config")
    return merged


def dump_yaml(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(unflatten({k: v for k, v in cfg.items() if k != CONF_KEY}),
                          sort_keys=False)


