"""The study design (rl.study) and the sanity checks (rl.sanity): hand-computed rules, a deployment 2x slower,
and each check failing on a deliberately degenerate case."""
import dataclasses
import json
import os

import numpy as np
import pytest
import yaml

from rl import sanity
from rl.study import (Study, StudyError, design_study, interval_rule, node_max_replicas, share_above_min, slo_rule,
                      trace_scale_rule, validation_peak_rule, write_study_files)
from simulator.config import load_scenario

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAL = os.path.join(ROOT, "configs", "calibrated", "baseline.yaml")


# --------------------------------------------------------------------------- the rules by hand


def test_rules_by_hand():
    assert slo_rule(19.1) == 38.2 and slo_rule(19.04) == 38.1 and slo_rule(10, factor=3) == 30
    # the contended 2-core node: the third replica adds 1.1 of 87.6 req/s -> the node holds two
    assert node_max_replicas([87.6, 137.0, 138.1]) == 2
    assert node_max_replicas([50.0, 100.0, 150.0, 200.0]) == 4            # no contention: all of them
    assert node_max_replicas([50.0, 60.0]) == 1                           # +20 % < 25 %
    assert node_max_replicas([50.0, 62.5, 80.0]) == 3                     # exactly 25 %, then 35 %
    assert interval_rule(87.6, 1.67) == 5.0                               # 400 / 87.6 = 4.57 s
    assert interval_rule(43.6, 1.67) == 10.0                              # 9.17 s
    assert interval_rule(1000.0, 0.5) == 2.0                              # floor 2 s
    assert interval_rule(5.0, 1.0) == 30.0                                # cap 30 s
    assert interval_rule(400.0, 7.2) == 8.0                               # start-up median dominates
    assert trace_scale_rule([100.0, 251.0, 50.0], 137.0, 0.8) == round(0.8 * 137 / 251, 4)
    assert validation_peak_rule(137.0, 0.8, None) == (109.6, "0.8 x 137.0 rps (what max_replicas serve at the SLO)")
    peak, rule = validation_peak_rule(137.0, 0.8, 95.0)
    assert peak == 95.0 and "highest rate the measured stack served (95 rps)" in rule
    assert validation_peak_rule(137.0, 0.8, 200.0)[0] == 109.6
    # share of seconds whose 5-s mean needs more than one replica (caps 10 / 18 req/s)
    r = np.array([5.0] * 10 + [15.0] * 10)
    assert share_above_min(r, [10.0, 18.0], 1) == pytest.approx(12 / 20)   # windows starting at 8..19
    assert share_above_min(np.full(30, 9.0), [10.0, 18.0], 1) == 0.0


# --------------------------------------------------------------------------- two deployments, 2x apart


def _slower(sc, f):
    def scaled(d):
        return dataclasses.replace(d, mean=f * d.mean, shift=f * d.shift, quantiles=tuple(f * q for q in d.quantiles))
    svc = sc.service
    return sc.replace(name=f"{sc.name}x{f:g}", service=dataclasses.replace(
        svc, per_batch=tuple((b, scaled(d)) for b, d in svc.per_batch), overhead=scaled(svc.overhead)))


@pytest.fixture(scope="module")
def two_studies():
    from rl.common import load_trace
    from simulator.data import TWITTER_TRACE
    rates = load_trace(TWITTER_TRACE)
    fast = load_scenario(CAL)
    slow = _slower(fast, 2.0)
    kw = dict(capacity_duration_s=200.0, capacity_seeds=(1,))
    return fast, slow, design_study(fast, rates, [13, 14], **kw), design_study(slow, rates, [13, 14], **kw)


