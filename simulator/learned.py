"""Learned scaling policies from a ``policy.pt`` file (``autoscaler: {kind: policy, path: policy.pt}``).

``policy.pt`` is a TorchScript module saved by ``rl.train`` (or
:func:`save_policy_file`) with one extra file, ``servesim.json``, holding
everything needed to act -- no Ray, no gymnasium, no simulator internals:

- ``format``: ``"servesim-policy/1"``;
- ``obs``: the observation encoding (:class:`ObsEncoder`): per-frame feature
  names, fixed scales (a frame is ``features / scales`` clipped to
  ``[-clip, clip]``), the history length ``history`` (the input is the last
  ``history`` frames, oldest first; at the first decision after ``reset()``
  the history is filled with copies of the first frame),
  ``capacity_rps_per_replica`` used by the derived load features and
  ``forecast_s``, the horizon of the ``load_forecast`` feature (see
  :data:`DERIVED_DOC`);
- ``action``: ``{"kind": "delta", "values": [...]}`` (desired = current
  requested replicas + values[argmax]), ``{"kind": "target", "values":
  [...]}`` (desired = values[argmax]) or ``{"kind": "rate", "values": [u...],
  "capacity_rps_per_replica": c}`` (desired = ceil(arrival_rps / (c * u)):
  the policy picks the per-replica load level to provision for); any kind may add
  ``"scale_down_window_s": w`` (> 0): Kubernetes' scale-down stabilisation over
  the policy's raw answers of the last ``w`` seconds (:func:`stabilized_action`);
- ``interval_s``: the control interval it was trained at (a run at another
  interval is refused);
- ``scenario`` / ``training``: provenance (scenario name and hash, trace
  windows, algorithm, iterations, seed, git revision, ...).

The module maps a float32 tensor ``[1, obs_dim]`` to action scores
``[1, n_actions]``; the policy acts greedily (argmax). Non-finite scores or a
wrong output shape raise :class:`~simulator.config.ConfigError`.

The same :class:`ObsEncoder` builds the RL environment's observations
(``rl.env``), so training and deployment see identical inputs; the history
lives in the policy object, so it works the same on the real cluster.
"""
from __future__ import annotations

import io
import json
import math
import os
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from simulator.hpa import Recommendation, stabilize_recommendation
from simulator.policy import AutoscalerSpec, Observation, Policy, register
from simulator.schema import ConfigError, check_keys

FORMAT = "servesim-policy/1"
META_NAME = "servesim.json"
DERIVED = ("load_per_replica", "load_per_ready", "pending_frac", "arrival_trend", "load_forecast")
DERIVED_DOC = {
    "load_per_replica": "arrival_rps / (replicas x capacity)",
    "load_per_ready": "arrival_rps / (replicas_ready x capacity)",
    "pending_frac": "replicas_pending / replicas",
    "arrival_trend": "arrival_rps - the previous interval's arrival_rps (0 at the first decision)",
    "load_forecast": "the arrival rate forecast_s ahead (least-squares line through the last TREND_POINTS "
                     "intervals' rates, >= 0) / (replicas x capacity)",
}
TREND_POINTS = 4
OBS_SETS = ("basic", "extended")
ACTION_KINDS = ("delta", "target", "rate")


# --------------------------------------------------------------------------- observation encoding


