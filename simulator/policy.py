"""The scaling-policy interface, shared verbatim by the simulator and the real cluster.

Every ``interval_s`` the controller (simulated or real) builds an
:class:`Observation` from the metrics a real deployment exposes over the last
interval, calls ``policy.decide(obs)`` and asks the backend for that many
replicas (clamped to ``[min_replicas, max_replicas]`` by the caller). Nothing in
here may depend on simulator internals: the real-cluster controller
(``cluster/``) builds the same Observation from Triton's Prometheus counters
and client latencies.

Metric definitions (per interval ``[t - interval_s, t)``):

- ``arrival_rps``: requests sent by clients / interval_s.
- ``completion_rps``: successful responses / interval_s.
- ``latency_p50_ms`` ... ``p99``: client latency of requests completed in the
  interval (successes only); NaN when none completed.
- ``slo_violation_frac``: (completed with latency > slo_ms + failed) / (completed + failed).
- ``queue_ms``: Δ``nv_inference_queue_duration_us`` / Δ``nv_inference_request_success`` / 1000,
  i.e. mean time from arrival at Triton to the start of execution.
- ``batch_size``: Δ``nv_inference_count`` / Δ``nv_inference_exec_count`` (mean executed batch size).
- ``busy_fraction``: compute-busy time of all instances of ready replicas / (instances x ready x interval).
- ``inflight``: requests inside servers (queued + executing) at the end of the interval.
- ``replicas``: replicas currently requested (ready + starting, not draining);
  ``replicas_ready``, ``replicas_pending`` (starting).
- ``failures``: rejected + timed-out requests in the interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Mapping


@dataclass
class Observation:
    time_s: float
    interval_s: float
    arrival_rps: float
    completion_rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    slo_violation_frac: float
    queue_ms: float
    batch_size: float
    busy_fraction: float
    inflight: float
    replicas: int
    replicas_ready: int
    replicas_pending: int
    failures: int
    slo_ms: float
    min_replicas: int
    max_replicas: int

    # numeric feature order used by learned policies (RL); stable, append-only
    FEATURES: ClassVar[tuple[str, ...]] = (
        "arrival_rps", "completion_rps", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
        "slo_violation_frac", "queue_ms", "batch_size", "busy_fraction", "inflight",
        "replicas", "replicas_ready", "replicas_pending", "failures")

    def features(self) -> list[float]:
        """Numeric features in :attr:`FEATURES` order, NaN replaced by 0."""
        out = []
        for k in self.FEATURES:
            v = float(getattr(self, k))
            out.append(0.0 if math.isnan(v) else v)
        return out

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Policy:
    """Base class. Subclasses set ``kind`` and implement :meth:`decide`.

    ``decide`` returns the desired number of replicas (an int). Policies may keep
    state across calls (HPA keeps its recommendation history); :meth:`reset`
    clears it before a new run.
    """

    kind: ClassVar[str] = ""

    def reset(self) -> None:
        pass

    def decide(self, obs: Observation) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    # --- construction from the scenario's autoscaler block
    @classmethod
    def validate_params(cls, params: Mapping[str, Any], path: str) -> None:
        """Raise ``ConfigError`` naming ``path.key`` for bad kind-specific keys."""
        cls.from_params(params, path)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "autoscaler") -> "Policy":
        raise NotImplementedError


REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    REGISTRY[cls.kind] = cls
    return cls


@register
class StaticPolicy(Policy):
    """Keeps the replica count it is given (``replicas``; default: the cluster's initial count)."""

    kind = "static"

    def __init__(self, replicas: int | None = None):
        self.replicas = replicas

    def decide(self, obs: Observation) -> int:
        return obs.replicas if self.replicas is None else self.replicas

    @classmethod
    def from_params(cls, params, path="autoscaler"):
        from simulator.config import _check_keys, _num
        _check_keys(params, {"replicas"}, path)
        return cls(_num(params, "replicas", path, None, lo=0, integer=True))


def make_policy(spec) -> Policy:
    """Build the policy named by an :class:`~simulator.config.AutoscalerSpec`."""
    return REGISTRY[spec.kind].from_params(spec.params, "autoscaler")


def clamp_replicas(desired: Any, lo: int, hi: int) -> int:
    """Clamp a policy's answer to ``[lo, hi]``; NaN/inf/non-numbers raise ValueError."""
    try:
        v = float(desired)
    except (TypeError, ValueError):
        raise ValueError(f"policy returned a non-number: {desired!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"policy returned {desired!r}")
    return int(min(max(round(v), lo), hi))


# Policies living in other modules register themselves on import.
def _load_builtin() -> None:
    import importlib
    for mod in ("simulator.hpa", "simulator.knative", "simulator.learned", "simulator.predictive"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # module not written yet / optional
            if e.name != mod:
                raise


_load_builtin()

__all__ = ["Observation", "Policy", "REGISTRY", "register", "StaticPolicy", "make_policy",
           "clamp_replicas", "Callable"]
