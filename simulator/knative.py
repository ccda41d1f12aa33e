"""Knative Pod Autoscaler (KPA) as a servesim policy.

Port of ``autoscaler.Scale`` in knative/serving
``pkg/autoscaler/scaling/autoscaler.go`` (concurrency metric):

- ``ready = max(1, ready pods)``; ``max_up = ceil(max_scale_up_rate * ready)``,
  ``max_down = floor(ready / max_scale_down_rate)``;
- ``dspc = ceil(stable / target)``, ``dppc = ceil(panic / target)``, each
  clamped to ``[max_down, max_up]``;
- panic when ``dppc / ready >= panic_threshold``: entering or staying over the
  threshold sets ``panic_time = now``; panic ends at the first decision not
  over the threshold with ``panic_time + stable_window < now``;
- in panic the answer is ``max(stable, panic)`` but never below the highest
  answer since panic began (``maxPanicPods``): no scale-down while panicking;
- like ``newAutoscaler``, a fresh autoscaler (first decision after
  :meth:`reset`) that sees more than one ready replica starts in panic with
  ``maxPanicPods = ready`` so that a restart does not scale down on an empty
  history.

``stable`` / ``panic`` are the means of the concurrency samples (``obs.inflight``
at each decision) with ``t > now - window`` (so a 6 s panic window at a 2 s
control interval averages 3 samples); no sample in the panic window is Knative's
``ErrNoData``: no decision, keep the current replicas.

Deviations: Knative samples each pod's time-averaged concurrency every second;
here the concurrency sample is the in-flight count at the end of each control
interval. ``target_concurrency`` is the effective target (Knative's
``container-concurrency-target-default * target-utilization``). Scale-to-zero
is just a floor (no grace period or activator): ``scale_to_zero: false`` keeps at
least ``max(min_replicas, 1)``; ``true`` allows ``min_replicas`` (possibly 0).
No ``scale-down-delay``, activation scale or burst capacity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from simulator.policy import Observation, Policy, register
from simulator.schema import boolean, check_keys, fail, number


@dataclass(frozen=True)
class PanicState:
    panic_time: float | None = None    # None: stable mode
    max_panic_pods: int = 0


def window_average(samples: Sequence[tuple[float, float]], now: float, window_s: float) -> float | None:
    """Mean of the sample values with ``now - window_s < t <= now``; None if there are none."""
    vals = [v for t, v in samples if now - window_s < t <= now]
    return sum(vals) / len(vals) if vals else None


def kpa_scale(now: float, stable: float, panic: float, ready: int, state: PanicState, *,
              target: float, panic_threshold: float, stable_window_s: float,
              max_scale_up_rate: float, max_scale_down_rate: float) -> tuple[int, PanicState]:
    """One ``autoscaler.Scale`` step: (desired pods, new panic state)."""
    ready_count = max(1.0, float(ready))
    max_up = math.ceil(max_scale_up_rate * ready_count)
    max_down = math.floor(ready_count / max_scale_down_rate)
    dspc = math.ceil(stable / target)
    dppc = math.ceil(panic / target)
    desired_stable = int(min(max(dspc, max_down), max_up))
    desired_panic = int(min(max(dppc, max_down), max_up))

    panic_time, max_panic_pods = state.panic_time, state.max_panic_pods
    if dppc / ready_count >= panic_threshold:
        panic_time = now                                   # start or extend panic
    elif panic_time is not None and panic_time + stable_window_s < now:
        panic_time, max_panic_pods = None, 0               # un-panic

    desired = desired_stable
    if panic_time is not None:
        desired = max(desired, desired_panic, max_panic_pods)
        max_panic_pods = desired
    return desired, PanicState(panic_time, max_panic_pods)


@register
class KnativePolicy(Policy):
    """Knative KPA on request concurrency (see module docstring).

    Params: ``target_concurrency`` (4), ``stable_window_s`` (60),
    ``panic_window_s`` (6), ``panic_threshold`` (2.0 = 200 %),
    ``max_scale_up_rate`` (1000), ``max_scale_down_rate`` (2),
    ``scale_to_zero`` (false).
    """

    kind = "knative"

    def __init__(self, target_concurrency: float = 4.0, stable_window_s: float = 60.0,
                 panic_window_s: float = 6.0, panic_threshold: float = 2.0,
                 max_scale_up_rate: float = 1000.0, max_scale_down_rate: float = 2.0,
                 scale_to_zero: bool = False):
        self.target = float(target_concurrency)
        self.stable_window_s = float(stable_window_s)
        self.panic_window_s = float(panic_window_s)
        self.panic_threshold = float(panic_threshold)
        self.max_scale_up_rate = float(max_scale_up_rate)
        self.max_scale_down_rate = float(max_scale_down_rate)
        self.scale_to_zero = scale_to_zero
        self.reset()

    def reset(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.state: PanicState | None = None

    def decide(self, obs: Observation) -> int:
        now = round(float(obs.time_s), 6)
        ready = int(obs.replicas_ready)
        if self.state is None:                                    # newAutoscaler
            self.state = PanicState(now, ready) if ready > 1 else PanicState()
        if not math.isnan(obs.inflight):
            self.samples.append((now, float(obs.inflight)))
        horizon = max(self.stable_window_s, self.panic_window_s)
        self.samples = [s for s in self.samples if s[0] > now - horizon]
        stable = window_average(self.samples, now, self.stable_window_s)
        panic = window_average(self.samples, now, self.panic_window_s)
        if stable is None or panic is None:                       # ErrNoData
            return int(obs.replicas)
        desired, self.state = kpa_scale(
            now, stable, panic, ready, self.state, target=self.target,
            panic_threshold=self.panic_threshold, stable_window_s=self.stable_window_s,
            max_scale_up_rate=self.max_scale_up_rate, max_scale_down_rate=self.max_scale_down_rate)
        floor = int(obs.min_replicas) if self.scale_to_zero else max(int(obs.min_replicas), 1)
        return min(max(desired, floor), int(obs.max_replicas))

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "autoscaler") -> "KnativePolicy":
        check_keys(params, {"target_concurrency", "stable_window_s", "panic_window_s",
                             "panic_threshold", "max_scale_up_rate", "max_scale_down_rate",
                             "scale_to_zero"}, path)
        stable = number(params, "stable_window_s", path, 60.0, lo=6, hi=3600)
        panic = number(params, "panic_window_s", path, 6.0, lo=0, lo_open=True)
        if panic > stable:
            fail(f"{path}.panic_window_s", f"must be <= stable_window_s ({stable}) (got {panic})")
        up = number(params, "max_scale_up_rate", path, 1000.0, lo=1, lo_open=True)
        down = number(params, "max_scale_down_rate", path, 2.0, lo=1, lo_open=True)
        return cls(target_concurrency=number(params, "target_concurrency", path, 4.0, lo=0, lo_open=True),
                   stable_window_s=stable, panic_window_s=panic,
                   panic_threshold=number(params, "panic_threshold", path, 2.0, lo=1.1, hi=10),
                   max_scale_up_rate=up, max_scale_down_rate=down,
                   scale_to_zero=boolean(params, "scale_to_zero", path, False))


__all__ = ["KnativePolicy", "PanicState", "kpa_scale", "window_average"]
