"""The fast compiled data plane and the per-request SimPy reference engine agree exactly.

Both engines draw every random quantity from the same counter-based key
(:mod:`simulator.rng`), so for the same scenario they must produce the same
per-request records (arrival, dispatch, completion to 1e-9 s; replica, batch
size, status), the same summary and the same per-interval timeline. Scenarios
here cover dynamic batching (preferred sizes, delay, max batch), several
instances, queue-full rejections, queue timeouts, all three load balancers,
closed-loop users, per-request overhead, shifted / gamma / lognormal / Weibull /
empirical service, node interference, exact-tie timestamp workloads, an HPA
and scripted scale-ups / scale-downs with start-up delays (drains, replicas
removed while starting, scaling to zero). Each case is a few thousand requests.
"""
import math

import numpy as np
import pytest

from simulator import scenario_from_dict
from simulator.engine import Simulation, simulate
from helpers import assert_same  # noqa: E402

LBS = ("round_robin", "random", "least_outstanding")


# --------------------------------------------------------------------------- comparison


def scripted(sc, engine, desired, **kw):
    """Run with a hand-made sequence of desired replica counts, one per control tick."""
    sim = Simulation(sc, engine=engine, **kw)
    obs = sim.start()
    i = 0
    while obs is not None:
        obs = sim.step(desired[min(i, len(desired) - 1)])
        i += 1
    return sim.result()


def both(d, desired=None):
    sc = scenario_from_dict(d)
    if desired is None:
        fast, ref = simulate(sc, engine="fast"), simulate(sc, engine="reference")
    else:
        fast, ref = scripted(sc, "fast", desired), scripted(sc, "reference", desired)
    assert fast.summary["requests"] > 0
    assert_same(fast, ref)
    return fast, ref


def statuses(res):
    return np.bincount(res.records["status"], minlength=4)


# --------------------------------------------------------------------------- hand-picked cases


def test_batching_rejections_timeouts_round_robin():
    fast, _ = both({
        "seed": 1, "duration_s": 6, "warmup_s": 1, "slo_ms": 60,
        "workload": {"kind": "poisson", "rate_rps": 700},
        "service": {"per_batch": {1: {"kind": "gamma", "mean_ms": 12, "cv": 0.4},
                                  4: {"kind": "gamma", "mean_ms": 25, "cv": 0.3},
                                  8: {"kind": "gamma", "mean_ms": 40, "cv": 0.3}},
                    "overhead": {"kind": "lognormal", "mean_ms": 2, "cv": 0.6}},
        "batching": {"max_batch_size": 8, "preferred_batch_sizes": [4, 8], "max_queue_delay_us": 3000,
                     "instances": 2, "max_queue_size": 12, "queue_timeout_us": 25000},
        "cluster": {"replicas": 2, "load_balancer": "round_robin"},
        "autoscaler": {"kind": "static", "interval_s": 2}})
    s = statuses(fast)
    assert s[0] > 1000 and s[1] > 0 and s[2] > 0, s          # ok, rejected and timed out all occur
    assert fast.records["batch_size"].max() == 8 and set(fast.records["batch_size"]) >= {1, 4, 8}


def test_random_lb_shifted_and_lognormal():
    fast, _ = both({
        "seed": 2, "duration_s": 20, "warmup_s": 2,
        "workload": {"kind": "poisson", "rate_rps": 250},
        "service": {"per_batch": {1: {"kind": "exponential", "mean_ms": 9, "shift_ms": 5},
                                  4: {"kind": "lognormal", "mean_ms": 20, "cv": 0.8}}},
        "batching": {"max_batch_size": 4, "max_queue_delay_us": 1500, "instances": 1,
                     "queue_timeout_us": 60000},
        "cluster": {"replicas": 3, "load_balancer": "random"},
        "autoscaler": {"kind": "static", "interval_s": 4}})
    assert len(set(fast.records["replica"])) == 3


def test_least_outstanding_closed_loop_weibull():
    fast, _ = both({
        "seed": 3, "duration_s": 20, "warmup_s": 1,
        "workload": {"kind": "closed_loop", "users": 40, "spawn_rate": 8,
                     "think": {"kind": "gamma", "mean_s": 0.2, "cv": 1.5}},
        "service": {"kind": "weibull", "mean_ms": 10, "cv": 0.7,
                    "overhead": {"kind": "exponential", "mean_ms": 3}},
        "batching": {"max_batch_size": 4, "preferred_batch_sizes": [2], "max_queue_delay_us": 800,
                     "instances": 2},
        "cluster": {"replicas": 2, "load_balancer": "least_outstanding"},
        "autoscaler": {"kind": "static", "interval_s": 5}})
    assert fast.summary["requests"] > 1000


