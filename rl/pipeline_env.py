"""Gymnasium environment over a simulated inference pipeline (:class:`simulator.pipeline.PipelineSimulation`).

The pipeline counterpart of :mod:`rl.env`, built from the same settings (``configs/rl.yaml``, resolved for a
pipeline scenario by :func:`rl.common.resolve_pipeline`). One step = one control interval of the pipeline.
``reset()`` returns the observation of the first interval ``[0, T)``; ``step(a)`` applies ``a`` at ``T``, runs
``[T, 2T)`` and returns that interval's observation and reward (``episode_s / T - 1`` steps per episode).

- observation: :class:`simulator.pipeline_learned.PipelineObsEncoder` (per stage its own observation's
  features, the one-hot of its current variant when it has several; the end-to-end features; the interval's
  accuracy; the last ``env.history`` frames), fixed scales stored with the policy;
- action: a ``MultiDiscrete``: per stage a rate level ``u`` (index into ``env.action.values``) and, when the
  stage has more than one variant, the variant; the stage asks for ``ceil(its arrival rate / (u x that
  variant's per-replica capacity))`` replicas, with the scale-down stabilisation of
  ``env.action.scale_down_window_s`` per stage (:func:`simulator.pipeline_learned.pipeline_decisions`);
- reward: IPA's objective for the interval, :func:`rl.common.step_reward` with the accuracy credit:
  ``(accuracy_weight x accuracy x completions - cost x replica_seconds - lambda x violations) / norm`` --
  ``accuracy x completions`` the summed accuracy of the interval's end-to-end completions, replica-seconds
  over all stages, violations the late and failed requests end to end, ``norm = interval x sum of the
  stages' max_replicas`` -- floored at ``-env.reward.clip`` when that is set.

Episodes are :class:`rl.env.TraceEpisodes`'s: a slice of the training days of the trace (scaled by
:func:`rl.common.pipeline_trace_scale`'s rule, times the curriculum speedup and jitter) or a synthetic pattern
up to 85 % of what the bottleneck stage serves at ``max_replicas``, all drawn from the reset seed. Every stage
starts on its scenario variant with the replicas the first rate needs (x 1.1 over the stage's capacity, +-1
drawn), like :mod:`rl.env`. Domain randomisation (``env.randomize``) drifts every stage
(:func:`rl.drift.perturb_scenario`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from rl.common import base_scenario, interval_violations, is_pipeline, step_reward
from rl.drift import draw_factors, perturb_scenario
from rl.env import TraceEpisodes, env_settings
from simulator.config import ConfigError
from simulator.pipeline import PipelineSimulation
from simulator.pipeline_learned import PipelineObsEncoder, action_sizes, default_pipeline_obs_spec, \
    pipeline_decisions


def pipeline_obs_spec_for(cfg: Mapping) -> dict:
    """The observation spec of a pipeline config (:func:`simulator.pipeline_learned.default_pipeline_obs_spec`)."""
    return default_pipeline_obs_spec(base_scenario(cfg), cfg["pipeline"]["capacity_rps_per_replica"],
                                     history=int(cfg["env"]["history"]), features=cfg["env"].get("features", "basic"))


def pipeline_policy_meta(cfg: Mapping, provenance: Mapping) -> dict:
    """A pipeline ``policy.pt``'s metadata (observation, action, interval, scenario, reward, randomisation,
    ``provenance`` as ``training``)."""
    import os
    sc = base_scenario(cfg)
    pl = cfg["pipeline"]
    return {
        "obs": pipeline_obs_spec_for(cfg), "action": dict(cfg["env"]["action"]),
        "interval_s": float(sc.autoscaler.interval_s),
        "scenario": {"name": cfg["scenario_name"], "path": os.path.relpath(cfg["scenario_path"]),
                     "hash": cfg["scenario_hash"], "slo_ms": sc.slo_ms, "accuracy": sc.pipeline.accuracy,
                     "stages": [{"name": st.name, "variants": [v.name for v in st.variants], "variant": st.variant,
                                 "min_replicas": st.cluster.min_replicas, "max_replicas": st.cluster.max_replicas}
                                for st in sc.pipeline.stages],
                     "capacity_rps_per_replica": pl["capacity_rps_per_replica"], "capacity_rule": pl["capacity_rule"]},
        "reward": dict(cfg["env"]["reward"], accuracy_weight=pl["accuracy_weight"],
                       accuracy_weight_rule=pl["accuracy_weight_rule"], replica_weight=pl["replica_weight"],
                       norm=pl["norm"]),
        "randomize": dict(cfg["env"]["randomize"]),
        "training": dict(provenance),
    }


class PipelineEnv(TraceEpisodes, gym.Env):
    """Autoscaling (replicas and variants) of a simulated inference pipeline; see the module docstring.

    ``env_config``: ``cfg`` (resolved settings) or ``config`` / ``scenario`` / ``trace`` to load them;
    ``episode_s``, ``synthetic_only``, ``use_scenario_workload`` (replay the scenario's own workload and initial
    replicas), ``nominal`` (no domain randomisation), ``level``, ``start_episode`` as :class:`rl.env.ServeSimEnv`."""

    metadata = {"render_modes": []}

    def __init__(self, env_config: Mapping[str, Any] | None = None):
        env_config = dict(env_config or {})
        cfg = env_settings(env_config)
        if not is_pipeline(cfg):
            raise ConfigError(f"{cfg['scenario_path']}: not a pipeline scenario (no pipeline: block); "
                              "rl.env.ServeSimEnv takes single-model scenarios")
        self.cfg = cfg
        self.synthetic_only = bool(env_config.get("synthetic_only", False)) or cfg["trace"].get("scale") is None
        self.base = base_scenario(cfg)
        self.stages = self.base.pipeline.stages
        self.interval = float(self.base.autoscaler.interval_s)
        self.episode_s = float(env_config.get("episode_s", cfg["env"]["episode_s"]))
        self.n_steps = int(round(self.episode_s / self.interval))
        pl = cfg["pipeline"]
        self.capacities = [dict(c) for c in pl["capacity_rps_per_replica"]]
        self.start_capacity = [c[st.variant] for c, st in zip(self.capacities, self.stages)]
        self.obs_spec = pipeline_obs_spec_for(cfg)
        self.encoder = PipelineObsEncoder(self.obs_spec)
        self.action_map = dict(cfg["env"]["action"])
        rw = cfg["env"]["reward"]
        self.cost, self.lam = float(rw["cost_per_replica_s"]), float(rw["lambda"])
        self.accuracy_weight = float(pl["accuracy_weight"])
        self.clip = None if rw.get("clip") is None else float(rw["clip"])
        rnd = cfg["env"].get("randomize") or {}
        self.randomize = rnd if rnd.get("active") and not env_config.get("nominal") else None
        self.norm = float(pl["norm"])
        self._init_episodes(cfg, env_config)
        self.observation_space = gym.spaces.Box(-float(self.obs_spec["clip"]), float(self.obs_spec["clip"]),
                                                (self.encoder.dim,), dtype=np.float32)
        self.action_space = gym.spaces.MultiDiscrete(action_sizes(self.action_map))
        self.sim: PipelineSimulation | None = None
        self.obs = None
        self.episode_info: dict[str, Any] = {}

    def top_rps(self) -> float:
        return min(c * st.cluster.max_replicas for c, st in zip(self.start_capacity, self.stages)) * 0.85

    # ---------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        dur = self.n_steps * self.interval
        wl, info, r0 = self._episode_workload(rng, dur, self.base.workload)
        stages, init = [], []
        for st, cap in zip(self.stages, self.start_capacity):
            c = st.cluster
            if r0 is None:
                n = c.replicas
            else:
                n = math.ceil(r0 * 1.1 / cap) + int(rng.integers(-1, 2))
                n = int(min(max(n, c.min_replicas, 1), c.max_replicas))
            init.append(n)
            stages.append(dataclasses.replace(st, cluster=dataclasses.replace(c, replicas=n)))
        sim_seed = int(rng.integers(0, 2**31 - 1)) if not self.use_scenario_workload else self.base.seed
        sc = self.base.replace(seed=sim_seed, duration_s=dur, warmup_s=0.0, record_requests=False, workload=wl,
                               pipeline=dataclasses.replace(self.base.pipeline, stages=tuple(stages)))
        if self.randomize is not None:
            factors = draw_factors(rng, self.randomize)
            sc = perturb_scenario(sc, factors)
            info = dict(info, drift=factors)
        self.sim = PipelineSimulation(sc)
        self.encoder.reset()
        self.recommendations = [[] for _ in self.stages]
        self.obs = self.sim.start()
        self.steps = 0
        self.prev_rs = self.sim.timeline[-1]["replica_seconds"]
        self.totals = {"replica_s": 0.0, "violations": 0.0, "requests": 0.0, "failures": 0.0,
                       "accuracy_sum": 0.0, "completions": 0.0}
        self.episodes += 1
        self.episode_info = dict(info, sim_seed=sim_seed, init_replicas=init, level=self.level())
        return self.encoder.encode(self.obs), {"episode": self.episode_info}

    def decisions(self, action) -> list:
        """The stages' decisions for ``action`` now (advances the scale-down histories)."""
        idx = np.asarray(action, dtype=np.int64).reshape(-1)
        if idx.shape != (len(self.action_space.nvec),) or (idx < 0).any() or (idx >= self.action_space.nvec).any():
            raise ValueError(f"action must be {len(self.action_space.nvec)} indices below {self.action_space.nvec.tolist()} "
                             f"(got {np.asarray(action).tolist()})")
        out, self.recommendations = pipeline_decisions(idx, self.obs, self.action_map, self.recommendations)
        return out

    def step(self, action):
        if self.sim is None or self.obs is None:
            raise RuntimeError("call reset() before step()")
        decisions = self.decisions(action)
        obs = self.sim.step(decisions)
        self.steps += 1
        if obs is None:  # only when duration is not a multiple of the interval
            obs = self.obs
        row = self.sim.timeline[-1]                       # the e2e row: replica-seconds of all stages so far
        rs = row["replica_seconds"] - self.prev_rs
        self.prev_rs = row["replica_seconds"]
        e2e = obs.e2e
        viol = interval_violations(e2e)
        completions = e2e.completion_rps * e2e.interval_s
        acc = float(obs.accuracy) if math.isfinite(obs.accuracy) else 0.0
        r = step_reward(rs, viol, self.cost, self.lam, self.norm,
                        accuracy_credit=self.accuracy_weight * acc * completions)
        if self.clip is not None:
            r = max(r, -self.clip)
        t = self.totals
        t["replica_s"] += rs
        t["violations"] += viol
        t["requests"] += completions + e2e.failures
        t["failures"] += e2e.failures
        t["accuracy_sum"] += acc * completions
        t["completions"] += completions
        self.obs = obs
        truncated = self.steps >= self.n_steps or obs.time_s >= self.sim.sc.duration_s - 1e-9
        info = {"replica_s": rs, "violations": viol, "accuracy": obs.accuracy, "completions": completions,
                "desired": [d.replicas for d in decisions], "variants": list(obs.variants),
                "replicas": [o.replicas for o in obs.stages], "arrival_rps": e2e.arrival_rps}
        if truncated:
            span = self.steps * self.interval
            mean_reps = t["replica_s"] / span
            # replicas the offered load needs at each stage's (starting variant's) capacity
            load_reps = max(sum(t["requests"] / span / c for c in self.start_capacity), 1.0)
            info["episode_totals"] = dict(t, slo_violation_rate=t["violations"] / max(t["requests"], 1.0),
                                          mean_replicas=mean_reps, provision_ratio=mean_reps / load_reps,
                                          accuracy=t["accuracy_sum"] / t["completions"] if t["completions"] else
                                          math.nan)        # none served: a slice of a gap in the trace
        return self.encoder.encode(obs), float(r), False, bool(truncated), info


def make_env(env_config=None) -> PipelineEnv:
    return PipelineEnv(env_config)


__all__ = ["PipelineEnv", "make_env", "pipeline_obs_spec_for", "pipeline_policy_meta"]
