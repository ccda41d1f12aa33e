"""Simulator pieces calibration relies on: in-memory arrival times, node interference, rate contention."""
import numpy as np
import pytest

from simulator import scenario_from_dict
from simulator.config import ConfigError
from simulator.engine import simulate
from simulator.workload import arrival_times
from helpers import assert_same


def _sc(**over):
    d = {"seed": 3, "duration_s": 12, "warmup_s": 1,
         "workload": {"kind": "poisson", "rate_rps": 150},
         "service": {"per_batch": {1: {"kind": "gamma", "mean_ms": 6, "cv": 0.3},
                                   4: {"kind": "gamma", "mean_ms": 15, "cv": 0.3}}},
         "batching": {"max_batch_size": 4, "max_queue_delay_us": 500},
         "cluster": {"replicas": 2}, "autoscaler": {"kind": "static", "interval_s": 2}}
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and k in d and "kind" not in v else v
    return scenario_from_dict(d)


def test_in_memory_timestamps_used_as_given_and_round_trip():
    sc = _sc(workload={"kind": "timestamps", "times_s": [0.5, 0.25, 2.0, 7.5]})
    np.testing.assert_allclose(arrival_times(sc.workload, sc.duration_s, 0), [0.25, 0.5, 2.0, 7.5])
    again = scenario_from_dict(sc.to_dict())
    assert again.workload.times == sc.workload.times
    res = simulate(sc)
    np.testing.assert_allclose(res.records["arrival_s"], [0.25, 0.5, 2.0, 7.5])
    with pytest.raises(ConfigError, match="times_s.*not both"):
        _sc(workload={"kind": "timestamps", "times_s": [1.0], "path": "x.csv"})
    with pytest.raises(ConfigError, match=r"times_s\[1\]: must be a finite number >= 0"):
        _sc(workload={"kind": "timestamps", "times_s": [1.0, -2]})


@pytest.mark.parametrize("cluster", [
    {"node_cores": 1, "interference": 0.3},
    {"rate_contention": 0.004, "rate_window_s": 0.5},
    {"node_cores": 1, "interference": 0.2, "rate_contention": 0.003},
    {"node_cores": 2, "interference": 0.5, "rate_cores": 0.01, "rate_window_s": 0.5},
])
def test_contention_models_identical_in_both_engines(cluster):
    sc = _sc(cluster={"replicas": 2, **cluster})
    fast, ref = simulate(sc, engine="fast"), simulate(sc, engine="reference")
    assert_same(fast, ref)


def test_closed_loop_rate_contention_identical_in_both_engines():
    sc = _sc(workload={"kind": "closed_loop", "users": 12, "think": {"kind": "exponential", "mean_s": 0.05}},
             cluster={"replicas": 1, "rate_contention": 0.005})
    assert_same(simulate(sc, engine="fast"), simulate(sc, engine="reference"))


def test_rate_contention_slows_compute_by_the_stated_factor():
    # deterministic 5 ms batches at a steady 100 req/s (timestamps on a 10 ms grid): every batch after
    # the first bin sees r = 100 req/s -> compute 5 * (1 + 0.002 * 100) = 6 ms
    t = list(np.arange(0, 5, 0.01))
    sc = _sc(workload={"kind": "timestamps", "times_s": t}, duration_s=5, warmup_s=1.0,
             service={"per_batch": {1: {"kind": "deterministic", "mean_ms": 5}}},
             batching={"max_batch_size": 1, "max_queue_delay_us": 0},
             cluster={"replicas": 1, "rate_contention": 0.002, "rate_window_s": 1.0})
    res = simulate(sc)
    assert res.summary["compute_ms"]["mean"] == pytest.approx(6.0, rel=1e-6)
    base = simulate(sc.replace(cluster=sc.cluster.__class__(replicas=1)))
    assert base.summary["compute_ms"]["mean"] == pytest.approx(5.0, rel=1e-9)


def test_interference_factor_matches_formula():
    # 3 replicas, node_cores 1: with k batches executing the k-th starts at (1 + a (k - 1)) x
    sc = _sc(workload={"kind": "timestamps", "times_s": [1.0, 1.0, 1.0]}, duration_s=3, warmup_s=0,
             service={"per_batch": {1: {"kind": "deterministic", "mean_ms": 10}}},
             batching={"max_batch_size": 1, "max_queue_delay_us": 0},
             cluster={"replicas": 3, "load_balancer": "round_robin", "node_cores": 1, "interference": 0.5})
    r = simulate(sc).records
    comp = np.sort((r["completion_s"] - r["dispatch_s"]) * 1e3)
    np.testing.assert_allclose(comp, [10.0, 15.0, 20.0], rtol=1e-9)


@pytest.mark.parametrize("rate_cores, replicas, expected_ms", [
    # one replica, batches never overlap (10 ms apart, 5 ms each): k = 1, r = 100 req/s
    (0.015, 1, 5 * (1 + 0.5 * (1 + 1.5 - 2))),      # demand 2.5 cores > 2: 6.25 ms
    (0.008, 1, 5.0),                                  # demand 1.8 cores <= 2: no slowdown
    (0.0, 1, 5.0),
])
def test_rate_cores_join_the_interference_term(rate_cores, replicas, expected_ms):
    t = list(np.arange(0, 5, 0.01))
    cl = {"replicas": replicas, "node_cores": 2, "interference": 0.5, "rate_window_s": 1.0}
    if rate_cores:
        cl["rate_cores"] = rate_cores
    sc = _sc(workload={"kind": "timestamps", "times_s": t}, duration_s=5, warmup_s=1.0,
             service={"per_batch": {1: {"kind": "deterministic", "mean_ms": 5}}},
             batching={"max_batch_size": 1, "max_queue_delay_us": 0}, cluster=cl)
    for engine in ("fast", "reference"):
        res = simulate(sc, engine=engine)
        assert res.summary["compute_ms"]["mean"] == pytest.approx(expected_ms, rel=1e-6), engine


def test_rate_cores_with_two_overlapping_batches():
    # two replicas, pairs of simultaneous arrivals every 20 ms (100 req/s): the first of a pair starts
    # with k = 1, the second with k = 2; demand 1 + 0.6 - 2 < 0 -> 5 ms, 2 + 0.6 - 2 = 0.6 -> 5 * 1.3 ms
    t = sorted(list(np.arange(0, 5, 0.02)) * 2)
    sc = _sc(workload={"kind": "timestamps", "times_s": t}, duration_s=5, warmup_s=1.0,
             service={"per_batch": {1: {"kind": "deterministic", "mean_ms": 5}}},
             batching={"max_batch_size": 1, "max_queue_delay_us": 0},
             cluster={"replicas": 2, "node_cores": 2, "interference": 0.5, "rate_cores": 0.006})
    res = simulate(sc)
    assert res.summary["compute_ms"]["mean"] == pytest.approx((5.0 + 6.5) / 2, rel=1e-6)


def test_rate_cores_need_interference():
    with pytest.raises(ConfigError, match=r"cluster.rate_cores: .*needs interference > 0"):
        _sc(cluster={"replicas": 1, "rate_cores": 0.01})
