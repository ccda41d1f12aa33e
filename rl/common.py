"""Shared pieces of the RL tooling: config loading, traces, windows, scenarios, reward.

Nothing here imports Ray; ``rl.env`` needs gymnasium, ``rl.train`` needs Ray.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
from typing import Any, Mapping

import numpy as np
import yaml

from simulator.io import jsonable, write_json  # noqa: F401  (re-exported)
from simulator.config import AutoscalerSpec, ConfigError, Scenario, WorkloadSpec, load_scenario
from simulator.workload import DAY_S, SHIPPED_TRACE, TRAIN_DAYS, day_range, load_trace  # noqa: F401  (re-exported)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "rl.yaml")

DEFAULTS: dict[str, Any] = {
    "scenario": "configs/rl_default.yaml",
    "trace": {"path": SHIPPED_TRACE, "train_days": list(TRAIN_DAYS),
              "tune_days": [11, 12], "eval_days": [13, 14], "scale": "auto", "target_util": 0.8},
    "slo_target": 0.01,
    "capacity_rps_per_replica": "auto",
    "env": {"episode_s": 600, "history": 4, "features": "extended",
            "action": {"kind": "rate", "values": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3], "scale_down_window_s": 60},
            "reward": {"cost_per_replica_s": 1.0, "lambda": 2.0, "clip": None},
            "randomize": {"enabled": "auto"}},
    "curriculum": {"synthetic_frac": 0.3, "scale_jitter": [0.75, 1.25],
                   "levels": [{"episodes": 0, "speedups": [1]}]},
    "training": {"algo": "ppo", "iterations": 30, "train_batch_size": 2000, "minibatch_size": 250,
                 "num_epochs": 8, "lr": 3e-4, "gamma": 0.97, "entropy_coeff": 0.005, "hidden": [64, 64]},
    "population": {"seeds": 5, "grid": {}, "snapshot_every": 3, "select_seed": 1000},
    # used when the scenario is a pipeline (a pipeline: block), ignored otherwise (resolve_pipeline)
    "pipeline": {"capacity_rps_per_replica": "auto", "replica_weight": 0.01, "accuracy_weight": "auto"},
}
# hyper-parameters a population's grid may vary (population.grid / rl.train --grid): training.* and the
# reward's lambda
GRID_KEYS = ("lr", "gamma", "entropy_coeff", "train_batch_size", "minibatch_size", "num_epochs", "lambda")


def resolve_path(p: str, base_dir: str | None = None) -> str:
    """A path: absolute as given; else relative to ``base_dir`` (a config file's folder) if it exists there,
    else as given if it exists (relative to the working directory), else relative to the project root."""
    if os.path.isabs(p):
        return p
    if base_dir and os.path.exists(os.path.join(base_dir, p)):
        return os.path.normpath(os.path.join(base_dir, p))
    if os.path.exists(p):
        return os.path.abspath(p)
    return os.path.normpath(os.path.join(ROOT, p))


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _drop_defaults(d, default):
    if isinstance(d, dict) and isinstance(default, dict):
        return {k: _drop_defaults(v, default.get(k)) for k, v in d.items() if k not in default or v != default[k]}
    return d


def scenario_hash(sc: Scenario) -> str:
    """Hash of the deployment (workload, seed, name, duration and provenance excluded).

    Keys still at their schema default are left out, so adding a new scenario key
    with a default value does not change the hash of existing scenarios.
    """
    d = _drop_defaults(sc.to_dict(), Scenario().to_dict())
    for k in ("workload", "seed", "name", "duration_s", "warmup_s", "record_requests", "provenance"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_rl_config(path: str | None = None, scenario: str | None = None, trace: str | None = None,
                   need_trace: bool = True, overrides: Mapping | None = None) -> dict:
    """Load ``configs/rl.yaml``-style settings; resolve the scenario, capacity and trace scale.

    Returns a plain (JSON-able) dict with extra resolved keys: ``scenario_path``,
    ``scenario_dict``, ``scenario_name``, ``scenario_hash``, ``interval_s``,
    ``capacity_rps_per_replica``, ``trace.path`` (absolute), ``trace.scale`` (a
    number), ``trace.scale_rule`` and ``trace.p99_rps`` (the p99 the auto scale used).
    """
    path = path or DEFAULT_CONFIG
    raw = {}
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"{path}: file not found")
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: top level must be a mapping")
        unknown = sorted(set(raw) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"{path}: {unknown[0]}: unknown key; allowed: {', '.join(sorted(DEFAULTS))}")
    cfg = _merge(_merge(DEFAULTS, raw), overrides or {})
    cfg["config_path"] = os.path.abspath(path) if path else None
    if scenario:
        cfg["scenario"] = scenario
    if trace:
        cfg["trace"]["path"] = trace
    scen_path = resolve_path(cfg["scenario"], os.path.dirname(os.path.abspath(path)) if path and not scenario else None)
    sc = load_scenario(scen_path)
    cfg["scenario_path"] = scen_path
    cfg["scenario_dict"] = sc.to_dict()
    cfg["scenario_name"] = sc.name or os.path.basename(scen_path)
    cfg["scenario_hash"] = scenario_hash(sc)
    cfg["interval_s"] = sc.autoscaler.interval_s
    # checks
    act = cfg["env"]["action"]
    if act.get("kind") == "target" and act.get("values") == "all":
        act["values"] = list(range(sc.cluster.min_replicas, sc.cluster.max_replicas + 1))
    if act.get("kind") not in ("delta", "target", "rate") or not isinstance(act.get("values"), list) or not act["values"]:
        raise ConfigError(f"{path}: env.action: must be {{kind: delta|target|rate, values: [...]}} (got {act!r})")
    from simulator.learned import SCALE_DOWN_WINDOW_MAX_S, valid_scale_down_window
    w = act.get("scale_down_window_s", 0)
    if not valid_scale_down_window(w):
        raise ConfigError(f"{path}: env.action.scale_down_window_s: must be seconds in 0..{SCALE_DOWN_WINDOW_MAX_S} "
                          f"(got {w!r})")
    for k in ("cost_per_replica_s", "lambda"):
        v = cfg["env"]["reward"].get(k)
        if not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{path}: env.reward.{k}: must be a number >= 0 (got {v!r})")
    clip = cfg["env"]["reward"].get("clip")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
        raise ConfigError(f"{path}: env.reward.clip: must be null or a number > 0 (got {clip!r})")
    from simulator.learned import OBS_SETS
    if cfg["env"].get("features") not in OBS_SETS:
        raise ConfigError(f"{path}: env.features: must be one of {', '.join(OBS_SETS)} "
                          f"(got {cfg['env'].get('features')!r})")
    from rl.drift import randomize_enabled, validate_randomize
    try:
        cfg["env"]["randomize"] = validate_randomize(cfg["env"].get("randomize"))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    cfg["env"]["randomize"]["active"] = randomize_enabled(cfg["env"]["randomize"], sc)
    cfg["population"] = validate_population(cfg["population"], path)
    if not 0 <= float(cfg["slo_target"]) < 1:
        raise ConfigError(f"{path}: slo_target: must be in [0, 1) (got {cfg['slo_target']!r})")
    ep = float(cfg["env"]["episode_s"])
    if ep < 2 * sc.autoscaler.interval_s:
        raise ConfigError(f"{path}: env.episode_s: must be >= 2 control intervals ({2 * sc.autoscaler.interval_s})")
    cfg["env"]["episode_s"] = math.floor(ep / sc.autoscaler.interval_s) * sc.autoscaler.interval_s
    if sc.pipeline is not None:
        return resolve_pipeline(cfg, sc, path, need_trace)
    cfg.pop("pipeline")
    cap = cfg["capacity_rps_per_replica"]
    if cap == "auto":
        from simulator.capacity import per_replica_capacity
        cfg["capacity_rps_per_replica"] = float(per_replica_capacity(sc, violation_target=float(cfg["slo_target"])))
    elif isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0:
        raise ConfigError(f"{path}: capacity_rps_per_replica: must be 'auto' or a number > 0 (got {cap!r})")
    else:
        cfg["capacity_rps_per_replica"] = float(cap)
    if act["kind"] == "rate":
        act["capacity_rps_per_replica"] = cfg["capacity_rps_per_replica"]
    _resolve_trace(cfg, path, need_trace, lambda rates, tr: auto_trace_scale(
        rates, tr["eval_days"], sc, float(cfg["slo_target"]), float(tr["target_util"])))
    return cfg


def _resolve_trace(cfg: dict, path: str, need_trace: bool, auto_scale) -> np.ndarray | None:
    """``cfg["trace"]``: the path made absolute, ``target_util`` checked, ``scale: auto`` resolved by
    ``auto_scale(rates, trace block) -> (scale, rule, p99)`` (None without the trace); returns the rates."""
    tr = cfg["trace"]
    tr["path"] = resolve_path(tr["path"])
    if not 0 < float(tr["target_util"]) <= 1:
        raise ConfigError(f"{path}: trace.target_util: must be in (0, 1] (got {tr['target_util']!r})")
    rates = None
    if need_trace:
        rates = load_trace(tr["path"])
        day_range(tr["train_days"], len(rates), "trace.train_days")
        if tr["scale"] == "auto":
            tr["scale"], tr["scale_rule"], tr["p99_rps"] = auto_scale(rates, tr)
    if tr["scale"] == "auto":
        tr["scale"] = None
    elif not isinstance(tr["scale"], (int, float)) or isinstance(tr["scale"], bool) or tr["scale"] <= 0:
        raise ConfigError(f"{path}: trace.scale: must be 'auto' or a number > 0 (got {tr['scale']!r})")
    else:
        tr.setdefault("scale_rule", "given (trace.scale)")
    return rates


def is_pipeline(cfg: Mapping) -> bool:
    """Settings resolved for a pipeline scenario (:func:`resolve_pipeline`)."""
    return cfg.get("pipeline") is not None


def require_single_model(cfg: Mapping, what: str) -> None:
    """ConfigError (one line) when ``cfg``'s scenario is a pipeline: ``what`` takes single-model scenarios."""
    if is_pipeline(cfg):
        raise ConfigError(f"{cfg['scenario_path']}: a pipeline scenario; {what} takes single-model scenarios "
                          "(pipelines: python -m rl.train trains, python -m rl.pipeline_eval compares)")


def _stage_capacities_given(given: Any, sc: Scenario, path: str) -> list[dict[str, float]]:
    """``pipeline.capacity_rps_per_replica`` given as ``{stage: {variant: req/s}}`` (``{stage: req/s}`` for a
    stage with one variant), every stage and variant named."""
    where = f"{path}: pipeline.capacity_rps_per_replica"
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where}: must be auto or {{stage: {{variant: req/s}}}} (got {given!r})")
    names = [st.name for st in sc.pipeline.stages]
    bad = sorted(set(given) - set(names))
    if bad:
        raise ConfigError(f"{where}.{bad[0]}: not a stage of the pipeline ({', '.join(names)})")
    out = []
    for st in sc.pipeline.stages:
        vs = [v.name for v in st.variants]
        g = given.get(st.name)
        if isinstance(g, (int, float)) and not isinstance(g, bool) and len(vs) == 1:
            g = {vs[0]: g}
        if not isinstance(g, Mapping) or sorted(g) != sorted(vs) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in g.values()):
            raise ConfigError(f"{where}.{st.name}: must give a number > 0 (req/s) for each of the stage's variants "
                              f"{', '.join(vs)} (got {g!r})")
        out.append({v: float(g[v]) for v in vs})
    return out


