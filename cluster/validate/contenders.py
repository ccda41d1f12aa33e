"""The policies under test in a validation: the learned policy, the tuned HPA, the default HPA, the best
static count. Each is a :class:`Contender`: a name and label, its :class:`~simulator.config.AutoscalerSpec`
(kind, control interval, params: the one carrier of "a policy and its interval"), a factory for the policy
object (the same object drives the real run and, reset, the simulated ones) and the initial replicas."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from rl.common import ROOT
from simulator.config import AutoscalerSpec, ConfigError, Scenario, WorkloadSpec

from . import say

COMPARE = ("hpa", "hpa_default", "static")


@dataclass
class Contender:
    name: str                             # policy | hpa | hpa_default | static
    label: str
    spec: AutoscalerSpec                  # kind, interval_s, params
    make: Callable[[], Any]               # a fresh policy object (same object reused real -> sim, reset each run)
    initial: int

    @property
    def interval_s(self) -> float:
        return self.spec.interval_s


def default_scenario_path(meta: dict) -> str:
    p = (meta.get("scenario") or {}).get("path")
    if p:
        for cand in (p, os.path.join(ROOT, p)):
            if os.path.exists(cand):
                return os.path.abspath(cand)
    return os.path.join(ROOT, "configs", "calibrated", "baseline.yaml")


def tuned_hpa(tuned_path: str | None, scenario_path: str, quiet: bool) -> tuple[dict, str]:
    """``({params, interval_s}, source)`` of the tuned HPA."""
    if tuned_path:
        if not os.path.exists(tuned_path):
            raise ConfigError(f"--tuned {tuned_path}: file not found")
        try:
            with open(tuned_path) as f:
                t = json.load(f)
            t = t.get("tuned", t)
            ch = t["hpa_tuned"]["choice"]
            return {"params": dict(ch["params"]), "interval_s": float(ch["interval_s"])}, tuned_path
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--tuned {tuned_path}: not a tuning written by rl.baselines / rl.evaluate "
                              f"(missing {e})") from None
    from rl.baselines import tune_hpa
    from rl.common import load_rl_config
    say(quiet, "tuning the HPA on the tuning days (no --tuned given) ...")
    choice = tune_hpa(load_rl_config(None, scenario=scenario_path), log=lambda m: None)
    return choice, "tuned now on the tuning days (rl.baselines HPA grid)"


def choose_static(sc: Scenario, wl: WorkloadSpec, duration: float, slo_target: float, seeds: list[int],
                  model=None) -> tuple[int, list[dict]]:
    """Smallest static count whose simulated SLO-violation rate on this workload is <= slo_target (else max)."""
    from simulator.engine import simulate
    from simulator.policy import StaticPolicy
    rows = []
    c = sc.cluster
    for n in range(max(c.min_replicas, 1), c.max_replicas + 1):
        v = req = rs = 0.0
        for s in seeds:
            ssc = sc.replace(seed=s, duration_s=duration, record_requests=False, workload=wl,
                             cluster=dataclasses.replace(c, replicas=n),
                             autoscaler=AutoscalerSpec("static", 5.0, {}), provenance={})
            r = simulate(ssc, policy=StaticPolicy(n), model=model)
            v += r.summary["slo_violation_rate"] * r.summary["requests"]
            req += r.summary["requests"]
            rs += r.summary["replica_seconds"]
        rate = v / max(req, 1.0)
        rows.append({"replicas": n, "slo_violation_rate": rate, "replica_seconds": rs / len(seeds)})
        if rate <= slo_target:
            return n, rows
    return c.max_replicas, rows

