"""Kubernetes HPA policy: hand-computed decisions (arithmetic in the comments)."""
import math

import pytest

from simulator.config import ConfigError, parse_autoscaler
from simulator.hpa import (DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP, HPAPolicy, ScaleEvent,
                           ScalingPolicy, ScalingRules, calculate_scale_down_limit,
                           calculate_scale_up_limit, object_metric_replicas,
                           pod_metric_replicas, replicas_change_per_period,
                           stabilize_recommendation, store_scale_event)
from simulator.policy import REGISTRY, Observation

NAN = float("nan")


def obs(t, replicas, ready=None, pending=None, busy=NAN, inflight=0.0, arrival=0.0,
        queue=NAN, p95=NAN, lo=1, hi=100, slo=100.0, interval=15.0):
    ready = replicas if ready is None else ready
    pending = replicas - ready if pending is None else pending
    return Observation(time_s=t, interval_s=interval, arrival_rps=arrival, completion_rps=arrival,
                       latency_p50_ms=NAN, latency_p95_ms=p95, latency_p99_ms=NAN,
                       slo_violation_frac=0.0, queue_ms=queue, batch_size=1.0,
                       busy_fraction=busy, inflight=inflight, replicas=replicas,
                       replicas_ready=ready, replicas_pending=pending, failures=0, slo_ms=slo,
                       min_replicas=lo, max_replicas=hi)


def hpa(**params):
    return HPAPolicy.from_params(params, "autoscaler")


# --------------------------------------------------------------------------- replica calculator


def test_registered():
    assert REGISTRY["hpa"] is HPAPolicy


def test_tolerance_boundary():
    # |1.09 - 1| = 0.09 <= 0.1 -> keep 4; |1.11 - 1| = 0.11 > 0.1 -> ceil(4 * 1.11) = ceil(4.44) = 5
    assert pod_metric_replicas(4, 4, 0, 1.09) == 4
    assert pod_metric_replicas(4, 4, 0, 1.11) == 5
    # downwards: 0.91 -> keep 10; 0.89 -> ceil(10 * 0.89) = ceil(8.9) = 9
    assert pod_metric_replicas(10, 10, 0, 0.91) == 10
    assert pod_metric_replicas(10, 10, 0, 0.89) == 9
    # a custom tolerance of 0.2: 1.15 is inside
    assert pod_metric_replicas(4, 4, 0, 1.15, tolerance=0.2) == 4
    # through the policy: busy 0.654 / target 0.6 = 1.09 -> stay; 0.666 / 0.6 = 1.11 -> 5
    assert hpa().decide(obs(0, 4, busy=0.654)) == 4
    assert hpa().decide(obs(0, 4, busy=0.666)) == 5


def test_ceil_rounding():
    # 5 ready, busy 0.75 / 0.6 = 1.25 -> 1.25 * 5 = 6.25 -> 7
    assert hpa().decide(obs(0, 5, busy=0.75)) == 7
    # 6 ready, busy 0.7 / 0.6 = 1.1667 -> 1.1667 * 6 = 7 exactly -> 7
    assert hpa().decide(obs(0, 6, busy=0.7)) == 7
    # 9 ready, busy 0.2 / 0.6 = 1/3 -> 9/3 = 3 (float: 3.0000000000000004, must not become 4);
    # no stabilisation so the 3 shows: max(3, minReplicas 1, int(9 * 0) = 0) = 3
    assert hpa(scale_down_stabilization_s=0).decide(obs(0, 9, busy=0.2)) == 3
    # scale-down rounds up too: ratio 0.3 on 10 ready -> ceil(3.0) = 3; 0.31 -> ceil(3.1) = 4
    assert pod_metric_replicas(10, 10, 0, 0.3) == 3
    assert pod_metric_replicas(10, 10, 0, 0.31) == 4


