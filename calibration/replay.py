"""Replay a measured run in the simulator and compare the two like with like.

The simulated run gets the measured run's own workload and replica history:

- open loop: a ``timestamps`` workload holding the run's actual send times
  (``requests.csv: t_send_s``), in memory (``WorkloadSpec.times``);
- closed loop: the same users, think-time distribution and spawn rate;
- replicas: the count ready at t = 0 from ``replicas.csv``; every replica
  requested during the run is requested in the simulation at the same time and
  becomes ready exactly at its measured ready time; drained / crashed /
  scaled-down replicas are removed at their measured drain (or exit) time
  (the simulator drains: a crash's lost requests are not reproduced). Without
  ``replicas.csv`` the run's planned ``scale`` events are used with the
  calibrated start-up delay.

The control plane is stepped every ``TICK_S`` seconds while the replica history
changes, so a scale request lands at most one tick late (its ready time is still
exact); a run whose replicas never change is run as one control interval
(:func:`replay_tick`: nothing to apply, the same draws and results, ~30x faster).

Both sides are summarised by :func:`calibration.compare.summarize_side` over
requests *sent* in ``[warmup_s, duration_s)`` (client-side latency: the simulator
adds the per-request overhead), with the batching of each side
(:func:`calibration.compare.batching_summary`: mean batch size, mean queue time, share of batches per
size; measured from Triton's counters and per-batch-size statistics,
:func:`calibration.measurements.measured_batching`; simulated from the requests' records), and compared
by :func:`calibration.compare.compare`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from simulator.config import AutoscalerSpec, ClusterSpec, Scenario, WorkloadSpec
from simulator.engine import Simulation
from simulator.service import ServiceModel, build_service_model

from .compare import simulated_batching, summarize_side
from .measurements import CalibrationError, RunData, measured_batching

TICK_S = 0.1


def measured_summary(run: RunData) -> dict:
    r = run.requests
    out = summarize_side(r["t_send_s"].to_numpy(float), r["latency_ms"].to_numpy(float),
                         (r["status"] == "ok").to_numpy(), run.warmup_s, run.duration_s, run.slo_ms)
    out.update(measured_batching(run))
    return out


# --------------------------------------------------------------------------- replica schedule


@dataclass
class Schedule:
    initial: int
    adds: list[tuple[float, float]]        # (request time, ready time or inf)
    removes: list[float]                   # times a replica leaves rotation

    def desired(self, t: float) -> int:
        return self.initial + sum(1 for a, _ in self.adds if a <= t + 1e-9) - sum(1 for x in self.removes
                                                                                  if x <= t + 1e-9)

    @property
    def max(self) -> int:
        return max(self.initial + len(self.adds), 1)

    @property
    def min(self) -> int:
        return max(0, min(self.desired(t) for t in [0.0] + [a for a, _ in self.adds] + list(self.removes)))


def replica_schedule(run: RunData) -> Schedule:
    reps = run.replicas
    if reps is None or not len(reps):
        n0 = run.scenario.cluster.replicas
        adds, removes = [], []
        cur = n0
        for e in sorted(run.events, key=lambda e: e.get("at_s", 0)):
            if "scale" in e:
                v = int(e["scale"])
                at = float(e["at_s"])
                if v > cur:
                    adds += [(at, math.nan)] * (v - cur)
                else:
                    removes += [at] * (cur - v)
                cur = v
        return Schedule(n0, adds, removes)
    init = 0
    adds, removes = [], []
    for _, r in reps.iterrows():
        req = r["t_request_s"]
        rdy = r["t_ready_s"]
        leave = r["t_drain_s"] if np.isfinite(r["t_drain_s"]) else (
            r["t_gone_s"] if str(r["end_reason"]) in ("crashed", "scale_down", "failed_start") else math.nan)
        if np.isfinite(rdy) and rdy <= 0 and (not np.isfinite(req) or req <= 0):
            init += 1
        elif np.isfinite(req) and req < run.duration_s:
            adds.append((max(0.0, float(req)), float(rdy) if np.isfinite(rdy) else math.inf))
        else:
            continue
        if np.isfinite(leave) and leave < run.duration_s:
            removes.append(max(0.0, float(leave)))
    return Schedule(init, sorted(adds), sorted(removes))


def scripted_startups(ready_at: list[float]) -> Callable[[int, float], float | None]:
    """A :class:`Simulation` ``startup_delay`` hook: the k-th replica added becomes ready at
    ``ready_at[k]`` (absolute seconds; ``inf``: never; NaN, or past the list: the calibrated
    start-up delay)."""
    pending = list(ready_at)

    def delay(uid: int, t: float) -> float | None:
        if not pending:
            return None
        at = pending.pop(0)
        return None if math.isnan(at) else max(0.0, at - t)
    return delay


def replayed_workload(run: RunData) -> WorkloadSpec:
    """``run``'s workload for a replay: closed loop as measured; open loop a ``timestamps`` workload holding
    its actual send times in ``[0, duration_s)``."""
    if run.scenario.workload.kind == "closed_loop":
        return run.scenario.workload
    t = run.requests["t_send_s"].to_numpy(float)
    t = np.sort(t[np.isfinite(t) & (t >= 0) & (t < run.duration_s)])
    if not len(t):
        raise CalibrationError(f"{run.dir / 'requests.csv'}: no send times within the run")
    return WorkloadSpec(kind="timestamps", times=tuple(float(x) for x in t))


def replayed_cluster(cluster: ClusterSpec, run: RunData, sched: Schedule) -> ClusterSpec:
    """A calibrated deployment's ``cluster`` with ``run``'s replica bounds (from its schedule) and load
    balancer."""
    mn, mx = sched.min, sched.max
    return replace(cluster, replicas=min(max(sched.initial, mn), mx), min_replicas=mn, max_replicas=mx,
                   load_balancer=run.scenario.cluster.load_balancer)


def replay_tick(schedules: list[Schedule], duration_s: float) -> float:
    """The control interval of a replay: ``TICK_S`` when some replica is added or removed during the run, else
    the whole run (a fixed replica set: no decision to apply, so the run is the same at any interval)."""
    return TICK_S if any(s.adds or s.removes for s in schedules) else max(float(duration_s), TICK_S)


def replay_scenario(calibrated: Scenario, run: RunData, seed: int) -> tuple[Scenario, Schedule]:
    """The calibrated scenario with ``run``'s workload, batching, timing, SLO and replica history."""
    rs = run.scenario
    sched = replica_schedule(run)
    wl = replayed_workload(run)
    cl = replayed_cluster(calibrated.cluster, run, sched)
    sc = calibrated.replace(name=f"replay:{run.name}", seed=seed, duration_s=run.duration_s,
                            warmup_s=run.warmup_s, slo_ms=run.slo_ms, record_requests=True, workload=wl,
                            batching=rs.batching, cluster=cl,
                            autoscaler=AutoscalerSpec(kind="static", interval_s=replay_tick([sched], run.duration_s),
                                                      params={}),
                            provenance={})
    return sc, sched