def resolve_pipeline(cfg: dict, sc: Scenario, path: str, need_trace: bool) -> dict:
    """The settings of a pipeline scenario (``cfg["pipeline"]``, resolved; :mod:`rl.pipeline_env`):

    - ``capacity_rps_per_replica``: per stage ``{variant: req/s}``, ``auto`` =
      :func:`simulator.capacity.variant_capacities` (each variant simulated at its stage's share of the SLO),
      or given; the rate action provisions with them, the observation scales by them;
    - the trace scale (``trace.scale: auto``): :func:`pipeline_trace_scale`'s rule on the evaluation days, the
      rule ``rl.pipeline_eval`` evaluates with (its capacities: the starting variants');
    - ``accuracy_weight`` (replica-seconds one unit of served accuracy is worth in the reward), ``auto`` =
      ``cost_per_replica_s / (replica_weight x mean rate of the training days)``: then an episode's return at
      that mean rate is IPA's objective ``accuracy - replica_weight x mean replicas`` (the one
      ``rl.pipeline_eval`` tunes by) up to a positive factor, less the violation penalty;
    - ``norm`` = interval x the sum of the stages' ``max_replicas`` (a step's reward is O(1)).

    Only the ``rate`` action: per stage ``ceil(stage arrival rate / (u x capacity of the chosen variant))``;
    ``env.action.stages`` records the mapping (stage names, variants, capacities)."""
    pl = cfg["pipeline"]
    bad = sorted(set(pl) - set(DEFAULTS["pipeline"]))
    if bad:
        raise ConfigError(f"{path}: pipeline.{bad[0]}: unknown key; allowed: {', '.join(DEFAULTS['pipeline'])}")
    act = cfg["env"]["action"]
    if act["kind"] != "rate":
        raise ConfigError(f"{path}: env.action.kind: a pipeline scenario takes the rate action only (got "
                          f"{act['kind']!r}; rl.train --action rate)")
    rw = pl.get("replica_weight")
    if isinstance(rw, bool) or not isinstance(rw, (int, float)) or not rw > 0:
        raise ConfigError(f"{path}: pipeline.replica_weight: must be a number > 0 (got {rw!r})")
    slo_t = float(cfg["slo_target"])
    if pl["capacity_rps_per_replica"] == "auto":
        from simulator.capacity import variant_capacities
        caps = variant_capacities(sc, slo_t)
        rule = (f"auto: per variant, the Poisson rate one replica serves with <= {slo_t:g} of its requests over "
                f"the stage's share of the {sc.slo_ms:g} ms SLO (simulator.capacity.variant_capacities)")
    else:
        caps = _stage_capacities_given(pl["capacity_rps_per_replica"], sc, path)
        rule = "given (pipeline.capacity_rps_per_replica)"
    stages = sc.pipeline.stages
    start = [c[st.variant] for c, st in zip(caps, stages)]
    act["stages"] = [{"name": st.name, "variants": [v.name for v in st.variants], "capacity_rps_per_replica": c}
                     for st, c in zip(stages, caps)]
    cfg["capacity_rps_per_replica"] = None
    rates = _resolve_trace(cfg, path, need_trace, lambda r, tr: pipeline_trace_scale(
        r, tr["eval_days"], sc, start, float(tr["target_util"])))
    aw = pl.get("accuracy_weight")
    cost = float(cfg["env"]["reward"]["cost_per_replica_s"])
    if aw == "auto":
        if rates is None or cfg["trace"]["scale"] is None:
            raise ConfigError(f"{path}: pipeline.accuracy_weight: auto needs the trace (the mean training rate); "
                              "give a number")
        a, b = day_range(cfg["trace"]["train_days"], len(rates), "trace.train_days")
        mean_rps = float(rates[a:b].mean()) * float(cfg["trace"]["scale"])
        aw = cost / (float(rw) * max(mean_rps, 1e-9))
        aw_rule = (f"auto: cost_per_replica_s {cost:g} / (replica_weight {rw:g} x {mean_rps:.2f} req/s, the mean "
                   f"rate of days {cfg['trace']['train_days']} at trace scale {cfg['trace']['scale']:.4f}) = {aw:.5g}")
    elif isinstance(aw, bool) or not isinstance(aw, (int, float)) or aw < 0:
        raise ConfigError(f"{path}: pipeline.accuracy_weight: must be auto or a number >= 0 (got {aw!r})")
    else:
        aw, aw_rule = float(aw), "given (pipeline.accuracy_weight)"
    cfg["pipeline"] = {"stages": [st.name for st in stages], "capacity_rps_per_replica": caps,
                       "capacity_rule": rule, "replica_weight": float(rw), "accuracy_weight": float(aw),
                       "accuracy_weight_rule": aw_rule,
                       "norm": float(sc.autoscaler.interval_s) * sum(st.cluster.max_replicas for st in stages)}
    return cfg