def test_unready_pods_on_scale_up():
    # 4 replicas, 2 ready + 2 starting, ratio 1.5: starting pods count as 0 ->
    # new ratio 1.5 * 2 / 4 = 0.75 < 1: the direction flips -> keep 4
    assert pod_metric_replicas(4, 2, 2, 1.5) == 4
    # 3 replicas, 2 ready + 1 starting, ratio 1.6 -> 1.6 * 2 / 3 = 1.067, within tolerance -> keep 3
    assert pod_metric_replicas(3, 2, 1, 1.6) == 3
    # ratio 2.5 -> 2.5 * 2 / 3 = 1.667 -> ceil(1.667 * 3) = 5
    assert pod_metric_replicas(3, 2, 1, 2.5) == 5
    # without starting pods the same 1.6 would scale: ceil(1.6 * 2) = 4
    assert pod_metric_replicas(2, 2, 0, 1.6) == 4
    # new count below current (current 5 but only 3 pods listed): ratio 2 -> 1.333 -> ceil(4) = 4 < 5 -> keep 5
    assert pod_metric_replicas(5, 2, 1, 2.0) == 5
    # scale-down ignores starting pods: ceil(0.5 * 2 ready) = 1
    assert pod_metric_replicas(4, 2, 2, 0.5) == 1
    # policy: 4 replicas (2 ready, 2 pending), busy 0.9 / 0.6 = 1.5 -> flip -> 4
    assert hpa().decide(obs(0, 4, ready=2, busy=0.9)) == 4
    # inflight_per_replica: 24 in flight / 2 ready = 12 per replica, target 4 -> ratio 3,
    # 3 * 2 / 3 = 2 -> ceil(2 * 3) = 6; rate limit from 3: max(3 + 4, ceil(3 * 2)) = 7 -> 6
    assert hpa(metric="inflight_per_replica").decide(obs(0, 3, ready=2, inflight=24)) == 6


def test_object_metric():
    # queue_ms 25 vs target 10 -> ratio 2.5 on 3 ready pods (1 starting, not counted) -> ceil(7.5) = 8
    assert hpa(metric="queue_ms").decide(obs(0, 4, ready=3, queue=25.0)) == 8
    # latency_p95_ms defaults to the SLO as target: 150 / 100 = 1.5 on 2 ready -> 3
    assert hpa(metric="latency_p95_ms").decide(obs(0, 2, p95=150.0, slo=100.0)) == 3
    # explicit target 50: 60 / 50 = 1.2 -> ceil(2.4) = 3
    assert hpa(metric="latency_p95_ms", target=50).decide(obs(0, 2, p95=60.0)) == 3
    assert object_metric_replicas(4, 4, 1.05) == 4          # within tolerance
    assert object_metric_replicas(0, 0, 2.5) == 3           # scale from zero: ceil(2.5)


def test_per_replica_metrics():
    # arrival 90 rps / 3 ready = 30 per replica, target 20 -> 1.5 -> ceil(4.5) = 5
    assert hpa(metric="arrival_rps_per_replica", target=20).decide(obs(0, 3, arrival=90.0)) == 5


def test_nan_metric_keeps_current_and_records_nothing():
    p = hpa()
    assert p.decide(obs(0, 4, busy=NAN)) == 4
    assert p.recommendations == [(4, 0.0)]                  # only the initial recommendation
    assert hpa(metric="queue_ms").decide(obs(0, 4, queue=NAN)) == 4
    # no ready pod -> no per-pod metrics -> keep (even if the value were there)
    assert hpa(metric="inflight_per_replica").decide(obs(0, 3, ready=0, inflight=50)) == 3


# --------------------------------------------------------------------------- stabilisation


def test_scale_down_stabilisation_exact_time():
    p = hpa()
    # 4 ready; busy 0.6 = target -> recommendation 4; busy 0.3 -> ratio 0.5 -> ceil(2) = 2
    busy = {0: 0.6, 15: 0.3, 30: 0.6, 45: 0.6, 60: 0.6}      # a one-interval dip at t=15
    out = {}
    for t in range(0, 391, 15):
        out[t] = p.decide(obs(t, out.get(t - 15, 4), busy=busy.get(t, 0.3)))
    # the dip at 15 is ignored (max over the last 300 s includes 4s);
    # last recommendation of 4 was at t=60, so it only leaves the window (t > now - 300)
    # at now = 360: at 345 the window (45, 345] still holds t=60's 4
    assert all(out[t] == 4 for t in range(0, 346, 15))
    assert out[360] == 2
    # t=375 on 2 replicas: ceil(0.5 * 2) = 1, but (75, 375] still holds 2s -> max 2
    assert out[375] == 2


