"""Pipeline validation: ``python -m cluster.validate POLICY --stack configs/pipeline.yaml [--compare ...]``.

When the ``--stack`` measurement file describes a pipeline (a ``scenario:`` with ``pipeline:``), the
validation runs pipeline policies: ``POLICY`` and ``--compare`` (comma list, default ``none``) name
contenders among

- ``hpa``: per-stage Kubernetes HPA, the rule of :mod:`rl.pipeline_eval` (each stage scales on its own
  arrival rate per replica, target ``--hpa-target`` (0.8) x the stage's simulated per-replica capacity at its
  share of the SLO, :func:`simulator.capacity.stage_capacities`; scale-down window ``--hpa-window`` (60 s));
- ``per_stage``: each stage's own ``autoscaler:`` of the scenario (as written: static when it has none);
- ``ipa``: the IPA-style configurator (:mod:`simulator.ipa`; the scenario's top-level ``autoscaler:``
  parameters when it is an ``ipa`` block, else its defaults, ``--ipa-util`` overriding ``max_utilization``),
  **pinned to each stage's current variant and batch size** (the real stack cannot switch them:
  :mod:`cluster.controller_pipeline`), so it chooses replica counts with its integer program and forecast;
- a ``servesim-pipeline-policy/1`` file (``policy.pt`` written by ``rl.train`` on a pipeline scenario),
  refused in one line when it was trained on another pipeline or, on the synthetic observations, asks for a
  variant or batch-size switch.

The registry contenders run at ``--interval`` (default: the scenario's control interval); a policy file at its
own. Per contender:

1. **real run**: every stage deployed with the contender's initial replicas
   (:class:`cluster.stack.chain.PipelineDeployment`), the open-loop load sent through the stages by chained
   client calls with the live feed on, and :class:`cluster.controller_pipeline.PipelineController` every
   interval (per-stage observations from live Triton counters and the client's per-stage visits; one decision
   per stage; each stage's ``backend.scale``). Recorded: every request end to end, every stage visit, every
   decision (per stage and end to end), every replica's lifecycle per stage.
2. **simulated replays** (``--sim-seeds``, pooled): the pipeline scenario (``--scenario``, default the
   ``--stack`` file's own; any pipeline scenario, e.g. a calibrated one from ``configs/calibrated/``) with a
   ``timestamps`` workload holding the real run's actual send times, the same initial replicas per stage and
   the same policy object (reset) at the same interval (:class:`simulator.pipeline.PipelineSimulation`).
3. **comparison** over requests sent in ``[warmup_s, duration_s)`` and replica time clipped to that window
   (:func:`calibration.compare.summarize_side` on both sides): per stage replica-seconds and the p50 / p95 /
   p99 of the stage's visits (send to the stage -> its response); end to end p50 / p95 / p99, throughput, SLO
   violations, mean accuracy and replica-seconds of all stages; relative errors ``(sim - real) / real``, the
   single-model validation's targets (replica-seconds 10 %, p95 15 %).

Load and initial replicas: as for one model (:mod:`cluster.validate.workload`): a Twitter-trace slice scaled so
its p99 rate is ``--peak-rps``, by default the study's validation load for a pipeline -- ``target_util`` x the
bottleneck stage's capacity at ``max_replicas`` (``max_replicas`` x its simulated per-replica capacity),
capped at the measured stack's ``max_served_rps`` when the scenario records one; each stage starts with what
the first two intervals' load needs at its capacity (+10 %).

A "sanity" section ends the run (:func:`rl.sanity.validation_load`, per policy the stage whose load most
needed more than its minimum; exit 3 unless ``--allow-degenerate``). Output (``--out``, atomic, marker, as for
one model): ``summary.json`` (config, seed, derived values, every figure), ``report.md`` (the per-stage and
end-to-end tables), ``overlay.png`` (per contender: replicas per stage over time real vs simulated; end-to-end
p95 over time real vs simulated), ``overlay_<policy>.png`` (the same with per-stage visit p95 and the load),
and per contender ``<policy>/requests.csv``, ``stages/<stage>/requests.csv``, ``decisions.csv``,
``replicas.csv``, ``sim_timeline.csv``, ``controller.log``, ``logs/``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.compare import VALIDATION_TARGETS, compare, summarize_side
from rl import sanity
from simulator.config import AutoscalerSpec, ConfigError, Scenario, WorkloadSpec

from . import FORMAT, say
from .report import fmt, workload_line
from .stats import interval_series, real_load, replica_curve

PIPELINE_CONTENDERS = ("hpa", "per_stage", "ipa")
STAGE_METRICS = ("replica_seconds", "mean_replicas", "p50_ms", "p95_ms", "p99_ms", "failures", "requests",
                 "scaling_actions")
E2E_METRICS = ("replica_seconds", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "slo_violation_rate",
               "accuracy", "failures", "requests")


@dataclass
class PipelineContender:
    """A pipeline policy under test: ``scenario`` carries its autoscaler spec (kind, interval, params: what the
    simulated replay runs), ``policy`` the object (the same drives the real run and, reset, the replays),
    ``initial`` the replicas per stage."""

    name: str
    label: str
    scenario: Scenario
    policy: Any
    initial: list[int]

    @property
    def interval_s(self) -> float:
        return self.scenario.autoscaler.interval_s


def with_stage_replicas(sc: Scenario, replicas) -> Scenario:
    """Pipeline scenario ``sc`` with stage ``k`` starting at ``replicas[k]`` replicas."""
    stages = tuple(dataclasses.replace(st, cluster=dataclasses.replace(st.cluster, replicas=int(n)))
                   for st, n in zip(sc.pipeline.stages, replicas))
    return sc.replace(pipeline=dataclasses.replace(sc.pipeline, stages=stages))


def pinned_ipa(sc: Scenario, params: dict):
    """The IPA configurator (:class:`simulator.ipa.IPAPolicy`) of ``sc`` with each stage's options pinned to
    its current variant at its ``max_batch_size``: it chooses replica counts only."""
    from simulator.ipa import IPAPolicy, stage_options
    pol = IPAPolicy.build(params, sc)
    pol.options = [[o for o in stage_options(st) if o.variant == st.variant and o.batch == st.batching.max_batch_size]
                   for st in sc.pipeline.stages]
    return pol


def pipeline_contenders(a, names: list[str], sc: Scenario, caps: list[float], interval_s: float) -> list:
    """``(name, label, scenario with its autoscaler, policy)`` of every contender (before initial replicas)."""
    from simulator.pipeline_policy import make_pipeline_policy
    out = []
    for n in names:
        if n == "hpa":
            from rl.pipeline_eval import contender
            s, pol = contender("hpa", (a.hpa_target, a.hpa_window), sc, interval_s, caps)
            tg = ", ".join(f"{st.name} {a.hpa_target * c:.1f}" for st, c in zip(sc.pipeline.stages, caps))
            out.append(("hpa", f"per-stage HPA (arrival rps per replica: {tg}; down-window {a.hpa_window:g} s)", s,
                        pol))
        elif n == "per_stage":
            s = sc.replace(autoscaler=AutoscalerSpec("per_stage", interval_s, {}))
            s = s.replace(pipeline=dataclasses.replace(s.pipeline, stages=tuple(
                dataclasses.replace(st, autoscaler=dataclasses.replace(st.autoscaler, interval_s=interval_s))
                for st in s.pipeline.stages)))
            kinds = ", ".join(f"{st.name} {st.autoscaler.kind}" for st in s.pipeline.stages)
            out.append(("per_stage", f"each stage's own autoscaler ({kinds})", s, make_pipeline_policy(s)))
        elif n == "ipa":
            params = dict(sc.autoscaler.params) if sc.autoscaler.kind == "ipa" else {}
            if a.ipa_util is not None:
                params["max_utilization"] = a.ipa_util
            params.pop("batch_sizes", None)
            s = sc.replace(autoscaler=AutoscalerSpec("ipa", interval_s, params))
            pol = pinned_ipa(s, params)
            out.append(("ipa", f"IPA replicas only (variant and batch pinned; max_utilization "
                               f"{pol.weights['max_utilization']:g}, forecast {pol.forecast_kind})", s, pol))
        else:
            pol = load_pipeline_policy(n, sc)
            out.append(("policy", f"learned ({os.path.relpath(os.path.abspath(n))})", sc.replace(autoscaler=pol.spec()),
                        pol))
    return out


def load_pipeline_policy(path: str, sc: Scenario):
    """A learned pipeline policy file for pipeline scenario ``sc``
    (:meth:`simulator.pipeline_learned.PipelineLearnedPolicy.load`); one line
    (:class:`~cluster.controller.PolicyRejected`) when it cannot load or was trained on another pipeline."""
    from simulator.pipeline_learned import PipelineLearnedPolicy

    from ..controller import PolicyRejected
    try:
        return PipelineLearnedPolicy.load(path, sc)
    except ConfigError as e:
        raise PolicyRejected(str(e)) from None


# --------------------------------------------------------------------------- one contender, real and simulated


def stage_replica_tuples(log_recs, t0: float) -> list[tuple[float, float, float, float]]:
    """A backend's replica log as (requested, ready, leaves rotation, gone) run times (inf: never)."""
    inf = math.inf
    out = []
    for r in log_recs:
        gone = (r.t_gone - t0) if r.t_gone is not None else inf
        out.append((r.t_request - t0, (r.t_ready - t0) if r.t_ready is not None else inf,
                    (r.t_drain - t0) if r.t_drain is not None else gone, gone))
    return out


