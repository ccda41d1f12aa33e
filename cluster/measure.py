"""Measure the real serving stack: ``python -m cluster.measure CONFIG --out results/baseline``.

Runs, in order (each can be skipped with ``--only``):

1. ``runs``    -- every load run of ``measure.runs`` (baseline closed loop, step, ramp, ...):
   deploy the backend (Triton replicas behind the load balancer), scrape every
   replica's metrics each second, drive Locust load, apply timed events
   (scale / kill), tear down.
2. ``sweep``   -- the profiling sweep: per-batch compute time samples per batch
   size, latency vs concurrency (:mod:`cluster.sweep`). Always against a local
   ``tritonserver`` on this machine.
3. ``startup`` -- replica start-up samples: process start -> model ready
   (local backend), or pod created -> pod Ready from scale-ups (Kubernetes).

and prints the seed study's headline table for the first run (average, p95,
p99 latency, throughput, success rate). Everything is written to a temporary
folder next to ``--out`` and renamed at the end: a failed or interrupted
measurement leaves no half-written output. An existing ``--out`` is replaced only
with ``--force`` and only if it holds an earlier measurement (its marker, or the
``format`` line of its ``manifest.json``); anything else is refused before anything starts.

Output format (``results/<name>/``; calibration reads exactly this)
=====================================================================

``.servesim-output.json`` is the output marker of :class:`simulator.io.OutputFolder`
(``format``, ``command``, ``token``, ``created``): ``--force`` replaces only a folder that
carries it (or, written before it existed, a ``manifest.json`` of this format). Readers ignore it.

All times are seconds. Per run, ``t = 0`` is the start of the load
(``run.json: t0_epoch``, wall-clock epoch seconds); files are CSV with a header.

``manifest.json``
    ``format`` ("servesim-measurements/1"), ``created`` (UTC ISO), ``command``,
    ``config_file``, ``config`` (the measurement file as loaded), ``scenario``
    (the resolved base scenario, simulator schema), ``seed``, ``backend``,
    ``versions`` (python, tritonserver, nvidia-pytriton, onnxruntime, torch,
    locust, tritonclient, haproxy, numpy, servesim git commit), ``machine``
    (hostname, platform, cpu model, cores, memory), ``model`` (the served model:
    ``name`` (Triton's), ``kind`` (builtin / onnx / repository), ``backend``, ``spec`` (the
    ``model:`` block), ``inputs`` / ``outputs`` (name, datatype, dims without the batch
    axis), and per kind the architecture and parameters, the ONNX file and its
    sha256, or the repository and the server's reported configuration),
    ``stack`` (onnx threads, the tritonserver binary, ...), ``phases`` (wall time of each phase),
    ``wall_s`` (total), ``runs`` (each run's headline summary), ``files``
    (every file with a one-line description).
``config.yaml``
    Copy of the measurement file.
``runs/<run>/run.json``
    ``name``, ``scenario`` (this run's resolved scenario: workload, batching,
    cluster ...), ``events`` (planned), ``t0_epoch``, ``duration_s``,
    ``warmup_s``, ``summary`` (headline over requests sent in
    ``[warmup_s, duration_s)``: requests, successes, failures, success_rate,
    throughput_rps, avg/p50/p95/p99/max latency ms; failures by status),
    ``loadgen`` (Locust metadata: counts, Locust's own stats, user exceptions),
    ``backend_errors``, ``scrape_errors``.
``runs/<run>/requests.csv``
    One row per request: ``seq`` (request number; open loop: index of the
    arrival), ``user`` (closed-loop user id, -1 open loop), ``t_sched_s``
    (planned send time; open loop: the precomputed arrival), ``t_send_s``
    (actual send time), ``latency_ms`` (client-side, send -> full response;
    empty for requests never sent), ``status`` (``ok``, ``rejected`` = Triton
    queue full, ``timeout`` = Triton queue timeout, ``unavailable`` = no
    replica / connection refused or reset / HTTP 502-504, ``client_timeout``,
    ``client_overload``, ``error``), ``http_status``, ``replica`` (the replica
    that served it, reported by the model itself), ``error`` (message).
``runs/<run>/metrics.csv``
    Every ``nv_*`` Prometheus sample of every replica (GPU servers: ``nv_gpu_utilization``,
    ``nv_gpu_memory_used_bytes`` too), scraped each
    ``stack.scrape_interval_s``: ``t_s, replica, metric, labels, value``
    (``labels`` as ``k=v,k=v``). Counters are cumulative since the replica
    started; see :mod:`cluster.stack.scrape` for their meaning.
``runs/<run>/batches.csv``
    ``t_s, replica, batch_size, batches, compute_infer_ns``: every replica's statistics of the
    served model (``/v2/models/<m>/stats``, ``batch_stats``), read with each metrics scrape: for
    each batch size the dynamic batcher formed, the batches executed so far (cumulative since
    the replica started) and their summed compute time. The difference between two scrapes is
    the exact distribution of executed batch sizes in between (the Prometheus counters give
    only its mean). Optional for readers (added in the same format version).
``runs/<run>/config.pbtxt``, ``model/config.pbtxt``
    The served model's Triton configuration in that run (the run's ``batching:`` block merged
    in: generated for ONNX models, the user's own with the batcher keys overridden for a
    repository model), and with the base scenario's batching.
``runs/<run>/replicas.csv``
    One row per replica: ``name, t_request_s`` (scale decision), ``t_start_s``
    (process/pod start), ``t_live_s``, ``t_ready_s`` (model ready and in the
    load balancer), ``t_drain_s`` (taken out of rotation), ``t_gone_s``
    (process exited), ``end_reason`` (scale_down, crashed, teardown,
    failed_start), ``exit_code``. Replicas of the initial deployment start
    before t = 0 (negative times).
``runs/<run>/cluster.csv``
    ``t_s, desired, ready, pending`` replica counts at every scrape.
``runs/<run>/events.csv``
    ``t_s, kind, value, detail``: events applied during the run (scale, kill).
``runs/<run>/observations.csv``
    The :class:`simulator.policy.Observation` of every scrape interval, built
    by :func:`cluster.stack.scrape.observation_from_window` (what a live controller
    would give a policy).
``runs/<run>/logs/``
    Server (``r*.log``), load balancer and load generator logs.
``sweep/compute.csv``
    ``batch_size, sample, compute_infer_ms, compute_input_ms,
    compute_output_ms, queue_ms, client_ms``: one row per executed batch
    (Triton's per-batch-size statistics delta, one request at a time; the
    sweep waits until the statistics count the request. Folders written before
    that fix can hold a 0 ms row followed by a doubled one: calibration drops
    such pairs).
``sweep/concurrency.csv``
    ``concurrency, requests, failures, duration_s, throughput_rps, avg_ms,
    p50_ms, p90_ms, p95_ms, p99_ms, mean_batch_size, mean_queue_ms,
    mean_compute_ms_per_request, gpu_utilization, gpu_memory_used_bytes`` for closed-loop
    batch-1 load with no think time against one replica with the scenario's batching (the GPU
    gauges at the end of each level; empty on a server without GPU metrics).
``sweep/interference.csv``
    ``replicas, replica, batches, duration_s, compute_ms, compute_infer_ms,
    busy_fraction, concurrency, client_ms``: for each replica count ``N`` of
    ``measure.sweep.interference_replicas``, one row per replica of ``N``
    replicas each loaded back to back with batch-1 requests: mean compute time
    per executed batch (input + infer + output; ``compute_infer_ms`` alone),
    its busy fraction, and ``concurrency`` = mean number of batches executing
    on the node while one of its batches runs (1 + the other replicas' busy
    fractions). Absent when ``interference_duration_s`` is 0 (added in the same
    format version; readers treat it as optional).
``sweep/sweep.json``
    Sweep settings and the batching used for each part.
``startup/startup.csv``
    ``sample, t_start, process_to_live_s, live_to_ready_s, process_to_ready_s``
    (``t_start`` epoch).

Pipelines (a ``scenario:`` with ``pipeline:``)
-----------------------------------------------

A pipeline measurement deploys every stage on its own (its replicas, load balancer and batcher: the stage's
``batching`` / ``cluster``) serving the model of the stage's variant (``model: {stages: ...}``), and sends
every request through the stages by chained client calls (:mod:`cluster.stack.chain`). The folder is the
single-model one with these differences (a single model's folder is unchanged):

``manifest.json``
    ``model``: ``{stages: {stage: {variant: <the served model, as above>}}}``; ``sweep`` and ``startup``:
    ``{stage: {variant: summary}}``; ``runs``: each run's end-to-end headline with ``stages: {stage:
    {variant, model, <the headline of its visits>, gap_ms (stages after the first)}}``.
``runs/<run>/requests.csv``
    End to end, one row per request: the single-model columns (``t_send_s``: sent to the first stage;
    ``latency_ms``: that send -> the last stage's response, or the response that failed it; ``status``,
    ``http_status``, ``error``: the stage's that ended it; ``replica``: the serving replica of each stage
    visited, joined by ``/``) and ``end_stage`` (the stage that ended it: the last one, or the one where
    it failed; empty for a request never sent).
``runs/<run>/stages/<stage>/requests.csv``
    One row per visit of the stage: ``seq`` (the request's, as in ``requests.csv``), ``t_send_s`` (the
    client sends to the stage's load balancer: the arrival at the stage), ``latency_ms`` (client-side,
    that send -> the stage's response), ``status``, ``http_status``, ``replica``, ``error``, ``gap_ms``
    (the client's time from the previous stage's response to this send: the chaining overhead; empty for
    the first stage). A request's end-to-end latency is, to a few microseconds, the sum of its visits' ``latency_ms``
    and ``gap_ms``.
``runs/<run>/stages/<stage>/``: ``metrics.csv``, ``batches.csv``, ``replicas.csv``, ``cluster.csv``, ...
    ``observations.csv``, ``config.pbtxt`` and ``logs/`` as a single model's, for the stage's deployment
    (observations from its visits; ``slo_ms`` is the end-to-end SLO). ``runs/<run>/logs/`` holds the load
    generator's log.
``runs/<run>/events.csv``
    ``t_s, stage, kind, value, detail``.
``runs/<run>/run.json``
    As a single model's, with ``stages`` (per stage its variant, model and single-model scenario),
    ``summary.stages`` (per stage the headline of its visits sent in the window, and ``gap_ms``: mean,
    p50, p95, max), ``backend_errors`` and ``scrape_errors`` per stage, and each event's ``stage``.
``model/<stage>/<variant>/config.pbtxt``, ``sweep/<stage>/<variant>/``, ``startup/<stage>/<variant>/startup.csv``
    Every variant of every stage profiled as a single model is (the same files), with its stage's
    batching; a stage without ``variants:`` has the one variant ``default``.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from simulator.io import OutputFolder, json_format_is

from .stack import procs
from .stack.deploy import make_backend
from .config import MeasureConfig, RunSpec, load_measure_config
from .stack.lb import haproxy_version
from .stack.loadgen import run_load
from .stack.scrape import Scraper, latency_summary, observation_from_window
from .stack.served import ServedModel, served_for

FORMAT = "servesim-measurements/1"
BATCH_COLUMNS = ("t_s", "replica", "batch_size", "batches", "compute_infer_ns")
PHASES = ("runs", "sweep", "startup")
# the seed study (GPU cluster, 10 closed-loop users, the default built-in model), for the headline comparison;
# shown only beside a measurement of that model (another model's figures have nothing to compare with it)
SEED_STUDY_MODEL = "mobilenetv4_conv_small"
SEED_STUDY = {"avg_ms": 72.0, "p95_ms": 74.0, "p99_ms": 81.0, "throughput_rps": 13.0, "success_rate": 1.0}


def _tqdm(**kw):
    from tqdm import tqdm
    return tqdm(dynamic_ncols=True, file=sys.stderr, **kw)


def write_csv(path: Path, header, rows, float_fmt: str | None = None) -> None:
    """A CSV with NaN as an empty cell; floats formatted with ``float_fmt`` (e.g. ``.6f``) when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if (isinstance(v, float) and math.isnan(v)) else
                        (format(v, float_fmt) if float_fmt and isinstance(v, float) else v) for v in r])


