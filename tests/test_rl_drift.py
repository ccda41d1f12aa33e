"""Drift (rl.drift): perturbations by hand and through a simulation with a closed-form latency, the
domain randomisation of the env, the trend / forecast observation features, the selection rule and the
population's bookkeeping (no Ray: trial folders written by hand)."""
import json
import math
import os

import numpy as np
import pytest

from rl.drift import (PERTURB_KEYS, draw_factors, parse_perturb, perturb_label, perturb_scenario,
                      randomize_enabled, validate_randomize)
from simulator.config import ConfigError, Dist, load_scenario, scenario_from_dict
from simulator.policy import Observation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = float("nan")


def _scenario(**cluster):
    return scenario_from_dict({
        "duration_s": 20, "slo_ms": 100, "record_requests": True, "seed": 1,
        "workload": {"kind": "poisson", "rate_rps": 2},
        "service": {"per_batch": {1: {"kind": "deterministic", "mean_ms": 10},
                                  4: {"kind": "gamma", "mean_ms": 30, "cv": 0.5}},
                    "overhead": {"kind": "deterministic", "mean_ms": 2}},
        "batching": {"max_batch_size": 4},
        "cluster": {"replicas": 1, "max_replicas": 3, "startup_s": {"kind": "lognormal", "mean_s": 8, "cv": 0.3},
                    **cluster}})


# --------------------------------------------------------------------------- perturbations


def test_perturb_scales_each_term_by_hand():
    sc = _scenario(node_cores=1, interference=0.4, rate_cores=0.01)
    p = perturb_scenario(sc, {"service": 1.3, "startup": 2, "overhead": 0.5, "contention": 1.5})
    (b1, d1), (b4, d4) = p.service.per_batch
    assert (b1, d1) == (1, Dist("deterministic", 13.0, 0.0))
    assert b4 == 4 and d4.mean == pytest.approx(39.0) and d4.cv == 0.5          # shape kept
    assert p.service.overhead.mean == pytest.approx(1.0)
    assert p.cluster.startup.mean == pytest.approx(16.0) and p.cluster.startup.cv == 0.3
    assert p.cluster.interference == pytest.approx(0.6) and p.cluster.rate_cores == pytest.approx(0.015)
    assert p.cluster.node_cores == 1 and p.cluster.max_replicas == 3             # the rest untouched
    assert perturb_scenario(sc, {}) == sc
    emp = sc.replace(service=sc.service.__class__(per_batch=((1, Dist("empirical", quantiles=(1.0, 2.0, 4.0))),)))
    assert perturb_scenario(emp, {"service": 2}).service.per_batch[0][1].quantiles == (2.0, 4.0, 8.0)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb_scenario(sc, {"speed": 2})


def test_perturbed_service_doubles_an_unloaded_latency():
    """Deterministic 10 ms service, 2 ms overhead, requests mostly far apart: latency = 12 ms, with service x2
    22 ms (a request arriving while another is served waits for it: more, never less)."""
    from simulator.engine import simulate
    sc = scenario_from_dict({"duration_s": 30, "slo_ms": 100, "record_requests": True, "seed": 2,
                             "workload": {"kind": "poisson", "rate_rps": 0.5},
                             "service": {"kind": "deterministic", "mean_ms": 10, "overhead_ms": 2}})

    def lat(s):
        r = simulate(s).records
        return (r["completion_s"] - r["arrival_s"]) * 1e3
    base, slow = lat(sc), lat(perturb_scenario(sc, {"service": 2.0}))
    assert len(base) > 3
    for x, want in ((base, 12.0), (slow, 22.0)):
        assert x.min() == pytest.approx(want) and np.median(x) == pytest.approx(want)


def test_parse_perturb_and_bad_inputs():
    assert parse_perturb("service=1.3,startup=2") == {"service": 1.3, "startup": 2.0}
    assert parse_perturb(" contention = 0.5 ,") == {"contention": 0.5}
    assert parse_perturb(None) == {} and perturb_label({}) == "none"
    assert perturb_label({"service": 1.3, "startup": 2.0}) == "service x1.3, startup x2"
    for bad, msg in (("speed=2", "KEY one of service, startup, overhead, contention"),
                     ("service", "expected KEY=FACTOR"), ("service=fast", "service: the factor must be a number > 0"),
                     ("startup=0", "must be a number > 0"), ("startup=-1", "> 0"), ("service=nan", "> 0"),
                     ("service=1.2,service=1.3", "given twice")):
        with pytest.raises(ConfigError, match=msg) as e:
            parse_perturb(bad)
        assert "\n" not in str(e.value) and str(e.value).startswith("--perturb")


