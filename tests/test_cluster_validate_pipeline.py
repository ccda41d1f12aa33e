"""The live pipeline controller (fake backends, no servers): per-stage decisions computed by hand, a bad answer
held, live per-stage and end-to-end observations against their definitions, the pre-flight check (a switch, a
wrong number of decisions, another pipeline: one line each), and the validation's per-side arithmetic.
The real two-stage run is in test_cluster_validate_pipeline_real.py."""
from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest

from cluster.controller import LiveWindow, PolicyRejected
from cluster.controller_pipeline import (PipelineController, PipelineRequests, check_pipeline_policy,
                                         decisions_of, stage_answer)
from simulator.pipeline_policy import PipelinePolicy, StageDecision
from helpers import MODEL, FakeBackend

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["image", "labels"]


class Answers(PipelinePolicy):
    kind = "test-answers"

    def __init__(self, f):
        self.f = f
        self.resets = 0

    def reset(self):
        self.resets += 1

    def decide(self, obs):
        return self.f(obs)


def _controller(policy, backends, requests=None, logs=None):
    wins = [LiveWindow(be, MODEL, requests.stages[k] if requests else None, 5.0, 100.0, 1, hi)
            for k, (be, hi) in enumerate(zip(backends, (3, 2)))]
    return PipelineController(wins, NAMES, ["small", "default"], [4, 8], 0.738, policy, 5.0, 100.0,
                              e2e=requests.e2e if requests else None,
                              log=(logs.append if logs is not None else (lambda m: None)))


def _pobs():
    from cluster.controller import synthetic_observations
    from cluster.controller_pipeline import synthetic_pipeline_observations
    assert synthetic_observations  # the per-stage cases the pipeline ones are built from
    return synthetic_pipeline_observations(interval_s=5.0, slo_ms=100.0, min_replicas=[1, 1], max_replicas=[3, 2],
                                           capacities=[40.0, 60.0], variants=["small", "default"], batch_sizes=[4, 8],
                                           accuracy=0.738)[2]


# --------------------------------------------------------------------------- decisions


def test_per_stage_decisions_by_hand():
    be = [FakeBackend(1), FakeBackend(1)]
    answer = {"v": [StageDecision(2.6), StageDecision(5)]}
    logs = []
    ctl = _controller(Answers(lambda o: answer["v"]), be, logs=logs)
    # image [1, 3]: round(2.6) = 3; labels [1, 2]: 5 clamped to 2
    d = ctl.decide(1, _pobs())
    assert [s.desired for s in d.stages] == [3, 2] and be[0].scaled == [3] and be[1].scaled == [2]
    assert "clamped 5 to 2" in d.stages[1].reason and not any(s.held for s in d.stages)
    # bare numbers are replica counts; 0 is clamped up to min_replicas 1
    answer["v"] = [2, 0]
    d = ctl.decide(2, _pobs())
    assert [s.desired for s in d.stages] == [2, 1] and be[0].scaled[-1] == 2 and be[1].scaled[-1] == 1
    # a NaN at one stage holds that stage at its last count (2); the other applies its answer
    answer["v"] = [StageDecision(float("nan")), StageDecision(2)]
    d = ctl.decide(3, _pobs())
    assert [s.desired for s in d.stages] == [2, 2] and [s.held for s in d.stages] == [True, False]
    assert be[0].scaled == [3, 2] and be[1].scaled[-1] == 2
    # the rows: one per stage and an e2e row with the sum
    rows = d.rows(NAMES)
    assert [r["stage"] for r in rows] == ["image", "labels", "e2e"] and rows[-1]["desired"] == 4
    assert rows[0]["held"] == 1 and math.isnan(rows[-1]["queue_ms"]) and rows[-1]["accuracy"] == pytest.approx(0.738)


