"""Serving configurations and rolling reconfiguration inside one deployment (simulator.variants, Simulation.
reconfigure): the drain rule by hand, hand-computed rolling-update timelines and costs with deterministic
start-ups, requests served with their replica's configuration, both engines identical per request through
reconfigurations, scale-downs during a roll and a second reconfiguration mid-roll, and bad input refused."""
import math

import numpy as np
import pytest

from helpers import assert_same  # noqa: E402
from simulator import scenario_from_dict
from simulator.config import Dist, parse_service
from simulator.engine import Simulation
from simulator.variants import ServingConfig, default_config, rolling_update_drains

ENGINES = ("fast", "reference")


def config(name, ms, max_batch_size=1, startup_s=None):
    """A configuration with deterministic compute ``ms`` at every batch size (or a per-batch dict)."""
    spec = {"per_batch": {b: {"mean_ms": m} for b, m in ms.items()}} if isinstance(ms, dict) else {"mean_ms": ms,
                                                                                                   "batch_slope": 0}
    return ServingConfig(name, parse_service(spec, name), max_batch_size,
                         None if startup_s is None else Dist("deterministic", float(startup_s), 0.0))


A, B, C = config("A", 10), config("B", 30, startup_s=4), config("C", 20, startup_s=2)


def quiet(times_s=(0.0,), duration_s=30.0, warmup_s=0.0, interval_s=2.0, replicas=3):
    """Deterministic, no overhead, batching off, round robin, a few arrivals at hand-placed instants."""
    return scenario_from_dict({
        "seed": 1, "duration_s": duration_s, "warmup_s": warmup_s, "slo_ms": 1000,
        "workload": {"kind": "timestamps", "times_s": list(times_s)},
        "service": {"mean_ms": 10}, "batching": {"max_batch_size": 1},
        "cluster": {"replicas": replicas, "max_replicas": 8, "startup_s": 1, "load_balancer": "round_robin"},
        "autoscaler": {"kind": "static", "interval_s": interval_s}})


def run(sc, engine, configs, plan, desired=None, **kw):
    """Step a run; ``plan``: {tick time: configuration index to reconfigure to at that tick};
    ``desired``: {tick time: replicas to ask for from then on} (default: the scenario's replicas)."""
    sim = Simulation(sc, engine=engine, configs=configs, **kw)
    obs = sim.start()
    n = sc.cluster.replicas
    while obs is not None:
        t = obs.time_s
        n = (desired or {}).get(t, n)
        if t in plan:
            sim.reconfigure(plan[t])
        obs = sim.step(n)
    return sim, sim.result()


def life(res):
    """(config, requested, ready, drain, gone) per replica, by id."""
    return [(r.config, r.requested_s, r.ready_s, r.drain_s, r.gone_s) for r in res.replicas]


def same_life(got, expected):
    assert len(got) == len(expected), got
    for g, e in zip(got, expected):
        assert g[0] == e[0] and all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-9)
                                    for x, y in zip(g[1:], e[1:])), (got, expected)


NAN = math.nan


def test_rolling_update_drains_by_hand():
    # (old ready, new ready, desired) -> old replicas to drain
    cases = {(3, 0, 3): 0,      # roll starts: nothing new is ready, all old keep serving
             (3, 1, 3): 1,      # each new ready replica lets one old one go
             (2, 2, 3): 1,
             (1, 3, 3): 1,      # the last one
             (3, 3, 3): 3,      # all new ready at once: all old go
             (3, 0, 1): 2,      # desired lowered to 1 mid-roll: old ones drain first, one keeps serving
             (0, 2, 3): 0,      # no old replica: nothing to drain
             (2, 0, 0): 2}      # scaled to zero
    for (old, new, desired), k in cases.items():
        assert rolling_update_drains(old, new, desired) == k, (old, new, desired)


