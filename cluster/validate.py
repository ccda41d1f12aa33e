"""Close the loop: ``python -m cluster.validate POLICY.pt [--backend local|kubernetes] [--compare hpa,static]``.

The policy trained in simulation drives the real Triton deployment under real
load; the same workload is run under the comparison policies (default: the tuned
HPA and the best static count) on the same backend; then every real run is
replayed in the calibrated simulator with the same arrivals, the same policy
objects (reset) and the same initial replicas, and servesim reports how reality
compares with what the simulator promised.

Per policy (``--compare`` picks the others: ``hpa`` tuned HPA, ``hpa_default``,
``static``; ``none`` for the policy alone):

1. **real run**: deploy the backend with the run's initial replicas, start the
   load generator (open loop: precomputed arrivals; its live feed of sends and
   completions goes to the controller), and run :class:`cluster.controller.Controller`
   every ``interval_s`` of the policy: Observation from live Triton counters and
   client latencies (the simulator's definitions), ``policy.decide``, clamp,
   ``backend.scale``. Recorded: every request, every decision (observation,
   answer, held / clamped), every replica's lifecycle.
2. **simulated run(s)**: the calibrated scenario (``--scenario``; default the
   scenario the policy was trained on) with a ``timestamps`` workload holding the
   real run's actual send times (closed loop: the same users), the real run's
   initial replicas, the same policy at the same interval, ``--sim-seeds`` seeds.
3. **comparison**: over requests sent in ``[warmup_s, duration_s)`` and replica
   time clipped to that window (same definitions on both sides):
   replica-seconds (request -> gone), SLO-violation rate ((late successes +
   failures) / requests), p50 / p95 / p99 client latency of successes,
   failures; relative errors ``(sim - real) / real``. Targets: replica-seconds
   within 10 %, p95 within 15 %, and the same ranking of policies -- for every
   pair, the same winner (cheaper at equal SLO, i.e. violation rates within
   ``--equal-slo-pts`` points; or cheaper *and* fewer violations; no winner when
   it is a trade-off or a tie).

Default workload: a slice of the Twitter 2021 trace from the held-out days (day
13, 09:20-10:10: a steady stretch, a 20-minute burst of ~3.3x, the decline, a
quieter stretch) compressed to ``--duration`` seconds (120) and scaled so its
p99 rate is ``--peak-rps``; by default the study's validation load (:mod:`rl.study`
rule 8, recorded in the deployment scenario's ``provenance.study``): ``target_util``
x what ``max_replicas`` serve at the SLO, capped at the highest rate the measured
stack was seen to serve (``provenance.stack.max_served_rps``, from the
measurement). A scenario without a study gets the same rule computed here.
``--workload FILE`` takes any simulator workload block instead (poisson, schedule,
trace, timestamps, closed_loop).

A "sanity" section (:mod:`rl.sanity`) ends the run, recorded in ``summary.json``:
every policy's real load must have needed more than ``min_replicas`` for 5 % of
the run (by the calibrated fleet capacities) and the load generator must have
sent what was planned; otherwise the command exits 3 naming the check, unless
``--allow-degenerate``.

The static count is the smallest one whose *simulated* SLO-violation rate on
this workload is within ``--slo-target`` (the rest of servesim's
``static_best``; max_replicas when none is). The tuned HPA comes from
``--tuned`` (``python -m rl.baselines --out tuned.json``) or, without it, from
the same HPA grid tuned on the tuning days of the trace (about 20 s).

Output (``--out``, default ``validate/``; written to a temporary folder and
renamed at the end, ``--force`` replaces): ``summary.json`` (everything),
``report.md``, ``overlay.png`` (all policies: real vs simulated replicas and
p95 latency over time), ``overlay_<policy>.png``, and per policy
``<policy>/requests.csv``, ``decisions.csv`` (every tick: observation, answer,
replicas asked, held), ``replicas.csv``, ``sim_timeline.csv``,
``controller.log`` and ``logs/``.

Bad input is one line ``error: ...`` and exit code 2; a policy that fails its
pre-flight check is rejected the same way before any server starts. Ctrl-C
tears the servers down and writes nothing.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simulator.config import AutoscalerSpec, ConfigError, Scenario, WorkloadSpec, load_scenario
from rl import sanity
from simulator.io import jsonable

from .measure import copy_logs, write_csv

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = "simulator/data/traces/twitter_2021_rps_days01-14.csv.gz"
DEFAULT_START_S = 12 * 86400 + 9 * 3600 + 20 * 60      # day 13, 09:20 (held-out days 13-14)
DEFAULT_LENGTH_S = 3000.0                             # 50 trace minutes
COMPARE = ("hpa", "hpa_default", "static")
TARGETS = {"replica_seconds": 0.10, "p95_ms": 0.15}
FORMAT = "servesim-validate/1"


class ValidateError(RuntimeError):
    pass


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- policies under test


@dataclass
class Contender:
    name: str                             # policy | hpa | hpa_default | static
    label: str
    kind: str
    make: Callable[[], Any]               # a fresh policy object (same object reused real -> sim, reset each run)
    interval_s: float
    initial: int
    params: dict = field(default_factory=dict)


def _resolve(p: str) -> str:
    if os.path.isabs(p) or os.path.exists(p):
        return os.path.abspath(p)
    return os.path.normpath(os.path.join(ROOT, p))


def default_scenario_path(meta: dict) -> str:
    p = (meta.get("scenario") or {}).get("path")
    if p:
        for cand in (p, os.path.join(ROOT, p)):
            if os.path.exists(cand):
                return os.path.abspath(cand)
    return str(ROOT / "configs" / "calibrated" / "baseline.yaml")


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
    _say(quiet, "tuning the HPA on the tuning days (no --tuned given) ...")
    choice = tune_hpa(load_rl_config(None, scenario=scenario_path), log=lambda m: None)
    return choice, "tuned now on the tuning days (rl.baselines HPA grid)"


# --------------------------------------------------------------------------- workload


def validation_peak(sc: Scenario, slo_target: float) -> tuple[float, str]:
    """The study's validation load (``rl.study`` rule 8) for ``sc``: recorded in its study, else computed."""
    from rl.study import stack_record, study_of, validation_peak_rule
    from simulator.capacity import fleet_capacities
    st = study_of(sc)
    if st is not None:
        return float(st.validation_peak_rps), f"the study's: {st.rules.get('validation_peak_rps', '')}"
    from rl.common import DEFAULTS
    util = float(DEFAULTS["trace"]["target_util"])
    caps = fleet_capacities(sc, sc.cluster.max_replicas, slo_target)
    return validation_peak_rule(float(caps[-1]), util, stack_record(sc).get("max_served_rps"))


