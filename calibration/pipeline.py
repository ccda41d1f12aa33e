"""Calibrate a pipeline measurement: every stage and variant by the single-model fit, the hops, the fidelity.

A pipeline measurement folder (``cluster.measure`` on a scenario with ``pipeline:``; cluster/RESULTS_FORMAT.md
"Pipelines") holds, per run, the end-to-end requests (``runs/<run>/requests.csv``) and each stage's visits and
deployment files (``runs/<run>/stages/<stage>/``), and per stage and variant the single-model sweep and
start-up files (``sweep/<stage>/<variant>/``, ``startup/<stage>/<variant>/``).

What is fitted from what (every figure in the calibrated scenario's ``provenance``):

- **A stage's variant** is a single model: :func:`stage_measurements` presents its sweep, start-up samples
  and the visits of the runs that served it as a :class:`calibration.measurements.Measurements`, and the
  single-model fit (:mod:`calibration.calibrate`: compute per batch size from the sweep, interference,
  start-up, contention from Triton's counters, the overhead outside Triton) runs on it unchanged. A stage
  visit replays exactly like a single-model run: its arrivals are the measured sends to the stage's load
  balancer, so the stage's contention and overhead are fitted on their own, never on end-to-end latency.
- **The stage's deployment** (``cluster``: interference, ``rate_contention`` / ``rate_cores``, start-up) and
  its overhead come from its *primary* variant (the one most training runs served; ties: the stage's
  starting variant). Each other variant gets its own contention ``scale``: the request-weighted geometric
  mean of its runs' own scales (:func:`calibration.calibrate.own_scale`) under the primary's contention
  terms; a variant no training run served gets the primary's *excess* compute per batch under load
  (:func:`transferred_scale`: the measured excess is about the same milliseconds for every model here, not the
  same factor; a warning says so).
- **The hop** after stage k (``stages[k].hop``: the simulator delivers a request to stage k+1, or to the
  client, ``hop`` after its batch at stage k completes) = stage k's overhead (client latency of the visit -
  Triton queue - compute, the single-model ``overhead``, its spread chosen on the stage's visits) shifted by
  the mean client gap ``gap_ms`` before stage k+1's send (0 after the last stage). End to end the hops and
  gaps add up exactly; per stage, a simulated visit includes the following gap (tens of microseconds here).

Fidelity (:func:`fit_pipeline`): each measured run replayed in the pipeline simulator with its own
end-to-end send times, each stage's variant, batcher and measured replica history (ready at the measured
instants, :mod:`calibration.replay`), compared end to end (p50, p95, throughput: :data:`PIPELINE_TARGETS`)
and per stage (the stage visits' client latency and batching): in-sample (fitted on every run),
held out (leave one run out; runs with identical configuration held out together), and the noise floor
(runs with identical configuration against each other).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from simulator.config import AutoscalerSpec, Dist, Scenario
from simulator.io import OutputFolder, jsonable
from simulator.pipeline import PipelineSimulation, stage_scenario

from . import fitting
from .calibrate import (SCALE_LO, calibrate, log, make_scenario, own_scale, request_rate, run_counters, shared_fits,
                        source_label, with_mean, write_scenario)
from .compare import PIPELINE_TARGETS, compare, simulated_batching, summarize_side
from .measurements import (COMPUTE_COLUMNS, INTERFERENCE_COLUMNS, STARTUP_COLUMNS, CalibrationError, Measurements,
                           RunData, _numeric, _last_byte, checked_run_folders, clean_compute, cut_mid_row,
                           held_out_splits, is_pipeline, load_manifest, load_run, read_csv, read_deployment,
                           refuse_or_warn, repeat_pairs, scenario_at, served_peak_of_runs)
from .replay import (measured_summary, replay_tick, replayed_cluster, replayed_workload, replica_schedule,
                     scripted_startups)

STAGE_REQUEST_COLUMNS = ("seq", "t_send_s", "latency_ms", "status")
PIPELINE_METRICS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "failure_rate", "slo_attainment")
STAGE_METRICS = PIPELINE_METRICS + ("mean_batch_size", "queue_ms", "batch_distance")


# --------------------------------------------------------------------------- reading


@dataclass
class PipelineRun:
    """One measured run: ``run`` end to end (``runs/<run>/requests.csv``; scenario: the pipeline's), and per
    stage its visits as a single-model run of the stage's deployment (``stages``: scenario, requests, replicas,
    counters of ``runs/<run>/stages/<stage>/``), the variant it served, and the client's gaps before its
    visits (``gap_ms``, stages after the first, visits sent in the window)."""

    run: RunData
    stages: dict[str, RunData]
    variants: dict[str, str]
    gap_ms: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def group(self) -> str:
        return self.run.group


@dataclass
class StageSweep:
    """A stage variant's single-model profile: ``sweep/<stage>/<variant>/`` and ``startup/<stage>/<variant>/``."""

    dir: Path
    compute: pd.DataFrame
    interference: pd.DataFrame | None
    startup: pd.DataFrame | None


