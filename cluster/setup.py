"""One-time set-up of the real stack: ``python -m cluster.setup`` (idempotent).

1. HAProxy (the local backend's load balancer): installed with ``apt-get`` if
   missing (as root, or through ``sudo``); otherwise prints the command to run.
2. The models: the built-ins (MobileNetV4-Conv-Small, the small text encoder) exported to ONNX into
   the cache (``.cache/servesim/``), once.
3. Triton: the bundled ``tritonserver`` of nvidia-pytriton is found, the
   Python-backend stub for this interpreter is prepared, and a real server is
   started once with the model to check it loads (``--skip-check`` skips this).

Exit code 0 when everything is ready; a failed step is one line ``error: ...``, exit code 1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .stack import procs


def ensure_haproxy(install: bool = True) -> str:
    from .stack.lb import LoadBalancerError, haproxy_bin, haproxy_version
    try:
        haproxy_bin()
        return haproxy_version()
    except LoadBalancerError:
        if not install:
            raise
    if shutil.which("apt-get") is None:
        raise RuntimeError("haproxy is missing and apt-get is not available: install HAProxy with your "
                           "package manager (it must be on PATH as `haproxy`)")
    prefix = [] if os.geteuid() == 0 else (["sudo"] if shutil.which("sudo") else None)
    if prefix is None:
        raise RuntimeError("haproxy is missing; run as root: apt-get update && apt-get install -y haproxy")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("installing haproxy with apt-get ...", flush=True)
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "haproxy"]):
        r = subprocess.run(prefix + cmd, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"`{' '.join(prefix + cmd)}` failed with exit code {r.returncode}")
    haproxy_bin()
    return haproxy_version()


def check_triton(timeout: float = 120) -> float:
    """Start one real server with the model; returns seconds to model ready."""
    from simulator.config import BatchingSpec

    from .stack.triton import TritonServer, write_model_repository
    with tempfile.TemporaryDirectory(prefix="ss-setup-") as d:
        repo = write_model_repository(os.path.join(d, "repo"), BatchingSpec(max_batch_size=8))
        srv = TritonServer(repo, "setup-check", os.path.join(d, "server.log")).start()
        try:
            return srv.wait_ready(timeout)
        finally:
            srv.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.setup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install haproxy, only check")
    ap.add_argument("--skip-check", action="store_true", help="do not start a Triton server to check the model")
    a = ap.parse_args(argv)

    def body() -> int:
        from .stack.builtins import builtin_export
        from .stack.config import BUILTIN_MODELS
        from .stack.triton import backend_dir, tritonserver_bin
        print(f"haproxy: {ensure_haproxy(not a.no_install)}")
        for name in BUILTIN_MODELS:
            t = time.time()
            p, _ = builtin_export(name, verbose=True)
            print(f"model: {p} ({time.time() - t:.1f} s)")
        print(f"tritonserver: {tritonserver_bin()} (python backend stub in {backend_dir()})")
        if not a.skip_check:
            print(f"triton check: model ready {check_triton():.1f} s after server start")
        print("set-up complete")
        return 0
    # any failure of a set-up step (a missing package, apt-get, the export, the server) is one line, exit 1
    return procs.run_guarded(body, runtime_errors=(Exception,))

if __name__ == "__main__":
    sys.exit(main())
