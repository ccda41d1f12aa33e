"""Pipelines (issue 15): a chain of deployments simulated end to end.

Closed-form checks (a tandem of M/M/1 queues: Burke's theorem makes the second stage's arrivals Poisson, so
the mean end-to-end sojourn is 1/(mu1 - lambda) + 1/(mu2 - lambda)); a hand-computed single request; the fast
and reference engines agreeing per request and per stage visit; a one-stage pipeline drawing exactly what the
single-model scenario draws; and the bad inputs the loader must refuse in one line each.
"""
import numpy as np
import pytest

from helpers import assert_same
from simulator.batching import OK, TIMEOUT
from simulator.config import ConfigError, scenario_from_dict
from simulator.engine import simulate
from simulator.pipeline import PipelineSimulation, simulate_pipeline


def _stage(name, service, **kw):
    d = {"name": name, "batching": {"max_batch_size": 1}, "autoscaler": {"kind": "static", "interval_s": 10}}
    if service is not None:
        d["service"] = service
    d.update(kw)
    return d


def _pipe(stages, **kw):
    d = {"seed": 5, "duration_s": 60, "warmup_s": 5, "slo_ms": 200, "workload": {"kind": "poisson", "rate_rps": 50},
         "pipeline": {"stages": stages}}
    d.update(kw)
    return scenario_from_dict(d)


def test_tandem_mm1_matches_burke():
    lam, m1, m2, n = 50.0, 10.0, 14.0, 400_000
    dur = n / lam
    sc = _pipe([_stage("a", {"kind": "exponential", "mean_ms": m1}),
                _stage("b", {"kind": "exponential", "mean_ms": m2})],
               duration_s=dur, warmup_s=0.02 * dur, slo_ms=1000, record_requests=False)
    s = simulate_pipeline(sc).summary
    want = (1 / (1e3 / m1 - lam) + 1 / (1e3 / m2 - lam)) * 1e3          # 20 + 46.67 ms
    got = s["latency_ms"]["mean"]
    assert abs(got / want - 1) < 0.02, (got, want)
    b = s["stages"]["b"]["latency_ms"]["mean"]
    assert abs(b / (1e3 / (1e3 / m2 - lam)) - 1) < 0.03, b           # stage b alone is an M/M/1 too
    assert s["failed"] == 0 and s["requests"] > 0.95 * n


def test_one_request_by_hand():
    """Deterministic: stage a 10 ms + hop 2 ms, stage b 30 ms + hop 3 ms: 45 ms end to end."""
    sc = _pipe([_stage("a", {"mean_ms": 10}, hop_ms=2), _stage("b", {"mean_ms": 30}, hop_ms=3)],
               workload={"kind": "timestamps", "times_s": [1.0]}, warmup_s=0, duration_s=5)
    r = simulate_pipeline(sc)
    assert r.requests["completion_s"][0] == pytest.approx(1.045, abs=1e-9)
    v = r.visits
    assert list(v["stage"]) == [0, 1] and list(v["request"]) == [0, 0]
    assert v["arrival_s"][1] == pytest.approx(1.012, abs=1e-9)      # reaches b after a's batch + a's hop
    assert r.summary["latency_ms"]["mean"] == pytest.approx(45.0, abs=1e-6)


def test_accuracy_product_and_mean():
    st = [_stage("a", None, variants=[{"name": "s", "accuracy": 0.8, "service": {"mean_ms": 5}},
                                      {"name": "l", "accuracy": 0.9, "service": {"mean_ms": 9}}], variant="l"),
          _stage("b", {"mean_ms": 5}, accuracy=0.5)]
    for rule, want in (("product", 0.45), ("mean", 0.7)):
        sc = _pipe(st, pipeline={"stages": st, "accuracy": rule})
        s = simulate_pipeline(sc).summary
        assert s["accuracy"]["mean"] == pytest.approx(want) and s["accuracy"]["rule"] == rule
        assert s["stages"]["a"]["variant"] == "l"