@dataclass
class PipelineMeasurements:
    root: Path
    manifest: dict
    base: Scenario                             # the measured pipeline scenario
    runs: dict[str, PipelineRun]
    sweeps: dict[tuple[str, str], StageSweep]  # (stage, variant)
    warnings: list[str] = field(default_factory=list)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.base.pipeline.stages]


def visit_count_damage(visits: int, expected: int, stage: str, before: str) -> str | None:
    """Rule: the client sends every request to the first stage, and a request to stage k+1 exactly when stage k
    answered it ``ok`` (cluster/stack/chain.py), so the first stage's ``requests.csv`` has one row per request
    sent (``runs/<run>/requests.csv`` rows with a send time) and a later stage's one row per ``ok`` visit of the
    stage before. A different count means rows were lost or added."""
    if visits == expected:
        return None
    return f"stages/{stage}/requests.csv has {visits} visits, expected {expected} ({before})"


def read_sweep(root: Path, stage: str, variant: str, warn: list[str]) -> StageSweep:
    """One stage variant's sweep (``compute.csv`` required; interference and start-up optional, as a single
    model's)."""
    d = root / "sweep" / stage / variant
    cpath = d / "compute.csv"
    if not cpath.exists():
        raise CalibrationError(f"{cpath}: file missing (every variant of every stage is profiled by "
                               f"cluster.measure; stage {stage!r} variant {variant!r} has no sweep)")
    comp, w = clean_compute(read_csv(cpath, COMPUTE_COLUMNS, str(cpath)), str(cpath))
    warn += w
    if not len(comp):
        raise CalibrationError(f"{cpath}: no usable compute samples")
    ipath = d / "interference.csv"
    intf = read_csv(ipath, INTERFERENCE_COLUMNS, str(ipath), optional=True)
    if intf is None:
        warn.append(f"{ipath}: missing; no interference fit for {stage}/{variant}")
    else:
        intf = _numeric(intf, INTERFERENCE_COLUMNS[:1] + INTERFERENCE_COLUMNS[2:], str(ipath))
        intf = intf[intf[["compute_ms", "concurrency"]].notna().all(axis=1) & (intf["compute_ms"] > 0)]
    spath = root / "startup" / stage / variant / "startup.csv"
    st = read_csv(spath, STARTUP_COLUMNS, str(spath), optional=True)
    if st is None:
        warn.append(f"{spath}: missing; start-up delay of {stage}/{variant} from the runs' scale-ups only")
    else:
        st = _numeric(st, STARTUP_COLUMNS, str(spath))
        st = st[st["process_to_ready_s"].notna() & (st["process_to_ready_s"] > 0)]
    return StageSweep(d, comp, intf, st)