def test_initial_recommendation_holds_first_window():
    p = hpa()
    # recordInitialRecommendation: (4, t=0); busy 0.3 -> 2 from the start,
    # but (4, 0) stays in (now - 300, now] until now = 300
    seq = [p.decide(obs(t, 4, busy=0.3)) for t in (0, 150, 285)]
    assert seq == [4, 4, 4]
    assert p.decide(obs(300, 4, busy=0.3)) == 2


def test_scale_up_stabilisation():
    p = hpa(scale_up_stabilization_s=30)
    # 2 ready, busy 1.2 / 0.6 = 2 -> want 4; the up-window min includes the initial (2, t=0)
    assert p.decide(obs(0, 2, busy=1.2)) == 2
    assert p.decide(obs(15, 2, busy=1.2)) == 2                # window (-15, 15]: min(2, 4, 4) = 2
    assert p.decide(obs(30, 2, busy=1.2)) == 4                # window (0, 30]: t=0 entries gone


def test_stabilize_recommendation_pure():
    recs = [(5, 0.0), (3, 100.0)]
    # up window 0, down window 300 at now=200: down = max(2, 5, 3) = 5; current 4 -> min(max(4, 2), 5) = 4
    got, new = stabilize_recommendation(recs, 200.0, 4, 2, 0, 300)
    assert got == 4 and new == [(5, 0.0), (3, 100.0), (2, 200.0)]
    # at now=301 (5, 0) is older than both windows: ignored and overwritten
    got, new = stabilize_recommendation(recs, 301.0, 4, 2, 0, 300)
    assert got == 3 and new == [(2, 301.0), (3, 100.0)]


# --------------------------------------------------------------------------- rate limits


def run_up(p, steps, hi=100, interval=15):
    """Replicas follow the decisions (all ready at once); 20 requests in flight in total."""
    cur, out = 2, []
    for k in range(steps):
        cur = p.decide(obs(k * interval, cur, inflight=20.0, hi=hi, interval=interval))
        out.append(cur)
    return out


def test_scale_up_rate_limit_defaults():
    # inflight_per_replica, target 1: 20 in flight -> always wants 20 replicas.
    # t=0:  start 2  -> max(Pods 2+4=6, Percent ceil(2*2)=4) = 6
    # t=15: the +4 at t=0 is not newer than 15-15 -> start 6 -> max(10, 12) = 12
    # t=30: start 12 -> max(16, 24) = 24 -> min(20, 24) = 20
    assert run_up(hpa(metric="inflight_per_replica", target=1), 4) == [6, 12, 20, 20]


def test_scale_up_rate_limit_within_period():
    # every 5 s: the +4 at t=0 counts at t=5 and t=10 (start 6-4 = 2 -> limit 6), not at t=15
    assert run_up(hpa(metric="inflight_per_replica", target=1), 5, interval=5) == [6, 6, 6, 12, 12]


def test_scale_up_max_replicas_clamp():
    # as above but maxReplicas 10: 6, then min(20, 10, 12) = 10
    assert run_up(hpa(metric="inflight_per_replica", target=1), 3, hi=10) == [6, 10, 10]


def test_scale_up_custom_policies_min_select():
    # Pods 1 per 60 s and Percent 50 per 60 s, select Min: from 2 -> min(3, ceil(3.0)) = 3;
    # t=15: start 3-1 = 2 -> limit 3 -> stays 3 until t=60, where the event is no longer newer
    p = hpa(metric="inflight_per_replica", target=1, scale_up_select="Min",
            scale_up_policies=[{"type": "Pods", "value": 1, "period_s": 60},
                               {"type": "Percent", "value": 50, "period_s": 60}])
    assert run_up(p, 6) == [3, 3, 3, 3, 4, 4]                 # t=60: start 3 -> min(4, ceil(4.5)=5) = 4


