"""Profiling sweep in the manner of ``perf_analyzer``, and replica start-up samples.

- :func:`compute_sweep`: one replica with batching set to pass batches through
  untouched (``max_batch_size`` = the largest swept size, no queue delay, no
  preferred sizes, the scenario's instance count). For each batch size ``b``,
  ``warmup`` then up to ``samples`` back-to-back requests holding ``b`` items,
  one at a time (at most ``max_seconds_per_size`` seconds). After every request
  Triton's statistics extension (``/v2/models/<m>/stats``) is read: the change of
  ``batch_stats[b].compute_infer`` is exactly that batch's compute time (also
  ``compute_input`` / ``compute_output`` and the queue time), next to the client
  latency. This is the per-batch service-time distribution calibration fits.
- :func:`concurrency_sweep`: a replica with the scenario's own batching, ``c``
  closed-loop users with no think time (batch-1 requests) for each ``c``:
  throughput and latency percentiles vs concurrency, the mean executed
  batch size / queue time from Triton's counters, and on a GPU server its
  ``nv_gpu_utilization`` / ``nv_gpu_memory_used_bytes`` at the end of each level.
- :func:`interference_sweep`: for each replica count ``N`` (e.g. 1, 2, 3),
  ``N`` replicas on this node, each driven by its own client thread sending
  batch-1 requests back to back (so up to ``N`` batches execute at once), for
  ``duration_s``. Per replica, from Triton's statistics before/after: executed
  batches, mean compute time per batch (input + infer + output) and busy
  fraction; ``concurrency`` is the mean number of batches executing on the node
  while one of this replica's batches runs (``1 + sum of the other replicas'
  busy fractions``). Calibration fits the slowdown vs concurrency curve
  (``cluster.node_cores`` / ``cluster.interference``) from it.
- :func:`startup_samples`: start a fresh server process ``n`` times; process
  start -> HTTP live -> model ready, each.

Triton updates its statistics just after the response is sent, so a read right
after a response can miss that request: the compute sweep waits (up to 0.5 s)
until ``batch_stats[b].compute_infer.count`` has advanced before taking the
difference.
"""
from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .stack.scrape import model_counters, parse_prometheus
from .stack.served import ServedModel, served_for
from .stack.triton import TritonServer, http_get

COMPUTE_COLUMNS = ("batch_size", "sample", "compute_infer_ms", "compute_input_ms", "compute_output_ms",
                   "queue_ms", "client_ms")
CONCURRENCY_COLUMNS = ("concurrency", "requests", "failures", "duration_s", "throughput_rps", "avg_ms", "p50_ms",
                       "p90_ms", "p95_ms", "p99_ms", "mean_batch_size", "mean_queue_ms", "mean_compute_ms_per_request",
                       "gpu_utilization", "gpu_memory_used_bytes")
INTERFERENCE_COLUMNS = ("replicas", "replica", "batches", "duration_s", "compute_ms", "compute_infer_ms",
                        "busy_fraction", "concurrency", "client_ms")
STARTUP_COLUMNS = ("sample", "t_start", "process_to_live_s", "live_to_ready_s", "process_to_ready_s")


def _server(repo, name: str, log, stack, scenario, served: ServedModel) -> TritonServer:
    """A started local server for the sweep (the stack's binary; GPU metrics on a GPU device)."""
    return TritonServer(repo, name, log, model=served.name, binary=stack.tritonserver,
                        gpu_metrics=scenario.batching.device == "gpu").start()


def _inputs(served: ServedModel, batch: int, seed: int):
    """One request of ``batch`` items of the served model as ``tritonclient.http`` inputs."""
    import tritonclient.http as th
    from tritonclient.utils import np_to_triton_dtype
    out = []
    for name, a in served.items(batch, seed).items():
        inp = th.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
        inp.set_data_from_numpy(a, binary_data=True)
        out.append(inp)
    return out


def _stats(url: str, model: str) -> dict:
    st, body = http_get(f"{url}/v2/models/{model}/stats", 2.0)
    if st != 200:
        raise RuntimeError(f"statistics request failed (HTTP {st}) at {url}")
    return json.loads(body)["model_stats"][0]


def _batch_count(stats: dict, b: int) -> int:
    for bs in stats.get("batch_stats", []):
        if int(bs["batch_size"]) == b:
            return int(bs["compute_infer"]["count"])
    return 0


def _batch_ns(stats: dict, b: int) -> tuple[int, int, int]:
    for bs in stats.get("batch_stats", []):
        if int(bs["batch_size"]) == b:
            return (int(bs["compute_infer"]["ns"]), int(bs["compute_input"]["ns"]),
                    int(bs["compute_output"]["ns"]))
    return 0, 0, 0


