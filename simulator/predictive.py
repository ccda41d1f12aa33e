"""IPA-style predictive provisioner as a servesim policy (``kind: predictive``).

Every ``horizon_s`` seconds (IPA: 10 s) the policy forecasts the peak arrival
rate of the next ``horizon_s`` from the arrival rates observed over the last
``window_s`` seconds (IPA: 2 minutes) and provisions

    desired = ceil(peak * (1 + headroom) / capacity_rps_per_replica)

where ``capacity_rps_per_replica`` is the largest rate one replica serves while
meeting the SLO (measured by :func:`simulator.capacity.per_replica_capacity` on the calibrated
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
from typing import Any, Mapping

from simulator.forecast import RateWindow, max_forecast, trend_forecast
from simulator.policy import Observation, Policy, register
from simulator.schema import check_keys, choice, number

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
        self._hist = RateWindow(self.window_s)
        self._last_t: float | None = None
        self._last: int | None = None

    def forecast(self, now: float) -> float:
        """Forecast peak rate (rps) of ``(now, now + horizon_s]`` from the history (:mod:`simulator.forecast`)."""
        if self.predictor == "trend":
            return trend_forecast(self._hist.points, now + self.horizon_s)
        return max_forecast(self._hist.points)

    def decide(self, obs: Observation) -> int:
        now = float(obs.time_s)
        rate = float(obs.arrival_rps)
        if math.isfinite(rate):
            self._hist.add(now, rate)
        else:
            self._hist.trim(now)
        if self._last is not None and self._last_t is not None and now - self._last_t < self.horizon_s - 1e-9:
            return self._last
        peak = self.forecast(now)
        desired = math.ceil(round(peak * (1.0 + self.headroom) / self.capacity, 9))
        desired = max(desired, int(obs.min_replicas), 1 if obs.max_replicas >= 1 else 0)
        self._last, self._last_t = int(desired), now
        return self._last

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "autoscaler") -> "PredictivePolicy":
        check_keys(params, {"capacity_rps_per_replica", "window_s", "horizon_s", "headroom", "predictor"},
                    path)
        cap = number(params, "capacity_rps_per_replica", path, None, lo=0, lo_open=True, required=True)
        return cls(capacity_rps_per_replica=cap,
                   window_s=number(params, "window_s", path, 120.0, lo=0, lo_open=True),
                   horizon_s=number(params, "horizon_s", path, 10.0, lo=0, lo_open=True),
                   headroom=number(params, "headroom", path, 0.0, lo=0, hi=10),
                   predictor=choice(params, "predictor", path, PREDICTORS, "max"))


__all__ = ["PredictivePolicy", "PREDICTORS"]