def default_obs_spec(*, slo_ms: float, max_replicas: int, max_batch_size: int, interval_s: float,
                     capacity_rps_per_replica: float, history: int = 4, clip: float = 10.0,
                     features: str = "basic", forecast_s: float = 0.0) -> dict:
    """The fixed observation scales for a deployment (stored in ``policy.pt``).

    ``features``: ``basic`` -- the Observation's fields and the first three derived features;
    ``extended`` -- also ``arrival_trend`` and ``load_forecast`` (``forecast_s`` ahead)."""
    if features not in OBS_SETS:
        raise ValueError(f"observation features must be one of {', '.join(OBS_SETS)} (got {features!r})")
    rate = capacity_rps_per_replica * max_replicas
    scales = {
        "arrival_rps": rate, "completion_rps": rate,
        "latency_p50_ms": slo_ms, "latency_p95_ms": slo_ms, "latency_p99_ms": slo_ms,
        "slo_violation_frac": 1.0, "queue_ms": slo_ms, "batch_size": float(max_batch_size),
        "busy_fraction": 1.0, "inflight": float(max_batch_size * max_replicas),
        "replicas": float(max_replicas), "replicas_ready": float(max_replicas),
        "replicas_pending": float(max_replicas), "failures": max(1.0, rate * interval_s),
        "load_per_replica": 1.0, "load_per_ready": 1.0, "pending_frac": 1.0,
        "arrival_trend": float(capacity_rps_per_replica), "load_forecast": 1.0,
    }
    feats = list(Observation.FEATURES) + list(DERIVED[:3] if features == "basic" else DERIVED)
    return {"features": feats, "scales": [float(scales[f]) for f in feats], "history": int(history),
            "clip": float(clip), "capacity_rps_per_replica": float(capacity_rps_per_replica),
            "forecast_s": float(forecast_s)}


def linear_forecast(rates: Sequence[float], interval_s: float, ahead_s: float) -> float:
    """The rate ``ahead_s`` after the last of ``rates`` (one per ``interval_s``, oldest first) on their
    least-squares line, floored at 0; the last rate when there is only one."""
    y = np.asarray(rates, dtype=np.float64)
    if len(y) < 2:
        return float(max(y[-1], 0.0)) if len(y) else 0.0
    x = np.arange(len(y), dtype=np.float64) * interval_s
    xm, ym = x.mean(), y.mean()
    slope = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    return float(max(ym + slope * (x[-1] + ahead_s - xm), 0.0))


class ObsEncoder:
    """Observation -> normalised vector (last ``history`` frames, oldest first)."""

    def __init__(self, spec: Mapping[str, Any]):
        self.features = list(spec["features"])
        self.scales = np.asarray(spec["scales"], dtype=np.float64)
        self.history = int(spec["history"])
        self.clip = float(spec.get("clip", 10.0))
        self.capacity = float(spec["capacity_rps_per_replica"])
        self.forecast_s = float(spec.get("forecast_s", 0.0))
        known = set(Observation.FEATURES) | set(DERIVED)
        bad = [f for f in self.features if f not in known]
        if bad or len(self.scales) != len(self.features) or self.history < 1 or not np.all(self.scales > 0):
            raise ValueError(f"bad observation spec (unknown features {bad}, "
                             f"{len(self.scales)} scales for {len(self.features)} features, history {self.history})")
        self.frame_dim = len(self.features)
        self.dim = self.frame_dim * self.history
        self._frames: deque[np.ndarray] = deque(maxlen=self.history)
        self._rates: deque[float] = deque(maxlen=TREND_POINTS)

    def reset(self) -> None:
        self._frames.clear()
        self._rates.clear()

    def frame(self, obs: Observation, capacity: float | None = None) -> np.ndarray:
        """The normalised frame of ``obs`` (the arrival history of the trend features is advanced);
        ``capacity``: the per-replica capacity the load features divide by (default: the spec's; a pipeline
        stage passes its current variant's)."""
        cap = self.capacity if capacity is None else float(capacity)
        rate = float(obs.arrival_rps)
        rate = 0.0 if not math.isfinite(rate) else rate
        prev = self._rates[-1] if self._rates else rate
        self._rates.append(rate)
        raw = []
        for f in self.features:
            if f == "arrival_trend":
                v = rate - prev
            elif f == "load_forecast":
                v = linear_forecast(self._rates, float(obs.interval_s), self.forecast_s) / \
                    (max(obs.replicas, 1) * cap)
            elif f == "load_per_replica":
                v = obs.arrival_rps / (max(obs.replicas, 1) * cap)
            elif f == "load_per_ready":
                v = obs.arrival_rps / (max(obs.replicas_ready, 1) * cap)
            elif f == "pending_frac":
                v = obs.replicas_pending / max(obs.replicas, 1)
            else:
                v = getattr(obs, f)
            v = float(v)
            raw.append(0.0 if math.isnan(v) else v)
        x = np.asarray(raw) / self.scales
        return np.clip(x, -self.clip, self.clip)

    def encode(self, obs: Observation) -> np.ndarray:
        fr = self.frame(obs)
        if not self._frames:
            for _ in range(self.history):
                self._frames.append(fr)
        else:
            self._frames.append(fr)
        return np.concatenate(list(self._frames)).astype(np.float32)


