"""Open-loop arrival times for a workload spec, and samples of a duration distribution.

:func:`arrival_times` uses the simulator's shared generator
(``simulator.workload.arrival_times``) when that module exists, so the real
load and the simulated load are the same sequence for the same seed; until
then (or if it is absent) the minimal generator here is used:

- ``poisson``: homogeneous Poisson process at ``rate_rps``;
- ``schedule``: non-homogeneous Poisson process with the segments' rate
  function (time-rescaling: unit-rate points mapped through the inverse of the
  cumulative rate); the last segment's final rate holds after the schedule ends;
- ``trace``: CSV with a rate column (default ``rps``), one row per trace second
  (or a ``time_s`` column); the rate at run time ``t`` is
  ``scale * speedup * rps(offset_s + t * speedup)`` (time compression keeps the
  trace's request count per trace second);
- ``timestamps``: CSV column of arrival timestamps (seconds); run time is
  ``(ts - first - offset_s) / speedup``; ``scale`` thins (< 1) or copies (> 1)
  arrivals at random.
"""
from __future__ import annotations

import csv
import math

import numpy as np

from simulator.config import Dist, Segment, WorkloadSpec


def segment_rate(s: Segment, t: np.ndarray) -> np.ndarray:
    """Rate (req/s) of segment ``s`` at times ``t`` (seconds into the segment)."""
    if s.kind == "constant":
        return np.full_like(t, s.rate_rps)
    if s.kind == "step":
        return np.where(t < s.at_s, s.rate_rps, s.to_rps)
    if s.kind == "ramp":
        return s.rate_rps + (s.to_rps - s.rate_rps) * np.clip(t / s.duration_s, 0, 1)
    if s.kind == "spike":
        return np.where((t >= s.at_s) & (t < s.at_s + s.width_s), s.peak_rps, s.rate_rps)
    if s.kind == "sinusoid":
        return np.maximum(0.0, s.rate_rps + s.amplitude_rps * np.sin(2 * math.pi * t / s.period_s))
    raise ValueError(f"unknown segment kind {s.kind!r}")


def rate_function(w: WorkloadSpec):
    """``f(t: ndarray) -> rate`` for poisson / schedule / trace workloads (run seconds)."""
    if w.kind == "poisson":
        return lambda t: np.full_like(np.asarray(t, float), w.rate_rps)
    if w.kind == "schedule":
        starts = np.cumsum([0.0] + [s.duration_s for s in w.segments])

        def f(t):
            t = np.asarray(t, float)
            out = np.zeros_like(t)
            for i, s in enumerate(w.segments):
                m = (t >= starts[i]) & (t < starts[i + 1])
                out[m] = segment_rate(s, t[m] - starts[i])
            last = w.segments[-1]
            m = t >= starts[-1]
            out[m] = segment_rate(last, np.full(int(m.sum()), last.duration_s))
            return out
        return f
    if w.kind == "trace":
        times, rates = _read_trace(w)

        def f(t):
            tt = w.offset_s + np.asarray(t, float) * w.speedup
            idx = np.clip(np.searchsorted(times, tt, side="right") - 1, 0, len(rates) - 1)
            r = rates[idx] * w.scale * w.speedup
            if w.length_s:
                r = np.where(tt < w.offset_s + w.length_s, r, 0.0)
            return np.where(tt <= times[-1] + 1.0, r, 0.0)
        return f
    raise ValueError(f"workload kind {w.kind!r} has no rate function")


def _read_csv_column(path: str, column: str) -> tuple[list[str], dict[str, list[str]]]:
    with open(path, newline="") as f:
        rd = csv.DictReader(f)
        if rd.fieldnames is None or column not in rd.fieldnames:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(rd.fieldnames or [])})")
        cols: dict[str, list[str]] = {k: [] for k in rd.fieldnames}
        for row in rd:
            for k in rd.fieldnames:
                cols[k].append(row[k])
    return list(cols), cols


def _read_trace(w: WorkloadSpec):
    names, cols = _read_csv_column(w.path, w.column)
    rates = np.array([float(x) for x in cols[w.column]])
    times = np.array([float(x) for x in cols["time_s"]]) if "time_s" in cols else np.arange(len(rates), dtype=float)
    return times, rates


