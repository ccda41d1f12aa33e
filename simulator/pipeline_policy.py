"""Policies that configure a whole pipeline at once: one decision per stage per control interval.

A pipeline policy reads a :class:`simulator.pipeline.PipelineObservation` (every stage's own
:class:`~simulator.policy.Observation`, the end-to-end one, the stages' current variants and batch sizes) and
answers one :class:`StageDecision` per stage: a replica count (applied by the single-model rule
:func:`simulator.policy.replicas_to_ask`, so a bad number is held and counted exactly as for one model) and,
optionally, a variant and a maximum batch size (a change of either is a reconfiguration of that stage; an
unknown variant or a batch size outside the stage's range is not acted on: the stage keeps its
configuration and the answer is counted as held).

Kinds (:data:`PIPELINE_REGISTRY`, chosen by the pipeline scenario's top-level ``autoscaler.kind``):

- ``per_stage`` (the default when the scenario has no top-level ``autoscaler:``): each stage's own
  single-model policy (its ``autoscaler:`` block: HPA, KPA, ...) decides on its own observation -- what a
  Kubernetes user does today;
- ``ipa``: the IPA-style joint configurator (:mod:`simulator.ipa`);
- ``policy``: a learned pipeline policy from a ``policy.pt`` written by ``rl.train``
  (:mod:`simulator.pipeline_learned`; ``path:``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence


@dataclass(frozen=True)
class StageDecision:
    """One stage's answer: ``replicas`` (any number, as a single-model policy answers), and optionally the
    ``variant`` and ``max_batch_size`` to serve with (None: keep the current one)."""

    replicas: Any
    variant: str | None = None
    max_batch_size: int | None = None


class PipelinePolicy:
    """Base class: ``decide(obs) -> [StageDecision, ...]`` (one per stage, in stage order), ``reset()``.
    ``build(params, scenario)`` makes one for a pipeline scenario; ``validate_params(params, path)`` checks a
    scenario's block at load time (raising ``ConfigError`` naming ``path.key``)."""

    kind: ClassVar[str] = ""

    def reset(self) -> None:
        pass

    def decide(self, obs) -> Sequence[StageDecision]:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def validate_params(cls, params: Mapping[str, Any], path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def build(cls, params: Mapping[str, Any], sc) -> "PipelinePolicy":  # pragma: no cover - interface
        raise NotImplementedError


PIPELINE_REGISTRY: dict[str, type[PipelinePolicy]] = {}


def register_pipeline(cls: type[PipelinePolicy]) -> type[PipelinePolicy]:
    PIPELINE_REGISTRY[cls.kind] = cls
    return cls


@register_pipeline
class PerStagePolicy(PipelinePolicy):
    """Each stage's own single-model policy on its own observation (replicas only)."""

    kind = "per_stage"

    def __init__(self, policies: Sequence):
        self.policies = list(policies)

    def reset(self) -> None:
        for p in self.policies:
            p.reset()

    def decide(self, obs) -> list[StageDecision]:
        return [StageDecision(p.decide(o)) for p, o in zip(self.policies, obs.stages)]

    @classmethod
    def validate_params(cls, params, path):
        from simulator.schema import check_keys
        check_keys(params, set(), path)

    @classmethod
    def build(cls, params, sc) -> "PerStagePolicy":
        from simulator.policy import make_policy
        return cls([make_policy(st.autoscaler) for st in sc.pipeline.stages])


def make_pipeline_policy(sc) -> PipelinePolicy:
    """The policy a pipeline scenario names (its top-level ``autoscaler.kind``; ``per_stage`` by default)."""
    return PIPELINE_REGISTRY[sc.autoscaler.kind].build(sc.autoscaler.params, sc)


__all__ = ["PIPELINE_REGISTRY", "PerStagePolicy", "PipelinePolicy", "StageDecision", "make_pipeline_policy",
           "register_pipeline"]


# Pipeline policies living in other modules register themselves on import.
def _load_builtin() -> None:
    import importlib
    importlib.import_module("simulator.ipa")
    importlib.import_module("simulator.pipeline_learned")


_load_builtin()
