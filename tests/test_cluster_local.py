"""The local backend with real tritonserver processes, HAProxy and Locust (short runs, loopback only).

Every test checks that no server process it started is left behind.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from cluster.stack import procs
from cluster.stack.config import StackSettings
from helpers import real_stack_prerequisites
from simulator.config import scenario_from_dict

pytestmark = [pytest.mark.slow, pytest.mark.realserver]

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mobilenetv4_conv_small"


@pytest.fixture(scope="module", autouse=True)
def prerequisites():
    real_stack_prerequisites()


def _ours(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``marker`` (our tmp dir)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _no_strays(tmp_path):
    deadline = time.time() + 5
    while _ours(str(tmp_path)) and time.time() < deadline:
        time.sleep(0.1)
    assert _ours(str(tmp_path)) == []
    assert procs.live_children() == []


def _scenario(**cluster):
    return scenario_from_dict({"seed": 0, "workload": {"kind": "poisson", "rate_rps": 40}, "service": {"mean_ms": 8},
                               "batching": {"max_batch_size": 4, "max_queue_delay_us": 500},
                               "cluster": {"replicas": 2, "max_replicas": 3, **cluster}})


def test_local_backend_balances_survives_a_crash_and_scales(tmp_path):
    from cluster.stack.arrivals import arrival_times
    from cluster.stack.local import LocalBackend
    from cluster.stack.loadgen import run_load
    sc = _scenario()
    be = LocalBackend(sc, StackSettings(drain_timeout_s=3), tmp_path / "srv")
    try:
        be.deploy()
        assert be.ready_replicas == 2
        arr = arrival_times(sc.workload, 6.0, 0)
        start_at = time.time() + 2.5
        killed = {}

        def _kill():
            time.sleep(max(0.0, start_at + 2.5 - time.time()))
            killed["name"], killed["t"] = be.kill(0), time.time()
        threading.Thread(target=_kill, daemon=True).start()
        res = run_load({"url": be.endpoints["lb"], "model": MODEL, "mode": "open", "duration_s": 6.0, "seed": 0,
                        "arrivals": arr.tolist(), "timeout_s": 10, "start_at_epoch": start_at}, tmp_path / "lg")
        rows = list(csv.DictReader(open(res.requests_path)))
        assert len(rows) == len(arr)
        victim, t_kill = killed["name"], killed["t"]
        before = [r for r in rows if float(r["t_send"]) < t_kill - 0.2]
        after = [r for r in rows if float(r["t_send"]) > t_kill + 1.5]
        assert {r["replica"] for r in before if r["status"] == "ok"} == {"r0", "r1"}      # round robin
        assert after and all(r["status"] == "ok" for r in after)                          # the run went on
        assert victim not in {r["replica"] for r in after}                                # LB stopped sending
        failed = [r for r in rows if r["status"] != "ok"]
        assert len(failed) <= 10 and all(r["status"] in ("unavailable", "error") for r in failed)
        log = {r.name: r for r in be.replica_log()}
        assert log[victim].end_reason == "crashed" and log[victim].exit_code == -signal.SIGKILL
        assert be.ready_replicas == 1
        # scale up replaces it (ready only once Triton reports the model ready), scale down drains
        be.scale(2)
        be.wait_ready(2, 60)
        new = [r for r in be.replica_log() if r.name not in log][0]
        assert new.t_start <= new.t_live <= new.t_ready
        be.scale(1)
        deadline = time.time() + 20
        while time.time() < deadline and any(r.t_gone is None for r in be.replica_log() if r.name == new.name):
            time.sleep(0.1)
        rec = [r for r in be.replica_log() if r.name == new.name][0]
        assert rec.end_reason == "scale_down" and rec.t_drain <= rec.t_gone and rec.exit_code == 0
        assert be.ready_replicas == 1
        m = be.metrics()
        assert len(m) == 1 and "nv_inference_exec_count" in next(iter(m.values()))
    finally:
        be.teardown()
    _no_strays(tmp_path)


def test_model_load_failure_is_clear_and_leaves_nothing(tmp_path, monkeypatch):
    import dataclasses

    from cluster.stack import local
    from cluster.stack.served import served_for
    from cluster.stack.triton import TritonError
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an onnx model")
    broken = dataclasses.replace(served_for(StackSettings()), onnx_file=bad)
    monkeypatch.setattr(local, "served_for", lambda stack: broken)
    be = local.LocalBackend(_scenario(replicas=1), StackSettings(ready_timeout_s=60), tmp_path / "srv")
    with pytest.raises(TritonError, match=rf"replica r0: Triton failed to load model '{MODEL}'"):
        try:
            be.deploy()
        finally:
            be.teardown()
    _no_strays(tmp_path)


def test_port_in_use_is_clear_and_leaves_nothing(tmp_path):
    from cluster.stack.local import LocalBackend
    from cluster.stack.procs import PortInUseError
    from cluster.stack.triton import TritonServer, write_model_repository
    from simulator.config import BatchingSpec
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        be = LocalBackend(_scenario(replicas=1), StackSettings(lb_port=port), tmp_path / "srv")
        with pytest.raises(PortInUseError, match=rf"load balancer \(HAProxy\): port 127\.0\.0\.1:{port} is already in use"):
            try:
                be.deploy()
            finally:
                be.teardown()
        repo = write_model_repository(tmp_path / "repo", BatchingSpec())
        srv = TritonServer(repo, "rX", tmp_path / "rX.log", http_port=port)
        with pytest.raises(PortInUseError, match=rf"replica rX Triton HTTP: port 127\.0\.0\.1:{port} is already in use"):
            srv.start()
    _no_strays(tmp_path)


def test_loadgen_errors(tmp_path):
    from cluster.stack.loadgen import LoadGenError, run_load
    with pytest.raises(LoadGenError, match=r"load generator \(Locust\) failed with exit code 2"):
        run_load({"url": "http://127.0.0.1:9", "model": MODEL, "mode": "bogus", "duration_s": 1}, tmp_path / "a")
    # nothing listening: every request is recorded as unavailable, the load generator itself succeeds
    res = run_load({"url": f"http://127.0.0.1:{procs.free_port()}", "model": MODEL, "mode": "closed",
                    "duration_s": 1.5, "users": 1, "think": 0.2, "timeout_s": 2}, tmp_path / "b")
    rows = list(csv.DictReader(open(res.requests_path)))
    assert rows and {r["status"] for r in rows} == {"unavailable"}
    assert procs.live_children() == []


def _tiny_config(tmp_path, duration=4, extra_runs="") -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""
scenario:
  name: tiny
  seed: 0
  duration_s: {duration}
  warmup_s: 1
  workload: {{kind: closed_loop, users: 3, think: {{kind: empirical, quantiles_s: [0.1, 0.3]}}}}
  service: {{mean_ms: 8}}
  batching: {{max_batch_size: 4, max_queue_delay_us: 500}}
  cluster: {{replicas: 1, max_replicas: 2}}
measure:
  runs:
    - name: baseline
{extra_runs}
  sweep: {{batch_sizes: [1, 2], samples: 5, warmup: 1, concurrency: [1, 2], concurrency_duration_s: 1.5,
           interference_replicas: [1, 2], interference_duration_s: 1.5}}
  startup: {{samples: 1}}
""")
    return cfg