def _inhomogeneous(rate, duration_s: float, rng: np.random.Generator, dt: float = 0.01) -> np.ndarray:
    grid = np.arange(0.0, duration_s + dt, dt)
    r = rate(grid)
    cum = np.concatenate([[0.0], np.cumsum((r[1:] + r[:-1]) * 0.5 * dt)])
    total = cum[-1]
    if total <= 0:
        return np.zeros(0)
    n = rng.poisson(total)
    u = np.sort(rng.uniform(0.0, total, n))
    t = np.interp(u, cum, grid)
    return t[t < duration_s]


def arrival_times(w: WorkloadSpec, duration_s: float, seed: int) -> np.ndarray:
    """Sorted arrival times in ``[0, duration_s)`` seconds for an open-loop workload."""
    try:
        from simulator.workload import arrival_times as shared  # the simulator's generator, when present
    except ImportError:
        shared = None
    if shared is not None:
        return np.asarray(shared(w, duration_s, seed), dtype=float)
    rng = np.random.default_rng([seed, 6])
    if w.kind == "closed_loop":
        raise ValueError("closed_loop workloads have no precomputed arrivals")
    if w.kind == "poisson":
        n = rng.poisson(w.rate_rps * duration_s)
        return np.sort(rng.uniform(0, duration_s, n))
    if w.kind in ("schedule", "trace"):
        return _inhomogeneous(rate_function(w), duration_s, rng)
    if w.kind == "timestamps":
        _, cols = _read_csv_column(w.path, w.column)
        ts = np.sort(np.array([float(x) for x in cols[w.column]]))
        t = (ts - ts[0] - w.offset_s) / w.speedup
        if w.length_s:
            t = t[t < w.length_s / w.speedup]
        t = t[t >= 0]
        whole, frac = int(w.scale), w.scale - int(w.scale)
        parts = [t] * whole + ([t[rng.uniform(size=len(t)) < frac]] if frac > 0 else [])
        t = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
        return t[t < duration_s]
    raise ValueError(f"unknown workload kind {w.kind!r}")


def offered_rate(w: WorkloadSpec, t: np.ndarray) -> np.ndarray:
    """Target offered load (req/s) at run times ``t`` (NaN for closed-loop / timestamps)."""
    if w.kind in ("poisson", "schedule", "trace"):
        return rate_function(w)(np.asarray(t, float))
    return np.full(len(np.atleast_1d(t)), np.nan)


# --------------------------------------------------------------------------- durations


def sample_dist(d: Dist, rng: np.random.Generator, n: int | None = None):
    """Samples of a :class:`~simulator.config.Dist` (``mean`` is of the whole variable, shift included)."""
    size = 1 if n is None else n
    if d.kind == "deterministic":
        x = np.full(size, d.mean)
    elif d.kind == "empirical":
        q = np.asarray(d.quantiles, float)
        x = np.interp(rng.uniform(size=size), np.linspace(0, 1, len(q)), q)
    else:
        m = d.mean - d.shift
        if d.kind == "exponential":
            x = rng.exponential(m, size)
        elif d.kind == "gamma":
            k = 1.0 / d.cv ** 2
            x = rng.gamma(k, m / k, size)
        elif d.kind == "lognormal":
            s2 = math.log(1 + d.cv ** 2)
            x = rng.lognormal(math.log(m) - s2 / 2, math.sqrt(s2), size)
        elif d.kind == "weibull":
            k = _weibull_shape(d.cv)
            x = m / math.gamma(1 + 1 / k) * rng.weibull(k, size)
        else:
            raise ValueError(f"unknown distribution kind {d.kind!r}")
        x = x + d.shift
    return float(x[0]) if n is None else x


def _weibull_shape(cv: float) -> float:
    lo, hi = 0.05, 200.0
    for _ in range(100):
        k = math.sqrt(lo * hi)
        g1, g2 = math.gamma(1 + 1 / k), math.gamma(1 + 2 / k)
        c = math.sqrt(max(g2 / g1 ** 2 - 1, 0))
        lo, hi = (k, hi) if c > cv else (lo, k)
    return math.sqrt(lo * hi)