def run_real_pipeline(c: PipelineContender, stack, duration: float, arrivals, work: Path, odir: Path,
                      quiet: bool) -> dict:
    """The contender's real run (module docstring, step 1): its files in ``odir``; per-stage and end-to-end
    request columns, replica tuples and the decision rows."""
    from ..controller_pipeline import PipelineRequests, pipeline_controller
    from ..measure import copy_logs, read_request_log, read_visit_log, write_csv
    from ..stack.chain import PipelineDeployment, chain_plan, check_links
    from .realrun import ControllerLog, controlled_load
    odir.mkdir(parents=True, exist_ok=True)
    wdir = work / c.name
    sc = with_stage_replicas(c.scenario, c.initial)
    dep = PipelineDeployment(sc, stack, wdir / "server")
    names = [st.name for st in dep.stages]
    feed = PipelineRequests(len(names))
    log = ControllerLog(odir / "controller.log", quiet, echo=("holding", "failed", "stopped", "not acted on"))
    ctl = pipeline_controller(dep.stages, c.policy, sc=sc, interval_s=c.interval_s, requests=feed, name=c.name,
                              log=log)
    res = None
    errors: list[str] = []
    try:
        say(quiet, f"[{c.name}] deploying " + ", ".join(f"{st.name} ({st.variant}) {n}" for st, n in
                                                        zip(dep.stages, c.initial)) + f" ({stack.backend} backend) ...")
        dep.deploy()
        for st in dep.stages:
            if not st.served.inputs:      # a repository model: its inputs from the running server
                from ..stack.triton import server_model_config
                st.served.learn_from_server(server_model_config(st.backend.endpoints["lb"], st.served.name))
        check_links([[(st.variant, st.served)] for st in dep.stages], names)
        t0 = time.time() + 4.0
        plan = {**chain_plan(dep.stages, wdir / "loadgen", sc.seed), "duration_s": duration, "seed": sc.seed,
                "timeout_s": stack.request_timeout_s, "max_inflight": stack.max_inflight, "start_at_epoch": t0,
                "stream": True, "stream_interval_s": 0.25, "mode": "open",
                "arrivals": np.asarray(arrivals, float).tolist()}
        res = controlled_load(ctl, plan, wdir, t0, duration, c.name, quiet, feed.feed,
                              lambda: "/".join(str(st.backend.ready_replicas) for st in dep.stages),
                              lambda: "/".join(map(str, ctl.last or [])))
    finally:
        for st in dep.stages:
            errors += [f"{st.name}: {e}" for e in getattr(st.backend, "errors", lambda: [])()]
        dep.teardown()
        log.close()
    t0 = float(res.meta.get("t0_epoch", t0))
    rows, reqs = read_request_log(res.requests_path, t0, extra=("end_stage",))
    write_csv(odir / "requests.csv", ("seq", "user", "t_sched_s", "t_send_s", "latency_ms", "status", "http_status",
                                      "replica", "error", "end_stage"),
              [(*r[:-1], names[int(r[-1])] if r[-1] != "" else "") for r in rows])
    visits = read_visit_log(res.visits_path, t0, len(names))
    from ..measure import STAGE_REQUEST_COLUMNS
    for n, (vrows, _, _) in zip(names, visits):
        write_csv(odir / "stages" / n / "requests.csv", STAGE_REQUEST_COLUMNS, vrows)
    drows = [r for d in ctl.decisions for r in d.rows(names)]
    if drows:
        write_csv(odir / "decisions.csv", list(drows[0]), ([r[k] for k in drows[0]] for r in drows))
    reps = {}
    rel = (lambda x: "" if x is None else round(x - t0, 4))
    rrows = []
    for st in dep.stages:
        log_recs = st.backend.replica_log()
        reps[st.name] = stage_replica_tuples(log_recs, t0)
        rrows += [(st.name, r.name, rel(r.t_request), rel(r.t_ready), rel(r.t_drain), rel(r.t_gone), r.end_reason)
                  for r in log_recs]
    write_csv(odir / "replicas.csv", ("stage", "name", "t_request_s", "t_ready_s", "t_drain_s", "t_gone_s",
                                      "end_reason"), rrows)
    copy_logs(wdir, odir / "logs", servers=None)
    for n in names:
        copy_logs(wdir, odir / "logs" / n, servers=f"server/{n}", loadgen=False)

    def cols(d):
        return (np.asarray(d["t_send"], float), np.asarray(d["latency_ms"], float),
                np.array([s == "ok" for s in d["status"]], bool))
    desired = {n: [d.stages[k].desired for d in ctl.decisions] for k, n in enumerate(names)}
    return {"e2e": cols(reqs), "stages": {n: cols(v[1]) for n, v in zip(names, visits)}, "replicas": reps,
            "desired": desired, "held_ticks": sum(1 for d in ctl.decisions if any(s.held for s in d.stages)),
            "held_configs": sum(1 for d in ctl.decisions for s in d.stages if s.held_config),
            "ticks": len(ctl.decisions), "errors": errors + ctl.errors, "t0_epoch": t0, "loadgen": res.meta,
            "start_skew_s": t0 - (plan["start_at_epoch"]), "scrapes": ctl.scrapes}