def load_stage_visits(e2e: RunData, meta: dict, stage: str, index: int, variants: list[str],
                      expected: int, allow_partial: bool, warn: list[str]) -> tuple[RunData, np.ndarray]:
    """Stage ``stage``'s visits of run ``e2e`` as a single-model :class:`RunData` (window and group of the
    end-to-end run), and the gaps before its visits in the window."""
    sdir = e2e.dir / "stages" / stage
    rj = e2e.dir / "run.json"
    info = (meta.get("stages") or {}).get(stage)
    if not isinstance(info, dict) or "scenario" not in info:
        raise CalibrationError(f"{rj}: stages.{stage}.scenario missing (the stage's deployment as a single model)")
    if info.get("variant") not in variants:
        raise CalibrationError(f"{rj}: stages.{stage}.variant {info.get('variant')!r} is not a variant of the "
                               f"measured scenario's stage {stage!r} (allowed: {', '.join(variants)})")
    sc = scenario_at(info["scenario"], f"{rj}: stages.{stage}.scenario")
    if not sdir.is_dir():
        raise CalibrationError(f"{sdir}: stage folder missing (a pipeline run has runs/<run>/stages/<stage>/)")
    rpath = sdir / "requests.csv"
    cut = cut_mid_row(_last_byte(rpath))
    req = read_csv(rpath, STAGE_REQUEST_COLUMNS, str(rpath), complete_rows_only=cut is not None)
    req = _numeric(req, ("t_send_s", "latency_ms") + (("gap_ms",) if "gap_ms" in req.columns else ()), str(rpath))
    problems = [cut.what] if cut else []
    d = visit_count_damage(len(req), expected, stage, "the requests sent, runs/<run>/requests.csv" if index == 0
                           else "the ok visits of the stage before")
    if d:
        problems.append(d)
    if problems:
        refuse_or_warn(f"{sdir}: " + "; ".join(problems), "used as it is", allow_partial, warn)
    req["status"] = req["status"].fillna("error").astype(str)
    req["user"] = -1
    ok = req["status"] == "ok"
    req = req[~(ok & (req["latency_ms"].isna() | (req["latency_ms"] < 0)))].copy()
    sw: list[str] = []
    reps, met, bat = read_deployment(sdir, sw)
    warn += sw
    t = req["t_send_s"].to_numpy(float)
    win = np.isfinite(t) & (t >= e2e.warmup_s) & (t < e2e.duration_s)
    gap = req["gap_ms"].to_numpy(float)[win] if "gap_ms" in req.columns else np.zeros(0)
    events = [e for e in e2e.events if e.get("stage") == stage]
    run = RunData(name=e2e.name, dir=sdir, scenario=sc, duration_s=e2e.duration_s, warmup_s=e2e.warmup_s,
                  slo_ms=float(sc.slo_ms), requests=req, replicas=reps, events=events, metrics=met,
                  summary=dict(((meta.get("summary") or {}).get("stages") or {}).get(stage) or {}),
                  group=e2e.group, batches=bat, warnings=sw)
    return run, gap[np.isfinite(gap)] if index else np.zeros(0)


def load_pipeline_run(rdir: Path, base: Scenario, allow_partial: bool, manifest_summary: dict | None,
                      warn: list[str]) -> PipelineRun:
    e2e = load_run(rdir, allow_partial, manifest_summary, deployment=False)
    warn += e2e.warnings
    if e2e.scenario.pipeline is None:
        raise CalibrationError(f"{rdir / 'run.json'}: scenario has no pipeline: (the folder's manifest says this is "
                               f"a pipeline measurement)")
    meta = json.loads((rdir / "run.json").read_text())
    # the group: identical pipeline scenario (seed and name aside) and events
    key = json.dumps({"scenario": meta["scenario"] | {"name": ""}, "events": e2e.events,
                      "stages": {k: v.get("variant") for k, v in (meta.get("stages") or {}).items()}},
                     sort_keys=True, default=str)
    e2e.group = hashlib.sha1(key.encode()).hexdigest()[:10]
    req = e2e.requests
    expected = int(np.isfinite(req["t_send_s"].to_numpy(float)).sum())
    stages, variants, gaps = {}, {}, {}
    for k, st in enumerate(base.pipeline.stages):
        vnames = [v.name for v in st.variants]
        sr, gap = load_stage_visits(e2e, meta, st.name, k, vnames, expected, allow_partial, warn)
        stages[st.name], gaps[st.name] = sr, gap
        variants[st.name] = str(meta["stages"][st.name]["variant"])
        expected = int((sr.requests["status"] == "ok").sum())
    return PipelineRun(run=e2e, stages=stages, variants=variants, gap_ms=gaps)


def load_pipeline_measurements(root: str | os.PathLike, allow_partial: bool = False) -> PipelineMeasurements:
    """A pipeline measurement folder, every run and stage checked (the single-model damage checks on each run's
    end-to-end requests, :func:`visit_count_damage` on each stage's visits); ``allow_partial`` as for a single
    model (:mod:`calibration.measurements`)."""
    root = Path(root)
    man = load_manifest(root)
    if not is_pipeline(man):
        raise CalibrationError(f"{root / 'manifest.json'}: not a pipeline measurement (its scenario has no "
                               f"pipeline:)")
    base = scenario_at(man["scenario"], f"{root / 'manifest.json'}: scenario")
    warn: list[str] = []
    sweeps = {(st.name, v.name): read_sweep(root, st.name, v.name, warn)
              for st in base.pipeline.stages for v in st.variants}
    on_disk, listed = checked_run_folders(root, man, allow_partial, warn)
    runs: dict[str, PipelineRun] = {}
    for rd in on_disk:
        try:
            r = load_pipeline_run(rd, base, allow_partial, (listed or {}).get(rd.name), warn)
        except CalibrationError as e:
            if not allow_partial:
                raise
            warn.append(f"{e}; --allow-partial: run left out")
            continue
        runs[r.name] = r
    if not runs:
        raise CalibrationError(f"{root / 'runs'}: no usable run folders")
    return PipelineMeasurements(root=root, manifest=man, base=base, runs=runs, sweeps=sweeps, warnings=warn)


