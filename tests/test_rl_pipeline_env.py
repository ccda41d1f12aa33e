"""The pipeline RL environment and learned pipeline policies: env shapes and determinism, the action mapping and
the reward by hand, policy.pt round trip, and the bad inputs (a policy of another pipeline, an unknown variant,
a policy of the other kind, non-finite scores, wrong settings), each one clear line."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

gym = pytest.importorskip("gymnasium")
torch = pytest.importorskip("torch")

from helpers import make_pipeline_config, make_trace  # noqa: E402
from rl.common import load_rl_config  # noqa: E402
from simulator.config import ConfigError, load_scenario  # noqa: E402
from simulator.pipeline import PipelineObservation  # noqa: E402
from simulator.pipeline_learned import (PipelineLearnedPolicy, PipelineObsEncoder, action_sizes,  # noqa: E402
                                        greedy_indices, pipeline_decisions, save_pipeline_policy_file)
from simulator.pipeline_policy import StageDecision  # noqa: E402
from simulator.policy import Observation  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = float("nan")


def _ob(t=15.0, rate=0.0, replicas=1, lo=1, hi=8, p95=NAN, interval=15.0, slo=80.0):
    return Observation(time_s=t, interval_s=interval, arrival_rps=rate, completion_rps=rate, latency_p50_ms=p95,
                       latency_p95_ms=p95, latency_p99_ms=p95, slo_violation_frac=0.0, queue_ms=0.0, batch_size=1.0,
                       busy_fraction=0.5, inflight=0.0, replicas=replicas, replicas_ready=replicas,
                       replicas_pending=0, failures=0, slo_ms=slo, min_replicas=lo, max_replicas=hi)


def _pobs(rates, replicas, variants, t=15.0, accuracy=0.7):
    st = tuple(_ob(t, r, n) for r, n in zip(rates, replicas))
    return PipelineObservation(time_s=t, interval_s=15.0, stages=st, e2e=_ob(t, rates[0], sum(replicas)),
                               variants=tuple(variants), batch_sizes=tuple(8 for _ in variants), accuracy=accuracy)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("pcfg")
    trace = make_trace(d / "trace.csv")
    return load_rl_config(make_pipeline_config(d, trace, history=2))


# --------------------------------------------------------------------------- the environment


def test_env_shapes_and_determinism(cfg):
    from rl.pipeline_env import PipelineEnv
    env = PipelineEnv({"cfg": cfg})
    # detect: 8 rate levels and 2 variants; classify (one variant): 8 rate levels
    assert env.action_space.nvec.tolist() == [8, 2, 8]
    # per frame: 2 stages x 12 features (extended) + detect's one-hot (2) + 5 e2e features + accuracy; 2 frames
    assert env.observation_space.shape == ((2 * 12 + 2 + 5 + 1) * 2,)
    assert env.n_steps == 120 // 15

    def rollout(seed):
        o, info = env.reset(seed=seed)
        obs, rews = [o], []
        rng = np.random.default_rng(0)
        while True:
            a = [int(rng.integers(n)) for n in env.action_space.nvec]
            o, r, term, trunc, inf = env.step(a)
            assert o.shape == env.observation_space.shape and o.dtype == np.float32 and env.observation_space.contains(o)
            assert len(inf["desired"]) == 2 and not term
            obs.append(o)
            rews.append(r)
            if trunc:
                return info["episode"], np.array(obs), np.array(rews), inf["episode_totals"]

    e1, o1, r1, t1 = rollout(7)
    e2, o2, r2, t2 = rollout(7)
    assert e1 == e2 and np.array_equal(o1, o2) and np.array_equal(r1, r2)
    assert len(r1) == env.n_steps - 1
    assert t1["replica_s"] > 0 and 0 < t1["accuracy"] <= 1
    e3, o3, _, _ = rollout(8)
    assert e3 != e1 or not np.array_equal(o3, o1)


def test_env_checker_passes(cfg):
    from gymnasium.utils.env_checker import check_env

    from rl.pipeline_env import PipelineEnv
    check_env(PipelineEnv({"cfg": cfg}), skip_render_check=True)


def _reward_case(tmp_path, arr=None):
    """Two stages of deterministic 10 ms (batch 1, one replica each, no hop), SLO 25 ms: in [5, 10) five pairs
    of requests 1 ms apart: the second of each pair waits 9 ms at stage a (end to end 29 ms > 25: late), the
    first takes 20 ms. Stage a serves variant x (accuracy 0.8), b accuracy 0.5 (product: 0.4 per request)."""
    arr = arr or [0.0] + [t for k in range(5) for t in (5.05 + 0.2 * k, 5.051 + 0.2 * k)]
    csv = tmp_path / "ts.csv"
    csv.write_text("t\n" + "\n".join(f"{t:.3f}" for t in arr) + "\n")
    cl = {"replicas": 1, "min_replicas": 1, "max_replicas": 1, "startup_s": 0}
    svc = {"kind": "deterministic", "mean_ms": 10}
    sc = {"name": "tiny-pipe", "seed": 3, "duration_s": 15, "slo_ms": 25,
          "workload": {"kind": "timestamps", "path": str(csv), "column": "t"},
          "pipeline": {"stages": [
              {"name": "a", "variants": [{"name": "x", "accuracy": 0.8, "service": svc},
                                         {"name": "y", "accuracy": 0.9, "service": svc}],
               "batching": {"max_batch_size": 1}, "cluster": cl, "autoscaler": {"kind": "static", "interval_s": 5}},
              {"name": "b", "accuracy": 0.5, "service": svc, "batching": {"max_batch_size": 1}, "cluster": cl,
               "autoscaler": {"kind": "static", "interval_s": 5}}]}}
    p = tmp_path / "tiny_pipe.yaml"
    p.write_text(yaml.safe_dump(sc))
    c = tmp_path / "rl.yaml"
    c.write_text(yaml.safe_dump({
        "scenario": str(p), "trace": {"path": str(tmp_path / "none.csv")},
        "env": {"episode_s": 15, "history": 1, "reward": {"cost_per_replica_s": 1.0, "lambda": 0.5}},
        "pipeline": {"capacity_rps_per_replica": {"a": {"x": 50, "y": 50}, "b": 50}, "accuracy_weight": 2.0}}))
    return load_rl_config(str(c), need_trace=False)


def test_reward_by_hand(tmp_path):
    from rl.pipeline_env import PipelineEnv
    cfg = _reward_case(tmp_path)
    assert cfg["pipeline"]["norm"] == 5 * (1 + 1)
    env = PipelineEnv({"cfg": cfg, "use_scenario_workload": True})
    env.reset(seed=0)
    _, r1, term, trunc, i1 = env.step([4, 0, 4])
    # interval [5, 10): 10 completions, 5 late, accuracy 0.4 each; 2 replicas x 5 s
    assert i1["completions"] == 10 and i1["violations"] == pytest.approx(5)
    assert i1["accuracy"] == pytest.approx(0.4) and i1["replica_s"] == pytest.approx(10.0)
    assert r1 == pytest.approx((2.0 * 0.4 * 10 - 1.0 * 10 - 0.5 * 5) / 10)      # = -0.45
    assert not trunc
    # [10, 15): nothing arrives: only the replicas cost (accuracy NaN counts 0)
    _, r2, term, trunc, i2 = env.step([4, 0, 4])
    assert math.isnan(i2["accuracy"]) and r2 == pytest.approx(-10 / 10)
    assert trunc and not term
    tot = i2["episode_totals"]
    assert tot["accuracy"] == pytest.approx(0.4) and tot["slo_violation_rate"] == pytest.approx(0.5)


def test_an_episode_that_serves_nothing_has_no_accuracy(tmp_path):
    # (a slice of a gap in the trace): the one request at 0 is served before the first step
    from rl.pipeline_env import PipelineEnv
    env = PipelineEnv({"cfg": _reward_case(tmp_path, [0.0]), "use_scenario_workload": True})
    env.reset(seed=0)
    env.step([0, 0, 0])
    _, r, _, trunc, info = env.step([0, 0, 0])
    assert trunc and info["episode_totals"]["completions"] == 0 and math.isnan(info["episode_totals"]["accuracy"])
    assert r == pytest.approx(-1.0)


# --------------------------------------------------------------------------- the action mapping


ACTION = {"kind": "rate", "values": [0.5, 1.0], "scale_down_window_s": 0,
          "stages": [{"name": "a", "variants": ["fast", "slow"], "capacity_rps_per_replica": {"fast": 20.0, "slow": 10.0}},
                     {"name": "b", "variants": ["only"], "capacity_rps_per_replica": {"only": 30.0}}]}


def test_action_mapping_by_hand():
    assert action_sizes(ACTION) == [2, 2, 2]
    obs = _pobs([60.0, 45.0], [3, 2], ["fast", "only"])
    # a: u = 1.0 on the slow variant: ceil(60 / 10) = 6; b: u = 0.5: ceil(45 / 15) = 3
    d, recs = pipeline_decisions([1, 1, 0], obs, ACTION, [[], []])
    assert d == [StageDecision(6, "slow"), StageDecision(3, None)]
    # a: u = 0.5 on the fast variant: ceil(60 / (0.5 x 20)) = 6; b: u = 1.0: ceil(45 / 30) = 2
    d, _ = pipeline_decisions([0, 0, 1], obs, ACTION, [[], []])
    assert d == [StageDecision(6, "fast"), StageDecision(2, None)]
    # at 100 req/s: ceil(100 / 10) = 10, clamped to max_replicas 8
    d, _ = pipeline_decisions([0, 0, 1], _pobs([100.0, 45.0], [3, 2], ["fast", "only"]), ACTION, [[], []])
    assert d[0] == StageDecision(8, "fast")
    # the scores' parts read greedily, in order
    assert greedy_indices(np.array([0.1, 0.9, 2.0, -1.0, 0.0, 0.0]), ACTION) == [1, 0, 0]


def test_scale_down_stabilisation_per_stage():
    act = dict(ACTION, scale_down_window_s=60)
    d, recs = pipeline_decisions([1, 1, 1], _pobs([60.0, 60.0], [6, 2], ["slow", "only"], t=15), act, [[], []])
    assert [x.replicas for x in d] == [6, 2]
    # load halves 15 s later: a's raw answer 3 is held at 6 by its window; b's 1 at 2 by b's own history
    d, recs = pipeline_decisions([1, 1, 1], _pobs([30.0, 30.0], [6, 2], ["slow", "only"], t=30), act, recs)
    assert [x.replicas for x in d] == [6, 2]
    # 75 s later the window has passed
    d, _ = pipeline_decisions([1, 1, 1], _pobs([30.0, 30.0], [6, 2], ["slow", "only"], t=105), act, recs)
    assert [x.replicas for x in d] == [3, 1]


# --------------------------------------------------------------------------- policy.pt


def _policy_file(path, cfg, bias=None, nan=False, action=None):
    """A hand-made pipeline policy for ``cfg``'s scenario: zero weights, ``bias`` picks each part's answer."""
    from rl.pipeline_env import pipeline_policy_meta
    meta = pipeline_policy_meta(cfg, {"algo": "hand-made"})
    if action is not None:
        meta["action"] = action
        for s, a in zip(meta["obs"]["stages"], action["stages"]):
            s["variants"], s["variant_capacity"] = a["variants"], a["capacity_rps_per_replica"]
    dim = PipelineObsEncoder(meta["obs"]).dim
    n = sum(action_sizes(meta["action"]))

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(dim, n)
            self.bad = 1.0 if nan else 0.0
            with torch.no_grad():
                self.lin.weight.zero_()
                self.lin.bias.copy_(torch.tensor(bias if bias is not None else [0.0] * n))

        def forward(self, x):
            y = self.lin(x)
            if self.bad > 0.5:
                y = y * float("nan")
            return y
    save_pipeline_policy_file(M(), meta, str(path))
    return str(path)


def _bias(cfg, u_index, variant_index):
    n = len(cfg["env"]["action"]["values"])
    one = [0.0] * n
    one[u_index] = 1.0
    v = [0.0, 0.0]
    v[variant_index] = 1.0
    return one + v + one


def test_export_load_decide_round_trip(cfg, tmp_path):
    sc = load_scenario(cfg["scenario_path"])
    path = _policy_file(tmp_path / "p.pt", cfg, _bias(cfg, 4, 1))          # u = 1.0, detect on "large"
    pol = PipelineLearnedPolicy.load(path, sc)
    assert pol.meta["format"] == "servesim-pipeline-policy/1" and pol.interval_s == 15.0
    assert pol.meta["scenario"]["hash"] == cfg["scenario_hash"] and pol.meta["reward"]["accuracy_weight"] > 0
    pol.reset()
    d = pol.decide(_pobs([70.0, 70.0], [2, 1], ["small", "default"]))
    # detect: ceil(70 / (1.0 x 20 [large])) = 4; classify: ceil(70 / 90) = 1
    assert d == [StageDecision(4, "large"), StageDecision(1, None)]
    assert pol.last_action == [4, 1, 4]
    # the scenario route: the same file as a pipeline scenario's top-level autoscaler
    from simulator.config import scenario_from_dict
    from simulator.pipeline import simulate_pipeline
    raw = yaml.safe_load(open(cfg["scenario_path"]))
    for st in raw["pipeline"]["stages"]:
        st.pop("autoscaler")
    raw.update(duration_s=60, autoscaler={"kind": "policy", "path": path, "interval_s": 15})
    r = simulate_pipeline(scenario_from_dict(raw))
    assert r.summary["policy"] == "policy" and r.summary["replica_seconds"] > 0


def test_policy_runs_without_ray(cfg, tmp_path):
    path = _policy_file(tmp_path / "p.pt", cfg, _bias(cfg, 2, 0))
    code = f"""