def test_bad_answers_and_missing_metrics_hold_every_stage():
    be = [FakeBackend(2), FakeBackend(1)]
    answer = {"v": [2, 1]}

    def f(o):
        if answer["v"] == "raise":
            raise RuntimeError("boom\nsecond line")
        return answer["v"]
    logs = []
    ctl = _controller(Answers(f), be, logs=logs)
    d = ctl.decide(1, None, "stage labels: scrape failed (OSError: refused)")
    assert all(s.held for s in d.stages) and [s.desired for s in d.stages] == [2, 1]      # the backends' counts
    assert "metrics missing: stage labels" in d.reason and be[0].scaled == [] and be[1].scaled == []
    for bad, why in (([3], "1 decision(s) for a pipeline of 2 stages"), ("2", "not one decision per stage"),
                     (None, "not one decision per stage"), ("raise", "policy error: boom")):
        answer["v"] = bad
        d = ctl.decide(2, _pobs())
        assert all(s.held for s in d.stages) and why in d.reason, (bad, d.reason)
        assert be[0].scaled == [] and be[1].scaled == []
    assert any("holding 2/1 replica(s)" in m for m in logs)
    assert "second line" not in d.reason


def test_a_switch_asked_at_run_time_is_not_acted_on():
    be = [FakeBackend(1), FakeBackend(1)]
    ctl = _controller(Answers(lambda o: [StageDecision(2, "medium", 4), StageDecision(1, None, 8)]), be)
    d = ctl.decide(1, _pobs())
    # the variant switch is refused (held_config), its replica count is applied; labels' own batch size is fine
    assert d.stages[0].held_config and not d.stages[1].held_config and be[0].scaled == [2]
    assert "variant medium" in d.stages[0].reason and "cannot switch" in d.stages[0].reason
    assert stage_answer(StageDecision(3, None, 2), "small", 4) == (3, "asked for variant small at batch size 2 "
                                                                      "(serves small at 4)")
    assert stage_answer(StageDecision(3, "small", 4), "small", 4) == (3, "")
    assert stage_answer(5, "small", 4) == (5, "")
    assert decisions_of((1, 2), 2) == ([1, 2], "")


# --------------------------------------------------------------------------- live observations


def test_live_pipeline_observation_matches_the_definitions():
    t0 = 1000.0
    clock = {"t": t0}
    req = PipelineRequests(2, clock=lambda: clock["t"])
    be = [FakeBackend(2), FakeBackend(1)]
    ctl = _controller(Answers(lambda o: [1, 1]), be, requests=req)
    ctl.start(t0)
    # 20 requests sent in [t0, t0 + 5): image visits 10..29 ms, labels visits 5 ms after 20 ms of chaining gap;
    # request 19's labels visit fails; request 20 is still at the image stage at the tick
    sends, done, ss, sd = [], [], [], []
    for i in range(20):
        t = t0 + 0.2 * i
        sends.append([i, t])
        ss.append([i, 0, t])
        sd.append([i, 0, t, 10.0 + i, "ok"])
        t1 = t + (10.0 + i + 1.0) / 1e3
        ss.append([i, 1, t1])
        sd.append([i, 1, t1, 5.0, "ok" if i < 19 else "unavailable"])
        done.append([i, t, 10.0 + i + 1.0 + 5.0, "ok" if i < 19 else "unavailable"])
    sends.append([20, t0 + 4.9])
    ss.append([20, 0, t0 + 4.9])
    clock["t"] = t0 + 5.1
    req.feed({"sends": sends, "done": done, "stage_sends": ss, "stage_done": sd})
    be[0].counters = {"r0": [10, 10, 5, 10000, 50000], "r1": [10, 10, 10, 10000, 50000]}
    be[1].counters = {"r0": [19, 19, 19, 1900, 95000]}
    clock["t"] = t0 + 5.25
    obs, why = ctl.observe(1)
    assert why == "" and obs is not None and obs.time_s == 5.0
    im, lb, e2e = obs.stages[0], obs.stages[1], obs.e2e
    assert im.arrival_rps == pytest.approx(21 / 5) and lb.arrival_rps == pytest.approx(20 / 5)
    assert im.latency_p95_ms == pytest.approx(np.percentile(np.arange(10.0, 30.0), 95))
    assert lb.latency_p50_ms == pytest.approx(5.0) and lb.failures == 1 and im.failures == 0
    assert im.inflight == 1 and lb.inflight == 0
    assert im.queue_ms == pytest.approx(20000 / 20 / 1000) and im.batch_size == pytest.approx(20 / 15)
    assert lb.batch_size == pytest.approx(1.0) and im.replicas == 2 and lb.replicas == 1
    # end to end: arrivals are the first stage's, completions / latency / failures the client's, replicas summed
    assert e2e.arrival_rps == im.arrival_rps and e2e.completion_rps == pytest.approx(19 / 5)
    assert e2e.latency_p50_ms == pytest.approx(np.median(np.arange(19) + 16.0))
    assert e2e.failures == 1 and e2e.replicas == 3 and e2e.inflight == 1 and math.isnan(e2e.busy_fraction)
    assert e2e.slo_violation_frac == pytest.approx(1 / 20)
    assert obs.variants == ("small", "default") and obs.batch_sizes == (4, 8) and obs.accuracy == pytest.approx(0.738)
    # one stage's scrape failing makes the whole observation missing, naming the stage
    be[1].fail_scrape = True
    obs, why = ctl.observe(2)
    assert obs is None and why.startswith("stage labels: scrape failed")