def stage_measurements(pm: PipelineMeasurements, stage: str, variant: str,
                       runs: list[PipelineRun] | None = None) -> Measurements:
    """Stage ``stage`` serving ``variant`` as a single-model measurement: its sweep and start-up samples, and the
    visits of those of ``runs`` (default: every run) that served it, each a single-model run of the stage's
    deployment. Its ``base`` is the stage's deployment as a single model (:func:`simulator.pipeline.stage_scenario`
    with that variant)."""
    k = pm.stage_names.index(stage)
    st = pm.base.pipeline.stages[k]
    pipe = replace(pm.base.pipeline, stages=tuple(replace(s, variant=variant) if i == k else s
                                                  for i, s in enumerate(pm.base.pipeline.stages)))
    base = stage_scenario(pm.base.replace(pipeline=pipe), k)
    sw = pm.sweeps[(stage, variant)]
    chosen = [r for r in (pm.runs.values() if runs is None else runs) if r.variants[stage] == variant]
    assert variant in [v.name for v in st.variants]
    return Measurements(root=pm.root, manifest=pm.manifest, base=base, runs={r.name: r.stages[stage] for r in chosen},
                        compute=sw.compute, interference=sw.interference, startup=sw.startup, warnings=[],
                        sweep_dir=sw.dir)


# --------------------------------------------------------------------------- fitting


def primary_variant(stage_spec, train: list[PipelineRun]) -> str:
    """The variant most training runs served at this stage (ties: the stage's starting variant, then the
    first listed)."""
    used = Counter(r.variants[stage_spec.name] for r in train)
    names = [v.name for v in stage_spec.variants]
    return max(names, key=lambda v: (used[v], v == stage_spec.variant, -names.index(v)))


def weighted_log_mean(own: list[dict]) -> float:
    """The successes-weighted geometric mean of runs' own scales."""
    y = np.log([o["own_scale"] for o in own])
    w = np.array([o["successes"] for o in own], float)
    return float(math.exp(np.average(y, weights=w)))


def batch1_mean(compute: dict) -> float:
    """The fitted sweep mean (ms) of the smallest batch size with a fit (:func:`calibration.calibrate.fit_compute`)."""
    return float(compute["fits"][min(compute["fits"])].dist.mean_value)


def transferred_scale(scale: float, mean_from: float, mean_to: float) -> float:
    """The contention factor of a variant no run served, from the factor ``scale`` of one that runs did, at
    batch-1 means ``mean_from`` and ``mean_to`` (ms): the same *excess* per batch, ``(scale - 1) * mean_from`` ms,
    not the same factor. Evidence (results/pipeline, 2026-12-01): under load every model's compute per batch
    grew by about the same milliseconds (Triton's infer time per request vs its sweep: MobileNetV4-small +2.7 ms,
    -medium +2.8 ms, the label encoder +2.1-3.5 ms), i.e. factors 1.47, 1.13, 1.4: a factor carried from the
    small variant to the medium one overpredicted its compute by ~30 %."""
    if mean_to <= 0:
        return scale
    return max(SCALE_LO, 1.0 + (scale - 1.0) * mean_from / mean_to)


