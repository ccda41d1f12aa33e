"""A short RLlib training run produces a policy.pt that loads and acts without Ray."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ray.rllib")
pytest.importorskip("torch")

from helpers import make_config, make_trace  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_training_exports_loadable_policy(tmp_path):
    trace = make_trace(tmp_path / "trace.csv")
    cfg = make_config(tmp_path, trace, history=2)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "rl.train", "--config", cfg, "--algo", "ppo", "--iterations", "1",
                        "--train-batch-size", "240", "--out", str(out), "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=220)
    assert p.returncode == 0, p.stderr[-3000:]
    pt = out / "policy.pt"
    assert pt.exists() and (out / "progress.csv").exists() and (out / "checkpoint" / "train_state.json").exists()
    assert any(f.startswith("events") for f in os.listdir(out / "tb"))
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
    assert meta["training"]["train_days"] == [1, 1] and meta["interval_s"] == 5.0
    assert meta["obs"]["history"] == 2 and meta["scenario"]["name"] == "rl-default-cpu-triton"
    assert d["rs"] > 0
