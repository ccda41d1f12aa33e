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

The control plane is stepped every ``TICK_S`` seconds, so a scale request lands
at most one tick late (its ready time is still exact).

Both sides are summarised by :func:`summarize` over requests *sent* in
``[warmup_s, duration_s)``: mean / p50 / p95 / p99 latency of successes (client
side: the simulator adds the per-request overhead), throughput (successes per
second of the window), failure rate (any non-ok status; measured requests never
sent count as failures), SLO attainment (successes within ``slo_ms`` over all
requests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from simulator.config import AutoscalerSpec, Scenario, WorkloadSpec
from simulator.engine import Simulation
from simulator.service import ServiceModel, build_service_model

from .measurements import CalibrationError, RunData

TICK_S = 0.1
METRICS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "failure_rate", "slo_attainment")
# targets on held-out runs: relative error for latency / throughput, absolute points for SLO attainment
TARGETS = {"p50_ms": ("rel", 0.10), "p95_ms": ("rel", 0.10), "p99_ms": ("rel", 0.15),
           "throughput_rps": ("rel", 0.03), "slo_attainment": ("abs", 0.02)}


def summarize(t_send: np.ndarray, lat_ms: np.ndarray, ok: np.ndarray, warmup_s: float, duration_s: float,
              slo_ms: float, copies: int = 1) -> dict:
    """Headline figures over requests sent in ``[warmup_s, duration_s)`` (see module docstring)."""
    t_send = np.asarray(t_send, float)
    sent = np.isfinite(t_send)
    sel = ~sent | ((t_send >= warmup_s) & (t_send < duration_s))
    lat = np.asarray(lat_ms, float)[sel]
    okm = np.asarray(ok, bool)[sel]
    good = lat[okm]
    n = int(sel.sum())
    win = (duration_s - warmup_s) * copies
    q = np.percentile(good, [50, 95, 99]) if len(good) else [math.nan] * 3
    return {"requests": n / copies, "successes": int(okm.sum()) / copies,
            "mean_ms": float(good.mean()) if len(good) else math.nan,
            "p50_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]),
            "throughput_rps": float(okm.sum()) / win if win > 0 else math.nan,
            "failure_rate": float((~okm).sum()) / n if n else math.nan,
            "slo_attainment": float((good <= slo_ms).sum()) / n if n else math.nan}


def measured_summary(run: RunData) -> dict:
    r = run.requests
    return summarize(r["t_send_s"].to_numpy(float), r["latency_ms"].to_numpy(float),
                     (r["status"] == "ok").to_numpy(), run.warmup_s, run.duration_s, run.slo_ms)


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


def replay_scenario(calibrated: Scenario, run: RunData, seed: int) -> tuple[Scenario, Schedule]:
    """The calibrated scenario with ``run``'s workload, batching, timing, SLO and replica history."""
    rs = run.scenario
    sched = replica_schedule(run)
    if rs.workload.kind == "closed_loop":
        wl = rs.workload
    else:
        t = run.requests["t_send_s"].to_numpy(float)
        t = np.sort(t[np.isfinite(t) & (t >= 0) & (t < run.duration_s)])
        if not len(t):
            raise CalibrationError(f"{run.dir / 'requests.csv'}: no send times within the run")
        wl = WorkloadSpec(kind="timestamps", times=tuple(float(x) for x in t))
    mn, mx = sched.min, sched.max
    cl = replace(calibrated.cluster, replicas=min(max(sched.initial, mn), mx), min_replicas=mn, max_replicas=mx,
                 load_balancer=rs.cluster.load_balancer)
    sc = calibrated.replace(name=f"replay:{run.name}", seed=seed, duration_s=run.duration_s,
                            warmup_s=run.warmup_s, slo_ms=run.slo_ms, record_requests=True, workload=wl,
                            batching=rs.batching, cluster=cl,
                            autoscaler=AutoscalerSpec(kind="static", interval_s=TICK_S, params={}),
                            provenance={})
    return sc, sched


def simulate_run(calibrated: Scenario, run: RunData, seeds=(0,), model: ServiceModel | None = None) -> dict:
    """Replay ``run`` once per seed; pooled records and summaries (see :func:`summarize`)."""
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
    summ = summarize(arr, lat, ok, run.warmup_s, run.duration_s, run.slo_ms, copies=len(seeds))
    w = sum(n for _, n in compute)
    summ["compute_ms_per_request"] = sum(c * n for c, n in compute if n) / w if w else math.nan
    return {"summary": summ, "arrival_s": arr, "latency_ms": lat, "ok": ok, "timeline": timelines[0],
            "seeds": len(seeds)}


def compare(measured: dict, simulated: dict) -> dict:
    """Per metric: measured, simulated, absolute and relative error (rates/attainment: abs in points)."""
    out = {}
    for k in METRICS:
        m, s = measured.get(k, math.nan), simulated.get(k, math.nan)
        ae = s - m
        re = ae / m if m not in (0, 0.0) and math.isfinite(m) else math.nan
        e = {"measured": m, "simulated": s, "abs_err": ae, "rel_err": re}
        if k in TARGETS:
            kind, tol = TARGETS[k]
            err = abs(re) if kind == "rel" else abs(ae)
            e["target"] = f"{'rel' if kind == 'rel' else 'abs'} <= {tol:g}"
            e["within_target"] = bool(math.isfinite(err) and err <= tol)
        out[k] = e
    return out
