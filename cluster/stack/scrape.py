"""Triton Prometheus metrics: parsing, a once-a-second scraper, and per-interval Observations.

Each replica's metrics endpoint (``:8002/metrics``) is scraped every
``interval_s`` through :meth:`Backend.metrics`; every ``nv_*`` sample is
kept as one row ``(t, replica, metric, labels, value)``. Counters used
downstream (per model, cumulative since the replica started):

``nv_inference_request_success`` / ``_failure{reason}``, ``nv_inference_count``
(inferences, i.e. images), ``nv_inference_exec_count`` (executed batches),
``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
``nv_inference_compute_input/infer/output_duration_us`` (summed over requests:
a request in a batch records the whole batch's compute time), and the gauge
``nv_inference_pending_request_count`` (queued requests). Server-wide gauges kept with them:
``nv_cpu_utilization``, ``nv_cpu_memory_used_bytes`` and, on a GPU server (when present),
``nv_gpu_utilization`` and ``nv_gpu_memory_used_bytes`` (summed over the server's GPUs).

The scraper also reads each replica's statistics of the model (``/v2/models/<m>/stats``,
:meth:`Backend.model_stats`): per batch size, the batches executed so far (:func:`batch_counts`) -- the
exact distribution of the batch sizes Triton's dynamic batcher formed, which the Prometheus counters only
give as a mean (``nv_inference_count / nv_inference_exec_count``).

:func:`observation_from_window` turns two scrapes and the client request log
into the :class:`simulator.policy.Observation` a live controller would hand to
a policy, with the metric definitions of that module's docstring.
"""
from __future__ import annotations

import json
import math
import re
import threading
import time
from typing import Iterable, Mapping, Sequence

import numpy as np

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+([^\s]+)(\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_output_duration_us")
GAUGES = ("nv_inference_pending_request_count",)
SERVER_GAUGES = ("nv_cpu_utilization", "nv_cpu_memory_used_bytes", "nv_gpu_utilization", "nv_gpu_memory_used_bytes")


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    """``[(metric, labels, value)]`` for every sample line of a Prometheus text exposition."""
    out = []
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        m = _LINE.match(ln)
        if not m:
            continue
        try:
            v = float(m.group(4))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, v))
    return out