def run_sim_pipeline(c: PipelineContender, times: np.ndarray, duration: float, warmup: float,
                     seeds: list[int]) -> dict:
    """The contender's simulated replays (module docstring, step 2): the real run's send times, its initial
    replicas, the same policy (reset by :func:`simulate_pipeline`), one run per seed."""
    from simulator.pipeline import simulate_pipeline
    base = with_stage_replicas(c.scenario, c.initial)
    wl = WorkloadSpec(kind="timestamps", times=tuple(float(x) for x in times))
    return [simulate_pipeline(base.replace(name=f"validate:{c.name}", seed=s, duration_s=duration, warmup_s=warmup,
                                           workload=wl, provenance={}), policy=c.policy) for s in seeds]


def _actions(desired: list[int], initial: int) -> int:
    return int(sum(1 for i in range(1, len(desired)) if desired[i] != desired[i - 1]) +
               (1 if desired and desired[0] != initial else 0))


def side_summaries(e2e, stages: dict, replicas: dict, desired: dict, initial: list[int], accuracy: float,
                   warmup: float, duration: float, slo_ms: float, copies: int = 1) -> dict:
    """One side's figures: ``e2e`` (all stages' replica-seconds, mean accuracy of the counted successes) and
    per stage (its visits; its replicas; its scaling actions, averaged over ``copies``)."""
    out = {"stages": {}}
    for k, (n, (t, lat, ok)) in enumerate(stages.items()):
        s = summarize_side(t, lat, ok, warmup, duration, slo_ms, copies=copies, replicas=replicas[n])
        s["scaling_actions"] = float(np.mean([_actions(d, initial[k]) for d in desired[n]]))
        out["stages"][n] = s
    t, lat, ok = e2e
    s = summarize_side(t, lat, ok, warmup, duration, slo_ms, copies=copies,
                       replicas=[r for n in stages for r in replicas[n]])
    s["accuracy"] = accuracy
    out["e2e"] = s
    return out