def trace_scale_rule(window_p99_rps, capacity_at_max_rps: float, target_util: float) -> float:
    """Rule 6 of the study (:mod:`rl.study`): scale so the busiest window's p99 rate is ``target_util`` x what ``max_replicas`` serve."""
    return round(target_util * capacity_at_max_rps / max(max(window_p99_rps), 1e-9), 4)


def validate_population(pop, path: str) -> dict:
    """The ``population`` block: ``seeds`` (>= 1), ``grid`` ({key in GRID_KEYS: [values...]}),
    ``snapshot_every`` (>= 1), ``select_seed`` (the tuning windows' simulation seed base)."""
    if not isinstance(pop, Mapping):
        raise ConfigError(f"{path}: population: must be a mapping (seeds, grid, snapshot_every, select_seed)")
    bad = sorted(set(pop) - set(DEFAULTS["population"]))
    if bad:
        raise ConfigError(f"{path}: population.{bad[0]}: unknown key; allowed: {', '.join(DEFAULTS['population'])}")
    for k in ("seeds", "snapshot_every", "select_seed"):
        v = pop.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "select_seed" else 1):
            raise ConfigError(f"{path}: population.{k}: must be a whole number >= "
                              f"{0 if k == 'select_seed' else 1} (got {v!r})")
    grid = pop.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"{path}: population.grid: must map {', '.join(GRID_KEYS)} to lists of values")
    out = {}
    for k, vals in grid.items():
        if k not in GRID_KEYS:
            raise ConfigError(f"{path}: population.grid.{k}: unknown key; allowed: {', '.join(GRID_KEYS)}")
        if not isinstance(vals, (list, tuple)) or not vals or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in vals):
            raise ConfigError(f"{path}: population.grid.{k}: must be a non-empty list of numbers > 0 (got {vals!r})")
        out[k] = list(vals)
    return dict(pop, grid=out)