@pytest.mark.parametrize("engine", ENGINES)
def test_rolling_update_timeline_and_cost(engine):
    # 3 A ready from 0; at t=10 reconfigure to B (start-up 4 s): 3 B requested at 10, ready at 14, where the
    # 3 A drain (idle: gone at once). Warm-up 5 s, window [5, 30]: A 3 x (14 - 5) = 27, B 3 x (30 - 10) = 60.
    sim, res = run(quiet(warmup_s=5.0), engine, [A, B], {10.0: 1})
    same_life(life(res), [(0, 0, 0, 14, 14)] * 3 + [(1, 10, 14, NAN, NAN)] * 3)
    s = res.summary
    assert s["variant_seconds"] == pytest.approx({"A": 27.0, "B": 60.0})
    assert s["replica_seconds"] == pytest.approx(87.0) and s["reconfigurations"] == 1
    rows = {row["time_s"]: row for row in res.timeline}
    assert (rows[8.0]["config"], rows[8.0]["rolling"]) == (0, 0)
    assert (rows[10.0]["config"], rows[10.0]["rolling"]) == (1, 1)       # the decision at 10 asked for B
    assert (rows[12.0]["rolling"], rows[12.0]["replicas"], rows[12.0]["replicas_ready"],
            rows[12.0]["replicas_pending"]) == (1, 3, 3, 3)             # 3 B asked for, 3 A serve, 3 B start
    assert (rows[14.0]["config"], rows[14.0]["rolling"], rows[14.0]["replicas_ready"]) == (1, 0, 3)
    assert sim.config == 1 and not sim.rolling
    assert sim.config_seconds(0, 30) == pytest.approx({"A": 42.0, "B": 60.0})


@pytest.mark.parametrize("engine", ENGINES)
def test_staggered_startups_drain_one_at_a_time(engine):
    # B start-ups 2, 4, 6 s (a startup_delay hook): B ready at 12, 14, 16; one A drains at each, the most recently
    # ready first (all A ready at 0: the highest id first). A: 12 + 14 + 16 = 42 replica-seconds, B: 3 x 20 = 60.
    delays = iter([2.0, 4.0, 6.0])
    sim, res = run(quiet(), engine, [A, B], {10.0: 1}, startup_delay=lambda uid, t: next(delays))
    same_life(life(res), [(0, 0, 0, 16, 16), (0, 0, 0, 14, 14), (0, 0, 0, 12, 12),
                          (1, 10, 12, NAN, NAN), (1, 10, 14, NAN, NAN), (1, 10, 16, NAN, NAN)])
    assert res.summary["variant_seconds"] == pytest.approx({"A": 42.0, "B": 60.0})


@pytest.mark.parametrize("engine", ENGINES)
def test_requests_served_with_their_replicas_configuration(engine):
    # A = 10 ms, B = 30 ms, batching off, no overhead. Arrivals at 1, 2, 3 (A), 12 (during the roll: the old A
    # replicas still serve), 20, 21, 22 (B, ready at 14).
    times = [0.0, 1.0, 2.0, 3.0, 12.0, 20.0, 21.0, 22.0]
    sim, res = run(quiet(times), engine, [A, B], {10.0: 1})
    r = res.records
    compute_ms = (r["completion_s"] - r["dispatch_s"]) * 1e3
    assert np.allclose(r["dispatch_s"], r["arrival_s"]) and (r["status"] == 0).all()
    assert np.allclose(compute_ms, [10, 10, 10, 10, 10, 30, 30, 30])
    cfg = sim.replica_configs(r["replica"])
    assert cfg.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert sim.replica_configs(np.array([-1])).tolist() == [-1]


@pytest.mark.parametrize("engine", ENGINES)
def test_preferred_sizes_beyond_a_configurations_max_are_ignored(engine):
    # deployment: preferred size 4, delay 0, one instance; arrivals at 0, 1, 2, 3, 4 ms. r0 runs alone (0 -> 10);
    # at 10 four wait. "wide" (max 4) sends the preferred 4 at once (10 -> 10 + 28); "narrow" (max 2) cannot form
    # a 4: without a preferred size it can form, max_batch_size is the only one: 2 (10 -> 26), then 2 (26 -> 42).
    sc = scenario_from_dict({
        "seed": 1, "duration_s": 1.0, "workload": {"kind": "timestamps", "times_s": [0, 0.001, 0.002, 0.003, 0.004]},
        "service": {"mean_ms": 10}, "batching": {"max_batch_size": 4, "preferred_batch_sizes": [4]},
        "autoscaler": {"kind": "static", "interval_s": 0.5}})
    times = {1: 10, 2: 16, 3: 22, 4: 28}
    wide, narrow = config("wide", times, max_batch_size=4), config("narrow", times, max_batch_size=2)
    expected = {0: [(0, 10, 1)] + [(10, 38, 4)] * 4, 1: [(0, 10, 1)] + [(10, 26, 2)] * 2 + [(26, 42, 2)] * 2}
    for start, exp in expected.items():
        sim = Simulation(sc, engine=engine, configs=[wide, narrow], config=start)
        obs = sim.start()
        while obs is not None:
            obs = sim.step(1)
        r = sim.result().records
        got = list(zip(np.round(r["dispatch_s"] * 1e3, 9), np.round(r["completion_s"] * 1e3, 9), r["batch_size"]))
        assert got == exp, (start, got)


