"""Baselines the learned policy is compared with, and their tuning on the tuning days.

- ``hpa_default``: Kubernetes HPA, default behaviour (autoscaling/v2 defaults:
  scale-up immediately, scale-down after a 300 s stabilisation window),
  ``busy_fraction`` (CPU-utilisation-like) target 0.6, 15 s sync period.
- ``hpa_tuned``: HPA with metric (busy_fraction or arrival_rps_per_replica),
  target, scale-down stabilisation window and sync period grid-searched on the
  tuning windows: the cheapest setting whose SLO-violation rate over all tuning
  windows is <= ``slo_target``.
- ``knative``: KPA with stable 60 s / panic 6 s windows, panic at 2x, 2 s
  tick; ``target_concurrency`` picked on the tuning windows the same way.
- ``predictive``: IPA-style (:mod:`simulator.predictive`): every 10 s, max of
  the last 120 s of arrival rates / per-replica capacity at the SLO; headroom
  picked on the tuning windows from {0, 0.1, 0.2, 0.3}.
- ``static_tuned``: the smallest fixed count meeting the target on the tuning windows.
- ``static_best``: the smallest fixed count meeting the target on the
  *evaluated* window itself (best in hindsight -- a bound-like baseline, chosen
  in :mod:`rl.evaluate`).
- ``oracle``: :mod:`rl.oracle` (knows the future).

``python -m rl.baselines --out tuned.json`` runs the tuning alone (``rl.evaluate`` does it when needed).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any, Callable

import numpy as np

from rl.common import (DEFAULT_CONFIG, base_scenario, load_rl_config, load_trace, random_windows,
                       require_single_model, select_windows, trace_scenario, write_json)
from simulator.engine import simulate
from simulator.policy import AutoscalerSpec
from simulator.io import run_cli
from simulator.hpa import HPAPolicy
from simulator.knative import KnativePolicy
from simulator.policy import StaticPolicy
from simulator.predictive import PredictivePolicy

HPA_DEFAULT = {"metric": "busy_fraction", "target": 0.6}
HPA_DEFAULT_INTERVAL = 15.0
KPA_INTERVAL = 2.0
PRED_INTERVAL = 10.0


def hpa_grid(capacity: float) -> list[dict]:
    grid = []
    for metric, targets in (("busy_fraction", (0.5, 0.6, 0.7, 0.8, 0.9)),
                            ("arrival_rps_per_replica", tuple(round(capacity * f, 2) for f in (0.6, 0.7, 0.8, 0.9, 1.0, 1.1)))):
        for target, down, interval in itertools.product(targets, (0, 60, 300), (5.0, 15.0)):
            grid.append({"params": {"metric": metric, "target": target, "scale_down_stabilization_s": down},
                         "interval_s": interval})
    return grid


def kpa_grid() -> list[dict]:
    return [{"params": {"target_concurrency": c, "stable_window_s": 60.0, "panic_window_s": 6.0,
                        "panic_threshold": 2.0}, "interval_s": KPA_INTERVAL} for c in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)]


def pred_grid(capacity: float) -> list[dict]:
    return [{"params": {"capacity_rps_per_replica": capacity, "window_s": 120.0, "horizon_s": 10.0, "headroom": h},
             "interval_s": PRED_INTERVAL} for h in (0.0, 0.1, 0.2, 0.3)]


def make(spec: AutoscalerSpec):
    """The baseline policy object of ``spec``."""
    cls = {"hpa": HPAPolicy, "knative": KnativePolicy, "predictive": PredictivePolicy, "static": StaticPolicy}[spec.kind]
    return cls.from_params(dict(spec.params), f"baseline {spec.kind}")


def run_one(sc, spec: AutoscalerSpec | None, model=None, policy=None):
    """Simulate ``sc`` under the policy ``spec`` carries (``policy``: an object already built for it, e.g. a
    loaded learned policy); ``spec`` None keeps the scenario's autoscaler block and needs ``policy``."""
    if spec is not None:
        sc = sc.replace(autoscaler=spec)
    return simulate(sc, policy=policy if policy is not None else make(spec), model=model)


def spec_of(kind: str, choice: dict) -> AutoscalerSpec:
    """A tuning's ``{"params", "interval_s"}`` choice (as stored in tuned.json) as the policy carrier."""
    return AutoscalerSpec(kind, float(choice["interval_s"]), dict(choice["params"]))


def summarize(res) -> dict:
    s = res.summary
    return {"replica_seconds": s["replica_seconds"], "mean_replicas": s["mean_replicas"],
            "slo_violation_rate": s["slo_violation_rate"], "violations": s["slo_violation_rate"] * s["requests"],
            "requests": s["requests"], "p99_ms": s["latency_ms"]["p99"], "failed": s["failed"],
            "scaling_actions": s["scaling_actions"]}


def tuning_windows(cfg: dict, rates: np.ndarray) -> list[dict]:
    days = cfg["trace"]["tune_days"]
    pats = list(select_windows(rates, days, what="trace.tune_days").values())
    return pats + random_windows(rates, days, 2, 1200, seed=11, avoid=pats)


def _grid_pick(kind: str, grid: list[dict], scenarios: list, slo_target: float, model, log) -> dict:
    rows = []
    for i, g in enumerate(grid):
        tot_rs = tot_v = tot_req = 0.0
        for sc in scenarios:
            r = summarize(run_one(sc, spec_of(kind, g), model))
            tot_rs += r["replica_seconds"]
            tot_v += r["violations"]
            tot_req += r["requests"]
        rate = tot_v / max(tot_req, 1.0)
        rows.append(dict(g, replica_seconds=tot_rs, slo_violation_rate=rate, meets=rate <= slo_target))
        log(f"  {kind} {i + 1}/{len(grid)} {g['params']} @ {g['interval_s']:g}s: replica-s {tot_rs:.0f}, "
            f"SLO-viol {rate:.4f}")
    ok = [r for r in rows if r["meets"]]
    best = min(ok, key=lambda r: r["replica_seconds"]) if ok else min(rows, key=lambda r: r["slo_violation_rate"])
    return {"choice": {"params": best["params"], "interval_s": best["interval_s"]}, "meets": bool(ok),
            "grid": rows}


