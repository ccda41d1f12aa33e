"""The schema helpers every config loader uses: typed reads of one key of a YAML mapping, each raising a
:class:`ConfigError` whose message names the dotted key path, the allowed values and what was given, e.g.
``batching.max_queue_delay_us: must be >= 0 (got -5)``.

- :func:`fail`: raise ``ConfigError("path: msg")``;
- :func:`check_keys`: the mapping has only allowed keys (the message lists them);
- :func:`number`, :func:`choice`, :func:`string`, :func:`boolean`, :func:`int_list`: one key, validated, or its
  default when absent / null.

Used by :mod:`simulator.config` (scenarios), the policies' ``from_params`` (:mod:`simulator.policy` and the
policy modules), :mod:`cluster.config` and :mod:`cluster.stack.config`. This module imports nothing from
servesim, so any module may use it without an import circle.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping


class ConfigError(ValueError):
    """A scenario file or dict is invalid. The message is user-facing."""


# --------------------------------------------------------------------------- helpers


def fail(path: str, msg: str) -> None:
    raise ConfigError(f"{path}: {msg}" if path else msg)


def check_keys(d: Mapping, allowed: set[str], path: str) -> None:
    if not isinstance(d, Mapping):
        fail(path, f"must be a mapping (got {type(d).__name__} {d!r})")
    unknown = sorted(set(d) - allowed)
    if unknown:
        fail(f"{path}.{unknown[0]}" if path else str(unknown[0]),
              f"unknown key; allowed keys here: {', '.join(sorted(allowed))}")


EXPONENT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def number(d: Mapping, key: str, path: str, default: Any = None, *, lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, integer: bool = False,
         required: bool = False) -> Any:
    p = f"{path}.{key}" if path else key
    if key not in d or d[key] is None:
        if required:
            fail(p, "is required")
        return default
    v = d[key]
    if isinstance(v, str) and EXPONENT_LITERAL.match(v.strip()):
        v = float(v)        # YAML 1.1 (PyYAML) reads 1e12 or 5E-3, exponent without a dot, as a string
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(p, f"must be a {'whole number' if integer else 'number'} (got {v!r})")
    if integer and not isinstance(v, int) and not (math.isfinite(v) and float(v).is_integer()):   # int: exact
        fail(p, f"must be a whole number (got {v!r})")
    if not math.isfinite(float(v)):
        fail(p, f"must be finite (got {v!r})")
    if lo is not None and (v <= lo if lo_open else v < lo):
        fail(p, f"must be {'>' if lo_open else '>='} {lo} (got {v!r})")
    if hi is not None and v > hi:
        fail(p, f"must be <= {hi} (got {v!r})")
    return int(v) if integer else float(v)


def choice(d: Mapping, key: str, path: str, choices: tuple[str, ...], default: str | None = None) -> str:
    p = f"{path}.{key}" if path else key
    if key not in d or d[key] is None:
        if default is None:
            fail(p, f"is required; one of {', '.join(choices)}")
        return default
    v = d[key]
    if v not in choices:
        fail(p, f"must be one of {', '.join(choices)} (got {v!r})")
    return v


def string(d: Mapping, key: str, path: str, default: str | None = None, required: bool = False) -> str | None:
    p = f"{path}.{key}" if path else key
    if key not in d or d[key] is None:
        if required:
            fail(p, "is required")
        return default
    if not isinstance(d[key], str):
        fail(p, f"must be a string (got {d[key]!r})")
    return d[key]


def boolean(d: Mapping, key: str, path: str, default: bool) -> bool:
    p = f"{path}.{key}" if path else key
    if key not in d or d[key] is None:
        return default
    if not isinstance(d[key], bool):
        fail(p, f"must be true or false (got {d[key]!r})")
    return d[key]


def int_list(d: Mapping, key: str, path: str, default: tuple[int, ...], lo: int = 1) -> tuple[int, ...]:
    """A non-empty list of whole numbers >= ``lo`` (sorted, duplicates removed), or ``default``."""
    if key not in d or d[key] is None:
        return default
    v = d[key]
    if not isinstance(v, (list, tuple)) or not v:
        fail(f"{path}.{key}", f"must be a non-empty list of whole numbers >= {lo}")
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, int) or x < lo:
            fail(f"{path}.{key}[{i}]", f"must be a whole number >= {lo} (got {x!r})")
    return tuple(sorted(set(v)))


__all__ = ["ConfigError", "fail", "check_keys", "number", "choice", "string", "boolean", "int_list"]