def test_study_follows_a_deployment_2x_slower(two_studies):
    fast, slow, a, b = two_studies
    # every service time doubled: the unloaded p99 and the SLO double, the capacities halve (contention from
    # request handling scales with req/s, so not exactly), the trace scale halves, the interval grows
    assert b.unloaded["p99_ms"] / a.unloaded["p99_ms"] == pytest.approx(2.0, rel=0.05)
    assert b.slo_ms / a.slo_ms == pytest.approx(2.0, rel=0.05)
    assert b.capacity_one_rps / a.capacity_one_rps == pytest.approx(0.5, rel=0.1)
    assert 0.45 < b.trace_scale / a.trace_scale < 0.7
    assert b.interval_s > a.interval_s >= 2
    assert (a.min_replicas, a.max_replicas) == (b.min_replicas, b.max_replicas) == (1, 2)
    for st in (a, b):
        assert max(w["share_above_min"] for w in st.windows) >= sanity.MIN_SHARE
        assert st.rules["slo_ms"].startswith("2 x the unloaded p99") and not st.given
        assert st.validation_peak_rps == pytest.approx(0.8 * st.capacities_rps[1], abs=0.01)
    assert Study.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def _study_files(tmp_path, sc, st):
    raw = yaml.safe_load(open(os.path.join(ROOT, "configs", "rl.yaml")))
    return write_study_files(st, sc, raw, tmp_path, source="test")