def _write_csv(path: Path, header, rows) -> None:
    write_csv(path, header, rows, ".6f")


def copy_logs(wdir: Path, dest: Path, servers: str | None = "server", loadgen: bool = True) -> None:
    """The logs of a run (work folder ``wdir``) into ``dest``: the servers' (in ``wdir/<servers>``; None:
    none) and the load generator's (``loadgen``)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in list((wdir / servers).glob("*.log") if servers else []) + \
            ([wdir / "loadgen" / "loadgen.log"] if loadgen else []):
        if p.exists():
            shutil.copyfile(p, dest / p.name)


def _rel(t, t0):
    return "" if t is None else round(t - t0, 6)


# --------------------------------------------------------------------------- one run


def build_plan(run: RunSpec, url: str, stack, start_at: float, served: ServedModel, workdir: Path) -> dict:
    return {"url": url, **served.load_plan(workdir, run.scenario.seed), **load_keys(run.scenario, stack, start_at)}


def load_keys(sc, stack, start_at: float) -> dict:
    """The load generator's plan keys of scenario ``sc``'s workload (what is sent when; not where)."""
    w = sc.workload
    plan = {"duration_s": sc.duration_s, "seed": sc.seed, "timeout_s": stack.request_timeout_s,
            "max_inflight": stack.max_inflight, "start_at_epoch": start_at}
    if w.kind == "closed_loop":
        plan.update(mode="closed", users=w.users, think=w.think.to_dict("s"), spawn_rate=w.spawn_rate)
    else:
        from .stack.arrivals import arrival_times
        plan.update(mode="open", arrivals=arrival_times(w, sc.duration_s, sc.seed).tolist())
    return plan


def apply_event(be, kind: str, value: int) -> str:
    """Apply a timed event to backend ``be`` (``scale`` to ``value`` replicas, or ``kill`` the ``value``-th
    ready one); its ``detail`` for ``events.csv``."""
    if kind == "scale":
        be.scale(value)
        return f"desired {value}"
    return f"SIGKILL {be.kill(value)}"


def drive_load(run: RunSpec, plan: dict, wdir: Path, start_at: float, act, ready, quiet: bool = False):
    """The load of ``plan`` (work folder ``wdir/loadgen``) with ``run``'s events applied on time by
    ``act(event) -> detail`` (an exception is recorded as ``failed: ...``; the run goes on), under a progress
    bar showing ``ready()``; returns the load result and the events applied, ``(epoch time, *event[1:],
    detail)``."""
    applied: list[tuple] = []
    stop_evt = threading.Event()

    def _events():
        for ev in run.events:
            if stop_evt.wait(max(0.0, start_at + ev[0] - time.time())):
                return
            try:
                detail = act(ev)
            except Exception as e:  # recorded, the run goes on
                detail = f"failed: {e}"
            applied.append((time.time(), *ev[1:], detail))
    threading.Thread(target=_events, name="events", daemon=True).start()
    sc = run.scenario
    bar = None if quiet else _tqdm(total=round(sc.duration_s), desc=f"[{run.name}] {sc.workload.kind}", unit="s")

    def _progress(el, c):
        if bar is not None:
            bar.n = max(0, min(round(el), bar.total))
            bar.set_postfix(sent=c.get("sent"), ok=c.get("ok"), failed=c.get("failed"), ready=ready(), refresh=False)
            bar.refresh()
    try:
        return run_load(plan, wdir / "loadgen", progress=_progress), applied
    finally:
        stop_evt.set()
        if bar is not None:
            bar.close()


def run_one(run: RunSpec, cfg: MeasureConfig, out: Path, work: Path, quiet: bool = False) -> dict:
    sc, stack = run.scenario, cfg.stack
    served = served_for(stack)
    rdir = out / "runs" / run.name
    rdir.mkdir(parents=True, exist_ok=True)
    wdir = work / "runs" / run.name
    be = make_backend(stack, sc, wdir / "server")
    scraper = None
    try:
        if not quiet:
            print(f"[{run.name}] deploying {sc.cluster.replicas} replica(s) ({stack.backend} backend) ...",
                  file=sys.stderr)
        be.deploy()
        url = be.endpoints["lb"]
        if not served.inputs:            # a repository model on a backend measure could not probe first
            from .stack.triton import server_model_config
            served.learn_from_server(server_model_config(url, served.name))
        scraper = Scraper(be, served.name, stack.scrape_interval_s).start()
        start_at = time.time() + 3.0
        plan = build_plan(run, url, stack, start_at, served, wdir / "loadgen")
        res, applied = drive_load(run, plan, wdir, start_at, lambda ev: apply_event(be, *ev[1:3]),
                                  lambda: be.ready_replicas, quiet)
        scraper.stop()
    finally:
        if scraper is not None:
            scraper.stop()
        log = be.replica_log()
        errors = list(getattr(be, "errors", lambda: [])())
        be.teardown()
    log = be.replica_log()
    t0 = float(res.meta["t0_epoch"])
    rows, reqs = read_request_log(res.requests_path, t0)
    _write_csv(rdir / "requests.csv", REQUEST_FILE_COLUMNS, rows)
    _write_csv(rdir / "events.csv", ("t_s", "kind", "value", "detail"),
               ((round(t - t0, 4), k, v, d) for t, k, v, d in applied))
    write_deployment(rdir, scraper, log, t0, sc, served, stack, reqs)
    copy_logs(wdir, rdir / "logs")
    summ = window_summary(reqs, sc)
    run_json = {"name": run.name, "scenario": sc.to_dict(),
                "events": [{"at_s": a, k: v} for a, k, v in run.events],
                "t0_epoch": t0, "duration_s": sc.duration_s, "warmup_s": sc.warmup_s, "summary": summ,
                "loadgen": res.meta, "backend": stack.backend, "backend_errors": errors,
                "scrape_errors": scraper.errors}
    (rdir / "run.json").write_text(json.dumps(run_json, indent=1, default=str))
    if not quiet:
        print(f"[{run.name}] {summary_line(summ)}", file=sys.stderr)
    return summ


def run_pipeline(run: RunSpec, cfg: MeasureConfig, out: Path, work: Path, quiet: bool = False) -> dict:
    """One load run of a pipeline scenario: every stage deployed (its own replicas and load balancer,
    :class:`cluster.stack.chain.PipelineDeployment`) and scraped on its own, the load sent through the
    stages by chained client calls; writes the run's files (module docstring: pipelines) and returns the
    end-to-end headline with each stage's under ``stages``."""
    from .stack.chain import PipelineDeployment, check_links
    sc, stack = run.scenario, cfg.stack
    rdir = out / "runs" / run.name
    rdir.mkdir(parents=True, exist_ok=True)
    wdir = work / "runs" / run.name
    dep = PipelineDeployment(sc, stack, wdir / "server")
    scrapers: dict[str, Scraper] = {}
    logs: dict[str, list] = {}
    errors: dict[str, list] = {}
    try:
        if not quiet:
            print(f"[{run.name}] deploying " + ", ".join(
                f"{st.name} ({st.variant}): {st.scenario.cluster.replicas} replica(s)" for st in dep.stages)
                + f" ({stack.backend} backend) ...", file=sys.stderr)
        dep.deploy()
        for st in dep.stages:
            if not st.served.inputs:     # a repository model on a backend measure could not probe first
                from .stack.triton import server_model_config
                st.served.learn_from_server(server_model_config(st.backend.endpoints["lb"], st.served.name))
        check_links([[(st.variant, st.served)] for st in dep.stages], [st.name for st in dep.stages])
        for st in dep.stages:
            scrapers[st.name] = Scraper(st.backend, st.served.name, stack.scrape_interval_s).start()
        start_at = time.time() + 3.0
        from .stack.chain import chain_plan
        plan = {**chain_plan(dep.stages, wdir / "loadgen", sc.seed), **load_keys(sc, stack, start_at)}
        res, applied = drive_load(run, plan, wdir, start_at,
                                  lambda ev: apply_event(dep.stage(ev[3]).backend, *ev[1:3]),
                                  lambda: "/".join(str(st.backend.ready_replicas) for st in dep.stages), quiet)
    finally:
        for scr in scrapers.values():
            scr.stop()
        for st in dep.stages:
            errors[st.name] = list(getattr(st.backend, "errors", lambda: [])())
        dep.teardown()
    for st in dep.stages:
        logs[st.name] = st.backend.replica_log()
    t0 = float(res.meta["t0_epoch"])
    names = [st.name for st in dep.stages]
    rows, reqs = read_request_log(res.requests_path, t0, extra=("end_stage",))
    rows = [(*r[:-1], names[int(r[-1])] if r[-1] != "" else "") for r in rows]
    _write_csv(rdir / "requests.csv", REQUEST_FILE_COLUMNS + ("end_stage",), rows)
    _write_csv(rdir / "events.csv", ("t_s", "stage", "kind", "value", "detail"),
               ((round(t - t0, 4), st, k, v, d) for t, k, v, st, d in applied))
    copy_logs(wdir, rdir / "logs", servers=None)
    visits = read_visit_log(res.visits_path, t0, len(names))
    summ = window_summary(reqs, sc)
    summ["stages"] = {}
    for st, (vrows, vreqs, gaps) in zip(dep.stages, visits):
        sdir = rdir / "stages" / st.name
        _write_csv(sdir / "requests.csv", STAGE_REQUEST_COLUMNS, vrows)
        write_deployment(sdir, scrapers[st.name], logs[st.name], t0, st.scenario, st.served, st.stack, vreqs)
        copy_logs(wdir, sdir / "logs", servers=f"server/{st.name}", loadgen=False)
        ss = window_summary(vreqs, sc)
        if st.index:
            g = np.array([x for t, x in zip(vreqs["t_send"], gaps) if sc.warmup_s <= t < sc.duration_s
                          and not math.isnan(x)])
            ss["gap_ms"] = {"mean": float(g.mean()), "p50": float(np.median(g)), "p95": float(np.percentile(g, 95)),
                            "max": float(g.max())} if len(g) else {}
        summ["stages"][st.name] = {"variant": st.variant, "model": st.served.name, **ss}
    run_json = {"name": run.name, "scenario": sc.to_dict(),
                "stages": {st.name: {"variant": st.variant, "model": st.served.name, "scenario": st.scenario.to_dict()}
                           for st in dep.stages},
                "events": [{"at_s": a, k: v, "stage": stage} for a, k, v, stage in run.events],
                "t0_epoch": t0, "duration_s": sc.duration_s, "warmup_s": sc.warmup_s, "summary": summ,
                "loadgen": res.meta, "backend": stack.backend, "backend_errors": errors,
                "scrape_errors": {n: scr.errors for n, scr in scrapers.items()}}
    (rdir / "run.json").write_text(json.dumps(run_json, indent=1, default=str))
    if not quiet:
        print(f"[{run.name}] end to end: {summary_line(summ)}", file=sys.stderr)
        for n, ss in summ["stages"].items():
            gap = f"; chaining gap p50 {ss['gap_ms']['p50']:.2f} ms" if ss.get("gap_ms") else ""
            print(f"[{run.name}]   {n} ({ss['variant']}): avg {ss['avg_ms']:.1f} ms, p95 {ss['p95_ms']:.1f} ms, "
                  f"{ss['failures']} failed{gap}", file=sys.stderr)
    return summ


