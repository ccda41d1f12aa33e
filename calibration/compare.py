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

Batching of a side (:func:`simulated_batching`; the measured side from Triton,
:func:`calibration.measurements.measured_batching`): ``mean_batch_size`` (items per executed batch),
``queue_ms`` (mean scheduler queue time of successes), ``batch_shares`` (share of executed batches per
size); :func:`batch_distance` compares two ``batch_shares`` (total variation distance: the share of
batches that would have to change size, 0 = identical, 1 = disjoint).

A comparison entry per metric: ``real``, ``sim``, ``abs_err`` (sim - real), ``rel_err`` ((sim - real) /
real; NaN when real is 0 or not finite), and, for a metric with a target, ``target`` ("rel <= 0.1" or
"abs <= 0.02") and ``within_target``.

Targets (what each command checks):

- :data:`CALIBRATION_TARGETS` (``calibration.fit`` on held-out runs, ``calibration.check``): p50 and p95
  within 10 %, p99 within 15 %, throughput within 3 %, SLO attainment within 2 points, mean batch size
  within 10 % -- the simulator must reproduce one measured run's latency distribution and batching;
- :data:`BATCHING_TARGETS` (the same commands when Triton batches: a measured run's mean batch size >=
  :data:`BATCHING_MEAN`, :func:`targets_for`): p50 within 10 %, p95 within 15 %, p99 within 20 %,
  throughput within 3 %, SLO attainment within 2 points, mean batch size within 10 % (issue 13) -- a
  request's latency then also depends on the batch it joins, a noisier quantity;
- :data:`PIPELINE_TARGETS` (``calibration.fit`` on a pipeline, end to end on held-out runs; issue 15): p50 within
  10 %, p95 within 15 %, throughput within 3 % (the stages' own figures are reported against the same marks);
- :data:`VALIDATION_TARGETS` (``cluster.validate``): replica-seconds within 10 % and p95 within 15 % per
  policy -- an autoscaled run's cost and tail latency (plus the ranking of policies, in
  :mod:`cluster.validate.stats`).
"""
from __future__ import annotations

import math

import numpy as np

CALIBRATION_METRICS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "failure_rate", "slo_attainment",
                       "mean_batch_size", "queue_ms", "batch_distance")
CALIBRATION_TARGETS = {"p50_ms": ("rel", 0.10), "p95_ms": ("rel", 0.10), "p99_ms": ("rel", 0.15),
                       "throughput_rps": ("rel", 0.03), "slo_attainment": ("abs", 0.02),
                       "mean_batch_size": ("rel", 0.10)}
BATCHING_TARGETS = {"p50_ms": ("rel", 0.10), "p95_ms": ("rel", 0.15), "p99_ms": ("rel", 0.20),
                    "throughput_rps": ("rel", 0.03), "slo_attainment": ("abs", 0.02),
                    "mean_batch_size": ("rel", 0.10)}
PIPELINE_TARGETS = {"p50_ms": ("rel", 0.10), "p95_ms": ("rel", 0.15), "throughput_rps": ("rel", 0.03)}
BATCHING_MEAN = 1.5        # a measurement "batches" when some run's mean batch size reaches this
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


def simulated_batching(arrival_s, dispatch_s, batch_size, ok, warmup_s: float, duration_s: float) -> dict:
    """Batching of simulated requests arriving in ``[warmup_s, duration_s)``: ``mean_batch_size`` (items per
    executed batch: a request in a batch of ``b`` stands for ``1/b`` batch), ``queue_ms`` (mean dispatch -
    arrival of successes), ``batch_shares`` (share of executed batches per size)."""
    a = np.asarray(arrival_s, float)
    b = np.asarray(batch_size, float)
    okm = np.asarray(ok, bool)
    sel = (a >= warmup_s) & (a < duration_s) & (b >= 1)
    out = {"mean_batch_size": math.nan, "queue_ms": math.nan, "batch_shares": {}}
    if sel.any():
        bs = b[sel]
        per_size = {int(k): float((bs == k).sum()) / k for k in np.unique(bs)}
        n = sum(per_size.values())
        out["batch_shares"] = {k: v / n for k, v in sorted(per_size.items())}
        out["mean_batch_size"] = float(len(bs)) / n
    q = sel & okm
    if q.any():
        out["queue_ms"] = float(np.mean(np.asarray(dispatch_s, float)[q] - a[q])) * 1e3
    return out


def batch_distance(p: dict, q: dict) -> float:
    """Total variation distance between two ``{batch size: share}`` (NaN when either is empty)."""
    if not p or not q:
        return math.nan
    p = {int(k): float(v) for k, v in p.items()}
    q = {int(k): float(v) for k, v in q.items()}
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def targets_for(measured: list[dict]) -> tuple[str, dict]:
    """The target set for a calibration whose measured runs' summaries are ``measured``: ``batching``
    (:data:`BATCHING_TARGETS`) when some run's mean batch size reaches :data:`BATCHING_MEAN`, else
    ``calibration`` (:data:`CALIBRATION_TARGETS`)."""
    mb = [m.get("mean_batch_size") for m in measured]
    if any(isinstance(x, (int, float)) and math.isfinite(x) and x >= BATCHING_MEAN for x in mb):
        return "batching", BATCHING_TARGETS
    return "calibration", CALIBRATION_TARGETS


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
        if k == "batch_distance":      # one number: the distance between the two distributions
            d = batch_distance(real.get("batch_shares") or {}, sim.get("batch_shares") or {})
            out[k] = {"real": real.get("batch_shares") or {}, "sim": sim.get("batch_shares") or {},
                      "abs_err": d, "rel_err": math.nan}
            continue
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


__all__ = ["BATCHING_MEAN", "BATCHING_TARGETS", "CALIBRATION_METRICS", "CALIBRATION_TARGETS", "PIPELINE_TARGETS",
           "VALIDATION_METRICS",
           "VALIDATION_TARGETS", "batch_distance", "compare", "rel_err", "replica_seconds", "simulated_batching",
           "summarize_side", "targets_for"]
