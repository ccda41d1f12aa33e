"""Profiling sweep in the manner of ``perf_analyzer``, and replica start-up samples.

- :func:`compute_sweep`: one replica with batching set to pass batches through
  untouched (``max_batch_size`` = the largest swept size, no queue delay, no
  preferred sizes, the scenario's instance count). For each batch size ``b``,
  ``warmup`` then up to ``samples`` back-to-back requests holding ``b`` images,
  one at a time (at most ``max_seconds_per_size`` seconds). After every request
  Triton's statistics extension (``/v2/models/<m>/stats``) is read: the change of
  ``batch_stats[b].compute_infer`` is exactly that batch's compute time (also
  ``compute_input`` / ``compute_output`` and the queue time), next to the client
  latency. This is the per-batch service-time distribution calibration fits.
- :func:`concurrency_sweep`: a replica with the scenario's own batching, ``c``
  closed-loop users with no think time (batch-1 requests) for each ``c``:
  throughput and latency percentiles vs concurrency, and the mean executed
  batch size / queue time from Triton's counters.
- :func:`startup_samples`: start a fresh server process ``n`` times; process
  start -> HTTP live -> model ready, each.
"""
from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import model as mdl
from .scrape import model_counters, parse_prometheus
from .triton import MODEL_NAME, TritonServer, http_get, write_model_repository

COMPUTE_COLUMNS = ("batch_size", "sample", "compute_infer_ms", "compute_input_ms", "compute_output_ms",
                   "queue_ms", "client_ms")
CONCURRENCY_COLUMNS = ("concurrency", "requests", "failures", "duration_s", "throughput_rps", "avg_ms", "p50_ms",
                       "p90_ms", "p95_ms", "p99_ms", "mean_batch_size", "mean_queue_ms", "mean_compute_ms_per_request")
STARTUP_COLUMNS = ("sample", "t_start", "process_to_live_s", "live_to_ready_s", "process_to_ready_s")


def _stats(url: str) -> dict:
    st, body = http_get(f"{url}/v2/models/{MODEL_NAME}/stats", 2.0)
    if st != 200:
        raise RuntimeError(f"statistics request failed (HTTP {st}) at {url}")
    return json.loads(body)["model_stats"][0]


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
    b = replace(scenario.batching, max_batch_size=max(max(batch_sizes), 1), preferred_batch_sizes=(),
                max_queue_delay_us=0, max_queue_size=0, queue_timeout_us=0)
    repo = write_model_repository(workdir / "repo_compute", b, stack.onnx_threads)
    srv = TritonServer(repo, "sweep", workdir / "sweep_compute.log").start()
    rows: list[tuple] = []
    try:
        srv.wait_ready(stack.ready_timeout_s)
        cl = th.InferenceServerClient(srv.url[len("http://"):], network_timeout=stack.request_timeout_s)
        outs = [th.InferRequestedOutput("logits", binary_data=True)]
        for bsz in batch_sizes:
            x = mdl.synthetic_images(bsz, seed + bsz)
            inp = th.InferInput("image", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x, binary_data=True)
            for _ in range(warmup):
                cl.infer(MODEL_NAME, [inp], outputs=outs)
            prev = _stats(srv.url)
            t_end = time.monotonic() + max_seconds
            for k in range(samples):
                t0 = time.perf_counter()
                cl.infer(MODEL_NAME, [inp], outputs=outs)
                client_ms = (time.perf_counter() - t0) * 1000
                cur = _stats(srv.url)
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
    from .loadgen import run_load
    workdir = Path(workdir)
    repo = write_model_repository(workdir / "repo_concurrency", scenario.batching, stack.onnx_threads)
    srv = TritonServer(repo, "sweep", workdir / "sweep_concurrency.log").start()
    rows = []
    try:
        srv.wait_ready(stack.ready_timeout_s)
        for c in levels:
            before = model_counters(parse_prometheus(http_get(srv.metrics_url, 2.0)[1].decode()), MODEL_NAME)
            res = run_load({"url": srv.url, "model": MODEL_NAME, "mode": "closed", "duration_s": duration_s,
                            "seed": seed + c, "users": c, "think": 0.0, "timeout_s": stack.request_timeout_s},
                           workdir / f"concurrency_{c}")
            after = model_counters(parse_prometheus(http_get(srv.metrics_url, 2.0)[1].decode()), MODEL_NAME)
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
                         d.get("nv_inference_compute_infer_duration_us", 0.0) / succ / 1000 if succ else float("nan")))
            if progress:
                progress(1)
    finally:
        srv.stop()
    return rows


def startup_samples(scenario, stack, workdir: str | Path, n: int, progress=None) -> list[tuple]:
    workdir = Path(workdir)
    repo = write_model_repository(workdir / "repo_startup", scenario.batching, stack.onnx_threads)
    rows = []
    for k in range(n):
        srv = TritonServer(repo, f"startup{k}", workdir / f"startup_{k}.log").start()
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
