import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "simulator.run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_run_writes_all_outputs(tmp_path):
    out = tmp_path / "o"
    p = run("configs/example.yaml", "--out", str(out), "--seed", "3", "--set", "duration_s=300",
            "--set", "warmup_s=30", "--quiet")
    assert p.returncode == 0, p.stderr
    names = set(os.listdir(out))
    assert {"summary.json", "timeline.csv", "requests.parquet", "scenario.yaml", "latency_cdf.png",
            "timeline.png"} <= names
    s = json.load(open(out / "summary.json"))
    for k in ("requests", "completed", "failed", "throughput_rps", "latency_ms", "queue_ms", "mean_batch_size",
              "slo_violation_rate", "replica_seconds", "seed", "engine", "scenario"):
        assert k in s
    assert s["seed"] == 3 and s["scenario"]["seed"] == 3 and s["engine"] == "fast"
    assert set(s["latency_ms"]) >= {"mean", "p50", "p95", "p99"}
    tl = pd.read_csv(out / "timeline.csv")
    assert len(tl) == 300 // 15 and (tl["seed"] == 3).all()
    t = pq.read_table(out / "requests.parquet")
    assert b"servesim.scenario" in t.schema.metadata
    df = t.to_pandas()
    assert list(df.columns) == ["arrival_s", "dispatch_s", "completion_s", "replica", "batch_size", "status"]
    # summary counts are the records after warm-up
    w = df[df.arrival_s >= 30]
    assert s["requests"] == len(w) and s["completed"] == int((w.status == "ok").sum())
    assert "wrote" in p.stdout and "latency ms" in p.stdout


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    out = tmp_path / "o"
    p = run("configs/example.yaml", "--out", str(out), "--set", "batching.max_batch_size=-1")
    assert p.returncode == 2
    assert "batching.max_batch_size: must be >= 1" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    p = run(str(tmp_path / "missing.yaml"), "--out", str(out))
    assert p.returncode == 2 and "file not found" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "t.yaml"
    bad.write_text("workload: {kind: trace, path: nope.csv}\nservice: {mean_ms: 5}\n")
    p = run(str(bad), "--out", str(out))
    assert p.returncode == 2 and "nope.csv: file not found" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


def test_bad_trace_files_are_one_line(tmp_path):
    out = tmp_path / "o"
    cases = [("trace", "rps\n", "column 'rps' has no values (an empty trace)"),
             ("timestamps", "TIMESTAMP\n", "column 'TIMESTAMP' has no values (an empty timestamps file)"),
             ("trace", "rps\n10\n12\nabc\n", "column 'rps' row 4: not a number ('abc')")]
    for i, (kind, text, message) in enumerate(cases):
        csv = tmp_path / f"t{i}.csv"
        csv.write_text(text)
        sc = tmp_path / f"s{i}.yaml"
        sc.write_text(f"workload: {{kind: {kind}, path: {csv.name}}}\nservice: {{mean_ms: 5}}\nduration_s: 10\n")
        p = run(str(sc), "--out", str(out), "--quiet")
        assert p.returncode == 2, p.stderr
        assert p.stderr.strip() == f"error: {csv}: {message}"
        assert not out.exists()


def test_unbounded_run_refused_in_one_line(tmp_path):
    out = tmp_path / "o"
    p = run("configs/example.yaml", "--out", str(out), "--set", "duration_s=1.0e+12", "--quiet")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: this run would need about ")
    assert "over the memory budget of" in p.stderr and "set record_requests: false" in p.stderr
    assert not out.exists()
    p = run("configs/example.yaml", "--out", str(out), "--set", "duration_s=600", "--memory-budget", "1M", "--quiet")
    assert p.returncode == 2 and "over the memory budget of 1 MB (--memory-budget)" in p.stderr


def test_second_start_loads_the_compiled_engine_from_the_cache(tmp_path):
    # numba's cache (cache=True on every compiled function; simulator/__pycache__ by default): once
    # a run has written it, a second start loads the engine and compiles nothing
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1")
    logs = []
    for i in range(2):
        p = subprocess.run([sys.executable, "-m", "simulator.run", "configs/example.yaml", "--out",
                            str(tmp_path / f"o{i}"), "--set", "duration_s=200", "--no-plots", "--quiet"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        logs.append(p.stdout + p.stderr)
    assert "data loaded from" in logs[1] and "fastplane.advance" in logs[1], logs[1]
    assert "data saved to" not in logs[1], [l for l in logs[1].splitlines() if "saved" in l]
    # and every compiled function asks to be cached (one without would be compiled on every start)
    import re
    for name in sorted(os.listdir(os.path.join(ROOT, "simulator"))):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "simulator", name)) as f:
                for line in f:
                    if re.match(r"\s*@(numba\.)?(njit|jit|vectorize|guvectorize)\b", line):
                        assert "cache=True" in line, f"simulator/{name}: {line.strip()} (no cache=True)"
