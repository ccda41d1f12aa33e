"""Fast tests of the real-stack pieces that need no server: config, config.pbtxt, metrics, arrivals, LB config."""
from __future__ import annotations

import math
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cluster import config as ccfg
from cluster.stack.arrivals import arrival_times, sample_dist
from simulator.workload import schedule_rate
from cluster.stack.lb import render_config
from cluster.stack.loadgen import classify
from cluster.stack.scrape import latency_summary, model_counters, observation_from_window, parse_prometheus
from cluster.stack.triton import default_model
from simulator.config import BatchingSpec, ConfigError, Dist, parse_workload

ROOT = Path(__file__).resolve().parent.parent


def test_baseline_config_loads():
    cfg = ccfg.load_measure_config(str(ROOT / "configs" / "baseline.yaml"))
    names = [r.name for r in cfg.runs]
    assert names == ["baseline", "step", "ramp", "baseline_repeat", "const1", "const2"]
    base = cfg.runs[0].scenario
    assert base.workload.kind == "closed_loop" and base.workload.users == 10
    step = cfg.runs[1]
    assert step.scenario.workload.kind == "schedule" and step.events == ((20.0, "scale", 2),)
    assert step.scenario.batching == base.batching          # merged, not replaced
    assert cfg.runs[2].scenario.cluster.replicas == 2
    assert cfg.stack.backend == "local" and cfg.stack.onnx_threads == 1
    assert cfg.sweep.batch_sizes == (1, 2, 4, 8) and cfg.startup.samples == 5


BASE = {"scenario": {"workload": {"kind": "closed_loop", "users": 2}, "service": {"mean_ms": 5},
                     "cluster": {"replicas": 1, "max_replicas": 3}}}


@pytest.mark.parametrize("patch, match", [
    ({"stack": {"backend": "docker"}}, r"x\.yaml: stack\.backend: must be one of local, kubernetes \(got 'docker'\)"),
    ({"stack": {"lb_prt": 1}}, r"stack\.lb_prt: unknown key; allowed keys here: .*lb_port"),
    ({"stack": {"onnx_threads": 0}}, r"stack\.onnx_threads: must be >= 1"),
    ({"measure": {"runs": [{"name": "a", "events": [{"at_s": 5, "scale": 9}]}]}},
     r"measure\.runs\[0\]\.events\[0\]\.scale: must be <= 3"),
    ({"measure": {"runs": [{"name": "a", "events": [{"at_s": 500, "kill": 0}]}]}},
     r"measure\.runs\[0\]\.events\[0\]\.at_s: must be < the run's duration_s"),
    ({"measure": {"runs": [{"name": "a", "set": {"workload": {"kind": "poisson"}}}]}},
     r"measure\.runs\[0\]\.set \(scenario after overrides\): workload\.rate_rps: is required"),
    ({"measure": {"runs": [{"name": "a"}, {"name": "a"}]}}, r"run names must be unique"),
    ({"measure": {"sweep": {"batch_sizes": [0]}}}, r"measure\.sweep\.batch_sizes\[0\]: must be a whole number >= 1"),
    ({"scenario_file": "other.yaml"}, r"give exactly one of scenario"),
])
def test_config_errors_name_file_and_key(patch, match):
    d = {**BASE, **patch}
    with pytest.raises(ConfigError, match=match):
        ccfg.measure_config_from_dict(d, source="x.yaml")


def test_scenario_errors_are_prefixed():
    d = {"scenario": {"workload": {"kind": "closed_loop"}, "service": {"mean_ms": 5},
                      "batching": {"max_queue_delay_us": -1}}}
    with pytest.raises(ConfigError, match=r"x\.yaml: scenario\.batching\.max_queue_delay_us: must be >= 0"):
        ccfg.measure_config_from_dict(d, source="x.yaml")


def test_scenario_file_reference(tmp_path):
    (tmp_path / "sc.yaml").write_text("workload: {kind: poisson, rate_rps: 5}\nservice: {mean_ms: 3}\n")
    (tmp_path / "m.yaml").write_text("scenario_file: sc.yaml\nmeasure: {runs: [{name: r1, set: {duration_s: 7}}]}\n")
    cfg = ccfg.load_measure_config(str(tmp_path / "m.yaml"), ["stack.onnx_threads=2"])
    assert cfg.runs[0].scenario.duration_s == 7 and cfg.runs[0].scenario.workload.rate_rps == 5
    assert cfg.stack.onnx_threads == 2


def test_merge_replaces_mappings_with_kind():
    base = {"workload": {"kind": "closed_loop", "users": 3}, "cluster": {"replicas": 1, "max_replicas": 4}}
    out = ccfg.merge(base, {"workload": {"kind": "poisson", "rate_rps": 5}, "cluster": {"replicas": 2}})
    assert out["workload"] == {"kind": "poisson", "rate_rps": 5}
    assert out["cluster"] == {"replicas": 2, "max_replicas": 4}
    assert base["cluster"]["replicas"] == 1