def sim_side(sims: list, names: list[str], initial: list[int], warmup: float, duration: float, slo_ms: float) -> dict:
    """:func:`side_summaries` of the pooled simulated replays, the first replay's curves, and its timeline."""
    inf = math.inf
    f = (lambda x: inf if x != x else x)
    e2e = (np.concatenate([r.requests["arrival_s"] for r in sims]),
           np.concatenate([(r.requests["completion_s"] - r.requests["arrival_s"]) * 1e3 for r in sims]),
           np.concatenate([r.requests["status"] == 0 for r in sims]))
    stages, reps, desired, first_reps = {}, {}, {}, {}
    for k, n in enumerate(names):
        recs = [r.stage_results[k].records for r in sims]
        stages[n] = (np.concatenate([x["arrival_s"] for x in recs]),
                     np.concatenate([(x["completion_s"] - x["arrival_s"]) * 1e3 for x in recs]),
                     np.concatenate([x["status"] == 0 for x in recs]))
        reps[n] = [(rep.requested_s, f(rep.gone_s)) for r in sims for rep in r.stage_results[k].replicas]
        first_reps[n] = [(rep.requested_s, f(rep.ready_s), f(rep.drain_s), f(rep.gone_s))
                         for rep in sims[0].stage_results[k].replicas]
        desired[n] = [[row["desired"] for row in r.timeline if row["stage"] == n] for r in sims]
    acc = float(np.nanmean([r.summary["accuracy"]["mean"] for r in sims]))
    summ = side_summaries(e2e, stages, reps, desired, initial, acc, warmup, duration, slo_ms, copies=len(sims))
    r0 = sims[0].requests
    return {"summary": summ, "replicas": first_reps, "timeline": sims[0].timeline,
            "e2e_first": (r0["arrival_s"], (r0["completion_s"] - r0["arrival_s"]) * 1e3, r0["status"] == 0),
            "stages_first": {n: (sims[0].stage_results[k].records["arrival_s"],
                                 (sims[0].stage_results[k].records["completion_s"] -
                                  sims[0].stage_results[k].records["arrival_s"]) * 1e3,
                                 sims[0].stage_results[k].records["status"] == 0) for k, n in enumerate(names)},
            "held_configs": int(np.mean([sum(v["held_configs"] for v in r.summary["stages"].values()) for r in sims])),
            "reconfigurations": float(np.mean([sum(v["reconfigurations"] for v in r.summary["stages"].values())
                                              for r in sims]))}


# --------------------------------------------------------------------------- the validation


def pipeline_peak(sc: Scenario, caps: list[float], slo_target: float) -> tuple[float, str]:
    """The study's validation load for a pipeline: ``target_util`` x the bottleneck stage's capacity at
    ``max_replicas`` (``max_replicas`` x its simulated per-replica capacity ``caps``), capped at the measured
    stack's ``max_served_rps`` when the scenario records one (:func:`rl.study.validation_peak_rule`)."""
    from rl.common import DEFAULTS
    from rl.study import stack_record, study_of, validation_peak_rule
    st = study_of(sc)
    if st is not None:
        return float(st.validation_peak_rps), f"the study's: {st.rules.get('validation_peak_rps', '')}"
    fleet = [c * s.cluster.max_replicas for c, s in zip(caps, sc.pipeline.stages)]
    k = int(np.argmin(fleet))
    peak, rule = validation_peak_rule(fleet[k], float(DEFAULTS["trace"]["target_util"]),
                                      stack_record(sc).get("max_served_rps"))
    return peak, f"{rule}; bottleneck stage {sc.pipeline.stages[k].name}: {sc.pipeline.stages[k].cluster.max_replicas} x " \
                 f"{caps[k]:.1f} rps"


def beyond_measured(peak_rps: float | None, sc: Scenario) -> float | None:
    """The measured stack's ``max_served_rps`` when a given validation peak exceeds it (the calibration was fitted
    below that rate: the comparison then extrapolates it), else None."""
    from rl.study import stack_record
    served = stack_record(sc).get("max_served_rps")
    if peak_rps is None or not served or peak_rps <= float(served):
        return None
    return float(served)