def fit_stage(pm: PipelineMeasurements, k: int, train: list[PipelineRun], cache: dict, quiet: bool,
              label: str = "") -> dict:
    """Stage ``k`` fitted on ``train`` (module docstring): the primary variant by the single-model calibration,
    the other variants' scales under its contention terms, and the hop. ``cache`` holds the sweep fits per
    (stage, variant) across folds (they never see a run)."""
    st = pm.base.pipeline.stages[k]
    prim = primary_variant(st, train)
    warnings: list[str] = []

    def prepared(v: str) -> tuple[Measurements, dict]:
        meas = stage_measurements(pm, st.name, v, train)
        if (st.name, v) not in cache:
            cache[(st.name, v)] = shared_fits(meas)
        return meas, cache[(st.name, v)]
    meas_p, shared_p = prepared(prim)
    sc_p, info_p = calibrate(meas_p, list(meas_p.runs.values()), shared_p, (0,), quiet,
                             label=f" {st.name}/{prim}{label}")
    cont = info_p["contention"]
    overhead = sc_p.service.overhead
    variants = {}
    for v in st.variants:
        meas_v, shared_v = prepared(v.name)

        def make(s: float, _beta: float = 0.0, meas_v=meas_v, shared_v=shared_v) -> Scenario:
            return make_scenario(meas_v, shared_v["compute"], s, cont["rate_contention"], overhead,
                                 shared_p["interference"], shared_v["startup"][0], {},
                                 rate_cores=cont.get("rate_cores", 0.0))
        own = {}
        if v.name == prim:
            scale, how = float(cont["scale"]), "primary: single-model contention fit"
        else:
            for r in meas_v.runs.values():
                log(f"[fit] {st.name}/{v.name}{label}: contention factor of run {r.name} ...", quiet)
                own[r.name] = own_scale(r, make)
            got = [o for o in own.values() if o]
            if got:
                scale, how = weighted_log_mean(got), (f"geometric mean of its runs' own scales under "
                                                      f"{prim}'s contention terms")
            else:
                scale = transferred_scale(float(cont["scale"]), batch1_mean(shared_p["compute"]),
                                          batch1_mean(shared_v["compute"]))
                how = (f"no training run with counters served it: {prim}'s excess compute per batch under load, "
                       f"(scale - 1) x its smallest batch's mean, added to this variant's")
                warnings.append(f"stage {st.name} variant {v.name}: no training run served it; its compute under load "
                                f"is its sweep's plus {prim}'s excess per batch (factor {scale:.3f})")
        svc = make(scale).service
        variants[v.name] = {"service": replace(svc, overhead=Dist("deterministic", 0.0, 0.0)), "scale": scale,
                            "how": how, "own": own, "startup": shared_v["startup"][0],
                            "runs": list(meas_v.runs), "compute": shared_v["compute"],
                            "interference": shared_v["interference"], "startup_info": shared_v["startup"][1],
                            "overhead_shape": shared_v["overhead_shape"][1]}
    # the hop: this stage's overhead + the client's gap before the next stage's send
    nxt = pm.stage_names[k + 1] if k + 1 < len(pm.stage_names) else None
    gaps = np.concatenate([r.gap_ms[nxt] for r in train] + [np.zeros(0)]) if nxt else np.zeros(0)
    gap = float(gaps.mean()) if len(gaps) else 0.0
    hop = with_mean(overhead, overhead.mean_value + gap)
    by_run = {}                 # each training run's own overhead (the fit uses their success-weighted mean)
    for r in train:
        c = run_counters(r.stages[st.name])
        if c is not None:
            by_run[r.name] = {"overhead_ms": c["overhead_ms"], "rate_rps": request_rate(r.stages[st.name], 1.0),
                              "successes": c["successes"], "variant": r.variants[st.name]}
    return {"stage": st.name, "primary": prim, "cluster": sc_p.cluster, "hop": hop, "gap_ms": gap,
            "overhead_by_run": by_run,
            "gap_n": int(len(gaps)), "overhead": info_p["overhead"], "contention": cont, "variants": variants,
            "warnings": warnings, "train_runs": [r.name for r in train]}


def pipeline_scenario(pm: PipelineMeasurements, fits: dict[str, dict], provenance: dict | None = None) -> Scenario:
    """The measured pipeline scenario with every stage's fitted variants (compute, start-up), hop and cluster."""
    stages = []
    for st in pm.base.pipeline.stages:
        f = fits[st.name]
        vs = tuple(replace(v, service=f["variants"][v.name]["service"], startup=f["variants"][v.name]["startup"])
                   for v in st.variants)
        stages.append(replace(st, variants=vs, hop=f["hop"], cluster=f["cluster"]))
    return pm.base.replace(pipeline=replace(pm.base.pipeline, stages=tuple(stages)), provenance=provenance or {})


def calibrate_pipeline(pm: PipelineMeasurements, train: list[PipelineRun], cache: dict, quiet: bool = True,
                       label: str = "") -> tuple[Scenario, dict]:
    fits = {st.name: fit_stage(pm, k, train, cache, quiet, label) for k, st in enumerate(pm.base.pipeline.stages)}
    return pipeline_scenario(pm, fits), fits


# --------------------------------------------------------------------------- replay