def test_randomize_settings_and_draws():
    d = validate_randomize({"service": [0.9, 1.1]})
    assert d["enabled"] == "auto" and d["service"] == [0.9, 1.1] and d["startup"] == [0.6, 1.6]
    for bad, msg in (({"service": [1.2, 1.1]}, "service: must be"), ({"service": [0, 1]}, "0 < lo"),
                     ({"enabled": "yes"}, "enabled: must be auto"), ({"speed": [1, 2]}, "speed: unknown key"),
                     ([1, 2], "must be a mapping")):
        with pytest.raises(ConfigError, match=msg):
            validate_randomize(bad)
    rng = np.random.default_rng(0)
    draws = [draw_factors(rng, d) for _ in range(200)]
    for k in PERTURB_KEYS:
        x = np.array([f[k] for f in draws])
        assert x.min() >= d[k][0] and x.max() <= d[k][1]
        assert x.std() > 0.2 * (d[k][1] - d[k][0])          # uniform: std = width / sqrt(12) = 0.29 width
    cal = load_scenario(os.path.join(ROOT, "configs", "calibrated", "baseline.yaml"))
    default = load_scenario(os.path.join(ROOT, "configs", "rl_default.yaml"))
    assert randomize_enabled(d, cal) and not randomize_enabled(d, default)
    assert randomize_enabled(dict(d, enabled=True), default) and not randomize_enabled(dict(d, enabled=False), cal)


def test_env_randomizes_each_episode_reproducibly():
    pytest.importorskip("gymnasium")
    from rl.common import load_rl_config
    from rl.env import ServeSimEnv
    cfg = load_rl_config(need_trace=False, overrides={"env": {"randomize": {"enabled": True}}})
    assert cfg["env"]["randomize"]["active"]
    env = ServeSimEnv({"cfg": cfg, "synthetic_only": True, "episode_s": 30})
    f1 = env.reset(seed=4)[1]["episode"]["drift"]
    f2 = env.reset(seed=5)[1]["episode"]["drift"]
    assert f1 == env.reset(seed=4)[1]["episode"]["drift"] and f1 != f2
    r = cfg["env"]["randomize"]
    assert all(r[k][0] <= f1[k] <= r[k][1] for k in PERTURB_KEYS)
    # the episode's simulation runs the perturbed deployment
    assert env.sim.sc.service.per_batch[0][1].mean == pytest.approx(18.0 * f1["service"])
    off = ServeSimEnv({"cfg": cfg, "synthetic_only": True, "episode_s": 30, "nominal": True})
    assert "drift" not in off.reset(seed=4)[1]["episode"]


# --------------------------------------------------------------------------- observation features


def _ob(rate, replicas=2, interval=5.0):
    return Observation(time_s=5, interval_s=interval, arrival_rps=rate, completion_rps=rate, latency_p50_ms=NAN,
                       latency_p95_ms=NAN, latency_p99_ms=NAN, slo_violation_frac=NAN, queue_ms=NAN, batch_size=NAN,
                       busy_fraction=NAN, inflight=0, replicas=replicas, replicas_ready=replicas, replicas_pending=0,
                       failures=0, slo_ms=100, min_replicas=1, max_replicas=10)


def test_trend_and_forecast_features_by_hand():
    from simulator.learned import ObsEncoder, default_obs_spec, linear_forecast
    spec = default_obs_spec(slo_ms=100, max_replicas=10, max_batch_size=8, interval_s=5, capacity_rps_per_replica=50,
                            history=1, features="extended", forecast_s=10.0)
    enc = ObsEncoder(spec)
    i_t, i_f = spec["features"].index("arrival_trend"), spec["features"].index("load_forecast")
    x = enc.encode(_ob(100))
    assert x[i_t] == 0.0 and x[i_f] == pytest.approx(100 / 100)        # one point: the rate itself
    enc.encode(_ob(150))
    x = enc.encode(_ob(200))
    # trend: +50 rps / scale 50 (one replica's capacity); line through (0,100) (5,150) (10,200): 10 rps/s,
    # 10 s past the last point: 300 rps / (2 replicas x 50)
    assert x[i_t] == pytest.approx(50 / 50) and x[i_f] == pytest.approx(300 / 100)
    assert linear_forecast([100, 100, 40, 0], 5, 60) == 0.0           # falling: floored at 0
    assert linear_forecast([7], 5, 60) == 7.0
    enc.reset()
    assert enc.encode(_ob(200))[i_t] == 0.0
    basic = default_obs_spec(slo_ms=100, max_replicas=10, max_batch_size=8, interval_s=5, capacity_rps_per_replica=50)
    assert "arrival_trend" not in basic["features"] and len(spec["features"]) == len(basic["features"]) + 2
    old = {k: v for k, v in basic.items() if k != "forecast_s"}     # a policy file written before the option
    assert ObsEncoder(old).encode(_ob(10)).shape == (len(basic["features"]) * basic["history"],)
    with pytest.raises(ValueError, match="observation features"):
        default_obs_spec(slo_ms=100, max_replicas=10, max_batch_size=8, interval_s=5, capacity_rps_per_replica=50,
                         features="fancy")