def validate_pipeline(a, cfg, comp: list[str], tmp: Path, t_all: float) -> dict:
    """The pipeline validation, writing into ``tmp`` (the output folder being written)."""
    from rl.common import resolve_path
    from simulator.capacity import stage_capacities
    from simulator.config import load_scenario
    from simulator.pipeline import stage_scenario

    from ..controller_pipeline import check_pipeline_policy, combined_accuracy
    from ..measure import machine, preflight
    from ..stack import procs
    from ..stack.arrivals import arrival_times
    from .realrun import write_validation
    from .workload import build_workload, initial_replicas
    scen_path = resolve_path(a.scenario) if a.scenario else resolve_path(a.stack)
    sc = load_scenario(scen_path) if a.scenario else cfg.scenario
    if sc.pipeline is None:
        raise ConfigError(f"--scenario {a.scenario}: not a pipeline scenario (no pipeline: block), but the --stack "
                          f"file {a.stack} deploys a pipeline")
    want = [s.name for s in cfg.scenario.pipeline.stages]
    have = [s.name for s in sc.pipeline.stages]
    if want != have:
        raise ConfigError(f"--scenario {a.scenario}: stages {' -> '.join(have)}; the --stack file deploys "
                          f"{' -> '.join(want)}")
    for s_real, s_sim in zip(cfg.scenario.pipeline.stages, sc.pipeline.stages):
        if s_real.variant != s_sim.variant:
            raise ConfigError(f"--scenario {a.scenario}: stage {s_sim.name} starts on variant {s_sim.variant}; the "
                              f"--stack file deploys {s_real.variant}")
    stack = cfg.stack if a.backend is None else dataclasses.replace(cfg.stack, backend=a.backend)
    a.backend = stack.backend
    warm = float(a.warmup)
    interval = float(a.interval) if a.interval else sc.autoscaler.interval_s
    if not interval > 0:
        raise ConfigError(f"--interval: must be > 0 (got {interval})")
    if a.policy not in PIPELINE_CONTENDERS:
        load_pipeline_policy(a.policy, sc)      # refused here, before the capacities are computed
    say(a.quiet, "per-stage capacities in simulation (each stage's share of the SLO) ...")
    caps = [float(c) for c in stage_capacities(sc, a.slo_target)]
    names = [s.name for s in sc.pipeline.stages]
    variants = [s.variant for s in sc.pipeline.stages]
    batch = [s.batching.max_batch_size for s in sc.pipeline.stages]
    accuracy = combined_accuracy([s.variants[s.variant_index(s.variant)].accuracy for s in sc.pipeline.stages],
                                 sc.pipeline.accuracy)
    made = pipeline_contenders(a, [a.policy] + [x for x in comp if x != a.policy], sc, caps, interval)
    for n, _, s, pol in made:
        check_pipeline_policy(pol, names=names, variants=variants, batch_sizes=batch,
                              interval_s=s.autoscaler.interval_s, slo_ms=sc.slo_ms,
                              min_replicas=[st.cluster.min_replicas for st in sc.pipeline.stages],
                              max_replicas=[st.cluster.max_replicas for st in sc.pipeline.stages],
                              capacities=caps, accuracy=accuracy, name=n if n != "policy" else a.policy)
    peak_rule = None
    if a.peak_rps is None and not a.workload:
        a.peak_rps, peak_rule = pipeline_peak(sc, caps, a.slo_target)
    wl, duration, wdesc = build_workload(a, sc, caps[0])
    if peak_rule:
        wdesc["scale_rule"] = wdesc["scale_rule"].replace("given (--peak-rps)", peak_rule)
    served = beyond_measured(a.peak_rps, sc)
    if served is not None:
        wdesc["beyond_measured"] = served
        say(a.quiet, f"warning: --peak-rps {a.peak_rps:g} is above the highest rate the measured pipeline served "
                     f"({served:g} rps, provenance.stack.max_served_rps): the replay extrapolates the calibration")
    if wl.kind == "closed_loop":
        raise ConfigError("--workload: a pipeline takes open-loop arrivals (poisson, schedule, trace, timestamps)")
    if not 0 <= warm < duration:
        raise ConfigError(f"--warmup: must be in [0, duration {duration:g}) (got {warm:g})")
    sc = sc.replace(warmup_s=warm, duration_s=duration)
    arrivals = arrival_times(wl, duration, sc.seed)
    if not len(arrivals):
        raise ConfigError("the workload has no arrivals in the run")
    sim_seeds = [sc.seed + 1000 + i for i in range(a.sim_seeds)]
    cons = []
    for n, label, s, pol in made:
        init = [initial_replicas(arrivals, stage_scenario(sc, k), caps[k], s.autoscaler.interval_s)
                for k in range(len(names))]
        cons.append(PipelineContender(n, label, s.replace(warmup_s=warm, duration_s=duration), pol, init))
    work = Path(tempfile.mkdtemp(prefix="servesim-validate-"))
    try:
        if stack.backend == "local":
            preflight(cfg, a.quiet)
        results: dict[str, dict] = {}
        curves: dict[str, dict] = {}
        say(a.quiet, f"validating {', '.join(c.name for c in cons)} on the {stack.backend} backend: {duration:g} s of "
                     f"real load each ({wdesc.get('kind')}" + (f", mean {wdesc['mean_rps']} rps, p99 {wdesc['p99_rps']} rps"
                                                              if 'mean_rps' in wdesc else "") + ")")
        for c in cons:
            t_c = time.time()
            real = run_real_pipeline(c, stack, duration, arrivals, work, tmp / c.name, a.quiet)
            ts = real["e2e"][0]
            ts = np.sort(ts[np.isfinite(ts) & (ts >= 0) & (ts < duration)])
            sims = run_sim_pipeline(c, ts, duration, warm, sim_seeds)
            sim = sim_side(sims, names, c.initial, warm, duration, sc.slo_ms)
            acc_real = accuracy if real["e2e"][2].any() else math.nan
            rs = side_summaries(real["e2e"], real["stages"], {n: [(r, g) for r, _, _, g in real["replicas"][n]]
                                                              for n in names},
                                {n: [real["desired"][n]] for n in names}, c.initial, acc_real, warm, duration,
                                sc.slo_ms)
            ss = sim["summary"]
            cmp_ = {"e2e": compare(rs["e2e"], ss["e2e"], E2E_METRICS, VALIDATION_TARGETS),
                    "stages": {n: compare(rs["stages"][n], ss["stages"][n], STAGE_METRICS, VALIDATION_TARGETS)
                               for n in names}}
            loads = {}
            for k, n in enumerate(names):
                hi = sc.pipeline.stages[k].cluster.max_replicas
                loads[n] = real_load({"t_send": real["stages"][n][0], "replicas": real["replicas"][n]},
                                     arrivals if k == 0 else None, [caps[k] * (i + 1) for i in range(hi)],
                                     sc.pipeline.stages[k].cluster.min_replicas, warm, duration)
            top = max(names, key=lambda n: loads[n]["share_above_min"])
            load = {**loads[top], "stage": top, "delivered": loads[names[0]].get("delivered", 1.0),
                    "share_time_above_min": max(v["share_time_above_min"] for v in loads.values())}
            results[c.name] = {"label": c.label, "kind": c.scenario.autoscaler.kind,
                               "params": dict(c.scenario.autoscaler.params), "interval_s": c.interval_s,
                               "initial_replicas": dict(zip(names, c.initial)), "real": rs, "sim": ss,
                               "compare": cmp_, "load": load, "stage_loads": loads, "errors": real["errors"],
                               "held_ticks": real["held_ticks"], "ticks": real["ticks"],
                               "held_configs": {"real": real["held_configs"], "sim": sim["held_configs"]},
                               "sim_reconfigurations": sim["reconfigurations"], "t0_epoch": real["t0_epoch"],
                               "start_skew_s": real["start_skew_s"], "wall_s": round(time.time() - t_c, 1)}
            from ..measure import write_csv
            tl = sim["timeline"]
            keys = list(dict.fromkeys(k for r in tl for k in r))
            write_csv(tmp / c.name / "sim_timeline.csv", keys, ([r.get(k, "") for k in keys] for r in tl))
            grid = np.arange(0.0, duration, 0.25)
            step = min(c.interval_s, 5.0)
            cv = {"ts": grid, "stages": {}, "step": step}
            for n in names:
                rr, ry = replica_curve(real["replicas"][n], grid)
                sr, sy = replica_curve(sim["replicas"][n], grid)
                cv["stages"][n] = {"real_req": rr, "real_rdy": ry, "sim_req": sr, "sim_rdy": sy,
                                   "real_series": interval_series(*real["stages"][n], duration, step, sc.slo_ms),
                                   "sim_series": interval_series(*sim["stages_first"][n], duration, step, sc.slo_ms)}
            cv["real_series"] = interval_series(*real["e2e"], duration, step, sc.slo_ms)
            cv["sim_series"] = interval_series(*sim["e2e_first"], duration, step, sc.slo_ms)
            curves[c.name] = cv
            r_, s_ = rs["e2e"], ss["e2e"]
            say(a.quiet, f"[{c.name}] real: {r_['replica_seconds']:.0f} replica-s, SLO-viol "
                         f"{r_['slo_violation_rate'] * 100:.2f} %, p95 {r_['p95_ms']:.1f} ms | sim: "
                         f"{s_['replica_seconds']:.0f} replica-s, SLO-viol {s_['slo_violation_rate'] * 100:.2f} %, "
                         f"p95 {s_['p95_ms']:.1f} ms")
        lo = min(st.cluster.min_replicas for st in sc.pipeline.stages)
        checks = [sanity.validation_load({n: r["load"] for n, r in results.items()}, lo)]
        targets = {"cost": all(r["compare"]["e2e"]["replica_seconds"]["within_target"] for r in results.values()),
                   "p95": all(r["compare"]["e2e"]["p95_ms"]["within_target"] for r in results.values())}
        mach = machine()
        summary = {
            "format": FORMAT, "pipeline": names, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv, "policy": a.policy, "compare_with": comp, "scenario_path": os.path.relpath(scen_path),
            "stack_path": os.path.relpath(resolve_path(a.stack)), "backend": stack.backend,
            "machine": f"{mach['cpu']}, {mach['cores']} cores", "seed": sc.seed, "sim_seeds": sim_seeds,
            "slo_ms": sc.slo_ms, "duration_s": duration, "warmup_s": warm, "interval_s": interval,
            "workload": wdesc, "variants": dict(zip(names, variants)), "max_batch_sizes": dict(zip(names, batch)),
            "accuracy": {"per_completion": accuracy, "rule": sc.pipeline.accuracy},
            "stage_capacities_rps": dict(zip(names, caps)),
            "stage_capacity_rule": f"simulated per-replica capacity of each stage at its share of the SLO with at most "
                                   f"{a.slo_target:g} violations (simulator.capacity.stage_capacities)",
            "replica_ranges": {st.name: [st.cluster.min_replicas, st.cluster.max_replicas] for st in sc.pipeline.stages},
            "hpa_target": a.hpa_target, "hpa_window_s": a.hpa_window, "ipa_util": a.ipa_util,
            "variant_switches": "refused on the real stack (cluster.controller_pipeline); ipa runs pinned",
            "targets": targets, "sanity": sanity.record(checks, a.allow_degenerate), "policies": results,
            "wall_s": round(time.time() - t_all, 1)}
        write_validation(tmp, summary, pipeline_report_md, lambda: pipeline_plots(tmp, summary, curves))
        summary["_checks"] = checks
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)
        procs.kill_all()