def build_workload(a, sc: Scenario, capacity: float) -> tuple[WorkloadSpec, float, dict]:
    """(workload, duration_s, description) of the validation run."""
    from rl.common import load_trace
    if a.workload:
        from simulator.config import load_raw, parse_workload
        raw = load_raw(a.workload)
        if isinstance(raw, dict) and "workload" in raw and "kind" not in raw:
            raw = raw["workload"]
        try:
            wl = parse_workload(raw, "workload", os.path.dirname(os.path.abspath(a.workload)))
        except ConfigError as e:
            raise ConfigError(f"{a.workload}: {e}") from None
        dur = a.duration or 120.0
        return wl, float(dur), {"kind": wl.kind, "source": a.workload, "spec": wl.to_dict()}
    trace = _resolve(a.trace or DEFAULT_TRACE)
    rates = load_trace(trace)
    start = DEFAULT_START_S if a.start is None else a.start
    length = DEFAULT_LENGTH_S if a.length is None else a.length
    if start < 0 or length <= 0 or start + length > len(rates):
        raise ConfigError(f"--start {start:g} --length {length:g}: outside {trace} ({len(rates)} seconds)")
    dur = float(a.duration or 120.0)
    speedup = length / dur
    x = rates[int(start):int(start + length)]
    p99 = float(np.percentile(x, 99))
    if not p99 > 0:
        raise ConfigError(f"--start {start:g} --length {length:g}: the trace slice has no load")
    rule = "given (--peak-rps)"
    peak = a.peak_rps
    if peak is None:
        peak, rule = validation_peak(sc, a.slo_target)
    if not peak > 0:
        raise ConfigError(f"--peak-rps: must be > 0 (got {peak})")
    scale = round(peak / p99, 4)
    wl = WorkloadSpec(kind="trace", path=trace, column="rps", speedup=speedup, scale=scale, offset_s=float(start),
                      length_s=float(length))
    desc = {"kind": "trace", "trace": trace, "start_s": start, "length_s": length, "speedup": round(speedup, 4),
            "scale": scale, "scale_rule": f"p99 of the slice ({p99:.0f} rps) x scale = peak {peak:.1f} rps: {rule}",
            "mean_rps": round(float(x.mean()) * scale, 2), "p99_rps": round(p99 * scale, 2),
            "max_rps": round(float(x.max()) * scale, 2)}
    return wl, dur, desc


def initial_replicas(arrivals: np.ndarray | None, sc: Scenario, capacity: float, interval_s: float) -> int:
    """Replicas the first two control intervals of load need (+10 %), like rl.common.trace_scenario."""
    c = sc.cluster
    if arrivals is None or not len(arrivals):
        n = c.replicas
    else:
        w = max(2 * interval_s, 10.0)
        r0 = float((arrivals < w).sum()) / w
        n = math.ceil(r0 * 1.1 / max(capacity, 1e-9))
    return int(min(max(n, c.min_replicas, 1), c.max_replicas))


# --------------------------------------------------------------------------- summaries (both sides)


def replica_seconds(reps: list[tuple[float, float]], a: float, b: float) -> float:
    """Sum over replicas of ``[requested, gone)`` overlapping ``[a, b]`` (gone = inf: still alive)."""
    return float(sum(max(0.0, min(g, b) - max(r, a)) for r, g in reps))


def side_summary(t_send, lat_ms, ok, reps: list[tuple[float, float]], warmup: float, duration: float,
                 slo_ms: float, copies: int = 1) -> dict:
    """Headline of one side: requests sent in ``[warmup, duration)``; replica time clipped to that window.

    ``copies``: number of pooled runs (simulated seeds): counts and cost are per run, percentiles pooled.
    """
    t = np.asarray(t_send, float)
    lat = np.asarray(lat_ms, float)
    okm = np.asarray(ok, bool)
    sel = (t >= warmup) & (t < duration)
    n = int(sel.sum())
    good = lat[sel & okm]
    failed = int((sel & ~okm).sum())
    late = int((good > slo_ms).sum())
    q = np.percentile(good, [50, 95, 99]) if len(good) else [math.nan] * 3
    cost = replica_seconds(reps, warmup, duration) / copies
    win = duration - warmup
    return {"requests": n / copies, "successes": int(len(good)) / copies, "failures": failed / copies,
            "late": late / copies, "slo_violation_rate": (late + failed) / n if n else math.nan,
            "p50_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]),
            "mean_ms": float(good.mean()) if len(good) else math.nan,
            "replica_seconds": cost, "mean_replicas": cost / win if win > 0 else math.nan,
            "throughput_rps": len(good) / copies / win if win > 0 else math.nan}