def compute_sweep(scenario, stack, workdir: str | Path, batch_sizes, samples: int, max_seconds: float,
                  warmup: int = 5, seed: int = 0, progress=None) -> list[tuple]:
    import tritonclient.http as th
    workdir = Path(workdir)
    served = served_for(stack, local=True)
    m = served.name
    b = replace(scenario.batching, max_batch_size=max(max(batch_sizes), 1), preferred_batch_sizes=(),
                max_queue_delay_us=0, max_queue_size=0, queue_timeout_us=0)
    repo = served.write_repository(workdir / "repo_compute", b, stack.onnx_threads)
    srv = _server(repo, "sweep", workdir / "sweep_compute.log", stack, scenario, served)
    rows: list[tuple] = []
    try:
        srv.wait_ready(stack.ready_timeout_s)
        cl = th.InferenceServerClient(srv.url[len("http://"):], network_timeout=stack.request_timeout_s)
        outs = [th.InferRequestedOutput(served.client_outputs[0], binary_data=True)]
        for bsz in batch_sizes:
            inp = _inputs(served, bsz, seed + bsz)
            for _ in range(warmup):
                cl.infer(m, inp, outputs=outs)
            prev = _stats(srv.url, m)
            t_end = time.monotonic() + max_seconds
            for k in range(samples):
                t0 = time.perf_counter()
                cl.infer(m, inp, outputs=outs)
                client_ms = (time.perf_counter() - t0) * 1000
                cur = _stats(srv.url, m)
                t_wait = time.monotonic() + 0.5
                while _batch_count(cur, bsz) <= _batch_count(prev, bsz) and time.monotonic() < t_wait:
                    time.sleep(0.002)     # statistics not yet updated for this request
                    cur = _stats(srv.url, m)
                c1, i1, o1 = _batch_ns(cur, bsz)
                c0, i0, o0 = _batch_ns(prev, bsz)
                q = cur["inference_stats"]["queue"]["ns"] - prev["inference_stats"]["queue"]["ns"]
                rows.append((bsz, k, (c1 - c0) / 1e6, (i1 - i0) / 1e6, (o1 - o0) / 1e6, q / 1e6, client_ms))
                prev = cur
                if progress:
                    progress(1)
                if time.monotonic() > t_end:
                    if progress:
                        progress(samples - k - 1)
                    break
    finally:
        srv.stop()
    return rows


def concurrency_sweep(scenario, stack, workdir: str | Path, levels, duration_s: float, seed: int = 0,
                      progress=None) -> list[tuple]:
    from .stack.loadgen import run_load
    workdir = Path(workdir)
    served = served_for(stack, local=True)
    repo = served.write_repository(workdir / "repo_concurrency", scenario.batching, stack.onnx_threads)
    srv = _server(repo, "sweep", workdir / "sweep_concurrency.log", stack, scenario, served)
    rows = []
    try:
        srv.wait_ready(stack.ready_timeout_s)
        for c in levels:
            before = model_counters(parse_prometheus(http_get(srv.metrics_url, 2.0)[1].decode()), served.name)
            res = run_load({"url": srv.url, **served.load_plan(workdir / f"concurrency_{c}", seed + c),
                            "mode": "closed", "duration_s": duration_s, "seed": seed + c, "users": c, "think": 0.0,
                            "timeout_s": stack.request_timeout_s}, workdir / f"concurrency_{c}")
            after = model_counters(parse_prometheus(http_get(srv.metrics_url, 2.0)[1].decode()), served.name)
            d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            import csv
            with open(res.requests_path) as f:
                reqs = list(csv.DictReader(f))
            lat = np.array([float(r["latency_ms"]) for r in reqs if r["status"] == "ok"])
            t_send = np.array([float(r["t_send"]) for r in reqs]) if reqs else np.zeros(1)
            span = max(1e-9, float(t_send.max() - t_send.min())) if len(reqs) > 1 else duration_s
            pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
            ex = d.get("nv_inference_exec_count", 0.0)
            succ = d.get("nv_inference_request_success", 0.0)
            rows.append((c, len(reqs), len(reqs) - len(lat), round(span, 3), len(lat) / span,
                         float(lat.mean()) if len(lat) else float("nan"), pct(50), pct(90), pct(95), pct(99),
                         d.get("nv_inference_count", 0.0) / ex if ex else float("nan"),
                         d.get("nv_inference_queue_duration_us", 0.0) / succ / 1000 if succ else float("nan"),
                         d.get("nv_inference_compute_infer_duration_us", 0.0) / succ / 1000 if succ else float("nan"),
                         # gauges (GPU servers only): the value at the end of the level
                         after.get("nv_gpu_utilization", float("nan")),
                         after.get("nv_gpu_memory_used_bytes", float("nan"))))
            if progress:
                progress(1)
    finally:
        srv.stop()
    return rows