def replay_pipeline_scenario(cal: Scenario, prun: PipelineRun, seed: int) -> tuple[Scenario, list]:
    """The calibrated pipeline with ``prun``'s end-to-end send times, timing and SLO, and per stage its
    variant, batcher and replica history (:func:`calibration.replay.replica_schedule`)."""
    run = prun.run
    scheds = [replica_schedule(prun.stages[st.name]) for st in cal.pipeline.stages]
    tick = AutoscalerSpec(kind="static", interval_s=replay_tick(scheds, run.duration_s), params={})
    stages = []
    for st, sched in zip(cal.pipeline.stages, scheds):
        sr = prun.stages[st.name]
        stages.append(replace(st, variant=prun.variants[st.name], batching=sr.scenario.batching,
                              cluster=replayed_cluster(st.cluster, sr, sched), autoscaler=tick))
    sc = cal.replace(name=f"replay:{run.name}", seed=seed, duration_s=run.duration_s, warmup_s=run.warmup_s,
                     slo_ms=run.slo_ms, record_requests=True, workload=replayed_workload(run),
                     pipeline=replace(cal.pipeline, stages=tuple(stages)), autoscaler=tick, provenance={})
    return sc, scheds


def simulate_pipeline_run(cal: Scenario, prun: PipelineRun, seeds=(0,)) -> dict:
    """Replay ``prun`` once per seed; pooled end-to-end and per-stage summaries (the single-model definitions,
    :func:`calibration.compare.summarize_side`; a stage visit's latency runs from its arrival at the stage to
    its hand-over to the next, so it includes the hop)."""
    run = prun.run
    e2e, vis = [], []
    for s in seeds:
        sc, scheds = replay_pipeline_scenario(cal, prun, cal.seed + s)
        sim = PipelineSimulation(sc, engine="fast",
                                 startup_delays=[scripted_startups([r for _, r in sd.adds]) for sd in scheds])
        obs = sim.start()
        while obs is not None:
            obs = sim.step([sd.desired(obs.time_s) for sd in scheds])
        res = sim.result()
        e2e.append(res.requests)
        vis.append(res.visits)
    cat = lambda parts, c: np.concatenate([p[c] for p in parts])   # noqa: E731
    arr = cat(e2e, "arrival_s")
    lat = (cat(e2e, "completion_s") - arr) * 1e3
    ok = cat(e2e, "status") == 0
    out = {"summary": summarize_side(arr, lat, ok, run.warmup_s, run.duration_s, run.slo_ms, copies=len(seeds)),
           "arrival_s": arr, "latency_ms": lat, "ok": ok, "stages": {}, "seeds": len(seeds)}
    stage = cat(vis, "stage")
    for k, name in enumerate(prun.stages):
        m = stage == k
        a = cat(vis, "arrival_s")[m]
        la = (cat(vis, "completion_s")[m] - a) * 1e3
        okv = cat(vis, "status")[m] == 0
        summ = summarize_side(a, la, okv, run.warmup_s, run.duration_s, run.slo_ms, copies=len(seeds))
        summ.update(simulated_batching(a, cat(vis, "dispatch_s")[m], cat(vis, "batch_size")[m], okv,
                                       run.warmup_s, run.duration_s))
        out["stages"][name] = {"summary": summ, "arrival_s": a, "latency_ms": la, "ok": okv}
    return out


def measured_pipeline_summary(prun: PipelineRun) -> dict:
    """End to end (``summary``) and per stage (``stages``: the visits, with Triton's batching)."""
    return {"summary": measured_summary(prun.run),
            "stages": {n: measured_summary(r) for n, r in prun.stages.items()}}


def evaluate_pipeline(cal: Scenario, runs: list[PipelineRun], seeds, keep: bool = False) -> dict:
    out = {}
    for r in runs:
        sim = simulate_pipeline_run(cal, r, seeds)
        ms = measured_pipeline_summary(r)
        out[r.name] = {
            "measured": ms["summary"], "simulated": sim["summary"],
            "errors": compare(ms["summary"], sim["summary"], PIPELINE_METRICS, PIPELINE_TARGETS),
            "stages": {n: {"measured": ms["stages"][n], "simulated": sim["stages"][n]["summary"],
                           "errors": compare(ms["stages"][n], sim["stages"][n]["summary"], STAGE_METRICS,
                                             PIPELINE_TARGETS)} for n in r.stages},
            **({"_sim": sim} if keep else {})}
    return out


