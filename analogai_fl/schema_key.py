"""What a schema key is (`Key`: default, type, accepted range, meaning), below the schema's
sections (`schema`, `schema_ablation`) that declare the keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    above_minimum: bool = False  # value must be > minimum rather than >=
    nullable: bool = False
    kind: type | None = None  # inferred from the default when None
    maximum: float | None = None  # value must be < maximum
    forbidden: tuple[float, ...] = ()  # values the consumer cannot use
    why: str = ""  # why the range is what it is (shown in the error)
    or_pattern: tuple[str, str] = ()  # (regex, what it is): a string beside the choices

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def expectation(self) -> str:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                list: "a list of numbers (YAML list or comma-separated string)"}[self.type]
        if self.choices:
            kind = "one of " + ", ".join(repr(c) for c in self.choices)
            if self.or_pattern:
                kind += f" or {self.or_pattern[1]}"
        if self.minimum is not None:
            kind += f" {'>' if self.above_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            kind += f"{' and' if self.minimum is not None else ''} < {self.maximum:g}"
        if self.forbidden:
            kind += ", not " + " or ".join(f"{v:g}" for v in self.forbidden)
        if self.why:
            kind += f" ({self.why})"
        return kind + (" (or null)" if self.nullable else "")


CONVERTER_BITS_WHY = ("0 = ideal; else at least 2: aihwkit's converter step is "
                      "1/(2^bits - 2), analog.converter_resolution")


def accepted_choice(key: Key, value: str) -> bool:
    """Whether `value` is one of `key.choices` or matches its `or_pattern`."""
    return value in key.choices or bool(key.or_pattern
                                        and re.fullmatch(key.or_pattern[0], value))


def converter_bits(default: int, doc: str) -> Key:
    """A DAC/ADC resolution key: 0 (ideal) or at least 2 bits."""
    return Key(default, doc, minimum=0, forbidden=(1,), why=CONVERTER_BITS_WHY)