def real_load(real: dict, arrivals, caps, min_replicas: int, warmup: float, duration: float) -> dict:
    """What a real run's load was (for :func:`rl.sanity.validation_load`): the share of seconds whose sent load
    (5-s mean) needed more than ``min_replicas`` by the calibrated fleet capacities, the share of time more
    than ``min_replicas`` replicas were requested, and the share of planned requests actually sent."""
    from rl.study import share_above_min
    t = np.asarray(real["t_send"], float)
    t = t[np.isfinite(t) & (t >= warmup) & (t < duration)]
    n = max(1, int(math.floor(duration - warmup)))
    per_s = np.bincount(np.clip((t - warmup).astype(int), 0, n - 1), minlength=n).astype(float)
    grid = np.arange(warmup, duration, 0.25)
    req, _ = replica_curve(real["replicas"], grid)
    out = {"share_above_min": share_above_min(per_s, caps, min_replicas),
           "share_time_above_min": float(np.mean(req > min_replicas)) if len(grid) else 0.0,
           "peak_5s_rps": float(np.max(np.convolve(per_s, np.ones(5) / 5, "valid"))) if n >= 5 else float(per_s.max())}
    if arrivals is not None:
        arr = np.asarray(arrivals, float)
        planned = int(((arr >= warmup) & (arr < duration)).sum())
        out["planned"] = planned
        out["sent"] = int(len(t))
        out["delivered"] = len(t) / planned if planned else 1.0
    return out


def rel_err(sim: float, real: float) -> float:
    if not (isinstance(real, (int, float)) and isinstance(sim, (int, float))) or not math.isfinite(real) \
            or not math.isfinite(sim) or real == 0:
        return math.nan
    return (sim - real) / real


METRICS = ("replica_seconds", "mean_replicas", "slo_violation_rate", "p50_ms", "p95_ms", "p99_ms", "failures",
           "requests", "scaling_actions")


def compare_sides(real: dict, sim: dict) -> dict:
    """Per metric: real, sim, abs and relative error; targets for replica-seconds and p95."""
    out = {}
    for k in METRICS:
        r, s = real.get(k, math.nan), sim.get(k, math.nan)
        e = {"real": r, "sim": s, "abs_err": (s - r) if all(isinstance(x, (int, float)) for x in (r, s)) else math.nan,
             "rel_err": rel_err(s, r)}
        if k in TARGETS:
            e["target"] = TARGETS[k]
            e["within_target"] = bool(math.isfinite(e["rel_err"]) and abs(e["rel_err"]) <= TARGETS[k])
        out[k] = e
    return out


def pair_verdict(a: str, sa: dict, b: str, sb: dict, equal_slo_pts: float = 0.5, cost_tie: float = 0.02) -> dict:
    """Which of two policies is better: ``{"winner": name | None, "why": ...}``.

    Equal SLO = violation rates within ``equal_slo_pts`` percentage points: the cheaper wins (a tie
    when costs are within ``cost_tie``). Otherwise the one that is cheaper (or equally cheap) *and*
    has fewer violations wins; cheaper-but-worse is a trade-off (no winner).
    """
    ca, cb = sa["replica_seconds"], sb["replica_seconds"]
    va, vb = sa["slo_violation_rate"], sb["slo_violation_rate"]
    tie = abs(ca - cb) <= cost_tie * max(abs(ca), abs(cb), 1e-9)
    cheaper = a if ca < cb else b
    if abs(va - vb) * 100 <= equal_slo_pts:
        if tie:
            return {"winner": None, "why": "tie (equal cost and SLO)"}
        return {"winner": cheaper, "why": "cheaper at equal SLO"}
    fewer = a if va < vb else b
    if tie:
        return {"winner": fewer, "why": "fewer SLO violations at equal cost"}
    if cheaper == fewer:
        return {"winner": cheaper, "why": "cheaper and fewer SLO violations"}
    return {"winner": None, "why": f"trade-off ({cheaper} cheaper, {fewer} fewer violations)"}


def ranking(real: dict[str, dict], sim: dict[str, dict], equal_slo_pts: float = 0.5) -> dict:
    """Pairwise verdicts on both sides, cost order on both sides, and whether they agree."""
    names = list(real)
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[i], names[j]
            vr = pair_verdict(a, real[a], b, real[b], equal_slo_pts)
            vs = pair_verdict(a, sim[a], b, sim[b], equal_slo_pts)
            pairs.append({"a": a, "b": b, "real": vr, "sim": vs, "agree": vr["winner"] == vs["winner"]})
    order_r = sorted(names, key=lambda n: real[n]["replica_seconds"])
    order_s = sorted(names, key=lambda n: sim[n]["replica_seconds"])
    return {"equal_slo_pts": equal_slo_pts, "pairs": pairs, "cost_order_real": order_r, "cost_order_sim": order_s,
            "cost_order_agrees": order_r == order_s, "agrees": all(p["agree"] for p in pairs)}


def interval_series(t_send, lat_ms, ok, duration: float, step: float, slo_ms: float) -> dict:
    """Per ``step`` bin of send time: arrival rps, p95 latency of successes, violation fraction."""
    t = np.asarray(t_send, float)
    lat = np.asarray(lat_ms, float)
    okm = np.asarray(ok, bool)
    edges = np.arange(0.0, duration + 1e-9, step)
    idx = np.digitize(t, edges) - 1
    rows = {"t_s": [], "arrival_rps": [], "p95_ms": [], "violation_frac": []}
    for k in range(len(edges) - 1):
        m = idx == k
        g = lat[m & okm]
        n = int(m.sum())
        rows["t_s"].append(float(edges[k]))
        rows["arrival_rps"].append(n / step)
        rows["p95_ms"].append(float(np.percentile(g, 95)) if len(g) else math.nan)
        rows["violation_frac"].append(((g > slo_ms).sum() + (m & ~okm).sum()) / n if n else math.nan)
    return rows


