"""The validation's orchestration: per contender a real run (the backend, the load generator and the live
:class:`~cluster.controller.Controller`) and its simulated replays on the same send times, then the
comparison, ranking, sanity checks and the output folder."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.compare import VALIDATION_METRICS, VALIDATION_TARGETS, compare, summarize_side
from rl import sanity
from rl.common import resolve_path
from simulator.config import AutoscalerSpec, ConfigError, Scenario, WorkloadSpec, load_scenario
from simulator.io import OutputFolder, json_format_is

from ..measure import copy_logs, write_csv
from . import FORMAT, say
from .realrun import ControllerLog, controlled_load, write_validation
from .contenders import COMPARE, Contender, choose_static, default_scenario_path, tuned_hpa
from .report import plots, report_md
from .stats import interval_series, ranking, real_load, replica_curve
from .workload import build_workload, initial_replicas


class ValidateError(RuntimeError):
    pass


def run_real(c: Contender, policy, sc: Scenario, stack, wl: WorkloadSpec, duration: float, arrivals, work: Path,
             odir: Path, capacity: float, quiet: bool) -> dict:
    from ..stack.deploy import make_backend
    from ..controller import Controller, LiveRequests
    from ..stack.served import served_for
    odir.mkdir(parents=True, exist_ok=True)
    wdir = work / c.name
    run_sc = sc.replace(cluster=dataclasses.replace(sc.cluster, replicas=c.initial), workload=wl, duration_s=duration)
    be = make_backend(stack, run_sc, wdir / "server")
    served = served_for(stack)
    feed = LiveRequests()
    log = ControllerLog(odir / "controller.log", quiet)
    ctl = Controller(be, policy, interval_s=c.interval_s, slo_ms=sc.slo_ms, min_replicas=sc.cluster.min_replicas,
                     max_replicas=sc.cluster.max_replicas, instances=sc.batching.instances, model=served.name,
                     requests=feed, name=c.name, log=log)
    res = None
    t0 = t_plan = math.nan
    try:
        say(quiet, f"[{c.name}] deploying {c.initial} replica(s) ({stack.backend} backend) ...")
        be.deploy()
        url = be.endpoints["lb"]
        t0 = t_plan = time.time() + 4.0
        if not served.inputs:            # a repository model: its inputs from the running server
            from ..stack.triton import server_model_config
            served.learn_from_server(server_model_config(url, served.name))
        plan = {"url": url, **served.load_plan(wdir / "loadgen", sc.seed), "duration_s": duration, "seed": sc.seed,
                "timeout_s": stack.request_timeout_s, "max_inflight": stack.max_inflight, "start_at_epoch": t0,
                "stream": True, "stream_interval_s": 0.25}
        if wl.kind == "closed_loop":
            plan.update(mode="closed", users=wl.users, think=wl.think.to_dict("s"), spawn_rate=wl.spawn_rate)
        else:
            plan.update(mode="open", arrivals=np.asarray(arrivals, float).tolist())
        res = controlled_load(ctl, plan, wdir, t0, duration, c.name, quiet, feed.feed, lambda: be.ready_replicas,
                              lambda: ctl.last)
    finally:
        errors = list(getattr(be, "errors", lambda: [])())
        be.teardown()
        log.close()
    log_recs = be.replica_log()
    t0 = float(res.meta.get("t0_epoch", t0))
    with open(res.requests_path) as f:
        raw = list(csv.DictReader(f))
    t_send = np.array([float(r["t_send"]) - t0 for r in raw], float)
    lat = np.array([float(r["latency_ms"]) if r["latency_ms"] not in ("", "nan") else math.nan for r in raw], float)
    status = [r["status"] for r in raw]
    ok = np.array([s == "ok" for s in status], bool)
    # files
    write_csv(odir / "requests.csv", ("seq", "t_sched_s", "t_send_s", "latency_ms", "status", "replica", "error"),
               ((r["seq"], round(float(r["t_sched"]) - t0, 6), round(float(r["t_send"]) - t0, 6),
                 r["latency_ms"], r["status"], r["replica"], r["error"]) for r in raw))
    rows = [d.row() for d in ctl.decisions]
    if rows:
        write_csv(odir / "decisions.csv", list(rows[0]), ([r[k] for k in rows[0]] for r in rows))
    rel = (lambda x: "" if x is None else round(x - t0, 4))
    write_csv(odir / "replicas.csv", ("name", "t_request_s", "t_ready_s", "t_drain_s", "t_gone_s", "end_reason"),
               ((r.name, rel(r.t_request), rel(r.t_ready), rel(r.t_drain), rel(r.t_gone), r.end_reason)
                for r in log_recs))
    copy_logs(wdir, odir / "logs")
    inf = math.inf
    reps4 = []
    for r in log_recs:
        req = r.t_request - t0
        rdy = (r.t_ready - t0) if r.t_ready is not None else inf
        gone = (r.t_gone - t0) if r.t_gone is not None else inf
        drain = (r.t_drain - t0) if r.t_drain is not None else gone
        reps4.append((req, rdy, drain, gone))
    # replicas alive at the end of the run were torn down by us: their cost ends at duration (clipped anyway)
    summ = summarize_side(t_send, lat, ok, sc.warmup_s, duration, sc.slo_ms,
                          replicas=[(r, g) for r, _, _, g in reps4])
    desired = [d.desired for d in ctl.decisions]
    summ["scaling_actions"] = int(sum(1 for i in range(1, len(desired)) if desired[i] != desired[i - 1]) +
                                  (1 if desired and desired[0] != c.initial else 0))
    summ["held_ticks"] = int(sum(1 for d in ctl.decisions if d.held))
    summ["ticks"] = len(ctl.decisions)
    by_status: dict[str, int] = {}
    for s, t in zip(status, t_send):
        if sc.warmup_s <= t < duration:
            by_status[s] = by_status.get(s, 0) + 1
    summ["by_status"] = by_status
    start_skew = t0 - t_plan          # load started this late after the controller's t0 (normally 0)
    if abs(start_skew) > 0.5:
        say(quiet, f"[{c.name}] warning: the load started {start_skew:.2f} s after the controller's clock")
    return {"summary": summ, "t_send": t_send, "latency_ms": lat, "ok": ok, "replicas": reps4,
            "decisions": rows, "errors": errors + ctl.errors, "t0_epoch": t0, "loadgen": res.meta,
            "start_skew_s": start_skew, "scrapes": len(ctl.scrapes)}


def run_sim(c: Contender, policy, sc: Scenario, wl_real: WorkloadSpec, duration: float, seeds: list[int],
            model=None) -> dict:
    from simulator.engine import simulate
    sims = []
    for s in seeds:
        ssc = sc.replace(name=f"validate:{c.name}", seed=s, duration_s=duration, record_requests=True,
                         workload=wl_real, cluster=dataclasses.replace(sc.cluster, replicas=c.initial),
                         autoscaler=c.spec,
                         provenance={})
        sims.append(simulate(ssc, policy=policy, model=model))    # simulate() resets the policy
    t = np.concatenate([r.records["arrival_s"] for r in sims])
    lat = np.concatenate([(r.records["completion_s"] - r.records["arrival_s"]) * 1e3 for r in sims])
    ok = np.concatenate([r.records["status"] == 0 for r in sims])
    inf = math.inf
    f = (lambda x: inf if x != x else x)
    reps = [(rep.requested_s, f(rep.gone_s)) for r in sims for rep in r.replicas]
    summ = summarize_side(t, lat, ok, sc.warmup_s, duration, sc.slo_ms, copies=len(sims), replicas=reps)
    acts = []
    for r in sims:
        d = [row["desired"] for row in r.timeline]
        acts.append(sum(1 for i in range(1, len(d)) if d[i] != d[i - 1]) + (1 if d and d[0] != c.initial else 0))
    summ["scaling_actions"] = float(np.mean(acts))
    summ["seeds"] = len(sims)
    first = sims[0]
    r0 = first.records
    return {"summary": summ, "timeline": first.timeline,
            "replicas": [(rep.requested_s, f(rep.ready_s), f(rep.drain_s), f(rep.gone_s)) for rep in first.replicas],
            "t_send": r0["arrival_s"], "latency_ms": (r0["completion_s"] - r0["arrival_s"]) * 1e3,
            "ok": r0["status"] == 0}


def validate(a) -> dict:
    """Check the arguments and ``--out`` (before anything starts), then validate into the output folder."""
    t_all = time.time()
    if a.duration is not None and not (a.duration > 0 and math.isfinite(a.duration)):
        raise ConfigError(f"--duration: must be > 0 (got {a.duration})")
    if a.sim_seeds < 1:
        raise ConfigError(f"--sim-seeds: must be >= 1 (got {a.sim_seeds})")
    if not 0 <= a.slo_target < 1:
        raise ConfigError(f"--slo-target: must be in [0, 1) (got {a.slo_target})")
    from ..config import load_measure_config
    cfg = load_measure_config(resolve_path(a.stack), a.set)
    pipe = cfg.scenario.pipeline is not None
    if pipe:
        from .pipeline import PIPELINE_CONTENDERS as allowed
        if a.policy not in allowed and not os.path.exists(a.policy):
            raise ConfigError(f"{a.policy}: file not found (a pipeline policy is a servesim-pipeline-policy file or "
                              f"one of {', '.join(allowed)})")
    else:
        allowed = COMPARE
    compare_arg = a.compare if a.compare is not None else ("none" if pipe else "hpa,static")
    comp = [] if compare_arg.strip() in ("none", "") else [x.strip() for x in compare_arg.split(",") if x.strip()]
    bad = [x for x in comp if x not in allowed]
    if bad:
        raise ConfigError(f"--compare: unknown {bad[0]!r}; choose from {', '.join(allowed)} or none"
                          + (" (a pipeline)" if pipe else ""))
    comp = list(dict.fromkeys(comp))
    with OutputFolder(a.out, "cluster.validate", force=a.force, legacy=json_format_is("summary.json", FORMAT)) as of:
        if pipe:
            from .pipeline import validate_pipeline
            return validate_pipeline(a, cfg, comp, of.path, t_all)
        return _validate(a, comp, of.path, t_all)


def _validate(a, comp: list[str], tmp: Path, t_all: float) -> dict:
    """The validation proper, writing into ``tmp`` (the output folder being written)."""
    from simulator.capacity import fleet_capacities, per_replica_capacity
    from simulator.hpa import HPAPolicy
    from simulator.policy import StaticPolicy
    from simulator.service import build_service_model

    from ..config import load_measure_config
    from ..controller import check_policy, load_policy_file
    from ..stack import procs
    # 1. the policy: rejected here, before anything starts
    learned = load_policy_file(a.policy)
    meta = learned.meta
    scen_path = resolve_path(a.scenario) if a.scenario else default_scenario_path(meta)
    sc = load_scenario(scen_path)
    cfg = load_measure_config(resolve_path(a.stack), a.set)
    stack = cfg.stack if a.backend is None else dataclasses.replace(cfg.stack, backend=a.backend)
    a.backend = stack.backend
    ms = meta.get("scenario") or {}
    for k, v in (("min_replicas", sc.cluster.min_replicas), ("max_replicas", sc.cluster.max_replicas),
                 ("slo_ms", sc.slo_ms)):
        if k in ms and float(ms[k]) != float(v):
            say(a.quiet, f"warning: {a.policy} was trained with {k} {ms[k]}, the scenario has {v}")
    warm = float(a.warmup)
    capacity = float(per_replica_capacity(sc, violation_target=a.slo_target))
    caps = fleet_capacities(sc, sc.cluster.max_replicas, a.slo_target)
    check_policy(learned, interval_s=learned.interval_s, slo_ms=sc.slo_ms, min_replicas=sc.cluster.min_replicas,
                 max_replicas=sc.cluster.max_replicas, capacity_rps=capacity, name=a.policy)
    wl, duration, wdesc = build_workload(a, sc, capacity)
    if not 0 <= warm < duration:
        raise ConfigError(f"--warmup: must be in [0, duration {duration:g}) (got {warm:g})")
    sc = sc.replace(warmup_s=warm, duration_s=duration)
    from ..stack.arrivals import arrival_times
    arrivals = None if wl.kind == "closed_loop" else arrival_times(wl, duration, sc.seed)
    if arrivals is not None and not len(arrivals):
        raise ConfigError("the workload has no arrivals in the run")
    sim_seeds = [sc.seed + 1000 + i for i in range(a.sim_seeds)]
    model = build_service_model(sc.service, sc.batching.max_batch_size)
    # 2. the contenders
    init = initial_replicas(arrivals, sc, capacity, learned.interval_s)
    cons = [Contender("policy", f"learned ({os.path.relpath(os.path.abspath(a.policy))}, "
                                f"{meta.get('training', {}).get('algo', '?')})", learned.spec(), lambda: learned, init)]
    info: dict[str, Any] = {}
    if "hpa" in comp:
        hp, src = tuned_hpa(a.tuned, scen_path, a.quiet)
        info["hpa"] = dict(hp, source=src)
        p = dict(hp["params"])
        cons.append(Contender("hpa", f"HPA tuned ({p.get('metric')} {p.get('target')}, down-window "
                                     f"{p.get('scale_down_stabilization_s', 300)} s)",
                              AutoscalerSpec("hpa", float(hp["interval_s"]), p),
                              (lambda p=p: HPAPolicy.from_params(dict(p), "hpa")), init))
    if "hpa_default" in comp:
        from rl.baselines import HPA_DEFAULT, HPA_DEFAULT_INTERVAL
        cons.append(Contender("hpa_default", "HPA default (busy_fraction 0.6, 15 s)",
                              AutoscalerSpec("hpa", HPA_DEFAULT_INTERVAL, dict(HPA_DEFAULT)),
                              lambda: HPAPolicy.from_params(dict(HPA_DEFAULT), "hpa_default"), init))
    if "static" in comp:
        say(a.quiet, "choosing the static count in simulation ...")
        n, grid = choose_static(sc, wl, duration, a.slo_target, sim_seeds, model)
        info["static"] = {"replicas": n, "slo_target": a.slo_target, "grid": grid}
        cons.append(Contender("static", f"static {n} replica(s)", AutoscalerSpec("static", learned.interval_s,
                                                                                 {"replicas": n}),
                              (lambda n=n: StaticPolicy(n)), n))
    objs = {c.name: c.make() for c in cons}
    for c in cons[1:]:
        check_policy(objs[c.name], interval_s=c.interval_s, slo_ms=sc.slo_ms, min_replicas=sc.cluster.min_replicas,
                     max_replicas=sc.cluster.max_replicas, capacity_rps=capacity, name=c.name)
    # 3. real runs, then the simulator on the same arrivals
    work = Path(tempfile.mkdtemp(prefix="servesim-validate-"))
    try:
        from ..measure import machine, preflight
        if stack.backend == "local":
            preflight(cfg, a.quiet)
        results: dict[str, dict] = {}
        curves: dict[str, dict] = {}
        say(a.quiet, f"validating {', '.join(c.name for c in cons)} on the {stack.backend} backend: "
                      f"{duration:g} s of real load each ({wdesc.get('kind')}"
                      + (f", mean {wdesc['mean_rps']} rps, p99 {wdesc['p99_rps']} rps" if 'mean_rps' in wdesc else "")
                      + ")")
        for c in cons:
            pol = objs[c.name]
            t_c = time.time()
            real = run_real(c, pol, sc, stack, wl, duration, arrivals, work, tmp / c.name, capacity, a.quiet)
            if wl.kind == "closed_loop":
                wl_sim = wl
            else:
                ts = np.sort(real["t_send"][np.isfinite(real["t_send"]) & (real["t_send"] >= 0) &
                                            (real["t_send"] < duration)])
                wl_sim = WorkloadSpec(kind="timestamps", times=tuple(float(x) for x in ts))
            sim = run_sim(c, pol, sc, wl_sim, duration, sim_seeds, model)
            cmp_ = compare(real["summary"], sim["summary"], VALIDATION_METRICS, VALIDATION_TARGETS)
            load = real_load(real, arrivals, caps, sc.cluster.min_replicas, sc.warmup_s, duration)
            results[c.name] = {"label": c.label, "kind": c.spec.kind, "params": dict(c.spec.params),
                               "interval_s": c.interval_s,
                               "initial_replicas": c.initial, "real": real["summary"], "sim": sim["summary"],
                               "compare": cmp_, "load": load, "errors": real["errors"], "t0_epoch": real["t0_epoch"],
                               "start_skew_s": real["start_skew_s"], "wall_s": round(time.time() - t_c, 1)}
            write_csv(tmp / c.name / "sim_timeline.csv", list(sim["timeline"][0]),
                       ([r[k] for k in sim["timeline"][0]] for r in sim["timeline"]))
            ts_grid = np.arange(0.0, duration, 0.25)
            rr, ry = replica_curve(real["replicas"], ts_grid)
            sr, sy = replica_curve(sim["replicas"], ts_grid)
            curves[c.name] = {"ts": ts_grid, "real_req": rr, "real_rdy": ry, "sim_req": sr, "sim_rdy": sy,
                              "real_series": interval_series(real["t_send"], real["latency_ms"], real["ok"], duration,
                                                             c.interval_s, sc.slo_ms),
                              "sim_series": interval_series(sim["t_send"], sim["latency_ms"], sim["ok"], duration,
                                                            c.interval_s, sc.slo_ms)}
            r_, s_ = real["summary"], sim["summary"]
            say(a.quiet, f"[{c.name}] real: {r_['replica_seconds']:.0f} replica-s, SLO-viol {r_['slo_violation_rate'] * 100:.2f} %, "
                          f"p95 {r_['p95_ms']:.1f} ms | sim: {s_['replica_seconds']:.0f} replica-s, "
                          f"SLO-viol {s_['slo_violation_rate'] * 100:.2f} %, p95 {s_['p95_ms']:.1f} ms")
        rk = ranking({n: r["real"] for n, r in results.items()}, {n: r["sim"] for n, r in results.items()},
                     a.equal_slo_pts)
        checks = [sanity.validation_load({n: r["load"] for n, r in results.items()}, sc.cluster.min_replicas)]
        targets = {"cost": all(r["compare"]["replica_seconds"]["within_target"] for r in results.values()),
                   "p95": all(r["compare"]["p95_ms"]["within_target"] for r in results.values()),
                   "ranking": rk["agrees"]}
        mach = machine()
        summary = {
            "format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv, "policy_file": os.path.relpath(os.path.abspath(a.policy)),
            "policy_meta": {k: meta.get(k) for k in ("action", "interval_s", "scenario", "training")},
            "scenario_path": os.path.relpath(scen_path), "backend": stack.backend,
            "machine": f"{mach['cpu']}, {mach['cores']} cores", "slo_ms": sc.slo_ms,
            "min_replicas": sc.cluster.min_replicas, "max_replicas": sc.cluster.max_replicas,
            "capacity_rps_per_replica": capacity, "duration_s": duration, "warmup_s": warm, "workload": wdesc,
            "sim_seeds": len(sim_seeds), "equal_slo_pts": a.equal_slo_pts, "targets": targets, "ranking": rk,
            "study": (sc.provenance or {}).get("study"), "fleet_capacities_rps": [float(x) for x in caps],
            "sanity": sanity.record(checks, a.allow_degenerate), "_checks": checks,
            "policies": results, **info, "wall_s": round(time.time() - t_all, 1)}
        summary.pop("_checks")
        write_validation(tmp, summary, report_md, lambda: plots(tmp, summary, curves))
        summary["_checks"] = checks
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)
        procs.kill_all()