@pytest.mark.parametrize("engine", ENGINES)
def test_scale_down_during_roll_drains_old_first(engine):
    # A -> B at 10 (B start-up 4 s); at 12, 1 replica asked for: two A drain at once (uids 2, 1: ready at the same
    # instant, the highest id first), one A keeps serving; two of the three starting B are removed (the
    # scale-down order of equal request instants keeps ids 3, 4 first); at 14 B 5 is ready and A 0 drains.
    sim, res = run(quiet(), engine, [A, B], {10.0: 1}, desired={12.0: 1})
    same_life(life(res), [(0, 0, 0, 14, 14), (0, 0, 0, 12, 12), (0, 0, 0, 12, 12),
                          (1, 10, NAN, 12, 12), (1, 10, NAN, 12, 12), (1, 10, 14, NAN, NAN)])
    # cost: A 14 + 12 + 12, B 2 + 2 + 20
    assert res.summary["variant_seconds"] == pytest.approx({"A": 38.0, "B": 24.0})


@pytest.mark.parametrize("engine", ENGINES)
def test_scale_up_during_roll_adds_new_configuration(engine):
    # A -> B at 10; at 12, 4 replicas: one more B (start-up 4: ready at 16). At 14 three B are ready: 3 A + 3 B
    # > 4 -> two A drain (uids 2, 1); at 16 the fourth B: the last A drains.
    sim, res = run(quiet(), engine, [A, B], {10.0: 1}, desired={12.0: 4})
    same_life(life(res), [(0, 0, 0, 16, 16), (0, 0, 0, 14, 14), (0, 0, 0, 14, 14)]
              + [(1, 10, 14, NAN, NAN)] * 3 + [(1, 12, 16, NAN, NAN)])


@pytest.mark.parametrize("engine", ENGINES)
def test_second_reconfiguration_mid_roll(engine):
    # A -> B at 10, then -> C (start-up 2 s) at 12, before any B is ready: the starting B are removed at 12 (old),
    # 3 C are asked for at 12, ready at 14, where the 3 A (old too) drain.
    sim, res = run(quiet(), engine, [A, B, C], {10.0: 1, 12.0: 2})
    same_life(life(res), [(0, 0, 0, 14, 14)] * 3 + [(1, 10, NAN, 12, 12)] * 3 + [(2, 12, 14, NAN, NAN)] * 3)
    assert res.summary["reconfigurations"] == 2
    assert res.summary["variant_seconds"] == pytest.approx({"A": 3 * 14.0, "B": 3 * 2.0, "C": 3 * 18.0})
    # ... and back to A at 12 instead: the starting B are removed, the 3 A are the newest configuration again,
    # no roll left; reconfiguring to the current configuration changes nothing and is not counted
    sim, res = run(quiet(), engine, [A, B], {10.0: 1, 12.0: 0, 16.0: 0})
    same_life(life(res), [(0, 0, 0, NAN, NAN)] * 3 + [(1, 10, NAN, 12, 12)] * 3)
    assert res.summary["reconfigurations"] == 2 and sim.config == 0 and not sim.rolling


@pytest.mark.parametrize("engine", ENGINES)
def test_configuration_startup_and_scheduled_reconfigure(engine):
    # a configuration without its own start-up uses cluster.startup_s (1 s); reconfigure(t=...) in the future
    sc = quiet(replicas=1)
    sim = Simulation(sc, engine=engine, configs=[B, A])          # starts with B (index 0)
    obs = sim.start()
    sim.reconfigure(1, t=5.0)
    while obs is not None:
        obs = sim.step(1)
    same_life(life(sim.result()), [(0, 0, 0, 6, 6), (1, 5, 6, NAN, NAN)])
    assert sim.drawn_startup_delay(0) == 4.0 and sim.drawn_startup_delay(1) == 1.0