def auto_trace_scale(rates: np.ndarray, days, sc: Scenario, slo_target: float,
                     target_util: float) -> tuple[float, str, float]:
    """``(scale, rule, p99)``: the study's trace-scale rule (:func:`trace_scale_rule`) on ``days``:
    the busiest 20-minute window's p99 rate x scale = ``target_util`` x what ``max_replicas`` serve at the SLO
    (:func:`simulator.capacity.fleet_capacities`; replicas sharing a node's cores serve less than n x one)."""
    from simulator.capacity import fleet_capacities
    caps = fleet_capacities(sc, sc.cluster.max_replicas, slo_target)
    wins = select_windows(rates, days, what="trace.eval_days")
    p99 = max(w["p99_rps"] for w in wins.values())
    scale = trace_scale_rule([p99], float(caps[-1]), target_util)
    rule = (f"auto: {target_util:g} x {caps[-1]:.1f} req/s ({sc.cluster.max_replicas} replicas at SLO "
            f"{sc.slo_ms:g} ms) / {p99:.1f} rps (p99 of the busiest 20-min window of days {list(days)})")
    return scale, rule, float(p99)


def pipeline_trace_scale(rates: np.ndarray, days, sc, caps, target_util: float) -> tuple[float, str, float]:
    """Rule: the p99 rate of the busiest 20-minute window of ``days``, scaled, is ``target_util`` x what the
    pipeline's bottleneck stage serves at its ``max_replicas`` (``caps``:
    :func:`simulator.capacity.stage_capacities`, x max replicas, minimum over stages). Returns (scale, the rule
    in words with its numbers, that p99)."""
    a, b = (days[0] - 1) * DAY_S, min(days[1] * DAY_S, len(rates))
    seg = rates[a:b]
    n = 1200
    p99 = max(float(np.percentile(seg[i:i + n], 99)) for i in range(0, max(1, len(seg) - n + 1), 300))
    cap = min(c * st.cluster.max_replicas for c, st in zip(caps, sc.pipeline.stages))
    scale = target_util * cap / p99
    rule = (f"{target_util:g} x {cap:.1f} req/s (what the bottleneck stage serves at max_replicas) / "
            f"{p99:.1f} rps (p99 of the busiest 20-min window of days {days[0]}-{days[1]}) = {scale:.4f}")
    return scale, rule, p99


