"""Knative KPA policy: hand-computed decisions (arithmetic in the comments)."""
import pytest

from simulator.config import ConfigError, parse_autoscaler
from simulator.knative import KnativePolicy, PanicState, kpa_scale, window_average
from simulator.policy import REGISTRY, Observation

NAN = float("nan")


def obs(t, replicas, ready=None, inflight=0.0, lo=1, hi=100, interval=2.0):
    ready = replicas if ready is None else ready
    return Observation(time_s=t, interval_s=interval, arrival_rps=0.0, completion_rps=0.0,
                       latency_p50_ms=NAN, latency_p95_ms=NAN, latency_p99_ms=NAN,
                       slo_violation_frac=0.0, queue_ms=NAN, batch_size=1.0, busy_fraction=NAN,
                       inflight=inflight, replicas=replicas, replicas_ready=ready,
                       replicas_pending=replicas - ready, failures=0, slo_ms=100.0,
                       min_replicas=lo, max_replicas=hi)


def kpa(**params):
    return KnativePolicy.from_params(params, "autoscaler")


def test_registered_and_defaults():
    assert REGISTRY["knative"] is KnativePolicy
    p = kpa()
    assert (p.target, p.stable_window_s, p.panic_window_s, p.panic_threshold,
            p.max_scale_up_rate, p.max_scale_down_rate, p.scale_to_zero) == \
        (4.0, 60.0, 6.0, 2.0, 1000.0, 2.0, False)


def test_window_holds_three_samples_at_2s():
    samples = [(float(t), float(t)) for t in range(0, 11, 2)]   # values = times 0, 2, ..., 10
    # 6 s panic window at now=10: t in (4, 10] -> 6, 8, 10 -> mean 8
    assert window_average(samples, 10.0, 6.0) == 8.0
    assert window_average(samples, 10.0, 60.0) == 5.0            # all six: (0+2+...+10)/6
    assert window_average([], 10.0, 6.0) is None


def test_panic_entry_hold_and_exit_timeline():
    """Defaults (target 4, stable 60 s, panic 6 s, threshold 2), 2 s interval;
    replicas become ready at once (ready = last decision). In flight: 4 until
    t=58, 40 at t=60, 62, 64, then 4 again."""
    p = kpa()
    cur, out = 1, {}
    for t in range(0, 131, 2):
        load = 40.0 if t in (60, 62, 64) else 4.0
        cur = out[t] = p.decide(obs(t, cur, inflight=load))
    # t<=58: stable = panic = 4 -> ceil(4/4) = 1; no panic (1/1 < 2)
    assert all(out[t] == 1 for t in range(0, 59, 2))
    # t=60, ready 1: stable (0,60] = (29*4 + 40)/30 = 5.2 -> 2; panic (54,60] = (4+4+40)/3 = 16 -> 4;
    #   4/1 >= 2 -> PANIC (panic_time=60); max(2, 4) = 4
    assert out[60] == 4
    # t=62, ready 4: stable (28*4+80)/30 = 6.4 -> 2, floor(4/2) = 2; panic (4+40+40)/3 = 28 -> 7;
    #   7/4 = 1.75 < 2 (not re-triggered) but still panicking -> max(2, 7, 4) = 7
    assert out[62] == 7
    # t=64, ready 7: panic 40 -> 10; 10/7 < 2; max(max(2, floor(3.5)=3), 10, 7) = 10
    assert out[64] == 10
    # t=66..120: panic value falls to 28 -> 7, 16 -> 4, then 4 -> 1, but no scale-down in panic: 10
    assert all(out[t] == 10 for t in range(66, 121, 2))
    # t=122: 60 + 60 < 122 -> un-panic; stable (62,122] = (29*4 + 40)/30 = 5.2 -> 2,
    #   scale-down rate: floor(10/2) = 5 -> 5
    assert out[122] == 5
    # t=124: stable (64,124] = 4 -> 1, floor(5/2) = 2 -> 2; t=126: floor(2/2) = 1 -> 1
    assert (out[124], out[126], out[128], out[130]) == (2, 1, 1, 1)


def test_panic_extended_while_over_threshold():
    st = PanicState()
    kw = dict(target=1.0, panic_threshold=2.0, stable_window_s=60.0,
              max_scale_up_rate=1000.0, max_scale_down_rate=2.0)
    # t=0: panic 10 on 2 ready -> 10/2 >= 2 -> panic at 0, max(ceil(3), 10) = 10
    d, st = kpa_scale(0.0, 3.0, 10.0, 2, st, **kw)
    assert (d, st) == (10, PanicState(0.0, 10))
    # t=50: panic 30 on 10 ready -> 3 >= 2 -> panic_time moves to 50; 30
    d, st = kpa_scale(50.0, 3.0, 30.0, 10, st, **kw)
    assert (d, st) == (30, PanicState(50.0, 30))
    # t=100: quiet (stable 3, panic 3 on 30 ready), 50 + 60 = 110 not < 100 -> hold 30
    d, st = kpa_scale(100.0, 3.0, 3.0, 30, st, **kw)
    assert (d, st) == (30, PanicState(50.0, 30))
    # t=110: 110 < 110 is false -> still hold; t=111: un-panic -> ceil(3) = 3, floor(30/2) = 15 -> 15
    assert kpa_scale(110.0, 3.0, 3.0, 30, st, **kw)[0] == 30
    assert kpa_scale(111.0, 3.0, 3.0, 30, st, **kw) == (15, PanicState())


