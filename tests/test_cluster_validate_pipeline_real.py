"""A short real pipeline ``cluster.validate`` run: per-stage HPA in the loop of a real two-stage deployment (each
stage its own Triton replicas behind its own HAProxy, requests chained by the client), replayed in the pipeline
simulator. 14 s of load, loopback only."""
from __future__ import annotations

import csv
import json
import time

import pytest

from cluster.stack import procs
from helpers import real_stack_prerequisites

pytestmark = [pytest.mark.slow, pytest.mark.realserver]


@pytest.fixture(scope="module", autouse=True)
def prerequisites():
    real_stack_prerequisites()
    from cluster.stack.builtins import builtin_export
    builtin_export("label_encoder_small")


CONFIG = """
scenario:
  seed: 5
  duration_s: 14
  warmup_s: 2
  slo_ms: 200
  workload: {kind: poisson, rate_rps: 10}
  autoscaler: {kind: per_stage, interval_s: 3}
  pipeline:
    stages:
      - name: image
        variants: [{name: small, accuracy: 0.738, service: {mean_ms: 8}}]
        batching: {max_batch_size: 4, max_queue_delay_us: 500}
        cluster: {replicas: 1, max_replicas: 2, startup_s: {kind: deterministic, mean_s: 2.0}}
      - name: labels
        service: {mean_ms: 10}
        batching: {max_batch_size: 8, max_queue_delay_us: 1000}
        cluster: {replicas: 1, max_replicas: 2, startup_s: {kind: deterministic, mean_s: 2.0}}
model:
  stages:
    image: {variants: {small: {builtin: mobilenetv4_conv_small}}}
    labels: {builtin: label_encoder_small}
stack: {backend: local, onnx_threads: 1, ready_timeout_s: 60, request_timeout_s: 10}
"""

# 8 req/s for 5 s, then 30 req/s: the per-stage HPA at 0.12 x the stages' simulated capacities (~164 and ~138 req/s
# per replica: targets ~20 and ~17 req/s per replica) holds one replica per stage, then asks each for a second
WORKLOAD = """
workload:
  kind: schedule
  segments: [{kind: step, duration_s: 14, rate_rps: 8, to_rps: 30, at_s: 5}]
"""


def test_real_pipeline_validate_run(tmp_path, capsys):
    from cluster.validate.cli import main
    (tmp_path / "pipe.yaml").write_text(CONFIG)
    (tmp_path / "wl.yaml").write_text(WORKLOAD)
    out = tmp_path / "validate"
    t = time.time()
    rc = main(["hpa", "--stack", str(tmp_path / "pipe.yaml"), "--workload", str(tmp_path / "wl.yaml"),
               "--hpa-target", "0.12", "--duration", "14", "--warmup", "2", "--sim-seeds", "1", "--out", str(out), "--quiet",
               "--allow-degenerate"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    wall = time.time() - t
    s = json.loads((out / "summary.json").read_text())
    assert s["pipeline"] == ["image", "labels"] and set(s["policies"]) == {"hpa"}
    p = s["policies"]["hpa"]
    assert p["params"] == {} and p["interval_s"] == 3.0 and s["seed"] == 5
    # the controller ticked every 3 s with live per-stage metrics: 4 ticks x (2 stages + e2e)
    with open(out / "hpa" / "decisions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 3 and [r["stage"] for r in rows[:3]] == ["image", "labels", "e2e"]
    live = [r for r in rows if r["stage"] != "e2e" and not int(r["held"])]
    assert len(live) >= 6
    assert all(float(r["arrival_rps"]) > 0 and r["latency_p95_ms"] not in ("", "nan") for r in live)
    assert all(1 <= int(r["desired"]) <= 2 for r in live)
    for n in ("image", "labels"):      # one replica before the step, a second one after it
        ds = [int(r["desired"]) for r in rows if r["stage"] == n]
        assert ds[0] == 1 and max(ds) == 2, (n, ds)
    real, sim = p["real"], p["sim"]
    assert real["e2e"]["requests"] > 150 and real["e2e"]["failures"] <= 0.02 * real["e2e"]["requests"]
    assert real["e2e"]["accuracy"] == pytest.approx(0.738)
    # every stage visit of a request is counted at its stage; stage replica-seconds add up to the e2e figure
    for n in ("image", "labels"):
        assert real["stages"][n]["requests"] >= real["e2e"]["successes"]
        assert real["stages"][n]["p50_ms"] < real["e2e"]["p50_ms"]
    assert real["e2e"]["replica_seconds"] == pytest.approx(sum(real["stages"][n]["replica_seconds"]
                                                               for n in ("image", "labels")))
    # the replay used the real send times: the same number of requests, and the same policy
    assert sim["e2e"]["requests"] == real["e2e"]["requests"]
    assert abs(p["compare"]["e2e"]["replica_seconds"]["rel_err"]) < 0.5
    for f in ("report.md", "overlay.png", "overlay_hpa.png", "hpa/requests.csv", "hpa/stages/labels/requests.csv",
              "hpa/replicas.csv", "hpa/controller.log", "hpa/sim_timeline.csv"):
        assert (out / f).exists(), f
    assert "visit p95" in (out / "report.md").read_text()
    assert "hpa / image" in cap.out and "throughput" in cap.out
    assert procs.live_children() == []
    assert wall < 60
