"""Oracle lower bound: a replica schedule that knows the future arrivals (offline only).

For a scenario with an open-loop workload, the oracle reads the run's *actual*
arrival instants (same seed, so the very requests the run will see), turns
them into a per-second requirement

    need(s) = ceil(rate_w(s) * (1 + h) / capacity_rps_per_replica)

(or, when replicas share a node's cores and slow each other down, the smallest
``n`` whose fleet capacity ``caps[n]`` -- :func:`simulator.predictive.fleet_capacity`
-- covers ``rate_w(s) * (1 + h)``: n replicas on a contended node serve less
than n times one replica)

(``rate_w(s)``: arrivals in ``[s, s + smooth_s)`` / ``smooth_s``), and at
each control tick ``t`` asks for

    desired(t) = max(need(s) for s in [t, t + interval_s + lead_s))

so every replica needed at second ``s`` was requested at least ``lead_s``
(the start-up delay's upper quantile) before ``s``, and replicas go away as
soon as nothing in the look-ahead needs them. :func:`oracle_run` picks the
smallest headroom ``h`` (bisection) whose simulated run meets
``slo_violation_rate <= slo_target`` -- the cheapest schedule of this family
that meets the SLO, respecting start-up delay. It is a bound-like reference,
not a proof of optimality.
"""
from __future__ import annotations

import math

import numpy as np

from simulator.policy import Observation, Policy
from simulator.service import quantile_function
from simulator.workload import arrival_times


class OraclePolicy(Policy):
    """Acts on a precomputed per-second requirement (not registered: needs the future)."""

    kind = "oracle"

    def __init__(self, need: np.ndarray, interval_s: float, lead_s: float):
        self.need = np.asarray(need, dtype=int)
        self.interval_s = float(interval_s)
        self.lead_s = float(lead_s)

    def decide(self, obs: Observation) -> int:
        t = float(obs.time_s)
        a = int(math.floor(t + 1e-9))
        b = int(math.ceil(t + self.interval_s + self.lead_s - 1e-9))
        seg = self.need[a:max(b, a + 1)]
        n = int(seg.max()) if len(seg) else int(self.need[-1]) if len(self.need) else obs.min_replicas
        return max(n, obs.min_replicas, 1)


def per_second_rates(sc, smooth_s: float = 5.0) -> np.ndarray:
    """Forward-looking mean arrival rate ``arrivals in [s, s+smooth_s) / smooth_s`` for every second s."""
    t = arrival_times(sc.workload, sc.duration_s, sc.seed)
    n = int(math.ceil(sc.duration_s)) + 1
    counts = np.bincount(np.minimum(t.astype(int), n - 1), minlength=n).astype(float)
    w = max(1, int(round(smooth_s)))
    c = np.concatenate([[0.0], np.cumsum(counts)])
    idx = np.arange(n)
    hi = np.minimum(idx + w, n)
    return (c[hi] - c[idx]) / w


def startup_lead(sc, q: float = 0.95) -> float:
    return float(quantile_function(sc.cluster.startup, np.array([q]))[0]) if sc.cluster.startup.mean_value > 0 else 0.0


def make_oracle(sc, capacity: float, headroom: float, rates: np.ndarray | None = None, smooth_s: float = 5.0,
                lead_q: float = 0.95, caps: np.ndarray | None = None) -> OraclePolicy:
    """``caps[n - 1]``: what ``n`` replicas serve together (default ``n * capacity``)."""
    rates = per_second_rates(sc, smooth_s) if rates is None else rates
    if caps is None:
        need = np.ceil(np.round(rates * (1.0 + headroom) / capacity, 9)).astype(int)
    else:
        caps = np.maximum.accumulate(np.asarray(caps, float))
        need = np.searchsorted(np.round(caps, 9), np.round(rates * (1.0 + headroom), 9), side="left") + 1
    need = np.clip(need, max(sc.cluster.min_replicas, 1), sc.cluster.max_replicas)
    return OraclePolicy(need, sc.autoscaler.interval_s, startup_lead(sc, lead_q))


def fleet_caps(sc, slo_target: float) -> np.ndarray | None:
    """``caps[n - 1]`` for n = 1..max_replicas when replicas contend for the node's cores, else None."""
    from simulator.predictive import fleet_capacity, node_coupled
    if not node_coupled(sc):
        return None
    return np.array([fleet_capacity(sc, n, slo_target) for n in range(1, sc.cluster.max_replicas + 1)])


def oracle_run(sc, capacity: float, slo_target: float, lo: float = -0.5, hi: float = 1.0, iters: int = 7,
               smooth_s: float = 5.0, model=None, caps: np.ndarray | None = None):
    """Cheapest headroom meeting the SLO target; returns ``(result, headroom, tried)``.

    If even ``hi`` misses the target (the load exceeds what ``max_replicas`` serve), the target becomes
    what ``hi`` achieves (its violation rate x 1.02 + 0.01 points): the cheapest schedule as good as the
    most generous one -- over-provisioning where it cannot help is not the bound. ``tried[0]`` (``hi``,
    ``meets == False``) records the miss.
    """
    from simulator.engine import simulate
    rates = per_second_rates(sc, smooth_s)
    tried = []
    cache = {}

    def run(h):
        if h not in cache:
            res = simulate(sc, policy=make_oracle(sc, capacity, h, rates, caps=caps), model=model)
            v = res.summary["slo_violation_rate"]
            ok = v <= slo_target
            cache[h] = (res, ok)
            tried.append({"headroom": h, "slo_violation_rate": v, "replica_seconds": res.summary["replica_seconds"],
                          "meets": ok})
        return cache[h]

    res_hi, ok_hi = run(hi)
    if not ok_hi:
        reach = res_hi.summary["slo_violation_rate"] * 1.02 + 1e-4
        for h, (r, _) in list(cache.items()):
            cache[h] = (r, r.summary["slo_violation_rate"] <= reach)
        slo_target = reach
    res_lo, ok_lo = run(lo)
    if ok_lo:
        return res_lo, lo, tried
    best, best_h = res_hi, hi
    for _ in range(iters):
        mid = round((lo + hi) / 2, 4)
        r, ok = run(mid)
        if ok:
            hi, best, best_h = mid, r, mid
        else:
            lo = mid
    return best, best_h, tried


__all__ = ["OraclePolicy", "fleet_caps", "make_oracle", "oracle_run", "per_second_rates", "startup_lead"]
