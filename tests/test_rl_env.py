"""RL environment: gymnasium's env checker, reward arithmetic by hand, observation encoding."""
import math
import os

import numpy as np
import pytest
import yaml

gym = pytest.importorskip("gymnasium")

from rl.common import interval_violations, load_rl_config, step_reward  # noqa: E402
from simulator.learned import ObsEncoder, apply_action, default_obs_spec, stabilized_action  # noqa: E402
from simulator.policy import Observation  # noqa: E402

NAN = float("nan")


def _tiny_scenario(tmp_path, arrivals_s, slo_ms=1.0, replicas=2, max_replicas=4):
    csv = tmp_path / "ts.csv"
    csv.write_text("t\n" + "\n".join(f"{t}" for t in arrivals_s) + "\n")
    sc = {"name": "tiny", "seed": 3, "duration_s": 10, "slo_ms": slo_ms, "record_requests": False,
          "workload": {"kind": "timestamps", "path": str(csv), "column": "t"},
          "service": {"kind": "deterministic", "mean_ms": 10},
          "batching": {"max_batch_size": 1},
          "cluster": {"replicas": replicas, "min_replicas": replicas, "max_replicas": max_replicas,
                      "startup_s": 0},
          "autoscaler": {"kind": "static", "interval_s": 5}}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(sc))
    cfgp = tmp_path / "rl.yaml"
    # an SLO every request misses has no capacity to simulate: the config gives one
    cfgp.write_text(yaml.safe_dump({"scenario": str(p), "trace": {"path": str(tmp_path / "none.csv")},
                                    "capacity_rps_per_replica": 50.0,
                                    "env": {"episode_s": 15, "history": 2,
                                            "action": {"kind": "delta", "values": [-1, 0, 1]},
                                            "reward": {"cost_per_replica_s": 1.0, "lambda": 0.5}}}))
    return load_rl_config(str(cfgp), need_trace=False)


def test_reward_arithmetic_by_hand(tmp_path):
    from rl.env import ServeSimEnv
    # reset() observes [0, 5) (one request at 0: timestamps are relative to the first one);
    # step 1 runs [5, 10): 10 requests, each takes 10 ms > slo 1 ms, all violate; step 2 runs [10, 15): none
    arr = [0.0] + [5 + 0.1 * k + 0.05 for k in range(10)]
    cfg = _tiny_scenario(tmp_path, arr)
    env = ServeSimEnv({"cfg": cfg, "use_scenario_workload": True, "episode_s": 15})
    hold = env.action_map["values"].index(0)
    env.reset(seed=0)
    _, r1, term, trunc, info1 = env.step(hold)
    # replica-seconds: 2 replicas x 5 s = 10; violations 10; norm = interval 5 s x max_replicas 4 = 20
    assert info1["replica_s"] == pytest.approx(10.0)
    assert info1["violations"] == pytest.approx(10.0)
    assert r1 == pytest.approx(-(1.0 * 10 + 0.5 * 10) / 20)   # = -0.75
    assert not term and not trunc
    # scale up by one: 3 replicas (start-up 0) for the second interval, no requests
    up = env.action_map["values"].index(1)
    _, r2, term, trunc, info2 = env.step(up)
    assert info2["replica_s"] == pytest.approx(15.0)
    assert info2["violations"] == 0
    assert r2 == pytest.approx(-15.0 / 20)
    assert trunc and not term
    tot = info2["episode_totals"]
    assert tot["replica_s"] == pytest.approx(25.0) and tot["violations"] == pytest.approx(10.0)
    assert tot["slo_violation_rate"] == pytest.approx(1.0)
    assert tot["mean_replicas"] == pytest.approx(2.5)


def test_step_reward_formula_and_violation_count():
    assert step_reward(10.0, 4.0, 2.0, 0.5, 8.0) == pytest.approx(-(20 + 2) / 8)
    o = Observation(time_s=5, interval_s=5, arrival_rps=10, completion_rps=8, latency_p50_ms=1, latency_p95_ms=1,
                    latency_p99_ms=1, slo_violation_frac=0.25, queue_ms=0, batch_size=1, busy_fraction=0.5,
                    inflight=0, replicas=1, replicas_ready=1, replicas_pending=0, failures=0, slo_ms=100,
                    min_replicas=1, max_replicas=4)
    assert interval_violations(o) == pytest.approx(0.25 * 40)    # 40 completed, a quarter late
    o.slo_violation_frac, o.completion_rps, o.failures = NAN, 0.0, 3
    assert interval_violations(o) == 3


def test_env_checker_passes_synthetic():
    from gymnasium.utils.env_checker import check_env

    from rl.env import ServeSimEnv
    env = ServeSimEnv({"synthetic_only": True, "episode_s": 60})
    check_env(env, skip_render_check=True)
    # reproducible episodes from the seed
    o1, i1 = env.reset(seed=5)
    o2, i2 = env.reset(seed=5)
    assert np.array_equal(o1, o2) and i1["episode"]["sim_seed"] == i2["episode"]["sim_seed"]
    n = 0
    done = False
    while not done:
        o, r, term, trunc, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(o) and math.isfinite(r)
        n += 1
        done = term or trunc
    assert n == 60 / env.interval - 1     # reset() observes the first interval