STAGE_REQUEST_COLUMNS = ("seq", "t_send_s", "latency_ms", "status", "http_status", "replica", "error", "gap_ms")


def read_visit_log(path, t0: float, n_stages: int) -> list[tuple[list[tuple], dict, list[float]]]:
    """The load generator's stage-visit log, per stage: ``stages/<stage>/requests.csv`` rows (run time), the
    ``{t_send, latency_ms, status, replica}`` lists of :func:`read_request_log`, and the visits' ``gap_ms``."""
    out: list[tuple[list, dict, list]] = [([], {"t_send": [], "latency_ms": [], "status": [], "replica": []}, [])
                                          for _ in range(n_stages)]
    with open(path) as f:
        for r in csv.DictReader(f):
            rows, reqs, gaps = out[int(r["stage"])]
            lat, gap = _ms(r["latency_ms"]), _ms(r["gap_ms"])
            ts = float(r["t_send"]) - t0
            rows.append((int(r["seq"]), round(ts, 6), "" if math.isnan(lat) else round(lat, 3), r["status"],
                         r["http_status"], r["replica"], r["error"], "" if math.isnan(gap) else round(gap, 3)))
            for k, v in (("t_send", ts), ("latency_ms", lat), ("status", r["status"]), ("replica", r["replica"])):
                reqs[k].append(v)
            gaps.append(gap)
    return out


