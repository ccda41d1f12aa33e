"""Gymnasium environment over the simulator library (no disk, no subprocess per step).

One step = one control interval (the scenario's ``autoscaler.interval_s``).
``reset()`` returns the observation of the first interval ``[0, T)`` (T the
interval); ``step(a)`` applies ``a`` at T, runs ``[T, 2T)`` and returns that
interval's observation and reward, so an episode of ``episode_s`` seconds has
``episode_s / T - 1`` steps.

- observation: the simulator's policy :class:`~simulator.policy.Observation`
  encoded by :class:`simulator.learned.ObsEncoder` (fixed scales stored with
  the policy, last ``env.history`` frames);
- action: index into ``env.action.values`` -- a replica change (``delta``) or
  a replica count (``target``), see :func:`simulator.learned.apply_action` (then the optional scale-down
  stabilisation, :func:`simulator.learned.stabilized_action`);
- reward: ``-(cost_per_replica_s * replica_seconds + lambda * (late + failed
  requests)) / (interval_s * max_replicas)`` for the interval
  (:func:`rl.common.step_reward`), floored at ``-env.reward.clip`` when that is set.

Domain randomisation (``env.randomize``; on by default for calibrated
scenarios, :func:`rl.drift.randomize_enabled`): each episode multiplies the
scenario's service times, start-up delays, overhead and node contention terms
by factors drawn uniformly from the configured ranges (:func:`rl.drift.draw_factors`),
recorded in the episode's info.

Episodes (``env.episode_s`` simulated seconds, truncated at the end) replay a
random slice of the training days of the trace (time-compressed by a
curriculum speedup, rate-scaled by ``trace.scale`` times a jitter), or with
probability ``curriculum.synthetic_frac`` a synthetic pattern (spike, ramp,
step, sinusoid, constant). Everything is drawn from the episode seed
(``reset(seed=...)``), so episodes are reproducible.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from rl.common import base_scenario, day_range, interval_violations, load_rl_config, load_trace, \
    require_single_model, reward_norm, step_reward
from rl.drift import draw_factors, perturb_scenario
from simulator.config import Segment, WorkloadSpec
from simulator.engine import Simulation
from simulator.learned import ObsEncoder, default_obs_spec, stabilized_action
from simulator.service import build_service_model


def forecast_horizon(sc) -> float:
    """How far ahead ``load_forecast`` looks: the mean start-up delay + one control interval (a replica
    requested now serves from start-up on, until the decision after next can have replaced it)."""
    return round(float(sc.cluster.startup.mean_value) + float(sc.autoscaler.interval_s), 3)


def obs_spec_for(cfg: Mapping) -> dict:
    sc = cfg["scenario_dict"]
    return default_obs_spec(slo_ms=float(sc["slo_ms"]), max_replicas=int(sc["cluster"]["max_replicas"]),
                            max_batch_size=int(sc["batching"]["max_batch_size"]),
                            interval_s=float(sc["autoscaler"]["interval_s"]),
                            capacity_rps_per_replica=float(cfg["capacity_rps_per_replica"]),
                            history=int(cfg["env"]["history"]), features=cfg["env"].get("features", "basic"),
                            forecast_s=forecast_horizon(base_scenario(cfg)))


def env_settings(env_config: Mapping[str, Any]) -> dict:
    """An environment's settings: ``env_config["cfg"]`` (resolved), else loaded from its ``config`` /
    ``scenario`` / ``trace`` (:func:`rl.common.load_rl_config`; no trace with ``synthetic_only``)."""
    cfg = env_config.get("cfg")
    if cfg is None:
        cfg = load_rl_config(env_config.get("config"), scenario=env_config.get("scenario"),
                             trace=env_config.get("trace"), need_trace=env_config.get("synthetic_only") is not True)
    return cfg


class TraceEpisodes:
    """The episodes of an RL environment (this module's docstring): a slice of the training days of the trace
    (curriculum speedup, rate scale x jitter) or, with probability ``curriculum.synthetic_frac``, a synthetic
    pattern up to ``top_rps()``; everything drawn from the generator the caller passes (the reset seed's)."""

    def _init_episodes(self, cfg: Mapping, env_config: Mapping) -> None:
        cur = cfg["curriculum"]
        self.synthetic_frac = 1.0 if self.synthetic_only else float(cur["synthetic_frac"])
        self.levels = list(cur["levels"])
        self.jitter = tuple(cur["scale_jitter"])
        self.episodes = int(env_config.get("start_episode", 0))
        self.fixed_level = env_config.get("level")
        # episodes replay the scenario's own workload and initial replicas (tests, fixed evaluations)
        self.use_scenario_workload = bool(env_config.get("use_scenario_workload", False))
        if not self.synthetic_only:
            self.rates = load_trace(cfg["trace"]["path"])
            self.train_a, self.train_b = day_range(cfg["trace"]["train_days"], len(self.rates), "trace.train_days")
            self.scale = float(cfg["trace"]["scale"])
        else:
            self.rates, self.scale = None, 1.0

    def top_rps(self) -> float:  # pragma: no cover - interface
        """The highest rate of a synthetic pattern."""
        raise NotImplementedError

    # ---------------------------------------------------------------- episode sampling
    def level(self) -> dict:
        if self.fixed_level is not None:
            return self.levels[min(int(self.fixed_level), len(self.levels) - 1)]
        n = self.episodes
        for lv in self.levels:
            if not lv.get("episodes") or n < lv["episodes"]:
                return lv
            n -= lv["episodes"]
        return self.levels[-1]

    def _synthetic(self, rng: np.random.Generator, dur: float) -> tuple[WorkloadSpec, dict]:
        top = self.top_rps()
        kind = rng.choice(["spike", "ramp", "step", "sinusoid", "constant"])
        lo = float(rng.uniform(0.05, 0.5) * top)
        hi = float(rng.uniform(lo, top))
        if kind == "spike":
            at = float(rng.uniform(0.1, 0.7) * dur)
            seg = Segment("spike", dur, lo, at_s=at, peak_rps=hi, width_s=float(rng.uniform(0.05, 0.3) * dur))
        elif kind == "ramp":
            a, b = (lo, hi) if rng.random() < 0.5 else (hi, lo)
            seg = Segment("ramp", dur, a, to_rps=b)
        elif kind == "step":
            a, b = (lo, hi) if rng.random() < 0.5 else (hi, lo)
            seg = Segment("step", dur, a, to_rps=b, at_s=float(rng.uniform(0.2, 0.8) * dur))
        elif kind == "sinusoid":
            mid = (lo + hi) / 2
            seg = Segment("sinusoid", dur, mid, amplitude_rps=(hi - lo) / 2, period_s=float(rng.uniform(min(60.0, dur / 2), dur)))
        else:
            seg = Segment("constant", dur, float(rng.uniform(0.05, 1.0) * top))
        return WorkloadSpec(kind="schedule", segments=(seg,)), {"kind": f"synthetic:{kind}", "lo": lo, "hi": hi}

    def _trace(self, rng: np.random.Generator, dur: float) -> tuple[WorkloadSpec, dict, float]:
        speedup = float(rng.choice(self.level()["speedups"]))
        span = dur * speedup
        start = int(rng.integers(self.train_a, max(self.train_a + 1, self.train_b - int(span) - 1)))
        scale = self.scale * float(rng.uniform(*self.jitter))
        wl = WorkloadSpec(kind="trace", path=self.cfg["trace"]["path"], column="rps", speedup=speedup,
                          scale=scale, offset_s=float(start), length_s=float(span))
        r0 = float(self.rates[start:start + max(1, int(speedup * 30))].mean()) * scale
        return wl, {"kind": "trace", "start_s": start, "speedup": speedup, "scale": scale}, r0

    def _episode_workload(self, rng: np.random.Generator, dur: float, scenario_workload):
        """``(workload, info, first rate or None)`` of the next episode (None: the scenario's own workload)."""
        if self.use_scenario_workload:
            return scenario_workload, {"kind": "scenario"}, None
        if self.synthetic_only or rng.random() < self.synthetic_frac:
            wl, info = self._synthetic(rng, dur)
            from simulator.workload import schedule_rate
            return wl, info, float(schedule_rate(wl.segments, np.array([0.0]))[0])
        return self._trace(rng, dur)


class ServeSimEnv(TraceEpisodes, gym.Env):
    """Autoscaling of the simulated Triton deployment; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, env_config: Mapping[str, Any] | None = None):
        env_config = dict(env_config or {})
        cfg = env_settings(env_config)
        require_single_model(cfg, "rl.env.ServeSimEnv (rl.pipeline_env.PipelineEnv: pipelines)")
        self.cfg = cfg
        self.synthetic_only = bool(env_config.get("synthetic_only", False)) or cfg["trace"].get("scale") is None
        self.base = base_scenario(cfg)
        self.model = build_service_model(self.base.service, self.base.batching.max_batch_size)
        self.interval = float(self.base.autoscaler.interval_s)
        self.episode_s = float(env_config.get("episode_s", cfg["env"]["episode_s"]))
        self.n_steps = int(round(self.episode_s / self.interval))
        self.capacity = float(cfg["capacity_rps_per_replica"])
        self.obs_spec = obs_spec_for(cfg)
        self.encoder = ObsEncoder(self.obs_spec)
        self.action_map = dict(cfg["env"]["action"])
        rw = cfg["env"]["reward"]
        self.cost, self.lam = float(rw["cost_per_replica_s"]), float(rw["lambda"])
        self.clip = None if rw.get("clip") is None else float(rw["clip"])
        rnd = cfg["env"].get("randomize") or {}
        self.randomize = rnd if rnd.get("active") and not env_config.get("nominal") else None
        self.norm = reward_norm(cfg)
        self._init_episodes(cfg, env_config)
        self.observation_space = gym.spaces.Box(-self.encoder.clip, self.encoder.clip, (self.encoder.dim,),
                                                dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(self.action_map["values"]))
        self.sim: Simulation | None = None
        self.obs = None
        self.episode_info: dict[str, Any] = {}

    def top_rps(self) -> float:
        return self.capacity * self.base.cluster.max_replicas * 0.85

    # ---------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        dur = self.n_steps * self.interval
        c = self.base.cluster
        wl, info, r0 = self._episode_workload(rng, dur, self.base.workload)
        if r0 is None:
            init = c.replicas
        else:
            init = math.ceil(r0 * 1.1 / self.capacity) + int(rng.integers(-1, 2))
            init = int(min(max(init, c.min_replicas, 1), c.max_replicas))
        sim_seed = int(rng.integers(0, 2**31 - 1)) if not self.use_scenario_workload else self.base.seed
        sc = self.base.replace(seed=sim_seed, duration_s=dur, warmup_s=0.0, record_requests=False, workload=wl,
                               cluster=dataclasses.replace(c, replicas=init))
        model = self.model
        if self.randomize is not None:
            factors = draw_factors(rng, self.randomize)
            sc = perturb_scenario(sc, factors)
            model = build_service_model(sc.service, sc.batching.max_batch_size)
            info = dict(info, drift=factors)
        self.sim = Simulation(sc, model=model)
        self.encoder.reset()
        self.recommendations = []          # the scale-down stabilisation's history (env.action.scale_down_window_s)
        self.obs = self.sim.start()
        self.steps = 0
        self.prev_rs = self.sim.timeline[-1]["replica_seconds"]
        self.totals = {"replica_s": 0.0, "violations": 0.0, "requests": 0.0, "failures": 0.0}
        self.episodes += 1
        self.episode_info = dict(info, sim_seed=sim_seed, init_replicas=init, level=self.level())
        return self.encoder.encode(self.obs), {"episode": self.episode_info}

    def step(self, action):
        if self.sim is None or self.obs is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        desired, self.recommendations = stabilized_action(a, self.obs, self.action_map, self.recommendations)
        obs = self.sim.step(desired)
        self.steps += 1
        if obs is None:  # only when duration is not a multiple of the interval
            obs = self.obs
        row = self.sim.timeline[-1]
        rs = row["replica_seconds"] - self.prev_rs
        self.prev_rs = row["replica_seconds"]
        viol = interval_violations(obs)
        r = step_reward(rs, viol, self.cost, self.lam, self.norm)
        if self.clip is not None:
            r = max(r, -self.clip)
        t = self.totals
        t["replica_s"] += rs
        t["violations"] += viol
        t["requests"] += obs.completion_rps * obs.interval_s + obs.failures
        t["failures"] += obs.failures
        self.obs = obs
        truncated = self.steps >= self.n_steps or obs.time_s >= self.sim.sc.duration_s - 1e-9
        info = {"replica_s": rs, "violations": viol, "desired": desired, "replicas": obs.replicas,
                "arrival_rps": obs.arrival_rps}
        if truncated:
            span = self.steps * self.interval
            mean_reps = t["replica_s"] / span
            # replicas the offered load needs at the per-replica capacity (a load-free cost measure)
            load_reps = max(t["requests"] / span / self.capacity, 1.0)
            info["episode_totals"] = dict(t, slo_violation_rate=t["violations"] / max(t["requests"], 1.0),
                                          mean_replicas=mean_reps, provision_ratio=mean_reps / load_reps)
        return self.encoder.encode(obs), float(r), False, bool(truncated), info


def make_env(env_config=None) -> ServeSimEnv:
    return ServeSimEnv(env_config)


__all__ = ["ServeSimEnv", "TraceEpisodes", "env_settings", "forecast_horizon", "make_env", "obs_spec_for"]