def test_scale_down_percent_policy():
    # 50 % per 60 s, no stabilisation; busy 0.06 / 0.6 = 0.1 -> ceil(0.1 * ready) = 1 for <= 10 ready
    p = hpa(scale_down_stabilization_s=0,
            scale_down_policies=[{"type": "Percent", "value": 50, "period_s": 60}])
    cur, out = 10, {}
    for t in range(0, 136, 15):
        cur = out[t] = p.decide(obs(t, cur, busy=0.06))
    # t=0: start 10 -> int(10 * 0.5) = 5
    # t=15..45: start 5 + 5 removed = 10 -> 5 -> stay 5
    # t=60: the -5 at t=0 drops out -> start 5 -> int(2.5) = 2
    # t=75..105: start 2 + 3 = 5 -> 2; t=120: start 2 -> int(1.0) = 1
    assert out == {0: 5, 15: 5, 30: 5, 45: 5, 60: 2, 75: 2, 90: 2, 105: 2, 120: 1, 135: 1}


def test_scale_down_default_policy_and_min_select():
    # default scale-down (Percent 100 / 15 s) allows any drop: int(10 * 0) = 0 -> floor at minReplicas 1
    assert calculate_scale_down_limit(10, [], [], DEFAULT_SCALE_DOWN, 0.0) == 0
    rules = ScalingRules(0, "Min", (ScalingPolicy("Percent", 50, 60), ScalingPolicy("Pods", 1, 30)))
    # Min on scale-down = the smallest change = the largest proposal: max(int(5.0), 10 - 1) = 9
    assert calculate_scale_down_limit(10, [], [], rules, 0.0) == 9
    p = hpa(scale_down_stabilization_s=0, scale_down_select="Min",
            scale_down_policies=[{"type": "Percent", "value": 50, "period_s": 60},
                                 {"type": "Pods", "value": 1, "period_s": 30}])
    assert p.decide(obs(0, 10, busy=0.06)) == 9


def test_disabled_select():
    up_off = hpa(metric="inflight_per_replica", target=1, scale_up_select="Disabled")
    assert run_up(up_off, 3) == [2, 2, 2]
    down_off = hpa(scale_down_stabilization_s=0, scale_down_select="Disabled")
    assert [down_off.decide(obs(t, 10, busy=0.06)) for t in (0, 15, 600)] == [10, 10, 10]
    assert calculate_scale_up_limit(3, [], [], ScalingRules(0, "Disabled", ()), 0.0) == 3


def test_percent_limits_use_go_float_arithmetic():
    # Go: ceil(25 * (1 + 12/100)) = ceil(28.000000000000004) = 29 -- reproduced, not "fixed"
    rules = ScalingRules(0, "Max", (ScalingPolicy("Percent", 12, 15),))
    assert calculate_scale_up_limit(25, [], [], rules, 0.0) == 29
    # scale-down truncates: int32(10 * (1 - 80/100)) = int32(1.9999999999999996) = 1
    rules = ScalingRules(0, "Max", (ScalingPolicy("Percent", 80, 15),))
    assert calculate_scale_down_limit(10, [], [], rules, 0.0) == 1
    # and an exact half: int(7 * (1 - 0.5)) = int(3.5) = 3
    rules = ScalingRules(0, "Max", (ScalingPolicy("Percent", 50, 15),))
    assert calculate_scale_down_limit(7, [], [], rules, 0.0) == 3


def test_scale_events_mixed_directions():
    # up limit counts removals too: current 6 after +4 at t=0 and -2 at t=5 -> start 6 - 4 + 2 = 4
    # at t=10 -> max(4 + 4, ceil(4 * 2)) = 8
    up, down = [ScaleEvent(4, 0.0)], [ScaleEvent(2, 5.0)]
    assert calculate_scale_up_limit(6, up, down, DEFAULT_SCALE_UP, 10.0) == 8


def test_store_scale_event_reuses_outdated_slot():
    ev = [ScaleEvent(2, 0.0), ScaleEvent(3, 10.0)]
    # at t=40 with a 15 s longest period both are older than 25 -> outdated; the last one is overwritten
    new = store_scale_event(ev, 40.0, 5, 15)
    assert new == [ScaleEvent(2, 0.0, True), ScaleEvent(5, 40.0)]
    # outdated events still count for a longer period (as in Go): 2 + 5 = 7
    assert replicas_change_per_period(60, new, 40.0) == 7


# --------------------------------------------------------------------------- clamping and zero