def test_config_pbtxt_from_batching():
    model_config_pbtxt = default_model().config_pbtxt
    pb = model_config_pbtxt(BatchingSpec(max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_us=2500,
                                         instances=2, max_queue_size=32, queue_timeout_us=100000), onnx_threads=3)
    assert "max_batch_size: 16" in pb
    assert "preferred_batch_size: [ 4, 8 ]" in pb
    assert "max_queue_delay_microseconds: 2500" in pb
    assert "count: 2" in pb and "KIND_CPU" in pb
    assert "max_queue_size: 32" in pb
    assert "timeout_action: REJECT" in pb and "default_timeout_microseconds: 100000" in pb
    assert 'string_value: "3"' in pb
    plain = model_config_pbtxt(BatchingSpec())
    assert "default_queue_policy" not in plain and "preferred_batch_size" not in plain


PROM = """# HELP nv_inference_request_success x
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 100
nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 3
nv_inference_request_failure{model="m",reason="OTHER",version="1"} 1
nv_inference_count{model="m",version="1"} 160
nv_inference_exec_count{model="m",version="1"} 40
nv_inference_queue_duration_us{model="m",version="1"} 200000
nv_inference_compute_infer_duration_us{model="m",version="1"} 1e6
nv_inference_count{model="other",version="1"} 7
nv_cpu_utilization 0.5
"""


def test_prometheus_parsing():
    s = parse_prometheus(PROM)
    assert ("nv_inference_count", {"model": "other", "version": "1"}, 7.0) in s
    c = model_counters(s, "m")
    assert c["nv_inference_count"] == 160 and c["nv_inference_request_failure"] == 4
    assert c["nv_inference_request_failure:REJECTED"] == 3
    assert c["nv_inference_compute_infer_duration_us"] == 1e6
    assert c["nv_cpu_utilization"] == 0.5


def test_observation_from_window():
    start = {"r0": {"nv_inference_request_success": 0, "nv_inference_count": 0, "nv_inference_exec_count": 0,
                    "nv_inference_queue_duration_us": 0, "nv_inference_compute_infer_duration_us": 0}}
    end = {"r0": {"nv_inference_request_success": 40, "nv_inference_count": 40, "nv_inference_exec_count": 10,
                  "nv_inference_queue_duration_us": 80000, "nv_inference_compute_infer_duration_us": 800000},
           "r1": {"nv_inference_request_success": 10, "nv_inference_count": 10, "nv_inference_exec_count": 10,
                  "nv_inference_queue_duration_us": 20000, "nv_inference_compute_infer_duration_us": 100000}}
    req = {"t_send": [0.1, 0.2, 0.5, 1.5, 1.9], "latency_ms": [10, 300, 20, 50, 5000], "status":
           ["ok", "ok", "rejected", "ok", "ok"]}
    o = observation_from_window(0.0, 2.0, req, start, end, replicas=2, replicas_ready=2, replicas_pending=0,
                                instances=1, slo_ms=100, min_replicas=1, max_replicas=4)
    assert o.arrival_rps == pytest.approx(2.5)
    assert o.completion_rps == pytest.approx(1.5)        # 3 ok done inside the window; the 5 s one not
    assert o.failures == 1
    assert o.slo_violation_frac == pytest.approx(2 / 4)   # one > 100 ms + one failure of 4
    assert o.inflight == 1
    assert o.queue_ms == pytest.approx(100000 / 50 / 1000)
    assert o.batch_size == pytest.approx(50 / 20)
    # busy: r0 800 ms x 10/40 + r1 100 ms x 10/10 = (900000 x 20 / 50) estimated on the sum
    assert 0 < o.busy_fraction <= 1
    empty = observation_from_window(0, 1, None, start, start, replicas=1, replicas_ready=1, replicas_pending=0,
                                    instances=1, slo_ms=100, min_replicas=1, max_replicas=1)
    assert math.isnan(empty.latency_p95_ms) and math.isnan(empty.queue_ms) and empty.busy_fraction == 0


def test_latency_summary():
    s = latency_summary([10, 20, 30, float("nan")], ["ok", "ok", "ok", "unavailable"], 2.0)
    assert s["success_rate"] == 0.75 and s["throughput_rps"] == 1.5 and s["avg_ms"] == 20


