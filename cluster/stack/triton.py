"""Real Triton Inference Server: model repository from a ``batching:`` block, and server processes.

The server is the ``tritonserver`` binary bundled in the ``nvidia-pytriton``
wheel (CPU build, Python backend only), or the one ``stack.tritonserver`` names (e.g. from NVIDIA's
container, with native backends). For ONNX models (the built-ins, ``model: {onnx: ...}``) onnxruntime does
the compute inside a Python-backend model (:mod:`cluster.stack.triton_model`) or in Triton's native
onnxruntime backend; a repository model brings its own backend (:mod:`cluster.stack.served`). Triton's
dynamic batcher, instance group and queue policy are generated from the scenario's
:class:`~simulator.config.BatchingSpec`:

=======================  ===============================================================
``batching:`` key        ``config.pbtxt``
=======================  ===============================================================
max_batch_size           ``max_batch_size``
preferred_batch_sizes    ``dynamic_batching.preferred_batch_size``
max_queue_delay_us       ``dynamic_batching.max_queue_delay_microseconds``
instances, device, gpus  ``instance_group [{count, kind: KIND_CPU | KIND_GPU, gpus}]``
max_queue_size           ``dynamic_batching.default_queue_policy.max_queue_size``
queue_timeout_us         ``default_queue_policy {timeout_action: REJECT, default_timeout_microseconds}``
=======================  ===============================================================

Two traps of the bundled server are handled here (a user's server runs with its own defaults): the Python-backend stub
links ``libpython3.X.so`` and must find *this* interpreter's one first
(``LD_LIBRARY_PATH`` starts with ``sysconfig LIBDIR``), and the stub matching
this Python version is put into a prepared backend directory in the cache.

``python -m cluster.stack.triton serve`` runs one server in the foreground (the
container entrypoint of the Kubernetes Deployment, see ``configs/k8s/``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from simulator.config import BatchingSpec

from . import model as mdl
from . import procs
from .errors import PortInUseError, TritonError

MODEL_NAME = mdl.MODEL_NAME        # the default model (model: block absent)


# --------------------------------------------------------------------------- locating the server


def pytriton_dir() -> Path:
    """Where the nvidia-pytriton package lives, found without importing it: ``import pytriton`` pulls in
    its client stack (gevent, gRPC, ZeroMQ, aiohttp, ~30 extension modules), which servesim does not use."""
    import importlib.util
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("nvidia-pytriton is not installed (it bundles tritonserver); "
                          "install the cluster extras: pip install -e '.[cluster]'")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def tritonserver_bin() -> Path:
    b = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not b.exists():
        raise TritonError(f"tritonserver binary not found at {b} (broken nvidia-pytriton install?)")
    return b


def backend_dir() -> Path:
    """A backend directory whose ``python/`` holds the stub built for this Python version."""
    src = pytriton_dir() / "tritonserver"
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = src / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"nvidia-pytriton has no Python-backend stub for Python {ver} ({stub})")
    dst = mdl.cache_dir() / f"triton-backends-py{ver}"
    py = dst / "python"
    want = {"libtriton_python.so": src / "backends" / "python" / "libtriton_python.so",
            "triton_python_backend_utils.py": src / "backends" / "python" / "triton_python_backend_utils.py",
            "triton_python_backend_stub": stub}
    ok = all((py / n).exists() and os.path.realpath(py / n) == str(p.resolve()) for n, p in want.items())
    if not ok:
        tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "python").mkdir(parents=True)
        for n, p in want.items():
            os.symlink(p.resolve(), tmp / "python" / n)   # symlinks keep the stub's $ORIGIN rpath valid
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    return dst


def server_env(replica: str = "", extra: dict | None = None, bundled: bool = True) -> dict:
    """The server's environment: for the bundled server, this interpreter's libpython and nvidia-pytriton's
    libraries first on ``LD_LIBRARY_PATH`` and this Python on ``PATH``; a user's server keeps its own."""
    env = dict(os.environ)
    if bundled:
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        libs = str(pytriton_dir().parent / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, libs, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = os.path.dirname(sys.executable) + ":" + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    if replica:
        env["SERVESIM_REPLICA"] = replica
    env.update(extra or {})
    return env


def server_version(binary: str = "", timeout: float = 30.0, strict: bool = False) -> str:
    """Triton's version as reported by a running server (``GET /v2``); starts one with an empty repository.
    ``strict``: a binary that does not start a Triton server within ``timeout`` is a :class:`TritonError`
    (one line: the binary, its exit code, its last output line), else ``"unknown"``."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="ss-ver-") as d:
        log = os.path.join(d, "server.log")
        srv = TritonServer(d, "version", log, binary=binary)
        what = binary or str(tritonserver_bin())
        try:
            srv.start()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and srv.alive():
                st, body = http_get(f"{srv.url}/v2", 0.5)
                if st == 200:
                    return json.loads(body).get("version", "unknown")
                time.sleep(0.1)
            if strict:
                last = [ln for ln in procs.tail(log, 20).splitlines() if ln.strip()]
                how = (f"exited with code {srv.proc.returncode}" if not srv.alive() else
                       f"did not answer GET /v2 within {timeout:.0f} s")
                raise TritonError(f"tritonserver {what} {how} (is it a Triton server?); "
                                  f"its last output: {last[-1][:200] if last else 'none'}")
        except TritonError:
            if strict:
                raise
        except Exception:
            pass
        finally:
            srv.stop(5)
    return "unknown"


def visible_gpus() -> list[str]:
    """The GPUs this machine shows (``nvidia-smi -L`` lines); [] when none (or no NVIDIA driver)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        r = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln for ln in r.stdout.splitlines() if ln.startswith("GPU ")] if r.returncode == 0 else []