REQUEST_FILE_COLUMNS = ("seq", "user", "t_sched_s", "t_send_s", "latency_ms", "status", "http_status", "replica",
                        "error")


def _ms(v: str) -> float:
    return float(v) if v not in ("", "nan") else float("nan")


def read_request_log(path, t0: float, extra: tuple[str, ...] = ()) -> tuple[list[tuple], dict]:
    """The load generator's request log (epoch seconds) as ``requests.csv`` rows (run time, rounded; the
    ``extra`` columns appended as they are) and ``{t_send, latency_ms, status, replica}`` lists (run time,
    unrounded) for :func:`write_deployment` and :func:`window_summary`."""
    with open(path) as f:
        raw = list(csv.DictReader(f))
    reqs: dict[str, list] = {"t_send": [], "latency_ms": [], "status": [], "replica": []}
    rows = []
    for r in raw:
        lat = _ms(r["latency_ms"])
        ts = float(r["t_send"]) - t0
        rows.append((int(r["seq"]), int(r["user"]), round(float(r["t_sched"]) - t0, 6), round(ts, 6),
                     "" if math.isnan(lat) else round(lat, 3), r["status"], r["http_status"], r["replica"],
                     r["error"], *(r[c] for c in extra)))
        for k, v in (("t_send", ts), ("latency_ms", lat), ("status", r["status"]), ("replica", r["replica"])):
            reqs[k].append(v)
    return rows, reqs


