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
  ``replicas_ready``, ``replicas_pending`` (starting). During a rolling update to another serving
  configuration (:mod:`simulator.variants`) ``replicas`` counts the new configuration's only (the
  Deployment's ``spec.replicas``), while old replicas that still serve count in ``replicas_ready``.
- ``failures``: rejected + timed-out requests in the interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

from simulator.schema import check_keys, number


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


@dataclass(frozen=True)
class AutoscalerSpec:
    """A policy and its control interval: the one carrier used by the simulator (a scenario's ``autoscaler:``
    block), the baselines and the evaluation (``rl``), the validation and the real controller (``cluster``).

    ``kind`` selects a policy from :data:`REGISTRY`; ``params`` holds its kind-specific keys (validated by
    the policy's own ``from_params``); :func:`make_policy` builds the policy object. A learned policy's
    spec is :meth:`simulator.learned.LearnedPolicy.spec` (``kind: policy``, the interval it was trained at)."""

    kind: str = "static"
    interval_s: float = 15.0
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "interval_s": self.interval_s, **dict(self.params)}


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
        check_keys(params, {"replicas"}, path)
        return cls(number(params, "replicas", path, None, lo=0, integer=True))


def make_policy(spec: AutoscalerSpec) -> Policy:
    """Build the policy named by an :class:`AutoscalerSpec`."""
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


class Answer(NamedTuple):
    """What a controller asks for after a policy answered: ``replicas``; ``held`` when the answer was not
    usable and the last decision was kept; ``reason`` says why (empty when the answer was used as is)."""

    replicas: int
    held: bool
    reason: str


def replicas_to_ask(answer: Any, last: int, lo: int, hi: int) -> Answer:
    """The one rule for a policy's answer, the same in the simulator (:meth:`simulator.engine.Simulation.step`)
    and on the real cluster (:meth:`cluster.controller.Controller.decide`).

    A finite number (bools excluded) is rounded and clamped to ``[lo, hi]`` (reason ``clamped X to n`` when
    that changed it). NaN, an infinity or anything that is not a number is not acted on: the controller
    holds its last decision ``last`` (clamped) and counts the interval as held -- what a real controller
    can do, since it cannot stop the deployment to report a bug.
    """
    bad = isinstance(answer, (bool, str, bytes)) or answer is None
    try:
        v = float(answer) if not bad else math.nan
    except (TypeError, ValueError):
        bad, v = True, math.nan
    if bad or not math.isfinite(v):
        held = int(min(max(int(last), lo), hi))
        return Answer(held, True, f"policy answer rejected: {answer!r} is not a finite number; holding {held}")
    n = int(min(max(round(v), lo), hi))
    return Answer(n, False, "" if v == n else f"clamped {answer!r} to {n}")


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

__all__ = ["AutoscalerSpec", "Observation", "Policy", "REGISTRY", "register", "StaticPolicy", "make_policy",
           "clamp_replicas", "replicas_to_ask", "Answer", "Callable"]