def test_measure_end_to_end(tmp_path, capsys):
    from cluster import measure
    cfg = _tiny_config(tmp_path, extra_runs="""    - name: step
      set:
        duration_s: 4
        warmup_s: 0
        workload: {kind: schedule, segments: [{kind: step, duration_s: 4, rate_rps: 10, to_rps: 30, at_s: 2}]}
      events: [{at_s: 1, scale: 2}]""")
    out = tmp_path / "out"
    rc = measure.main([str(cfg), "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "Headline (baseline run)" in cap.out and "p99 latency" in cap.out
    man = json.loads((out / "manifest.json").read_text())
    assert man["format"] == "servesim-measurements/1" and man["seed"] == 0
    assert set(man["runs"]) == {"baseline", "step"} and man["runs"]["baseline"]["success_rate"] == 1.0
    assert man["versions"]["tritonserver"] not in ("", "unknown") and man["machine"]["cores"] >= 1
    assert {"run:baseline", "run:step", "sweep", "startup"} <= set(man["phases"])
    for f in ("config.yaml", "runs/baseline/requests.csv", "runs/baseline/metrics.csv", "runs/baseline/replicas.csv",
              "runs/baseline/run.json", "runs/baseline/observations.csv", "runs/baseline/cluster.csv",
              "runs/step/events.csv", "sweep/compute.csv", "sweep/concurrency.csv", "sweep/interference.csv", "sweep/sweep.json",
              "startup/startup.csv"):
        assert (out / f).exists(), f
    reqs = list(csv.DictReader(open(out / "runs/baseline/requests.csv")))
    assert reqs and set(reqs[0]) == {"seq", "user", "t_sched_s", "t_send_s", "latency_ms", "status", "http_status",
                                     "replica", "error"}
    assert {r["replica"] for r in reqs} == {"r0"}
    step = list(csv.DictReader(open(out / "runs/step/replicas.csv")))
    assert len(step) == 2 and all(r["t_ready_s"] for r in step)
    ev = list(csv.DictReader(open(out / "runs/step/events.csv")))
    assert ev[0]["kind"] == "scale" and abs(float(ev[0]["t_s"]) - 1.0) < 0.5
    metrics = list(csv.DictReader(open(out / "runs/baseline/metrics.csv")))
    assert {"nv_inference_request_success", "nv_inference_exec_count", "nv_inference_queue_duration_us",
            "nv_inference_compute_infer_duration_us"} <= {m["metric"] for m in metrics}
    comp = list(csv.DictReader(open(out / "sweep/compute.csv")))
    assert {r["batch_size"] for r in comp} == {"1", "2"} and all(float(r["compute_infer_ms"]) > 0 for r in comp)
    assert len(list(csv.DictReader(open(out / "startup/startup.csv")))) == 1
    assert not list(tmp_path.glob(".out.tmp-*"))
    # refuses to overwrite without --force: bad input, one line, exit 2, before anything starts
    assert measure.main([str(cfg), "--out", str(out), "--quiet", "--only", "startup"]) == 2
    assert "already exists (written by cluster.measure); --force replaces it" in capsys.readouterr().err
    assert procs.live_children() == []


def _cmdline(proc: psutil.Process) -> str:
    """A child's command line, or "" once it has ended (a zombie or gone between listing and reading it:
    measure's preflight starts and ends short-lived processes)."""
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def test_ctrl_c_tears_everything_down(tmp_path):
    cfg = _tiny_config(tmp_path, duration=60)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER="1")
    # started with SIGINT ignored, as by a non-interactive shell's `cmd &` (CI runners): measure must re-arm it
    p = subprocess.Popen([sys.executable, "-m", "cluster.measure", str(cfg), "--out", str(tmp_path / "out"),
                          "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        me = psutil.Process(p.pid)
        deadline = time.time() + 60
        kids = []
        while time.time() < deadline:      # wait until the servers and the load generator are running
            kids = me.children(recursive=True)
            cmds = [_cmdline(k) for k in kids]
            if any("tritonserver" in c for c in cmds) and any("cluster.stack.loadgen" in c for c in cmds):
                break
            time.sleep(0.2)
        else:
            pytest.fail("measure did not start servers and load within 60 s")
        time.sleep(1.0)
        kids = me.children(recursive=True)
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)          # faulthandler: every thread's stack to stderr
            _, err = p.communicate(timeout=20)
            pytest.fail("measure did not stop within 60 s of Ctrl-C; its threads:\n" + err.decode()[-6000:])
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err.decode()
    assert b"interrupted" in err
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert alive == [], [k.pid for k in alive]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
