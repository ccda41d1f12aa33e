"""Kubernetes HorizontalPodAutoscaler (autoscaling/v2) as a servesim policy.

The maths is a line-by-line port of the HPA controller in kubernetes/kubernetes
``pkg/controller/podautoscaler``:

- :func:`pod_metric_replicas` -- ``ReplicaCalculator.GetResourceReplicas`` /
  ``calcPlainMetricReplicas`` (replica_calculator.go): Resource
  ``Utilization`` and Pods ``AverageValue`` targets, averaged over ready pods.
- :func:`object_metric_replicas` -- ``getUsageRatioReplicaCount``
  (replica_calculator.go), used by ``GetObjectMetricReplicas`` /
  ``GetExternalMetricReplicas`` for Object/External ``Value`` targets.
- :func:`stabilize_recommendation` -- ``stabilizeRecommendationWithBehaviors``
  (horizontal.go).
- :func:`calculate_scale_up_limit` / :func:`calculate_scale_down_limit` --
  ``calculateScaleUpLimitWithScalingRules`` /
  ``calculateScaleDownLimitWithBehaviors`` (horizontal.go).
- :func:`convert_desired_replicas_with_behavior_rate` -- same name in
  horizontal.go (rate limits, then the [minReplicas, maxReplicas] clamp).
- :func:`store_scale_event` -- ``storeScaleEvent`` + ``markScaleEventsOutdated``.
- :meth:`HPAPolicy.decide` -- ``reconcileAutoscaler``: initial recommendation,
  "scaling disabled when spec.replicas is 0", out-of-range replicas, metric
  proposal, ``normalizeDesiredReplicasWithBehaviors``, storing the scale event.

Times are ``obs.time_s`` seconds; comparisons keep Go's strictness
(``timestamp.After(cutoff)`` = ``t > now - window``), so a recommendation or a
scale event exactly ``window`` seconds old no longer counts.

Deviations from a real cluster (deliberate): metrics are floats, not
milli-value integers (no integer-percent truncation of CPU utilisation) and the
replica calculator's ceil ignores float noise below 1e-9; no pod is ever
"missing" metrics (an interval's metric is either there or NaN, and NaN fails
the sync like missing metrics do); starting replicas stand for the pods the
controller ignores (Pending, or inside the CPU initialisation period); and the
behaviour path is always used, i.e. this is an HPA whose spec has a
``behavior`` block (the API server then defaults every unset field to the
values below). A real HPA with *no* ``behavior`` block uses the legacy
``normalizeDesiredReplicas`` instead: the same 300 s scale-down stabilisation,
but scale-up limited to ``max(2 * current, 4)`` per sync, without periods.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from simulator.policy import Observation, Policy, register
from simulator.schema import check_keys, choice, fail, number

DEFAULT_TOLERANCE = 0.1               # --horizontal-pod-autoscaler-tolerance
MAX_STABILIZATION_S = 3600            # apis/autoscaling validation: MaxStabilizationWindowSeconds
MAX_PERIOD_S = 1800                   # apis/autoscaling validation: MaxPeriodSeconds
SELECT = ("Max", "Min", "Disabled")
POLICY_TYPES = ("Pods", "Percent")

# metric -> (kind, default target); "pod" = averaged over ready pods, "object" = one value.
METRICS: dict[str, tuple[str, float | None]] = {
    "busy_fraction": ("pod", 0.6),             # like Resource cpu averageUtilization 60%
    "inflight_per_replica": ("pod", 4.0),       # Pods metric, AverageValue
    "arrival_rps_per_replica": ("pod", None),   # Pods metric, AverageValue; no universal default
    "queue_ms": ("object", 10.0),               # Object/External metric, Value
    "latency_p95_ms": ("object", None),         # Object/External metric, Value; default: obs.slo_ms
}


# --------------------------------------------------------------------------- replica calculator


def _ceil(x: float) -> int:
    """``math.Ceil`` that ignores float noise (``0.2 / 0.6 * 9`` is 3, not 4)."""
    return math.ceil(round(x, 9))


def pod_metric_replicas(current: int, ready: int, unready: int, usage_ratio: float,
                        tolerance: float = DEFAULT_TOLERANCE) -> int:
    """Proposal for a metric averaged over ready pods.

    Port of ``GetResourceReplicas`` / ``calcPlainMetricReplicas`` in
    kubernetes ``pkg/controller/podautoscaler/replica_calculator.go`` with no
    pods missing metrics. ``usage_ratio`` = (mean metric over the ``ready``
    pods) / target; ``unready`` pods (pending / not yet ready) are ignored:

    - no unready pods, or ``usage_ratio <= 1``: keep ``current`` when
      ``|ratio - 1| <= tolerance``, else ``ceil(ratio * ready)``;
    - scale-up with unready pods: they are assumed to use 0 of the metric, so
      ``new_ratio = ratio * ready / (ready + unready)``; keep ``current`` if
      ``new_ratio`` is within tolerance or flips the direction (< 1), else
      ``ceil(new_ratio * (ready + unready))`` unless that is below ``current``.
    """
    if not (unready > 0 and usage_ratio > 1.0):
        if abs(1.0 - usage_ratio) <= tolerance:
            return current
        return _ceil(usage_ratio * ready)
    counted = ready + unready
    new_ratio = usage_ratio * ready / counted
    if abs(1.0 - new_ratio) <= tolerance or new_ratio < 1.0:
        return current
    new = _ceil(new_ratio * counted)
    return current if new < current else new


def object_metric_replicas(current: int, ready: int, usage_ratio: float,
                           tolerance: float = DEFAULT_TOLERANCE) -> int:
    """Proposal for an Object/External metric with a ``Value`` target.

    Port of ``getUsageRatioReplicaCount`` (replica_calculator.go):
    ``usage_ratio`` = value / target; with ``current > 0`` keep ``current``
    within tolerance, else ``ceil(ratio * ready)`` (ready = Running and Ready
    pods; pending pods are not counted and not rebalanced); with
    ``current == 0`` (scale-to-zero) ``ceil(ratio)``.
    """
    if current == 0:
        return _ceil(usage_ratio)
    if abs(1.0 - usage_ratio) <= tolerance:
        return current
    return _ceil(usage_ratio * ready)


# --------------------------------------------------------------------------- behaviour


@dataclass(frozen=True)
class ScalingPolicy:
    type: str        # "Pods" | "Percent"
    value: int
    period_s: int


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window_s: int
    select: str      # "Max" | "Min" | "Disabled"
    policies: tuple[ScalingPolicy, ...]


# apis/autoscaling/v2 defaults (defaultHPAScaleUpRules / defaultHPAScaleDownRules;
# scale-down stabilisation comes from --horizontal-pod-autoscaler-downscale-stabilization=5m)
DEFAULT_SCALE_UP = ScalingRules(0, "Max", (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)))
DEFAULT_SCALE_DOWN = ScalingRules(300, "Max", (ScalingPolicy("Percent", 100, 15),))


@dataclass(frozen=True)
class ScaleEvent:
    change: int      # replicas added (up list) or removed (down list), > 0
    time_s: float
    outdated: bool = False


Recommendation = tuple[int, float]   # (replicas, time_s)


def stabilize_recommendation(recommendations: Sequence[Recommendation], now: float, current: int,
                             desired: int, up_window_s: float, down_window_s: float
                             ) -> tuple[int, list[Recommendation]]:
    """``stabilizeRecommendationWithBehaviors`` (horizontal.go).

    Over the stored (unstabilised) recommendations newer than each window
    (``t > now - window``), together with ``desired``: the scale-up bound is
    their min, the scale-down bound their max; the result is ``current``
    pushed up to the former and down to the latter. ``desired`` is then
    recorded at ``now``, overwriting the last entry older than both windows
    (strictly) or appended. Returns (stabilised, new list).
    """
    up_cut, down_cut = now - up_window_s, now - down_window_s
    up = down = desired
    old = None
    for i, (rec, t) in enumerate(recommendations):
        if t > up_cut:
            up = min(up, rec)
        if t > down_cut:
            down = max(down, rec)
        if t < up_cut and t < down_cut:
            old = i
    stabilized = min(max(current, up), down)
    recs = list(recommendations)
    if old is None:
        recs.append((desired, now))
    else:
        recs[old] = (desired, now)
    return stabilized, recs


def replicas_change_per_period(period_s: float, events: Sequence[ScaleEvent], now: float) -> int:
    """``getReplicasChangePerPeriod``: sum of changes of events with ``t > now - period``."""
    return sum(e.change for e in events if e.time_s > now - period_s)


def calculate_scale_up_limit(current: int, up_events: Sequence[ScaleEvent],
                             down_events: Sequence[ScaleEvent], rules: ScalingRules,
                             now: float) -> int:
    """``calculateScaleUpLimitWithScalingRules``: the most replicas allowed now.

    Per policy, ``start`` = replicas at the start of its period (current minus
    additions plus removals within it); Pods: ``start + value``; Percent:
    ``ceil(start * (1 + value/100))`` (Go's float arithmetic, reproduced
    exactly). Max takes the largest proposal, Min the smallest; Disabled
    returns ``current``.
    """
    if rules.select == "Disabled":
        return current
    pick = min if rules.select == "Min" else max
    proposals = []
    for p in rules.policies:
        start = (current - replicas_change_per_period(p.period_s, up_events, now)
                 + replicas_change_per_period(p.period_s, down_events, now))
        if p.type == "Pods":
            proposals.append(start + p.value)
        else:
            proposals.append(math.ceil(start * (1 + p.value / 100)))
    return pick(proposals) if proposals else current


def calculate_scale_down_limit(current: int, up_events: Sequence[ScaleEvent],
                               down_events: Sequence[ScaleEvent], rules: ScalingRules,
                               now: float) -> int:
    """``calculateScaleDownLimitWithBehaviors``: the fewest replicas allowed now.

    Pods: ``start - value``; Percent: ``int(start * (1 - value/100))``
    (truncation). Max (the largest change) takes the smallest proposal, Min the
    largest; Disabled returns ``current``.
    """
    if rules.select == "Disabled":
        return current
    pick = max if rules.select == "Min" else min
    proposals = []
    for p in rules.policies:
        start = (current - replicas_change_per_period(p.period_s, up_events, now)
                 + replicas_change_per_period(p.period_s, down_events, now))
        if p.type == "Pods":
            proposals.append(start - p.value)
        else:
            proposals.append(int(start * (1 - p.value / 100)))
    return pick(proposals) if proposals else current


def convert_desired_replicas_with_behavior_rate(
        current: int, desired: int, min_replicas: int, max_replicas: int,
        up_events: Sequence[ScaleEvent], down_events: Sequence[ScaleEvent],
        scale_up: ScalingRules, scale_down: ScalingRules, now: float) -> int:
    """``convertDesiredReplicasWithBehaviorRate``: apply the rate limits and clamp.

    Scale-up: ``min(desired, maxReplicas, max(up_limit, current))``;
    scale-down: ``max(desired, minReplicas, min(down_limit, current))``.
    """
    if desired > current:
        limit = max(calculate_scale_up_limit(current, up_events, down_events, scale_up, now), current)
        return min(desired, max_replicas, limit)
    if desired < current:
        limit = min(calculate_scale_down_limit(current, up_events, down_events, scale_down, now), current)
        return max(desired, min_replicas, limit)
    return desired


def store_scale_event(events: Sequence[ScaleEvent], now: float, change: int,
                      longest_period_s: float) -> list[ScaleEvent]:
    """``storeScaleEvent``: mark events older than the direction's longest
    policy period (strictly) outdated, then overwrite the last outdated one
    with the new event or append it. Outdated events still count in
    :func:`replicas_change_per_period` until overwritten (as in Go)."""
    cut = now - longest_period_s
    out = [replace(e, outdated=True) if e.time_s < cut else e for e in events]
    new = ScaleEvent(change, now)
    idx = [i for i, e in enumerate(out) if e.outdated]
    if idx:
        out[idx[-1]] = new
    else:
        out.append(new)
    return out


# --------------------------------------------------------------------------- policy


@register
class HPAPolicy(Policy):
    """A Kubernetes HPA on one metric, with ``behavior`` (see module docstring).

    Params: ``metric`` (:data:`METRICS`), ``target``, ``tolerance``,
    ``scale_up_stabilization_s`` / ``scale_down_stabilization_s``,
    ``scale_up_policies`` / ``scale_down_policies`` (lists of
    ``{type: Pods|Percent, value, period_s}``), ``scale_up_select`` /
    ``scale_down_select`` (Max|Min|Disabled). Called every ``interval_s``
    (the controller's sync period, 15 s by default); ``obs.time_s`` (rounded
    to the microsecond) is the clock.

    Default targets: busy_fraction 0.6, inflight_per_replica 4, queue_ms 10,
    latency_p95_ms the scenario's ``slo_ms``; arrival_rps_per_replica needs an
    explicit target. busy_fraction, inflight_per_replica (``inflight / ready``)
    and arrival_rps_per_replica (``arrival_rps / ready``) are per-ready-replica
    averages (:func:`pod_metric_replicas`); queue_ms and latency_p95_ms are
    single values (:func:`object_metric_replicas`).
    """

    kind = "hpa"

    def __init__(self, metric: str = "busy_fraction", target: float | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, scale_up: ScalingRules = DEFAULT_SCALE_UP,
                 scale_down: ScalingRules = DEFAULT_SCALE_DOWN):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        self.metric = metric
        self.target = METRICS[metric][1] if target is None else float(target)
        self.tolerance = tolerance
        self.scale_up = scale_up
        self.scale_down = scale_down
        self.reset()

    def reset(self) -> None:
        self.recommendations: list[Recommendation] = []
        self.up_events: list[ScaleEvent] = []
        self.down_events: list[ScaleEvent] = []

    # -- reconcileAutoscaler
    def decide(self, obs: Observation) -> int:
        now = round(float(obs.time_s), 6)
        current = int(obs.replicas)
        lo, hi = int(obs.min_replicas), int(obs.max_replicas)
        if not self.recommendations:                     # recordInitialRecommendation
            self.recommendations = [(current, now)]
        if current == 0 and lo != 0:                     # "scaling is disabled"
            return 0
        if current > hi:
            desired = hi
        elif current < lo:
            desired = lo
        else:
            proposal = self.metric_replicas(obs)
            if proposal is None:                         # no metrics: the sync fails, nothing changes
                return current
            desired, self.recommendations = stabilize_recommendation(
                self.recommendations, now, current, proposal,
                self.scale_up.stabilization_window_s, self.scale_down.stabilization_window_s)
            desired = convert_desired_replicas_with_behavior_rate(
                current, desired, lo, hi, self.up_events, self.down_events,
                self.scale_up, self.scale_down, now)
        if desired > current:
            self.up_events = store_scale_event(self.up_events, now, desired - current,
                                               _longest_period(self.scale_up))
        elif desired < current:
            self.down_events = store_scale_event(self.down_events, now, current - desired,
                                                 _longest_period(self.scale_down))
        return desired

    def metric_replicas(self, obs: Observation) -> int | None:
        """The replica calculator's proposal for ``obs``, or None when there is no metric."""
        ready, current = int(obs.replicas_ready), int(obs.replicas)
        kind = METRICS[self.metric][0]
        if self.metric == "inflight_per_replica":
            value = obs.inflight / max(ready, 1)
        elif self.metric == "arrival_rps_per_replica":
            value = obs.arrival_rps / max(ready, 1)
        else:
            value = getattr(obs, self.metric)
        target = obs.slo_ms if self.target is None else self.target
        if value is None or math.isnan(value) or not target > 0:
            return None
        ratio = float(value) / target
        if kind == "object":
            return object_metric_replicas(current, ready, ratio, self.tolerance)
        if ready <= 0:                                   # "did not receive metrics for any ready pods"
            return None
        return pod_metric_replicas(current, ready, int(obs.replicas_pending), ratio, self.tolerance)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "autoscaler") -> "HPAPolicy":
        check_keys(params, {"metric", "target", "tolerance", "scale_up_stabilization_s",
                             "scale_down_stabilization_s", "scale_up_policies",
                             "scale_down_policies", "scale_up_select", "scale_down_select"}, path)
        metric = choice(params, "metric", path, tuple(METRICS), "busy_fraction")
        target = number(params, "target", path, None, lo=0, lo_open=True,
                      hi=1.0 if metric == "busy_fraction" else None)
        if target is None and metric == "arrival_rps_per_replica":
            fail(f"{path}.target", "is required for metric arrival_rps_per_replica "
                  "(requests/s one ready replica should serve)")
        tolerance = number(params, "tolerance", path, DEFAULT_TOLERANCE, lo=0)
        if tolerance >= 1:
            fail(f"{path}.tolerance", f"must be < 1 (got {tolerance!r})")
        rules = {}
        for d, default in (("up", DEFAULT_SCALE_UP), ("down", DEFAULT_SCALE_DOWN)):
            window = number(params, f"scale_{d}_stabilization_s", path, default.stabilization_window_s,
                          lo=0, hi=MAX_STABILIZATION_S, integer=True)
            select = choice(params, f"scale_{d}_select", path, SELECT, default.select)
            policies = _parse_policies(params, f"scale_{d}_policies", path, default.policies)
            rules[d] = ScalingRules(window, select, policies)
        return cls(metric, target, tolerance, rules["up"], rules["down"])


