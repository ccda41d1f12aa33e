"""The study design: the SLO, control interval, replica range and load a comparison of autoscalers runs at,
derived from the calibrated deployment by stated rules -- never figures tuned to one machine.

A deployment measured on a fast machine, the same machine on a slow day, or a user's GPU cluster differ by
factors; a fixed SLO or rate scale that is meaningful on one leaves every policy at one replica on another.
:func:`design_study` derives every figure from the calibrated scenario (and the measurement's record of what
the real stack served), records each value with its rule and inputs, and takes the user's values instead
where given (checked the same way). The rules, in order:

1. **Unloaded latency** -- :func:`simulator.capacity.unloaded_latency`: one replica at 5 % of its saturation
   rate (client latency, seeds pooled).
2. **SLO** -- ``slo_factor`` (default 2) x the unloaded p99, rounded up to 0.1 ms: room for as much queueing
   as the unloaded tail itself. A user's SLO must exceed the unloaded p99 (else one replica misses it idle).
3. **Fleet capacities** -- ``caps[n]``, the largest Poisson rate ``n`` replicas serve with at most
   ``slo_target`` (1 %) of requests over the SLO (:func:`simulator.capacity.fleet_capacities`), for ``n`` up
   to the scenario's ``max_replicas`` (what the measured cluster allows).
4. **Replica range** -- ``min_replicas`` from the scenario; ``max_replicas`` = what the node can hold: the
   largest ``n`` such that every replica up to ``n`` adds at least ``MIN_GAIN`` (25 %) of one replica's
   capacity (on a contended 2-core node the third replica adds almost nothing). ``min < max`` is required:
   otherwise there is nothing to autoscale.
5. **Control interval** -- the larger of (a) the time one replica at capacity takes to complete
   ``N_OBS`` (400) requests, so an interval's p99 rests on at least four requests beyond it, and (b) the
   median replica start-up (deciding again before the last decision's replicas can be ready tells the policy
   nothing new); rounded up to a whole second, within ``INTERVAL_BOUNDS`` (2..30 s).
6. **Trace scale** -- the rate factor that puts the busiest held-out evaluation window's p99 rate at
   ``target_util`` (default 0.8, from the RL config) x ``caps[max_replicas]``: the peaks need most of the
   range, the rest of the day less.
7. **Non-degenerate by design** -- at that scale, the share of seconds of each evaluation window whose load
   (5-s mean) needs more than ``min_replicas`` (by ``caps``) is recorded; at least one window must need more
   for ``MIN_SHARE`` (5 %) of its seconds, else the study is refused with a scale that would work.
8. **Validation load** -- the real-stack slice's p99 rate: ``target_util`` x ``caps[max_replicas]``, capped at
   the highest rate the measured stack was seen to serve (``provenance.stack.max_served_rps``, written by
   ``calibration.fit``): the validation never asks the real load generator for more than it delivered.

Every value, rule and input lands in ``study.json``, the deployment scenario's ``provenance.study`` (so every
downstream output that records its scenario records the study) and the console.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from rl.common import DEFAULTS, ROOT, resolve_path, select_windows, trace_scale_rule
from simulator.capacity import (SUGGESTED_SLO_FACTOR, fleet_capacities, replicas_needed, suggested_slo_ms,
                                unloaded_latency)
from simulator.config import AutoscalerSpec, ConfigError, Scenario

MIN_GAIN = 0.25
N_OBS = 400
INTERVAL_BOUNDS = (2.0, 30.0)
MIN_SHARE = 0.05
SMOOTH_S = 5


class StudyError(ConfigError):
    """No meaningful study can be designed from these inputs; the message says why and what would work."""


# --------------------------------------------------------------------------- the rules (pure functions)


def slo_rule(unloaded_p99_ms: float, factor: float = SUGGESTED_SLO_FACTOR) -> float:
    """Rule 2: ``factor`` x the unloaded p99, rounded up to 0.1 ms."""
    return suggested_slo_ms(unloaded_p99_ms, factor)


def node_max_replicas(caps, min_gain: float = MIN_GAIN) -> int:
    """Rule 4: the largest ``n`` such that each replica up to ``n`` adds >= ``min_gain`` x ``caps[0]``."""
    caps = np.asarray(caps, float)
    n = 1
    while n < len(caps) and caps[n] - caps[n - 1] >= min_gain * caps[0]:
        n += 1
    return n


def interval_rule(capacity_one_rps: float, startup_p50_s: float, n_obs: int = N_OBS,
                  bounds: tuple[float, float] = INTERVAL_BOUNDS) -> float:
    """Rule 5: ``max(n_obs / capacity, start-up median)``, rounded up to a whole second, within ``bounds``."""
    raw = max(n_obs / max(capacity_one_rps, 1e-9), startup_p50_s)
    return float(min(max(math.ceil(raw - 1e-9), bounds[0]), bounds[1]))


def smoothed_rates(rates: np.ndarray, smooth_s: int = SMOOTH_S) -> np.ndarray:
    """Forward ``smooth_s``-second mean of a per-second rate series (same length)."""
    r = np.asarray(rates, float)
    c = np.concatenate([[0.0], np.cumsum(r)])
    i = np.arange(len(r))
    hi = np.minimum(i + smooth_s, len(r))
    return (c[hi] - c[i]) / np.maximum(hi - i, 1)


def share_above_min(rates: np.ndarray, caps, min_replicas: int, smooth_s: int = SMOOTH_S) -> float:
    """Rule 7: share of seconds whose ``smooth_s``-s mean load needs more than ``min_replicas`` replicas."""
    if not len(rates):
        return 0.0
    need = replicas_needed(smoothed_rates(rates, smooth_s), caps)
    return float(np.mean(need > max(int(min_replicas), 1)))


def validation_peak_rule(capacity_at_max_rps: float, target_util: float,
                         stack_max_served_rps: float | None) -> tuple[float, str]:
    """Rule 8: ``target_util`` x ``caps[max]``, capped at what the measured stack was seen to serve."""
    peak = target_util * capacity_at_max_rps
    rule = f"{target_util:g} x {capacity_at_max_rps:.1f} rps (what max_replicas serve at the SLO)"
    if stack_max_served_rps and stack_max_served_rps > 0 and peak > stack_max_served_rps:
        return round(float(stack_max_served_rps), 2), (f"the highest rate the measured stack served "
                                                       f"({stack_max_served_rps:g} rps), below {rule}")
    return round(float(peak), 2), rule


# --------------------------------------------------------------------------- the study


@dataclass
class Study:
    slo_ms: float
    interval_s: float
    min_replicas: int
    max_replicas: int
    trace_scale: float
    target_util: float
    slo_target: float
    capacities_rps: list[float]                 # caps[n - 1], n = 1..the scenario's max_replicas
    unloaded: dict
    validation_peak_rps: float
    stack: dict
    windows: list[dict]
    rules: dict[str, str]
    given: dict[str, Any] = field(default_factory=dict)     # user overrides (these values are not derived)
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def capacity_one_rps(self) -> float:
        return self.capacities_rps[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Study":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def lines(self) -> list[str]:
        """What was derived, by which rule (the console / report form)."""
        def src(k):
            return "given" if k in self.given else "derived"
        caps = ", ".join(f"{n + 1}: {c:.1f}" for n, c in enumerate(self.capacities_rps))
        out = [f"unloaded latency (1 replica, {self.unloaded['rate_rps']:g} req/s): p50 {self.unloaded['p50_ms']:.1f} ms, "
               f"p99 {self.unloaded['p99_ms']:.1f} ms",
               f"SLO {self.slo_ms:g} ms ({src('slo_ms')}: {self.rules['slo_ms']})",
               f"fleet capacity at the SLO (<= {self.slo_target:.0%} late), req/s by replicas: {caps}",
               f"replicas {self.min_replicas}..{self.max_replicas} ({src('max_replicas')}: {self.rules['max_replicas']})",
               f"control interval {self.interval_s:g} s ({src('interval_s')}: {self.rules['interval_s']})",
               f"trace scale {self.trace_scale:g} ({src('trace_scale')}: {self.rules['trace_scale']})"]
        for w in self.windows:
            out.append(f"  window {w['pattern']:<12} p99 {w['p99_rps'] * self.trace_scale:7.1f} req/s, needs more than "
                       f"{self.min_replicas} replica(s) {w['share_above_min']:.0%} of the time")
        out.append(f"validation load p99 {self.validation_peak_rps:g} req/s ({self.rules['validation_peak_rps']})")
        return out

    def deployment(self, sc: Scenario, source: str = "") -> Scenario:
        """``sc`` with this study's SLO, control interval and replica range; the study in its provenance."""
        cl = dataclasses.replace(sc.cluster, min_replicas=self.min_replicas, max_replicas=self.max_replicas,
                                 replicas=int(min(max(sc.cluster.replicas, self.min_replicas), self.max_replicas)))
        prov = {"derived_from": source, "study": self.to_dict(),
                "calibration": {k: (sc.provenance or {}).get(k) for k in
                                ("source", "source_created", "calibrated", "command", "stack")}}
        name = f"{sc.name or 'calibrated'}:study"
        return sc.replace(name=name, slo_ms=self.slo_ms, cluster=cl,
                          autoscaler=AutoscalerSpec("static", float(self.interval_s), {}), provenance=prov)