def test_obs_encoder_history_and_scales():
    spec = default_obs_spec(slo_ms=100, max_replicas=10, max_batch_size=8, interval_s=5,
                            capacity_rps_per_replica=50, history=3)
    enc = ObsEncoder(spec)

    def ob(rate, reps):
        return Observation(time_s=5, interval_s=5, arrival_rps=rate, completion_rps=rate, latency_p50_ms=NAN,
                           latency_p95_ms=50, latency_p99_ms=200, slo_violation_frac=0, queue_ms=1, batch_size=2,
                           busy_fraction=0.5, inflight=4, replicas=reps, replicas_ready=reps, replicas_pending=0,
                           failures=0, slo_ms=100, min_replicas=1, max_replicas=10)
    x1 = enc.encode(ob(100, 2))
    assert x1.shape == (3 * enc.frame_dim,) and x1.dtype == np.float32
    f = dict(zip(spec["features"], x1[-enc.frame_dim:]))
    assert f["arrival_rps"] == pytest.approx(100 / 500)        # rate scale = capacity x max_replicas
    assert f["latency_p50_ms"] == 0.0                          # NaN -> 0
    assert f["latency_p99_ms"] == pytest.approx(2.0)
    assert f["load_per_replica"] == pytest.approx(100 / (2 * 50))
    assert np.array_equal(x1[:enc.frame_dim], x1[-enc.frame_dim:])   # history filled with the first frame
    x2 = enc.encode(ob(300, 2))
    assert np.array_equal(x2[:2 * enc.frame_dim], x1[enc.frame_dim:])  # shifted by one frame
    enc.reset()
    assert np.array_equal(enc.encode(ob(100, 2)), x1)


def test_apply_action_kinds():
    o = Observation(time_s=5, interval_s=5, arrival_rps=230, completion_rps=0, latency_p50_ms=NAN, latency_p95_ms=NAN,
                    latency_p99_ms=NAN, slo_violation_frac=NAN, queue_ms=NAN, batch_size=NAN, busy_fraction=NAN,
                    inflight=0, replicas=3, replicas_ready=3, replicas_pending=0, failures=0, slo_ms=100,
                    min_replicas=1, max_replicas=6)
    assert apply_action(0, o, {"kind": "delta", "values": [-2, 0, 5]}) == 1
    assert apply_action(2, o, {"kind": "delta", "values": [-2, 0, 5]}) == 6      # clamped to max
    assert apply_action(1, o, {"kind": "target", "values": [1, 4]}) == 4
    # rate: ceil(230 / (50 * 0.8)) = ceil(5.75) = 6; ceil(230 / 50) = 5
    assert apply_action(0, o, {"kind": "rate", "values": [0.8, 1.0], "capacity_rps_per_replica": 50}) == 6
    assert apply_action(1, o, {"kind": "rate", "values": [0.8, 1.0], "capacity_rps_per_replica": 50}) == 5


def test_scale_down_window_holds_the_highest_recent_answer():
    """Rate action, capacity 50, u = 1.0, a 20 s scale-down window, one decision every 5 s: the raw answers
    (ceil(rate / 50)) are 5, 5, 2, 2, 2, 2, 2 and 6; the count may not fall below the highest raw answer of the
    last 20 s (times t > now - 20), and rises at once."""
    act = {"kind": "rate", "values": [1.0], "capacity_rps_per_replica": 50, "scale_down_window_s": 20}

    def o(t, rate, replicas):
        return Observation(time_s=t, interval_s=5, arrival_rps=rate, completion_rps=rate, latency_p50_ms=NAN,
                           latency_p95_ms=NAN, latency_p99_ms=NAN, slo_violation_frac=NAN, queue_ms=NAN,
                           batch_size=NAN, busy_fraction=NAN, inflight=0, replicas=replicas,
                           replicas_ready=replicas, replicas_pending=0, failures=0, slo_ms=100,
                           min_replicas=1, max_replicas=8)
    recs, got, n = [], [], 1
    for t, rate in [(5, 240), (10, 250), (15, 100), (20, 100), (25, 100), (30, 100), (35, 100), (40, 300)]:
        n, recs = stabilized_action(0, o(t, rate, n), act, recs)
        got.append(n)
    # the last 5 was answered at t = 10: it holds the count up to t = 25 (10 > 25 - 20), not at t = 30
    assert got == [5, 5, 5, 5, 5, 2, 2, 6]
    # without the window: the raw answers
    plain = {k: v for k, v in act.items() if k != "scale_down_window_s"}
    assert [stabilized_action(0, o(t, r, 5), plain, [])[0] for t, r in [(5, 240), (15, 100)]] == [5, 2]


@pytest.mark.parametrize("window", [-5, "60", True, 7200])
def test_bad_scale_down_window_is_one_line(window):
    from simulator.config import ConfigError
    act = {"kind": "rate", "values": [1.0], "scale_down_window_s": window}
    with pytest.raises(ConfigError, match=r"env\.action\.scale_down_window_s: must be seconds in 0\.\.3600"):
        load_rl_config(need_trace=False, overrides={"env": {"action": act}})