def write_deployment(ddir: Path, scraper, log, t0: float, sc, served: ServedModel, stack, reqs: dict) -> None:
    """One deployment's files of a run into ``ddir``: ``metrics.csv``, ``replicas.csv``, ``cluster.csv``,
    ``batches.csv``, ``config.pbtxt`` and ``observations.csv`` (its scrapes, replica log ``log`` and the
    requests ``reqs`` it served, times relative to ``t0``; ``sc``: its single-model scenario)."""
    _write_csv(ddir / "metrics.csv", ("t_s", "replica", "metric", "labels", "value"),
               ((round(t - t0, 4), rep, m, lab, v) for t, rep, m, lab, v in scraper.rows))
    _write_csv(ddir / "replicas.csv", ("name", "t_request_s", "t_start_s", "t_live_s", "t_ready_s", "t_drain_s",
                                       "t_gone_s", "end_reason", "exit_code"),
               ((r.name, _rel(r.t_request, t0), _rel(r.t_start, t0), _rel(r.t_live, t0), _rel(r.t_ready, t0),
                 _rel(r.t_drain, t0), _rel(r.t_gone, t0), r.end_reason,
                 "" if r.exit_code is None else r.exit_code) for r in log))
    _write_csv(ddir / "cluster.csv", ("t_s", "desired", "ready", "pending"),
               ((round(t - t0, 4), d, rd, p) for t, d, rd, p in scraper.states))
    _write_csv(ddir / "batches.csv", BATCH_COLUMNS,
               ((round(t - t0, 4), rep, b, n, ns) for t, rep, b, n, ns in scraper.batch_rows))
    (ddir / "config.pbtxt").write_text(served.config_pbtxt(sc.batching, stack.onnx_threads))
    # --- observations per scrape interval
    obs_rows = []
    header = None
    states = {round(t, 6): (d, rd, p) for t, d, rd, p in scraper.states}
    req_abs = {"t_send": [t + t0 for t in reqs["t_send"]], "latency_ms": reqs["latency_ms"],
               "status": reqs["status"]}
    for (ta, sa), (tb, sb) in zip(scraper.snapshots, scraper.snapshots[1:]):
        d, rd, p = states.get(round(tb, 6), (len(sb), len(sb), 0))
        o = observation_from_window(ta, tb, req_abs, sa, sb, replicas=d, replicas_ready=rd, replicas_pending=p,
                                    instances=sc.batching.instances, slo_ms=sc.slo_ms,
                                    min_replicas=sc.cluster.min_replicas, max_replicas=sc.cluster.max_replicas)
        od = o.to_dict()
        od["time_s"] = round(tb - t0, 4)
        header = header or list(od)
        obs_rows.append([od[k] for k in header])
    _write_csv(ddir / "observations.csv", header or ["time_s"], obs_rows)


def window_summary(reqs: dict, sc) -> dict:
    """The headline over the requests sent in ``[warmup_s, duration_s)`` of ``sc``
    (:func:`cluster.stack.scrape.latency_summary`), with the counts by status and, of the successes, by
    serving replica."""
    warm = sc.warmup_s
    sel = [i for i, t in enumerate(reqs["t_send"]) if warm <= t < sc.duration_s]
    summ = latency_summary([reqs["latency_ms"][i] for i in sel], [reqs["status"][i] for i in sel],
                           sc.duration_s - warm)
    by_status: dict[str, int] = {}
    for i in sel:
        by_status[reqs["status"][i]] = by_status.get(reqs["status"][i], 0) + 1
    summ["by_status"] = by_status
    summ["by_replica"] = {}
    for t, st, rep in zip(reqs["t_send"], reqs["status"], reqs["replica"]):
        if st == "ok" and warm <= round(t, 6) < sc.duration_s:
            summ["by_replica"][rep] = summ["by_replica"].get(rep, 0) + 1
    return summ


def summary_line(summ: dict) -> str:
    return (f"{summ['requests']} requests, {summ['failures']} failed; avg {summ['avg_ms']:.1f} ms, "
            f"p95 {summ['p95_ms']:.1f} ms, p99 {summ['p99_ms']:.1f} ms, {summ['throughput_rps']:.2f} req/s")


# --------------------------------------------------------------------------- sweep + startup


