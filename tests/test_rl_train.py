"""A population of 2 trials x 1 tiny iteration through Ray Tune: every trial's folder, the selection on the
tuning windows, and an exported policy.pt that loads and acts without Ray."""
import csv
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ray.rllib")
pytest.importorskip("ray.tune")
pytest.importorskip("torch")

from helpers import make_config, make_pipeline_config, make_trace  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_population_of_two_trials_exports_the_selected_policy(tmp_path):
    trace = make_trace(tmp_path / "trace.csv")
    cfg = make_config(tmp_path, trace, history=2, randomize={"enabled": True})
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "rl.train", "--config", cfg, "--algo", "ppo", "--seeds", "2",
                        "--iterations", "1", "--train-batch-size", "240", "--snapshot-every", "1", "--num-cpus", "2",
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-2000:]
    assert "[seed0] iter" in p.stdout and "[seed1] iter" in p.stdout and "<- selected" in p.stdout
    for name in ("seed0", "seed1"):
        d = out / "trials" / name
        for f in ("progress.csv", "policy.pt", "policy_final.pt", "curve.csv", "trial.json", "run.json",
                  "snapshots/policy_iter0001.pt", "checkpoint/train_state.json"):
            assert (d / f).exists(), f"{name}/{f}"
        assert any(f.startswith("events") for f in os.listdir(d / "tb"))
        assert len(list(csv.DictReader(open(d / "progress.csv")))) == 1
        t = json.loads((d / "trial.json").read_text())
        assert t["iterations"] == 1 and t["seed"] == int(name[-1])
    pop = json.loads((out / "population.json").read_text())
    rows = list(csv.DictReader(open(out / "population.csv")))
    assert [r["trial"] for r in rows] == ["seed0", "seed1"]
    # the selected trial is the one the rule picks from the table
    ok = [r for r in rows if float(r["slo_violation_rate"]) <= 0.01]
    want = min(ok, key=lambda r: float(r["replica_seconds"])) if ok else \
        min(rows, key=lambda r: float(r["slo_violation_rate"]))
    assert pop["selected"] == want["trial"]
    sel = out / "trials" / pop["selected"] / "policy.pt"
    assert (out / "policy.pt").read_bytes() == sel.read_bytes()
    pt = out / "policy.pt"
    code = f"""
import sys, json
sys.modules['ray'] = None
sys.path.insert(0, {ROOT!r})
from simulator.learned import LearnedPolicy
from simulator import load_scenario, simulate
pol = LearnedPolicy.load({str(pt)!r})
sc = load_scenario({os.path.join(ROOT, 'configs', 'rl_default.yaml')!r}).replace(duration_s=60)
r = simulate(sc, policy=pol)
print(json.dumps({{"meta": pol.meta, "rs": r.summary["replica_seconds"]}}))
"""
    q = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr[-3000:]
    d = json.loads(q.stdout.strip().splitlines()[-1])
    meta = d["meta"]
    assert meta["training"]["algo"] == "ppo" and meta["training"]["iterations"] == 1
    assert meta["training"]["trial"] == pop["selected"]
    assert meta["training"]["train_days"] == [1, 1] and meta["interval_s"] == 5.0
    assert meta["obs"]["history"] == 2 and meta["scenario"]["name"] == "rl-default-cpu-triton"
    assert "load_forecast" in meta["obs"]["features"] and meta["obs"]["forecast_s"] == pytest.approx(8 + 5)
    assert meta["randomize"]["active"] and meta["randomize"]["service"] == [0.8, 1.3]
    assert d["rs"] > 0


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_pipeline_population_exports_a_pipeline_policy(tmp_path):
    """The same command on a pipeline scenario: a MultiDiscrete action (per stage a rate level, the detector's
    variant), the selection by IPA's objective on rl.pipeline_eval's tuning windows, a pipeline policy.pt that
    loads and acts without Ray."""
    trace = make_trace(tmp_path / "trace.csv")
    cfg = make_pipeline_config(tmp_path, trace, history=2)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "rl.train", "--config", cfg, "--seeds", "2", "--iterations", "1",
                        "--train-batch-size", "240", "--snapshot-every", "1", "--num-cpus", "2", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-2000:]
    assert "[seed0] iter" in p.stdout and "accuracy" in p.stdout and "<- selected" in p.stdout
    for name in ("seed0", "seed1"):
        d = out / "trials" / name
        for f in ("progress.csv", "policy.pt", "curve.csv", "trial.json", "snapshots/policy_iter0001.pt"):
            assert (d / f).exists(), f"{name}/{f}"
        prog = list(csv.DictReader(open(d / "progress.csv")))
        assert len(prog) == 1 and 0 < float(prog[0]["accuracy"]) <= 1
    rows = list(csv.DictReader(open(out / "population.csv")))
    pop = json.loads((out / "population.json").read_text())
    # the selected trial is the one the rule picks: least ipa_cost among those meeting the target
    ok = [r for r in rows if float(r["slo_violation_rate"]) <= 0.01]
    want = min(ok, key=lambda r: float(r["ipa_cost"])) if ok else min(rows, key=lambda r: float(r["slo_violation_rate"]))
    assert pop["selected"] == want["trial"] and "ipa_cost" in pop["rule"]
    for r in rows:
        assert float(r["ipa_cost"]) == pytest.approx(0.01 * float(r["mean_replicas"]) - float(r["accuracy"]))
    pt = out / "policy.pt"
    assert pt.read_bytes() == (out / "trials" / pop["selected"] / "policy.pt").read_bytes()
    code = f"""
import sys, json
sys.modules['ray'] = None
sys.path.insert(0, {ROOT!r})
from simulator.pipeline_learned import PipelineLearnedPolicy
from simulator import load_scenario
from simulator.pipeline import simulate_pipeline
sc = load_scenario({os.path.join(ROOT, 'configs', 'pipeline_example.yaml')!r}).replace(duration_s=90)
pol = PipelineLearnedPolicy.load({str(pt)!r}, sc)
r = simulate_pipeline(sc, policy=pol)
print(json.dumps({{"meta": pol.meta, "rs": r.summary["replica_seconds"], "last": pol.last_action}}))
"""
    q = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr[-3000:]
    d = json.loads(q.stdout.strip().splitlines()[-1])
    meta = d["meta"]
    assert meta["format"] == "servesim-pipeline-policy/1" and meta["interval_s"] == 15.0
    assert meta["training"]["algo"] == "ppo" and meta["training"]["iterations"] == 1
    assert meta["training"]["trial"] == pop["selected"] and meta["obs"]["history"] == 2
    assert [s["name"] for s in meta["action"]["stages"]] == ["detect", "classify"]
    assert meta["action"]["stages"][0]["capacity_rps_per_replica"] == {"small": 50.0, "large": 20.0}
    assert meta["reward"]["accuracy_weight"] > 0 and meta["reward"]["norm"] == 15.0 * (8 + 8)
    assert d["rs"] > 0 and len(d["last"]) == 3