def test_closed_loop_zero_think_failing_users():
    # think 0: a successful user re-sends at the instant of its response (ties with
    # completions); rejected users back off by the 1 ms floor.
    fast, _ = both({
        "seed": 4, "duration_s": 4,
        "workload": {"kind": "closed_loop", "users": 12, "think_s": 0.0},
        "service": {"kind": "empirical", "quantiles_ms": [2, 4, 5, 9, 30]},
        "batching": {"max_batch_size": 2, "instances": 1, "max_queue_size": 3},
        "cluster": {"replicas": 2, "load_balancer": "round_robin"},
        "autoscaler": {"kind": "static", "interval_s": 1}})
    s = statuses(fast)
    assert s[0] > 500 and s[1] > 500, s


def test_closed_loop_simultaneous_users_ordered_by_index():
    # Deterministic service and a think time that is exactly 0 two times in three: users
    # served in one batch re-send at the same instant and must be taken in user order
    # (request ids, and so routes, follow it; later think draws are keyed by user).
    both({
        "seed": 10, "duration_s": 3,
        "workload": {"kind": "closed_loop", "users": 16,
                     "think": {"kind": "empirical", "quantiles_s": [0, 0, 0, 0.004, 0.02]}},
        "service": {"per_batch": {1: {"mean_ms": 2}, 4: {"mean_ms": 5}}},
        "batching": {"max_batch_size": 4, "max_queue_delay_us": 1000, "instances": 1},
        "cluster": {"replicas": 3, "load_balancer": "round_robin"},
        "autoscaler": {"kind": "static", "interval_s": 1}})


def test_timeout_equal_to_delay():
    # queue_timeout_us == max_queue_delay_us: a request alone in the queue reaches its
    # deadline at the same instant as the batcher's delay timer; the timeout wins.
    fast, _ = both({
        "seed": 11, "duration_s": 10,
        "workload": {"kind": "poisson", "rate_rps": 300},
        "service": {"kind": "gamma", "mean_ms": 5, "cv": 0.5},
        "batching": {"max_batch_size": 4, "preferred_batch_sizes": [2], "max_queue_delay_us": 2000,
                     "instances": 2, "queue_timeout_us": 2000},
        "cluster": {"replicas": 2, "load_balancer": "random"},
        "autoscaler": {"kind": "static", "interval_s": 2}})
    s = statuses(fast)
    assert s[0] > 500 and s[2] > 500, s


def test_interference_shared_node():
    both({
        "seed": 5, "duration_s": 15, "warmup_s": 2,
        "workload": {"kind": "poisson", "rate_rps": 300},
        "service": {"kind": "exponential", "mean_ms": 6},
        "batching": {"max_batch_size": 4, "max_queue_delay_us": 500, "instances": 2},
        "cluster": {"replicas": 3, "load_balancer": "least_outstanding", "node_cores": 2,
                    "interference": 0.25},
        "autoscaler": {"kind": "static", "interval_s": 3}})


def test_exact_ties_timestamps_deterministic(tmp_path):
    # Arrivals on a 1 ms grid with many duplicates, deterministic service, a 1 ms batcher
    # delay and 3 ms timeouts: completions, timeouts, delay timers and arrivals coincide.
    g = np.random.default_rng(6)
    t = np.sort(g.integers(0, 6000, size=5000)) * 1e-3
    p = tmp_path / "ts.csv"
    p.write_text("t\n" + "\n".join(f"{x:.3f}" for x in t) + "\n")
    fast, _ = both({
        "seed": 6, "duration_s": 6.5, "warmup_s": 0.5,
        "workload": {"kind": "timestamps", "path": str(p), "column": "t"},
        "service": {"per_batch": {1: {"mean_ms": 3}, 4: {"mean_ms": 12}}},
        "batching": {"max_batch_size": 4, "preferred_batch_sizes": [3], "max_queue_delay_us": 1000,
                     "instances": 2, "max_queue_size": 6, "queue_timeout_us": 3000},
        "cluster": {"replicas": 2, "load_balancer": "least_outstanding"},
        "autoscaler": {"kind": "static", "interval_s": 1}})
    assert statuses(fast)[2] > 0


