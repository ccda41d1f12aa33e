"""Child-process bookkeeping: nothing servesim starts outlives it.

Every server process (tritonserver, haproxy, the Locust load generator) is
started through :func:`spawn`, which

- puts the child in its own session (a Ctrl-C in the terminal reaches only
  servesim, which then tears children down in order instead of having them
  die half-way through a request),
- asks the kernel to SIGKILL the child if the spawning thread dies
  (``PR_SET_PDEATHSIG``; only when spawning from the main thread, because the
  signal is tied to the thread that forked),
- records it in a registry that :func:`kill_all` (run at interpreter exit and
  by :func:`install_signal_handlers`) empties: SIGTERM, a grace period, SIGKILL.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Sequence

from .errors import STACK_ERRORS, PortInUseError

_lock = threading.Lock()
_children: dict[int, subprocess.Popen] = {}

PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def spawn(cmd: Sequence[str], *, env: dict | None = None, cwd: str | None = None,
          stdout=None, stderr=None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``cmd`` as a tracked child (see module docstring)."""
    main = threading.current_thread() is threading.main_thread()
    p = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=stdout, stderr=stderr, stdin=stdin,
                         start_new_session=True, preexec_fn=_pdeathsig if main else None)
    with _lock:
        _children[p.pid] = p
    return p


def stop(p: subprocess.Popen | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal ``p``, wait up to ``timeout``, then SIGKILL its whole process group. Returns the exit code."""
    if p is None:
        return None
    try:
        if p.poll() is None:
            try:
                p.send_signal(sig)   # the leader only: tritonserver shuts its backend stubs down itself
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(5)
        _signal_group(p, signal.SIGKILL)   # leftovers of the group (e.g. stubs of a crashed server)
    finally:
        with _lock:
            _children.pop(p.pid, None)
    return p.returncode


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass


def forget(p: subprocess.Popen) -> None:
    with _lock:
        _children.pop(p.pid, None)


def live_children() -> list[subprocess.Popen]:
    with _lock:
        return [p for p in _children.values() if p.poll() is None]


def kill_all(timeout: float = 5.0) -> None:
    """Terminate every tracked child (SIGTERM to all, then SIGKILL stragglers)."""
    with _lock:
        kids = list(_children.values())
    for p in kids:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in kids:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(p, signal.SIGKILL)
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass
        forget(p)


atexit.register(kill_all)


def install_signal_handlers() -> None:
    """Make SIGTERM behave like Ctrl-C (KeyboardInterrupt in the main thread) so ``finally`` blocks tear down.

    SIGINT is (re)armed too: a process started from a non-interactive shell in the background (``cmd &``,
    CI runners, nohup scripts) inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt
    handler at all -- an interrupt would leave the servers running. Whoever starts servers must stop them.
    """
    def _term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_guarded(fn, *, errors: tuple = (), runtime_errors: tuple = (), prefix: str = "error") -> int:
    """The real-stack CLIs' error policy: :func:`simulator.io.run_cli` with servers always torn down.

    ``ConfigError`` (and ``errors``) -> ``<prefix>: msg``, exit 2 (bad input, nothing started or
    written); a server, load generator, port or Kubernetes failure (:data:`~cluster.stack.errors.STACK_ERRORS`,
    and ``runtime_errors``) -> ``error: msg``, exit 1; Ctrl-C / SIGTERM -> teardown, exit 130.
    """
    from simulator.io import run_cli
    install_signal_handlers()
    return run_cli(fn, errors, "interrupted: servers torn down; nothing written",
                   runtime_errors=(*STACK_ERRORS, *runtime_errors), teardown=kill_all, prefix=prefix)


# --------------------------------------------------------------------------- ports


_ports_lock = threading.Lock()
_handed_out: dict[int, float] = {}       # port -> when free_port gave it (monotonic seconds)
HANDED_OUT_S = 120.0                    # ... not given again for this long: its server may not have bound it yet


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (the OS picks it), never one this process was given in the last
    :data:`HANDED_OUT_S` seconds: the OS can offer a port twice while the server it went to has not bound it
    yet (a server's HTTP and metrics ports, or two replicas or pipeline stages starting at once)."""
    with _ports_lock:
        now = time.monotonic()
        for p in [p for p, t in _handed_out.items() if now - t > HANDED_OUT_S]:
            del _handed_out[p]
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                break
        _handed_out[port] = now
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def check_port_free(port: int, what: str, key: str = "", host: str = "127.0.0.1") -> None:
    if port and port_in_use(port, host):
        hint = f" (set {key}: 0 to pick a free port automatically)" if key else ""
        raise PortInUseError(f"{what}: port {host}:{port} is already in use{hint}")


def tail(path: str, n: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""
