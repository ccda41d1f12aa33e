"""Real Triton Inference Server: model repository from a ``batching:`` block, and server processes.

The server is the ``tritonserver`` binary bundled in the ``nvidia-pytriton``
wheel (CPU build, Python backend only). Onnxruntime does the compute inside a
Python-backend model (:mod:`cluster.stack.triton_model`); Triton's dynamic batcher,
instance group and queue policy are generated from the scenario's
:class:`~simulator.config.BatchingSpec`:

=======================  ===============================================================
``batching:`` key        ``config.pbtxt``
=======================  ===============================================================
max_batch_size           ``max_batch_size``
preferred_batch_sizes    ``dynamic_batching.preferred_batch_size``
max_queue_delay_us       ``dynamic_batching.max_queue_delay_microseconds``
instances                ``instance_group [{count, kind: KIND_CPU}]``
max_queue_size           ``dynamic_batching.default_queue_policy.max_queue_size``
queue_timeout_us         ``default_queue_policy {timeout_action: REJECT, default_timeout_microseconds}``
=======================  ===============================================================

Two traps of the bundled server are handled here: the Python-backend stub
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

MODEL_NAME = mdl.MODEL_NAME


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


def server_env(replica: str = "", extra: dict | None = None) -> dict:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libs = str(pytriton_dir().parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, libs, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.path.dirname(sys.executable) + ":" + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    if replica:
        env["SERVESIM_REPLICA"] = replica
    env.update(extra or {})
    return env


def server_version() -> str:
    """Triton's version as reported by a running server (``GET /v2``); starts one with an empty repository."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="ss-ver-") as d:
        srv = TritonServer(d, "version", os.path.join(d, "server.log"))
        try:
            srv.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and srv.alive():
                st, body = http_get(f"{srv.url}/v2", 0.5)
                if st == 200:
                    return json.loads(body).get("version", "unknown")
                time.sleep(0.1)
        except Exception:
            pass
        finally:
            srv.stop(5)
    return "unknown"


# --------------------------------------------------------------------------- model repository


def model_config_pbtxt(b: BatchingSpec, onnx_threads: int = 1, name: str = MODEL_NAME) -> str:
    """``config.pbtxt`` for the Python-backend MobileNetV4 model with batching from ``b``."""
    lines = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {b.max_batch_size}",
             "input [", "  {", f'    name: "{mdl.INPUT_NAME}"', "    data_type: TYPE_UINT8",
             f"    dims: [ {', '.join(str(d) for d in mdl.IMAGE_SHAPE)} ]", "  }", "]",
             "output [", "  {", f'    name: "{mdl.OUTPUT_NAME}"', "    data_type: TYPE_FP32",
             f"    dims: [ {mdl.NUM_CLASSES} ]", "  },", "  {", '    name: "replica"',
             "    data_type: TYPE_STRING", "    dims: [ 1 ]", "  }", "]",
             "instance_group [", "  {", f"    count: {b.instances}", "    kind: KIND_CPU", "  }", "]",
             "dynamic_batching {"]
    if b.preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(p) for p in b.preferred_batch_sizes)} ]")
    lines.append(f"  max_queue_delay_microseconds: {b.max_queue_delay_us}")
    if b.max_queue_size or b.queue_timeout_us:
        lines.append("  default_queue_policy {")
        if b.queue_timeout_us:
            lines += ["    timeout_action: REJECT",
                      f"    default_timeout_microseconds: {b.queue_timeout_us}",
                      "    allow_timeout_override: false"]
        if b.max_queue_size:
            lines.append(f"    max_queue_size: {b.max_queue_size}")
        lines.append("  }")
    lines.append("}")
    lines += ["parameters [",
              '  { key: "onnx_file", value: { string_value: "model.onnx" } },',
              f'  {{ key: "intra_op_threads", value: {{ string_value: "{int(onnx_threads)}" }} }}',
              "]"]
    return "\n".join(lines) + "\n"


def write_model_repository(repo: str | Path, batching: BatchingSpec, onnx_threads: int = 1,
                           onnx_file: str | Path | None = None, seed: int = 0) -> Path:
    """Create ``repo/<model>/{config.pbtxt, 1/model.py, 1/model.onnx}``; returns ``repo``.

    ``model.onnx`` is a symlink to the cached export (exported now if missing).
    """
    repo = Path(repo)
    mdir = repo / MODEL_NAME
    vdir = mdir / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    (mdir / "config.pbtxt").write_text(model_config_pbtxt(batching, onnx_threads))
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), vdir / "model.py")
    src = Path(onnx_file) if onnx_file else mdl.export_onnx(seed)
    dst = vdir / "model.onnx"
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    os.symlink(Path(src).resolve(), dst)
    return repo


# --------------------------------------------------------------------------- one server process


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
                 model: str = MODEL_NAME):
        self.repo, self.name, self.log_path, self.host = Path(repo), name, str(log_path), host
        self._fixed = (http_port, metrics_port)
        self.ports = ServerPorts(http_port, metrics_port)
        self.exit_timeout_s = exit_timeout_s
        self.model = model
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
        return [str(tritonserver_bin()), f"--model-repository={self.repo}",
                f"--backend-directory={backend_dir()}", f"--id={self.name}",
                "--allow-grpc=false", "--allow-http=true", f"--http-address={self.host}",
                f"--http-port={self.ports.http}", "--allow-metrics=true", "--allow-gpu-metrics=false",
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
        self.proc = procs.spawn(self.command(), env=server_env(self.name), stdout=self._log,
                                stderr=subprocess.STDOUT)
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
                                 description="Run one Triton server for MobileNetV4-Conv-Small (foreground).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="write a model repository and exec tritonserver")
    s.add_argument("--repo", default="/tmp/servesim-model-repo")
    s.add_argument("--config-pbtxt", help="use this config.pbtxt (e.g. a mounted ConfigMap) instead of "
                   "generating one from --batching-json")
    s.add_argument("--batching-json", default="{}", help="BatchingSpec as JSON (batching: block keys)")
    s.add_argument("--onnx-threads", type=int, default=int(os.environ.get("SERVESIM_ONNX_THREADS", "1")))
    s.add_argument("--host", default="0.0.0.0", help="bind address (0.0.0.0 inside a pod)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    a = ap.parse_args(argv)
    from simulator.config import ConfigError, parse_batching
    try:
        b = parse_batching(json.loads(a.batching_json), "batching")
    except (ConfigError, ValueError) as e:
        print(f"error: --batching-json: {e}", file=sys.stderr)
        return 2
    repo = write_model_repository(a.repo, b, a.onnx_threads)
    if a.config_pbtxt:
        shutil.copyfile(a.config_pbtxt, repo / MODEL_NAME / "config.pbtxt")
    srv = TritonServer(repo, os.environ.get("HOSTNAME", "triton"), "/dev/null", a.http_port, a.metrics_port,
                       host=a.host)
    os.execve(str(tritonserver_bin()), srv.command(), server_env(os.environ.get("SERVESIM_REPLICA", "")))
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
