"""Serving configurations of one deployment, and the rolling update from one to another.

A **serving configuration** (:class:`ServingConfig`) is what a replica serves with: a service-time model
(a model variant's :class:`~simulator.config.ServiceSpec` per batch size) and the batcher's
``max_batch_size``, plus optionally its own start-up delay (a bigger variant may load more slowly). Every
replica of a :class:`~simulator.engine.Simulation` carries the index of its configuration and both data
planes serve its batches with that configuration's service table and max batch size.

Everything else is the deployment's and shared by all its configurations: the batcher's preferred sizes,
delay, instances, queue size and queue timeout (``sc.batching``), the per-request overhead outside the server
(``sc.service.overhead``, the hop; a configuration's own ``service.overhead`` is not used), the cluster and its
load balancer. A preferred batch size larger than a configuration's ``max_batch_size`` is ignored for replicas
of that configuration; with none left, ``max_batch_size`` is the only preferred size, as in Triton without
``preferred_batch_sizes`` (:mod:`simulator.batching` rule 3).

A change of configuration is a **rolling update** of a Kubernetes Deployment with ``maxSurge: 100%`` and
``maxUnavailable: 0`` (Kubernetes documentation, Workloads > Deployments > "Rolling Update Deployment", Max
Unavailable / Max Surge; the ``RollingUpdateDeployment`` API fields; the deployment controller's
``reconcileNewReplicaSet`` / ``reconcileOldReplicaSets`` in ``pkg/controller/deployment/rolling.go``):

- the new configuration's replicas are all requested at once (a surge of 100 % lets the new ReplicaSet reach
  the desired count immediately: ``NewRSNewReplicas`` = min(desired + surge - all pods, desired - new));
- replicas of an old configuration that are still starting are removed at once (they are not available,
  so removing them never lowers availability: ``cleanupUnhealthyReplicas``);
- old ready replicas keep serving, and drain as new ones become ready, so that the ready replicas never
  drop below the desired count (:func:`rolling_update_drains`); which old replica drains first follows the
  ReplicaSet's scale-down order (:mod:`simulator.engine`: most recently ready first).

Every replica that is not of the newest configuration is *old*: reconfiguring again during a roll (to a
third configuration, or back) makes the newest one the target, cancels whatever of the others is still
starting, and keeps draining every other ready replica by the same rule; replicas of the target that are
still there (going back to a configuration mid-roll) count as new ones. A replica count asked for during a
roll (:meth:`~simulator.engine.Simulation.scale_to`) is the new configuration's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from simulator.config import Dist, Scenario, ServiceSpec
from simulator.service import GRID_U, ServiceModel, build_service_model, quantile_function

DEFAULT_NAME = "default"


@dataclass(frozen=True)
class ServingConfig:
    """What a replica serves with: ``service`` (its per-batch compute times; its ``overhead`` is not used: the
    hop is the deployment's), ``max_batch_size`` (its batcher's largest batch) and ``startup`` (its start-up
    delay in seconds; ``None``: the deployment's ``cluster.startup_s``)."""

    name: str
    service: ServiceSpec
    max_batch_size: int
    startup: Dist | None = None


def default_config(sc: Scenario) -> ServingConfig:
    """The one configuration of a scenario run as it is: its service, its max batch size, its start-up delay."""
    return ServingConfig(DEFAULT_NAME, sc.service, sc.batching.max_batch_size, None)


def check_configs(configs: Sequence[ServingConfig], initial: int = 0) -> tuple[ServingConfig, ...]:
    """``configs`` as a tuple, or ValueError naming what is wrong: none given, not a ServingConfig, an empty or
    repeated name, a ``max_batch_size`` below 1, or an ``initial`` index out of range."""
    configs = tuple(configs)
    if not configs:
        raise ValueError("configs: give at least one serving configuration")
    seen = set()
    for i, c in enumerate(configs):
        if not isinstance(c, ServingConfig):
            raise ValueError(f"configs[{i}]: must be a ServingConfig (got {type(c).__name__})")
        if not isinstance(c.name, str) or not c.name:
            raise ValueError(f"configs[{i}].name: must be a non-empty string (got {c.name!r})")
        if c.name in seen:
            raise ValueError(f"configs[{i}].name: {c.name!r} is used twice; configuration names must be unique")
        seen.add(c.name)
        if isinstance(c.max_batch_size, bool) or not isinstance(c.max_batch_size, (int, np.integer)) \
                or c.max_batch_size < 1:
            raise ValueError(f"configs[{i}].max_batch_size ({c.name}): must be a whole number >= 1 "
                             f"(got {c.max_batch_size!r})")
    check_config_index(initial, configs)
    return configs


def check_config_index(index: int, configs: Sequence[ServingConfig]) -> int:
    """``index`` if it names one of ``configs``, else ValueError listing the allowed indices and names."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(configs):
        names = ", ".join(f"{i} ({c.name})" for i, c in enumerate(configs))
        raise ValueError(f"config: must be the index of a serving configuration, one of {names} (got {index!r})")
    return int(index)


def serving_models(sc: Scenario, configs: Sequence[ServingConfig]) -> list[ServiceModel]:
    """Each configuration's compiled service model (:func:`simulator.service.build_service_model` of its service
    up to its max batch size), all with the deployment's per-request overhead (``sc.service.overhead``)."""
    hop = quantile_function(sc.service.overhead, GRID_U)
    zero = bool(np.all(hop == 0))
    return [replace(build_service_model(c.service, c.max_batch_size), overhead=hop, overhead_zero=zero)
            for c in configs]


def rolling_update_drains(old_ready: int, new_ready: int, desired: int) -> int:
    """Old-configuration ready replicas to drain now, in a rolling update with maxSurge 100 %, maxUnavailable 0.

    Port of the scale-down bound of ``reconcileOldReplicaSets`` (kubernetes ``pkg/controller/deployment/
    rolling.go``): ``maxScaledDown = allPodsCount - minAvailable - newRSUnavailablePodCount`` with
    ``minAvailable = desired - maxUnavailable = desired``; old replicas still starting are already gone
    (removed at once), so all pods = ``old_ready + new``, the new ones not ready = ``new - new_ready``, and the
    bound is ``old_ready + new_ready - desired``, at most ``old_ready`` and at least 0. "maxUnavailable ...
    Once new Pods are ready, old ReplicaSet can be scaled down further ... ensuring that the total number of
    Pods available at all times during the update is at least" the desired count minus maxUnavailable
    (Kubernetes documentation, Deployments, Rolling Update Deployment). So each new replica that becomes ready
    lets one old one go, and a lower ``desired`` (a scale-down during the roll) drains old replicas first.
    """
    return max(0, min(old_ready, old_ready + new_ready - desired))


__all__ = ["ServingConfig", "DEFAULT_NAME", "default_config", "check_configs", "check_config_index",
           "serving_models", "rolling_update_drains"]