def pipeline_noise_floor(pm: PipelineMeasurements) -> dict:
    pairs = []
    for x, y in repeat_pairs(pm.runs.values()):
        a, b = measured_pipeline_summary(x), measured_pipeline_summary(y)
        pairs.append({"runs": [x.name, y.name],
                      "errors": compare(a["summary"], b["summary"], PIPELINE_METRICS, PIPELINE_TARGETS),
                      "stages": {n: {"errors": compare(a["stages"][n], b["stages"][n], STAGE_METRICS,
                                                       PIPELINE_TARGETS)} for n in a["stages"]}})
    return {"pairs": pairs}


# --------------------------------------------------------------------------- the command


def stage_provenance(f: dict) -> dict:
    """What a stage's fit recorded: per variant its per-batch goodness of fit, scale and start-up; the
    deployment's contention, interference and the hop."""
    cont = {k: v for k, v in f["contention"].items() if k not in ("iterations",)}
    return {"primary_variant": f["primary"], "train_runs": f["train_runs"],
            "hop": {"dist": f["hop"].to_dict("ms"), "mean_ms": f["hop"].mean_value,
                    "overhead_mean_ms": f["overhead"]["mean_ms"], "overhead_from_runs": f["overhead"]["from_runs"],
                    "overhead_spread": f["overhead"].get("spread"), "gap_ms": f["gap_ms"], "gap_samples": f["gap_n"],
                    "rule": "stage overhead (client latency - Triton queue - compute per request, the single-model "
                            "overhead) + the mean client gap before the next stage's send",
                    "overhead_by_run": f["overhead_by_run"]},
            "contention": cont,
            "variants": {v: {"scale": d["scale"], "how": d["how"], "runs": d["runs"],
                             "own_scales": {n: o and o["own_scale"] for n, o in d["own"].items()},
                             "per_batch": [{k: x for k, x in row.items() if k != "candidates"}
                                           for row in d["compute"]["rows"]],
                             "partial": d["compute"]["partial"], "mean_curve": d["compute"]["mean_curve"],
                             "interference": d["interference"],
                             "startup": {k: x for k, x in d["startup_info"].items() if k != "samples_s"}}
                         for v, d in f["variants"].items()},
            "warnings": f["warnings"]}