def test_bad_arguments_are_one_line(tmp_path):
    for args, msg in ((["--seeds", "0"], "--seeds: must be >= 1"), (["--grid", "lr"], "--grid 'lr'"),
                      (["--snapshot-every", "0"], "--snapshot-every: must be >= 1"),
                      (["--resume", str(tmp_path)], "no run.json there")):
        p = subprocess.run([sys.executable, "-m", "rl.train", *args, "--out", str(tmp_path / "o")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith("error: ") and msg in p.stderr
        assert "Traceback" not in p.stderr


def test_pipeline_train_step_is_a_population(tmp_path):
    """The pipeline's train step is this command: a population of 3 seeds x 20 iterations by default (a 2-core
    budget), 2 seeds x 6 iterations under --quick, any count with --seeds."""
    from cluster import pipeline as pl
    full = {s.name: s for s in pl.plan(tmp_path, pl.parse_args(["--out", str(tmp_path)]))}["train"].cmd
    quick = {s.name: s for s in pl.plan(tmp_path, pl.parse_args(["--out", str(tmp_path), "--quick"]))}["train"].cmd
    assert full[1:3] == ["-m", "rl.train"]
    assert full[full.index("--seeds") + 1] == "3" and full[full.index("--iterations") + 1] == "20"
    five = {s.name: s for s in pl.plan(tmp_path, pl.parse_args(["--out", str(tmp_path), "--seeds", "5"]))}["train"].cmd
    assert five[five.index("--seeds") + 1] == "5"
    assert quick[quick.index("--seeds") + 1] == "2" and quick[quick.index("--iterations") + 1] == "6"