import sys
sys.modules['ray'] = None
sys.path.insert(0, {ROOT!r})
from simulator.pipeline_learned import PipelineLearnedPolicy
from simulator import load_scenario
from simulator.pipeline import simulate_pipeline
sc = load_scenario({cfg['scenario_path']!r}).replace(duration_s=60)
pol = PipelineLearnedPolicy.load({path!r}, sc)
print(simulate_pipeline(sc, policy=pol).summary["replica_seconds"])
"""
    q = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr[-2000:]
    assert float(q.stdout.strip().splitlines()[-1]) > 0


# --------------------------------------------------------------------------- bad input: one line each


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_policy_of_another_pipeline_is_refused(cfg, tmp_path):
    path = _policy_file(tmp_path / "p.pt", cfg)
    sc = load_scenario(cfg["scenario_path"])
    other = sc.replace(pipeline=sc.pipeline.__class__(stages=tuple(
        st.__class__(**{**st.__dict__, "name": st.name + "2"}) for st in sc.pipeline.stages)))
    with pytest.raises(ConfigError) as e:
        PipelineLearnedPolicy.load(path, other)
    assert "trained on another pipeline: stages detect -> classify" in _one_line(e)


def test_unknown_variant_in_the_action_mapping_is_refused(cfg, tmp_path):
    act = dict(cfg["env"]["action"])
    act["stages"] = [dict(act["stages"][0], variants=["small", "xl"], capacity_rps_per_replica={"small": 50.0, "xl": 9.0}),
                     act["stages"][1]]
    path = _policy_file(tmp_path / "p.pt", cfg, action=act)
    with pytest.raises(ConfigError) as e:
        PipelineLearnedPolicy.load(path, load_scenario(cfg["scenario_path"]))
    msg = _one_line(e)
    assert "stage 'detect'" in msg and "names variant 'xl', which the scenario's stage lacks (it has small, large)" in msg


def test_policy_of_the_other_kind_is_refused(cfg, tmp_path):
    from helpers import tiny_policy_file

    from simulator.learned import LearnedPolicy
    single = tiny_policy_file(tmp_path / "single.pt")
    with pytest.raises(ConfigError) as e:
        PipelineLearnedPolicy.load(single)
    assert "a single-model policy" in _one_line(e)
    pipe = _policy_file(tmp_path / "p.pt", cfg)
    with pytest.raises(ConfigError) as e:
        LearnedPolicy.load(pipe)
    assert "a pipeline policy" in _one_line(e) and "rl.pipeline_eval" in str(e.value)


def test_non_finite_scores_and_a_wrong_interval_are_refused(cfg, tmp_path):
    sc = load_scenario(cfg["scenario_path"])
    pol = PipelineLearnedPolicy.load(_policy_file(tmp_path / "nan.pt", cfg, nan=True), sc)
    with pytest.raises(ConfigError) as e:
        pol.decide(_pobs([70.0, 70.0], [2, 1], ["small", "default"]))
    assert "invalid action scores" in _one_line(e)
    pol = PipelineLearnedPolicy.load(_policy_file(tmp_path / "ok.pt", cfg), sc)
    obs = _pobs([70.0, 70.0], [2, 1], ["small", "default"])
    obs = PipelineObservation(**{**obs.__dict__, "interval_s": 10.0})
    with pytest.raises(ConfigError) as e:
        pol.decide(obs)
    assert "trained with interval_s 15" in _one_line(e)


def test_pipeline_eval_refuses_a_policy_of_another_pipeline(cfg, tmp_path, capsys):
    from rl import pipeline_eval as pe
    path = _policy_file(tmp_path / "p.pt", cfg)
    # a two-stage pipeline with other stage names
    raw = yaml.safe_load(open(cfg["scenario_path"]))
    for st in raw["pipeline"]["stages"]:
        st["name"] = "x" + st["name"]
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    rc = pe.main([str(other), "--policies", path, "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "trained on another pipeline" in err and "\n" not in err
    assert not (tmp_path / "o2").exists()


def test_bad_pipeline_settings_are_one_line(tmp_path):
    trace = make_trace(tmp_path / "trace.csv", days=2)
    cases = (
        ({"action": {"kind": "delta", "values": [-1, 0, 1]}}, {}, "a pipeline scenario takes the rate action only"),
        ({}, {"capacity_rps_per_replica": {"detect": {"small": 50.0}, "classify": 90.0}},
         "pipeline.capacity_rps_per_replica.detect: must give a number > 0 (req/s) for each of the stage's variants"),
        ({}, {"capacity_rps_per_replica": {"detect": {"small": 5, "large": 2}, "classify": 9, "zzz": 1}},
         "pipeline.capacity_rps_per_replica.zzz: not a stage"),
        ({}, {"replica_weight": 0}, "pipeline.replica_weight: must be a number > 0"),
        ({}, {"bogus": 1}, "pipeline.bogus: unknown key"),
    )
    for env, pl, msg in cases:
        caps = pl.pop("capacity_rps_per_replica", None)
        p = make_pipeline_config(tmp_path, trace, capacities=caps, pipeline=pl, **env)
        with pytest.raises(ConfigError) as e:
            load_rl_config(p)
        assert msg in _one_line(e), str(e.value)


def test_single_model_commands_refuse_a_pipeline(cfg):
    from rl.env import ServeSimEnv
    with pytest.raises(ConfigError) as e:
        ServeSimEnv({"cfg": cfg})
    assert "a pipeline scenario; rl.env.ServeSimEnv" in _one_line(e)


def test_dqn_is_refused_for_a_pipeline(tmp_path):
    trace = make_trace(tmp_path / "trace.csv", days=2)
    p = subprocess.run([sys.executable, "-m", "rl.train", "--config", make_pipeline_config(tmp_path, trace),
                        "--algo", "dqn", "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --algo dqn:") and "MultiDiscrete" in last and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- supporting rules


def test_perturbation_reaches_every_stage():
    from rl.drift import perturb_scenario
    sc = load_scenario(os.path.join(ROOT, "configs", "pipeline_example.yaml"))
    p = perturb_scenario(sc, {"service": 2.0, "startup": 0.5, "overhead": 3.0})
    for a, b in zip(sc.pipeline.stages, p.pipeline.stages):
        assert b.hop.mean_value == pytest.approx(3 * a.hop.mean_value)
        assert b.cluster.startup.mean_value == pytest.approx(0.5 * a.cluster.startup.mean_value)
        for va, vb in zip(a.variants, b.variants):
            for (ba, da), (bb, db) in zip(va.service.per_batch, vb.service.per_batch):
                assert ba == bb and db.mean_value == pytest.approx(2 * da.mean_value)
            if va.startup is not None:
                assert vb.startup.mean_value == pytest.approx(0.5 * va.startup.mean_value)


def test_variant_capacities_follow_the_stage_rule():
    from simulator.capacity import slo_shares, stage_capacities, variant_capacities, with_variants
    from simulator.config import scenario_from_dict
    sc = scenario_from_dict({
        "slo_ms": 60.0, "workload": {"kind": "poisson", "rate_rps": 10},
        "pipeline": {"stages": [
            {"name": "a", "variants": [{"name": "fast", "service": {"mean_ms": 8}},
                                       {"name": "slow", "service": {"mean_ms": 16}}], "hop_ms": 2},
            {"name": "b", "service": {"mean_ms": 8}, "hop_ms": 2}]}})
    caps = variant_capacities(sc, 0.01)
    start = stage_capacities(sc, 0.01)
    # the starting variants get exactly stage_capacities' figures
    assert caps[0]["fast"] == start[0] and caps[1]["default"] == start[1]
    # the slow variant: the stage's share of the path with it, (16 + 2) / (18 + 10), and its own capacity there
    slow = with_variants(sc, ["slow", "default"])
    assert slo_shares(slow)[0] == pytest.approx(18 / 28)
    assert caps[0]["slow"] == stage_capacities(slow, 0.01)[0]
    assert 0 < caps[0]["slow"] < caps[0]["fast"]
