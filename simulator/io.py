"""Small shared I/O helpers for every command-line entry point.

- :func:`jsonable`: numpy scalars to Python, non-finite floats to ``null``.
- :func:`write_json`: atomic JSON write (temporary file, then rename).
- :func:`run_cli`: the one place that turns a user-facing error into a one-line
  message with exit code 2, and Ctrl-C into exit code 130, never a traceback.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Callable


def jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            return jsonable(x.item())
        except Exception:
            return str(x)
    return x


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(jsonable(obj), f, indent=2)
    os.replace(tmp, path)


def run_cli(fn: Callable[[], int], errors: tuple[type[BaseException], ...] = (),
            interrupted: str = "interrupted: nothing written",
            error_code: dict[type[BaseException], int] | None = None) -> int:
    """Call ``fn()``; ConfigError (and ``errors``) -> ``error: msg`` on stderr, exit 2 (or the code
    ``error_code`` gives the error's class, e.g. 3 for a degenerate result)."""
    from simulator.config import ConfigError
    try:
        return fn()
    except (ConfigError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        for cls, code in (error_code or {}).items():
            if isinstance(e, cls):
                return code
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