def test_hpa_scales_up_and_down():
    fast, _ = both({
        "seed": 7, "duration_s": 150, "warmup_s": 10,
        "workload": {"kind": "schedule", "segments": [
            {"kind": "constant", "duration_s": 20, "rate_rps": 15},
            {"kind": "spike", "duration_s": 80, "rate_rps": 15, "peak_rps": 90, "at_s": 5, "width_s": 40},
            {"kind": "constant", "duration_s": 50, "rate_rps": 10}]},
        "service": {"per_batch": {1: {"kind": "gamma", "mean_ms": 20, "cv": 0.3},
                                  4: {"kind": "gamma", "mean_ms": 50, "cv": 0.3}},
                    "overhead_ms": 1.5},
        "batching": {"max_batch_size": 4, "preferred_batch_sizes": [4], "max_queue_delay_us": 4000},
        "cluster": {"replicas": 1, "min_replicas": 1, "max_replicas": 6,
                    "startup_s": {"kind": "lognormal", "mean_s": 4, "cv": 0.4}},
        "autoscaler": {"kind": "hpa", "interval_s": 5, "metric": "busy_fraction", "target": 0.5,
                       "scale_down_stabilization_s": 20}})
    desired = [row["desired"] for row in fast.timeline]
    assert max(desired) > 1 and desired[-1] < max(desired), desired
    assert any(not math.isnan(r.drain_s) for r in fast.replicas)


SCRIPT_BASE = {
    "seed": 8, "duration_s": 60, "warmup_s": 4, "slo_ms": 80,
    "workload": {"kind": "poisson", "rate_rps": 120},
    "service": {"per_batch": {1: {"kind": "gamma", "mean_ms": 15, "cv": 0.5},
                              8: {"kind": "gamma", "mean_ms": 45, "cv": 0.5}},
                "overhead": {"kind": "gamma", "mean_ms": 1, "cv": 1}},
    "batching": {"max_batch_size": 8, "preferred_batch_sizes": [4], "max_queue_delay_us": 2000,
                 "instances": 2, "max_queue_size": 30, "queue_timeout_us": 150000},
    "cluster": {"replicas": 2, "min_replicas": 0, "max_replicas": 8,
                "startup_s": {"kind": "exponential", "mean_s": 2.5}},
    "autoscaler": {"kind": "static", "interval_s": 2}}


@pytest.mark.parametrize("lb", LBS)
def test_scripted_scaling(lb):
    # up, down while some are still starting, down to one (drains of busy replicas),
    # up again, and a last scale-up whose start-ups straddle the end of the run
    desired = [2, 5, 5, 3, 3, 6, 1, 1, 1, 4, 4, 4, 2, 6, 6, 3, 2, 2, 5, 1, 3, 3, 3, 3, 3, 3, 2, 2, 1, 8]
    d = dict(SCRIPT_BASE, cluster=dict(SCRIPT_BASE["cluster"], load_balancer=lb))
    fast, _ = both(d, desired)
    assert sum(not math.isnan(r.drain_s) and r.gone_s > r.drain_s for r in fast.replicas) > 0
    assert any(math.isnan(r.ready_s) and not math.isnan(r.drain_s) for r in fast.replicas)


def test_scale_up_at_end_of_run():
    # Replicas requested at the last tick become ready while in-flight requests drain out
    # after duration_s: only the reference engine steps the control plane then (see
    # assert_same); every request, the summary and the timeline still agree.
    d = dict(SCRIPT_BASE, duration_s=10,
             cluster=dict(SCRIPT_BASE["cluster"], startup_s={"kind": "deterministic", "mean_s": 0.005}))
    fast, ref = both(d, [2, 2, 2, 2, 8])
    assert max(fast.records["completion_s"]) > 10.005
    assert sum(r.requested_s == 10 for r in fast.replicas) == 6


def test_startup_delay_hook():
    # replicas added by scale-ups (ticks every 2 s, desired[i] answered at t = 2 (i + 1)): the
    # hook's delay, never ready (inf), or the scenario's draw (None)
    d = dict(SCRIPT_BASE, duration_s=20)
    answers = {2: 0.25, 3: math.inf, 4: None, 5: 0.0}
    calls = {"fast": [], "reference": []}
    runs = {}
    for engine in calls:
        def hook(uid, t, engine=engine):
            calls[engine].append((uid, t))
            return answers.get(uid, 1.5)
        runs[engine] = scripted(scenario_from_dict(d), engine, [2, 5, 5, 6, 6, 6, 2], startup_delay=hook)
    fast, ref = runs["fast"], runs["reference"]
    assert_same(fast, ref)
    assert calls["fast"] == calls["reference"] == [(2, 4.0), (3, 4.0), (4, 4.0), (5, 8.0)]
    r = {x.uid: x for x in fast.replicas}
    assert r[0].ready_s == 0.0 and r[1].ready_s == 0.0                  # initial replicas: ready at once
    assert r[2].ready_s == 4.25 and math.isnan(r[3].ready_s) and r[5].ready_s == 8.0
    sim = Simulation(scenario_from_dict(d))
    assert r[4].ready_s == 4.0 + sim.drawn_startup_delay(4) and sim.drawn_startup_delay(4) > 0
    assert len(fast.replicas) == 6


