"""Open-loop arrival processes: Poisson, rate schedules, rate traces, timestamp replay.

All open-loop kinds are (possibly non-homogeneous) arrival processes generated
in fixed chunks of simulated time (``CHUNK_S``), each chunk from its own seeded
generator ``(seed, ARRIVAL, chunk index)``, so the arrivals do not depend on
who asks for them or how the run is sliced (memory stays bounded for long runs).

- ``poisson``: homogeneous, ``rate_rps``.
- ``schedule``: segments one after another (constant, step, ramp, spike,
  sinusoid); after the last segment its final rate holds. Generated exactly by
  thinning against the chunk's peak rate.
- ``trace``: per-second rate CSV (header ``rps``). Simulated time ``t`` maps to
  trace second ``offset_s + t * speedup``; the rate there is ``rps * scale``
  (time is compressed, rates are not). Piecewise-constant Poisson.
- ``timestamps``: exact arrival instants, from a CSV column (datetimes or
  seconds, relative to the first one) or from the spec's in-memory ``times``
  (``times_s`` in YAML; seconds used as given, not shifted to start at 0 --
  calibration replays measured send times this way), window ``[offset_s, offset_s + length_s)``
  in trace time, divided by ``speedup``. ``scale < 1`` keeps each arrival with
  probability ``scale``; ``scale > 1`` emits ``floor(scale)`` or ``ceil(scale)``
  copies, extra copies displaced by a uniform fraction of the gap to the next
  arrival (so copies never coincide).

Closed-loop users are not an arrival process (arrivals depend on responses);
the engines generate them (see :mod:`simulator.engine`).
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np

from simulator.config import ConfigError, Segment, WorkloadSpec
from simulator.rng import ARRIVAL

CHUNK_S = 10.0


# --------------------------------------------------------------------------- rate functions


def segment_rate(seg: Segment, t: np.ndarray) -> np.ndarray:
    """Rate (rps) of one schedule segment at segment-local times ``t``."""
    t = np.asarray(t, dtype=float)
    if seg.kind == "constant":
        return np.full_like(t, seg.rate_rps)
    if seg.kind == "step":
        return np.where(t < seg.at_s, seg.rate_rps, seg.to_rps)
    if seg.kind == "ramp":
        return seg.rate_rps + (seg.to_rps - seg.rate_rps) * np.clip(t / seg.duration_s, 0, 1)
    if seg.kind == "spike":
        return np.where((t >= seg.at_s) & (t < seg.at_s + seg.width_s), seg.peak_rps, seg.rate_rps)
    return np.maximum(seg.rate_rps + seg.amplitude_rps * np.sin(2 * np.pi * t / seg.period_s), 0.0)


def schedule_rate(segments, t: np.ndarray) -> np.ndarray:
    """Rate of a whole schedule at absolute times ``t`` (last segment's end rate holds after)."""
    t = np.asarray(t, dtype=float)
    out = np.empty_like(t)
    start = 0.0
    done = np.zeros(t.shape, bool)
    for seg in segments:
        m = (~done) & (t < start + seg.duration_s)
        out[m] = segment_rate(seg, t[m] - start)
        done |= m
        start += seg.duration_s
    if (~done).any():
        last = segments[-1]
        out[~done] = segment_rate(last, np.full((~done).sum(), last.duration_s - 1e-9))
    return out


def schedule_duration(segments) -> float:
    return float(sum(s.duration_s for s in segments))


COLUMN_KINDS = ("rate", "time")


@functools.lru_cache(maxsize=8)
def _read_column(path: str, column: str, kind: str, mtime: float) -> np.ndarray:
    import pandas as pd
    try:
        df = pd.read_csv(path, usecols=[column], skip_blank_lines=False)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{path}: file is empty (expected a CSV with a '{column}' column)") from None
    except ValueError as e:
        raise ConfigError(f"{path}: no column '{column}' ({e})") from None
    except Exception as e:  # parser errors etc.
        raise ConfigError(f"{path}: cannot read CSV: {e}") from None
    col = df[column]
    filled = np.flatnonzero(col.notna().to_numpy())
    col = col.iloc[:filled[-1] + 1] if len(filled) else col.iloc[:0]     # trailing blank lines ignored
    if not len(col):
        raise ConfigError(f"{path}: column '{column}' has no values (an empty "
                          f"{'trace' if kind == 'rate' else 'timestamps file'})")
    what = "not a number" if kind == "rate" else "not a number or timestamp"

    def bad_row(mask, num) -> None:
        """One line naming the first bad row: its line in the file (the header is row 1) and value."""
        i = int(np.flatnonzero(mask)[0])
        raw = col.iloc[i]
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            problem = "empty value"
        else:
            problem = f"{'not a finite number' if np.isinf(num[i]) else what} ({raw!r})"
        raise ConfigError(f"{path}: column '{column}' row {i + 2}: {problem}")

    if col.dtype != object:
        v = col.to_numpy(dtype=float)
        if not np.all(np.isfinite(v)):
            bad_row(~np.isfinite(v), v)
        return v
    num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    if kind == "rate" or np.isfinite(num[0]):
        # numbers only (a timestamps column whose first value is a number holds seconds)
        if not np.all(np.isfinite(num)):
            bad_row(~np.isfinite(num), num)
        return num
    ts = pd.to_datetime(col, errors="coerce", format="mixed")
    bad = ts.isna().to_numpy() | ~np.isnan(num)        # date-times only: a bare number would be read as a date
    if bad.any():
        bad_row(bad, num)
    return (ts - ts.iloc[0]).dt.total_seconds().to_numpy()


def read_column(path: str, column: str, kind: str = "rate") -> np.ndarray:
    """One column of a CSV as floats: ``kind='rate'``, numbers; ``kind='time'``, numbers (seconds) or
    date-times (seconds after the first). Blank lines at the end are ignored; an empty column, a blank
    or non-numeric / non-finite value, or a column mixing numbers and date-times is a
    :class:`ConfigError` naming the file, the row (its line in the file, the header being row 1) and
    the value."""
    if kind not in COLUMN_KINDS:
        raise ValueError(f"kind must be one of {', '.join(COLUMN_KINDS)} (got {kind!r})")
    if not os.path.exists(path):
        raise ConfigError(f"{path}: file not found (workload.path)")
    return _read_column(path, column, kind, os.path.getmtime(path))


def trace_rates(spec: WorkloadSpec) -> np.ndarray:
    """The per-trace-second rates of the window, times ``scale``."""
    r = read_column(spec.path, spec.column)
    if (r < 0).any():
        bad = int(np.flatnonzero(r < 0)[0])
        raise ConfigError(f"{spec.path}: column '{spec.column}' row {bad + 2}: negative rate {r[bad]}")
    a = int(spec.offset_s)
    if a >= len(r):
        raise ConfigError(f"workload.offset_s: {spec.offset_s} is beyond the end of {spec.path} "
                          f"({len(r)} seconds)")
    b = len(r) if spec.length_s <= 0 else min(len(r), a + int(math.ceil(spec.length_s)))
    return r[a:b] * spec.scale


@functools.lru_cache(maxsize=8)
def _timestamps(path, column, offset, length, speedup, scale, seed, mtime):
    t = read_column(path, column, "time")
    if np.any(np.diff(t) < 0):
        t = np.sort(t)
    return _window_scale(t - t[0], offset, length, speedup, scale, seed)


def _window_scale(t, offset, length, speedup, scale, seed):
    t = t[(t >= offset) & ((length <= 0) | (t < offset + length))] - offset
    t = t / speedup
    if scale != 1.0 and len(t):
        rng = np.random.default_rng([seed, ARRIVAL, 999_999])
        n = np.floor(scale).astype(int) + (rng.random(len(t)) < (scale - math.floor(scale)))
        n = np.asarray(n, dtype=int)
        gaps = np.diff(t, append=t[-1] + (np.mean(np.diff(t)) if len(t) > 1 else 1.0))
        reps = np.repeat(np.arange(len(t)), n)
        copy_idx = np.concatenate([np.arange(k) for k in n]) if len(n) else np.zeros(0, int)
        t = t[reps] + np.where(copy_idx > 0, rng.random(len(reps)) * gaps[reps], 0.0)
        t.sort()
    t.setflags(write=False)
    return t


def timestamp_arrivals(spec: WorkloadSpec, seed: int) -> np.ndarray:
    """All arrival instants (s, sorted, read-only) of a ``timestamps`` workload's window."""
    if spec.times:
        return _window_scale(np.sort(np.asarray(spec.times, dtype=float)), spec.offset_s, spec.length_s,
                             spec.speedup, spec.scale, seed)
    if not os.path.exists(spec.path):
        raise ConfigError(f"{spec.path}: file not found (workload.path)")
    return _timestamps(spec.path, spec.column, spec.offset_s, spec.length_s, spec.speedup, spec.scale, seed,
                       os.path.getmtime(spec.path))


def expected_arrivals(spec: WorkloadSpec, duration_s: float, seed: int = 0) -> float:
    """Expected number of open-loop arrivals in ``[0, duration_s)``, without generating them.

    poisson: ``rate_rps * duration_s``; schedule: the integral of its rate (trapezoids on a
    20001-point grid over the schedule, then its final rate for the rest of the run); trace:
    the sum of the window's per-second rates over the trace seconds the run covers, divided by
    ``speedup`` (no arrivals after the window's end, as :class:`ArrivalSource` generates them);
    timestamps: the count of the window's instants before ``duration_s`` (exact). Closed loop:
    NaN (arrivals depend on responses; see :mod:`simulator.memory`).
    """
    if spec.kind == "poisson":
        return spec.rate_rps * duration_s
    if spec.kind == "schedule":
        span = min(duration_s, schedule_duration(spec.segments))
        t = np.linspace(0.0, span, 20001)
        r = schedule_rate(spec.segments, t)
        total = float(np.sum((r[1:] + r[:-1]) * 0.5) * (t[1] - t[0]))
        if duration_s > span:
            total += float(schedule_rate(spec.segments, np.array([span]))[0]) * (duration_s - span)
        return total
    if spec.kind == "trace":
        r = trace_rates(spec)
        covered = duration_s * spec.speedup               # trace seconds the run covers
        k = int(min(math.floor(covered), len(r)))
        part = float(r[k]) * (covered - k) if k < len(r) else 0.0
        return (float(np.sum(r[:k])) + part) / spec.speedup
    if spec.kind == "timestamps":
        return float(np.searchsorted(timestamp_arrivals(spec, seed), duration_s))
    return float("nan")


def mean_rate(spec: WorkloadSpec, duration_s: float) -> float:
    """Average offered rate over the run (closed loop: NaN)."""
    return expected_arrivals(spec, duration_s) / duration_s


# --------------------------------------------------------------------------- arrival generation


class ArrivalSource:
    """Chunked open-loop arrival generator: ``until(t)`` returns the arrivals in ``[t_prev, t)``."""

    def __init__(self, spec: WorkloadSpec, duration_s: float, seed: int):
        if spec.kind == "closed_loop":
            raise ValueError("closed-loop workloads have no open-loop arrival source")
        self.spec, self.duration, self.seed = spec, float(duration_s), int(seed)
        self._chunk = 0
        self._pending = np.zeros(0)
        self._t = 0.0
        if spec.kind == "trace":
            self._rates = trace_rates(spec)
        if spec.kind == "timestamps":
            self._ts = timestamp_arrivals(spec, self.seed)

    def _gen_chunk(self, k: int) -> np.ndarray:
        a, b = k * CHUNK_S, min((k + 1) * CHUNK_S, self.duration)
        if b <= a:
            return np.zeros(0)
        spec = self.spec
        if spec.kind == "timestamps":
            ts = self._ts
            return ts[np.searchsorted(ts, a):np.searchsorted(ts, b)].copy()
        rng = np.random.default_rng([self.seed, ARRIVAL, k])
        if spec.kind == "poisson":
            n = rng.poisson(spec.rate_rps * (b - a))
            return np.sort(a + rng.random(n) * (b - a))
        if spec.kind == "trace":
            # piecewise-constant pieces of 1/speedup simulated seconds
            piece = 1.0 / spec.speedup
            i0, i1 = int(math.floor(a / piece + 1e-12)), int(math.ceil(b / piece - 1e-12))
            idx = np.arange(i0, i1)
            lo = np.maximum(idx * piece, a)
            hi = np.minimum((idx + 1) * piece, b)
            rate = np.where(idx < len(self._rates), self._rates[np.minimum(idx, len(self._rates) - 1)], 0.0)
            n = rng.poisson(rate * np.maximum(hi - lo, 0))
            t = np.repeat(lo, n) + rng.random(n.sum()) * np.repeat(hi - lo, n)
            return np.sort(t)
        # schedule: thinning against the chunk's peak (grid max, padded)
        grid = np.linspace(a, b, 2001)
        lam_max = float(np.max(schedule_rate(spec.segments, grid))) * 1.02 + 1e-9
        # add exact breakpoints of steps/spikes to the grid maximum
        starts = np.cumsum([0.0] + [s.duration_s for s in spec.segments])
        pts = [x for s0, s in zip(starts, spec.segments) for x in (s0, s0 + s.at_s, s0 + s.at_s + s.width_s)
               if a <= x < b]
        if pts:
            lam_max = max(lam_max, float(np.max(schedule_rate(spec.segments, np.array(pts)))) * 1.02)
        n = rng.poisson(lam_max * (b - a))
        t = np.sort(a + rng.random(n) * (b - a))
        keep = rng.random(n) * lam_max < schedule_rate(spec.segments, t)
        return t[keep]

    def until(self, t: float) -> np.ndarray:
        """All arrivals in ``[previous t, t)`` (sorted)."""
        t = min(t, self.duration)
        parts = [self._pending]
        while self._chunk * CHUNK_S < t:
            parts.append(self._gen_chunk(self._chunk))
            self._chunk += 1
        allp = np.concatenate(parts) if len(parts) > 1 else parts[0]
        cut = np.searchsorted(allp, t)
        out, self._pending = allp[:cut], allp[cut:]
        self._t = t
        return out


def arrival_times(spec: WorkloadSpec, duration_s: float, seed: int) -> np.ndarray:
    """All open-loop arrival instants in ``[0, duration_s)`` (seconds, sorted)."""
    return ArrivalSource(spec, duration_s, seed).until(duration_s)


# --------------------------------------------------------------------------- the shipped request trace

DAY_S = 86400
# the Twitter 2021 per-second request rates shipped with the project (simulator/data/traces/README.md), relative
# to the repository root, and the days every learned part trains on (the tuning and held-out days come after)
SHIPPED_TRACE = "simulator/data/traces/twitter_2021_rps_days01-14.csv.gz"
TRAIN_DAYS = (1, 10)


def load_trace(path: str) -> np.ndarray:
    """Per-second rates (header ``rps``) as a float array; ConfigError (one line) on bad input."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: trace file not found (expected a CSV with header 'rps', one line per second)")
    r = read_column(path, "rps")
    if len(r) == 0:
        raise ConfigError(f"{path}: trace is empty")
    if (r < 0).any():
        raise ConfigError(f"{path}: row {int(np.flatnonzero(r < 0)[0]) + 2}: negative rate")
    return r


def day_range(days, n: int, what: str) -> tuple[int, int]:
    """Trace-second range ``[a, b)`` of inclusive 1-based ``days``, clipped to the trace."""
    if not isinstance(days, (list, tuple)) or len(days) != 2 or not all(isinstance(d, int) for d in days) \
            or not 1 <= days[0] <= days[1]:
        raise ConfigError(f"{what}: must be [first_day, last_day] (1-based, inclusive) (got {days!r})")
    a, b = (days[0] - 1) * DAY_S, min(days[1] * DAY_S, n)
    if b - a < 1200:
        raise ConfigError(f"{what}: days {days} are not in the trace ({n} seconds = {n / DAY_S:.1f} days)")
    return a, b