def test_one_stage_pipeline_draws_what_the_single_model_draws():
    service = {"kind": "gamma", "mean_ms": 12, "cv": 0.5, "overhead_ms": 1.5}
    single = scenario_from_dict({"seed": 5, "duration_s": 60, "warmup_s": 5, "slo_ms": 40,
                                 "workload": {"kind": "poisson", "rate_rps": 120},
                                 "service": {k: v for k, v in service.items() if k != "overhead_ms"} |
                                 {"overhead_ms": 1.5},
                                 "batching": {"max_batch_size": 4, "max_queue_delay_us": 1000},
                                 "cluster": {"replicas": 2}, "autoscaler": {"kind": "static", "interval_s": 10}})
    pipe = _pipe([_stage("only", {k: v for k, v in service.items() if k != "overhead_ms"}, hop_ms=1.5,
                         batching={"max_batch_size": 4, "max_queue_delay_us": 1000}, cluster={"replicas": 2})],
                 slo_ms=40, workload={"kind": "poisson", "rate_rps": 120})
    a, b = simulate(single), simulate_pipeline(pipe)
    assert np.array_equal(a.records["completion_s"], b.requests["completion_s"])
    for k in ("p50", "p95", "p99", "mean"):
        assert a.summary["latency_ms"][k] == pytest.approx(b.summary["latency_ms"][k], rel=1e-12)
    assert a.summary["slo_violation_rate"] == b.summary["slo_violation_rate"]
    assert a.summary["replica_seconds"] == b.summary["replica_seconds"]


def _three_stage():
    g = lambda m, b8: {"per_batch": {1: {"kind": "gamma", "mean_ms": m, "cv": 0.4},
                                     8: {"kind": "gamma", "mean_ms": b8, "cv": 0.4}}}
    return _pipe([
        _stage("a", g(6, 20), hop={"kind": "exponential", "mean_ms": 1.0},
               batching={"max_batch_size": 8, "max_queue_delay_us": 2000, "preferred_batch_sizes": [4]},
               cluster={"replicas": 2, "max_replicas": 4, "startup_s": 2, "load_balancer": "random"}),
        _stage("b", g(9, 30), hop_ms=0.5,
               batching={"max_batch_size": 8, "max_queue_delay_us": 1000, "queue_timeout_us": 15000},
               cluster={"replicas": 1, "max_replicas": 4, "startup_s": 3}),
        _stage("c", g(3, 9), hop_ms=1,
               batching={"max_batch_size": 4, "max_queue_size": 6, "instances": 2},
               cluster={"replicas": 1, "max_replicas": 3, "startup_s": 1, "load_balancer": "least_outstanding"}),
    ], workload={"kind": "schedule", "segments": [{"kind": "step", "duration_s": 60, "rate_rps": 150,
                                                   "to_rps": 420, "at_s": 20}]}, slo_ms=60)


def _scripted(sc, engine, plan):
    sim = PipelineSimulation(sc, engine=engine)
    obs = sim.start()
    i = 0
    while obs is not None:
        obs = sim.step(plan[min(i, len(plan) - 1)])
        i += 1
    return sim.result()


def test_engines_agree_per_request_and_per_visit():
    sc = _three_stage()
    plan = [(2, 1, 1), (3, 2, 1), (4, 3, 2), (2, 3, 3), (1, 1, 1), (4, 4, 3)]
    fast, ref = _scripted(sc, "fast", plan), _scripted(sc, "reference", plan)
    for k in fast.requests:
        assert np.array_equal(fast.requests[k], ref.requests[k], equal_nan=True), k
    for k in fast.visits:
        a, b = fast.visits[k], ref.visits[k]
        assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-9, equal_nan=True), k
    for fa, re in zip(fast.stage_results, ref.stage_results):
        assert_same(fa, re)
    st = fast.requests["status"]
    # the case exercises what it claims: timeouts at stage b, rejections at c, successes through all three
    assert (st == TIMEOUT).sum() > 0 and (fast.requests["end_stage"][st == TIMEOUT] == 1).all()
    assert fast.summary["rejected"] > 0 and (st == OK).sum() > 1000
    assert fast.summary["stages"]["b"]["failed_here"] > 0
    assert fast.summary["slo_violation_rate"] == ref.summary["slo_violation_rate"]
    e2e = [r for r in fast.timeline if r["stage"] == "e2e"]
    assert len(e2e) == 6 and [r["desired"] for r in e2e][:2] == [4, 6]