def apply_action(index: int, obs: Observation, action: Mapping[str, Any]) -> int:
    """Desired replicas for action ``index`` under the stored action mapping (clamped)."""
    vals = action["values"]
    if action["kind"] == "delta":
        n = int(obs.replicas) + int(vals[index])
    elif action["kind"] == "rate":
        rate = float(obs.arrival_rps)
        rate = 0.0 if not math.isfinite(rate) else rate
        n = math.ceil(round(rate / (float(action["capacity_rps_per_replica"]) * float(vals[index])), 9))
    else:
        n = int(vals[index])
    return int(min(max(n, obs.min_replicas), obs.max_replicas))


SCALE_DOWN_WINDOW_MAX_S = 3600


def valid_scale_down_window(w: Any) -> bool:
    """An action mapping's ``scale_down_window_s``: a number of seconds in 0..``SCALE_DOWN_WINDOW_MAX_S``
    (0 = off)."""
    return not isinstance(w, bool) and isinstance(w, (int, float)) and 0 <= w <= SCALE_DOWN_WINDOW_MAX_S


def stabilized_action(index: int, obs: Observation, action: Mapping[str, Any],
                      recommendations: Sequence[Recommendation]) -> tuple[int, list[Recommendation]]:
    """:func:`apply_action`, then, when the mapping has ``scale_down_window_s`` > 0, Kubernetes' scale-down
    stabilisation (:func:`simulator.hpa.stabilize_recommendation`, scale-up window 0): the count never falls
    below the highest of this interval's and the last ``scale_down_window_s`` seconds' raw answers, so a
    policy holds its replicas through a dip the way an HPA does. Returns (desired, the new history); the
    caller keeps the history (one per policy or environment, emptied on reset)."""
    raw = apply_action(index, obs, action)
    window = float(action.get("scale_down_window_s") or 0.0)
    if window <= 0:
        return raw, list(recommendations)
    n, recs = stabilize_recommendation(recommendations, float(obs.time_s), int(obs.replicas), raw, 0.0, window)
    return int(min(max(n, obs.min_replicas), obs.max_replicas)), recs


# --------------------------------------------------------------------------- file format


PIPELINE_FORMAT = "servesim-pipeline-policy/1"    # simulator.pipeline_learned


def check_format(meta: Any, where: str, expected: str) -> None:
    """ConfigError (one line) unless ``meta`` is policy metadata of format ``expected``; a policy of the other
    kind (single model / pipeline) is named as such."""
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt == expected:
        return
    if fmt == PIPELINE_FORMAT:
        raise ConfigError(f"{where}: a pipeline policy (format {fmt!r}, trained on a pipeline scenario): use it as a "
                          "pipeline scenario's top-level autoscaler (python -m rl.pipeline_eval compares it)")
    if fmt == FORMAT:
        raise ConfigError(f"{where}: a single-model policy (format {fmt!r}): use it in a single-model scenario or "
                          "as one pipeline stage's own autoscaler, not as a pipeline's joint policy")
    raise ConfigError(f"{where}: not a servesim policy file (format {fmt!r}, expected {expected!r})")


