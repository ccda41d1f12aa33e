"""Closing the loop: the live controller (fake backend), policy pre-flight checks, the sim-vs-real
report arithmetic, and the pipeline's input handling. No real servers here (see test_cluster_validate_real.py)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cluster.controller import (Controller, LiveRequests, PolicyRejected, check_policy, load_policy_file,
                                scrape_counters, synthetic_observations)
from cluster.validate.stats import pair_verdict, ranking, replica_curve
from simulator.io import OutputFolder
from simulator.policy import Observation, Policy, StaticPolicy
from helpers import FakeBackend, MODEL, k8s_scenario, k8s_stack, tiny_rate_policy

ROOT = Path(__file__).resolve().parent.parent


class Const(Policy):
    kind = "test-const"

    def __init__(self, v):
        self.v = v
        self.calls = 0

    def decide(self, obs):
        self.calls += 1
        return self.v


class Raises(Policy):
    kind = "test-raise"

    def decide(self, obs):
        raise RuntimeError("boom")


def _obs(**kw) -> Observation:
    base = dict(time_s=5.0, interval_s=5.0, arrival_rps=50.0, completion_rps=50.0, latency_p50_ms=10.0,
                latency_p95_ms=20.0, latency_p99_ms=30.0, slo_violation_frac=0.0, queue_ms=1.0, batch_size=1.0,
                busy_fraction=0.5, inflight=1.0, replicas=1, replicas_ready=1, replicas_pending=0, failures=0,
                slo_ms=30.0, min_replicas=1, max_replicas=3)
    base.update(kw)
    return Observation(**base)


def _ctl(be, pol, logs=None, **kw):
    return Controller(be, pol, interval_s=5.0, slo_ms=30.0, min_replicas=1, max_replicas=3, model=MODEL,
                      log=(logs.append if logs is not None else (lambda m: None)), **kw)


# --------------------------------------------------------------------------- controller decisions


def test_controller_clamps_and_scales():
    be = FakeBackend(1)
    logs: list[str] = []
    ctl = _ctl(be, Const(7), logs)
    d = ctl.decide(1, _obs())
    assert d.desired == 3 and be.scaled == [3] and not d.held and "clamped 7 to 3" in d.reason
    ctl.policy = Const(0)
    d = ctl.decide(2, _obs())
    assert d.desired == 1 and be.scaled == [3, 1]
    ctl.policy = Const(2.0)
    assert ctl.decide(3, _obs()).desired == 2 and be.scaled[-1] == 2
    assert any("clamped" in m for m in logs)


def test_controller_holds_on_missing_metrics_and_bad_answers():
    be = FakeBackend(2)
    logs: list[str] = []
    pol = Const(3)
    ctl = _ctl(be, pol, logs)
    d = ctl.decide(1, None, "scrape failed (OSError: refused)")
    # nothing asked of the backend or the policy; holds the deployed count
    assert d.held and d.desired == 2 and be.scaled == [] and pol.calls == 0
    assert "metrics missing" in d.reason and any("holding 2" in m for m in logs)
    assert ctl.decide(2, _obs()).desired == 3 and be.scaled == [3]
    assert ctl.decide(3, None, "x").desired == 3 and be.scaled == [3]          # holds the *last* decision
    for bad in (float("nan"), float("inf"), "many", None):
        ctl.policy = Const(bad)
        d = ctl.decide(4, _obs())
        assert d.held and d.desired == 3, bad
    ctl.policy = Raises()
    d = ctl.decide(5, _obs())
    assert d.held and "policy error: boom" in d.reason
    assert be.scaled == [3]
    rows = [x.row() for x in ctl.decisions]
    assert [r["held"] for r in rows] == [1, 0, 1, 1, 1, 1, 1, 1]


def test_controller_records_scale_failures_and_goes_on():
    class Broken(FakeBackend):
        def scale(self, n):
            raise RuntimeError("API down")
    be = Broken(1)
    ctl = _ctl(be, Const(2))
    d = ctl.decide(1, _obs())
    assert d.scale_error.startswith("RuntimeError") and ctl.errors
    assert ctl.decide(2, _obs()).desired == 2


# --------------------------------------------------------------------------- live observations


def test_live_observation_matches_the_definitions():
    t0 = 1000.0
    clock = {"t": t0}
    be = FakeBackend(2)
    feed = LiveRequests(clock=lambda: clock["t"])
    ctl = _ctl(be, Const(2), requests=feed)
    ctl.start(t0)
    # 40 requests sent in [t0, t0 + 5): latencies 10..49 ms; one failure; one still in flight
    for i in range(40):
        feed.add(i, t0 + 0.1 * i, 10.0 + i)
    clock["t"] = t0 + 5.1           # the load generator's last heartbeat before the tick
    feed.feed({"sends": [[100, t0 + 4.0], [101, t0 + 4.5]], "done": [[100, t0 + 4.0, None, "unavailable"]]})
    be.counters = {"r0": [20, 20, 10, 20000, 100000], "r1": [19, 19, 19, 19000, 95000]}
    clock["t"] = t0 + 5.25
    obs, why = ctl.observe(1)
    assert why == "" and obs is not None
    assert obs.time_s == 5.0 and obs.interval_s == 5.0
    assert obs.arrival_rps == pytest.approx(42 / 5)
    assert obs.completion_rps == pytest.approx(40 / 5)
    lat = np.arange(10.0, 50.0)
    assert obs.latency_p95_ms == pytest.approx(np.percentile(lat, 95))
    assert obs.failures == 1
    assert obs.slo_violation_frac == pytest.approx(((lat > 30).sum() + 1) / 41)
    assert obs.queue_ms == pytest.approx(39000 / 39 / 1000)
    assert obs.batch_size == pytest.approx(39 / 29)
    assert obs.inflight == 1
    assert obs.replicas == 2 and obs.replicas_ready == 2
    busy = 195000 * 29 / 39 / (2 * 5e6)
    assert obs.busy_fraction == pytest.approx(busy)


def test_missing_metrics_are_detected():
    be = FakeBackend(2)
    snap, why = scrape_counters(be, MODEL)
    assert snap is not None and set(snap) == {"r0", "r1"}
    be.drop_replica = "r1"
    snap, why = scrape_counters(be, MODEL)
    assert snap is None and "r1" in why
    be.drop_replica = None
    be.fail_scrape = True
    assert scrape_counters(be, MODEL)[0] is None
    # a failed scrape also leaves the next interval without a start snapshot; a silent feed is missing too
    clock = {"t": 0.0}
    feed = LiveRequests(clock=lambda: clock["t"])
    ctl = _ctl(be, Const(2), requests=feed)
    be.fail_scrape = False
    ctl.start(0.0)
    be.fail_scrape = True
    obs, why = ctl.observe(1)
    assert obs is None and "scrape failed" in why
    be.fail_scrape = False
    obs, why = ctl.observe(2)
    assert obs is None and "start of the interval" in why
    clock["t"] = 100.0
    obs, why = ctl.observe(3)
    assert obs is None and "feed silent" in why
    feed.add(1, 14.0, 10.0)
    obs, why = ctl.observe(4)
    assert obs is not None and why == ""


def test_controller_run_loop_ticks_and_holds():
    """The wall-clock loop: ticks every interval, holds when a scrape fails, never raises."""
    class FailsThirdScrape(FakeBackend):
        calls = 0

        def metrics(self):
            self.calls += 1
            if self.calls == 3:            # start() is call 1, tick 1 call 2: tick 2's scrape fails
                raise OSError("connection refused")
            return super().metrics()
    be = FailsThirdScrape(1)
    feed = LiveRequests()
    logs: list[str] = []
    ctl = Controller(be, Const(2), interval_s=0.2, slo_ms=30.0, min_replicas=1, max_replicas=3, model=MODEL,
                     requests=feed, lag_s=0.02, log=logs.append)
    stop = threading.Event()
    t0 = time.time() + 0.05

    def feeder():
        i = 0
        while not stop.is_set():
            feed.add(i, time.time(), 5.0)
            i += 1
            time.sleep(0.05)
    th = threading.Thread(target=feeder, daemon=True)
    th.start()
    ctl.run(t0, 1.0, stop)
    stop.set()
    th.join(1)
    assert [d.tick for d in ctl.decisions] == [1, 2, 3, 4, 5]
    # tick 2: the scrape failed; tick 3: no counter snapshot opened its interval; then live again
    assert [d.held for d in ctl.decisions] == [False, True, True, False, False]
    assert "scrape failed" in ctl.decisions[1].reason and "start of the interval" in ctl.decisions[2].reason
    assert all(d.desired == 2 for d in ctl.decisions)
    assert set(be.scaled) == {2}
    assert any("holding" in m for m in logs)


# --------------------------------------------------------------------------- pre-flight checks


class Answers(Policy):
    kind = "test-answers"

    def __init__(self, f):
        self.f = f

    def decide(self, obs):
        return self.f(obs)


def test_check_policy_rejects_bad_policies():
    kw = dict(interval_s=5.0, slo_ms=30.0, min_replicas=1, max_replicas=3, capacity_rps=50.0)
    assert check_policy(StaticPolicy(2), **kw) == [2] * len(synthetic_observations(**kw))
    from simulator.hpa import HPAPolicy
    check_policy(HPAPolicy.from_params({"metric": "busy_fraction", "target": 0.6}), **kw)
    with pytest.raises(PolicyRejected, match="nan"):
        check_policy(Answers(lambda o: float("nan") if o.arrival_rps > 100 else 1), **kw)
    with pytest.raises(PolicyRejected, match=r"answered 4 replicas.*\[1, 3\]"):
        check_policy(Answers(lambda o: 4 if o.arrival_rps > 100 else 1), **kw)
    with pytest.raises(PolicyRejected, match="whole numbers"):
        check_policy(Answers(lambda o: 1.5), **kw)
    with pytest.raises(PolicyRejected, match="not a number"):
        check_policy(Answers(lambda o: "2"), **kw)
    with pytest.raises(PolicyRejected, match="boom"):
        check_policy(Raises(), **kw)


def test_learned_policy_checks(tmp_path):
    kw = dict(interval_s=5.0, slo_ms=30.0, min_replicas=1, max_replicas=3, capacity_rps=50.0)
    good = load_policy_file(tiny_rate_policy(tmp_path / "good.pt"))
    answers = check_policy(good, **kw)
    assert all(1 <= a <= 3 for a in answers) and answers[0] == 1 and max(answers) == 3
    with pytest.raises(PolicyRejected, match="invalid action scores"):
        check_policy(load_policy_file(tiny_rate_policy(tmp_path / "nan.pt", nan=True)), **kw)
    with pytest.raises(PolicyRejected, match="control interval 15 s"):
        check_policy(load_policy_file(tiny_rate_policy(tmp_path / "i15.pt", interval=15.0)), **kw)
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    with pytest.raises(PolicyRejected, match="not a TorchScript policy"):
        load_policy_file(str(tmp_path / "junk.pt"))
    with pytest.raises(PolicyRejected, match="file not found"):
        load_policy_file(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("which", ["nan", "junk"])
def test_validate_rejects_a_bad_policy_before_any_server_starts(tmp_path, capsys, which):
    from cluster.stack import procs
    from cluster.validate.cli import main
    if which == "nan":
        p = tiny_rate_policy(tmp_path / "nan.pt", nan=True)
    else:
        p = str(tmp_path / "junk.pt")
        Path(p).write_bytes(b"\x00garbage")
    out = tmp_path / "val"
    rc = main([p, "--out", str(out), "--scenario", str(ROOT / "configs" / "calibrated" / "baseline.yaml"),
               "--compare", "none", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: policy rejected before any scaling")
    assert not out.exists() and procs.live_children() == []


def test_validate_bad_input_is_one_line(tmp_path, capsys):
    from cluster.validate.cli import main
    p = tiny_rate_policy(tmp_path / "good.pt")
    sc = str(ROOT / "configs" / "calibrated" / "baseline.yaml")
    for args, msg in ((["--compare", "knative"], "--compare: unknown 'knative'"),
                      (["--duration", "-5"], "--duration: must be > 0"),
                      (["--start", "1e9"], "outside"),
                      (["--workload", str(tmp_path / "nope.yaml")], "file not found")):
        rc = main([p, "--out", str(tmp_path / "v"), "--scenario", sc, "--quiet", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and msg in err[0], (args, err)
    (tmp_path / "v").mkdir()                  # a folder validate did not write: refused, even with --force
    (tmp_path / "v" / "notes.txt").write_text("mine")
    assert main([p, "--out", str(tmp_path / "v"), "--scenario", sc, "--quiet", "--force"]) == 2
    assert "not written by cluster.validate" in capsys.readouterr().err
    assert (tmp_path / "v" / "notes.txt").read_text() == "mine"


def test_controller_drives_the_kubernetes_backend(tmp_path, fake_api):
    """The same controller scales a Kubernetes Deployment (the API double of test_cluster_k8s)."""
    from cluster.stack.kubernetes import KubernetesBackend
    be = KubernetesBackend(k8s_scenario(1), k8s_stack(fake_api.url), tmp_path)
    try:
        be.deploy()
        ctl = Controller(be, StaticPolicy(3), interval_s=5.0, slo_ms=30.0, min_replicas=1, max_replicas=3,
                         model=MODEL)
        ctl.start(time.time())
        obs, why = ctl.observe(1)
        assert obs is not None, why
        assert ctl.decide(1, obs).desired == 3
        be.wait_ready(3, 5)
        assert fake_api.objects[("deployments", "ssim-test", "servesim-triton")]["spec"]["replicas"] == 3
    finally:
        be.teardown()


# --------------------------------------------------------------------------- report arithmetic


def test_pairwise_verdicts_and_ranking():
    def s(cost, viol):
        return {"replica_seconds": cost, "slo_violation_rate": viol}
    assert pair_verdict("a", s(100, 0.010), "b", s(150, 0.012))["winner"] == "a"          # cheaper at equal SLO
    assert pair_verdict("a", s(100, 0.010), "b", s(150, 0.005))["winner"] == "a"          # within 0.5 pt
    v = pair_verdict("a", s(100, 0.030), "b", s(150, 0.010))
    assert v["winner"] is None and "trade-off" in v["why"]
    assert pair_verdict("a", s(100, 0.030), "b", s(150, 0.040))["winner"] == "a"          # dominates
    assert pair_verdict("a", s(100, 0.030), "b", s(101, 0.010))["winner"] == "b"          # equal cost, fewer viol.
    assert pair_verdict("a", s(100, 0.010), "b", s(101, 0.011))["winner"] is None         # tie
    real = {"p": s(100, 0.01), "h": s(80, 0.03), "st": s(300, 0.001)}
    sim = {"p": s(105, 0.012), "h": s(85, 0.028), "st": s(300, 0.02)}
    rk = ranking(real, sim)
    assert rk["cost_order_real"] == ["h", "p", "st"] and rk["cost_order_agrees"]
    by = {(p["a"], p["b"]): p for p in rk["pairs"]}
    assert by[("p", "h")]["agree"]                                       # trade-off on both sides
    assert by[("p", "st")]["real"]["winner"] is None and by[("p", "st")]["sim"]["winner"] == "p"
    assert not rk["agrees"]
    assert ranking(real, real)["agrees"]


def test_replica_curves():
    ts = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    req, rdy = replica_curve([(0.0, 0.0, math.inf, math.inf), (1.0, 2.5, 3.5, 4.0)], ts)
    assert req.tolist() == [1, 2, 2, 2, 1] and rdy.tolist() == [1, 1, 1, 2, 1]


# --------------------------------------------------------------------------- pipeline


def _pipeline(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cluster.pipeline", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _bad_model_config(tmp_path):
    p = tmp_path / "bad_model.yaml"
    p.write_text("scenario: {workload: {kind: poisson, rate_rps: 5}, service: {mean_ms: 5}}\n"
                 "model: {onnx: gone.onnx}\n")
    return p


def test_pipeline_runs_any_deployment(tmp_path):
    from cluster import pipeline as pl
    out = (tmp_path / "p").resolve()
    a = pl.parse_args(["--out", str(out), "--config", str(ROOT / "configs" / "text_encoder.yaml")])
    steps = {s.name: s for s in pl.plan(out, a)}
    assert a.name == "text_encoder"
    assert steps["measure"].cmd[3:6] == ["configs/text_encoder.yaml", "--out", str(out / "results" / "text_encoder")]
    assert steps["fit"].output == out / "calibrated" / "text_encoder.yaml"
    v = steps["validate"].cmd
    assert v[v.index("--stack") + 1] == "configs/text_encoder.yaml"      # the real runs serve the same model
    d = {s.name: s for s in pl.plan(out, pl.parse_args(["--out", str(out)]))}
    assert d["measure"].cmd[3] == "configs/baseline.yaml" and d["fit"].output == out / "calibrated" / "baseline.yaml"


def test_pipeline_bad_input(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for args, msg in ((["--out", str(f)], "is not a folder"), (["--only", "bogus"], "unknown step 'bogus'"),
                      (["--slo-ms", "0"], "--slo-ms"), (["--duration", "5"], "at least 4 control intervals"),
                      (["--compare", "magic"], "--compare"), (["--only", "fit", "--from", "fit"], "one of them"),
                      (["--config", str(tmp_path / "none.yaml")], "none.yaml: file not found"),
                      (["--config", str(_bad_model_config(tmp_path))], "model.onnx: ONNX model file not found")):
        r = _pipeline(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_pipeline_study_step_and_skip_logic(tmp_path):
    from cluster import pipeline as pl
    out = tmp_path / "p"
    OutputFolder(out, "cluster.pipeline", in_place=True, reuse=True).close()   # as a pipeline run leaves it
    (out / "calibrated").mkdir(parents=True)
    (out / "calibrated" / "baseline.yaml").write_text((ROOT / "configs" / "calibrated" / "baseline.yaml").read_text())
    r = _pipeline("--out", str(out), "--only", "study", "--slo-ms", "35", "--interval", "4")
    assert r.returncode == 0, r.stderr
    assert "SLO 35 ms (given" in r.stderr and "control interval 4 s (given" in r.stderr
    assert "replicas 1..2 (derived" in r.stderr           # the 2-core node holds two replicas
    from simulator.config import load_scenario
    dep = out / "study" / "deployment.yaml"
    sc = load_scenario(str(dep))
    assert sc.slo_ms == 35 and sc.autoscaler.interval_s == 4 and sc.cluster.max_replicas == 2
    st = sc.provenance["study"]
    assert st["given"] == {"slo_ms": 35.0, "interval_s": 4.0} and st["rules"]["trace_scale"].startswith("0.8 x")
    rec = json.loads((out / "pipeline.json").read_text())
    assert rec["steps"]["study"]["status"] == "ran" and rec["study"]["slo_ms"] == 35
    from rl.common import load_rl_config
    cfg = load_rl_config(str(out / "study" / "rl.yaml"))
    assert cfg["scenario_path"] == str(dep) and cfg["trace"]["scale"] == st["trace_scale"]
    # unchanged settings: not rewritten
    m = os.path.getmtime(dep)
    assert _pipeline("--out", str(out), "--only", "study", "--slo-ms", "35", "--interval", "4").returncode == 0
    assert os.path.getmtime(dep) == m
    # an SLO below the unloaded p99: one line naming the SLO, the unloaded p99 and the rule's value
    r = _pipeline("--out", str(out), "--only", "study", "--slo-ms", "12")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith("error: step study: --slo-ms 12: not above the calibrated "
                                                      "unloaded p99") and "the rule gives" in lines[-1], r.stderr
    # skip logic: done = output exists and is newer than every input
    a = pl.parse_args(["--out", str(out)])
    steps = {s.name: s for s in pl.plan(out.resolve(), a)}
    tr = steps["train"]
    assert not pl.is_done(tr)
    tr.output.parent.mkdir(parents=True)
    tr.output.write_text("x")
    assert pl.is_done(tr)
    os.utime(dep, (time.time() + 5, time.time() + 5))
    assert not pl.is_done(tr)                     # the deployment changed after training: stale
    assert steps["validate"].cmd[2] == "cluster.validate" and "--tuned" in steps["validate"].cmd
    # an evaluation refused as degenerate is not "done" (unless --allow-degenerate)
    ev = steps["evaluate"]
    ev.inputs = []
    ev.output.parent.mkdir(parents=True)
    ev.output.write_text(json.dumps({"sanity": {"ok": False}}))
    assert not pl.is_done(ev) and pl.is_done(ev, allow_degenerate=True)
    ev.output.write_text(json.dumps({"sanity": {"ok": True}}))
    assert pl.is_done(ev)