def test_explicit_default_configuration_is_the_scenario():
    sc = scenario_from_dict({
        "seed": 5, "duration_s": 8, "warmup_s": 1,
        "workload": {"kind": "poisson", "rate_rps": 400},
        "service": {"per_batch": {1: {"kind": "gamma", "mean_ms": 6, "cv": 0.4}, 4: {"kind": "gamma", "mean_ms": 12}},
                    "overhead": {"kind": "exponential", "mean_ms": 1}},
        "batching": {"max_batch_size": 4, "preferred_batch_sizes": [2], "max_queue_delay_us": 2000},
        "cluster": {"replicas": 2, "max_replicas": 4, "startup_s": 2},
        "autoscaler": {"kind": "static", "interval_s": 2}})
    plain = Simulation(sc)
    obs = plain.start()
    explicit = Simulation(sc, configs=[default_config(sc)])
    assert explicit.start() == obs
    while obs is not None:
        n = 3 if obs.time_s >= 4 else 2
        obs, obs2 = plain.step(n), explicit.step(n)
        assert obs2 == obs
    a, b = plain.result(), explicit.result()
    for k in a.records:
        assert np.array_equal(a.records[k], b.records[k], equal_nan=True), k
    assert "variant_seconds" not in a.summary and "config" not in a.timeline[0]
    assert b.summary["variant_seconds"] == {"default": pytest.approx(b.summary["replica_seconds"])}


# --------------------------------------------------------------------------- both engines, per request


def rich(seed, **over):
    d = {"seed": seed, "duration_s": 16, "warmup_s": 2, "slo_ms": 60,
         "workload": {"kind": "poisson", "rate_rps": 900},
         "service": {"mean_ms": 8, "overhead": {"kind": "lognormal", "mean_ms": 1.5, "cv": 0.5}},
         "batching": {"max_batch_size": 8, "preferred_batch_sizes": [2, 4, 8], "max_queue_delay_us": 2000,
                      "instances": 2, "queue_timeout_us": 30000},
         "cluster": {"replicas": 3, "max_replicas": 8, "startup_s": {"kind": "gamma", "mean_s": 1.5, "cv": 0.5},
                     "load_balancer": "least_outstanding"},
         "autoscaler": {"kind": "static", "interval_s": 2}}
    d.update(over)
    return scenario_from_dict(d)


FAST8 = ServingConfig("small", parse_service({"per_batch": {1: {"kind": "gamma", "mean_ms": 6, "cv": 0.4},
                                                            8: {"kind": "gamma", "mean_ms": 20, "cv": 0.3}}}, "s"), 8)
BIG2 = ServingConfig("big", parse_service({"per_batch": {1: {"kind": "gamma", "mean_ms": 14, "cv": 0.3},
                                                         2: {"kind": "gamma", "mean_ms": 22, "cv": 0.3}}}, "b"), 2,
                     startup=Dist("gamma", 3.0, 0.4))
MID4 = ServingConfig("mid", parse_service({"kind": "weibull", "mean_ms": 9, "cv": 0.6}, "m"), 4,
                     startup=Dist("deterministic", 1.0, 0.0))