def replica_curve(reps: list[tuple[float, float, float, float]], ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(requested, ready) replica counts at times ``ts``; a replica is (requested, ready, leaves rotation, gone)."""
    req = np.zeros(len(ts))
    rdy = np.zeros(len(ts))
    for r, y, d, g in reps:
        end = min(d, g)
        req += (ts >= r) & (ts < end)
        rdy += (ts >= y) & (ts < end)
    return req, rdy


# --------------------------------------------------------------------------- one real run


def run_real(c: Contender, policy, sc: Scenario, stack, wl: WorkloadSpec, duration: float, arrivals, work: Path,
             odir: Path, capacity: float, quiet: bool) -> dict:
    from .backends import make_backend
    from .controller import Controller, LiveRequests
    from .loadgen import run_load
    from .triton import MODEL_NAME
    odir.mkdir(parents=True, exist_ok=True)
    wdir = work / c.name
    run_sc = sc.replace(cluster=dataclasses.replace(sc.cluster, replicas=c.initial), workload=wl, duration_s=duration)
    be = make_backend(stack, run_sc, wdir / "server")
    feed = LiveRequests()
    logf = open(odir / "controller.log", "w")
    lock = threading.Lock()

    def log(m: str) -> None:
        with lock:
            logf.write(f"{time.time():.3f} {m}\n")
            logf.flush()
        if "holding" in m or "failed" in m or "stopped" in m or "clamped" in m:
            _say(quiet, m)

    ctl = Controller(be, policy, interval_s=c.interval_s, slo_ms=sc.slo_ms, min_replicas=sc.cluster.min_replicas,
                     max_replicas=sc.cluster.max_replicas, instances=sc.batching.instances, model=MODEL_NAME,
                     requests=feed, name=c.name, log=log)
    stop = threading.Event()
    bar = None
    res = None
    t0 = t_plan = math.nan
    try:
        _say(quiet, f"[{c.name}] deploying {c.initial} replica(s) ({stack.backend} backend) ...")
        be.deploy()
        url = be.endpoints["lb"]
        t0 = t_plan = time.time() + 4.0
        plan = {"url": url, "model": MODEL_NAME, "duration_s": duration, "seed": sc.seed,
                "timeout_s": stack.request_timeout_s, "max_inflight": stack.max_inflight, "start_at_epoch": t0,
                "stream": True, "stream_interval_s": 0.25}
        if wl.kind == "closed_loop":
            plan.update(mode="closed", users=wl.users, think=wl.think.to_dict("s"), spawn_rate=wl.spawn_rate)
        else:
            plan.update(mode="open", arrivals=np.asarray(arrivals, float).tolist())
        th = threading.Thread(target=ctl.run, args=(t0, duration, stop), name=f"controller-{c.name}", daemon=True)
        th.start()
        if not quiet:
            from tqdm import tqdm
            bar = tqdm(total=round(duration), desc=f"[{c.name}] real run", unit="s", file=sys.stderr,
                       dynamic_ncols=True)

        def _progress(el, cnt):
            if bar is not None:
                bar.n = max(0, min(round(el), bar.total))
                bar.set_postfix(sent=cnt.get("sent"), ok=cnt.get("ok"), failed=cnt.get("failed"),
                                ready=be.ready_replicas, want=ctl.last, refresh=False)
                bar.refresh()
        res = run_load(plan, wdir / "loadgen", progress=_progress, on_records=feed.feed)
        stop.set()
        th.join(c.interval_s + 10)
    finally:
        stop.set()
        if bar is not None:
            bar.close()
        errors = list(getattr(be, "errors", lambda: [])())
        be.teardown()
        logf.close()
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
    summ = side_summary(t_send, lat, ok, [(r, g) for r, _, _, g in reps4], sc.warmup_s, duration, sc.slo_ms)
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
        _say(quiet, f"[{c.name}] warning: the load started {start_skew:.2f} s after the controller's clock")
    return {"summary": summ, "t_send": t_send, "latency_ms": lat, "ok": ok, "replicas": reps4,
            "decisions": rows, "errors": errors + ctl.errors, "t0_epoch": t0, "loadgen": res.meta,
            "start_skew_s": start_skew, "scrapes": len(ctl.scrapes)}


# --------------------------------------------------------------------------- the simulated side


def run_sim(c: Contender, policy, sc: Scenario, wl_real: WorkloadSpec, duration: float, seeds: list[int],
            model=None) -> dict:
    from simulator.engine import simulate
    sims = []
    for s in seeds:
        ssc = sc.replace(name=f"validate:{c.name}", seed=s, duration_s=duration, record_requests=True,
                         workload=wl_real, cluster=dataclasses.replace(sc.cluster, replicas=c.initial),
                         autoscaler=AutoscalerSpec(kind=c.kind, interval_s=c.interval_s, params=dict(c.params)),
                         provenance={})
        sims.append(simulate(ssc, policy=policy, model=model))    # simulate() resets the policy
    t = np.concatenate([r.records["arrival_s"] for r in sims])
    lat = np.concatenate([(r.records["completion_s"] - r.records["arrival_s"]) * 1e3 for r in sims])
    ok = np.concatenate([r.records["status"] == 0 for r in sims])
    inf = math.inf
    f = (lambda x: inf if x != x else x)
    reps = [(rep.requested_s, f(rep.gone_s)) for r in sims for rep in r.replicas]
    summ = side_summary(t, lat, ok, reps, sc.warmup_s, duration, sc.slo_ms, copies=len(sims))
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


# --------------------------------------------------------------------------- output


def _fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if kind == "pct":
        return f"{v * 100:.2f} %"
    if kind == "rel":
        return f"{v * 100:+.1f} %"
    if kind == "int":
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


ROWS = (("replica-seconds", "replica_seconds", ""), ("SLO violations", "slo_violation_rate", "pct"),
        ("p50 ms", "p50_ms", ""), ("p95 ms", "p95_ms", ""), ("p99 ms", "p99_ms", ""),
        ("failures", "failures", "int"))


def table_lines(summary: dict, markdown: bool = True) -> list[str]:
    """The real-vs-simulated table (one row per policy and metric group)."""
    pols = summary["policies"]
    if markdown:
        head = ("| policy | replica-s real / sim (err) | SLO viol. real / sim | p50 ms real / sim (err) | "
                "p95 ms real / sim (err) | p99 ms real / sim (err) | failures real / sim |")
        lines = [head, "|" + "---|" * 7]
    else:
        lines = [f"{'policy':<12} {'replica-s real/sim':>22} {'err':>7} {'SLO-viol real/sim':>19} "
                 f"{'p50 real/sim':>14} {'p95 real/sim':>14} {'err':>7} {'p99 real/sim':>14} {'fail r/s':>10}"]
    for name, p in pols.items():
        cmp_ = p["compare"]

        def rs(k, kind=""):
            return f"{_fmt(cmp_[k]['real'], kind)} / {_fmt(cmp_[k]['sim'], kind)}"

        def ok(k):
            w = cmp_[k].get("within_target")
            return "" if w is None else (" ✓" if w else " ✗")
        if markdown:
            lines.append(f"| {name} | {rs('replica_seconds')} ({_fmt(cmp_['replica_seconds']['rel_err'], 'rel')}{ok('replica_seconds')}) | "
                         f"{rs('slo_violation_rate', 'pct')} | {rs('p50_ms')} ({_fmt(cmp_['p50_ms']['rel_err'], 'rel')}) | "
                         f"{rs('p95_ms')} ({_fmt(cmp_['p95_ms']['rel_err'], 'rel')}{ok('p95_ms')}) | "
                         f"{rs('p99_ms')} ({_fmt(cmp_['p99_ms']['rel_err'], 'rel')}) | {rs('failures', 'int')} |")
        else:
            lines.append(f"{name:<12} {rs('replica_seconds'):>22} {_fmt(cmp_['replica_seconds']['rel_err'], 'rel'):>7} "
                         f"{rs('slo_violation_rate', 'pct'):>19} {rs('p50_ms'):>14} {rs('p95_ms'):>14} "
                         f"{_fmt(cmp_['p95_ms']['rel_err'], 'rel'):>7} {rs('p99_ms'):>14} {rs('failures', 'int'):>10}")
    return lines


def report_md(s: dict) -> str:
    w = s["workload"]
    L = [f"# Sim-to-real validation: {s['policy_file']}", "",
         f"Created {s['created']} on {s['machine']} ({s['backend']} backend). Calibrated scenario "
         f"`{s['scenario_path']}` (SLO {s['slo_ms']:g} ms, replicas {s['min_replicas']}..{s['max_replicas']}). "
         f"Simulated side: {s['sim_seeds']} seed(s) per policy, replaying each real run's own send times and "
         f"initial replicas with the same policy object. Summary window: requests sent in "
         f"[{s['warmup_s']:g}, {s['duration_s']:g}) s.", ""]
    if w["kind"] == "trace":
        L += [f"Workload: `{os.path.basename(w['trace'])}` trace seconds {w['start_s']:g}..{w['start_s'] + w['length_s']:g} "
              f"compressed x{w['speedup']:g} into {s['duration_s']:g} s, rate scale {w['scale']:g} ({w['scale_rule']}); "
              f"mean {w['mean_rps']:g} rps, p99 {w['p99_rps']:g} rps, max {w['max_rps']:g} rps.", ""]
    else:
        L += [f"Workload: `{json.dumps(w.get('spec'))[:300]}` for {s['duration_s']:g} s.", ""]
    L += ["## Real vs simulated", ""] + table_lines(s) + [
        "", "Cells: real / simulated (relative error of the simulation). Targets: replica-seconds within "
        f"{TARGETS['replica_seconds'] * 100:.0f} %, p95 within {TARGETS['p95_ms'] * 100:.0f} % (✓/✗).", ""]
    L += ["| policy | what | interval | initial replicas | scaling actions real / sim | held ticks (metrics missing) | mean replicas real / sim |",
          "|---|---|---|---|---|---|---|"]
    for name, p in s["policies"].items():
        c = p["compare"]
        L.append(f"| {name} | {p['label']} | {p['interval_s']:g} s | {p['initial_replicas']} | "
                 f"{_fmt(c['scaling_actions']['real'], 'int')} / {_fmt(c['scaling_actions']['sim'])} | "
                 f"{p['real']['held_ticks']} of {p['real']['ticks']} | "
                 f"{c['mean_replicas']['real']:.2f} / {c['mean_replicas']['sim']:.2f} |")
    rk = s["ranking"]
    L += ["", "## Ranking", "",
          f"Cost order (cheapest first): real {' < '.join(rk['cost_order_real'])}; simulated "
          f"{' < '.join(rk['cost_order_sim'])} ({'same' if rk['cost_order_agrees'] else 'different'}).", "",
          f"Pairwise (equal SLO = violation rates within {rk['equal_slo_pts']:g} points):", "",
          "| pair | real | simulated | agree |", "|---|---|---|---|"]
    for p in rk["pairs"]:
        def v(x):
            return f"{x['winner'] or '-'} ({x['why']})"
        L.append(f"| {p['a']} vs {p['b']} | {v(p['real'])} | {v(p['sim'])} | {'yes' if p['agree'] else 'no'} |")
    t = s["targets"]
    L += ["", "## Targets", "",
          f"- simulated vs real replica-seconds within 10 % for every policy: **{'met' if t['cost'] else 'not met'}**",
          f"- simulated vs real p95 within 15 % for every policy: **{'met' if t['p95'] else 'not met'}**",
          f"- same ranking of policies in simulation and reality: **{'met' if t['ranking'] else 'not met'}**", ""]
    if s.get("static"):
        st = s["static"]
        L += [f"Static count: {st['replicas']} (smallest with simulated SLO violations <= {st['slo_target'] * 100:g} % on this "
              f"workload; " + ", ".join(f"{r['replicas']}: {r['slo_violation_rate'] * 100:.2f} %" for r in st["grid"]) + ").", ""]
    if s.get("hpa"):
        L += [f"Tuned HPA: {json.dumps(s['hpa']['params'])} every {s['hpa']['interval_s']:g} s ({s['hpa']['source']}).", ""]
    notes = []
    for name, p in s["policies"].items():
        if p["real"]["held_ticks"]:
            notes.append(f"{name}: the controller held its decision at {p['real']['held_ticks']} tick(s) "
                         f"(metrics missing; see {name}/controller.log)")
        if p.get("errors"):
            notes.append(f"{name}: {len(p['errors'])} backend/controller error(s): {p['errors'][0][:200]}")
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    L += ["## Plots", "", "`overlay.png`: per policy, replicas requested / ready (real solid, simulated dashed) and "
          "p95 latency per control interval, real vs simulated. `overlay_<policy>.png`: the same per policy, "
          "with the offered load.", ""]
    L += ["## Files", "", "`summary.json` (everything here), `<policy>/requests.csv` (every real request), "
          "`<policy>/decisions.csv` (every control tick: the live observation, the policy's answer, replicas asked, "
          "held or not), `<policy>/replicas.csv`, `<policy>/sim_timeline.csv` (first seed), "
          "`<policy>/controller.log`, `<policy>/logs/`.", ""]
    return "\n".join(L)


def plots(d: Path, s: dict, curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(curves)
    slo = s["slo_ms"]
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 2.9 * len(names) + 0.4), squeeze=False, sharex=True)
    for i, n in enumerate(names):
        cv = curves[n]
        ax = axes[i][0]
        ax.step(cv["ts"], cv["real_req"], where="post", color="C0", lw=1.6, label="real requested")
        ax.step(cv["ts"], cv["real_rdy"], where="post", color="C0", lw=0.9, alpha=0.6, label="real ready")
        ax.step(cv["ts"], cv["sim_req"], where="post", color="C1", lw=1.6, ls="--", label="sim requested")
        ax.step(cv["ts"], cv["sim_rdy"], where="post", color="C1", lw=0.9, ls="--", alpha=0.6, label="sim ready")
        ax.set_ylabel(f"{n}\nreplicas")
        ax.set_ylim(0, s["max_replicas"] + 0.5)
        ax.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
        c = s["policies"][n]["compare"]["replica_seconds"]
        ax.set_title(f"{n}: replica-s real {c['real']:.0f} / sim {c['sim']:.0f} ({_fmt(c['rel_err'], 'rel')})", fontsize=9)
        if i == 0:
            ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax2 = ax.twinx()
        ax2.plot(cv["real_series"]["t_s"], cv["real_series"]["arrival_rps"], color="k", lw=0.6, alpha=0.35)
        ax2.set_ylabel("load rps", fontsize=7, color="grey")
        ax2.tick_params(labelsize=7, colors="grey")
        ax = axes[i][1]
        ax.plot(cv["real_series"]["t_s"], cv["real_series"]["p95_ms"], color="C0", lw=1.4, marker=".", label="real p95")
        ax.plot(cv["sim_series"]["t_s"], cv["sim_series"]["p95_ms"], color="C1", lw=1.4, ls="--", marker=".", label="sim p95")
        ax.axhline(slo, color="crimson", lw=0.8, ls=":", label=f"SLO {slo:g} ms")
        ax.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
        c = s["policies"][n]["compare"]["p95_ms"]
        ax.set_title(f"{n}: p95 real {c['real']:.1f} / sim {c['sim']:.1f} ms ({_fmt(c['rel_err'], 'rel')})", fontsize=9)
        ax.set_ylabel("p95 latency per interval (ms)")
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("run time (s)")
    fig.suptitle(f"real vs simulated: {os.path.basename(s['policy_file'])} and baselines ({s['backend']} backend)", fontsize=10)
    fig.tight_layout()
    fig.savefig(d / "overlay.png", dpi=100)
    plt.close(fig)
    for n in names:
        cv = curves[n]
        fig, axes2 = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
        ax = axes2[0]
        ax.plot(cv["real_series"]["t_s"], cv["real_series"]["arrival_rps"], color="k", lw=1, label="offered load (real sends)")
        ax.plot(cv["sim_series"]["t_s"], cv["sim_series"]["arrival_rps"], color="C1", lw=1, ls="--", label="simulated arrivals")
        ax.set_ylabel("req/s")
        ax.legend(fontsize=8)
        ax = axes2[1]
        ax.step(cv["ts"], cv["real_req"], where="post", color="C0", lw=1.6, label="real requested")
        ax.step(cv["ts"], cv["real_rdy"], where="post", color="C0", lw=0.9, alpha=0.6, label="real ready")
        ax.step(cv["ts"], cv["sim_req"], where="post", color="C1", lw=1.6, ls="--", label="sim requested")
        ax.step(cv["ts"], cv["sim_rdy"], where="post", color="C1", lw=0.9, ls="--", alpha=0.6, label="sim ready")
        ax.set_ylim(0, s["max_replicas"] + 0.5)
        ax.set_ylabel("replicas")
        ax.legend(fontsize=8, ncol=2)
        ax = axes2[2]
        ax.plot(cv["real_series"]["t_s"], cv["real_series"]["p95_ms"], color="C0", lw=1.4, marker=".", label="real p95")
        ax.plot(cv["sim_series"]["t_s"], cv["sim_series"]["p95_ms"], color="C1", lw=1.4, ls="--", marker=".", label="sim p95")
        ax.axhline(slo, color="crimson", lw=0.8, ls=":", label=f"SLO {slo:g} ms")
        ax.set_ylabel("p95 latency (ms)")
        ax.set_xlabel("run time (s)")
        ax.legend(fontsize=8)
        for a_ in axes2:
            a_.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
        fig.suptitle(f"{n} ({s['policies'][n]['label']}): real vs simulated", fontsize=10)
        fig.tight_layout()
        fig.savefig(d / f"overlay_{n}.png", dpi=100)
        plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m cluster.validate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", help="policy.pt written by rl.train (the policy under test)")
    ap.add_argument("--backend", choices=("local", "kubernetes"), default=None,
                    help="real stack (default: the --stack file's, local)")
    ap.add_argument("--compare", default="hpa,static",
                    help=f"comparison policies run on the same backend: comma list of {', '.join(COMPARE)}, or none")
    ap.add_argument("--scenario", default=None, help="calibrated scenario (default: the one the policy was trained on)")
    ap.add_argument("--stack", default="configs/baseline.yaml",
                    help="measurement file whose stack: block configures the real stack (default configs/baseline.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the --stack file, e.g. --set stack.drain_timeout_s=5")
    ap.add_argument("--tuned", default=None, help="tuned baselines JSON (rl.baselines --out); default: tune the HPA now")
    ap.add_argument("--workload", default=None, help="YAML file with a simulator workload block (instead of the trace slice)")
    ap.add_argument("--trace", default=None, help=f"rate trace CSV (default {DEFAULT_TRACE})")
    ap.add_argument("--start", type=float, default=None, help=f"trace slice start, trace seconds (default {DEFAULT_START_S})")
    ap.add_argument("--length", type=float, default=None, help=f"trace slice length, trace seconds (default {DEFAULT_LENGTH_S:g})")
    ap.add_argument("--duration", type=float, default=None, help="seconds of real load per policy (default 120)")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds at the start left out of the summaries (default 10)")
    ap.add_argument("--peak-rps", type=float, default=None, help="p99 rate of the scaled slice (default: see module doc)")
    ap.add_argument("--slo-target", type=float, default=0.01, help="SLO-violation target for the static count (default 0.01)")
    ap.add_argument("--equal-slo-pts", type=float, default=0.5, help="violation rates within this many points count as equal SLO")
    ap.add_argument("--sim-seeds", type=int, default=3, help="simulated runs per policy (pooled; default 3)")
    ap.add_argument("--out", default="validate", help="output folder (default validate/)")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--allow-degenerate", action="store_true",
                    help="exit 0 even when a sanity check fails (the section is still printed and recorded)")
    return ap.parse_args(argv)


def validate(a) -> dict:
    from . import procs
    from .config import load_measure_config
    from .controller import check_policy, load_policy_file
    from simulator.hpa import HPAPolicy
    from simulator.policy import StaticPolicy
    from simulator.capacity import fleet_capacities, per_replica_capacity
    from simulator.service import build_service_model
    t_all = time.time()
    out = Path(a.out)
    if out.exists() and not a.force:
        raise ConfigError(f"--out {out}: already exists; use --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if a.duration is not None and not (a.duration > 0 and math.isfinite(a.duration)):
        raise ConfigError(f"--duration: must be > 0 (got {a.duration})")
    if a.sim_seeds < 1:
        raise ConfigError(f"--sim-seeds: must be >= 1 (got {a.sim_seeds})")
    if not 0 <= a.slo_target < 1:
        raise ConfigError(f"--slo-target: must be in [0, 1) (got {a.slo_target})")
    comp = [] if a.compare.strip() in ("none", "") else [x.strip() for x in a.compare.split(",") if x.strip()]
    bad = [x for x in comp if x not in COMPARE]
    if bad:
        raise ConfigError(f"--compare: unknown {bad[0]!r}; choose from {', '.join(COMPARE)} or none")
    comp = list(dict.fromkeys(comp))
    # 1. the policy: rejected here, before anything starts
    learned = load_policy_file(a.policy)
    meta = learned.meta
    scen_path = _resolve(a.scenario) if a.scenario else default_scenario_path(meta)
    sc = load_scenario(scen_path)
    cfg = load_measure_config(_resolve(a.stack), a.set)
    stack = cfg.stack if a.backend is None else dataclasses.replace(cfg.stack, backend=a.backend)
    a.backend = stack.backend
    ms = meta.get("scenario") or {}
    for k, v in (("min_replicas", sc.cluster.min_replicas), ("max_replicas", sc.cluster.max_replicas),
                 ("slo_ms", sc.slo_ms)):
        if k in ms and float(ms[k]) != float(v):
            _say(a.quiet, f"warning: {a.policy} was trained with {k} {ms[k]}, the scenario has {v}")
    warm = float(a.warmup)
    capacity = float(per_replica_capacity(sc, violation_target=a.slo_target))
    caps = fleet_capacities(sc, sc.cluster.max_replicas, a.slo_target)
    check_policy(learned, interval_s=learned.interval_s, slo_ms=sc.slo_ms, min_replicas=sc.cluster.min_replicas,
                 max_replicas=sc.cluster.max_replicas, capacity_rps=capacity, name=a.policy)
    wl, duration, wdesc = build_workload(a, sc, capacity)
    if not 0 <= warm < duration:
        raise ConfigError(f"--warmup: must be in [0, duration {duration:g}) (got {warm:g})")
    sc = sc.replace(warmup_s=warm, duration_s=duration)
    from .arrivals import arrival_times
    arrivals = None if wl.kind == "closed_loop" else arrival_times(wl, duration, sc.seed)
    if arrivals is not None and not len(arrivals):
        raise ConfigError("the workload has no arrivals in the run")
    sim_seeds = [sc.seed + 1000 + i for i in range(a.sim_seeds)]
    model = build_service_model(sc.service, sc.batching.max_batch_size)
    # 2. the contenders
    init = initial_replicas(arrivals, sc, capacity, learned.interval_s)
    cons = [Contender("policy", f"learned ({os.path.relpath(os.path.abspath(a.policy))}, "
                                f"{meta.get('training', {}).get('algo', '?')})", "policy", lambda: learned,
                      learned.interval_s, init, {"path": os.path.abspath(a.policy)})]
    info: dict[str, Any] = {}
    if "hpa" in comp:
        hp, src = tuned_hpa(a.tuned, scen_path, a.quiet)
        info["hpa"] = dict(hp, source=src)
        p = dict(hp["params"])
        cons.append(Contender("hpa", f"HPA tuned ({p.get('metric')} {p.get('target')}, down-window "
                                     f"{p.get('scale_down_stabilization_s', 300)} s)", "hpa",
                              (lambda p=p: HPAPolicy.from_params(dict(p), "hpa")), float(hp["interval_s"]), init, p))
    if "hpa_default" in comp:
        from rl.baselines import HPA_DEFAULT, HPA_DEFAULT_INTERVAL
        cons.append(Contender("hpa_default", "HPA default (busy_fraction 0.6, 15 s)", "hpa",
                              lambda: HPAPolicy.from_params(dict(HPA_DEFAULT), "hpa_default"), HPA_DEFAULT_INTERVAL,
                              init, dict(HPA_DEFAULT)))
    if "static" in comp:
        _say(a.quiet, "choosing the static count in simulation ...")
        n, grid = choose_static(sc, wl, duration, a.slo_target, sim_seeds, model)
        info["static"] = {"replicas": n, "slo_target": a.slo_target, "grid": grid}
        cons.append(Contender("static", f"static {n} replica(s)", "static", (lambda n=n: StaticPolicy(n)),
                              learned.interval_s, n, {"replicas": n}))
    objs = {c.name: c.make() for c in cons}
    for c in cons[1:]:
        check_policy(objs[c.name], interval_s=c.interval_s, slo_ms=sc.slo_ms, min_replicas=sc.cluster.min_replicas,
                     max_replicas=sc.cluster.max_replicas, capacity_rps=capacity, name=c.name)
    # 3. real runs, then the simulator on the same arrivals
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    work = Path(f"/tmp/servesim-validate-{os.getpid()}-{int(time.time())}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        from .measure import machine, preflight
        if stack.backend == "local":
            preflight(cfg, a.quiet)
        results: dict[str, dict] = {}
        curves: dict[str, dict] = {}
        _say(a.quiet, f"validating {', '.join(c.name for c in cons)} on the {stack.backend} backend: "
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
            cmp_ = compare_sides(real["summary"], sim["summary"])
            load = real_load(real, arrivals, caps, sc.cluster.min_replicas, sc.warmup_s, duration)
            results[c.name] = {"label": c.label, "kind": c.kind, "params": c.params, "interval_s": c.interval_s,
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
            _say(a.quiet, f"[{c.name}] real: {r_['replica_seconds']:.0f} replica-s, SLO-viol {r_['slo_violation_rate'] * 100:.2f} %, "
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
        (tmp / "summary.json").write_text(json.dumps(jsonable(summary), indent=1, default=str))
        (tmp / "report.md").write_text(report_md(summary))
        plots(tmp, summary, curves)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        summary["_checks"] = checks
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        procs.kill_all()


def main(argv: list[str] | None = None) -> int:
    from . import procs
    from .controller import PolicyRejected
    a = parse_args(argv)

    def body():
        try:
            return validate(a)
        except PolicyRejected as e:
            raise PolicyRejected(f"policy rejected before any scaling: {e}") from None
    rc, s = procs.run_guarded(body, runtime_errors=(ValidateError,))
    if rc is not None:
        return rc
    print("\n".join(table_lines(s, markdown=False)))
    t = s["targets"]
    rk = s["ranking"]
    print(f"targets: cost within 10 % {'met' if t['cost'] else 'NOT met'}; p95 within 15 % "
          f"{'met' if t['p95'] else 'NOT met'}; ranking {'agrees' if rk['agrees'] else 'DIFFERS'} "
          f"(real cost order {' < '.join(rk['cost_order_real'])}, sim {' < '.join(rk['cost_order_sim'])})")
    checks = s.pop("_checks")
    print("\n".join(sanity.section(checks)))
    print(f"wrote {a.out}/summary.json, report.md, overlay.png ({s['wall_s']:.0f} s)")
    bad = sanity.failure(checks)
    if bad and not a.allow_degenerate:
        print(f"error: {bad} (results written to {a.out}; --allow-degenerate accepts them)", file=sys.stderr)
        return sanity.EXIT_DEGENERATE
    return 0


if __name__ == "__main__":
    sys.exit(main())