def labels_str(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def model_counters(samples: Iterable[tuple[str, dict, float]], model: str) -> dict[str, float]:
    """One replica's counters for ``model``: metric -> value (failures summed over reasons, and
    also per reason as ``nv_inference_request_failure:<REASON>``)."""
    out: dict[str, float] = {}
    for name, labels, v in samples:
        if labels.get("model") != model and name not in SERVER_GAUGES:
            continue
        out[name] = out.get(name, 0.0) + v
        if name == "nv_inference_request_failure" and "reason" in labels:
            out[f"{name}:{labels['reason']}"] = v
    return out


def batch_counts(stats_json: str) -> dict[int, tuple[int, int]]:
    """``{batch size: (batches executed, their compute_infer ns)}`` from one replica's model statistics
    (``/v2/models/<m>/stats``: ``batch_stats[].compute_infer.count`` counts the batches of that size)."""
    try:
        st = json.loads(stats_json)["model_stats"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return {}
    out = {}
    for bs in st.get("batch_stats") or []:
        ci = bs.get("compute_infer") or {}
        out[int(bs["batch_size"])] = (int(ci.get("count", 0)), int(ci.get("ns", 0)))
    return out


class Scraper:
    """Background thread: every ``interval_s`` scrape all replicas of ``backend``; keep every sample.

    ``rows``: ``(t_epoch, replica, metric, labels, value)``; ``snapshots``:
    ``(t_epoch, {replica: counters})`` for :func:`observation_from_window`; ``batch_rows``:
    ``(t_epoch, replica, batch_size, batches, compute_infer_ns)``, cumulative (:func:`batch_counts`).
    """

    def __init__(self, backend, model: str, interval_s: float = 1.0):
        self.backend, self.model, self.interval_s = backend, model, interval_s
        self.rows: list[tuple[float, str, str, str, float]] = []
        self.batch_rows: list[tuple[float, str, int, int, int]] = []
        self.snapshots: list[tuple[float, dict[str, dict[str, float]]]] = []
        self.states: list[tuple[float, int, int, int]] = []      # (t, desired, ready, pending)
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape_once(self) -> None:
        t = time.time()
        try:
            texts = self.backend.metrics()
        except Exception:
            self.errors += 1
            return
        snap = {}
        for rep, text in texts.items():
            samples = parse_prometheus(text)
            for name, labels, v in samples:
                if name.startswith("nv_"):
                    self.rows.append((t, rep, name, labels_str(labels), v))
            snap[rep] = model_counters(samples, self.model)
        self.snapshots.append((t, snap))
        try:
            stats = self.backend.model_stats()
        except Exception:
            stats = {}
        for rep, text in stats.items():
            for b, (n, ns) in sorted(batch_counts(text).items()):
                self.batch_rows.append((t, rep, b, n, ns))
        try:
            self.states.append((t, int(self.backend.desired), int(self.backend.ready_replicas),
                                int(self.backend.pending_replicas)))
        except Exception:
            pass

    def _loop(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.scrape_once()
            nxt += self.interval_s
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def start(self) -> "Scraper":
        self._thread = threading.Thread(target=self._loop, name="scraper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.scrape_once()      # a final scrape after the load


# --------------------------------------------------------------------------- Observation


def _delta(end: Mapping[str, Mapping[str, float]], start: Mapping[str, Mapping[str, float]], key: str) -> float:
    """Sum over replicas of the counter change; a replica new since ``start`` counts from 0;
    a counter that went down (replica restarted) counts from 0 too."""
    tot = 0.0
    for rep, c in end.items():
        v1 = c.get(key, 0.0)
        v0 = start.get(rep, {}).get(key, 0.0)
        tot += v1 - v0 if v1 >= v0 else v1
    return tot


def observation_from_window(t_start: float, t_end: float, requests: Mapping[str, Sequence] | None,
                            scrape_start: Mapping[str, Mapping[str, float]],
                            scrape_end: Mapping[str, Mapping[str, float]], *, replicas: int, replicas_ready: int,
                            replicas_pending: int, instances: int, slo_ms: float, min_replicas: int,
                            max_replicas: int):
    """The :class:`simulator.policy.Observation` for the interval ``[t_start, t_end)``.

    ``requests``: columns ``t_send`` (s, same clock as t_start/t_end), ``latency_ms``
    and ``status`` ('ok' = success) of the client request log (may be None: then
    the client-side fields are NaN / 0). ``scrape_*``: ``{replica: counters}`` from
    :func:`model_counters` at the interval's ends. ``busy_fraction`` uses Triton's
    per-request compute time: Δcompute_infer x Δexec / Δsuccess estimates the
    instances' busy time (exact when every batch in the interval holds the same
    number of requests). ``inflight`` counts requests sent and not yet answered
    at ``t_end`` (client side: queued + executing + on the wire).
    """
    from simulator.policy import Observation
    iv = max(t_end - t_start, 1e-9)
    nan = float("nan")
    arrival = completion = 0.0
    p50 = p95 = p99 = nan
    viol = nan
    inflight = 0.0
    failures = 0
    if requests is not None and len(requests["t_send"]):
        ts = np.asarray(requests["t_send"], float)
        lat = np.asarray(requests["latency_ms"], float)
        ok = np.asarray([s == "ok" for s in requests["status"]])
        done = ts + np.nan_to_num(lat, nan=0.0) / 1000.0
        arrival = float(((ts >= t_start) & (ts < t_end)).sum()) / iv
        in_win = (done >= t_start) & (done < t_end)
        okw = in_win & ok
        failw = in_win & ~ok
        completion = float(okw.sum()) / iv
        failures = int(failw.sum())
        if okw.any():
            p50, p95, p99 = (float(x) for x in np.percentile(lat[okw], [50, 95, 99]))
        n = int(okw.sum()) + failures
        if n:
            viol = (float((lat[okw] > slo_ms).sum()) + failures) / n
        inflight = float(((ts < t_end) & (done >= t_end)).sum())
    d_succ = _delta(scrape_end, scrape_start, "nv_inference_request_success")
    d_queue = _delta(scrape_end, scrape_start, "nv_inference_queue_duration_us")
    d_count = _delta(scrape_end, scrape_start, "nv_inference_count")
    d_exec = _delta(scrape_end, scrape_start, "nv_inference_exec_count")
    d_comp = _delta(scrape_end, scrape_start, "nv_inference_compute_infer_duration_us")
    queue_ms = d_queue / d_succ / 1000.0 if d_succ > 0 else nan
    batch = d_count / d_exec if d_exec > 0 else nan
    busy_us = d_comp * d_exec / d_succ if d_succ > 0 else 0.0
    cap = instances * max(replicas_ready, 0) * iv * 1e6
    busy = min(1.0, busy_us / cap) if cap > 0 else 0.0
    return Observation(time_s=t_end, interval_s=iv, arrival_rps=arrival, completion_rps=completion,
                       latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99, slo_violation_frac=viol,
                       queue_ms=queue_ms, batch_size=batch, busy_fraction=busy, inflight=inflight,
                       replicas=int(replicas), replicas_ready=int(replicas_ready),
                       replicas_pending=int(replicas_pending), failures=failures, slo_ms=slo_ms,
                       min_replicas=min_replicas, max_replicas=max_replicas)


def latency_summary(latency_ms: Sequence[float], status: Sequence[str], duration_s: float) -> dict:
    """The seed study's headline: average / p50 / p95 / p99 latency (successes), throughput, success rate."""
    lat = np.asarray(latency_ms, float)
    ok = np.asarray([s == "ok" for s in status], bool)
    n = len(lat)
    good = lat[ok]
    pct = (lambda q: float(np.percentile(good, q))) if len(good) else (lambda q: math.nan)
    return {"requests": n, "successes": int(ok.sum()), "failures": int(n - ok.sum()),
            "success_rate": float(ok.sum() / n) if n else math.nan,
            "throughput_rps": float(ok.sum() / duration_s) if duration_s > 0 else math.nan,
            "avg_ms": float(good.mean()) if len(good) else math.nan,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "max_ms": float(good.max()) if len(good) else math.nan}