@pytest.mark.parametrize("case", ["switch", "scale_down_mid_roll", "second_mid_roll", "back_and_closed_loop"])
def test_engines_equal_through_reconfigurations(case):
    configs = [FAST8, BIG2, MID4]
    if case == "switch":               # to the slow 2-batch variant, scaled up during the roll, then back
        sc, plan, desired = rich(11), {4.0: 1, 10.0: 0}, {6.0: 5}
    elif case == "scale_down_mid_roll":  # to the slow variant, scaled down before it is ready
        sc, plan, desired = rich(12, workload={"kind": "poisson", "rate_rps": 500}), {4.0: 1}, {6.0: 2}
    elif case == "second_mid_roll":    # -> big, then -> mid before all big are ready
        sc, plan, desired = rich(13), {4.0: 1, 6.0: 2, 10.0: 0}, {8.0: 4}
    else:
        sc = rich(14, workload={"kind": "closed_loop", "users": 30, "think": {"kind": "exponential", "mean_s": 0.02}},
                  batching={"max_batch_size": 8, "preferred_batch_sizes": [4], "max_queue_delay_us": 1000,
                            "instances": 1, "max_queue_size": 6})
        plan, desired = {4.0: 1, 6.0: 0, 10.0: 2}, {8.0: 2, 12.0: 4}
    out = {}
    for engine in ENGINES:
        sim, res = run(sc, engine, configs, plan, desired)
        out[engine] = (sim, res)
    (sim, fast), (_, ref) = out["fast"], out["reference"]
    assert_same(fast, ref)
    r = fast.records
    cfg = sim.replica_configs(r["replica"])
    served = r["status"] == 0
    used = set(cfg[served].tolist())
    assert len(used) >= 2, used                                  # requests were served by several configurations
    for c, conf in enumerate(configs):                           # each configuration's own max batch size
        if (cfg[served] == c).any():
            assert r["batch_size"][served & (cfg == c)].max() <= conf.max_batch_size
    if case == "switch":
        # preferred 4 and 8 are beyond "big" (max 2): its batches are of 1 or 2, and the load makes both
        big = served & (cfg == 1)
        assert set(r["batch_size"][big].tolist()) == {1, 2}
    if case == "scale_down_mid_roll":
        # at 6, 2 asked for while no "big" is ready yet: an old replica drains and a starting new one is removed
        assert any(x.config == 0 and x.drain_s == 6.0 for x in fast.replicas)
        assert any(x.config == 1 and x.drain_s == 6.0 and math.isnan(x.ready_s) for x in fast.replicas)
        assert (r["status"] == 2).sum() > 0                      # queue timeouts while the slow variant serves
    assert sum(fast.summary["variant_seconds"].values()) == pytest.approx(fast.summary["replica_seconds"])


def test_memory_estimate_covers_every_configuration():
    from simulator.memory import SLOT_ITEM_BYTES, estimate_memory, expected_requests
    from simulator.variants import serving_models
    sc = scenario_from_dict({"duration_s": 100, "workload": {"kind": "closed_loop", "users": 1000, "think_s": 0.0},
                             "service": {"mean_ms": 10}, "batching": {"max_batch_size": 2, "instances": 2},
                             "cluster": {"replicas": 1, "max_replicas": 3}, "autoscaler": {"kind": "static"}})
    models = serving_models(sc, [config("slow", 40, max_batch_size=2), config("fast", 5, max_batch_size=16)])
    # slots sized for the largest max batch size (16); (2 x 3 + 2) slots x 2 instances
    assert estimate_memory(sc, "fast", "1G", models).parts["slots"] == 8 * 2 * 16 * SLOT_ITEM_BYTES
    # closed loop without fast failures: capped by the fastest configuration's saturation on 2 x max_replicas
    # (a roll serves with old and new replicas): 5 ms per batch of 1..16 (batch_slope 0) -> 16 / 5 ms per instance
    assert expected_requests(sc, models) == pytest.approx(2 * 3 * 2 * 16 / 5e-3 * 100)


# --------------------------------------------------------------------------- bad input


def test_bad_configurations_refused():
    sc = quiet()
    with pytest.raises(ValueError, match=r"configs\[1\].name: 'A' is used twice"):
        Simulation(sc, configs=[A, config("A", 20)])
    with pytest.raises(ValueError, match=r"configs\[0\].max_batch_size \(Z\): must be a whole number >= 1"):
        Simulation(sc, configs=[config("Z", 5, max_batch_size=0)])
    with pytest.raises(ValueError, match="at least one"):
        Simulation(sc, configs=[])
    with pytest.raises(ValueError, match=r"config: must be the index of a serving configuration, one of 0 \(A\), "
                                         r"1 \(B\) \(got 2\)"):
        Simulation(sc, configs=[A, B], config=2)
    with pytest.raises(ValueError, match="not both"):
        Simulation(sc, configs=[A], model=Simulation(sc).model)
    sim = Simulation(sc, configs=[A, B])
    with pytest.raises(RuntimeError, match="start"):
        sim.reconfigure(1)
    sim.start()
    with pytest.raises(ValueError, match=r"got -1"):
        sim.reconfigure(-1)
    sim.run_until(3.0)
    with pytest.raises(ValueError, match="now .* or later"):
        sim.reconfigure(1, t=1.0)