def test_arrivals_poisson_and_schedule():
    w = parse_workload({"kind": "poisson", "rate_rps": 50}, "workload", "")
    a = arrival_times(w, 20, seed=3)
    assert np.all(np.diff(a) >= 0) and 850 < len(a) < 1150 and a.max() < 20
    assert np.array_equal(a, arrival_times(w, 20, seed=3))
    s = parse_workload({"kind": "schedule", "segments": [
        {"kind": "step", "duration_s": 20, "rate_rps": 10, "to_rps": 100, "at_s": 10}]}, "workload", "")
    b = arrival_times(s, 20, seed=1)
    n1, n2 = (b < 10).sum(), (b >= 10).sum()
    assert 60 < n1 < 140 and 850 < n2 < 1150
    assert schedule_rate(s.segments, np.array([5.0, 15.0, 30.0])).tolist() == [10.0, 100.0, 100.0]
    r = parse_workload({"kind": "schedule", "segments": [
        {"kind": "ramp", "duration_s": 10, "rate_rps": 0, "to_rps": 100}]}, "workload", "")
    c = arrival_times(r, 10, seed=2)
    assert (c >= 5).sum() > 2 * (c < 5).sum()


def test_arrivals_trace_and_timestamps(tmp_path):
    (tmp_path / "t.csv").write_text("rps\n10\n10\n50\n50\n")
    w = parse_workload({"kind": "trace", "path": str(tmp_path / "t.csv")}, "workload", "")
    a = arrival_times(w, 4, seed=0)
    assert 90 < len(a) < 150
    (tmp_path / "ts.csv").write_text("TIMESTAMP\n100\n100.5\n101\n103\n")
    w = parse_workload({"kind": "timestamps", "path": str(tmp_path / "ts.csv"), "speedup": 2.0}, "workload", "")
    assert arrival_times(w, 10, seed=0).tolist() == [0.0, 0.25, 0.5, 1.5]


@pytest.mark.parametrize("d", [Dist("exponential", 2.0), Dist("gamma", 2.0, 0.5), Dist("lognormal", 2.0, 0.5),
                               Dist("weibull", 2.0, 0.5, 0.5), Dist("empirical", quantiles=(1.0, 3.0)),
                               Dist("deterministic", 2.0, 0.0)])
def test_sample_dist_means(d):
    x = sample_dist(d, np.random.default_rng(0), 20000)
    assert x.mean() == pytest.approx(2.0, rel=0.05)
    assert (x >= 0).all()


def test_classify_statuses():
    from tritonclient.utils import InferenceServerException
    assert classify(None)[0] == "ok"
    assert classify(InferenceServerException("Exceeds maximum queue size", status="503"))[0] == "rejected"
    assert classify(InferenceServerException("Request timeout expired"))[0] == "timeout"
    assert classify(ConnectionRefusedError("refused"))[0] == "unavailable"
    assert classify(InferenceServerException("x", status="503"))[0] == "unavailable"
    assert classify(ValueError("weird"))[0] == "error"


def test_haproxy_config_renders_and_validates(tmp_path):
    cfg = render_config(18080, str(tmp_path / "s.sock"), 4, "least_outstanding", 300)
    assert "balance leastconn" in cfg and "bind 127.0.0.1:18080" in cfg
    assert "option httpchk GET /v2/health/ready" in cfg and cfg.count("server s") == 4
    assert "retries 0" in cfg
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed")
    (tmp_path / "h.cfg").write_text(cfg)
    r = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_haproxy_missing_is_a_clear_error(monkeypatch):
    from cluster.stack import lb
    monkeypatch.setattr(lb.shutil, "which", lambda name: None)
    monkeypatch.setattr(lb.os.path, "exists", lambda p: False)
    with pytest.raises(lb.LoadBalancerError, match=r"haproxy is not installed.*python -m cluster.setup"):
        lb.haproxy_bin()


def test_port_check():
    from cluster.stack.procs import PortInUseError, check_port_free
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"127\.0\.0\.1:{port} is already in use .*stack\.lb_port: 0"):
            check_port_free(port, "load balancer", "stack.lb_port")
    check_port_free(0, "anything")


def test_free_port_never_hands_out_a_port_twice(monkeypatch):
    """The OS may offer a port again before the server it went to binds it (a server once got the same port for
    HTTP and metrics); free_port asks again instead."""
    import socket as socket_mod

    from cluster.stack import procs
    offers = iter([41001, 41001, 41001, 41002, 41001, 41003])

    class Sock:
        def __init__(self, *a):
            self.port = 0

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def bind(self, addr):
            self.port = next(offers)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(procs, "_handed_out", {})
    monkeypatch.setattr(socket_mod, "socket", Sock)
    assert [procs.free_port(), procs.free_port(), procs.free_port()] == [41001, 41002, 41003]


def test_model_parameter_count():
    from cluster.stack.model import PARAMETERS, build_model, count_parameters
    assert count_parameters(build_model()) == PARAMETERS


def test_headline_shows_the_seed_study_only_beside_its_own_model():
    from cluster.measure import headline_table
    s = {"avg_ms": 26.5, "p95_ms": 48.8, "p99_ms": 80.8, "throughput_rps": 121.8, "success_rate": 1.0}
    assert "seed study" in headline_table(s, "baseline") and "72 ms" in headline_table(s, "baseline")
    other = headline_table(s, "d0_low", seed_study=False)
    assert "seed study" not in other and "72 ms" not in other and "121.8 req/s" in other
