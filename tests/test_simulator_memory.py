"""The memory estimate and budget (simulator.memory): hand-computed estimates, refusals without running."""
import math
import time

import pytest

from simulator import ConfigError, scenario_from_dict, simulate
from simulator.engine import Simulation
from simulator.memory import (BUDGET_ENV, RECORD_BYTES, TIMELINE_ROW_BYTES, USER_BYTES, estimate_memory,
                              expected_requests, memory_budget, parse_size)

GIB = 2 ** 30


def scen(workload, **kw):
    d = {"duration_s": 100, "workload": workload, "service": {"mean_ms": 10},
         "autoscaler": {"kind": "static", "interval_s": 10}}
    d.update(kw)
    return scenario_from_dict(d)


def test_expected_requests_by_workload_kind(tmp_path):
    assert expected_requests(scen({"kind": "poisson", "rate_rps": 1280}, duration_s=4000)) == 1280 * 4000
    # 20 rps for 30 s, a ramp 20 -> 80 over 60 s (mean 50), then the last rate (80) holds for 110 s
    sched = {"kind": "schedule", "segments": [{"kind": "constant", "duration_s": 30, "rate_rps": 20},
                                              {"kind": "ramp", "duration_s": 60, "rate_rps": 20, "to_rps": 80}]}
    assert expected_requests(scen(sched, duration_s=200)) == pytest.approx(20 * 30 + 50 * 60 + 80 * 110, rel=1e-3)
    # trace seconds 10, 20, 30, 40 (x2 scale); speedup 2 -> 1.25 sim-s cover 2.5 trace seconds:
    # (2*10 + 2*20 + 0.5 * 2*30) / 2 = 45; after the window's end no arrivals: 2*(10+20+30+40)/2 = 100
    p = tmp_path / "r.csv"
    p.write_text("rps\n10\n20\n30\n40\n")
    tr = {"kind": "trace", "path": str(p), "speedup": 2, "scale": 2}
    assert expected_requests(scen(tr, duration_s=1.25)) == pytest.approx(45)
    assert expected_requests(scen(tr, duration_s=50)) == pytest.approx(100)
    ts = {"kind": "timestamps", "times_s": [0.5, 1, 2, 3, 7]}
    assert expected_requests(scen(ts, duration_s=3)) == 3
    # closed loop, no way to fail fast: users / (think + overhead + batch-1 compute), capped at saturation
    cl = {"kind": "closed_loop", "users": 10, "think_s": 0.09}
    assert expected_requests(scen(cl)) == pytest.approx(10 / (0.09 + 0.010) * 100)
    # 1000 users would send 10000/s; one replica's one instance serves 100/s at 10 ms a request
    assert expected_requests(scen(dict(cl, users=1000))) == pytest.approx(100 * 100)
    # a bounded queue lets requests fail without compute: overhead only, and the 1 ms floor
    assert expected_requests(scen(dict(cl, think_s=0.0), batching={"max_queue_size": 4})) == \
        pytest.approx(10 / 1e-3 * 100)


def test_estimate_parts_and_budget_sources(monkeypatch):
    sc = scen({"kind": "poisson", "rate_rps": 1280}, duration_s=4000,
              batching={"instances": 2, "max_batch_size": 4}, cluster={"replicas": 8})
    est = estimate_memory(sc, "fast", "1G")
    assert est.parts == {"records": 1280 * 4000 * RECORD_BYTES["fast"], "timeline": 400 * TIMELINE_ROW_BYTES,
                         "users": 0.0, "slots": 18 * 2 * 4 * 24}
    assert est.budget == GIB and est.budget_source == "--memory-budget"
    assert estimate_memory(sc.replace(record_requests=False), "reference").parts["records"] == 0.0
    assert estimate_memory(scen({"kind": "closed_loop", "users": 7}), "reference").parts["users"] == \
        7 * USER_BYTES["reference"]
    monkeypatch.setenv(BUDGET_ENV, "512M")
    assert memory_budget() == (512 * 2 ** 20, BUDGET_ENV)
    assert memory_budget("2GiB") == (2 * GIB, "--memory-budget")
    monkeypatch.delenv(BUDGET_ENV)
    size, source = memory_budget()
    assert source == "half the machine's memory" and size > 0
    assert parse_size("1.5e9") == 1_500_000_000 and parse_size("8 GB") == 8 * GIB and parse_size(4096) == 4096
    for bad in ("12X", "-1G", "0", "lots"):
        with pytest.raises(ConfigError, match="must be a"):
            parse_size(bad)


def test_unbounded_records_refused_before_running():
    # a day of the issue's scenario scaled to 1e12 s: ~1.3e15 requests; refused at once, nothing allocated
    sc = scen({"kind": "poisson", "rate_rps": 1280}, duration_s=1e12, record_requests=True,
              batching={"instances": 2}, cluster={"replicas": 8})
    t = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        simulate(sc, memory_budget="16G")
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "\n" not in msg
    assert "1.28e+15 requests recorded" in msg and "over the memory budget of 16 GB (--memory-budget)" in msg
    assert "set record_requests: false" in msg
    # the same with records off is bounded except for its timeline: fine with long control intervals
    ok = sc.replace(record_requests=False, autoscaler=sc.autoscaler.__class__("static", 1e9, {}))
    Simulation(ok, memory_budget="16G")                     # accepted (not run)
    with pytest.raises(ConfigError, match="control intervals in the timeline"):
        Simulation(sc.replace(record_requests=False), memory_budget="16G")


def test_records_that_outgrow_the_budget_stop_the_run(monkeypatch):
    # an estimate that is too low (100 requests for ~1000): the run is held to the 300 records the
    # budget leaves, on both engines, and stopped with one line when it needs more
    import simulator.memory as memory
    monkeypatch.setattr(memory, "expected_requests", lambda sc, model=None: 100.0)
    sc = scen({"kind": "poisson", "rate_rps": 100}, duration_s=10)
    for engine in ("fast", "reference"):
        est = estimate_memory(sc, engine, GIB)
        budget = int(est.total - est.parts["records"]) + 300 * RECORD_BYTES[engine]
        sim = Simulation(sc, engine=engine, memory_budget=budget)
        assert sim.dp.max_records == 300
        with pytest.raises(ConfigError, match=r"request records outgrew the memory budget .* at 300 requests "
                                              r".*100 were expected.*set record_requests: false"):
            obs = sim.start()
            while obs is not None:
                obs = sim.step(1)
        assert sim.dp.n_requests in (300, 301)


def test_issue_command_duration_1e12_in_yaml_is_a_number_and_refused(tmp_path, capsys):
    # the issue's YAML spelling: PyYAML reads `1e12` (exponent, no dot) as a string; it must be the number it
    # says and the run refused by the memory estimate, one line, exit 2, nothing written
    import yaml

    from simulator.run import main
    p = tmp_path / "big.yaml"
    p.write_text(yaml.safe_dump({"duration_s": 1, "workload": {"kind": "poisson", "rate_rps": 1280},
                                 "service": {"mean_ms": 10}, "batching": {"instances": 2},
                                 "cluster": {"replicas": 8}}).replace("duration_s: 1\n", "duration_s: 1e12\n"))
    rc = main([str(p), "--out", str(tmp_path / "out"), "--quiet", "--memory-budget", "16G"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert "requests recorded" in err and "set record_requests: false" in err, err
    assert not (tmp_path / "out").exists()