# --------------------------------------------------------------------------- pre-flight


def _scenario():
    from cluster.config import load_measure_config
    return load_measure_config(str(ROOT / "configs" / "pipeline.yaml"), []).scenario


def _check(pol, **kw):
    args = dict(names=NAMES, variants=["small", "default"], batch_sizes=[4, 8], interval_s=5.0, slo_ms=150.0,
                min_replicas=[1, 1], max_replicas=[2, 2], capacities=[90.0, 160.0], accuracy=0.738, name="p")
    args.update(kw)
    return check_pipeline_policy(pol, **args)


def test_preflight_refuses_switches_and_bad_answers_in_one_line():
    from simulator.ipa import IPAPolicy

    from cluster.validate.pipeline import pinned_ipa
    sc = _scenario()
    with pytest.raises(PolicyRejected) as e:       # IPA free to choose: asks image for `medium` when idle
        _check(IPAPolicy.build({}, sc))
    msg = str(e.value)
    assert "\n" not in msg and "stage image: asked for variant medium" in msg and "cannot switch" in msg
    pinned = pinned_ipa(sc, {})
    assert [[(o.variant, o.batch) for o in opts] for opts in pinned.options] == [[("small", 4)], [("default", 8)]]
    answers = _check(pinned)
    assert answers[0] == [1, 1] and max(a[0] for a in answers) == 2
    for f, why in ((lambda o: [1], r"answered 1 decision\(s\) for a pipeline of 2 stages"),
                   (lambda o: [1, 3], r"answered 3 replicas to .* at stage labels; allowed: whole numbers in \[1, 2\]"),
                   (lambda o: [1, "2"], "not a number"),
                   (lambda o: [1, StageDecision(1, None, 4)], "stage labels: asked for variant default at batch size 4"),
                   (lambda o: 1 / 0, "fails on a synthetic observation .*division by zero")):
        pol = Answers(f)
        with pytest.raises(PolicyRejected, match=why) as e:
            _check(pol)
        assert "\n" not in str(e.value) and pol.resets == 2
    slow = Answers(lambda o: [1, 1])
    slow.interval_s = 15.0
    with pytest.raises(PolicyRejected, match="trained with control interval 15 s, the controller runs at 5 s"):
        _check(slow)


