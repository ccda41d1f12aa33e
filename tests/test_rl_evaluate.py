"""rl.evaluate on a tiny generated trace: outputs, all baselines, clean errors."""
import csv
import json

import pytest

pytest.importorskip("torch")

from helpers import make_config, make_trace, tiny_policy_file  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ev")
    trace = make_trace(d / "trace.csv")
    cfg = make_config(d, trace)
    pt = tiny_policy_file(d / "policy.pt")
    return d, trace, cfg, pt


def test_evaluate_tiny_trace_all_baselines(setup, capsys):
    from rl.evaluate import main
    d, trace, cfg, pt = setup
    tuned = {"hpa_tuned": {"choice": {"params": {"metric": "arrival_rps_per_replica", "target": 55.0,
                                                 "scale_down_stabilization_s": 60}, "interval_s": 5}},
             "knative": {"choice": {"params": {"target_concurrency": 2.0}, "interval_s": 2}},
             "predictive": {"choice": {"params": {"capacity_rps_per_replica": 68.0}, "interval_s": 10}},
             "static_tuned": {"choice": {"params": {"replicas": 6}, "interval_s": 5}}}
    tp = d / "tuned.json"
    tp.write_text(json.dumps(tuned))
    out = d / "out"
    rc = main([pt, "--trace", trace, "--start", "90000", "--length", "300", "--seeds", "1", "--scale", "2.0",
               "--config", cfg, "--tuned", str(tp), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    for f in ("results.csv", "summary.csv", "by_window.csv", "results.json", "timeline_custom.png",
              "cost_violation.png"):
        assert (out / f).exists(), f
    res = json.loads((out / "results.json").read_text())
    assert res["scale"] == 2.0 and res["seeds"] == [100] and res["windows"][0]["start"] == 90000
    names = [r["policy"] for r in res["summary"]]
    assert names == ["policy", "hpa_default", "hpa_tuned", "knative", "predictive", "static_tuned",
                     "static_best", "oracle"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 8
    orc = [r for r in rows if r["policy"] == "oracle"][0]
    assert float(orc["cost_vs_oracle"]) == pytest.approx(1.0)
    assert float(orc["slo_violation_rate"]) <= 0.01 + 1e-12
    for r in rows:
        assert float(r["replica_seconds"]) > 0
    assert res["policies"]["policy"]["meta"]["training"]["algo"] == "hand-made"


def test_evaluate_bad_inputs(setup, capsys):
    from rl.evaluate import main
    d, trace, cfg, pt = setup
    assert main([pt, "--trace", str(d / "missing.csv"), "--baselines", "none", "--config", cfg,
                 "--out", str(d / "o1")]) == 2
    assert "trace file not found" in capsys.readouterr().err
    assert main([pt, "--trace", trace, "--start", "999999999", "--baselines", "none", "--config", cfg,
                 "--out", str(d / "o2")]) == 2
    assert "beyond the end" in capsys.readouterr().err
    assert main([pt, "--trace", trace, "--baselines", "hpa,foo", "--config", cfg, "--out", str(d / "o3")]) == 2
    assert "--baselines: unknown" in capsys.readouterr().err
    assert main([str(d / "nope.pt"), "--trace", trace, "--config", cfg, "--out", str(d / "o4")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert not any((d / f"o{i}").exists() for i in range(1, 5))


def test_policy_names_are_short_and_distinct():
    from rl.evaluate import policy_names
    assert policy_names(["runs/a/policy.pt"]) == ["policy"]
    assert policy_names(["runs/a/policy.pt", "runs/a/trials/seed0/policy.pt", "runs/b/trials/seed0/policy.pt",
                         "x/oracle.pt"]) == ["a/policy", "a/trials/seed0/policy", "b/trials/seed0/policy",
                                             "x/oracle"]


def test_evaluate_perturbed_deployment(setup, capsys):
    """Service times x1.5: the best static count in hindsight needs at least as many replicas as on the nominal
    deployment, on the same load and seed, and the factors are recorded; a bad key is one line, exit 2."""
    from rl.evaluate import main
    d, trace, cfg, pt = setup
    common = [pt, "--trace", trace, "--start", "90000", "--length", "300", "--seeds", "1", "--scale", "2.0",
              "--config", cfg, "--baselines", "static_best", "--no-plots", "--allow-degenerate"]
    assert main(common + ["--out", str(d / "nominal")]) == 0
    assert main(common + ["--perturb", "service=1.5", "--out", str(d / "slow")]) == 0
    nom = json.loads((d / "nominal" / "results.json").read_text())
    slow = json.loads((d / "slow" / "results.json").read_text())
    assert nom["perturb"]["service"] == 1.0 and slow["perturb"] == {"service": 1.5, "startup": 1.0, "overhead": 1.0,
                                                                      "contention": 1.0}
    assert slow["perturb_label"] == "service x1.5"

    def static_n(res):
        row = [r for r in res["rows"] if r["policy"] == "static_best"][0]
        return json.loads(row["note"])["replicas"]
    assert static_n(slow) >= static_n(nom)
    assert slow["capacity_oracle_rps_per_replica"] < 0.8 * nom["capacity_oracle_rps_per_replica"]
    capsys.readouterr()
    assert main(common + ["--perturb", "speed=2", "--out", str(d / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--perturb: 'speed=2'" in err[0] and not (d / "bad").exists()


def test_a_pipeline_scenario_runs_the_pipeline_comparison(tmp_path, capsys):
    """rl.evaluate on a pipeline scenario hands the same run to rl.pipeline_eval (one code path): its arguments
    by hand, a single-model-only option refused in one line, and the comparison's own check answering."""
    import argparse
    from rl.evaluate import _pipeline_argv, main
    scen = "configs/pipeline_example.yaml"
    ns = argparse.Namespace(scenario=scen, config="configs/rl.yaml", policies=["runs/x/policy.pt"], out="o",
                            seeds=3, baselines="hpa,oracle", force=True, no_plots=False, allow_degenerate=False,
                            trace=None, start=None, length=None, scale="config", speedup=1.0, tuned=None, perturb=None)
    assert _pipeline_argv(ns) == [scen, "runs/x/policy.pt", "--out", "o", "--config", "configs/rl.yaml", "--seeds",
                                  "3", "--contenders", "hpa,oracle", "--force"]
    assert _pipeline_argv(argparse.Namespace(**dict(vars(ns), scenario="configs/example.yaml"))) == 0
    rc = main(["--scenario", scen, "--perturb", "service=1.3", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --perturb: not taken for a pipeline scenario") and "\n" not in err
    rc = main(["--scenario", scen, "--baselines", "static_best", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unknown 'static_best' for a pipeline scenario" in err
    # no contenders and no policy: rl.pipeline_eval's own refusal, before any simulation
    rc = main(["--scenario", scen, "--baselines", "none", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nothing to compare" in err and not (tmp_path / "c").exists()