def tuning_set(cfg: dict, seed: int = 1000) -> tuple[list[dict], list, Any]:
    """``(windows, scenarios, service model)``: the tuning-day windows as scenarios (seed ``seed + i``)."""
    rates = load_trace(cfg["trace"]["path"])
    base = base_scenario(cfg)
    cap = cfg["capacity_rps_per_replica"]
    wins = tuning_windows(cfg, rates)
    from simulator.service import build_service_model
    model = build_service_model(base.service, base.batching.max_batch_size)
    scen = [trace_scenario(base, cfg["trace"]["path"], w["start"], w["length"], cfg["trace"]["scale"], 1.0,
                           seed + i, cap, rates=rates) for i, w in enumerate(wins)]
    return wins, scen, model


def tune_hpa(cfg: dict, seed: int = 1000, log: Callable[[str], None] = print) -> dict:
    """Only the tuned HPA (``{"params", "interval_s"}``) on the tuning days: what ``tune`` picks for it."""
    wins, scen, model = tuning_set(cfg, seed)
    return dict(_grid_pick("hpa", hpa_grid(cfg["capacity_rps_per_replica"]), scen, float(cfg["slo_target"]), model,
                           log)["choice"])


def tune(cfg: dict, seed: int = 1000, log: Callable[[str], None] = print) -> dict:
    """Tune HPA, KPA, predictive headroom and the static count on the tuning days (one seed)."""
    t0 = time.time()
    cap = cfg["capacity_rps_per_replica"]
    wins, scen, model = tuning_set(cfg, seed)
    base = base_scenario(cfg)
    slo_t = float(cfg["slo_target"])
    log(f"tuning baselines on {len(wins)} windows of days {cfg['trace']['tune_days']} "
        f"(SLO-violation target {slo_t})")
    out: dict[str, Any] = {"windows": wins, "slo_target": slo_t, "seed": seed,
                           "trace": cfg["trace"]["path"], "scale": cfg["trace"]["scale"], "capacity_rps_per_replica": cap,
                           "scenario_hash": cfg["scenario_hash"]}
    out["hpa_tuned"] = _grid_pick("hpa", hpa_grid(cap), scen, slo_t, model, log)
    out["knative"] = _grid_pick("knative", kpa_grid(), scen, slo_t, model, log)
    out["predictive"] = _grid_pick("predictive", pred_grid(cap), scen, slo_t, model, log)
    c = base.cluster
    st_grid = [{"params": {"replicas": n}, "interval_s": base.autoscaler.interval_s}
               for n in range(max(c.min_replicas, 1), c.max_replicas + 1)]
    # the static count: smallest meeting the target (monotone, so stop at the first that meets)
    rows = []
    choice = None
    for g in st_grid:
        tot_rs = tot_v = tot_req = 0.0
        for sc in scen:
            sc2 = sc.replace(cluster=sc.cluster.__class__(**{**sc.cluster.__dict__, "replicas": g["params"]["replicas"]}))
            r = summarize(run_one(sc2, spec_of("static", g), model))
            tot_rs += r["replica_seconds"]
            tot_v += r["violations"]
            tot_req += r["requests"]
        rate = tot_v / max(tot_req, 1.0)
        rows.append(dict(g, replica_seconds=tot_rs, slo_violation_rate=rate, meets=rate <= slo_t))
        log(f"  static {g['params']['replicas']}: replica-s {tot_rs:.0f}, SLO-viol {rate:.4f}")
        if rate <= slo_t:
            choice = g
            break
    out["static_tuned"] = {"choice": choice or st_grid[-1], "meets": choice is not None, "grid": rows}
    out["wall_s"] = time.time() - t0
    log(f"tuned in {out['wall_s']:.0f} s: HPA {out['hpa_tuned']['choice']}, KPA {out['knative']['choice']['params']['target_concurrency']}, "
        f"predictive headroom {out['predictive']['choice']['params']['headroom']}, static {out['static_tuned']['choice']['params']['replicas']}")
    return out


def baseline_specs(tuned: dict | None, cap: float) -> dict[str, AutoscalerSpec]:
    """name -> the policy carrier of every adaptive baseline (tuned ones from ``tuned``; without a tuning,
    only the default HPA)."""
    default = {"hpa_default": AutoscalerSpec("hpa", HPA_DEFAULT_INTERVAL, dict(HPA_DEFAULT))}
    if not tuned:
        return default
    return {
        **default,
        "hpa_tuned": spec_of("hpa", tuned["hpa_tuned"]["choice"]),
        "knative": spec_of("knative", tuned["knative"]["choice"]),
        "predictive": spec_of("predictive", tuned["predictive"]["choice"]),
        "static_tuned": spec_of("static", tuned["static_tuned"]["choice"]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl.baselines", description="Tune the baselines on the tuning days.")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--scenario", default=None)
    ap.add_argument("--out", required=True, help="tuned.json to write")
    a = ap.parse_args(argv)

    def body() -> int:
        cfg = load_rl_config(a.config, scenario=a.scenario)
        require_single_model(cfg, "rl.baselines")
        out = tune(cfg)
        write_json(a.out, out)
        print(f"wrote {a.out}")
        return 0
    return run_cli(body)

if __name__ == "__main__":
    sys.exit(main())