def sweep_deployment(scenario, stack, s, sdir: Path, work: Path, quiet: bool = False, label: str = "") -> dict:
    """The profiling sweep (settings ``s``) of one deployment (``scenario``'s batching, ``stack.model``) into
    ``sdir``: ``compute.csv``, ``concurrency.csv``, ``interference.csv``, ``sweep.json``; work files in
    ``work``; ``label`` names it in progress lines (a pipeline's stage and variant)."""
    from . import sweep as sw
    tag = f"[sweep{' ' + label if label else ''}]"
    sdir.mkdir(parents=True, exist_ok=True)
    bar = None if quiet else _tqdm(total=len(s.batch_sizes) * s.samples, desc=f"{tag} compute per batch",
                                   unit="batch")
    try:
        rows = sw.compute_sweep(scenario, stack, work, s.batch_sizes, s.samples,
                                s.max_seconds_per_size, s.warmup, scenario.seed,
                                progress=(lambda k: bar.update(k)) if bar else None)
    finally:
        if bar:
            bar.close()
    _write_csv(sdir / "compute.csv", sw.COMPUTE_COLUMNS, rows)
    bar = None if quiet else _tqdm(total=len(s.concurrency), desc=f"{tag} latency vs concurrency", unit="level")
    try:
        crow = sw.concurrency_sweep(scenario, stack, work, s.concurrency,
                                    s.concurrency_duration_s, scenario.seed,
                                    progress=(lambda k: bar.update(k)) if bar else None)
    finally:
        if bar:
            bar.close()
    _write_csv(sdir / "concurrency.csv", sw.CONCURRENCY_COLUMNS, crow)
    irows: list[tuple] = []
    if s.interference_duration_s > 0:
        bar = None if quiet else _tqdm(total=len(s.interference_replicas), desc=f"{tag} interference",
                                       unit="level")
        try:
            irows = sw.interference_sweep(scenario, stack, work, s.interference_replicas,
                                          s.interference_duration_s, scenario.seed,
                                          progress=(lambda k: bar.update(k)) if bar else None)
        finally:
            if bar:
                bar.close()
        _write_csv(sdir / "interference.csv", sw.INTERFERENCE_COLUMNS, irows)
    info = {"settings": {"batch_sizes": list(s.batch_sizes), "samples": s.samples,
                         "max_seconds_per_size": s.max_seconds_per_size, "warmup": s.warmup,
                         "concurrency": list(s.concurrency), "concurrency_duration_s": s.concurrency_duration_s,
                         "interference_replicas": list(s.interference_replicas),
                         "interference_duration_s": s.interference_duration_s},
            "compute_batching": {**scenario.batching.to_dict(), "max_batch_size": max(s.batch_sizes),
                                 "preferred_batch_sizes": [], "max_queue_delay_us": 0, "max_queue_size": 0,
                                 "queue_timeout_us": 0},
            "concurrency_batching": scenario.batching.to_dict(), "onnx_threads": stack.onnx_threads}
    comp = {}
    arr = np.array([(r[0], r[2]) for r in rows], float) if rows else np.zeros((0, 2))
    for b in s.batch_sizes:
        x = arr[arr[:, 0] == b, 1] if len(arr) else np.zeros(0)
        if len(x):
            comp[str(b)] = {"n": int(len(x)), "mean_ms": float(x.mean()), "p50_ms": float(np.median(x)),
                            "p99_ms": float(np.percentile(x, 99))}
    info["compute_summary"] = comp
    (sdir / "sweep.json").write_text(json.dumps(info, indent=1))
    if not quiet:
        print(f"{tag} compute per batch: " + ", ".join(f"b={b}: {v['mean_ms']:.1f} ms" for b, v in comp.items()),
              file=sys.stderr)
        print(f"{tag} latency vs concurrency: " + ", ".join(
            f"c={r[0]}: {r[4]:.1f} req/s p95 {r[8]:.0f} ms" for r in crow), file=sys.stderr)
        if irows:
            by_n: dict[int, list[float]] = {}
            for r in irows:
                by_n.setdefault(r[0], []).append(r[4])
            print(f"{tag} interference (compute ms per batch vs replicas loaded at once): " + ", ".join(
                f"{n}: {np.nanmean(v):.1f} ms" for n, v in by_n.items()), file=sys.stderr)
    return info


def startup_deployment(scenario, stack, n: int, path: Path, work: Path, quiet: bool = False, label: str = "") -> dict:
    """``n`` start-up samples of one deployment (``scenario``, ``stack.model``) into the CSV ``path``."""
    from . import sweep as sw
    tag = f"[startup{' ' + label if label else ''}]"
    bar = None if quiet else _tqdm(total=n, desc=f"{tag} replica start-ups", unit="replica")
    try:
        if stack.backend == "kubernetes":
            from .stack.kubernetes import startup_samples_k8s
            rows = startup_samples_k8s(scenario, stack, work, n,
                                       progress=(lambda k: bar.update(k)) if bar else None)
        else:
            rows = sw.startup_samples(scenario, stack, work, n,
                                      progress=(lambda k: bar.update(k)) if bar else None)
    finally:
        if bar:
            bar.close()
    _write_csv(path, sw.STARTUP_COLUMNS, rows)
    tot = np.array([r[4] for r in rows], float)
    info = {"n": len(rows), "mean_s": float(tot.mean()), "min_s": float(tot.min()), "max_s": float(tot.max())}
    if not quiet:
        print(f"{tag} process start -> model ready: mean {info['mean_s']:.2f} s "
              f"(min {info['min_s']:.2f}, max {info['max_s']:.2f}, n={len(rows)})", file=sys.stderr)
    return info


# --------------------------------------------------------------------------- manifest


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return "not installed"


def versions(tritonserver: str = "") -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    except Exception:
        commit = ""
    return {"python": sys.version.split()[0], "tritonserver": tritonserver or "unknown",
            "nvidia-pytriton": _version("nvidia-pytriton"), "onnxruntime": _version("onnxruntime"),
            "torch": _version("torch"), "onnx": _version("onnx"), "locust": _version("locust"),
            "tritonclient": _version("tritonclient"), "numpy": _version("numpy"),
            "kubernetes": _version("kubernetes"), "haproxy": haproxy_version(), "servesim_commit": commit}


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        import psutil
        mem = psutil.virtual_memory().total
    except Exception:
        pass
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gib": round(mem / 2 ** 30, 1)}


FILES = {
    "manifest.json": "this file: config, versions, machine, seed, wall times, headline summaries",
    "config.yaml": "copy of the measurement configuration",
    "runs/<run>/run.json": "run scenario, events, t0, headline summary, load generator metadata",
    "runs/<run>/requests.csv": "one row per request: send time, latency, status, serving replica",
    "runs/<run>/metrics.csv": "every nv_* Prometheus sample of every replica, each scrape",
    "runs/<run>/replicas.csv": "replica lifecycle: request, start, live, ready, drain, gone times",
    "runs/<run>/cluster.csv": "desired / ready / pending replica counts at each scrape",
    "runs/<run>/events.csv": "scale / kill events applied during the run",
    "runs/<run>/observations.csv": "per-interval policy Observations built from scrapes + request log",
    "runs/<run>/logs/": "Triton, HAProxy and Locust logs",
    "runs/<run>/batches.csv": "batches executed per batch size, per replica, cumulative at each scrape",
    "runs/<run>/config.pbtxt": "the served model's Triton configuration in this run (batching merged in)",
    "model/config.pbtxt": "the served model's Triton configuration with the base scenario's batching",
    "sweep/compute.csv": "per-batch compute time samples for each batch size",
    "sweep/concurrency.csv": "throughput and latency percentiles vs closed-loop concurrency",
    "sweep/interference.csv": "compute time per batch vs replicas loaded at once on the node (interference)",
    "sweep/sweep.json": "sweep settings and per-batch-size compute summary",
    "startup/startup.csv": "replica start-up samples (process start -> model ready)",
}


