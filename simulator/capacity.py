"""What a deployment serves, found by simulating it: unloaded latency and fleet capacity at an SLO.

These figures depend on the machine a scenario was calibrated on, so nothing in servesim hard-codes
them: every study, baseline and oracle asks these functions.

- :func:`saturation_rps` -- requests per second ``n`` replicas process when every instance runs full
  batches back to back (the best batch size's items per second; node contention ignored). An upper
  bound of any capacity, no simulation.
- :func:`unloaded_latency` -- client latency percentiles of **one** replica at a light Poisson load
  (``UNLOADED_UTIL`` = 5 % of its saturation rate), pooled over seeds: what a request costs when
  nothing queues. The floor under any SLO.
- :func:`fleet_capacity` -- the largest Poisson rate ``n`` static replicas serve together with
  ``slo_violation_rate <= violation_target``: bisection over simulations of the scenario's service,
  batching and node model (worst of ``seeds``), between the unloaded probe rate and the saturation
  rate. It never returns a search bound: if even the probe rate misses the target, the SLO is below
  what the deployment does unloaded, and :class:`CapacityError` names the SLO, the unloaded p99 and an
  SLO that would work (``SUGGESTED_SLO_FACTOR`` x the unloaded p99, the study rule of
  :mod:`rl.study`); if the target is still met at several times the saturation rate the service model
  is inconsistent, also an error.
- :func:`per_replica_capacity` -- ``fleet_capacity(sc, 1)``.
- :func:`node_coupled` -- whether replicas slow each other down (shared cores, request handling as
  CPU demand, rate contention): only then is ``fleet_capacity(n)`` less than ``n`` times one replica's.
- Pipelines: :func:`slo_shares` splits the end-to-end SLO between the stages in proportion to the unloaded
  path; :func:`stage_capacities` is each stage's per-replica capacity (starting variant) at its share,
  :func:`variant_capacities` the same for every variant of every stage.

Results are cached per (service, batching, SLO, node model, n, target, duration, seeds).
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from simulator.config import AutoscalerSpec, ConfigError, Scenario, WorkloadSpec
from simulator.service import saturation_rps  # noqa: F401  (public here too: the capacity vocabulary)

UNLOADED_UTIL = 0.05            # the unloaded probe: this fraction of one replica's saturation rate
UNLOADED_REQUESTS = 4000        # requests per seed of the unloaded probe
SUGGESTED_SLO_FACTOR = 2.0      # the study's default SLO: this multiple of the unloaded p99

_CACHE: dict[str, object] = {}


class CapacityError(ConfigError):
    """No rate meets the SLO target (or every rate does): the message says why and what would work."""


def _static(sc: Scenario, n: int, duration_s: float) -> Scenario:
    cl = dataclasses.replace(sc.cluster, replicas=n, min_replicas=n, max_replicas=max(n, 1))
    return sc.replace(duration_s=duration_s, warmup_s=min(30.0, duration_s / 5), record_requests=False,
                      cluster=cl, autoscaler=AutoscalerSpec("static", interval_s=duration_s / 4, params={}))


def _key(sc: Scenario, *extra) -> str:
    node = {k: v for k, v in sc.cluster.to_dict().items()
            if k not in ("replicas", "min_replicas", "max_replicas", "startup_s")}
    return json.dumps([sc.service.to_dict(), sc.batching.to_dict(), sc.slo_ms, node, *extra],
                      sort_keys=True, default=str)


def unloaded_latency(sc: Scenario, seeds=(1, 2), model=None) -> dict:
    """Latency percentiles (ms) of one replica at ``UNLOADED_UTIL`` of its saturation rate, seeds pooled."""
    key = _key(sc, "unloaded", list(seeds))
    if key in _CACHE:
        return dict(_CACHE[key])
    from simulator.engine import simulate
    from simulator.metrics import exact_quantiles
    from simulator.service import build_service_model
    model = model or build_service_model(sc.service, sc.batching.max_batch_size)
    rate = UNLOADED_UTIL * saturation_rps(sc, 1, model)
    dur = max(60.0, UNLOADED_REQUESTS / rate)
    base = _static(sc, 1, dur).replace(record_requests=True, warmup_s=min(10.0, dur / 10))
    lat = []
    for s in seeds:
        res = simulate(base.replace(seed=int(s), workload=WorkloadSpec(kind="poisson", rate_rps=rate)), model=model)
        r = res.records
        m = (r["arrival_s"] >= base.warmup_s) & (r["status"] == 0)
        lat.append((r["completion_s"][m] - r["arrival_s"][m]) * 1e3)
    x = np.concatenate(lat)
    p50, p95, p99 = exact_quantiles(x, (0.5, 0.95, 0.99))
    out = {"rate_rps": round(rate, 4), "requests": int(len(x)), "p50_ms": float(p50), "p95_ms": float(p95),
           "p99_ms": float(p99), "rule": f"one replica, Poisson at {UNLOADED_UTIL:g} x its saturation rate, "
                                         f"seeds {list(seeds)} pooled"}
    _CACHE[key] = out
    return dict(out)


def suggested_slo_ms(unloaded_p99_ms: float, factor: float = SUGGESTED_SLO_FACTOR) -> float:
    """``factor`` x the unloaded p99, rounded up to 0.1 ms (the study's default SLO rule)."""
    return math.ceil(factor * unloaded_p99_ms * 10.0) / 10.0


def fleet_capacity(sc: Scenario, replicas: int, violation_target: float = 0.01, duration_s: float = 300.0,
                   seeds=(1, 2), tol_rps: float = 0.5, rel_tol: float = 0.005, model=None) -> float:
    """Largest Poisson rate (rps) ``replicas`` static replicas serve with ``slo_violation_rate <= violation_target``.

    Bisection between the unloaded probe rate and the saturation rate (module docstring); the result is
    a rate that was simulated and met the target, never a bound of the search.
    """
    from simulator.engine import simulate
    from simulator.service import build_service_model
    n = int(replicas)
    if n < 1:
        raise ValueError("replicas must be >= 1")
    key = _key(sc, n, violation_target, duration_s, list(seeds), tol_rps, rel_tol)
    if key in _CACHE:
        return float(_CACHE[key])
    model = model or build_service_model(sc.service, sc.batching.max_batch_size)
    base = _static(sc, n, duration_s)

    def ok(rate: float) -> bool:
        for s in seeds:
            res = simulate(base.replace(seed=s, workload=WorkloadSpec(kind="poisson", rate_rps=rate)), model=model)
            if not (res.summary["slo_violation_rate"] <= violation_target):
                return False
        return True

    sat = saturation_rps(sc, n, model)
    lo = UNLOADED_UTIL * sat / n          # the unloaded probe of one replica, whatever n
    if not ok(lo):
        ul = unloaded_latency(sc, model=model)
        raise CapacityError(
            f"SLO {sc.slo_ms:g} ms: {n} replica(s) miss it for more than {violation_target:.2%} of requests even "
            f"unloaded ({lo:.3g} req/s); the calibrated unloaded p99 is {ul['p99_ms']:.1f} ms, so an SLO of "
            f"{suggested_slo_ms(ul['p99_ms']):g} ms ({SUGGESTED_SLO_FACTOR:g} x the unloaded p99) would work "
            f"(--slo-ms / slo_ms)")
    hi = 1.25 * sat
    grow = 0
    while ok(hi):
        grow += 1
        if grow > 3:
            raise CapacityError(
                f"SLO {sc.slo_ms:g} ms: {n} replica(s) meet it even at {hi:.4g} req/s, {hi / sat:.0f}x what they "
                f"can process with full batches ({sat:.4g} req/s): the service model or queue settings are "
                f"inconsistent")
        lo, hi = hi, 2 * hi
    while hi - lo > max(tol_rps, rel_tol * lo):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    _CACHE[key] = lo
    return float(lo)


def per_replica_capacity(sc: Scenario, violation_target: float = 0.01, duration_s: float = 300.0, seeds=(1, 2),
                         tol_rps: float = 0.5, model=None) -> float:
    """Largest Poisson rate one replica serves within the SLO target (:func:`fleet_capacity` with 1)."""
    return fleet_capacity(sc, 1, violation_target, duration_s, seeds, tol_rps, model=model)


def node_coupled(sc: Scenario) -> bool:
    """True when replicas slow each other down in ``sc`` (shared-core interference or rate contention)."""
    c = sc.cluster
    return (c.interference > 0 and c.node_cores < c.max_replicas) or c.rate_contention > 0 or c.rate_cores > 0


def fleet_capacities(sc: Scenario, max_replicas: int, violation_target: float = 0.01, duration_s: float = 300.0,
                     seeds=(1, 2), model=None) -> np.ndarray:
    """``caps[n - 1]`` = :func:`fleet_capacity` of ``n`` = 1..max_replicas (``n`` x one replica when not
    :func:`node_coupled`), made non-decreasing (more replicas never serve less)."""
    one = fleet_capacity(sc, 1, violation_target, duration_s, seeds, model=model)
    probe = sc.replace(cluster=dataclasses.replace(sc.cluster, max_replicas=max(int(max_replicas), 1)))
    if not node_coupled(probe):
        return np.array([n * one for n in range(1, int(max_replicas) + 1)], float)
    caps = [one] + [fleet_capacity(sc, n, violation_target, duration_s, seeds, model=model)
                    for n in range(2, int(max_replicas) + 1)]
    return np.maximum.accumulate(np.asarray(caps, float))


def replicas_needed(rates, caps) -> np.ndarray:
    """Smallest ``n`` whose ``caps[n - 1]`` covers each rate (``len(caps)`` where none does)."""
    caps = np.maximum.accumulate(np.asarray(caps, float))
    n = np.searchsorted(np.round(caps, 9), np.round(np.asarray(rates, float), 9), side="left") + 1
    return np.minimum(n, len(caps))


# --------------------------------------------------------------------------- pipelines


def with_variants(sc: Scenario, variants) -> Scenario:
    """Pipeline scenario ``sc`` with stage ``k`` starting on variant ``variants[k]``."""
    stages = tuple(dataclasses.replace(st, variant=v) for st, v in zip(sc.pipeline.stages, variants))
    return sc.replace(pipeline=dataclasses.replace(sc.pipeline, stages=stages))


def slo_shares(sc: Scenario) -> list[float]:
    """Each stage's share of the end-to-end SLO: its starting variant's mean batch-1 compute + mean hop over
    the sum of those over the stages (the SLO split in proportion to the unloaded path)."""
    from simulator.service import build_service_model
    parts = []
    for st in sc.pipeline.stages:
        v = st.variants[st.variant_index(st.variant)]
        parts.append(build_service_model(v.service, st.batching.max_batch_size).mean_ms(1) + st.hop.mean_value)
    return [p / sum(parts) for p in parts]


def _stage_capacity(sc: Scenario, k: int, share: float, violation_target: float) -> float:
    from simulator.pipeline import stage_scenario
    ssc = stage_scenario(sc, k)
    return float(per_replica_capacity(ssc.replace(slo_ms=sc.slo_ms * share), violation_target=violation_target))


def stage_capacities(sc: Scenario, slo_target: float) -> list[float]:
    """Per stage, the largest Poisson rate one replica with its starting variant serves with at most
    ``slo_target`` of its requests over the stage's share of the SLO (:func:`slo_shares`), simulated
    (:func:`per_replica_capacity` on :func:`simulator.pipeline.stage_scenario`)."""
    return [_stage_capacity(sc, k, share, slo_target) for k, share in enumerate(slo_shares(sc))]


def variant_capacities(sc: Scenario, slo_target: float) -> list[dict[str, float]]:
    """Per stage, ``{variant: capacity}``: :func:`stage_capacities`'s rule for each variant of the stage, the
    other stages on their starting variants (so the stage's SLO share is that of the path with this variant:
    a slower variant gets a larger share). A stage's starting variant gets exactly its
    :func:`stage_capacities` figure."""
    start = [st.variant for st in sc.pipeline.stages]
    out = []
    for k, st in enumerate(sc.pipeline.stages):
        caps = {}
        for v in st.variants:
            s2 = with_variants(sc, start[:k] + [v.name] + start[k + 1:])
            caps[v.name] = _stage_capacity(s2, k, slo_shares(s2)[k], slo_target)
        out.append(caps)
    return out


__all__ = ["CapacityError", "SUGGESTED_SLO_FACTOR", "UNLOADED_UTIL", "fleet_capacities", "fleet_capacity",
           "node_coupled", "per_replica_capacity", "replicas_needed", "saturation_rps", "slo_shares",
           "stage_capacities", "suggested_slo_ms", "unloaded_latency", "variant_capacities", "with_variants"]