# --------------------------------------------------------------------------- model repository


def default_model():
    """The served model of an absent ``model:`` block (the built-in MobileNetV4, Python backend)."""
    from .config import ModelSpec
    from .served import resolve
    return resolve(ModelSpec())


def write_model_repository(repo: str | Path, batching: BatchingSpec, onnx_threads: int = 1, served=None) -> Path:
    """Lay out ``repo/<model>/`` for ``batching`` (:meth:`cluster.stack.served.ServedModel.write_repository`;
    default: the built-in MobileNetV4); returns ``repo``."""
    return (served or default_model()).write_repository(repo, batching, onnx_threads)


# --------------------------------------------------------------------------- one server process


def server_model_config(url: str, name: str, timeout: float = 5.0) -> dict:
    """``GET <url>/v2/models/<name>/config`` (JSON), raising :class:`TritonError` when the server does not
    know the model."""
    st, body = http_get(f"{url}/v2/models/{name}/config", timeout)
    if st != 200:
        raise TritonError(f"server at {url}: no configuration for model {name!r} (HTTP {st}: "
                          f"{body[:200].decode('utf-8', 'replace')})")
    return json.loads(body)


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """(status, body); status 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read() if e.fp else b""
    except (urllib.error.URLError, OSError, ValueError):
        return 0, b""




@dataclass
class ServerPorts:
    http: int
    metrics: int


class TritonServer:
    """One ``tritonserver`` process serving one model repository on 127.0.0.1.

    ``start()`` returns at once; ``wait_ready()`` blocks until the model is ready
    (``/v2/models/<m>/ready``), raising :class:`TritonError` with the server's own
    error lines if the process exits first (model load failure, port in use...).
    """

    def __init__(self, repo: str | Path, name: str, log_path: str | Path, http_port: int = 0,
                 metrics_port: int = 0, host: str = "127.0.0.1", exit_timeout_s: int = 10,
                 model: str = MODEL_NAME, binary: str = "", gpu_metrics: bool = False):
        self.repo, self.name, self.log_path, self.host = Path(repo), name, str(log_path), host
        self._fixed = (http_port, metrics_port)
        self.ports = ServerPorts(http_port, metrics_port)
        self.exit_timeout_s = exit_timeout_s
        self.model = model
        self.binary = binary              # "" = the bundled server
        self.gpu_metrics = gpu_metrics
        self.proc: subprocess.Popen | None = None
        self.t_start = self.t_live = self.t_ready = self.t_exit = None
        self._log = None

    # -- urls
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    def command(self) -> list[str]:
        bundled = [] if self.binary else [f"--backend-directory={backend_dir()}"]
        return [self.binary or str(tritonserver_bin()), f"--model-repository={self.repo}", *bundled,
                f"--id={self.name}",
                "--allow-grpc=false", "--allow-http=true", f"--http-address={self.host}",
                f"--http-port={self.ports.http}", "--allow-metrics=true",
                f"--allow-gpu-metrics={'true' if self.gpu_metrics else 'false'}",
                "--allow-cpu-metrics=true", f"--metrics-address={self.host}",
                f"--metrics-port={self.ports.metrics}", "--metrics-interval-ms=1000",
                "--http-thread-count=4", f"--exit-timeout-secs={self.exit_timeout_s}",
                "--strict-readiness=true", "--exit-on-error=true", "--log-verbose=0"]

    def start(self) -> "TritonServer":
        for key, port, what in (("http", self._fixed[0], "HTTP"), ("metrics", self._fixed[1], "metrics")):
            procs.check_port_free(port, f"replica {self.name} Triton {what}", host=self.host)
        self.ports = ServerPorts(self._fixed[0] or procs.free_port(self.host),
                                 self._fixed[1] or procs.free_port(self.host))
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.t_start = time.time()
        try:
            self.proc = procs.spawn(self.command(), env=server_env(self.name, bundled=not self.binary),
                                    stdout=self._log, stderr=subprocess.STDOUT)
        except OSError as e:        # not executable, wrong architecture, missing interpreter ...
            self._close_log()
            raise TritonError(f"replica {self.name}: cannot start tritonserver {self.command()[0]}: "
                              f"{e.strerror or e}") from None
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def is_live(self) -> bool:
        return http_get(f"{self.url}/v2/health/live", 0.5)[0] == 200

    def is_ready(self) -> bool:
        return http_get(f"{self.url}/v2/models/{self.model}/ready", 0.5)[0] == 200

    def poll_ready(self) -> bool:
        """Non-blocking readiness step: records live/ready times; raises if the process died."""
        if not self.alive():
            self._raise_exit()
        if self.t_live is None and self.is_live():
            self.t_live = time.time()
        if self.t_live is not None and self.t_ready is None and self.is_ready():
            self.t_ready = time.time()
        return self.t_ready is not None

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Block until ready; returns seconds from process start to model ready."""
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if time.monotonic() > deadline:
                self.stop()
                raise TritonError(f"replica {self.name}: model not ready after {timeout:.0f} s "
                                  f"(log {self.log_path}):\n{procs.tail(self.log_path, 15)}")
            time.sleep(0.05)
        return self.t_ready - self.t_start

    def _raise_exit(self):
        code = self.proc.returncode if self.proc else None
        self.t_exit = self.t_exit or time.time()
        log = procs.tail(self.log_path, 40)
        procs.stop(self.proc, 2)
        self._close_log()
        if "address already in use" in log.lower() or "Address already in use" in log:
            raise PortInUseError(f"replica {self.name}: Triton could not bind its port "
                                       f"(HTTP {self.ports.http} / metrics {self.ports.metrics}) -- "
                                       f"address already in use")
        errs = [ln for ln in log.splitlines() if re.search(r"^E\d{4}|failed to load|error:", ln, re.I)]
        detail = "\n".join(errs[-8:]) or log
        if "failed to load" in log or "UNAVAILABLE" in log:
            raise TritonError(f"replica {self.name}: Triton failed to load model '{self.model}' "
                              f"(exit code {code}); server log {self.log_path}:\n{detail}")
        raise TritonError(f"replica {self.name}: tritonserver exited with code {code} before the model was "
                          f"ready; server log {self.log_path}:\n{detail}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Crash it (fault injection): ``sig`` to the server process only."""
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton finishes in-flight requests, up to ``exit_timeout_s``), then SIGKILL."""
        if self.proc is None:
            return None
        code = procs.stop(self.proc, timeout if timeout is not None else self.exit_timeout_s + 5)
        self.t_exit = self.t_exit or time.time()
        self._close_log()
        return code

    def _close_log(self):
        if self._log:
            self._log.close()
            self._log = None




# --------------------------------------------------------------------------- CLI (container entrypoint)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.stack.triton",
                                 description="Run one Triton server for a built-in model (foreground).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="write a model repository and exec tritonserver")
    s.add_argument("--repo", default="/tmp/servesim-model-repo")
    s.add_argument("--builtin", default=MODEL_NAME, help="the built-in model to serve")
    s.add_argument("--config-pbtxt", help="use this config.pbtxt (e.g. a mounted ConfigMap) instead of "
                   "generating one from --batching-json")
    s.add_argument("--batching-json", default="{}", help="BatchingSpec as JSON (batching: block keys)")
    s.add_argument("--onnx-threads", type=int, default=int(os.environ.get("SERVESIM_ONNX_THREADS", "1")))
    s.add_argument("--host", default="0.0.0.0", help="bind address (0.0.0.0 inside a pod)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    r = sub.add_parser("repository", help="write the model repository of a built-in model (for the "
                       "Kubernetes init container's image, configs/k8s/Dockerfile.models)")
    r.add_argument("--out", required=True)
    r.add_argument("--builtin", default=MODEL_NAME)
    r.add_argument("--backend", default="onnxruntime", choices=("python", "onnxruntime"))
    a = ap.parse_args(argv)
    from simulator.config import ConfigError, parse_batching

    from .config import ModelSpec
    from .served import resolve
    if a.cmd == "repository":
        served = resolve(ModelSpec(builtin=a.builtin, backend=a.backend))
        repo = served.write_repository(a.out, BatchingSpec(max_batch_size=8))
        onnx = repo / served.name / "1" / "model.onnx"
        target = onnx.resolve()
        onnx.unlink()
        shutil.copyfile(target, onnx)        # a real file: the image must not point into the cache
        print(f"wrote {repo / served.name}")
        return 0
    try:
        b = parse_batching(json.loads(a.batching_json), "batching")
    except (ConfigError, ValueError) as e:
        print(f"error: --batching-json: {e}", file=sys.stderr)
        return 2
    served = resolve(ModelSpec(builtin=a.builtin, backend="python"))
    repo = served.write_repository(a.repo, b, a.onnx_threads)
    if a.config_pbtxt:
        shutil.copyfile(a.config_pbtxt, repo / served.name / "config.pbtxt")
    srv = TritonServer(repo, os.environ.get("HOSTNAME", "triton"), "/dev/null", a.http_port, a.metrics_port,
                       host=a.host, model=served.name)
    os.execve(str(tritonserver_bin()), srv.command(), server_env(os.environ.get("SERVESIM_REPLICA", "")))
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
