"""Learned pipeline policies from a ``policy.pt`` file (a pipeline scenario's ``autoscaler: {kind: policy, path:
policy.pt}``, the same words as a single model's).

A pipeline ``policy.pt`` is what a single-model one is (:mod:`simulator.learned`: a TorchScript module plus
``servesim.json``, loadable with plain torch, no Ray), with ``format`` ``"servesim-pipeline-policy/1"`` and:

- ``obs`` (:class:`PipelineObsEncoder`): a frame is, per stage in pipeline order, that stage's
  :class:`~simulator.policy.Observation` encoded by an :class:`~simulator.learned.ObsEncoder` (``stages[k]``:
  its features -- :data:`STAGE_FEATURES` --, fixed scales, ``capacity_rps_per_replica`` of the scales and
  ``variant_capacity``: the load features ``load_per_replica`` / ``load_forecast`` divide by the capacity of
  the variant the stage serves now) followed, when the stage has more than one variant, by the one-hot of
  its current variant (``variants`` order); then the end-to-end observation (``e2e``, :data:`E2E_FEATURES`,
  scaled by the bottleneck stage's figures); then the mean accuracy of the interval's completions (0 when
  none). The input is the last ``history`` frames, oldest first (at the first decision after ``reset()``:
  copies of the first frame);
- ``action``: ``{"kind": "rate", "values": [u...], "scale_down_window_s": w, "stages": [{"name", "variants",
  "capacity_rps_per_replica": {variant: req/s}}, ...]}``. The module's scores are, per stage in order,
  ``len(values)`` scores for the rate level and, when the stage has more than one variant, ``len(variants)``
  scores for the variant (:func:`action_sizes`); each part is read greedily (argmax). A stage then asks for
  ``ceil(its arrival rate / (u x the chosen variant's capacity))`` replicas (clamped), with Kubernetes'
  scale-down stabilisation over its own answers of the last ``w`` seconds
  (:func:`simulator.learned.stabilized_action`, one history per stage), and names the chosen variant
  (:func:`pipeline_decisions`);
- ``interval_s``: the control interval it was trained at (a run at another is refused);
- ``scenario`` / ``reward`` / ``training``: provenance (scenario name and hash, stages, capacities, reward
  weights, trace, algorithm, seed, git revision, ...).

A policy file fits a pipeline scenario when it has the same stages in the same order, every variant its action
mapping names is one of that stage's, and every stage starts on a variant the policy knows
(:func:`check_scenario`); anything else is refused with one line. Non-finite scores or a wrong output shape
raise :class:`~simulator.config.ConfigError` (the single-model rule).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from simulator.learned import (PIPELINE_FORMAT, SCALE_DOWN_WINDOW_MAX_S, ObsEncoder, PolicyFile, check_format,
                               check_module,
                               checked_scores, default_obs_spec, read_policy_file, save_policy_file,
                               stabilized_action, valid_scale_down_window, validate_policy_params)
from simulator.pipeline_policy import PipelinePolicy, StageDecision, register_pipeline
from simulator.schema import ConfigError

FORMAT = PIPELINE_FORMAT
# per-stage features (the stage's own Observation; queue and busy are the stage's, p95 from arrival at the
# stage to the response reaching the next one, scaled by the end-to-end SLO)
STAGE_FEATURES = {
    "basic": ("arrival_rps", "latency_p95_ms", "slo_violation_frac", "queue_ms", "busy_fraction", "replicas",
              "replicas_pending", "failures", "load_per_replica", "pending_frac"),
}
STAGE_FEATURES["extended"] = STAGE_FEATURES["basic"] + ("arrival_trend", "load_forecast")
# end-to-end features (the pipeline's Observation: its queue / batch / busy fields are NaN, its replicas a sum)
E2E_FEATURES = {"basic": ("arrival_rps", "latency_p95_ms", "slo_violation_frac", "failures")}
E2E_FEATURES["extended"] = E2E_FEATURES["basic"] + ("arrival_trend",)


# --------------------------------------------------------------------------- observation encoding


def _subset(spec: Mapping[str, Any], names: Sequence[str]) -> dict:
    scale = dict(zip(spec["features"], spec["scales"]))
    return dict(spec, features=list(names), scales=[scale[n] for n in names])


def default_pipeline_obs_spec(sc, capacities: Sequence[Mapping[str, float]], *, history: int = 4,
                              features: str = "basic", clip: float = 10.0) -> dict:
    """The fixed observation scales of pipeline scenario ``sc`` (stored in ``policy.pt``): per stage
    :func:`simulator.learned.default_obs_spec` of the stage (end-to-end SLO, its ``max_replicas`` and batch size,
    its starting variant's capacity from ``capacities[k]``; ``load_forecast`` looks the starting variant's mean
    start-up + one interval ahead), the end-to-end frame scaled as the bottleneck stage (the least
    ``capacity x max_replicas``)."""
    if features not in STAGE_FEATURES:
        raise ValueError(f"observation features must be one of {', '.join(STAGE_FEATURES)} (got {features!r})")
    iv = float(sc.autoscaler.interval_s)
    stages, fleet = [], []
    for st, caps in zip(sc.pipeline.stages, capacities):
        v = st.variants[st.variant_index(st.variant)]
        forecast_s = round(float((v.startup or st.cluster.startup).mean_value) + iv, 3)
        spec = default_obs_spec(slo_ms=sc.slo_ms, max_replicas=st.cluster.max_replicas,
                                max_batch_size=st.batching.max_batch_size, interval_s=iv,
                                capacity_rps_per_replica=float(caps[st.variant]), history=1, clip=clip,
                                features=features, forecast_s=forecast_s)
        stages.append(dict(_subset(spec, STAGE_FEATURES[features]), name=st.name,
                           variants=[x.name for x in st.variants],
                           variant_capacity={x.name: float(caps[x.name]) for x in st.variants}))
        fleet.append(float(caps[st.variant]) * st.cluster.max_replicas)
    k = int(np.argmin(fleet))
    bst = sc.pipeline.stages[k]
    e2e = default_obs_spec(slo_ms=sc.slo_ms, max_replicas=bst.cluster.max_replicas, max_batch_size=1, interval_s=iv,
                           capacity_rps_per_replica=float(capacities[k][bst.variant]), history=1, clip=clip,
                           features=features)
    return {"stages": stages, "e2e": _subset(e2e, E2E_FEATURES[features]), "history": int(history),
            "clip": float(clip)}


class PipelineObsEncoder:
    """:class:`~simulator.pipeline.PipelineObservation` -> normalised vector (module docstring; the last
    ``history`` frames, oldest first)."""

    def __init__(self, spec: Mapping[str, Any]):
        stages = spec["stages"]
        if not isinstance(stages, list) or not stages:
            raise ValueError("bad pipeline observation spec (no stages)")
        self.names = [str(s["name"]) for s in stages]
        self.variants = [list(s["variants"]) for s in stages]
        self.variant_capacity = [{str(k): float(v) for k, v in s["variant_capacity"].items()} for s in stages]
        for name, vs, caps in zip(self.names, self.variants, self.variant_capacity):
            if not vs or len(set(vs)) != len(vs) or sorted(caps) != sorted(vs) or \
                    not all(c > 0 for c in caps.values()):
                raise ValueError(f"bad pipeline observation spec: stage {name!r} needs distinct variants and a "
                                 f"capacity > 0 for each (got variants {vs}, capacities {caps})")
        self.stage_enc = [ObsEncoder(s) for s in stages]
        self.e2e_enc = ObsEncoder(spec["e2e"])
        self.history = int(spec["history"])
        if self.history < 1 or any(e.history != 1 for e in self.stage_enc + [self.e2e_enc]):
            raise ValueError("bad pipeline observation spec: history must be >= 1 (the stages' and e2e's own: 1)")
        self.frame_dim = sum(e.frame_dim + (len(v) if len(v) > 1 else 0)
                             for e, v in zip(self.stage_enc, self.variants)) + self.e2e_enc.frame_dim + 1
        self.dim = self.frame_dim * self.history
        self._frames: deque[np.ndarray] = deque(maxlen=self.history)

    def reset(self) -> None:
        self._frames.clear()
        for e in self.stage_enc + [self.e2e_enc]:
            e.reset()

    def frame(self, pobs) -> np.ndarray:
        parts = []
        for k, enc in enumerate(self.stage_enc):
            v = pobs.variants[k]
            if v not in self.variant_capacity[k]:
                raise ConfigError(f"stage {self.names[k]!r} serves variant {v!r}, which the policy does not know "
                                  f"({', '.join(self.variants[k])})")
            parts.append(enc.frame(pobs.stages[k], capacity=self.variant_capacity[k][v]))
            if len(self.variants[k]) > 1:
                parts.append(np.asarray([1.0 if x == v else 0.0 for x in self.variants[k]]))
        parts.append(self.e2e_enc.frame(pobs.e2e))
        acc = float(pobs.accuracy)
        parts.append(np.asarray([acc if math.isfinite(acc) else 0.0]))
        return np.concatenate(parts)

    def encode(self, pobs) -> np.ndarray:
        fr = self.frame(pobs)
        if not self._frames:
            for _ in range(self.history):
                self._frames.append(fr)
        else:
            self._frames.append(fr)
        return np.concatenate(list(self._frames)).astype(np.float32)


# --------------------------------------------------------------------------- actions


def action_sizes(action: Mapping[str, Any]) -> list[int]:
    """The sizes of the action's parts, in order (the ``MultiDiscrete`` of the RL environment): per stage the
    number of rate levels, then the number of variants when the stage has more than one."""
    n = len(action["values"])
    out = []
    for st in action["stages"]:
        out.append(n)
        if len(st["variants"]) > 1:
            out.append(len(st["variants"]))
    return out


def greedy_indices(scores: np.ndarray, action: Mapping[str, Any]) -> list[int]:
    """Each part's argmax of the module's concatenated scores."""
    out, i = [], 0
    for n in action_sizes(action):
        out.append(int(np.argmax(scores[i:i + n])))
        i += n
    return out


def pipeline_decisions(indices: Sequence[int], pobs, action: Mapping[str, Any],
                       recommendations: Sequence[Sequence]) -> tuple[list[StageDecision], list[list]]:
    """The stages' decisions for the action parts ``indices`` (module docstring) and the stages' new
    scale-down histories (``recommendations[k]``: stage k's, empty after a reset)."""
    vals = action["values"]
    window = action.get("scale_down_window_s", 0)
    out, recs, i = [], [], 0
    for k, st in enumerate(action["stages"]):
        u = int(indices[i])
        i += 1
        variant = None
        if len(st["variants"]) > 1:
            variant = st["variants"][int(indices[i])]
            i += 1
        cap = st["capacity_rps_per_replica"][variant if variant is not None else st["variants"][0]]
        mapping = {"kind": "rate", "values": vals, "capacity_rps_per_replica": cap, "scale_down_window_s": window}
        n, r = stabilized_action(u, pobs.stages[k], mapping, recommendations[k])
        out.append(StageDecision(n, variant))
        recs.append(r)
    return out, recs


# --------------------------------------------------------------------------- file format


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_pipeline_meta(meta: Any, where: str) -> dict:
    check_format(meta, where, FORMAT)
    for k in ("obs", "action", "interval_s"):
        if k not in meta:
            raise ConfigError(f"{where}: policy metadata lacks '{k}'")
    if not _number(meta["interval_s"]) or not meta["interval_s"] > 0:
        raise ConfigError(f"{where}: interval_s must be a number > 0 (got {meta['interval_s']!r})")
    act = meta["action"]
    shape = "{kind: rate, values: [u > 0...], stages: [{name, variants, capacity_rps_per_replica}, ...]}"
    if not isinstance(act, dict) or act.get("kind") != "rate" or not isinstance(act.get("values"), list) or \
            not act["values"] or not all(_number(v) and v > 0 for v in act["values"]) or \
            not isinstance(act.get("stages"), list) or not act["stages"]:
        raise ConfigError(f"{where}: a pipeline policy's action mapping must be {shape} (got {act!r})")
    w = act.get("scale_down_window_s", 0)
    if not valid_scale_down_window(w):
        raise ConfigError(f"{where}: action scale_down_window_s must be a number of seconds in "
                          f"0..{SCALE_DOWN_WINDOW_MAX_S} (got {w!r})")
    for k, st in enumerate(act["stages"]):
        ok = isinstance(st, dict) and isinstance(st.get("name"), str) and isinstance(st.get("variants"), list) \
            and st["variants"] and all(isinstance(v, str) for v in st["variants"]) \
            and len(set(st["variants"])) == len(st["variants"]) and isinstance(st.get("capacity_rps_per_replica"), dict) \
            and sorted(st["capacity_rps_per_replica"]) == sorted(st["variants"]) \
            and all(_number(c) and c > 0 for c in st["capacity_rps_per_replica"].values())
        if not ok:
            raise ConfigError(f"{where}: action stages[{k}] must be {{name, variants: [distinct names], "
                              f"capacity_rps_per_replica: {{variant: req/s > 0}}}} (got {st!r})")
    try:
        enc = PipelineObsEncoder(meta["obs"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{where}: bad pipeline observation spec ({e})") from None
    if enc.names != [s["name"] for s in act["stages"]] or enc.variants != [s["variants"] for s in act["stages"]]:
        raise ConfigError(f"{where}: the observation's stages / variants ({list(zip(enc.names, enc.variants))}) differ "
                          f"from the action mapping's")
    return meta


def save_pipeline_policy_file(module, meta: Mapping[str, Any], path: str) -> None:
    """Save a TorchScript ``module`` with its pipeline metadata to ``path`` (atomically)."""
    save_policy_file(module, meta, path, FORMAT, validate_pipeline_meta)


def load_pipeline_policy_file(path: str):
    """``(module, meta)`` from a pipeline policy file; ConfigError (one line) if missing, corrupt, of the other
    kind or with a module that does not map ``[1, obs_dim]`` to ``[1, sum(action_sizes)]``."""
    module, meta = read_policy_file(path)
    meta = validate_pipeline_meta(meta, f"autoscaler.path: {path}")
    check_module(module, PipelineObsEncoder(meta["obs"]).dim, sum(action_sizes(meta["action"])), path)
    return module, meta


def check_scenario(meta: Mapping[str, Any], sc, where: str) -> None:
    """ConfigError (one line) unless policy ``meta`` fits pipeline scenario ``sc`` (module docstring)."""
    if sc.pipeline is None:
        raise ConfigError(f"{where}: a pipeline policy needs a pipeline scenario (a pipeline: block)")
    mine = meta["action"]["stages"]
    theirs = sc.pipeline.stages
    names = [s["name"] for s in mine]
    if names != [st.name for st in theirs]:
        raise ConfigError(f"{where}: trained on another pipeline: stages {' -> '.join(names)}; the scenario has "
                          f"{' -> '.join(st.name for st in theirs)}")
    for s, st in zip(mine, theirs):
        have = [v.name for v in st.variants]
        lacking = [v for v in s["variants"] if v not in have]
        if lacking:
            raise ConfigError(f"{where}: stage {st.name!r}: the policy's action mapping names variant {lacking[0]!r}, "
                              f"which the scenario's stage lacks (it has {', '.join(have)})")
        if st.variant not in s["variants"]:
            raise ConfigError(f"{where}: stage {st.name!r} starts on variant {st.variant!r}, which the policy does "
                              f"not know ({', '.join(s['variants'])})")


# --------------------------------------------------------------------------- the policy


@register_pipeline
class PipelineLearnedPolicy(PolicyFile, PipelinePolicy):
    """Acts greedily with a TorchScript module from a pipeline ``policy.pt`` (module docstring)."""

    kind = "policy"

    def __init__(self, module, meta: Mapping[str, Any], path: str = ""):
        self._hold(module, meta, path)
        self.encoder = PipelineObsEncoder(meta["obs"])
        self.sizes = action_sizes(self.action)
        self.last_action: list[int] = []
        self.recommendations: list[list] = [[] for _ in self.action["stages"]]

    @classmethod
    def load(cls, path: str, sc=None) -> "PipelineLearnedPolicy":
        """The policy in ``path``; with ``sc``, checked against that scenario (:func:`check_scenario`)."""
        module, meta = load_pipeline_policy_file(path)
        if sc is not None:
            check_scenario(meta, sc, f"autoscaler.path: {path}")
        return cls(module, meta, path)

    def reset(self) -> None:
        self.encoder.reset()
        self.last_scores, self.last_action = (), []
        self.recommendations = [[] for _ in self.action["stages"]]

    def decide(self, obs) -> list[StageDecision]:
        s = checked_scores(self, obs, self.encoder.encode(obs), sum(self.sizes))
        idx = greedy_indices(s, self.action)
        self.last_scores, self.last_action = s.tolist(), idx
        out, self.recommendations = pipeline_decisions(idx, obs, self.action, self.recommendations)
        return out

    @classmethod
    def validate_params(cls, params: Mapping[str, Any], path: str) -> None:
        validate_policy_params(params, path, load_pipeline_policy_file)

    @classmethod
    def build(cls, params: Mapping[str, Any], sc) -> "PipelineLearnedPolicy":
        cls.validate_params(params, "autoscaler")
        return cls.load(params["path"], sc)


__all__ = ["E2E_FEATURES", "FORMAT", "PipelineLearnedPolicy", "PipelineObsEncoder", "STAGE_FEATURES", "action_sizes",
           "check_scenario", "default_pipeline_obs_spec", "greedy_indices", "load_pipeline_policy_file",
           "pipeline_decisions", "save_pipeline_policy_file", "validate_pipeline_meta"]