def test_a_policy_for_another_pipeline_is_refused_in_one_line(tmp_path, capsys):
    from helpers import make_pipeline_config, make_trace
    from rl.common import load_rl_config
    from test_rl_pipeline_env import _policy_file

    from cluster.validate.cli import main
    cfg = load_rl_config(make_pipeline_config(tmp_path, make_trace(tmp_path / "trace.csv", days=2), history=2))
    path = _policy_file(tmp_path / "detect_classify.pt", cfg)       # trained on detect -> classify
    rc = main([path, "--stack", str(ROOT / "configs" / "pipeline.yaml"), "--out", str(tmp_path / "v"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "trained on another pipeline: stages detect -> classify" in err
    assert "policy rejected before any scaling" in err and not (tmp_path / "v").exists()
    for args, why in ((["nope", "--stack", str(ROOT / "configs" / "pipeline.yaml")], "nope: file not found"),
                      (["hpa", "--compare", "static", "--stack", str(ROOT / "configs" / "pipeline.yaml")],
                       "--compare: unknown 'static'; choose from hpa, per_stage, ipa or none (a pipeline)")):
        rc = main(args + ["--out", str(tmp_path / "v"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and why in err, err


# --------------------------------------------------------------------------- the validation's arithmetic


def test_side_summaries_by_hand():
    from cluster.validate.pipeline import side_summaries, with_stage_replicas
    # 10 requests over [0, 10) s, warm-up 0: stage visits of 10 ms (image) and 20 ms (labels); e2e 35 ms, one late
    t = np.arange(10.0)
    ok = np.ones(10, bool)
    e2e = (t, np.r_[np.full(9, 35.0), 200.0], ok)
    stages = {"image": (t, np.full(10, 10.0), ok), "labels": (t + 0.01, np.full(10, 20.0), ok)}
    reps = {"image": [(0.0, math.inf), (4.0, 6.0)], "labels": [(-1.0, math.inf)]}
    s = side_summaries(e2e, stages, reps, {"image": [[1, 2, 1]], "labels": [[1, 1, 1]]}, [1, 1], 0.738, 0.0, 10.0,
                       150.0)
    assert s["stages"]["image"]["replica_seconds"] == pytest.approx(12.0)
    assert s["stages"]["labels"]["replica_seconds"] == pytest.approx(10.0)
    assert s["e2e"]["replica_seconds"] == pytest.approx(22.0)
    assert s["stages"]["image"]["scaling_actions"] == 2 and s["stages"]["labels"]["scaling_actions"] == 0
    assert s["stages"]["labels"]["p95_ms"] == pytest.approx(20.0) and s["e2e"]["p50_ms"] == pytest.approx(35.0)
    assert s["e2e"]["slo_violation_rate"] == pytest.approx(0.1) and s["e2e"]["throughput_rps"] == pytest.approx(1.0)
    sc = with_stage_replicas(_scenario(), [2, 1])
    assert [st.cluster.replicas for st in sc.pipeline.stages] == [2, 1]
    a = types.SimpleNamespace(hpa_target=0.5, hpa_window=30.0, ipa_util=None)
    from cluster.validate.pipeline import pipeline_contenders
    (name, label, s_hpa, pol), = pipeline_contenders(a, ["hpa"], sc, [80.0, 120.0], 5.0)
    # per-stage HPA: arrival rps per replica, target 0.5 x the stage's capacity, every 5 s
    assert name == "hpa" and [p.target for p in pol.policies] == [40.0, 60.0] and s_hpa.autoscaler.interval_s == 5.0
    assert "image 40.0, labels 60.0" in label


def test_a_peak_beyond_what_the_pipeline_served_is_flagged():
    """A given ``--peak-rps`` above ``provenance.stack.max_served_rps`` extrapolates the calibration: flagged (the
    default load is capped at it, :func:`pipeline_peak`)."""
    from cluster.validate.pipeline import beyond_measured
    from simulator.config import load_scenario
    sc = load_scenario("configs/pipeline_example.yaml")
    assert beyond_measured(140.0, sc) is None                        # nothing recorded: nothing to compare with
    sc = sc.replace(provenance={"stack": {"max_served_rps": 96.9}})
    assert beyond_measured(140.0, sc) == 96.9
    assert beyond_measured(96.9, sc) is None and beyond_measured(50.0, sc) is None and beyond_measured(None, sc) is None