# --------------------------------------------------------------------------- selection and the population


def test_pick_rule_by_hand():
    from rl.select import pick
    rows = [{"n": 0, "replica_seconds": 100, "slo_violation_rate": 0.02},
            {"n": 1, "replica_seconds": 120, "slo_violation_rate": 0.009},
            {"n": 2, "replica_seconds": 110, "slo_violation_rate": 0.010},
            {"n": 3, "replica_seconds": 150, "slo_violation_rate": 0.001}]
    assert pick(rows, 0.01) == (rows[2], True)                 # cheapest at <= 1 %
    assert pick(rows, 0.005) == (rows[3], True)
    assert pick(rows, 0.0) == (rows[3], False)                 # none meets it: the fewest violations
    with pytest.raises(ValueError):
        pick([], 0.01)


def test_grid_and_trial_specs():
    from rl.common import load_rl_config
    from rl.train import parse_grid, trial_specs
    g = parse_grid(["lr=1e-4,3e-4", "train_batch_size=1000"], {"lambda": [1, 2]})
    assert g == {"lambda": [1, 2], "lr": [1e-4, 3e-4], "train_batch_size": [1000]}
    for bad in ("lr", "momentum=0.9", "lr=fast", "lr=0"):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid([bad])
    cfg = load_rl_config(need_trace=False)
    tr = dict(cfg["training"])
    specs = trial_specs(cfg, tr, "ppo", [0, 1], g, "/tmp/pop", iterations=2)
    assert len(specs) == 2 * 2 * 2
    names = [s["name"] for s in specs]
    assert len(set(names)) == 8 and names[0] == "seed0-lambda1-lr0.0001-train_batch_size1000"
    s = specs[-1]
    assert s["seed"] == 1 and s["cfg"]["env"]["reward"]["lambda"] == 2 and s["training"]["lr"] == 3e-4
    assert s["training"]["minibatch_size"] == min(tr["minibatch_size"], 1000)
    assert cfg["env"]["reward"]["lambda"] == 2.0 and tr["lr"] == 3e-4       # the base config is untouched
    assert [x["name"] for x in trial_specs(cfg, tr, "ppo", [3], {}, "/tmp/pop")] == ["seed3"]


def test_population_picks_the_best_finished_trial(tmp_path, capsys):
    """The population's last step on hand-written trial folders: the cheapest trial meeting the target on the
    tuning windows is exported, every finished trial is in the table, a failed one is reported."""
    pytest.importorskip("torch")
    from helpers import tiny_policy_file as _tiny_policy_file
    from rl.train import finish_population
    figures = {"seed0": (2000.0, 0.008), "seed1": (1800.0, 0.012), "seed2": (1900.0, 0.009)}
    specs = []
    for i, (name, (rs, v)) in enumerate(figures.items()):
        d = tmp_path / "trials" / name
        d.mkdir(parents=True)
        _tiny_policy_file(d / "policy.pt", history=i + 1)       # tell the files apart by their history
        (d / "trial.json").write_text(json.dumps({
            "name": name, "seed": i, "hparams": {}, "iterations": 2, "env_steps": 400, "train_s": 1.0,
            "select_s": 0.5, "meets": v <= 0.01,
            "selected": {"file": "snapshots/policy_iter0002.pt", "iteration": 2, "replica_seconds": rs,
                         "slo_violation_rate": v}}))
        specs.append({"name": name, "dir": str(d)})
    specs.append({"name": "seed3", "dir": str(tmp_path / "trials" / "seed3")})
    cfg = {"slo_target": 0.01, "trace": {"tune_days": [11, 12]}}
    rc = finish_population(specs, {"seed0": None, "seed1": None, "seed2": None, "seed3": "boom"}, cfg,
                           str(tmp_path), 12.0)
    assert rc == 1                                              # a trial failed
    out = capsys.readouterr()
    assert "trial seed3 failed: boom" in out.err and "<- selected" in out.out
    pop = json.loads((tmp_path / "population.json").read_text())
    assert pop["selected"] == "seed2" and pop["meets"] and len(pop["trials"]) == 3
    from simulator.learned import LearnedPolicy
    assert LearnedPolicy.load(str(tmp_path / "policy.pt")).meta["obs"]["history"] == 3
    assert finish_population(specs[3:], {"seed3": "boom"}, cfg, str(tmp_path / "none"), 1.0) == 1
    assert "no trial of the population finished" in capsys.readouterr().err
    assert not math.isnan(pop["wall_s"])
