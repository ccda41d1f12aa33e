"""Small shared I/O helpers for every command-line entry point.

- :func:`jsonable`: numpy scalars to Python, non-finite floats to ``null``.
- :func:`write_json`: atomic JSON write (temporary file, then rename).
- :func:`run_cli`: the one place that turns a user-facing error into a one-line
  message (exit code 2; 1 for a failure of something the command ran; an error's
  own ``exit_code`` when it has one), and Ctrl-C into exit code 130, never a traceback.
- :class:`OutputFolder`: the one way a command writes its output folder (``--out``), so that no
  command ever loses a user's data:

  1. *Checked before any work starts* (the constructor): ``--out`` naming a file, a symbolic link, the
     working directory (or a folder holding it), or a place that cannot be written is refused; so is an
     existing non-empty folder that does not carry this command's output marker (a folder the command
     did not create, even an empty one: refused even with ``--force``), and one that does carry it unless
     ``force``. (``in_place`` commands -- training, the pipeline -- also work in an empty folder.)
  2. *Exclusive*: the constructor takes an exclusive lock (``.<name>.lock`` beside the folder, ``flock``;
     released by the kernel if the process dies) held until the command ends, so of concurrent writers
     to one folder one wins and the others fail at once with one line.
  3. *Atomic* (:meth:`commit`): the command writes into a temporary folder beside ``--out``; at the end
     the old folder (if any, checked again: it must be the one seen at the start) is renamed aside, the
     new one renamed into place, the old one deleted. A failed or interrupted run leaves nothing.

  The marker is a small file, :data:`MARKER` (``.servesim-output.json``: ``format``, ``command``,
  ``token``, ``created``), in every folder written this way. Folders written before the marker existed
  are recognised by the command's own ``legacy`` test (e.g. the ``format`` line of ``manifest.json``).
  ``in_place=True`` (training, the pipeline: folders written progressively and resumed) does the same
  checks and locking, but works in the folder itself; ``reuse=True`` lets it continue in a folder of
  its own without ``force``.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import errno
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from simulator.schema import ConfigError

MARKER = ".servesim-output.json"
MARKER_FORMAT = "servesim-output/1"


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
            interrupted: str = "interrupted: nothing written", *,
            runtime_errors: tuple[type[BaseException], ...] = (), teardown: Callable[[], None] | None = None,
            prefix: str = "error") -> int:
    """Call ``fn()`` and return its exit code; the error policy of every servesim command.

    ``ConfigError`` (bad input; also :class:`OutputError`) and ``errors`` -> ``<prefix>: msg`` on stderr,
    exit 2; ``runtime_errors`` (a server, a port, a load generator failed) -> ``error: msg``, exit 1; an
    exception with an ``exit_code`` attribute exits with that code (e.g. 3 for a degenerate result).
    Ctrl-C -> ``teardown()``, ``interrupted`` on stderr, exit 130. ``teardown`` (e.g. stopping servers)
    always runs last.
    """
    def _code(e: BaseException, default: int) -> int:
        return int(getattr(e, "exit_code", default))
    try:
        return fn()
    except (ConfigError, *errors) as e:
        print(f"{'error' if isinstance(e, OutputError) else prefix}: {e}", file=sys.stderr)
        return _code(e, 2)
    except runtime_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return _code(e, 1)
    except KeyboardInterrupt:
        if teardown is not None:
            teardown()
        print(interrupted, file=sys.stderr)
        return 130
    finally:
        if teardown is not None:
            teardown()


# --------------------------------------------------------------------------- output folders


class OutputError(ConfigError):
    """``--out`` cannot be used (refused, busy, unwritable, changed meanwhile); the message is one line."""


def _json_object(path: Path) -> dict | None:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The output marker of ``folder`` (``None``: none, or unreadable)."""
    m = _json_object(Path(folder) / MARKER)
    return m if m is not None and m.get("format") == MARKER_FORMAT else None


def json_format_is(name: str, fmt: str) -> Callable[[Path], bool]:
    """A ``legacy`` test: ``folder/name`` is JSON whose ``format`` is ``fmt`` (outputs written before the marker)."""
    return lambda folder: (_json_object(folder / name) or {}).get("format") == fmt


def json_has_keys(name: str, *keys: str) -> Callable[[Path], bool]:
    """A ``legacy`` test: ``folder/name`` is a JSON object holding all ``keys``."""
    return lambda folder: all(k in d for k in keys) if (d := _json_object(folder / name)) is not None else False