PIPELINE_FILES = {
    **{k: v for k, v in FILES.items() if not k.startswith(("runs/<run>/", "model/", "sweep/", "startup/"))},
    "runs/<run>/run.json": "run scenario, stages (variant, model), events, t0, headline end to end and per stage",
    "runs/<run>/requests.csv": "one row per request end to end: send to stage 1 -> last response, status, end_stage",
    "runs/<run>/events.csv": "scale / kill events applied during the run, with the stage",
    "runs/<run>/logs/": "load generator log",
    "runs/<run>/stages/<stage>/requests.csv": "one row per stage visit: send to the stage's load balancer, its "
                                               "latency, status, replica, chaining gap",
    **{f"runs/<run>/stages/<stage>/{k[len('runs/<run>/'):]}": v for k, v in FILES.items()
       if k.startswith("runs/<run>/") and k.split("/")[-1] not in ("run.json", "requests.csv", "events.csv")},
    "runs/<run>/stages/<stage>/logs/": "the stage's Triton and HAProxy logs",
    "model/<stage>/<variant>/config.pbtxt": "each variant's Triton configuration with its stage's base batching",
    **{f"sweep/<stage>/<variant>/{k[len('sweep/'):]}": v for k, v in FILES.items() if k.startswith("sweep/")},
    "startup/<stage>/<variant>/startup.csv": "replica start-up samples of each stage's variant",
}


