"""Drift of the deployment: the perturbations ``rl.evaluate --perturb`` applies and the per-episode domain
randomisation of :mod:`rl.env`, both as multipliers on the scenario's terms.

A real cluster drifts from the calibration it was simulated with: the calibration notes measured the same
machine about 30 % slower on another day, and start-ups depend on image caches and node load. A policy
trained on one exact scenario learns its exact capacity; one trained on a family of scenarios around it
has to read the load it can serve from the latencies and queues it observes.

Keys (each a factor > 0, 1 = unchanged) -- :data:`PERTURB_KEYS`:

- ``service``: every per-batch service time (the whole distribution: ``s x X``);
- ``startup``: replica start-up delays;
- ``overhead``: the per-request time outside the server (client, network, load balancer);
- ``contention``: the node terms (``interference``, ``rate_contention``, ``rate_cores``); a scenario
  without node contention is unchanged.

:func:`perturb_scenario` applies factors; :func:`parse_perturb` reads ``service=1.3,startup=2``;
:func:`draw_factors` draws one episode's factors from the configured ranges (``env.randomize`` in
``configs/rl.yaml``, each ``[lo, hi]`` for a uniform draw); :func:`randomize_enabled` resolves
``enabled: auto`` (on for calibrated scenarios).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from simulator.config import ConfigError, Scenario

PERTURB_KEYS = {
    "service": "per-batch service times",
    "startup": "replica start-up delays",
    "overhead": "per-request overhead outside the server",
    "contention": "node contention terms (interference, rate_contention, rate_cores)",
}
# defaults of env.randomize: service times within the day-to-day drift the calibration notes measured on
# one machine (about 30 % slower), start-ups within 0.6-1.6x (image cache warm / cold), overhead and
# contention +-30-50 %; configs/rl.yaml repeats them
RANDOMIZE_DEFAULTS: dict[str, Any] = {"enabled": "auto", "service": [0.8, 1.3], "startup": [0.6, 1.6],
                                      "overhead": [0.7, 1.5], "contention": [0.7, 1.3]}


def _perturb_cluster(cl, f: Mapping[str, float]):
    if f["startup"] != 1.0:
        cl = dataclasses.replace(cl, startup=cl.startup.scaled(f["startup"]))
    if f["contention"] != 1.0:
        c = f["contention"]
        cl = dataclasses.replace(cl, interference=cl.interference * c, rate_contention=cl.rate_contention * c,
                                 rate_cores=cl.rate_cores * c)
    return cl


def _perturb_stage(st, f: Mapping[str, float]):
    """A pipeline stage drifted: every variant's service times and own start-up, the hop (its per-request
    time outside the server), the stage's cluster terms."""
    variants = tuple(dataclasses.replace(
        v, service=dataclasses.replace(v.service, per_batch=tuple((b, d.scaled(f["service"])) for b, d in v.service.per_batch)),
        startup=v.startup.scaled(f["startup"]) if v.startup is not None and f["startup"] != 1.0 else v.startup)
        for v in st.variants)
    return dataclasses.replace(st, variants=variants, hop=st.hop.scaled(f["overhead"]),
                               cluster=_perturb_cluster(st.cluster, f))


def perturb_scenario(sc: Scenario, factors: Mapping[str, float]) -> Scenario:
    """``sc`` with each term of :data:`PERTURB_KEYS` multiplied by its factor (missing keys: 1); a pipeline
    scenario's every stage (``overhead``: the stage's hop)."""
    bad = sorted(set(factors) - set(PERTURB_KEYS))
    if bad:
        raise ValueError(f"unknown perturbation {bad[0]!r}")
    f = {k: float(factors.get(k, 1.0)) for k in PERTURB_KEYS}
    if sc.pipeline is not None:
        return sc.replace(pipeline=dataclasses.replace(
            sc.pipeline, stages=tuple(_perturb_stage(st, f) for st in sc.pipeline.stages)))
    svc = sc.service
    if f["service"] != 1.0 or f["overhead"] != 1.0:
        svc = dataclasses.replace(svc, per_batch=tuple((b, d.scaled(f["service"])) for b, d in svc.per_batch),
                                  overhead=svc.overhead.scaled(f["overhead"]))
    return sc.replace(service=svc, cluster=_perturb_cluster(sc.cluster, f))


def parse_perturb(text: str | None, where: str = "--perturb") -> dict[str, float]:
    """``"service=1.3,startup=2"`` -> ``{"service": 1.3, "startup": 2.0}``; ConfigError (one line) on bad input."""
    out: dict[str, float] = {}
    if not text:
        return out
    allowed = ", ".join(PERTURB_KEYS)
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or k not in PERTURB_KEYS:
            raise ConfigError(f"{where}: {part!r}: expected KEY=FACTOR with KEY one of {allowed} "
                              f"(e.g. service=1.3,startup=2)")
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not (math.isfinite(x) and x > 0):
            raise ConfigError(f"{where}: {k}: the factor must be a number > 0 (got {v.strip()!r})")
        if k in out:
            raise ConfigError(f"{where}: {k}: given twice")
        out[k] = x
    return out


def perturb_label(factors: Mapping[str, float]) -> str:
    """``service x1.3, startup x2`` (or ``none``)."""
    return ", ".join(f"{k} x{v:g}" for k, v in factors.items() if v != 1.0) or "none"


def validate_randomize(d: Any, where: str = "env.randomize") -> dict:
    """The ``env.randomize`` block with defaults filled; ConfigError naming the field on bad input."""
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: must be a mapping with enabled and [lo, hi] ranges of {', '.join(PERTURB_KEYS)}")
    bad = sorted(set(d) - set(RANDOMIZE_DEFAULTS))
    if bad:
        raise ConfigError(f"{where}.{bad[0]}: unknown key; allowed: {', '.join(RANDOMIZE_DEFAULTS)}")
    out = dict(RANDOMIZE_DEFAULTS, **d)
    if out["enabled"] not in ("auto", True, False):
        raise ConfigError(f"{where}.enabled: must be auto, true or false (got {out['enabled']!r})")
    for k in PERTURB_KEYS:
        r = out[k]
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in r)
                and 0 < r[0] <= r[1]):
            raise ConfigError(f"{where}.{k}: must be [lo, hi] with 0 < lo <= hi (got {r!r})")
        out[k] = [float(r[0]), float(r[1])]
    return out


def is_calibrated(sc: Scenario) -> bool:
    """A scenario written by the calibration (``provenance.calibrated``), or a study built on one."""
    prov = sc.provenance or {}
    return bool(prov.get("calibrated")) or (sc.name or "").startswith("calibrated") or "study" in prov


def randomize_enabled(rnd: Mapping, sc: Scenario) -> bool:
    """``enabled``: true / false as given; ``auto`` = on for calibrated scenarios (:func:`is_calibrated`)."""
    return is_calibrated(sc) if rnd["enabled"] == "auto" else bool(rnd["enabled"])


def draw_factors(rng: np.random.Generator, rnd: Mapping) -> dict[str, float]:
    """One episode's factors: each key uniform on its ``[lo, hi]`` (drawn in :data:`PERTURB_KEYS` order)."""
    return {k: float(rng.uniform(*rnd[k])) for k in PERTURB_KEYS}


__all__ = ["PERTURB_KEYS", "RANDOMIZE_DEFAULTS", "draw_factors", "is_calibrated", "parse_perturb",
           "perturb_label", "perturb_scenario", "randomize_enabled", "validate_randomize"]
