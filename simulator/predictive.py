"""IPA-style predictive provisioner as a servesim policy (``kind: predictive``).

Every ``horizon_s`` seconds (IPA: 10 s) the policy forecasts the peak arrival
rate of the next ``horizon_s`` from the arrival rates observed over the last
``window_s`` seconds (IPA: 2 minutes) and provisions

    desired = ceil(peak * (1 + headroom) / capacity_rps_per_replica)

where ``capacity_rps_per_replica`` is the largest rate one replica serves while
meeting the SLO (measured by :func:`per_replica_capacity` on the calibrated
scenario, or given). Predictors:

- ``max`` (IPA's baseline predictor): the peak is the largest ``arrival_rps``
  observed in the window;
- ``trend``: ``max(max predictor, linear extrapolation of the window's rates to
  the end of the next horizon)`` -- a least-squares line through the window,
  which reacts earlier to ramps without ever provisioning below ``max``.

Between decisions (when the control interval is shorter than ``horizon_s``) the
previous answer is kept. Only ``obs.time_s`` and ``obs.arrival_rps`` are used,
so the policy runs unchanged on the real cluster. ``reset()`` clears the
history.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping

from simulator.policy import Observation, Policy, register

PREDICTORS = ("max", "trend")


@register
class PredictivePolicy(Policy):
    kind = "predictive"

    def __init__(self, capacity_rps_per_replica: float, window_s: float = 120.0, horizon_s: float = 10.0,
                 headroom: float = 0.0, predictor: str = "max"):
        if not capacity_rps_per_replica > 0:
            raise ValueError("capacity_rps_per_replica must be > 0")
        self.capacity = float(capacity_rps_per_replica)
        self.window_s = float(window_s)
        self.horizon_s = float(horizon_s)
        self.headroom = float(headroom)
        self.predictor = predictor
        self.reset()

    def reset(self) -> None:
        self._hist: deque[tuple[float, float]] = deque()
        self._last_t: float | None = None
        self._last: int | None = None

    def forecast(self, now: float) -> float:
        """Forecast peak rate (rps) of ``(now, now + horizon_s]`` from the history."""
        vals = [v for _, v in self._hist]
        if not vals:
            return 0.0
        peak = max(vals)
        if self.predictor == "trend" and len(self._hist) >= 3:
            ts = [t for t, _ in self._hist]
            mt, mv = sum(ts) / len(ts), sum(vals) / len(vals)
            sxx = sum((t - mt) ** 2 for t in ts)
            if sxx > 0:
                slope = sum((t - mt) * (v - mv) for t, v in self._hist) / sxx
                peak = max(peak, mv + slope * (now + self.horizon_s - mt))
        return peak

    def decide(self, obs: Observation) -> int:
        now = float(obs.time_s)
        rate = float(obs.arrival_rps)
        if math.isfinite(rate):
            self._hist.append((now, rate))
        # an observation covers [t - interval, t): keep those overlapping the window
        while self._hist and self._hist[0][0] <= now - self.window_s:
            self._hist.popleft()
        if self._last is not None and self._last_t is not None and now - self._last_t < self.horizon_s - 1e-9:
            return self._last
        peak = self.forecast(now)
        desired = math.ceil(round(peak * (1.0 + self.headroom) / self.capacity, 9))
        desired = max(desired, int(obs.min_replicas), 1 if obs.max_replicas >= 1 else 0)
        self._last, self._last_t = int(desired), now
        return self._last

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "autoscaler") -> "PredictivePolicy":
        from simulator.config import _check_keys, _choice, _num
        _check_keys(params, {"capacity_rps_per_replica", "window_s", "horizon_s", "headroom", "predictor"},
                    path)
        cap = _num(params, "capacity_rps_per_replica", path, None, lo=0, lo_open=True, required=True)
        return cls(capacity_rps_per_replica=cap,
                   window_s=_num(params, "window_s", path, 120.0, lo=0, lo_open=True),
                   horizon_s=_num(params, "horizon_s", path, 10.0, lo=0, lo_open=True),
                   headroom=_num(params, "headroom", path, 0.0, lo=0, hi=10),
                   predictor=_choice(params, "predictor", path, PREDICTORS, "max"))


_CAP_CACHE: dict[str, float] = {}


def per_replica_capacity(sc, violation_target: float = 0.01, duration_s: float = 300.0, seeds=(1, 2),
                         tol_rps: float = 0.5) -> float:
    """Largest Poisson rate (rps) one replica serves with ``slo_violation_rate <= violation_target``.

    Found by bisection over simulations of ``sc``'s service/batching on a single
    static replica (``duration_s`` each, worst of ``seeds``). Cached per
    (service, batching, slo, node model, target).
    """
    return fleet_capacity(sc, 1, violation_target, duration_s, seeds, tol_rps)


def fleet_capacity(sc, replicas: int, violation_target: float = 0.01, duration_s: float = 300.0, seeds=(1, 2),
                   tol_rps: float = 0.5) -> float:
    """Largest Poisson rate (rps) ``replicas`` static replicas serve together with
    ``slo_violation_rate <= violation_target`` (bisection over simulations, worst of ``seeds``).

    Without node contention this is ``replicas`` times :func:`per_replica_capacity`; with it (shared cores,
    request handling as CPU demand) a fleet serves less than that, which is why the oracle asks for it per
    replica count.
    """
    import json

    from simulator.config import AutoscalerSpec, WorkloadSpec
    from simulator.engine import simulate
    from simulator.service import build_service_model

    n = int(replicas)
    cl = sc.cluster
    node = {k: v for k, v in cl.to_dict().items() if k not in ("replicas", "min_replicas", "max_replicas", "startup_s")}
    key = json.dumps([sc.service.to_dict(), sc.batching.to_dict(), sc.slo_ms, node, n, violation_target, duration_s,
                      list(seeds)], sort_keys=True, default=str)
    if key in _CAP_CACHE:
        return _CAP_CACHE[key]
    base = sc.replace(duration_s=duration_s, warmup_s=min(30.0, duration_s / 5), record_requests=False,
                      cluster=cl.__class__(**{**cl.__dict__, "replicas": n, "min_replicas": n, "max_replicas": n}),
                      autoscaler=AutoscalerSpec("static", interval_s=duration_s / 4, params={}))
    model = build_service_model(sc.service, sc.batching.max_batch_size)

    def ok(rate: float) -> bool:
        for s in seeds:
            res = simulate(base.replace(seed=s, workload=WorkloadSpec(kind="poisson", rate_rps=rate)), model=model)
            v = res.summary["slo_violation_rate"]
            if not (v <= violation_target):
                return False
        return True

    # upper bound: full batches back to back on every instance of every replica
    mbs = sc.batching.max_batch_size
    mean_full = sc.service.per_batch[-1][1].mean_value or 1.0
    hi = n * max(4.0, 2.0 * mbs * sc.batching.instances / (mean_full / 1e3 if sc.service.per_batch[-1][0] >= mbs
                                                           else 1e-3 * mean_full * mbs / sc.service.per_batch[-1][0]))
    if not ok(0.5):
        _CAP_CACHE[key] = 0.5
        return 0.5
    lo = 0.5
    while hi - lo > tol_rps:
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    _CAP_CACHE[key] = lo
    return lo


def node_coupled(sc) -> bool:
    """True when replicas slow each other down in ``sc`` (shared-core interference or rate contention)."""
    c = sc.cluster
    return (c.interference > 0 and c.node_cores < c.max_replicas) or c.rate_contention > 0 or c.rate_cores > 0


__all__ = ["PredictivePolicy", "fleet_capacity", "node_coupled", "per_replica_capacity", "PREDICTORS"]