def _longest_period(rules: ScalingRules) -> int:
    """``getLongestPolicyPeriod``."""
    return max((p.period_s for p in rules.policies), default=0)


def _parse_policies(params: Mapping, key: str, path: str,
                    default: tuple[ScalingPolicy, ...]) -> tuple[ScalingPolicy, ...]:
    if params.get(key) is None:
        return default
    p = f"{path}.{key}"
    items = params[key]
    if not isinstance(items, (list, tuple)) or not items:
        fail(p, "must be a non-empty list of {type: Pods|Percent, value, period_s} "
              f"(got {items!r})")
    out = []
    for i, item in enumerate(items):
        ip = f"{p}[{i}]"
        check_keys(item, {"type", "value", "period_s"}, ip)
        out.append(ScalingPolicy(
            choice(item, "type", ip, POLICY_TYPES),
            number(item, "value", ip, required=True, lo=0, lo_open=True, integer=True),
            number(item, "period_s", ip, required=True, lo=0, lo_open=True, hi=MAX_PERIOD_S,
                 integer=True)))
    return tuple(out)


__all__ = ["HPAPolicy", "ScalingPolicy", "ScalingRules", "ScaleEvent", "DEFAULT_SCALE_UP",
           "DEFAULT_SCALE_DOWN", "METRICS", "pod_metric_replicas", "object_metric_replicas",
           "stabilize_recommendation", "replicas_change_per_period", "calculate_scale_up_limit",
           "calculate_scale_down_limit", "convert_desired_replicas_with_behavior_rate",
           "store_scale_event"]