# --------------------------------------------------------------------------- tables, report, plots


def _cell(c: dict, kind: str = "", err: bool = True) -> str:
    s = f"{fmt(c['real'], kind)} / {fmt(c['sim'], kind)}"
    if err and kind != "pct":
        w = c.get("within_target")
        s += f" ({fmt(c['rel_err'], 'rel')}{'' if w is None else (' ✓' if w else ' ✗')})"
    return s


def pipeline_table_lines(s: dict, markdown: bool = True) -> list[str]:
    """The per-stage table and the end-to-end table (cells: real / simulated (relative error))."""
    sep = (lambda cells: "| " + " | ".join(cells) + " |") if markdown else (lambda cells: "  ".join(
        f"{c:<26}" if i else f"{c:<22}" for i, c in enumerate(cells)))
    head = ["policy / stage", "replica-s", "visit p50 ms", "visit p95 ms", "visit p99 ms", "scaling actions"]
    L = [sep(head)] + (["|" + "---|" * len(head)] if markdown else [])
    for name, p in s["policies"].items():
        for st, c in p["compare"]["stages"].items():
            L.append(sep([f"{name} / {st}", _cell(c["replica_seconds"]), _cell(c["p50_ms"]), _cell(c["p95_ms"]),
                          _cell(c["p99_ms"]), _cell(c["scaling_actions"], err=False)]))
    L.append("")
    head = ["policy (end to end)", "replica-s (all stages)", "p50 ms", "p95 ms", "p99 ms", "throughput rps",
            "SLO violations", "accuracy"]
    L += [sep(head)] + (["|" + "---|" * len(head)] if markdown else [])
    for name, p in s["policies"].items():
        c = p["compare"]["e2e"]
        L.append(sep([name, _cell(c["replica_seconds"]), _cell(c["p50_ms"]), _cell(c["p95_ms"]), _cell(c["p99_ms"]),
                      _cell(c["throughput_rps"]), _cell(c["slo_violation_rate"], "pct"),
                      f"{fmt_acc(c['accuracy']['real'])} / {fmt_acc(c['accuracy']['sim'])}"]))
    return L