@pytest.mark.parametrize("which", ["fast", "slow"])
def test_evaluation_stays_meaningful_in_both(two_studies, tmp_path, which, capsys):
    from rl.evaluate import main
    fast, slow, a, b = two_studies
    sc, st = (fast, a) if which == "fast" else (slow, b)
    files = _study_files(tmp_path, sc, st)
    dep = load_scenario(str(files["deployment"]))
    assert dep.slo_ms == st.slo_ms and dep.cluster.max_replicas == st.max_replicas
    assert dep.provenance["study"]["trace_scale"] == st.trace_scale
    out = tmp_path / "eval"
    rc = main(["--config", str(files["rl_config"]), "--baselines", "hpa_default,static_best,oracle", "--seeds", "1",
               "--out", str(out), "--no-plots"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads((out / "results.json").read_text())
    assert res["sanity"]["ok"] and res["scale"] == st.trace_scale and res["study"]["slo_ms"] == st.slo_ms
    names = [c["name"] for c in res["sanity"]["checks"]]
    assert names == ["load needs scaling", "some policy scales", "oracle is a bound"]
    assert "sanity:" in printed.out and "[ok  ] oracle is a bound" in printed.out
    summ = {r["policy"]: r for r in res["summary"]}
    assert summ["oracle"]["replica_seconds"] <= summ["static_best"]["replica_seconds"] + 1e-6
    assert summ["hpa_default"]["mean_replicas"] > 1.0


# --------------------------------------------------------------------------- degenerate cases are refused


def test_a_scale_that_leaves_one_replica_is_refused(two_studies, tmp_path, capsys):
    from rl.evaluate import main
    fast, _, a, _ = two_studies
    files = _study_files(tmp_path, fast, a)
    args = ["--config", str(files["rl_config"]), "--baselines", "hpa_default,oracle", "--seeds", "1", "--scale",
            "0.05", "--no-plots"]
    rc = main(args + ["--out", str(tmp_path / "e1")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == sanity.EXIT_DEGENERATE and len(err) == 1
    assert err[0].startswith("error: degenerate result (load needs scaling): the load needs more than 1 replica(s) "
                             "0.0% of the time") and "--allow-degenerate" in err[0]
    res = json.loads((tmp_path / "e1" / "results.json").read_text())        # written, for inspection
    assert not res["sanity"]["ok"]
    assert main(args + ["--out", str(tmp_path / "e2"), "--allow-degenerate"]) == 0
    # the study itself refuses such a scale, naming one that would work
    from rl.common import load_trace
    from simulator.data import TWITTER_TRACE
    with pytest.raises(StudyError, match=r"trace scale 0.05: the held-out windows never need more than 1 replica\(s\) "
                                         r".*a scale of at least 0\.\d+ would"):
        design_study(fast, load_trace(TWITTER_TRACE), [13, 14], given={"trace_scale": 0.05},
                     capacity_duration_s=200.0, capacity_seeds=(1,))


def test_an_oracle_worse_than_static_is_refused(two_studies, tmp_path, capsys, monkeypatch):
    # a broken oracle (always the most generous static count) must fail the bound check
    import rl.oracle
    from rl.evaluate import main
    fast, _, a, _ = two_studies
    files = _study_files(tmp_path, fast, a)

    def broken(sc, capacity, slo_target, statics=None, **kw):
        from simulator.engine import simulate
        from simulator.policy import StaticPolicy
        n = sc.cluster.max_replicas
        res = simulate(sc.replace(cluster=dataclasses.replace(sc.cluster, replicas=n)), policy=StaticPolicy(n))
        return res, {"static": n}, []
    monkeypatch.setattr(rl.oracle, "oracle_run", broken)
    rc = main(["--config", str(files["rl_config"]), "--baselines", "static_best,oracle", "--seeds", "1",
               "--out", str(tmp_path / "e"), "--no-plots"])
    err = capsys.readouterr().err
    assert rc == sanity.EXIT_DEGENERATE and "degenerate result (oracle is a bound): window" in err
    assert "not a lower bound" in err


def test_sanity_checks_on_hand_made_cases():
    ok = sanity.oracle_is_bound([{"window": "w", "seed": 1, "oracle_cost": 100, "oracle_viol": 0.005,
                                  "static_cost": 120, "static_viol": 0.002, "static_replicas": 2}], 0.01)
    assert ok.ok
    dear = sanity.oracle_is_bound([{"window": "w", "seed": 1, "oracle_cost": 121, "oracle_viol": 0.005,
                                    "static_cost": 120, "static_viol": 0.002, "static_replicas": 2}], 0.01)
    late = sanity.oracle_is_bound([{"window": "w", "seed": 1, "oracle_cost": 100, "oracle_viol": 0.02,
                                    "static_cost": 120, "static_viol": 0.002, "static_replicas": 2}], 0.01)
    assert not dear.ok and not late.ok and "not a lower bound" in dear.detail
    assert not sanity.policies_scale({"hpa": 1.0, "knative": 1.01}, 1).ok
    assert sanity.policies_scale({"hpa": 1.0, "knative": 1.3}, 1).ok
    assert not sanity.load_needs_scaling([{"window": "a", "share_above_min": 0.01}], 1).ok
    assert sanity.load_needs_scaling([{"window": "a", "share_above_min": 0.0},
                                      {"window": "b", "share_above_min": 0.2}], 1).ok
    v = sanity.validation_load({"policy": {"share_above_min": 0.3, "delivered": 0.999, "share_time_above_min": 0.4},
                                "hpa": {"share_above_min": 0.01, "delivered": 1.0}}, 1)
    assert not v.ok and v.detail.startswith("hpa: its real load needed more than 1 replica(s) only 1.0%")
    v = sanity.validation_load({"policy": {"share_above_min": 0.3, "delivered": 0.6}}, 1)
    assert not v.ok and "sent 60.0% of the planned requests" in v.detail
    w = sanity.costs_differ("policy", 100.0, "hpa_tuned", 100.4)
    assert not w.ok and w.severity == "warn"
    # the sign says which is cheaper, as in the tables: 96 vs 100 is -4.0 %, 104 vs 100 is +4.0 %
    assert "(-4.0%)" in sanity.costs_differ("policy", 96.0, "hpa_tuned", 100.0).detail
    assert "(+4.0%)" in sanity.costs_differ("policy", 104.0, "hpa_tuned", 100.0).detail
    rec = sanity.record([w, ok], allowed=False)
    assert rec["ok"] and sanity.failure([w, ok]) is None          # a warning never fails the command
    assert sanity.failure([w, dear]).startswith("degenerate result (oracle is a bound)")


def test_validation_real_load_measure():
    from cluster.validate.stats import real_load
    t = np.concatenate([np.arange(0, 60, 1 / 20.0), np.arange(60, 120, 1 / 150.0)])    # 20 then 150 req/s
    real = {"t_send": t, "replicas": [(0.0, 0.0, np.inf, np.inf), (70.0, 72.0, np.inf, np.inf)]}
    arr = np.concatenate([t, np.arange(120.0, 121.0, 0.01)])                            # 100 planned, never sent
    d = real_load(real, arr, [100.0, 180.0], 1, warmup=10.0, duration=120.0)
    # forward 5-s means above 100 req/s from second 59 (4 x 150 + 20) on: 61 of the 110 seconds after warm-up
    assert d["share_above_min"] == pytest.approx(61 / 110)
    assert d["share_time_above_min"] == pytest.approx(50 / 110, abs=0.01)
    assert d["planned"] == len(t[t >= 10]) and d["delivered"] == pytest.approx(1.0)
    assert d["peak_5s_rps"] == pytest.approx(150.0, rel=0.01)