def test_rate_limits():
    kw = dict(target=1.0, panic_threshold=2.0, stable_window_s=60.0, max_scale_down_rate=2.0)
    # scale-up: 100 concurrent on 1 ready, max_scale_up_rate 10 -> ceil(10 * 1) = 10 (panic: 100/1 >= 2)
    assert kpa_scale(0.0, 100.0, 100.0, 1, PanicState(), max_scale_up_rate=10.0, **kw)[0] == 10
    # default rate 1000 does not bind: ceil(100/1) = 100
    assert kpa_scale(0.0, 100.0, 100.0, 1, PanicState(), max_scale_up_rate=1000.0, **kw)[0] == 100
    # scale-down: no load on 10 ready -> floor(10 / 2) = 5; on 3 ready -> floor(1.5) = 1
    assert kpa_scale(0.0, 0.0, 0.0, 10, PanicState(), max_scale_up_rate=1000.0, **kw)[0] == 5
    assert kpa_scale(0.0, 0.0, 0.0, 3, PanicState(), max_scale_up_rate=1000.0, **kw)[0] == 1
    # 0 ready counts as 1: 8 concurrent, target 1 -> ceil(8) = 8 but max_up = ceil(2 * 1) = 2
    assert kpa_scale(0.0, 8.0, 8.0, 0, PanicState(), max_scale_up_rate=2.0, **kw)[0] == 2


def test_policy_scale_up_rate_param():
    # 40 in flight, target 4 -> 10 wanted; max_scale_up_rate 3 on 1 ready -> 3, then ceil(3*3) = 9, then 10
    p = kpa(max_scale_up_rate=3)
    seq, cur = [], 1
    for t in (0, 2, 4):
        cur = p.decide(obs(t, cur, inflight=40.0))
        seq.append(cur)
    assert seq == [3, 9, 10]


def test_fresh_autoscaler_starts_in_panic():
    # 4 ready at the first decision: panic at t=0 with maxPanicPods 4, so no load still holds 4
    # until 0 + 60 < t, i.e. t=62 at a 2 s interval; then floor(4/2) = 2
    p = kpa()
    out = {t: p.decide(obs(t, 4, inflight=0.0)) for t in range(0, 63, 2)}
    assert all(out[t] == 4 for t in range(0, 61, 2))
    assert out[62] == 2


def test_scale_to_zero_floor():
    # 1 ready, no load: ceil(0) = 0, floor(1/2) = 0 -> 0; scale_to_zero false keeps max(min, 1)
    assert kpa().decide(obs(0, 1, inflight=0.0, lo=0)) == 1
    assert kpa(scale_to_zero=True).decide(obs(0, 1, inflight=0.0, lo=0)) == 0
    assert kpa(scale_to_zero=True).decide(obs(0, 1, inflight=0.0, lo=2)) == 2
    assert kpa().decide(obs(0, 1, inflight=400.0, hi=8)) == 8          # capped at max_replicas


def test_no_data_keeps_current():
    p = kpa()
    assert p.decide(obs(0, 3, inflight=NAN)) == 3
    assert p.samples == []


def test_reset():
    p = kpa()
    p.decide(obs(0, 1, inflight=40.0))
    p.reset()
    assert p.samples == [] and p.state is None


@pytest.mark.parametrize("params, needle", [
    ({"target_concurrency": 0}, "autoscaler.target_concurrency: must be > 0"),
    ({"stable_window_s": 3}, "autoscaler.stable_window_s: must be >= 6"),
    ({"panic_window_s": 90}, "autoscaler.panic_window_s: must be <= stable_window_s"),
    ({"panic_threshold": 1.0}, "autoscaler.panic_threshold: must be >= 1.1"),
    ({"max_scale_down_rate": 1}, "autoscaler.max_scale_down_rate: must be > 1"),
    ({"scale_to_zero": "yes"}, "autoscaler.scale_to_zero: must be true or false"),
    ({"target": 4}, "autoscaler.target: unknown key"),
])
def test_config_errors(params, needle):
    with pytest.raises(ConfigError) as e:
        parse_autoscaler({"kind": "knative", **params}, "autoscaler")
    assert needle in str(e.value)
