"""rl.pipeline_eval: its derived values by hand, and a smoke run of the whole command (5-minute windows)."""
import json

import numpy as np
import pytest

from rl import pipeline_eval as pe
from simulator.config import ConfigError, load_scenario, scenario_from_dict


def _two_stage(slo=60.0):
    return scenario_from_dict({
        "slo_ms": slo, "workload": {"kind": "poisson", "rate_rps": 10},
        "pipeline": {"stages": [
            {"name": "a", "service": {"mean_ms": 6}, "hop_ms": 2, "cluster": {"max_replicas": 4}},
            {"name": "b", "service": {"mean_ms": 10}, "hop_ms": 2, "cluster": {"max_replicas": 2}}]}})


def test_slo_shares_by_hand():
    assert pe.slo_shares(_two_stage()) == pytest.approx([8 / 20, 12 / 20])


def test_trace_scale_rule_by_hand():
    sc = _two_stage()
    rates = np.full(14 * 86400, 50.0)
    rates[13 * 86400 + 1000:13 * 86400 + 2200] = 100.0       # day 14: a 20-min window at 100 rps
    # bottleneck: min(4 x 30, 2 x 40) = 80 req/s; 0.8 x 80 / 100 = 0.64
    scale, rule, p99 = pe.pipeline_trace_scale(rates, [13, 14], sc, [30.0, 40.0], 0.8)
    assert p99 == pytest.approx(100.0) and scale == pytest.approx(0.64)
    assert "80.0 req/s" in rule and "0.6400" in rule


def test_not_a_pipeline_is_one_line(tmp_path, capsys):
    rc = pe.main(["configs/example.yaml", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not a pipeline scenario" in err and "\n" not in err


@pytest.mark.slow
def test_quick_run_writes_tables(tmp_path, capsys):
    rc = pe.main(["--out", str(tmp_path / "o"), "--quick", "--contenders", "hpa,ipa,oracle", "--no-plots",
                  "--allow-degenerate"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    by = {r["policy"]: r for r in res["summary"]}
    assert set(by) == {"hpa", "ipa", "oracle"} and len(res["rows"]) == 3 * 4
    for r in by.values():
        assert r["replica_seconds"] > 0 and 0 < r["accuracy"] <= 1
    # the per-stage HPA never changes variants: its accuracy is the starting variants' product
    sc = load_scenario(pe.DEFAULT_SCENARIO)
    start = np.prod([st.variants[st.variant_index(st.variant)].accuracy for st in sc.pipeline.stages])
    assert by["hpa"]["accuracy"] == pytest.approx(start)
    assert res["scale"] > 0 and "bottleneck" in res["scale_rule"]
    assert {c["name"] for c in res["sanity"]["checks"]} == {"some policy scales", "oracle is a bound"}


def test_oracle_check_rejects_a_non_bound():
    from rl.sanity import pipeline_oracle_best
    good = [{"policy": "hpa", "accuracy": 0.70, "mean_replicas": 5.0, "slo_violation_rate": 0.005},
            {"policy": "oracle", "accuracy": 0.76, "mean_replicas": 4.0, "slo_violation_rate": 0.008}]
    assert pipeline_oracle_best(good, 0.01, 0.01).ok
    late = [good[0], dict(good[1], slo_violation_rate=0.13)]
    c = pipeline_oracle_best(late, 0.01, 0.01)
    assert not c.ok and "13.00%" in c.detail
    beaten = [dict(good[0], accuracy=0.9), good[1]]          # hpa: 0.9 - 0.05 > 0.76 - 0.04
    c = pipeline_oracle_best(beaten, 0.01, 0.01)
    assert not c.ok and c.detail.startswith("hpa meets the SLO target with a better objective")


@pytest.mark.slow
def test_train_adds_the_rl_contender_in_the_same_command(tmp_path, capsys):
    """``--train``: rl.train's population on the scenario inside the comparison's folder, its selected policy
    compared as ``rl`` on the same windows and seeds as the baselines (a 2-day trace, one trial of one iteration)."""
    from helpers import make_pipeline_config, make_trace
    trace = make_trace(tmp_path / "trace.csv")
    cfg = make_pipeline_config(tmp_path, trace, history=2)
    out = tmp_path / "o"
    rc = pe.main(["--config", cfg, "--out", str(out), "--quick", "--train", "--contenders", "hpa", "--no-plots",
                  "--allow-degenerate"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    assert "training the rl contender: python -m rl.train --scenario" in cap.out
    res = json.loads((out / "results.json").read_text())
    assert res["contenders"] == ["hpa", "rl"]
    assert res["policies"]["rl"]["path"] == "train/policy.pt" and res["policies"]["rl"]["interval_s"] == 15.0
    assert res["policies"]["rl"]["training"]["iterations"] == 1
    for f in ("policy.pt", "population.csv", "population.json"):
        assert (out / "train" / f).exists(), f
    rl = [r for r in res["rows"] if r["policy"] == "rl"]
    hpa = [r for r in res["rows"] if r["policy"] == "hpa"]
    assert len(rl) == len(hpa) >= 1 and [r["window"] for r in rl] == [r["window"] for r in hpa]
    assert all(r["setting"] == "train/policy.pt" and r["replica_seconds"] > 0 for r in rl)
    # the trained policy answered: a pipeline learned policy loads from the committed folder
    from simulator.pipeline_learned import PipelineLearnedPolicy
    PipelineLearnedPolicy.load(str(out / "train" / "policy.pt"), load_scenario(pe.DEFAULT_SCENARIO))


def test_train_arguments_are_checked_in_one_line(tmp_path, capsys):
    rc = pe.main(["--out", str(tmp_path / "o"), "--train", "--train-iterations", "0", "--contenders", "hpa"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--train-iterations" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