def test_simulator_run_writes_a_pipeline(tmp_path, capsys):
    from simulator.run import main
    import pandas as pd
    rc = main(["configs/pipeline_example.yaml", "--out", str(tmp_path / "o"), "--quiet", "--set", "duration_s=90",
               "--no-plots"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "pipeline detect -> classify" in out and "stage classify" in out
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    vis = pd.read_parquet(tmp_path / "o" / "stages.parquet")
    assert len(vis) == 2 * (req["status"] == "ok").sum() + (req["status"] != "ok").sum()
    tl = pd.read_csv(tmp_path / "o" / "timeline.csv")
    assert set(tl["stage"]) == {"detect", "classify", "e2e"}


BAD = [
    ({"variant": "huge"}, "pipeline.stages[0].variant: must be one of the stage's variants: small, large"),
    ({"next": "a"}, "pipeline.stages[1].next: makes a cycle: a -> b -> a"),
    ({"next": ["a", "b"]}, "fan-out is not supported"),
    ({"variants": [{"name": "small", "accuracy": 0.7}]}, "pipeline.stages[0].variants[0].service: is required"),
    ({"name": "b"}, "pipeline.stages[1].name: duplicate stage name 'b'"),
]


@pytest.mark.parametrize("change,msg", BAD)
def test_bad_pipelines_one_line(change, msg):
    stages = [{"name": "a", "variants": [{"name": "small", "accuracy": 0.7, "service": {"mean_ms": 5}},
                                         {"name": "large", "accuracy": 0.8, "service": {"mean_ms": 9}}]},
              {"name": "b", "service": {"mean_ms": 5}}]
    which = 1 if "next" in change else 0
    if "next" in change and change["next"] == ["a", "b"]:
        which = 0
    stages[which].update(change)
    with pytest.raises(ConfigError) as e:
        scenario_from_dict({"workload": {"kind": "poisson", "rate_rps": 5}, "slo_ms": 100,
                            "pipeline": {"stages": stages}}, source="p.yaml")
    text = str(e.value)
    assert "\n" not in text and text.startswith("p.yaml: ") and msg in text, text


def test_bad_pipeline_scenarios():
    two = {"stages": [{"name": "a", "service": {"mean_ms": 30}, "hop_ms": 5}, {"name": "b", "service": {"mean_ms": 20}}]}
    cases = [
        ({"slo_ms": 50, "pipeline": two}, "slo_ms: must exceed the fastest possible path through the pipeline, 55 ms"),
        ({"pipeline": two, "service": {"mean_ms": 5}}, "service: in a pipeline scenario, give it per stage"),
        ({"pipeline": two, "workload": {"kind": "closed_loop", "users": 3}}, "closed_loop users are not supported"),
        ({"pipeline": {"stages": [two["stages"][0], {**two["stages"][1], "next": "zzz"}]}},
         "pipeline.stages[1].next: must name a stage: one of a, b"),
        ({"pipeline": {"stages": [{**two["stages"][0], "next": None}, two["stages"][1]]}},
         "stage(s) b never reached from the first stage"),
        ({"pipeline": {"stages": [two["stages"][0], {**two["stages"][1], "autoscaler": {"interval_s": 5}}]}},
         "pipeline.stages[1].autoscaler.interval_s: must equal the first stage's (15 s)"),
        ({"pipeline": {"stages": [{"name": "a", "variants": [{"name": "v", "service": {"mean_ms": 3,
                                                                                     "overhead_ms": 1}}]}]}},
         "a variant has no overhead of its own"),
    ]
    for over, msg in cases:
        d = {"workload": {"kind": "poisson", "rate_rps": 5}, "slo_ms": 100, **over}
        with pytest.raises(ConfigError) as e:
            scenario_from_dict(d)
        assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def _variant_pipe():
    return _pipe([
        _stage("a", None, variants=[
            {"name": "fast", "accuracy": 0.7, "service": {"per_batch": {1: {"kind": "gamma", "mean_ms": 5, "cv": 0.3},
                                                                        4: {"kind": "gamma", "mean_ms": 12, "cv": 0.3}}}},
            {"name": "slow", "accuracy": 0.9, "service": {"per_batch": {1: {"kind": "gamma", "mean_ms": 15, "cv": 0.3},
                                                                        4: {"kind": "gamma", "mean_ms": 40, "cv": 0.3}}},
             "startup_s": 4}],
            batching={"max_batch_size": 4, "max_queue_delay_us": 1000},
            cluster={"replicas": 2, "max_replicas": 4, "startup_s": 2}),
        _stage("b", {"mean_ms": 4}, accuracy=0.5, cluster={"replicas": 1, "max_replicas": 2})],
        workload={"kind": "poisson", "rate_rps": 120}, duration_s=80, slo_ms=150)


def test_switching_a_variant_rolls_and_changes_accuracy():
    from simulator.pipeline_policy import StageDecision as D
    sc = _variant_pipe()
    plan = [[D(2), D(1)], [D(2), D(1)], [D(3, "slow"), D(1)], [D(3), D(1)], [D(3), D(1)], [D(3, "slow", 2), D(1)],
            [D(3, "nope"), D(1)], [D(3), D(1)]]
    fast, ref = _scripted(sc, "fast", plan), _scripted(sc, "reference", plan)
    for k in fast.requests:
        assert np.array_equal(fast.requests[k], ref.requests[k], equal_nan=True), k
    st = fast.summary["stages"]["a"]
    assert st["reconfigurations"] == 2 and st["held_configs"] == 1
    assert st["final_variant"] == "slow" and st["final_max_batch_size"] == 2
    assert st["variant_seconds"]["fast"] > 0 and st["variant_seconds"]["slow"] > st["variant_seconds"]["fast"]
    acc = fast.requests["accuracy"]
    t0 = fast.requests["arrival_s"]
    ok = ~np.isnan(acc)
    # before the switch (t = 30 s) every request was served by 'fast' (0.7 x 0.5); long after it, by 'slow'
    assert np.allclose(acc[ok & (t0 < 29)], 0.35) and np.allclose(acc[ok & (t0 > 45)], 0.45)
    mixed = acc[ok & (t0 >= 30) & (t0 < 36)]
    assert set(np.round(mixed, 6)) <= {0.35, 0.45}
    rows = [r for r in fast.timeline if r["stage"] == "a"]
    assert [r["variant"] for r in rows][:4] == ["fast", "fast", "slow", "slow"]
    assert [r["held_config"] for r in rows][6] == 1


def test_ipa_policy_from_the_scenario_switches_with_the_load():
    """A top-level autoscaler: {kind: ipa} configures the whole pipeline: at low load it serves the accurate
    variant, under a 4x step it moves to the fast one (enough replicas of the slow one would exceed max)."""
    d = _variant_pipe().to_dict()
    for st in d["pipeline"]["stages"]:
        st.pop("autoscaler", None)
    d["autoscaler"] = {"kind": "ipa", "interval_s": 5, "replica_weight": 0.01, "max_utilization": 0.7}
    d["workload"] = {"kind": "schedule", "segments": [{"kind": "step", "duration_s": 120, "rate_rps": 40,
                                                       "to_rps": 330, "at_s": 50}]}
    d["duration_s"] = 120
    sc = scenario_from_dict(d)
    r = simulate_pipeline(sc)
    assert r.summary["policy"] == "ipa"
    rows = [x for x in r.timeline if x["stage"] == "a"]
    early = {x["variant"] for x in rows if 15 <= x["time_s"] <= 45}
    late = {x["variant"] for x in rows if x["time_s"] >= 80}
    assert early == {"slow"} and late == {"fast"}, (early, late)
    assert r.summary["stages"]["a"]["reconfigurations"] >= 2
