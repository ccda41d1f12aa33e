"""What a validation computes beyond the per-side summary and the error table (those are
:mod:`calibration.compare`'s, with :data:`~calibration.compare.VALIDATION_TARGETS`): the pairwise ranking
of policies, replica-count and per-interval latency curves, and what a real run's load was."""
from __future__ import annotations

import math

import numpy as np

def real_load(real: dict, arrivals, caps, min_replicas: int, warmup: float, duration: float) -> dict:
    """What a real run's load was (for :func:`rl.sanity.validation_load`): the share of seconds whose sent load
    (5-s mean) needed more than ``min_replicas`` by the calibrated fleet capacities, the share of time more
    than ``min_replicas`` replicas were requested, and the share of planned requests actually sent."""
    from rl.study import share_above_min
    t = np.asarray(real["t_send"], float)
    t = t[np.isfinite(t) & (t >= warmup) & (t < duration)]
    n = max(1, int(math.floor(duration - warmup)))
    per_s = np.bincount(np.clip((t - warmup).astype(int), 0, n - 1), minlength=n).astype(float)
    grid = np.arange(warmup, duration, 0.25)
    req, _ = replica_curve(real["replicas"], grid)
    out = {"share_above_min": share_above_min(per_s, caps, min_replicas),
           "share_time_above_min": float(np.mean(req > min_replicas)) if len(grid) else 0.0,
           "peak_5s_rps": float(np.max(np.convolve(per_s, np.ones(5) / 5, "valid"))) if n >= 5 else float(per_s.max())}
    if arrivals is not None:
        arr = np.asarray(arrivals, float)
        planned = int(((arr >= warmup) & (arr < duration)).sum())
        out["planned"] = planned
        out["sent"] = int(len(t))
        out["delivered"] = len(t) / planned if planned else 1.0
    return out


def pair_verdict(a: str, sa: dict, b: str, sb: dict, equal_slo_pts: float = 0.5, cost_tie: float = 0.02) -> dict:
    """Which of two policies is better: ``{"winner": name | None, "why": ...}``.

    Equal SLO = violation rates within ``equal_slo_pts`` percentage points: the cheaper wins (a tie
    when costs are within ``cost_tie``). Otherwise the one that is cheaper (or equally cheap) *and*
    has fewer violations wins; cheaper-but-worse is a trade-off (no winner).
    """
    ca, cb = sa["replica_seconds"], sb["replica_seconds"]
    va, vb = sa["slo_violation_rate"], sb["slo_violation_rate"]
    tie = abs(ca - cb) <= cost_tie * max(abs(ca), abs(cb), 1e-9)
    cheaper = a if ca < cb else b
    if abs(va - vb) * 100 <= equal_slo_pts:
        if tie:
            return {"winner": None, "why": "tie (equal cost and SLO)"}
        return {"winner": cheaper, "why": "cheaper at equal SLO"}
    fewer = a if va < vb else b
    if tie:
        return {"winner": fewer, "why": "fewer SLO violations at equal cost"}
    if cheaper == fewer:
        return {"winner": cheaper, "why": "cheaper and fewer SLO violations"}
    return {"winner": None, "why": f"trade-off ({cheaper} cheaper, {fewer} fewer violations)"}


def ranking(real: dict[str, dict], sim: dict[str, dict], equal_slo_pts: float = 0.5) -> dict:
    """Pairwise verdicts on both sides, cost order on both sides, and whether they agree."""
    names = list(real)
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[i], names[j]
            vr = pair_verdict(a, real[a], b, real[b], equal_slo_pts)
            vs = pair_verdict(a, sim[a], b, sim[b], equal_slo_pts)
            pairs.append({"a": a, "b": b, "real": vr, "sim": vs, "agree": vr["winner"] == vs["winner"]})
    order_r = sorted(names, key=lambda n: real[n]["replica_seconds"])
    order_s = sorted(names, key=lambda n: sim[n]["replica_seconds"])
    return {"equal_slo_pts": equal_slo_pts, "pairs": pairs, "cost_order_real": order_r, "cost_order_sim": order_s,
            "cost_order_agrees": order_r == order_s, "agrees": all(p["agree"] for p in pairs)}


def interval_series(t_send, lat_ms, ok, duration: float, step: float, slo_ms: float) -> dict:
    """Per ``step`` bin of send time: arrival rps, p95 latency of successes, violation fraction."""
    t = np.asarray(t_send, float)
    lat = np.asarray(lat_ms, float)
    okm = np.asarray(ok, bool)
    edges = np.arange(0.0, duration + 1e-9, step)
    idx = np.digitize(t, edges) - 1
    rows = {"t_s": [], "arrival_rps": [], "p95_ms": [], "violation_frac": []}
    for k in range(len(edges) - 1):
        m = idx == k
        g = lat[m & okm]
        n = int(m.sum())
        rows["t_s"].append(float(edges[k]))
        rows["arrival_rps"].append(n / step)
        rows["p95_ms"].append(float(np.percentile(g, 95)) if len(g) else math.nan)
        rows["violation_frac"].append(((g > slo_ms).sum() + (m & ~okm).sum()) / n if n else math.nan)
    return rows


def replica_curve(reps: list[tuple[float, float, float, float]], ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(requested, ready) replica counts at times ``ts``; a replica is (requested, ready, leaves rotation, gone)."""
    req = np.zeros(len(ts))
    rdy = np.zeros(len(ts))
    for r, y, d, g in reps:
        end = min(d, g)
        req += (ts >= r) & (ts < end)
        rdy += (ts >= y) & (ts < end)
    return req, rdy