def simulate_run(calibrated: Scenario, run: RunData, seeds=(0,), model: ServiceModel | None = None) -> dict:
    """Replay ``run`` once per seed; pooled records and summaries (:func:`calibration.compare.summarize_side`)."""
    recs = []
    compute = []
    timelines = []
    for s in seeds:
        sc, sched = replay_scenario(calibrated, run, calibrated.seed + s)
        mdl = model or build_service_model(sc.service, sc.batching.max_batch_size)
        sim = Simulation(sc, engine="fast", model=mdl,
                         startup_delay=scripted_startups([ready for _, ready in sched.adds]))
        obs = sim.start()
        while obs is not None:
            obs = sim.step(sched.desired(obs.time_s))
        res = sim.result()
        recs.append(res.records)
        compute.append((res.summary["compute_ms"]["mean"], res.summary["completed"]))
        timelines.append(res.timeline)
    arr = np.concatenate([r["arrival_s"] for r in recs])
    lat = np.concatenate([(r["completion_s"] - r["arrival_s"]) * 1e3 for r in recs])
    ok = np.concatenate([r["status"] == 0 for r in recs])
    summ = summarize_side(arr, lat, ok, run.warmup_s, run.duration_s, run.slo_ms, copies=len(seeds))
    summ.update(simulated_batching(arr, np.concatenate([r["dispatch_s"] for r in recs]),
                                   np.concatenate([r["batch_size"] for r in recs]), ok, run.warmup_s, run.duration_s))
    w = sum(n for _, n in compute)
    summ["compute_ms_per_request"] = sum(c * n for c, n in compute if n) / w if w else math.nan
    return {"summary": summ, "arrival_s": arr, "latency_ms": lat, "ok": ok, "timeline": timelines[0],
            "seeds": len(seeds)}
