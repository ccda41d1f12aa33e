"""Bring your own model, on real servers: a user's ONNX file and a user's Triton model repository (tiny models
made here) each go through ``cluster.measure`` -> ``calibration.fit``; a server binary that does not start is
one clear line. Short runs (seconds of load); every test checks that no server it started is left running."""
from __future__ import annotations

import csv
import json
import os
import stat
import time
from pathlib import Path

import psutil
import pytest

from cluster.stack import procs
from helpers import real_stack_prerequisites, tiny_onnx, tiny_repository

pytestmark = [pytest.mark.slow, pytest.mark.realserver]


@pytest.fixture(scope="module", autouse=True)
def prerequisites():
    real_stack_prerequisites(export_builtin=False)


def _no_strays(tmp_path):
    def ours():
        out = []
        for p in psutil.process_iter(["cmdline", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and str(tmp_path) in " ".join(p.info["cmdline"] or []):
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out
    deadline = time.time() + 5
    while ours() and time.time() < deadline:
        time.sleep(0.1)
    assert ours() == [] and procs.live_children() == []
    # measure's servers run from its work folder: none may outlive it
    assert not [p for p in psutil.process_iter(["cmdline"]) if "servesim-work-" in " ".join(p.info["cmdline"] or [])
                and p.ppid() == os.getpid()]


def _config(tmp_path, model: str, stack: str = "") -> Path:
    cfg = tmp_path / "byo.yaml"
    cfg.write_text(f"""
scenario:
  name: byo
  seed: 0
  duration_s: 4
  warmup_s: 0.5
  slo_ms: 100
  workload: {{kind: poisson, rate_rps: 60}}
  service: {{mean_ms: 2}}
  batching: {{max_batch_size: 4, max_queue_delay_us: 2000}}
  cluster: {{replicas: 1, max_replicas: 1}}
model: {model}
stack: {{ready_timeout_s: 60 {stack}}}
measure:
  runs:
    - name: slow
    - name: fast
      set: {{workload: {{kind: poisson, rate_rps: 150}}}}
  sweep: {{batch_sizes: [1, 2, 4], samples: 30, warmup: 1, max_seconds_per_size: 5, concurrency: [2],
           concurrency_duration_s: 1, interference_duration_s: 0}}
  startup: {{samples: 1}}
""")
    return cfg


def _measure_and_fit(tmp_path, cfg, capsys) -> tuple[Path, dict]:
    from calibration import fit
    from cluster import measure
    out = tmp_path / "results"
    rc = measure.main([str(cfg), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    rc = fit.main([str(out), "--config-out", str(tmp_path / "cal.yaml"), "--report", str(tmp_path / "rep"),
                   "--seeds", "1", "--no-plots", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    return out, json.loads((tmp_path / "rep" / "fidelity.json").read_text())


def _check_batching(out: Path, fid: dict):
    # Triton batched the fast run: its executed batches per size were recorded and compared
    rows = list(csv.DictReader(open(out / "runs" / "fast" / "batches.csv")))
    assert rows and {int(r["batch_size"]) for r in rows} <= {1, 2, 3, 4}
    e = fid["in_sample"]["fast"]["errors"]
    assert e["mean_batch_size"]["real"] > 1.0 and e["batch_distance"]["real"]
    assert e["queue_ms"]["real"] > 0 and e["queue_ms"]["sim"] > 0
    assert set(fid["held_out"]["leave_one_run_out"]) == {"slow", "fast"}


def test_users_onnx_file_measure_then_fit(tmp_path, capsys):
    tiny_onnx(tmp_path / "user_model.onnx", in_dims=(3,), out_dims=(2,))
    out, fid = _measure_and_fit(tmp_path, _config(tmp_path, "{onnx: user_model.onnx}"), capsys)
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["name"] == "user_model" and man["model"]["kind"] == "onnx"
    assert man["model"]["inputs"] == [{"name": "x", "datatype": "FP32", "dims": [3]}]
    assert man["versions"]["tritonserver"] not in ("", "unknown")
    assert 'backend: "python"' in (out / "model" / "config.pbtxt").read_text()
    reqs = list(csv.DictReader(open(out / "runs" / "slow" / "requests.csv")))
    assert reqs and all(r["status"] == "ok" for r in reqs) and {r["replica"] for r in reqs} == {"r0"}
    _check_batching(out, fid)
    _no_strays(tmp_path)


def test_users_repository_measure_then_fit(tmp_path, capsys):
    repo = tiny_repository(tmp_path / "my_repo", "tiny", max_batch_size=2)
    before = (repo / "tiny" / "config.pbtxt").read_text()
    out, fid = _measure_and_fit(tmp_path, _config(tmp_path, f"{{repository: {repo}, name: tiny}}"), capsys)
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["kind"] == "repository" and man["model"]["inputs"][0]["name"] == "x"
    merged = (out / "model" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in merged and "max_queue_delay_microseconds: 2000" in merged
    assert 'backend: "python"' in merged                                   # the user's own keys kept
    assert (repo / "tiny" / "config.pbtxt").read_text() == before          # the user's file untouched
    assert (out / "runs" / "fast" / "config.pbtxt").exists()
    _check_batching(out, fid)
    _no_strays(tmp_path)


def test_server_binary_that_does_not_start_is_one_line(tmp_path, capsys):
    from cluster import measure
    bad = tmp_path / "tritonserver"
    bad.write_text("#!/bin/sh\necho 'tritonserver: unsupported CPU' >&2\nexit 3\n")
    bad.chmod(bad.stat().st_mode | stat.S_IEXEC)
    rc = measure.main([str(_config(tmp_path, "{builtin: mobilenetv4_conv_small}", f", tritonserver: {bad}")),
                       "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith(f"config error: stack.tritonserver: tritonserver {bad} exited with code 3") and "\n" not in err
    assert "unsupported CPU" in err
    assert not (tmp_path / "out").exists()
    _no_strays(tmp_path)


def test_repository_input_that_cannot_be_synthesised_is_one_line(tmp_path, capsys):
    from cluster import measure
    repo = tiny_repository(tmp_path / "r", "texty")
    cfg = repo / "texty" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "x" data_type: TYPE_FP32', 'name: "x" data_type: TYPE_STRING'))
    rc = measure.main([str(_config(tmp_path, f"{{repository: {repo}, name: texty}}")), "--out", str(tmp_path / "out"),
                       "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "input 'x' has data type BYTES, which servesim cannot synthesise" in err and "sample.npz" in err
    assert "\n" not in err and not (tmp_path / "out").exists()
    _no_strays(tmp_path)