def validate_meta(meta: Any, where: str) -> dict:
    check_format(meta, where, FORMAT)
    for k in ("obs", "action", "interval_s"):
        if k not in meta:
            raise ConfigError(f"{where}: policy metadata lacks '{k}'")
    act = meta["action"]
    if not isinstance(act, dict) or act.get("kind") not in ACTION_KINDS or \
            not isinstance(act.get("values"), list) or not act["values"]:
        raise ConfigError(f"{where}: action mapping must be {{kind: delta|target|rate, values: [...]}} (got {act!r})")
    w = act.get("scale_down_window_s", 0)
    if not valid_scale_down_window(w):
        raise ConfigError(f"{where}: action scale_down_window_s must be a number of seconds in "
                          f"0..{SCALE_DOWN_WINDOW_MAX_S} (got {w!r})")
    if act["kind"] == "rate" and not (isinstance(act.get("capacity_rps_per_replica"), (int, float))
                                      and act["capacity_rps_per_replica"] > 0 and all(
                isinstance(v, (int, float)) and v > 0 for v in act["values"])):
        raise ConfigError(f"{where}: action kind rate needs capacity_rps_per_replica > 0 and values > 0 (got {act!r})")
    try:
        ObsEncoder(meta["obs"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return meta


def write_policy_file(module, meta: Mapping[str, Any], path: str) -> None:
    """Save a TorchScript ``module`` (scripted if it is not one) with its (already validated) metadata to
    ``path``, atomically."""
    import torch
    if not isinstance(module, torch.jit.ScriptModule):
        module = torch.jit.script(module)
    tmp = path + ".tmp"
    torch.jit.save(module, tmp, _extra_files={META_NAME: json.dumps(meta, default=str)})
    os.replace(tmp, path)


def save_policy_file(module, meta: Mapping[str, Any], path: str, fmt: str = FORMAT, validate=None) -> None:
    """Save a TorchScript ``module`` with its metadata to ``path`` (atomically), as format ``fmt`` checked by
    ``validate(meta, where)`` (default: a single-model policy, :func:`validate_meta`)."""
    meta = dict(meta)
    meta["format"] = fmt
    (validate or validate_meta)(meta, path)
    write_policy_file(module, meta, path)


def read_policy_file(path: str):
    """``(module, metadata as stored)`` from a policy file of either kind; ConfigError (one line) if missing or
    not a TorchScript file with readable metadata."""
    if not isinstance(path, str) or not path:
        raise ConfigError("autoscaler.path: is required (a policy.pt file)")
    if not os.path.exists(path):
        raise ConfigError(f"autoscaler.path: {path}: file not found")
    try:
        import torch
    except ModuleNotFoundError:
        raise ConfigError("autoscaler.kind policy needs torch (pip install torch==2.13.0)") from None
    extra = {META_NAME: ""}
    try:
        with open(path, "rb") as f:
            buf = io.BytesIO(f.read())
        module = torch.jit.load(buf, map_location="cpu", _extra_files=extra)
    except Exception as e:  # torch raises RuntimeError/ValueError/zipfile errors for bad files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"autoscaler.path: {path}: not a TorchScript policy file ({msg[:200]})") from None
    try:
        meta = json.loads(extra[META_NAME] or "null")
    except json.JSONDecodeError:
        raise ConfigError(f"autoscaler.path: {path}: corrupt {META_NAME} metadata") from None
    module.eval()
    return module, meta


def check_module(module, dim: int, n_scores: int, path: str) -> None:
    """The smoke test of a loaded module: a ``[1, dim]`` zero input gives ``[1, n_scores]`` scores."""
    import torch
    try:
        with torch.no_grad():
            out = module(torch.zeros((1, dim), dtype=torch.float32))
    except Exception as e:
        raise ConfigError(f"autoscaler.path: {path}: module fails on a [1, {dim}] input "
                          f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})") from None
    if tuple(out.shape) != (1, n_scores):
        raise ConfigError(f"autoscaler.path: {path}: module output shape {tuple(out.shape)}, expected (1, {n_scores}) "
                          "(one score per action)")


def module_scores(module, x: np.ndarray) -> np.ndarray:
    """The module's scores for one encoded observation ``x`` (float64, flat)."""
    import torch
    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(1, -1))
    return out.detach().cpu().numpy().reshape(-1).astype(np.float64)


def checked_scores(policy, obs, x: np.ndarray, n: int) -> np.ndarray:
    """A learned policy's (``policy.module``, ``.interval_s``, ``.path``) scores for encoded observation ``x``
    of ``obs``, with the rules every learned policy answers by: ConfigError (one line) for an ``obs`` at another
    control interval than the policy was trained at, or scores that are not ``n`` finite numbers."""
    if abs(float(obs.interval_s) - policy.interval_s) > 1e-6:
        raise ConfigError(f"autoscaler: {policy.path or 'policy'} was trained with interval_s "
                          f"{policy.interval_s:g}; set autoscaler.interval_s: {policy.interval_s:g} "
                          f"(got {float(obs.interval_s):g})")
    s = module_scores(policy.module, x)
    if s.shape != (n,) or not np.all(np.isfinite(s)):
        raise ConfigError(f"autoscaler: {policy.path or 'policy'} produced invalid action scores {s.tolist()} "
                          f"(expected {n} finite numbers)")
    return s