def test_min_max_clamping():
    # above max: straight to max, metrics not even read
    assert hpa().decide(obs(0, 12, busy=NAN, hi=10)) == 10
    # below min: straight to min
    assert hpa().decide(obs(0, 1, busy=NAN, lo=3)) == 3
    # idle: ceil(0 * 4) = 0, no stabilisation -> max(0, minReplicas 2, limit 0) = 2
    assert hpa(scale_down_stabilization_s=0).decide(obs(0, 4, busy=0.0, lo=2)) == 2


def test_zero_replicas_disables_scaling():
    assert hpa().decide(obs(0, 0, busy=1.0)) == 0
    assert hpa(metric="queue_ms").decide(obs(0, 0, queue=50.0)) == 0
    # with minReplicas 0 (scale-to-zero), an object metric scales from 0: ceil(50 / 10) = 5,
    # limit max(0 + 4, ceil(0 * 2)) = 4 -> 4
    assert hpa(metric="queue_ms").decide(obs(0, 0, queue=50.0, lo=0)) == 4


def test_reset_clears_history():
    p = hpa()
    p.decide(obs(0, 4, busy=0.3))
    assert p.recommendations
    p.reset()
    assert p.recommendations == [] and p.up_events == [] and p.down_events == []
    # after reset the first decision records a fresh initial recommendation at t=500
    assert p.decide(obs(500, 4, busy=0.3)) == 4
    assert p.recommendations[0] == (4, 500.0)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("params, needle", [
    ({"metric": "cpu"}, "autoscaler.metric: must be one of busy_fraction, inflight_per_replica"),
    ({"target": -1}, "autoscaler.target: must be > 0"),
    ({"target": 1.5}, "autoscaler.target: must be <= 1.0"),
    ({"metric": "arrival_rps_per_replica"}, "autoscaler.target: is required"),
    ({"tolerance": 1.0}, "autoscaler.tolerance: must be < 1"),
    ({"scale_down_stabilization_s": 4000}, "autoscaler.scale_down_stabilization_s: must be <= 3600"),
    ({"scale_up_select": "Maximum"}, "autoscaler.scale_up_select: must be one of Max, Min, Disabled"),
    ({"scale_up_policies": []}, "autoscaler.scale_up_policies: must be a non-empty list"),
    ({"scale_up_policies": [{"type": "Pod", "value": 1, "period_s": 15}]},
     "autoscaler.scale_up_policies[0].type: must be one of Pods, Percent"),
    ({"scale_down_policies": [{"type": "Pods", "value": 0, "period_s": 15}]},
     "autoscaler.scale_down_policies[0].value: must be > 0"),
    ({"scale_down_policies": [{"type": "Pods", "value": 1, "period_s": 2000}]},
     "autoscaler.scale_down_policies[0].period_s: must be <= 1800"),
    ({"scale_down_policies": [{"type": "Pods", "value": 1}]},
     "autoscaler.scale_down_policies[0].period_s: is required"),
    ({"scale_down_policies": [{"type": "Pods", "value": 1, "period_s": 15, "x": 1}]},
     "autoscaler.scale_down_policies[0].x: unknown key"),
    ({"window": 3}, "autoscaler.window: unknown key"),
])
def test_config_errors(params, needle):
    with pytest.raises(ConfigError) as e:
        parse_autoscaler({"kind": "hpa", **params}, "autoscaler")
    assert needle in str(e.value)


def test_config_parses_defaults_and_policies():
    p = hpa()
    assert (p.metric, p.target, p.tolerance) == ("busy_fraction", 0.6, 0.1)
    assert p.scale_up == DEFAULT_SCALE_UP and p.scale_down.stabilization_window_s == 300
    spec = parse_autoscaler({"kind": "hpa", "interval_s": 15, "metric": "queue_ms",
                             "scale_down_policies": [{"type": "Pods", "value": 2, "period_s": 60}]},
                            "autoscaler")
    p = REGISTRY[spec.kind].from_params(spec.params)
    assert p.target == 10.0
    assert p.scale_down == ScalingRules(300, "Max", (ScalingPolicy("Pods", 2, 60),))
    assert math.isclose(hpa(metric="busy_fraction", target=0.5).target, 0.5)
