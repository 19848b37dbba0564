"""Typed, self-describing policy parameters.

Why: the CLI flags, ``sparsebench policies``, the ``--help`` text and every results row are generated
from one declaration, so a third-party policy's parameters appear everywhere with no change to the
core. A policy is a dataclass; each field declared with :func:`param` carries help, range and choices.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sparsebench.errors import UsageError

_META_KEY = "sparsebench"


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter of a policy."""

    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    choices: tuple[Any, ...] | None = None
    optional: bool = False

    @property
    def flag(self) -> str:
        """Command-line flag: ``budget_frac`` -> ``--budget-frac``."""
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """Human-readable range, e.g. ``(0, 1]`` or ``>= 1``."""
        if self.choices:
            return "{" + ", ".join(map(str, self.choices)) + "}"
        if self.min is not None and self.max is not None:
            lo = "[" if self.min_inclusive else "("
            hi = "]" if self.max_inclusive else ")"
            return f"{lo}{_fmt(self.min)}, {_fmt(self.max)}{hi}"
        if self.min is not None:
            return (">= " if self.min_inclusive else "> ") + _fmt(self.min)
        if self.max is not None:
            return ("<= " if self.max_inclusive else "< ") + _fmt(self.max)
        return "any"

    def parse(self, text: str, policy: str) -> Any:
        """Convert command-line text to the declared type, with a clear error."""
        if self.optional and text.lower() in {"none", ""}:
            return None
        try:
            if self.type is bool:
                lowered = text.lower()
                if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(text)
                return lowered in {"true", "1", "yes"}
            return self.type(text)
        except ValueError:
            raise UsageError(
                f"policy {policy!r}: {self.flag} expects {self.type.__name__}, got {text!r}"
            ) from None

    def validate(self, value: Any, policy: str) -> Any:
        """Check ``value`` against type, range and choices; return it (ints widened to float)."""
        if value is None:
            if self.optional:
                return None
            raise UsageError(f"policy {policy!r}: {self.flag} needs a value")
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise UsageError(
                f"policy {policy!r}: {self.flag} expects {self.type.__name__}, got {value!r}"
            )
        if isinstance(value, float) and math.isnan(value):
            raise UsageError(f"policy {policy!r}: {self.flag} is NaN; give a number in {self.range_text()}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(
                f"policy {policy!r}: {self.flag}={value!r} is not one of {self.range_text()}"
            )
        too_low = self.min is not None and (value < self.min if self.min_inclusive else value <= self.min)
        too_high = self.max is not None and (value > self.max if self.max_inclusive else value >= self.max)
        if too_low or too_high:
            raise UsageError(
                f"policy {policy!r}: {self.flag}={value!r} is out of range; it must be {self.range_text()}"
            )
        return value


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def param(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    choices: Sequence[Any] | None = None,
) -> Any:
    """Declare a policy dataclass field as a parameter (use as ``x: float = param(0.9, "...")``)."""
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "min_inclusive": min_inclusive,
        "max_inclusive": max_inclusive,
        "choices": tuple(choices) if choices is not None else None,
    }
    return dataclasses.field(default=default, metadata={_META_KEY: meta})


def param_specs(cls: type) -> tuple[ParamSpec, ...]:
    """The declared parameters of a policy dataclass, in field order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to declare parameters")
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META_KEY)
        if meta is None or not f.init:
            continue
        typ, optional = _unwrap_optional(hints[f.name])
        if typ not in (int, float, str, bool):
            raise TypeError(f"{cls.__name__}.{f.name}: parameter type must be int, float, str or bool")
        specs.append(ParamSpec(name=f.name, type=typ, default=f.default, optional=optional, **meta))
    return tuple(specs)


def _unwrap_optional(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return hint, False