def test_scale_to_zero_drops():
    desired = [1, 0, 0, 0, 2, 2, 0, 3, 3, 1]
    d = dict(SCRIPT_BASE, duration_s=20, cluster=dict(SCRIPT_BASE["cluster"], load_balancer="round_robin"))
    fast, _ = both(d, desired)
    assert statuses(fast)[3] > 0


def test_histogram_summary_without_records():
    both({
        "seed": 9, "duration_s": 20, "warmup_s": 2, "record_requests": False,
        "workload": {"kind": "poisson", "rate_rps": 150},
        "service": {"kind": "lognormal", "mean_ms": 10, "cv": 1.2, "overhead_ms": 1},
        "batching": {"max_batch_size": 4, "max_queue_delay_us": 1000, "instances": 2},
        "cluster": {"replicas": 2},
        "autoscaler": {"kind": "static", "interval_s": 4}})


# --------------------------------------------------------------------------- random scenarios


def random_scenario(seed: int):
    """A scenario drawn at random from the feature space (a few thousand requests)."""
    g = np.random.default_rng(1000 + seed)
    mbs = int(g.choice([1, 2, 4, 8]))
    pref = sorted({int(x) for x in g.integers(1, mbs + 1, size=int(g.integers(0, 3)))}) if mbs > 1 else []
    kind = str(g.choice(["exponential", "gamma", "lognormal", "weibull", "deterministic", "shifted"]))
    mean = float(g.uniform(3, 20))
    if kind == "shifted":
        d1 = {"kind": "exponential", "mean_ms": mean, "shift_ms": mean * 0.6}
    elif kind == "deterministic":
        d1 = {"kind": "deterministic", "mean_ms": mean}
    elif kind == "exponential":
        d1 = {"kind": "exponential", "mean_ms": mean}
    else:
        d1 = {"kind": kind, "mean_ms": mean, "cv": float(g.uniform(0.2, 1.5))}
    service = {"per_batch": {1: d1}, "batch_slope": float(g.uniform(0.1, 0.8))}
    if g.random() < 0.5:
        service["overhead"] = {"kind": "lognormal", "mean_ms": float(g.uniform(0.5, 5)), "cv": 0.7}
    inst = int(g.integers(1, 4))
    reps = int(g.integers(1, 4))
    cap = reps * inst * 1000.0 / mean * (1 + 0.5 * (mbs > 1))
    closed = g.random() < 0.3
    if closed:
        users = int(g.integers(5, 60))
        think = float(g.uniform(0, 0.1))
        workload = {"kind": "closed_loop", "users": users, "think": {"kind": "exponential", "mean_s": think}
                    if think > 0.01 else {"kind": "deterministic", "mean_s": 0.0},
                    "spawn_rate": float(g.choice([0, 20]))}
        dur = 3000.0 / min(cap, users / (think + mean * 1e-3))
    else:
        rate = cap * float(g.uniform(0.4, 1.3))
        workload = {"kind": "poisson", "rate_rps": rate}
        dur = 3000.0 / rate
    dur = float(np.clip(dur, 2.0, 60.0))
    return {
        "seed": seed, "duration_s": dur, "warmup_s": dur * float(g.uniform(0, 0.2)),
        "slo_ms": mean * 3,
        "workload": workload, "service": service,
        "batching": {"max_batch_size": mbs, "preferred_batch_sizes": pref,
                     "max_queue_delay_us": int(g.choice([0, 300, 2000, 8000])), "instances": inst,
                     "max_queue_size": int(g.choice([0, 0, 4, 16])),
                     "queue_timeout_us": int(g.choice([0, 0, int(mean * 2000), 200000]))},
        "cluster": {"replicas": reps, "load_balancer": str(g.choice(LBS)),
                    "interference": float(g.choice([0, 0, 0.2])), "node_cores": int(g.integers(0, 3))},
        "autoscaler": {"kind": "static", "interval_s": dur / int(g.integers(2, 8))},
    }


@pytest.mark.parametrize("seed", range(12))
def test_random_scenarios(seed):
    both(random_scenario(seed))