def _exec_totals(stats: dict) -> tuple[int, float, float]:
    """(executed batches, compute input+infer+output ns, compute_infer ns) of a model's statistics."""
    inf = stats["inference_stats"]
    tot = sum(int(inf[k]["ns"]) for k in ("compute_input", "compute_infer", "compute_output"))
    return int(stats.get("execution_count", 0)), float(tot), float(inf["compute_infer"]["ns"])


def interference_sweep(scenario, stack, workdir: str | Path, replica_counts, duration_s: float, seed: int = 0,
                       progress=None) -> list[tuple]:
    """Rows of :data:`INTERFERENCE_COLUMNS`; see the module docstring."""
    import threading

    import tritonclient.http as th
    workdir = Path(workdir)
    served = served_for(stack, local=True)
    m = served.name
    b = replace(scenario.batching, max_batch_size=max(1, scenario.batching.max_batch_size),
                preferred_batch_sizes=(), max_queue_delay_us=0, max_queue_size=0, queue_timeout_us=0)
    repo = served.write_repository(workdir / "repo_interference", b, stack.onnx_threads)
    rows: list[tuple] = []
    for n in replica_counts:
        servers = [_server(repo, f"intf{n}_{i}", workdir / f"interference_{n}_{i}.log", stack, scenario, served)
                   for i in range(n)]
        try:
            for srv in servers:
                srv.wait_ready(stack.ready_timeout_s)
            stop = threading.Event()
            lat: list[list[float]] = [[] for _ in servers]
            errors: list[str] = []

            def _client(i: int) -> None:
                try:
                    cl = th.InferenceServerClient(servers[i].url[len("http://"):],
                                                  network_timeout=stack.request_timeout_s)
                    inp = _inputs(served, 1, seed)
                    outs = [th.InferRequestedOutput(served.client_outputs[0], binary_data=True)]
                    for _ in range(3):          # warm-up
                        cl.infer(m, inp, outputs=outs)
                    barrier.wait()
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        cl.infer(m, inp, outputs=outs)
                        lat[i].append((time.perf_counter() - t0) * 1000)
                except Exception as e:  # reported below
                    errors.append(f"replica {i}: {e}")
                    try:
                        barrier.abort()
                    except Exception:
                        pass

            barrier = threading.Barrier(n + 1)
            threads = [threading.Thread(target=_client, args=(i,), daemon=True) for i in range(n)]
            for t in threads:
                t.start()
            barrier.wait(timeout=60)
            before = [_exec_totals(_stats(s.url, m)) for s in servers]
            t0 = time.monotonic()
            time.sleep(duration_s)
            after = [_exec_totals(_stats(s.url, m)) for s in servers]
            wall = time.monotonic() - t0
            stop.set()
            for t in threads:
                t.join(stack.request_timeout_s)
            if errors:
                raise RuntimeError(f"interference sweep with {n} replicas: {errors[0]}")
            busy = [(a[1] - b0[1]) / 1e9 / wall for a, b0 in zip(after, before)]
            for i in range(n):
                ex = after[i][0] - before[i][0]
                comp = (after[i][1] - before[i][1]) / 1e6 / ex if ex else float("nan")
                infer = (after[i][2] - before[i][2]) / 1e6 / ex if ex else float("nan")
                conc = 1.0 + sum(busy[j] for j in range(n) if j != i)
                rows.append((n, i, ex, round(wall, 3), comp, infer, busy[i], conc,
                             float(np.mean(lat[i])) if lat[i] else float("nan")))
        finally:
            for srv in servers:
                srv.stop()
        if progress:
            progress(1)
    return rows


def startup_samples(scenario, stack, workdir: str | Path, n: int, progress=None) -> list[tuple]:
    workdir = Path(workdir)
    served = served_for(stack, local=True)
    repo = served.write_repository(workdir / "repo_startup", scenario.batching, stack.onnx_threads)
    rows = []
    for k in range(n):
        srv = _server(repo, f"startup{k}", workdir / f"startup_{k}.log", stack, scenario, served)
        try:
            srv.wait_ready(stack.ready_timeout_s)
            rows.append((k, srv.t_start, srv.t_live - srv.t_start, srv.t_ready - srv.t_live,
                         srv.t_ready - srv.t_start))
        finally:
            srv.kill(signal.SIGKILL)
            srv.stop(5)
        if progress:
            progress(1)
    return rows