class OutputFolder:
    """Write a command's output folder without ever losing data (see the module docstring).

    ::

        with OutputFolder(a.out, "simulator.run", force=a.force) as of:   # checked and locked here
            ...                                                           # the long work
            write files into of.path
        # committed (atomic rename) on a normal exit; nothing left behind on an exception

    ``path`` is the folder to write into (a temporary folder, or ``out`` itself when ``in_place``).
    """

    def __init__(self, out: str | os.PathLike, command: str, *, force: bool = False, flag: str = "--out",
                 legacy: Callable[[Path], bool] | None = None, in_place: bool = False, reuse: bool = False):
        self.shown = str(out)
        self.out = Path(os.path.abspath(out))
        self.command = command
        self.force = force
        self.flag = flag
        self.legacy = legacy
        self.in_place = in_place
        self.reuse = reuse
        self.committed = False
        self._lock_fd: int | None = None
        self._lock_path = self.out.parent / f".{self.out.name}.lock"
        self._seen: tuple[str, str | None] = ("absent", None)
        self._made_parents: list[Path] = []
        self.path: Path = self.out
        atexit.register(self.close)            # a process that ends without close() leaves nothing behind
        self._open()

    # ---- errors
    def _err(self, msg: str) -> OutputError:
        return OutputError(f"{self.flag} {self.shown}: {msg}")

    # ---- opening: checks, lock, working folder
    def _open(self) -> None:
        out = self.out
        cwd = Path(os.getcwd()).resolve()
        real = out.resolve()
        if real == cwd or real in cwd.parents:
            raise self._err("is the working directory or contains it; name a new folder")
        if os.path.islink(out):
            raise self._err("is a symbolic link; name a folder")
        if os.path.lexists(out) and not out.is_dir():
            raise self._err("exists and is not a folder")
        missing = [d for d in [out.parent, *out.parent.parents] if not d.exists()]
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            self._made_parents = missing          # removed again (when empty) if nothing is committed
        except OSError as e:
            raise self._err(f"cannot create {out.parent} ({e.strerror or e})") from None
        self._lock()
        try:
            self._seen = self._check_replaceable()
            if self.in_place:
                self._open_in_place()
            else:
                try:
                    self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
                except OSError as e:
                    raise self._err(f"cannot write in {out.parent} ({e.strerror or e})") from None
            self._write_marker(self.path)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        while True:
            try:
                fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as e:
                raise self._err(f"cannot write in {self.out.parent} ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                try:
                    holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                finally:
                    os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._err(f"another servesim command (pid {holder}) is writing it right now; "
                                    "wait for it to finish or name another folder") from None
                raise self._err(f"cannot lock {self._lock_path} ({e.strerror or e})") from None
            try:   # the previous holder may have removed the file between our open and our lock: retry
                same = os.fstat(fd).st_ino == os.stat(self._lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self._lock_fd = fd
                return
            os.close(fd)

    def _check_replaceable(self) -> tuple[str, str | None]:
        """``(state, token)`` of ``out``: absent, empty, or own (its marker's token); else OutputError."""
        out = self.out
        if not out.exists():
            return "absent", None
        try:
            entries = os.listdir(out)
        except OSError as e:
            raise self._err(f"cannot read it ({e.strerror or e})") from None
        if not entries and self.in_place:
            return "empty", None                  # a folder to work in: nothing in it to lose
        marker = read_marker(out)
        if marker is not None and marker.get("command") != self.command:
            raise self._err(f"holds the output of {marker.get('command')}, not of {self.command}; "
                            "refusing to replace it (name another folder)")
        if marker is None and not (self.legacy is not None and self.legacy(out)):
            what = "is an empty folder that" if not entries else "exists and"
            raise self._err(f"{what} was not written by {self.command} (no {MARKER} marker); refusing to "
                            "replace it, even with --force (name another folder, or remove it yourself)")
        if not self.force and not self.reuse:
            raise self._err(f"already exists (written by {self.command}); --force replaces it")
        return "own", (marker or {}).get("token", "legacy")

    def _open_in_place(self) -> None:
        state, _ = self._seen
        if state == "own" and not (self.reuse and not self.force):
            self._remove_aside(self.out)
        try:
            self.out.mkdir(exist_ok=True)
        except OSError as e:
            raise self._err(f"cannot create it ({e.strerror or e})") from None
        self.path = self.out

    def _write_marker(self, folder: Path) -> None:
        old = read_marker(folder) if self.in_place else None
        m = old or {"format": MARKER_FORMAT, "command": self.command, "token": uuid.uuid4().hex,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        try:
            write_json(str(folder / MARKER), m)
        except OSError as e:
            raise self._err(f"cannot write in it ({e.strerror or e})") from None

    def _remove_aside(self, folder: Path) -> None:
        aside = folder.parent / f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)

    # ---- finishing
    def commit(self) -> Path:
        """Put the written folder in place of ``out`` (atomic rename); returns ``out``."""
        if self.committed or self.in_place:
            self.committed = True
            return self.out
        state, token = self._seen
        now = "absent"
        if self.out.exists():
            now = "empty" if not os.listdir(self.out) else "own"
        now_token = (read_marker(self.out) or {}).get("token", "legacy") if now == "own" else None
        if now != state or now_token != token:
            raise self._err("was changed by someone else while this command ran; it was left as it is and "
                            "this run's results were discarded")
        aside = None
        if now != "absent":
            aside = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.out, aside)
        try:
            os.rename(self.path, self.out)
        except OSError as e:
            if aside is not None:
                os.rename(aside, self.out)
            raise self._err(f"cannot put the results in place ({e.strerror or e})") from None
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        self.committed = True
        return self.out

    def close(self) -> None:
        """Remove the temporary folder if not committed; release the lock (idempotent)."""
        if not self.committed and not self.in_place and self.path != self.out:
            shutil.rmtree(self.path, ignore_errors=True)
        atexit.unregister(self.close)
        if self._lock_fd is not None:
            try:
                os.unlink(self._lock_path)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None
        if not self.committed and not (self.in_place and self.out.exists()):
            for d in self._made_parents:          # deepest first: parents this command created for nothing
                try:
                    d.rmdir()
                except OSError:
                    break
            self._made_parents = []

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.close()
        return False
