"""Per-batch service-time model: a quantile table per batch size.

Every family (deterministic, exponential, gamma, lognormal, Weibull, empirical)
is compiled into its quantile function ``Q_b(u)`` for each batch size
``b = 1..max_batch_size`` sampled on a logit-spaced grid of probability levels
(dense in both tails, from 1e-10 to 1 - 1e-10), so a draw is one O(1)
interpolation of a uniform from :mod:`simulator.rng` — the same arithmetic in
both engines, and cheap inside compiled code.

Batch sizes missing from the spec are interpolated by mixing the quantile
functions of the nearest listed sizes linearly in ``b`` (so means, and every
quantile, are linear between listed sizes); outside the listed range the
nearest listed quantile function is scaled by the ratio of means of a linear
mean-vs-batch-size line (through the two nearest listed sizes, or, with one
listed size, ``mean(b) = mean(1) * (1 + batch_slope * (b - 1))``), floored at
10% of the nearest listed mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from simulator.config import Dist, ServiceSpec

GRID_N = 4097
_L = math.log((1 - 1e-10) / 1e-10)           # logit range covered by the table
GRID_X = np.linspace(-_L, _L, GRID_N)         # logit(u) grid
GRID_U = np.array([1.0 / (1.0 + math.exp(-x)) for x in GRID_X])   # expit, as scipy.special.expit
_DX = GRID_X[1] - GRID_X[0]


def weibull_shape_for_cv(cv: float) -> float:
    """Weibull shape k whose coefficient of variation is ``cv``."""
    from scipy import optimize, special   # imported only when needed: ~0.5 s at start-up

    def f(logk):
        k = math.exp(logk)
        g1 = special.gamma(1 + 1 / k)
        return special.gamma(1 + 2 / k) / g1 ** 2 - 1 - cv ** 2
    return math.exp(optimize.brentq(f, math.log(0.05), math.log(500.0)))


def quantile_function(d: Dist, u: np.ndarray) -> np.ndarray:
    """Exact quantile function of ``d`` at probability levels ``u`` (same unit as ``d``).

    Gamma, lognormal and Weibull use the same special functions, in the same arithmetic,
    as ``scipy.stats``' ``gamma`` / ``lognorm`` / ``weibull_min`` ``ppf`` (identical
    results), without importing ``scipy.stats`` (over a second at start-up).
    """
    u = np.asarray(u, dtype=float)
    if d.kind == "empirical":
        q = np.asarray(d.quantiles, dtype=float)
        return np.interp(u, np.linspace(0, 1, len(q)), q)
    m = d.mean - d.shift
    if d.kind == "deterministic" or m <= 0:
        return np.full_like(u, d.mean)
    if d.kind == "exponential":
        x = -m * np.log1p(-u)
    elif d.kind == "gamma":
        from scipy import special
        k = 1.0 / d.cv ** 2
        x = special.gammaincinv(k, u) * (m / k)
    elif d.kind == "lognormal":
        from scipy import special
        s2 = math.log1p(d.cv ** 2)
        x = np.exp(math.sqrt(s2) * special.ndtri(u)) * (m * math.exp(-s2 / 2))
    elif d.kind == "weibull":
        from scipy import special
        k = weibull_shape_for_cv(d.cv)
        x = pow(-special.log1p(-u), 1.0 / k) * (m / special.gamma(1 + 1 / k))
    else:  # pragma: no cover - config validation prevents it
        raise ValueError(f"unknown distribution kind {d.kind!r}")
    return d.shift + x


def table_mean(row: np.ndarray) -> float:
    """Mean of a tabulated quantile function (trapezoid in u)."""
    return float(np.trapz(row, GRID_U) + row[0] * GRID_U[0] + row[-1] * (1 - GRID_U[-1]))


@dataclass
class ServiceModel:
    """Compiled service model: ``table[b-1]`` is the quantile row of batch size ``b`` (ms)."""

    table: np.ndarray          # (max_batch, GRID_N) float64, milliseconds
    overhead: np.ndarray       # (GRID_N,) float64, milliseconds
    overhead_zero: bool

    @property
    def max_batch(self) -> int:
        return self.table.shape[0]

    def mean_ms(self, b: int) -> float:
        return table_mean(self.table[b - 1])

    def sample_ms(self, b: int, u: float) -> float:
        return float(draw(self.table[b - 1], u))


def build_service_model(spec: ServiceSpec, max_batch: int) -> ServiceModel:
    listed = dict(spec.per_batch)
    sizes = sorted(listed)
    rows = {b: quantile_function(listed[b], GRID_U) for b in sizes}
    means = {b: table_mean(rows[b]) for b in sizes}

    def mean_line(b: int, side: str) -> float:
        if len(sizes) == 1:
            b1 = sizes[0]
            return means[b1] * (1 + spec.batch_slope * (b - 1)) / (1 + spec.batch_slope * (b1 - 1))
        b1, b2 = (sizes[0], sizes[1]) if side == "low" else (sizes[-2], sizes[-1])
        return means[b1] + (means[b2] - means[b1]) * (b - b1) / (b2 - b1)

    table = np.empty((max_batch, GRID_N))
    for b in range(1, max_batch + 1):
        if b in rows:
            table[b - 1] = rows[b]
        elif b < sizes[0] or b > sizes[-1]:
            near = sizes[0] if b < sizes[0] else sizes[-1]
            m = max(mean_line(b, "low" if b < sizes[0] else "high"), 0.1 * means[near])
            table[b - 1] = rows[near] * (m / means[near]) if means[near] > 0 else rows[near]
        else:
            hi = next(s for s in sizes if s > b)
            lo = max(s for s in sizes if s < b)
            w = (b - lo) / (hi - lo)
            table[b - 1] = (1 - w) * rows[lo] + w * rows[hi]
    ov = quantile_function(spec.overhead, GRID_U)
    return ServiceModel(table=np.ascontiguousarray(table), overhead=ov,
                        overhead_zero=bool(np.all(ov == 0)))


@njit(cache=True)
def draw(row, u):
    """Interpolate a tabulated quantile function at probability ``u`` in (0, 1)."""
    x = math.log(u / (1.0 - u))
    pos = (x + 23.025850929840455) / 0.01124309127433616  # (x - GRID_X[0]) / dx
    if pos <= 0.0:
        return row[0]
    n = row.shape[0]
    if pos >= n - 1:
        return row[n - 1]
    i = int(pos)
    f = pos - i
    return row[i] + f * (row[i + 1] - row[i])


assert abs(GRID_X[0] + 23.025850929840455) < 1e-9 and abs(_DX - 0.01124309127433616) < 1e-12, \
    "grid constants in draw() are out of date"


def saturation_rps(sc, replicas: int = 1, model: ServiceModel | None = None) -> float:
    """Items per second ``replicas`` replicas of scenario ``sc`` process with the best batch size back to
    back on every instance (no contention, no overhead): the throughput bound that capacity searches and
    memory estimates start from."""
    model = model or build_service_model(sc.service, sc.batching.max_batch_size)
    best = max(b / max(model.mean_ms(b), 1e-9) for b in range(1, model.max_batch + 1))
    return float(replicas * sc.batching.instances * best * 1e3)
