"""Latency histograms (a bounded-memory quantile sketch) and accumulator layouts.

Latencies are binned on a log scale, 200 bins per decade from 1 µs to 10^6 ms
(relative bin width 1.16%); quantiles interpolate geometrically inside a bin,
so a quantile read from the sketch is within ~0.6% of the exact one. Runs that
keep per-request records report exact percentiles from the records instead.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

H_LO = -3.0            # log10(ms) of the first bin edge (1 µs)
H_PER_DECADE = 200
H_BINS = 9 * H_PER_DECADE  # up to 10^6 ms

# accumulator layout (interval ``ia`` and run-global ``ga``)
A_ARRIVALS, A_OK, A_FAIL, A_SLO_VIOL, A_QUEUE_S, A_COMPUTE_S, A_EXEC, A_INFER, A_BUSY_S, A_LAT_S, \
    A_REJECTED, A_TIMEOUT, A_DROPPED, A_LAT2_S = range(14)
N_ACC = 14


@njit(cache=True)
def hist_bin(ms):
    if ms <= 0.0:
        return 0
    b = int((math.log10(ms) - H_LO) * H_PER_DECADE)
    if b < 0:
        return 0
    if b >= H_BINS:
        return H_BINS - 1
    return b


def hist_bins(ms: np.ndarray) -> np.ndarray:
    """:func:`hist_bin` of every element of an array (the same bins)."""
    ms = np.asarray(ms, dtype=float)
    pos = ms > 0.0
    b = np.zeros(ms.shape, dtype=np.int64)
    b[pos] = ((np.log10(ms[pos]) - H_LO) * H_PER_DECADE).astype(np.int64)
    return np.clip(b, 0, H_BINS - 1)


def hist_quantiles(h: np.ndarray, qs) -> list[float]:
    """Quantiles (ms) of a latency histogram; NaN when empty."""
    total = int(h.sum())
    if total == 0:
        return [float("nan")] * len(qs)
    c = np.cumsum(h)
    out = []
    for q in qs:
        target = q * total
        b = int(np.searchsorted(c, max(target, 1e-12)))
        b = min(b, len(h) - 1)
        prev = c[b - 1] if b > 0 else 0
        frac = (target - prev) / h[b] if h[b] else 0.5
        frac = min(max(frac, 0.0), 1.0)
        out.append(10 ** (H_LO + (b + frac) / H_PER_DECADE))
    return out


def exact_quantiles(x: np.ndarray, qs) -> list[float]:
    if len(x) == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.quantile(x, qs)]


def safe_div(a: float, b: float) -> float:
    return a / b if b else float("nan")
