"""Measured vs simulated, like with like: the one summary of a side and the one comparison table.

Used by the calibration (:mod:`calibration.fit`: in-sample, held-out and noise-floor tables;
``calibration.check``: one run) and by the sim-to-real validation (``cluster.validate``: one row per
policy). Both sides of a comparison are summarised by :func:`summarize_side` with the same definitions,
and compared by :func:`compare` against a set of targets.

Summary of a side (requests *sent* in ``[warmup_s, duration_s)``; a measured request never sent counts
as a failure; ``copies`` pooled runs, e.g. simulated seeds: counts and cost per run, percentiles pooled):

- ``requests``, ``successes``, ``failures``, ``late`` (successes slower than ``slo_ms``);
- ``mean_ms``, ``p50_ms``, ``p95_ms``, ``p99_ms``: client latency of successes;
- ``throughput_rps``: successes per second of the window;
- ``failure_rate`` = failures / requests; ``slo_attainment`` = successes within ``slo_ms`` / requests;
  ``slo_violation_rate`` = (late + failures) / requests = 1 - ``slo_attainment``;
- with a replica history (``(requested, gone)`` pairs): ``replica_seconds`` (replica time clipped to the
  window) and ``mean_replicas``.

A comparison entry per metric: ``real``, ``sim``, ``abs_err`` (sim - real), ``rel_err`` ((sim - real) /
real; NaN when real is 0 or not finite), and, for a metric with a target, ``target`` ("rel <= 0.1" or
"abs <= 0.02") and ``within_target``.

Targets (what each command checks):

- :data:`CALIBRATION_TARGETS` (``calibration.fit`` on held-out runs, ``calibration.check``): p50 and p95
  within 10 %, p99 within 15 %, throughput within 3 %, SLO attainment within 2 points -- the simulator must
  reproduce one measured run's latency distribution;
- :data:`VALIDATION_TARGETS` (``cluster.validate``): replica-seconds within 10 % and p95 within 15 % per
  policy -- an autoscaled run's cost and tail latency (plus the ranking of policies, in
  :mod:`cluster.validate.stats`).
"""
from __future__ import annotations

import math

import numpy as np

CALIBRATION_METRICS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "failure_rate", "slo_attainment")
CALIBRATION_TARGETS = {"p50_ms": ("rel", 0.10), "p95_ms": ("rel", 0.10), "p99_ms": ("rel", 0.15),
                       "throughput_rps": ("rel", 0.03), "slo_attainment": ("abs", 0.02)}
VALIDATION_METRICS = ("replica_seconds", "mean_replicas", "slo_violation_rate", "p50_ms", "p95_ms", "p99_ms",
                      "failures", "requests", "scaling_actions")
VALIDATION_TARGETS = {"replica_seconds": ("rel", 0.10), "p95_ms": ("rel", 0.15)}


def replica_seconds(reps, a: float, b: float) -> float:
    """Sum over replicas of ``[requested, gone)`` overlapping ``[a, b]`` (gone = inf: still alive)."""
    return float(sum(max(0.0, min(g, b) - max(r, a)) for r, g in reps))


def summarize_side(t_send, lat_ms, ok, warmup_s: float, duration_s: float, slo_ms: float, copies: int = 1,
                   replicas=None) -> dict:
    """Headline figures of one side (see the module docstring)."""
    t = np.asarray(t_send, float)
    sel = ~np.isfinite(t) | ((t >= warmup_s) & (t < duration_s))
    lat = np.asarray(lat_ms, float)[sel]
    okm = np.asarray(ok, bool)[sel]
    good = lat[okm]
    n = int(sel.sum())
    failed = int((~okm).sum())
    late = int((good > slo_ms).sum())
    win = duration_s - warmup_s
    q = np.percentile(good, [50, 95, 99]) if len(good) else [math.nan] * 3
    out = {"requests": n / copies, "successes": int(len(good)) / copies, "failures": failed / copies,
           "late": late / copies, "mean_ms": float(good.mean()) if len(good) else math.nan,
           "p50_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]),
           "throughput_rps": len(good) / copies / win if win > 0 else math.nan,
           "failure_rate": failed / n if n else math.nan,
           "slo_attainment": float((good <= slo_ms).sum()) / n if n else math.nan,
           "slo_violation_rate": (late + failed) / n if n else math.nan}
    if replicas is not None:
        cost = replica_seconds(replicas, warmup_s, duration_s) / copies
        out["replica_seconds"] = cost
        out["mean_replicas"] = cost / win if win > 0 else math.nan
    return out


def rel_err(sim: float, real: float) -> float:
    """``(sim - real) / real``; NaN when either is not a finite number or ``real`` is 0."""
    if not (isinstance(real, (int, float)) and isinstance(sim, (int, float))) or not math.isfinite(real) \
            or not math.isfinite(sim) or real == 0:
        return math.nan
    return (sim - real) / real


def compare(real: dict, sim: dict, metrics=CALIBRATION_METRICS, targets=None) -> dict:
    """Per metric of ``metrics``: real, sim, absolute and relative error, and the target check (see module doc).
    ``targets`` defaults to :data:`CALIBRATION_TARGETS`."""
    targets = CALIBRATION_TARGETS if targets is None else targets
    out = {}
    for k in metrics:
        r, s = real.get(k, math.nan), sim.get(k, math.nan)
        num = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (r, s))
        e = {"real": r, "sim": s, "abs_err": (s - r) if num else math.nan, "rel_err": rel_err(s, r)}
        if k in targets:
            kind, tol = targets[k]
            err = abs(e["rel_err"] if kind == "rel" else e["abs_err"])
            e["target"] = f"{kind} <= {tol:g}"
            e["within_target"] = bool(math.isfinite(err) and err <= tol)
        out[k] = e
    return out


__all__ = ["CALIBRATION_METRICS", "CALIBRATION_TARGETS", "VALIDATION_METRICS", "VALIDATION_TARGETS", "compare",
           "rel_err", "replica_seconds", "summarize_side"]