def study_of(sc: Scenario) -> Study | None:
    """The study recorded in a deployment scenario's provenance (None for a scenario without one)."""
    d = (sc.provenance or {}).get("study")
    return Study.from_dict(d) if isinstance(d, Mapping) else None


def stack_record(sc: Scenario) -> dict:
    """What ``calibration.fit`` recorded of the measured stack (``max_served_rps`` and its rule), or {}."""
    prov = sc.provenance or {}
    st = prov.get("stack") or (prov.get("calibration") or {}).get("stack") or {}
    return dict(st) if isinstance(st, Mapping) else {}


def _given_positive(given: Mapping, key: str, flag: str, rules: dict) -> float | None:
    """The user's value of ``key`` (checked > 0, its rule recorded as given), or None to derive it."""
    if key not in given:
        return None
    v = float(given[key])
    if not (math.isfinite(v) and v > 0):
        raise StudyError(f"{flag}: must be > 0 (got {v:g})")
    rules[key] = f"given ({flag})"
    return v


def design_study(sc: Scenario, rates: np.ndarray, eval_days, *, slo_target: float = 0.01,
                 target_util: float | None = None,
                 slo_factor: float = SUGGESTED_SLO_FACTOR, given: Mapping[str, Any] | None = None,
                 capacity_duration_s: float = 300.0, capacity_seeds=(1, 2), window_length_s: int = 1200,
                 log: Callable[[str], None] = lambda m: None) -> Study:
    """Derive the study for ``sc`` from its calibration (module docstring); ``given`` holds user values of
    ``slo_ms``, ``interval_s``, ``min_replicas``, ``max_replicas``, ``trace_scale``; ``target_util`` defaults to
    the RL config's (``configs/rl.yaml``: 0.8)."""
    from simulator.service import build_service_model, quantile_function
    if target_util is None:
        target_util = float(DEFAULTS["trace"]["target_util"])
    given = {k: v for k, v in dict(given or {}).items() if v is not None}
    unknown = sorted(set(given) - {"slo_ms", "interval_s", "min_replicas", "max_replicas", "trace_scale"})
    if unknown:
        raise ValueError(f"design_study: unknown given value {unknown[0]}")
    if not 0 < target_util <= 1:
        raise StudyError(f"target_util: must be in (0, 1] (got {target_util:g})")
    model = build_service_model(sc.service, sc.batching.max_batch_size)
    rules: dict[str, str] = {}
    # 1-2. unloaded latency and the SLO
    log("study: unloaded latency of one replica ...")
    ul = unloaded_latency(sc, model=model)
    if "slo_ms" in given:
        slo = float(given["slo_ms"])
        if not slo > ul["p99_ms"]:
            raise StudyError(f"--slo-ms {slo:g}: not above the calibrated unloaded p99 ({ul['p99_ms']:.1f} ms at "
                             f"{ul['rate_rps']:g} req/s on one replica): every replica misses it idle; the rule gives "
                             f"{slo_rule(ul['p99_ms'], slo_factor):g} ms")
        rules["slo_ms"] = "given (--slo-ms)"
    else:
        slo = slo_rule(ul["p99_ms"], slo_factor)
        rules["slo_ms"] = f"{slo_factor:g} x the unloaded p99 {ul['p99_ms']:.2f} ms, rounded up to 0.1 ms"
    sc_s = sc.replace(slo_ms=slo)
    # 3-4. capacities and the replica range
    bound = max(int(sc.cluster.max_replicas), int(given.get("max_replicas") or 0))
    log(f"study: fleet capacity at SLO {slo:g} ms for 1..{bound} replicas ...")
    caps = fleet_capacities(sc_s, bound, slo_target, duration_s=capacity_duration_s, seeds=capacity_seeds,
                            model=model)
    mn = int(given.get("min_replicas", max(sc.cluster.min_replicas, 1)))
    if "max_replicas" in given:
        mx = int(given["max_replicas"])
        rules["max_replicas"] = "given (--max-replicas)"
    else:
        mx = node_max_replicas(caps)
        rules["max_replicas"] = (f"the largest n <= {bound} (the scenario's max_replicas) where every replica up to n "
                                 f"adds >= {MIN_GAIN:.0%} of one replica's {caps[0]:.1f} req/s")
    if mn < 1:
        raise StudyError(f"--min-replicas: must be >= 1 (got {mn})")
    if not mn < mx:
        raise StudyError(f"replicas {mn}..{mx}: nothing to autoscale (at SLO {slo:g} ms the node serves "
                         + ", ".join(f"{c:.1f}" for c in caps) + " req/s with 1.." + str(len(caps))
                         + " replicas; each replica past the first adds less than "
                         f"{MIN_GAIN:.0%} of one replica's capacity); give --max-replicas to force a range")
    # 5. control interval
    st50 = float(quantile_function(sc.cluster.startup, np.array([0.5]))[0]) if sc.cluster.startup.mean_value > 0 \
        else 0.0
    interval = _given_positive(given, "interval_s", "--interval", rules)
    if interval is None:
        interval = interval_rule(caps[0], st50)
        rules["interval_s"] = (f"max({N_OBS} requests / {caps[0]:.1f} req/s = {N_OBS / caps[0]:.2f} s, start-up "
                               f"median {st50:.2f} s), rounded up to a whole second, within "
                               f"{INTERVAL_BOUNDS[0]:g}..{INTERVAL_BOUNDS[1]:g} s")
    # 6-7. trace scale and the windows it makes
    wins = list(select_windows(rates, eval_days, length=window_length_s, what="trace.eval_days").values())
    p99s = [w["p99_rps"] for w in wins]
    cap_max = float(caps[mx - 1])
    scale = _given_positive(given, "trace_scale", "--scale", rules)
    if scale is None:
        scale = trace_scale_rule(p99s, cap_max, target_util)
        rules["trace_scale"] = (f"{target_util:g} x {cap_max:.1f} req/s ({mx} replicas at the SLO) / "
                                f"{max(p99s):.1f} rps (p99 of the busiest held-out window)")
    caps_range = caps[:mx]
    wdesc = []
    for w in wins:
        x = rates[w["start"]:w["start"] + w["length"]] * scale
        wdesc.append({"pattern": w["pattern"], "start": int(w["start"]), "length": int(w["length"]),
                      "mean_rps": float(w["mean_rps"]), "p99_rps": float(w["p99_rps"]),
                      "share_above_min": share_above_min(x, caps_range, mn)})
    best = max(wdesc, key=lambda w: w["share_above_min"])
    if best["share_above_min"] < MIN_SHARE:
        busiest = max(wins, key=lambda w: w["p99_rps"])
        sm = smoothed_rates(rates[busiest["start"]:busiest["start"] + busiest["length"]])
        q = float(np.quantile(sm, 1 - 2 * MIN_SHARE))
        need = math.ceil(caps_range[mn - 1] * 1.05 / max(q, 1e-9) * 1e4) / 1e4
        raise StudyError(f"trace scale {scale:g}: the held-out windows never need more than {mn} replica(s) for "
                         f"{MIN_SHARE:.0%} of their seconds (best: {best['pattern']} {best['share_above_min']:.1%}); "
                         f"a scale of at least {need:g} would (--scale)")
    # 8. the validation load
    stack = stack_record(sc)
    peak, prule = validation_peak_rule(cap_max, target_util, stack.get("max_served_rps"))
    rules["validation_peak_rps"] = prule
    return Study(slo_ms=float(slo), interval_s=float(interval), min_replicas=mn, max_replicas=mx,
                 trace_scale=float(scale), target_util=float(target_util), slo_target=float(slo_target),
                 capacities_rps=[round(float(c), 3) for c in caps], unloaded=ul, validation_peak_rps=peak,
                 stack=stack, windows=wdesc, rules=rules, given=dict(given),
                 inputs={"scenario": sc.name, "slo_factor": slo_factor, "startup_p50_s": round(st50, 3),
                         "eval_days": list(eval_days), "capacity_sim": {"duration_s": capacity_duration_s,
                                                                        "seeds": list(capacity_seeds)},
                         "min_gain": MIN_GAIN, "n_obs": N_OBS, "min_share": MIN_SHARE})


