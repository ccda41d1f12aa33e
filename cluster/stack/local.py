"""Local backend: each replica is its own ``tritonserver`` process, HAProxy in front.

Behaves like a Kubernetes Deployment + Service on one node:

- scale-up starts a process on its own ports (free ports, or ``stack.base_port +
  2i`` / ``+ 2i + 1`` for HTTP / metrics) and puts it into the load balancer
  only when Triton reports the model ready (``/v2/models/<m>/ready``, the
  readiness probe) and HAProxy's own health check agrees;
- scale-down removes the youngest replicas (not-yet-ready ones first, like a
  ReplicaSet), drains them (no new requests; in-flight ones finish, up to
  ``stack.drain_timeout_s``), then stops the process (SIGTERM, Triton finishes
  what it holds, then SIGKILL);
- a replica that dies is taken out of rotation (HAProxy health check, and
  the backend's monitor as soon as it sees the exit) and recorded as
  ``crashed``; it is not restarted (a run measures what happened).

A background monitor thread (every 50 ms) advances starting replicas, finishes
drains and detects crashes. All lifecycle times are in :meth:`replica_log`.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path

from . import procs
from .backends import Backend, ReplicaRecord
from .lb import HAProxy
from .served import served_for
from .triton import TritonError, TritonServer, http_get


class LocalBackend(Backend):
    name = "local"

    def __init__(self, scenario, stack, workdir):
        self.scenario = scenario
        self.batching = scenario.batching
        self.cluster = scenario.cluster
        self.stack = stack
        self.workdir = Path(workdir)
        self.repo = self.workdir / "model_repository"
        self.served = served_for(stack)
        self.lb: HAProxy | None = None
        self._lock = threading.RLock()
        self._servers: dict[str, TritonServer] = {}
        self._records: dict[str, ReplicaRecord] = {}
        self._draining: dict[str, float] = {}
        self._stopping: list[threading.Thread] = []
        self._desired = 0
        self._counter = 0
        self._errors: list[str] = []
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._torn_down = False

    # ------------------------------------------------------------------ interface
    def deploy(self, wait: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.served.write_repository(self.repo, self.batching, self.stack.onnx_threads)
        slots = max(self.cluster.max_replicas, self.cluster.replicas, 1) + 4
        self.lb = HAProxy(self.workdir, self.stack.lb_port, slots, self.cluster.load_balancer,
                          self.stack.health_check_ms).start()
        self._thread = threading.Thread(target=self._monitor, name="local-backend-monitor", daemon=True)
        self._thread.start()
        self.scale(self.cluster.replicas)
        if wait:
            self.wait_ready(self.cluster.replicas, self.stack.ready_timeout_s)

    def scale(self, n: int) -> None:
        n = max(0, int(n))
        with self._lock:
            self._check_live()
            self._desired = n
            active = [r for r in self._records.values() if r.state in ("starting", "ready")]
            if n > len(active):
                for _ in range(n - len(active)):
                    self._start_one()
            elif n < len(active):
                starting = [r for r in active if r.state == "starting"]
                ready = [r for r in active if r.state == "ready"]
                victims = (sorted(starting, key=lambda r: -r.t_request) +
                           sorted(ready, key=lambda r: -(r.t_ready or 0)))[:len(active) - n]
                now = time.time()
                for r in victims:
                    if r.state == "starting":
                        r.t_drain = now
                        self._finish(r.name, "scale_down", background=True)
                    else:
                        r.t_drain = now
                        self.lb.drain(r.name)
                        self._draining[r.name] = now

    @property
    def ready_replicas(self) -> int:
        with self._lock:
            return sum(1 for r in self._records.values() if r.state == "ready")

    @property
    def pending_replicas(self) -> int:
        with self._lock:
            return sum(1 for r in self._records.values() if r.state == "starting")

    @property
    def desired(self) -> int:
        return self._desired

    @property
    def endpoints(self) -> dict:
        with self._lock:
            return {"lb": self.lb.url if self.lb else "",
                    "replicas": {r.name: r.endpoint for r in self._records.values() if r.state == "ready"}}

    def metrics(self) -> dict[str, str]:
        with self._lock:
            targets = {r.name: r.metrics_endpoint for r in self._records.values()
                       if r.state in ("ready", "draining") and r.metrics_endpoint}
        return self._get_all(targets)

    def model_stats(self) -> dict[str, str]:
        with self._lock:
            targets = {r.name: f"{r.endpoint}/v2/models/{self.served.name}/stats" for r in self._records.values()
                       if r.state in ("ready", "draining") and r.endpoint}
        return self._get_all(targets)

    @staticmethod
    def _get_all(targets: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        if not targets:
            return out
        with cf.ThreadPoolExecutor(max_workers=min(8, len(targets))) as ex:
            futs = {ex.submit(http_get, url, 0.8): name for name, url in targets.items()}
            for f in futs:
                status, body = f.result()
                if status == 200:
                    out[futs[f]] = body.decode("utf-8", "replace")
        return out

    def replica_log(self) -> list[ReplicaRecord]:
        with self._lock:
            return [ReplicaRecord(**{k: v for k, v in vars(r).items()}) for r in self._records.values()]

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def kill(self, index: int = 0) -> str:
        """SIGKILL the ``index``-th ready replica (oldest first); the monitor records the crash."""
        with self._lock:
            ready = sorted((r for r in self._records.values() if r.state == "ready"), key=lambda r: r.t_ready)
            if not ready:
                raise RuntimeError("kill: no ready replica")
            name = ready[min(index, len(ready) - 1)].name
            self._servers[name].kill()
            return name

    poll_s = 0.05

    def _not_ready(self, n: int, timeout: float) -> Exception:
        return TritonError(f"local backend: {self.ready_replicas}/{n} replicas ready after {timeout:.0f} s; "
                           f"server logs in {self.workdir}")

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            names = [n for n, r in self._records.items() if r.t_gone is None]
        for n in names:
            self._finish(n, "teardown", background=True)
        for t in list(self._stopping):
            t.join(30)
        if self.lb is not None:
            self.lb.stop()

    # ------------------------------------------------------------------ internals
    def _check_live(self) -> None:
        if self._errors:
            raise TritonError(self._errors[0])
        if self.lb is not None and not self.lb.alive() and not self._torn_down:
            raise RuntimeError(f"load balancer (HAProxy) exited unexpectedly; log {self.lb.log_path}:\n"
                               f"{procs.tail(self.lb.log_path, 10)}")

    def _start_one(self) -> None:
        i = self._counter
        self._counter += 1
        name = f"r{i}"
        hp = mp = 0
        if self.stack.base_port:
            hp, mp = self.stack.base_port + 2 * i, self.stack.base_port + 2 * i + 1
        rec = ReplicaRecord(name=name, t_request=time.time())
        srv = TritonServer(self.repo, name, self.workdir / f"{name}.log", hp, mp,
                           exit_timeout_s=max(1, int(self.stack.drain_timeout_s)), model=self.served.name,
                           binary=self.stack.tritonserver, gpu_metrics=self.batching.device == "gpu")
        try:
            srv.start()
        except Exception as e:
            rec.t_gone, rec.end_reason = time.time(), "failed_start"
            self._records[name] = rec
            self._errors.append(str(e))
            raise
        rec.t_start = srv.t_start
        rec.endpoint, rec.metrics_endpoint = srv.url, srv.metrics_url
        self._records[name] = rec
        self._servers[name] = srv

    def _finish(self, name: str, reason: str, background: bool = False) -> None:
        """Take ``name`` out of rotation and stop its process (in a thread if ``background``)."""
        with self._lock:
            rec = self._records[name]
            if rec.end_reason:
                return
            rec.end_reason = reason
            self._draining.pop(name, None)
            if self.lb is not None and self.lb.alive():
                try:
                    self.lb.remove(name)
                except OSError:
                    pass
            srv = self._servers.get(name)

        def _stop():
            code = srv.stop() if srv is not None else None
            with self._lock:
                rec.t_gone = rec.t_gone or time.time()
                rec.exit_code = code if rec.exit_code is None else rec.exit_code

        if background:
            t = threading.Thread(target=_stop, name=f"stop-{name}", daemon=True)
            self._stopping.append(t)
            t.start()
        else:
            _stop()

    def _monitor(self) -> None:
        while not self._stop_evt.is_set():
            try:
                self._monitor_step()
            except Exception as e:  # never let the monitor die silently
                with self._lock:
                    self._errors.append(f"local backend monitor: {type(e).__name__}: {e}")
            self._stop_evt.wait(0.05)

    def _monitor_step(self) -> None:
        with self._lock:
            recs = [r for r in self._records.values() if not r.end_reason]
        for r in recs:
            srv = self._servers[r.name]
            if r.state == "starting":
                try:
                    ready = srv.poll_ready()
                except TritonError as e:
                    with self._lock:
                        r.t_gone, r.end_reason, r.exit_code = time.time(), "failed_start", srv.proc.returncode
                        self._errors.append(str(e))
                    continue
                r.t_live = srv.t_live
                if ready:
                    with self._lock:
                        if r.end_reason:
                            continue
                        self.lb.add(r.name, srv.host, srv.ports.http)
                    self.lb.wait_up(r.name, 3.0)
                    with self._lock:
                        if not r.end_reason:
                            r.t_ready = time.time()
            elif not srv.alive():
                with self._lock:
                    r.t_gone = r.t_gone or time.time()
                    r.exit_code = srv.proc.returncode
                    crashed = r.state != "draining" or r.name not in self._draining
                self._finish(r.name, "crashed" if crashed else "scale_down", background=True)
            elif r.name in self._draining:
                since = self._draining[r.name]
                if self.lb.busy(r.name) == 0 or time.time() - since > self.stack.drain_timeout_s:
                    self._finish(r.name, "scale_down", background=True)