def base_scenario(cfg: Mapping) -> Scenario:
    from simulator.config import scenario_from_dict
    return scenario_from_dict(cfg["scenario_dict"], source=cfg.get("scenario_path", ""))


# --------------------------------------------------------------------------- traces


PATTERNS = ("bursty", "steady_low", "steady_high", "fluctuating")


def window_stats(rates: np.ndarray, start: int, length: int) -> dict:
    x = rates[start:start + length]
    m10 = x[: len(x) // 10 * 10].reshape(-1, 10).mean(1)
    m60 = x[: len(x) // 60 * 60].reshape(-1, 60).mean(1)
    mean = float(x.mean())
    rise = fall = 0.0
    if len(m60) > 1:
        lo_before = np.minimum.accumulate(m60)
        hi_before = np.maximum.accumulate(m60)
        rise = float(np.max(m60 - lo_before))
        fall = float(np.max(hi_before - m60))
    med60 = max(float(np.median(m60)), 1e-9) if len(m60) else 1e-9
    return {"start": int(start), "length": int(length), "mean_rps": mean, "p99_rps": float(np.percentile(x, 99)),
            "max_rps": float(x.max()),
            # surge: peak 10-s mean after the first quarter / median 10-s mean of the first quarter
            "burst": float(m10[len(m10) // 4:].max() / max(np.median(m10[:max(1, len(m10) // 4)]), 1e-9))
            if len(m10) >= 4 else 0.0,
            "cv60": float(m60.std() / max(mean, 1e-9)) if len(m60) > 1 else 0.0,
            "fluct": min(rise, fall) / med60,
            "zeros": int((x == 0).sum())}


def select_windows(rates: np.ndarray, days, length: int = 1200, step: int = 300,
                   what: str = "trace days") -> dict[str, dict]:
    """Four non-overlapping windows like the IPA paper's patterns, from ``days``.

    Candidates start every ``step`` s and contain no zero-rate second (trace outages).
    ``steady_low`` / ``steady_high``: lowest / highest mean among windows with
    below-median variation (``cv60``: std of 1-minute means / mean); ``bursty``:
    highest ``burst`` (peak 10-s mean after the first quarter / median 10-s mean of the
    first quarter: a sudden surge inside the window);
    ``fluctuating``: highest ``fluct`` = min(largest rise, largest fall) of the
    1-minute means / their median (load that goes up *and* down).
    """
    a, b = day_range(days, len(rates), what)
    cands = [window_stats(rates, s, length) for s in range(a, b - length + 1, step)]
    cands = [c for c in cands if c["zeros"] == 0 and c["mean_rps"] > 0]
    if len(cands) < 8:
        raise ConfigError(f"{what}: too few usable {length}-s windows in days {days}")
    fl_med = float(np.median([c["cv60"] for c in cands]))
    chosen: dict[str, dict] = {}

    def free(c):
        return all(abs(c["start"] - o["start"]) >= length for o in chosen.values())

    order = {
        "bursty": sorted(cands, key=lambda c: -c["burst"]),
        "fluctuating": sorted(cands, key=lambda c: -c["fluct"]),
        "steady_high": sorted([c for c in cands if c["cv60"] <= fl_med], key=lambda c: -c["mean_rps"]),
        "steady_low": sorted([c for c in cands if c["cv60"] <= fl_med], key=lambda c: c["mean_rps"]),
    }
    for name in ("bursty", "fluctuating", "steady_high", "steady_low"):
        for c in order[name]:
            if free(c):
                chosen[name] = dict(c, pattern=name)
                break
    return {p: chosen[p] for p in PATTERNS if p in chosen}


def random_windows(rates: np.ndarray, days, n: int, length: int, seed: int, avoid=()) -> list[dict]:
    a, b = day_range(days, len(rates), "trace days")
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    tries = 0
    while len(out) < n and tries < 1000:
        tries += 1
        s = int(rng.integers(a, b - length))
        st = window_stats(rates, s, length)
        if st["zeros"] or any(abs(s - o["start"]) < length for o in list(out) + list(avoid)):
            continue
        out.append(dict(st, pattern=f"random{len(out)}"))
    return out


# --------------------------------------------------------------------------- scenarios


def trace_scenario(base: Scenario, trace_path: str, start: float, length: float, scale: float, speedup: float,
                   seed: int, capacity: float, warmup_s: float = 60.0, rates: np.ndarray | None = None,
                   interval_s: float | None = None) -> Scenario:
    """A scenario replaying trace ``[start, start + length)`` (trace seconds) at ``speedup``.

    The run starts with the replicas the first minute of load needs (the same for every policy).
    """
    import dataclasses
    dur = length / speedup
    if dur <= warmup_s:
        raise ConfigError(f"window of {length:g} trace-s at speedup {speedup:g} lasts {dur:g} s, "
                          f"not longer than the {warmup_s:g} s warm-up")
    wl = WorkloadSpec(kind="trace", path=trace_path, column="rps", speedup=float(speedup), scale=float(scale),
                      offset_s=float(start), length_s=float(length))
    init = base.cluster.replicas
    if rates is not None:
        r0 = rates[int(start):int(start + max(speedup * 60, 1))]
        if len(r0):
            init = math.ceil(float(r0.mean()) * scale * 1.1 / capacity)
    init = int(min(max(init, base.cluster.min_replicas, 1), base.cluster.max_replicas))
    auto = base.autoscaler if interval_s is None else AutoscalerSpec(base.autoscaler.kind, float(interval_s),
                                                                      base.autoscaler.params)
    return base.replace(seed=int(seed), duration_s=float(dur), warmup_s=float(warmup_s), record_requests=False,
                        workload=wl, cluster=dataclasses.replace(base.cluster, replicas=init), autoscaler=auto)


# --------------------------------------------------------------------------- reward


def reward_norm(cfg_or_interval, max_replicas: int | None = None) -> float:
    if isinstance(cfg_or_interval, Mapping):
        sc = cfg_or_interval["scenario_dict"]
        return float(sc["autoscaler"]["interval_s"]) * float(sc["cluster"]["max_replicas"])
    return float(cfg_or_interval) * float(max_replicas)


def step_reward(replica_s: float, violations: float, cost_per_replica_s: float, lam: float, norm: float,
                accuracy_credit: float = 0.0) -> float:
    """``-(cost * replica_s + lambda * violations - accuracy_credit) / norm``; ``accuracy_credit`` (pipelines,
    :mod:`rl.pipeline_env`): ``accuracy_weight x`` the summed accuracy of the interval's completions."""
    return -(cost_per_replica_s * replica_s + lam * violations - accuracy_credit) / norm


def interval_violations(obs) -> float:
    """Late + failed requests finished in the observation's interval (from the Observation alone)."""
    done = obs.completion_rps * obs.interval_s + obs.failures
    f = obs.slo_violation_frac
    if not done or f != f:  # 0 or NaN
        return float(obs.failures)
    return float(f * done)


def policy_names(paths: list[str], reserved=()) -> list[str]:
    """A short distinct name per policy file: its name without ``.pt``, with as many parent folders as it
    takes to tell it from the others and from the ``reserved`` names (a comparison's baselines) (``runs/a/trials/seed0/policy.pt``
    -> ``seed0/policy`` next to ``runs/b/policy.pt`` -> ``b/policy``)."""
    parts = [os.path.normpath(os.path.abspath(p))[:-3 if p.endswith(".pt") else None].split(os.sep) for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(q[-d:]) for q, d in zip(parts, depth)]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1 or n in reserved]
        grow = [i for i in clash if depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1