def fit_pipeline(root: str, name: str, config_out: str | None, report: OutputFolder, seeds: int, quiet: bool,
                 plots: bool, allow_partial: bool) -> dict:
    """:func:`calibration.fit.run_fit` on a pipeline measurement folder (module docstring): the calibrated scenario
    to ``config_out`` (default ``configs/calibrated/<name>.yaml``), the report into ``report``."""
    pm = load_pipeline_measurements(root, allow_partial)
    t_start = dt.datetime.now(dt.timezone.utc)
    command = ["python -m calibration.fit", str(root), "--name", name] + (["--allow-partial"] if allow_partial else [])
    config_out = config_out or os.path.join("configs", "calibrated", f"{name}.yaml")
    seeds_t = tuple(range(seeds))
    runs = list(pm.runs.values())
    for w in pm.warnings:
        log(f"warning: {w}", quiet)
    log(f"[fit] pipeline {' -> '.join(pm.stage_names)}; {len(runs)} runs: {', '.join(r.name for r in runs)}", quiet)
    cache: dict = {}
    sc_all, fits_all = calibrate_pipeline(pm, runs, cache, quiet)
    for n, f in fits_all.items():
        for v, d in f["variants"].items():
            for row in d["compute"]["rows"]:
                log(f"[fit] {n}/{v} batch {row['batch_size']}: n={row['n']} {row['chosen']} mean "
                    f"{row['fit']['mean']:.2f} ms (KS {row['ks']:.3f})", quiet)
            log(f"[fit] {n}/{v}: contention scale {d['scale']:.3f} ({d['how']})", quiet)
        log(f"[fit] {n}: hop mean {f['hop'].mean_value:.2f} ms (overhead {f['overhead']['mean_ms']:.2f} + gap "
            f"{f['gap_ms']:.3f})", quiet)
    log(f"[fidelity] in-sample replay of {len(runs)} runs x {seeds} seeds ...", quiet)
    in_sample = evaluate_pipeline(sc_all, runs, seeds_t, keep=plots)
    loro, folds = {}, []
    for test, train in held_out_splits(runs):
        names = [r.name for r in test]
        if not train:
            folds.append({"test": names, "train": [], "skipped": "no other runs to fit on"})
            continue
        log(f"[fidelity] held out: {', '.join(names)} ...", quiet)
        sc_g, fits_g = calibrate_pipeline(pm, train, cache, True, label=f" -{'/'.join(names)}")
        folds.append({"test": names, "train": [r.name for r in train],
                      "warnings": [w for f in fits_g.values() for w in f["warnings"]],
                      "stages": {n: {"primary": f["primary"], "hop_ms": f["hop"].mean_value,
                                     "scales": {v: d["scale"] for v, d in f["variants"].items()},
                                     "rate_contention": f["contention"].get("rate_contention", 0.0),
                                     "rate_cores": f["contention"].get("rate_cores", 0.0)}
                                 for n, f in fits_g.items()}})
        loro.update(evaluate_pipeline(sc_g, test, seeds_t, keep=plots))
    nf = pipeline_noise_floor(pm)
    warnings = list(pm.warnings) + [w for f in fits_all.values() for w in f["warnings"]]
    prov = {"source": source_label(pm), "source_format": pm.manifest.get("format"),
            "source_created": pm.manifest.get("created"), "source_seed": pm.manifest.get("seed"),
            "source_machine": pm.manifest.get("machine"), "calibrated": t_start.isoformat(timespec="seconds"),
            "command": " ".join(command), "allow_partial": allow_partial,
            "criteria": {"family_selection": f"lowest AIC among {', '.join(fitting.FAMILIES)}, kept if its KS "
                                             f"distance <= {fitting.KS_MAX}, else the sample's quantiles "
                                             f"({fitting.EMPIRICAL_LEVELS} levels)",
                         "min_samples": fitting.MIN_SAMPLES,
                         "stage": "each stage variant by the single-model calibration on its sweep and the visits "
                                  "of the runs that served it (calibration.calibrate); the stage's cluster and "
                                  "overhead from its primary variant (most training runs); other variants' scale: "
                                  "geometric mean of their runs' own scales under the primary's contention terms; "
                                  "a variant no training run served: the primary's excess ms per batch",
                         "hop": "stage overhead + mean client gap before the next stage (calibration.pipeline)"},
            "stages": {n: stage_provenance(f) for n, f in fits_all.items()},
            # what the measured pipeline was seen to serve end to end: the validation never asks it for more
            "stack": served_peak_of_runs([r.run for r in runs]),
            "warnings": warnings}
    sc_out = sc_all.replace(name=f"calibrated:{name}", provenance=jsonable(prov))
    fid = {"name": name, "kind": "pipeline", "source": source_label(pm), "config": config_out, "seeds": seeds,
           "created": t_start.isoformat(timespec="seconds"),
           "targets": {k: {"kind": v[0], "tolerance": v[1]} for k, v in PIPELINE_TARGETS.items()},
           "target_set": "pipeline", "target_rule": "issue 15: held-out end to end",
           "stages": pm.stage_names,
           "runs": {r.name: pipeline_run_description(r) for r in runs},
           "in_sample": strip(in_sample), "held_out": {"leave_one_run_out": strip(loro), "folds": folds},
           "noise_floor": nf, "provenance": prov}
    fid = jsonable(fid)
    write_scenario(sc_out, config_out, root)
    from .report import write_pipeline_report
    log(f"[report] writing {report.shown} ...", quiet)
    fid["report_dir"] = report.shown
    write_pipeline_report(report.path, fid, pm, in_sample, loro, plots=plots)
    return fid


def strip(results: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk != "_sim"} for k, v in results.items()}


def pipeline_run_description(r: PipelineRun) -> dict:
    """What a run was: workload, per stage variant and replicas used, duration and warm-up."""
    w = r.run.scenario.workload
    return {"workload": w.kind if w.kind != "schedule" else "/".join(s.kind for s in w.segments),
            "loop": "open", "stages": {n: {"variant": r.variants[n], "replicas": s.max_replicas_used}
                                       for n, s in r.stages.items()},
            "replicas": "/".join(str(s.max_replicas_used) for s in r.stages.values()),
            "duration_s": r.run.duration_s, "warmup_s": r.run.warmup_s}


__all__ = ["PipelineMeasurements", "PipelineRun", "calibrate_pipeline", "evaluate_pipeline", "fit_stage",
           "fit_pipeline", "load_pipeline_measurements", "pipeline_noise_floor", "pipeline_scenario",
           "simulate_pipeline_run", "stage_measurements", "visit_count_damage"]