def headline_table(summ: dict, name: str, seed_study: bool = True) -> str:
    """The first run's headline figures; beside the seed study's when ``seed_study`` (the same model)."""
    rows = [("average latency", "avg_ms", "ms"), ("p95 latency", "p95_ms", "ms"), ("p99 latency", "p99_ms", "ms"),
            ("throughput", "throughput_rps", "req/s"), ("success rate", "success_rate", "%")]
    lines = [f"Headline ({name} run)", f"{'metric':<18}{'measured':>12}" + (f"{'seed study (GPU)':>20}" if seed_study else ""),
             "-" * (50 if seed_study else 30)]
    for label, k, unit in rows:
        v, s = summ.get(k, float("nan")), SEED_STUDY[k]
        if unit == "%":
            lines.append(f"{label:<18}{v * 100:>10.1f} %" + (f"{s * 100:>18.0f} %" if seed_study else ""))
        else:
            lines.append(f"{label:<18}{v:>9.1f} {unit:<5}" + (f"{s:>12.0f} {unit}" if seed_study else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def deployments(cfg: MeasureConfig) -> list[tuple[str, Any, Any]]:
    """``(label, scenario, stack)`` of every deployment a measurement profiles: the scenario's own (label
    ``""``), or every variant of every stage of a pipeline (label ``<stage>/<variant>``; the stage as a
    single-model scenario serving that variant, the stack settings with that variant's model)."""
    sc = cfg.scenario
    if sc.pipeline is None:
        return [("", sc, cfg.stack)]
    from .stack.chain import variant_scenario
    return [(f"{st.name}/{v.name}", variant_scenario(sc, k, v.name), cfg.stack.for_stage(k, st.name, v.name))
            for k, st in enumerate(sc.pipeline.stages) for v in st.variants]


def preflight(cfg: MeasureConfig, quiet: bool, phases=PHASES, work: Path | None = None) -> dict:
    """Check the stack before anything is measured; returns what it learnt (``tritonserver`` version).

    The model is resolved (a built-in exported to ONNX once, an ONNX graph read: batch axis and input types
    checked); the server binary must start (``stack.tritonserver``: else one line naming it); a GPU must be
    visible for ``batching.device: gpu``; HAProxy must be there (local backend). When this machine runs
    servers (local backend, or the sweep), one server is started with the model: it must load, and a
    repository model's inputs are read from it (``/v2/models/NAME/config``). A pipeline: the same for the
    model of every variant of every stage (:func:`deployments`), then each stage must take what the stage
    before it hands on (:func:`cluster.stack.chain.check_links`)."""
    from .stack.triton import TritonServer, backend_dir, server_version, tritonserver_bin, visible_gpus
    from simulator.config import ConfigError
    st = cfg.stack
    deps = deployments(cfg)
    for label, sc, _ in deps:
        if sc.batching.device == "gpu" and st.backend == "local" and not visible_gpus():
            raise ConfigError(f"{'pipeline stage ' + label.split('/')[0] + ': ' if label else ''}batching.device: "
                              f"gpu, but no GPU is visible on this machine (nvidia-smi -L lists none); use device: "
                              f"cpu, or measure on a machine with a GPU")
    if not st.tritonserver:
        tritonserver_bin()
        backend_dir()
    if st.backend == "local":
        from .stack.lb import haproxy_bin
        haproxy_bin()
    local = st.backend == "local" or "sweep" in phases
    served = []
    for label, _, s in deps:
        if not quiet and s.model.kind == "builtin":
            print(f"model{' of ' + label if label else ''}: built-in {s.model.builtin} (exported to ONNX once, "
                  f"cached)", file=sys.stderr)
        served.append(served_for(s, local=True))
    out = {"tritonserver": ""}
    if local:
        try:
            out["tritonserver"] = server_version(st.tritonserver, strict=True)
        except procs.STACK_ERRORS as e:
            if st.tritonserver:
                raise ConfigError(f"stack.tritonserver: {e}") from None
            raise
    for (label, sc, s), m in zip(deps, served):
        if not local:
            break
        d = Path(tempfile.mkdtemp(prefix="servesim-probe-", dir=work))
        try:
            repo = m.write_repository(d / "repo", sc.batching, s.onnx_threads)
            srv = TritonServer(repo, "probe", d / "probe.log", model=m.name, binary=s.tritonserver,
                               gpu_metrics=sc.batching.device == "gpu").start()
            try:
                srv.wait_ready(s.ready_timeout_s)
                if not m.inputs:
                    from .stack.triton import server_model_config
                    m.learn_from_server(server_model_config(srv.url, m.name))
            finally:
                srv.stop(5)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        if not quiet:
            print(f"model{' of ' + label if label else ''}: {m.name} loads on tritonserver {out['tritonserver']} "
                  f"({m.backend} backend); inputs " + ", ".join(f"{t.name} {t.datatype} {list(t.dims)}"
                                                                for t in m.inputs), file=sys.stderr)
    if cfg.scenario.pipeline is not None and all(m.inputs for m in served):
        from .stack.chain import check_links
        by_stage: dict[str, list] = {}
        for (label, _, _), m in zip(deps, served):
            stage, variant = label.split("/", 1)
            by_stage.setdefault(stage, []).append((variant, m))
        check_links(list(by_stage.values()), list(by_stage))
    return out


def measure(cfg: MeasureConfig, out: Path, phases=PHASES, force: bool = False, quiet: bool = False,
            command: list[str] | None = None) -> dict:
    """Run the phases and write the measurement folder ``out`` (:class:`simulator.io.OutputFolder`: refused
    before anything starts if it cannot or must not be written; atomic at the end). A pipeline scenario's
    runs go through every stage (:func:`run_pipeline`); its sweep, start-up samples
    and model configurations are per stage and variant (:func:`deployments`)."""
    t_all = time.time()
    pipe = cfg.scenario.pipeline is not None
    with OutputFolder(out, "cluster.measure", force=force, legacy=json_format_is("manifest.json", FORMAT)) as of:
        tmp = of.path
        work = Path(tempfile.mkdtemp(prefix="servesim-work-"))
        try:
            learnt = preflight(cfg, quiet, phases, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        deps = deployments(cfg)
        phase_wall: dict[str, dict] = {}
        summaries: dict[str, dict] = {}
        sweeps: dict[str, dict] = {}
        startups: dict[str, dict] = {}
        try:
            if "runs" in phases:
                run_fn = run_pipeline if pipe else run_one
                for run in cfg.runs:
                    t = time.time()
                    summaries[run.name] = run_fn(run, cfg, tmp, work, quiet)
                    phase_wall[f"run:{run.name}"] = {"start": t, "wall_s": round(time.time() - t, 2)}
            if "sweep" in phases and cfg.sweep.enabled:
                t = time.time()
                for label, sc, s in deps:
                    sweeps[label] = sweep_deployment(sc, s, cfg.sweep, tmp / "sweep" / label, work / "sweep" / label,
                                                     quiet, label)
                phase_wall["sweep"] = {"start": t, "wall_s": round(time.time() - t, 2)}
            if "startup" in phases and cfg.startup.enabled:
                t = time.time()
                for label, sc, s in deps:
                    startups[label] = startup_deployment(sc, s, cfg.startup.samples,
                                                         tmp / "startup" / label / "startup.csv",
                                                         work / "startup" / label, quiet, label)
                phase_wall["startup"] = {"start": t, "wall_s": round(time.time() - t, 2)}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if cfg.source and os.path.exists(cfg.source):
            shutil.copyfile(cfg.source, tmp / "config.yaml")
        models: dict[str, dict] = {}
        for label, sc, s in deps:
            served = served_for(s)
            (tmp / "model" / label).mkdir(parents=True, exist_ok=True)
            (tmp / "model" / label / "config.pbtxt").write_text(served.config_pbtxt(sc.batching, s.onnx_threads))
            models[label] = served.describe()

        def per_deployment(d: dict, pick=lambda v: v) -> dict:
            """A single model's value, or a pipeline's ``{stage: {variant: value}}``."""
            if not pipe:
                return pick(d[""]) if "" in d else {}
            nested: dict[str, dict] = {}
            for label, v in d.items():
                stage, variant = label.split("/", 1)
                nested.setdefault(stage, {})[variant] = pick(v)
            return nested
        manifest = {
            "format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command or [], "config_file": cfg.source, "config": cfg.raw,
            "scenario": cfg.scenario.to_dict(), "seed": cfg.scenario.seed, "backend": cfg.stack.backend,
            "stack": {"onnx_threads": cfg.stack.onnx_threads, "health_check_ms": cfg.stack.health_check_ms,
                      "tritonserver": cfg.stack.tritonserver or "bundled (nvidia-pytriton)",
                      "scrape_interval_s": cfg.stack.scrape_interval_s,
                      "request_timeout_s": cfg.stack.request_timeout_s},
            "phases_run": [p for p in PHASES if p in phases],
            "versions": versions(learnt.get("tritonserver", "")), "machine": machine(),
            "model": {"stages": per_deployment(models)} if pipe else models[""],
            "phases": phase_wall, "wall_s": round(time.time() - t_all, 2), "runs": summaries,
            "sweep": per_deployment(sweeps, lambda v: v.get("compute_summary", {})),
            "startup": per_deployment(startups), "files": PIPELINE_FILES if pipe else FILES}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.measure",
                                 description="Measure the real Triton stack under Locust load (see module docstring "
                                             "for the output format).")
    ap.add_argument("config", help="measurement YAML (scenario + stack + measure sections), e.g. configs/baseline.yaml")
    ap.add_argument("--out", required=True, help="output folder, e.g. results/baseline")
    ap.add_argument("--force", action="store_true", help="replace --out if it holds an earlier measurement (never another folder)")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"comma-separated phases to run: {', '.join(PHASES)} (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the measurement file (YAML value), e.g. --set stack.onnx_threads=2")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    a = ap.parse_args(argv)
    phases = tuple(p.strip() for p in a.only.split(",") if p.strip())
    bad = [p for p in phases if p not in PHASES]
    if bad:
        print(f"error: --only: unknown phase {bad[0]!r}; phases: {', '.join(PHASES)}", file=sys.stderr)
        return 2
    def body() -> int:
        cfg = load_measure_config(a.config, a.set)
        man = measure(cfg, Path(a.out), phases, a.force, a.quiet, command=sys.argv if argv is None else argv)
        if man["runs"]:
            name = "baseline" if "baseline" in man["runs"] else next(iter(man["runs"]))
            model = cfg.stack.model
            print(headline_table(man["runs"][name], name, seed_study=cfg.scenario.pipeline is None and
                                 model.kind == "builtin" and model.builtin == SEED_STUDY_MODEL))
        took = ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in man["phases"].items())
        print(f"wrote {a.out} in {man['wall_s']:.0f} s ({took})")
        return 0
    return procs.run_guarded(body, prefix="config error")

if __name__ == "__main__":
    sys.exit(main())