__all__ = ["MIN_GAIN", "MIN_SHARE", "N_OBS", "Study", "StudyError", "design_study", "interval_rule",
           "node_max_replicas", "share_above_min", "slo_rule", "smoothed_rates", "stack_record", "study_of",
           "trace_scale_rule", "validation_peak_rule", "write_study_files"]


def write_study_files(study: Study, sc: Scenario, rl_raw: Mapping, out_dir, source: str = "") -> dict:
    """Write the study as files the standalone commands take: ``deployment.yaml`` (``sc`` at the study's SLO,
    interval and range, the study in ``provenance.study``), ``rl.yaml`` (``rl_raw`` -- a ``configs/rl.yaml``-style
    dict -- with that scenario and the study's trace scale) and ``study.json``. A file whose content did not
    change is left untouched (its time too, so the pipeline's later steps stay done). Returns the paths."""
    import json
    import os
    from pathlib import Path

    import yaml

    from simulator.config import load_scenario
    from simulator.io import jsonable
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def put(name: str, text: str) -> Path:
        p = out / name
        if p.exists() and p.read_text() == text:
            return p
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, p)
        return p

    dep = study.deployment(sc, source=source)
    head = ("# Deployment scenario of a study (rl.study): the calibrated scenario at SLO "
            f"{study.slo_ms:g} ms, replicas {study.min_replicas}..{study.max_replicas},\n# control interval "
            f"{study.interval_s:g} s; every rule and input in provenance.study.\n")
    p_dep = put("deployment.yaml", head + yaml.safe_dump(dep.to_dict(), sort_keys=False))
    load_scenario(str(p_dep))                      # it must load
    raw = {k: v for k, v in dict(rl_raw).items()}
    tr = dict(raw.get("trace") or {})
    tpath = resolve_path(tr.get("path", ""))
    raw["scenario"] = "deployment.yaml"
    raw["trace"] = dict(tr, path=os.path.relpath(tpath, ROOT) if tpath.startswith(ROOT + os.sep) else tpath,
                        scale=study.trace_scale, target_util=study.target_util)
    raw["slo_target"] = study.slo_target
    p_rl = put("rl.yaml", "# RL config of a study (rl.study): the base RL config with this deployment and the\n"
                          f"# derived trace scale ({study.rules['trace_scale']}).\n" + yaml.safe_dump(raw, sort_keys=False))
    p_js = put("study.json", json.dumps(jsonable(dict(study.to_dict(), deployment=str(p_dep), rl_config=str(p_rl),
                                                      calibrated=source)), indent=2))
    return {"deployment": p_dep, "rl_config": p_rl, "study": p_js}