def fmt_acc(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"


def pipeline_report_md(s: dict) -> str:
    w = s["workload"]
    L = [f"# Sim-to-real validation of pipeline policies: {' -> '.join(s['pipeline'])}", "",
         f"Created {s['created']} on {s['machine']} ({s['backend']} backend). Pipeline scenario `{s['scenario_path']}` "
         f"(end-to-end SLO {s['slo_ms']:g} ms; variants " + ", ".join(f"{k} {v} @ batch {s['max_batch_sizes'][k]}"
                                                                     for k, v in s["variants"].items()) +
         "; replicas " + ", ".join(f"{k} {lo}..{hi}" for k, (lo, hi) in s["replica_ranges"].items()) +
         f"); real stack from `{s['stack_path']}`. Simulated side: {len(s['sim_seeds'])} seed(s) per policy, replaying "
         f"each real run's own send times and initial replicas with the same policy object. Summary window: "
         f"requests sent in [{s['warmup_s']:g}, {s['duration_s']:g}) s; a stage's visit latency is from the send "
         f"to the stage to its response.", ""]
    L += [workload_line(w, s["duration_s"]), ""]
    L += ["Stage capacities (" + s["stage_capacity_rule"] + "): " +
          ", ".join(f"{k} {v:.1f} rps" for k, v in s["stage_capacities_rps"].items()) + ".", ""]
    L += ["## Real vs simulated", ""] + pipeline_table_lines(s) + [
        "", "Cells: real / simulated (relative error of the simulation). Targets as for one model: replica-seconds "
        f"within {VALIDATION_TARGETS['replica_seconds'][1] * 100:.0f} %, p95 within "
        f"{VALIDATION_TARGETS['p95_ms'][1] * 100:.0f} % (✓/✗). Accuracy: mean over served requests "
        f"({s['accuracy']['rule']} of the stages' variants; published figures, not measured).", ""]
    L += ["| policy | what | interval | initial replicas | held ticks (real) | switches asked (real / sim) |",
          "|---|---|---|---|---|---|"]
    for name, p in s["policies"].items():
        L.append(f"| {name} | {p['label']} | {p['interval_s']:g} s | "
                 + ", ".join(f"{k} {v}" for k, v in p["initial_replicas"].items())
                 + f" | {p['held_ticks']} of {p['ticks']} | {p['held_configs']['real']} / {p['held_configs']['sim']} |")
    t = s["targets"]
    L += ["", "## Targets", "",
          f"- end-to-end replica-seconds within 10 % for every policy: **{'met' if t['cost'] else 'not met'}**",
          f"- end-to-end p95 within 15 % for every policy: **{'met' if t['p95'] else 'not met'}**", "",
          "Variant and batch-size switches are not done on the real stack (refused before the run; `ipa` runs "
          "with each stage pinned to its current variant and batch size).", ""]
    notes = []
    for name, p in s["policies"].items():
        if p["held_ticks"]:
            notes.append(f"{name}: the controller held at {p['held_ticks']} tick(s) (see {name}/controller.log)")
        if p.get("errors"):
            notes.append(f"{name}: {len(p['errors'])} backend/controller error(s): {p['errors'][0][:200]}")
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    L += ["## Files", "", "`overlay.png` (per policy: replicas per stage, real solid / simulated dashed; end-to-end "
          "p95 per interval), `overlay_<policy>.png` (the same with each stage's visit p95 and the load), "
          "`summary.json`, `<policy>/requests.csv` (end to end), `<policy>/stages/<stage>/requests.csv` (visits), "
          "`<policy>/decisions.csv` (every tick: one row per stage and an e2e row), `<policy>/replicas.csv`, "
          "`<policy>/sim_timeline.csv` (first seed), `<policy>/controller.log`, `<policy>/logs/`.", ""]
    return "\n".join(L)


def _replica_axes(ax, cv: dict, top: float) -> None:
    for i, (n, c) in enumerate(cv["stages"].items()):
        ax.step(cv["ts"], c["real_req"] + 0.03 * i, where="post", color=f"C{i}", lw=1.6, label=f"{n} real")
        ax.step(cv["ts"], c["sim_req"] + 0.03 * i, where="post", color=f"C{i}", lw=1.2, ls="--", label=f"{n} sim")
    ax.set_ylim(0, top + 0.5)
    ax.set_ylabel("replicas requested")
    ax.legend(fontsize=7, loc="upper left", ncol=2)


def _latency_axes(ax, real: dict, sim: dict, slo: float, what: str) -> None:
    ax.plot(real["t_s"], real["p95_ms"], color="C0", lw=1.4, marker=".", label=f"real {what}")
    ax.plot(sim["t_s"], sim["p95_ms"], color="C1", lw=1.4, ls="--", marker=".", label=f"sim {what}")
    ax.axhline(slo, color="crimson", lw=0.8, ls=":", label=f"SLO {slo:g} ms")
    ax.legend(fontsize=7, loc="upper left")


def pipeline_plots(d: Path, s: dict, curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(curves)
    slo = s["slo_ms"]
    top = max(hi for _, hi in s["replica_ranges"].values())
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 2.9 * len(names) + 0.4), squeeze=False, sharex=True)
    for i, n in enumerate(names):
        cv = curves[n]
        ax = axes[i][0]
        _replica_axes(ax, cv, top)
        c = s["policies"][n]["compare"]["e2e"]["replica_seconds"]
        ax.set_title(f"{n}: replica-s real {c['real']:.0f} / sim {c['sim']:.0f} ({fmt(c['rel_err'], 'rel')})", fontsize=9)
        ax.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
        ax = axes[i][1]
        _latency_axes(ax, cv["real_series"], cv["sim_series"], slo, f"e2e p95 per {cv['step']:g} s")
        c = s["policies"][n]["compare"]["e2e"]["p95_ms"]
        ax.set_title(f"{n}: e2e p95 real {c['real']:.1f} / sim {c['sim']:.1f} ms ({fmt(c['rel_err'], 'rel')})",
                     fontsize=9)
        ax.set_ylabel("ms")
        ax.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
    for ax in axes[-1]:
        ax.set_xlabel("run time (s)")
    fig.suptitle(f"pipeline {' -> '.join(s['pipeline'])}: real vs simulated ({s['backend']} backend)", fontsize=10)
    fig.tight_layout()
    fig.savefig(d / "overlay.png", dpi=100)
    plt.close(fig)
    for n in names:
        cv = curves[n]
        st = list(cv["stages"])
        fig, ax2 = plt.subplots(2 + len(st), 1, figsize=(9, 2.4 * (2 + len(st)) + 0.4), sharex=True)
        ax = ax2[0]
        ax.plot(cv["real_series"]["t_s"], cv["real_series"]["arrival_rps"], color="k", lw=1, label="offered load (real sends)")
        ax.plot(cv["sim_series"]["t_s"], cv["sim_series"]["arrival_rps"], color="C1", lw=1, ls="--",
                label="simulated arrivals")
        ax.set_ylabel("req/s")
        ax.legend(fontsize=7)
        _replica_axes(ax2[1], cv, top)
        for j, sn in enumerate(st):
            c = cv["stages"][sn]
            _latency_axes(ax2[2 + j], c["real_series"], c["sim_series"], slo, f"{sn} visit p95")
            ax2[2 + j].set_ylabel("ms")
        for a_ in ax2:
            a_.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
        ax2[-1].set_xlabel("run time (s)")
        fig.suptitle(f"{n} ({s['policies'][n]['label'][:90]}): real vs simulated", fontsize=9)
        fig.tight_layout()
        fig.savefig(d / f"overlay_{n}.png", dpi=100)
        plt.close(fig)
