"""Files whose key lists are generated from the schema, so they cannot drift from it:
conf/default.yaml (every key with its default and meaning), pyproject's
`[tool.flwr.app.config]` declarations (Flower accepts `--run-config` keys only if declared)
and the key table of docs/configuration.md. `python -m analogai_fl.generate --write`
rewrites them; tests/test_config.py fails when one is stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import PROJECT_DIR
from .outputs import atomic_text
from .schema import ALIASES, CONF_KEY, DEFAULT_CONF, SCHEMA, UNSET


def markdown_table() -> str:
    """docs/configuration.md's key reference."""
    rows = ["| key | default | expects | meaning |", "|---|---|---|---|"]
    for name, key in SCHEMA.items():
        default = "null" if key.default is None else yaml.safe_dump(
            key.default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append(f"| `{name}` | `{default}` | {key.expectation()} | {key.doc} |")
    return "\n".join(rows)


DEFAULT_CONF_HEADER = """\
# The default experiment: LeNet on scikit-learn's digits (offline), K = 5 noise levels,
# fusion injection (FI) and feedback loops (FL) on, PCM evaluation every round.
# Every key of the project is listed here with its default and meaning. This file is
# generated from analogai_fl/schema.py (`python -m analogai_fl.generate --write`); other conf
# files only need the keys they change. `recovery.noise_k.act_inject.sigma` is the
# WEIGHT-noise sigma of client k (the seed's name, kept for compatibility).
"""


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix(
        "...").strip()


def render_default_conf() -> str:
    """conf/default.yaml: every key with its default, commented with its meaning."""
    lines = [*DEFAULT_CONF_HEADER.splitlines(), ""]
    opened: list[str] = []
    for name, key in SCHEMA.items():
        *parents, leaf = name.split(".")
        common = 0
        while common < min(len(opened), len(parents)) and opened[common] == parents[common]:
            common += 1
        if common == 0 and opened != parents and lines[-1] != "":
            lines.append("")  # blank line between top-level sections
        for depth in range(common, len(parents)):
            lines.append("  " * depth + parents[depth] + ":")
        opened = parents
        lines.append(f"{'  ' * len(parents)}{leaf}: {_yaml_scalar(key.default)}  # {key.doc}")
    return "\n".join(lines) + "\n"


def render_pyproject_table() -> str:
    """pyproject's [tool.flwr.app.config]: every key declared as "" (= not overridden)."""
    names = [*SCHEMA, *ALIASES]
    return "\n".join(["[tool.flwr.app.config]", f'{CONF_KEY} = "{DEFAULT_CONF}"',
                      *(f'"{n}" = "{UNSET}"' for n in names)]) + "\n"


def _replace_block(text: str, start: str, end_marker: str, new: str) -> str:
    """`text` with the block from the line starting with `start` up to (not including)
    the first following line that starts with `end_marker` (or the end) replaced."""
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = next((i for i in range(first + 1, len(lines)) if lines[i].startswith(end_marker)),
                len(lines))
    return "".join(lines[:first]) + new + "".join(lines[last:])


def generated_files() -> dict[Path, str]:
    """Files whose key lists are generated from SCHEMA, with their up-to-date text."""
    pyproject = PROJECT_DIR / "pyproject.toml"
    reference = PROJECT_DIR / "docs" / "configuration.md"
    table = markdown_table() + "\n"
    return {
        PROJECT_DIR / DEFAULT_CONF: render_default_conf(),
        pyproject: _replace_block(pyproject.read_text(), "[tool.flwr.app.config]", "[",
                                  render_pyproject_table()),
        reference: _replace_block(reference.read_text(), "| key | default |", "\n", table),
    }


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        for path, text in generated_files().items():
            if path.read_text() != text:
                atomic_text(path, text)
                print(f"updated {path.relative_to(PROJECT_DIR)}")
    else:
        print(markdown_table())