def validate_policy_params(params: Mapping[str, Any], path: str, load) -> None:
    """A scenario's ``{path: policy.pt}`` block: the file loads with ``load`` (errors name ``path.path``)."""
    check_keys(params, {"path"}, path)
    p = params.get("path")
    if not isinstance(p, str) or not p:
        raise ConfigError(f"{path}.path: is required (a policy.pt file written by rl.train)")
    try:
        load(p)
    except ConfigError as e:
        raise ConfigError(str(e).replace("autoscaler.path", f"{path}.path", 1)) from None


def load_policy_file(path: str):
    """``(module, meta)`` from a policy file; ConfigError if missing, corrupt or of the wrong format."""
    module, meta = read_policy_file(path)
    meta = validate_meta(meta, f"autoscaler.path: {path}")
    check_module(module, ObsEncoder(meta["obs"]).dim, len(meta["action"]["values"]), path)
    return module, meta


# --------------------------------------------------------------------------- the policy


class PolicyFile:
    """What a policy read from a ``policy.pt`` holds (a single model's, :class:`LearnedPolicy`, or a pipeline's,
    :class:`simulator.pipeline_learned.PipelineLearnedPolicy`): its module, metadata, file, action mapping and
    the interval it was trained at."""

    def _hold(self, module, meta: Mapping[str, Any], path: str) -> None:
        self.module = module
        self.meta = dict(meta)
        self.path = path
        self.action = meta["action"]
        self.interval_s = float(meta["interval_s"])
        self.last_scores: Sequence[float] = ()

    def spec(self) -> AutoscalerSpec:
        """This policy as the one carrier of a policy and its interval (the interval it was trained at): a
        scenario's ``autoscaler:`` block (a pipeline's top-level one for a pipeline policy)."""
        return AutoscalerSpec("policy", self.interval_s, {"path": os.path.abspath(self.path)} if self.path else {})


@register
class LearnedPolicy(PolicyFile, Policy):
    """Acts greedily with a TorchScript module from ``policy.pt``."""

    kind = "policy"

    def __init__(self, module, meta: Mapping[str, Any], path: str = ""):
        self._hold(module, meta, path)
        self.encoder = ObsEncoder(meta["obs"])
        self.last_action: int = -1
        self.recommendations: list[Recommendation] = []

    @classmethod
    def load(cls, path: str) -> "LearnedPolicy":
        module, meta = load_policy_file(path)
        return cls(module, meta, path)

    def reset(self) -> None:
        self.encoder.reset()
        self.last_scores, self.last_action = (), -1
        self.recommendations = []

    def scores(self, x: np.ndarray) -> np.ndarray:
        return module_scores(self.module, x)

    def decide(self, obs: Observation) -> int:
        s = checked_scores(self, obs, self.encoder.encode(obs), len(self.action["values"]))
        a = int(np.argmax(s))
        self.last_scores, self.last_action = s.tolist(), a
        n, self.recommendations = stabilized_action(a, obs, self.action, self.recommendations)
        return n

    @classmethod
    def validate_params(cls, params: Mapping[str, Any], path: str) -> None:
        validate_policy_params(params, path, load_policy_file)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "autoscaler") -> "LearnedPolicy":
        check_keys(params, {"path"}, path)
        p = params.get("path")
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{path}.path: is required (a policy.pt file written by rl.train)")
        module, meta = load_policy_file(p)
        return cls(module, meta, p)


__all__ = ["LearnedPolicy", "ObsEncoder", "apply_action", "stabilized_action", "default_obs_spec", "linear_forecast", "load_policy_file",
           "save_policy_file", "FORMAT", "DERIVED", "DERIVED_DOC", "OBS_SETS", "PIPELINE_FORMAT", "check_format",
           "PolicyFile", "check_module", "checked_scores", "module_scores", "read_policy_file", "validate_policy_params",
           "write_policy_file"]
