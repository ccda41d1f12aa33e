"""Inference pipelines: a chain of deployments a request passes through in a row.

A pipeline scenario (``pipeline:`` in the YAML, :class:`simulator.config.PipelineSpec`) lists stages; each
stage is a deployment exactly as a single-model scenario describes one (its batcher, replicas, load balancer,
start-ups, drains, cost, autoscaler). This module runs one :class:`simulator.engine.Simulation` per stage and
links them by their responses:

- the workload's arrivals reach the first stage;
- a request whose batch completes at stage k at ``t`` reaches stage k+1 at ``t + hop_k`` (``hop_k``: stage k's
  per-request hop, drawn as a single model's overhead is); the client has the response ``hop`` after the last
  stage's batch completes. End-to-end latency = that instant - the first arrival; the SLO is end to end;
- a request rejected, timed out or dropped at any stage fails there and goes no further;
- a request's accuracy combines the accuracies of the variants that served it (``pipeline.accuracy``:
  ``product`` or ``mean``); failed requests have none.

How the stages are linked, and why it is exact: a stage's events before ``t`` depend only on its arrivals
before ``t``, which are stage k-1's responses before ``t``; nothing flows back up a chain (no closed-loop
users: a pipeline takes open-loop arrivals, :func:`simulator.config.scenario_from_dict` refuses the rest). So
at every control tick the stages run to the tick in chain order, each stage's finished requests are handed to
the next as fed arrivals (:meth:`Simulation.feed`, sorted by instant, ties by request id), and the result is
the same as one event loop over all stages. Each stage runs in its own compiled loop (the fast engine) or its
own per-request SimPy processes (the reference engine); the hand-over moves arrays, once per tick, never one
Python object per request.

Randomness: stage 0 uses the scenario's seed, so its arrivals and draws are those of the same single-model
scenario; stage k > 0 uses :func:`stage_seed` (its own keyed streams, independent of stage 0's).

Control: one interval for the whole pipeline: a joint policy's (the scenario's top-level ``autoscaler:``), else
the stages' own, which must be equal (checked at load). Policies (:mod:`simulator.pipeline_policy`) read a
:class:`PipelineObservation` and answer one decision per stage; ``per_stage`` (the default) runs each stage's own
single-model policy on its own :class:`~simulator.policy.Observation` ("per-stage HPA": what a Kubernetes user
does today); ``ipa`` is the IPA-style joint configurator (:mod:`simulator.ipa`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from simulator.batching import DROPPED, OK, REJECTED, STATUS_NAMES, TIMEOUT
from simulator.config import Scenario, ServiceSpec
from simulator.engine import Simulation
from simulator.variants import ServingConfig
from simulator.metrics import (A_DROPPED, A_FAIL, A_LAT2_S, A_LAT_S, A_OK, A_REJECTED, A_SLO_VIOL,
                               A_TIMEOUT, H_BINS, N_ACC, exact_quantiles, hist_bins, hist_quantiles, safe_div)
from simulator.pipeline_policy import StageDecision, make_pipeline_policy
from simulator.policy import Observation


def stage_seed(seed: int, k: int) -> int:
    """The seed of stage ``k``'s random streams: the scenario's for stage 0 (so a one-stage pipeline draws what
    the single-model scenario draws), a SeedSequence child of (seed, k) below 2**63 for the others."""
    if k == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def config_batch_sizes(stage) -> list[int]:
    """The max batch sizes a stage can be reconfigured to: the powers of two up to its ``max_batch_size``, and
    that size itself (IPA's batch sizes are powers of two)."""
    mbs = stage.batching.max_batch_size
    return sorted({2 ** i for i in range(int(math.log2(mbs)) + 1)} | {mbs})


def stage_configs(stage) -> tuple[list[ServingConfig], list[tuple[str, int]], int]:
    """Every serving configuration of a stage (:mod:`simulator.variants`): each variant at each of
    :func:`config_batch_sizes` (named ``variant@b``, with the variant's start-up delay), their (variant,
    batch size) keys, and the index of the one it starts with (its ``variant`` at its ``max_batch_size``)."""
    cfgs, keys = [], []
    for v in stage.variants:
        for b in config_batch_sizes(stage):
            cfgs.append(ServingConfig(f"{v.name}@{b}", ServiceSpec(per_batch=v.service.per_batch,
                                                                    batch_slope=v.service.batch_slope,
                                                                    overhead=stage.hop), b, v.startup))
            keys.append((v.name, b))
    return cfgs, keys, keys.index((stage.variant, stage.batching.max_batch_size))


def stage_scenario(sc: Scenario, k: int) -> Scenario:
    """Stage ``k`` of pipeline scenario ``sc`` as a single-model scenario: its batcher, cluster, autoscaler and
    starting variant (its per-batch compute; the stage's hop as the per-request overhead; a variant's own
    start-up delay goes with its serving configuration, :func:`stage_configs`), the pipeline's workload (fed to stages after the first), duration, warm-up
    and end-to-end SLO (a stage's own ``slo_violation_frac`` is then the share of its visits that alone take
    longer than the whole pipeline may), per-request records on (the hand-over reads them)."""
    st = sc.pipeline.stages[k]
    v = st.variants[st.variant_index(st.variant)]
    return Scenario(seed=stage_seed(sc.seed, k), duration_s=sc.duration_s, warmup_s=sc.warmup_s, slo_ms=sc.slo_ms,
                    record_requests=True, workload=sc.workload,
                    service=ServiceSpec(per_batch=v.service.per_batch, batch_slope=v.service.batch_slope,
                                        overhead=st.hop),
                    batching=st.batching, cluster=st.cluster,
                    autoscaler=dataclasses.replace(st.autoscaler, interval_s=sc.autoscaler.interval_s),
                    name=f"{sc.name}/{st.name}" if sc.name else st.name)


@dataclass(frozen=True)
class PipelineObservation:
    """What a joint pipeline policy sees at a control tick: each stage's own :class:`Observation` (its
    arrivals, its latency from arrival at the stage to the response reaching the next stage, its queue,
    batches, replicas; ``slo_ms`` is the end-to-end SLO), ``e2e``: an :class:`Observation` of the whole
    pipeline (arrivals at the first stage; completions, latency percentiles and SLO violations end to end;
    replica fields are totals over stages; queue / batch / busy fields NaN), each stage's current
    ``variants`` name and ``batch_sizes`` (max batch size), and the mean ``accuracy`` of the requests completed
    in the interval (NaN if none)."""

    time_s: float
    interval_s: float
    stages: tuple[Observation, ...]
    e2e: Observation
    variants: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    accuracy: float


def e2e_observation(stages: Sequence[Observation], *, time_s: float, interval_s: float, completion_rps: float,
                    p50_ms: float, p95_ms: float, p99_ms: float, slo_violation_frac: float, failures: int,
                    slo_ms: float) -> Observation:
    """The end-to-end :class:`Observation` of a pipeline (:attr:`PipelineObservation.e2e`) from its stages' own
    (``stages``) and the interval's end-to-end completions: arrivals are the first stage's, completions,
    latency percentiles, SLO violations and failures are end to end (given), in-flight and replica fields are
    sums over the stages, queue / batch / busy fields NaN. The simulator and the live pipeline controller
    (:mod:`cluster.controller_pipeline`) both build it here."""
    nan = float("nan")
    return Observation(
        time_s=time_s, interval_s=interval_s, arrival_rps=stages[0].arrival_rps, completion_rps=completion_rps,
        latency_p50_ms=p50_ms, latency_p95_ms=p95_ms, latency_p99_ms=p99_ms,
        slo_violation_frac=slo_violation_frac, queue_ms=nan, batch_size=nan, busy_fraction=nan,
        inflight=float(sum(o.inflight for o in stages)), replicas=sum(o.replicas for o in stages),
        replicas_ready=sum(o.replicas_ready for o in stages),
        replicas_pending=sum(o.replicas_pending for o in stages), failures=int(failures), slo_ms=slo_ms,
        min_replicas=sum(o.min_replicas for o in stages), max_replicas=sum(o.max_replicas for o in stages))


class PipelineSimulation:
    """A pipeline run stepped one control interval at a time: ``obs = sim.start()``, then
    ``obs = sim.step(decisions)`` (one desired replica count per stage, each applied by the single-model rule
    :func:`simulator.policy.replicas_to_ask`) until ``obs is None``; then ``sim.result()``. ``startup_delays``:
    per stage a :class:`Simulation` ``startup_delay`` hook or None (a replay scripts measured ready times)."""

    def __init__(self, sc: Scenario, engine: str = "fast", progress: Callable[[float], None] | None = None,
                 memory_budget: str | int | float | None = None, startup_delays: Sequence[Any] | None = None):
        if sc.pipeline is None:
            raise ValueError("PipelineSimulation needs a pipeline scenario (a pipeline: block)")
        self.sc = sc
        self.engine = engine
        self.spec = sc.pipeline
        self.stage_scenarios = [stage_scenario(sc, k) for k in range(len(self.spec.stages))]
        made = [stage_configs(st) for st in self.spec.stages]
        self.config_keys = [keys for _, keys, _ in made]          # per stage: config index -> (variant, batch)
        hooks = list(startup_delays) if startup_delays is not None else [None] * len(made)
        self.stages = [Simulation(s, engine=engine, fed=k > 0, memory_budget=memory_budget, configs=cfgs,
                                  config=first, startup_delay=hook)
                       for k, (s, (cfgs, _, first), hook) in enumerate(zip(self.stage_scenarios, made, hooks))]
        self.held_configs = [0] * len(self.stages)      # decisions naming an unknown variant or batch size
        self.interval = sc.autoscaler.interval_s      # the pipeline's (joint policy's, or the stages' common)
        self.progress = progress
        self.tick = 0
        n = len(self.stages)
        self._gmap = [np.zeros(0, np.int64)] + [np.zeros(1024, np.int64) for _ in range(1, n)]
        self._gn = [0] * n                       # requests handed to each stage so far (its local ids)
        cap = 1024
        self.t0 = np.full(cap, np.nan)           # arrival at the first stage, per request (global id = stage 0's)
        self.done_s = np.full(cap, np.nan)       # end to end, per request
        self.status = np.full(cap, -1, np.int64)
        self.end_stage = np.full(cap, -1, np.int64)
        self.acc = np.full(cap, np.nan)          # combined accuracy (OK requests)
        self._acc_part = np.full(cap, 1.0 if self.spec.accuracy == "product" else 0.0)
        self.ia = np.zeros(N_ACC)
        self.ga = np.zeros(N_ACC)
        self.ih = np.zeros(H_BINS, np.int64)
        self.gh = np.zeros(H_BINS, np.int64)
        self._iacc = [0.0, 0]                    # accuracy sum and count of the interval's completions
        self._gacc = [0.0, 0]
        self.timeline: list[dict[str, Any]] = []
        self._wall = math.nan

    # ---------------------------------------------------------------- per-request bookkeeping
    def _grow(self, n: int) -> None:
        cap = len(self.done_s)
        if n <= cap:
            return
        new = max(n, 2 * cap)
        for name, fill in (("t0", np.nan), ("done_s", np.nan), ("status", -1), ("end_stage", -1), ("acc", np.nan),
                           ("_acc_part", 1.0 if self.spec.accuracy == "product" else 0.0)):
            a = getattr(self, name)
            b = np.full(new, fill, dtype=a.dtype)
            b[:cap] = a
            setattr(self, name, b)

    def _hand_to(self, k: int, g: np.ndarray, t: np.ndarray) -> None:
        """Requests ``g`` reach stage ``k`` at instants ``t``: in instant order (ties: request id), which
        becomes their local id order there."""
        order = np.lexsort((g, t))
        g, t = g[order], t[order]
        n0 = self._gn[k]
        if n0 + len(g) > len(self._gmap[k]):
            m = np.zeros(max(n0 + len(g), 2 * len(self._gmap[k])), np.int64)
            m[:n0] = self._gmap[k][:n0]
            self._gmap[k] = m
        self._gmap[k][n0:n0 + len(g)] = g
        self._gn[k] = n0 + len(g)
        self.stages[k].feed(t)

    def _served_accuracy(self, k: int, replicas: np.ndarray) -> np.ndarray:
        """Accuracy of the variant each of stage ``k``'s ``replicas`` (the replica that served each request)
        serves with."""
        if len(replicas) == 0:
            return np.zeros(0)
        acc = {v.name: v.accuracy for v in self.spec.stages[k].variants}
        by_config = np.array([acc[v] for v, _ in self.config_keys[k]])
        return by_config[self.stages[k].replica_configs(replicas)]

    def _collect(self, k: int) -> None:
        """Stage ``k``'s requests finished since the last call: hand the successes on, or end them."""
        ids, done, status, replica, arrival = self.stages[k].dp.take_finished()
        if len(ids) == 0:
            return
        g = ids if k == 0 else self._gmap[k][ids]
        self._grow(int(g.max()) + 1)
        if k == 0:
            self.t0[g] = arrival                 # every request finishes stage 0 before any other
        ok = status == OK
        a = self._served_accuracy(k, replica[ok])
        if self.spec.accuracy == "product":
            self._acc_part[g[ok]] *= a
        else:
            self._acc_part[g[ok]] += a
        if k + 1 < len(self.stages):
            self._hand_to(k + 1, g[ok], done[ok])
            fail = ~ok
            self._end(g[fail], done[fail], status[fail], k)
        else:
            self._end(g, done, status, k)

    def _end(self, g: np.ndarray, done: np.ndarray, status: np.ndarray, k: int) -> None:
        if len(g) == 0:
            return
        t0 = self.t0[g]
        lat = done - t0
        ok = status == OK
        self.done_s[g], self.status[g], self.end_stage[g] = done, status, k
        acc = self._acc_part[g[ok]] / (1.0 if self.spec.accuracy == "product" else len(self.stages))
        self.acc[g[ok]] = acc
        slo = self.sc.slo_ms * 1e-3
        counted = t0 >= self.sc.warmup_s
        bins = hist_bins(lat[ok] * 1e3)
        for acc_arr, hist, mask, accs in ((self.ia, self.ih, np.ones(len(g), bool), self._iacc),
                                          (self.ga, self.gh, counted, self._gacc)):
            m_ok, m_fail = ok & mask, ~ok & mask
            acc_arr[A_OK] += m_ok.sum()
            acc_arr[A_FAIL] += m_fail.sum()
            acc_arr[A_SLO_VIOL] += m_fail.sum() + (lat[m_ok] > slo).sum()
            acc_arr[A_LAT_S] += lat[m_ok].sum()
            acc_arr[A_LAT2_S] += (lat[m_ok] ** 2).sum()
            acc_arr[A_REJECTED] += (m_fail & (status == REJECTED)).sum()
            acc_arr[A_TIMEOUT] += (m_fail & (status == TIMEOUT)).sum()
            acc_arr[A_DROPPED] += (m_fail & (status == DROPPED)).sum()
            np.add.at(hist, bins[mask[ok]], 1)
            accs[0] += float(acc[mask[ok]].sum())
            accs[1] += int(mask[ok].sum())

    # ---------------------------------------------------------------- running
    def _run_until(self, t: float) -> None:
        for k, st in enumerate(self.stages):
            st.run_until(t)
            self._collect(k)

    def start(self) -> PipelineObservation | None:
        self._t_wall = time.perf_counter()
        for st in self.stages:
            st.begin()
        return self._next_obs()

    def _next_obs(self) -> PipelineObservation | None:
        t_next = (self.tick + 1) * self.interval
        if t_next > self.sc.duration_s + 1e-9:
            self._run_until(self.sc.duration_s)
            for k, st in enumerate(self.stages):
                st.finish()
                self._collect(k)
            self._wall = time.perf_counter() - self._t_wall
            return None
        self._run_until(t_next)
        self.tick += 1
        if self.progress:
            self.progress(t_next)
        return self.observe(t_next)

    def step(self, decisions: Sequence[Any]) -> PipelineObservation | None:
        """Apply one answer per stage now, run to the next tick. An answer is a
        :class:`~simulator.pipeline_policy.StageDecision` or a bare replica count; its replicas go through
        :meth:`Simulation.apply` (the single-model rule for a bad number)."""
        if len(decisions) != len(self.stages):
            raise ValueError(f"one decision per stage: {len(self.stages)} expected (got {len(decisions)})")
        rows = self.timeline[-len(self.stages) - 1:]
        for k, (st, d, row) in enumerate(zip(self.stages, decisions, rows)):
            if isinstance(d, StageDecision) and (d.variant is not None or d.max_batch_size is not None):
                idx = self.config_index(k, d.variant, d.max_batch_size)
                if idx is None:
                    self.held_configs[k] += 1
                    row["held_config"] = 1
                else:
                    st.reconfigure(idx)                  # first: the count below is then the new config's
                    row["variant"], row["max_batch_size"] = self.config_keys[k][idx]
            held = st.held_decisions
            row["desired"] = st.apply(d.replicas if isinstance(d, StageDecision) else d)
            row["held"] = st.held_decisions - held
        rows[-1]["desired"] = sum(r["desired"] for r in rows[:-1])
        return self._next_obs()

    def config_index(self, k: int, variant: str | None, max_batch_size: int | None) -> int | None:
        """Stage ``k``'s serving configuration for (``variant``, ``max_batch_size``), None meaning the current
        one's; None when the stage has no such configuration (an unknown variant, a batch size it cannot take)."""
        cur_v, cur_b = self.config_keys[k][self.stages[k].config]
        key = (cur_v if variant is None else variant, cur_b if max_batch_size is None else max_batch_size)
        try:
            return self.config_keys[k].index(key)
        except ValueError:
            return None

    def current(self, k: int) -> tuple[str, int]:
        """Stage ``k``'s current (variant, max batch size): what its replicas are asked for."""
        return self.config_keys[k][self.stages[k].config]

    def observe(self, t: float) -> PipelineObservation:
        obs = tuple(st.observe(t) for st in self.stages)
        iv = self.interval
        ia, ih = self.ia, self.ih
        p50, p95, p99 = hist_quantiles(ih, (0.5, 0.95, 0.99))
        done = ia[A_OK] + ia[A_FAIL]
        e2e = e2e_observation(obs, time_s=t, interval_s=iv, completion_rps=ia[A_OK] / iv, p50_ms=p50, p95_ms=p95,
                              p99_ms=p99, slo_violation_frac=safe_div(ia[A_SLO_VIOL], done), failures=int(ia[A_FAIL]),
                              slo_ms=self.sc.slo_ms)
        accuracy = safe_div(self._iacc[0], self._iacc[1])
        self.ia[:] = 0.0
        self.ih[:] = 0
        self._iacc = [0.0, 0]
        for k, st in enumerate(self.stages):
            row = dict(st.timeline[-1])
            row["stage"] = self.spec.stages[k].name
            row["variant"], row["max_batch_size"] = self.current(k)
            row["held_config"] = 0
            self.timeline.append(row)
        row = e2e.to_dict()
        row.update(stage="e2e", variant="", accuracy=accuracy, desired=e2e.replicas, held=0,
                   replica_seconds=sum(st.replica_seconds(0.0, t) for st in self.stages))
        self.timeline.append(row)
        cur = [self.current(k) for k in range(len(self.stages))]
        return PipelineObservation(time_s=t, interval_s=iv, stages=obs, e2e=e2e, variants=tuple(v for v, _ in cur),
                                   batch_sizes=tuple(b for _, b in cur), accuracy=accuracy)

    # ---------------------------------------------------------------- results
    def result(self) -> "PipelineResult":
        sc = self.sc
        window = sc.duration_s - sc.warmup_s
        n = self.stages[0].dp.n_requests
        t0 = self.stages[0].dp.records()["arrival_s"][:n].copy()
        ga = self.ga
        m = (t0 >= sc.warmup_s) & (self.status[:n] == OK)
        lat_ms = (self.done_s[:n][m] - t0[m]) * 1e3
        p50, p95, p99 = exact_quantiles(lat_ms, (0.5, 0.95, 0.99))
        counted = t0 >= sc.warmup_s
        stage_res = [st.result() for st in self.stages]
        stages = {}
        for k, (spec, r) in enumerate(zip(self.spec.stages, stage_res)):
            s = r.summary
            by_variant: dict[str, float] = {}
            for (v, _), name in zip(self.config_keys[k], [c.name for c in self.stages[k].configs]):
                by_variant[v] = by_variant.get(v, 0.0) + s["variant_seconds"].get(name, 0.0)
            stages[spec.name] = {
                "variant": spec.variant, "final_variant": self.current(k)[0],
                "final_max_batch_size": self.current(k)[1], "reconfigurations": s["reconfigurations"],
                "held_configs": self.held_configs[k], "variant_seconds": by_variant,
                "requests": s["requests"], "completed": s["completed"],
                "failed": s["failed"], "latency_ms": s["latency_ms"], "queue_ms": s["queue_ms"],
                "compute_ms": s["compute_ms"], "mean_batch_size": s["mean_batch_size"],
                "replica_seconds": s["replica_seconds"], "mean_replicas": s["mean_replicas"],
                "scaling_actions": s["scaling_actions"], "held_decisions": s["held_decisions"],
                "failed_here": int(((self.end_stage[:n] == k) & (self.status[:n] != OK) & counted).sum())}
        n_req = int(counted.sum())
        rs = sum(v["replica_seconds"] for v in stages.values())
        summary = {
            "pipeline": [s.name for s in self.spec.stages],
            "requests": n_req, "completed": int(ga[A_OK]), "failed": int(ga[A_FAIL]),
            "rejected": int(ga[A_REJECTED]), "timed_out": int(ga[A_TIMEOUT]), "dropped": int(ga[A_DROPPED]),
            "success_rate": safe_div(ga[A_OK], n_req), "throughput_rps": ga[A_OK] / window,
            "latency_ms": {"mean": safe_div(ga[A_LAT_S], ga[A_OK]) * 1e3, "p50": p50, "p95": p95, "p99": p99,
                           "percentiles_from": "exact"},
            "slo_ms": sc.slo_ms, "slo_violation_rate": safe_div(ga[A_SLO_VIOL], n_req),
            "accuracy": {"mean": safe_div(self._gacc[0], self._gacc[1]), "rule": self.spec.accuracy},
            "replica_seconds": rs, "mean_replicas": rs / window, "stages": stages,
            "seed": sc.seed, "stage_seeds": [s.seed for s in self.stage_scenarios], "engine": self.engine,
            "wall_s": self._wall,
            "sim_stage_visits_per_wall_s": safe_div(sum(st.dp.n_requests for st in self.stages), self._wall),
            "scenario": sc.to_dict(),
        }
        return PipelineResult(scenario=sc, summary=summary, timeline=self.timeline,
                              requests=self._request_records(n, t0), visits=self._visit_records(stage_res),
                              stage_results=stage_res, latency_histogram=self.gh.copy())

    def _request_records(self, n: int, t0: np.ndarray) -> dict[str, np.ndarray]:
        return {"arrival_s": t0, "completion_s": self.done_s[:n].copy(), "status": self.status[:n].copy(),
                "end_stage": self.end_stage[:n].copy(), "accuracy": self.acc[:n].copy()}

    def _visit_records(self, stage_res) -> dict[str, np.ndarray]:
        parts = []
        for k, r in enumerate(stage_res):
            rec = r.records
            m = len(rec["arrival_s"])
            g = np.arange(m) if k == 0 else self._gmap[k][:m]
            parts.append({"stage": np.full(m, k, np.int64), "request": g, **{c: rec[c] for c in rec}})
        return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


@dataclass
class PipelineResult:
    """What one pipeline run produced: the end-to-end ``summary`` (with per-stage figures under ``stages``),
    the ``timeline`` (one row per stage and an ``e2e`` row per tick), per-request end-to-end ``requests``
    records, per-stage-visit ``visits`` records (the stage's local records + the request's id), and each
    stage's own :class:`~simulator.engine.Result`."""

    scenario: Scenario
    summary: dict[str, Any]
    timeline: list[dict[str, Any]]
    requests: dict[str, np.ndarray]
    visits: dict[str, np.ndarray]
    stage_results: list
    latency_histogram: np.ndarray | None = None     # end-to-end latencies of the counted successes (metrics bins)

    def write(self, folder: str, summary_extra: dict | None = None) -> list[str]:
        """``summary.json`` (with ``summary_extra``), ``timeline.csv``, ``requests.parquet`` (end to end) and
        ``stages.parquet`` (one row per stage visit) into ``folder``; returns the file names."""
        import json
        import os

        import pandas as pd

        from simulator.io import jsonable
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(jsonable({**self.summary, **(summary_extra or {})}), f, indent=2)
        pd.DataFrame(self.timeline).assign(seed=self.scenario.seed).to_csv(os.path.join(folder, "timeline.csv"),
                                                                           index=False)
        names = self.scenario.pipeline.stages
        req = pd.DataFrame(self.requests)
        req["status"] = pd.Categorical.from_codes(np.clip(req["status"], 0, 3), categories=list(STATUS_NAMES))
        req["end_stage"] = [names[k].name if k >= 0 else "" for k in req.pop("end_stage")]
        req.to_parquet(os.path.join(folder, "requests.parquet"), index=False)
        vis = pd.DataFrame(self.visits)
        vis["status"] = pd.Categorical.from_codes(np.clip(vis["status"], 0, 3), categories=list(STATUS_NAMES))
        vis["stage"] = pd.Categorical.from_codes(vis["stage"], categories=[s.name for s in names])
        vis.to_parquet(os.path.join(folder, "stages.parquet"), index=False)
        return ["summary.json", "timeline.csv", "requests.parquet", "stages.parquet"]


def simulate_pipeline(sc: Scenario, engine: str = "fast", progress: Callable[[float], None] | None = None,
                      memory_budget: str | int | float | None = None, policy=None) -> PipelineResult:
    """Run a pipeline scenario to the end under its policy (:func:`simulator.pipeline_policy.make_pipeline_policy`:
    the top-level joint ``autoscaler:``, else each stage's own on its own observation), or ``policy``."""
    pol = policy if policy is not None else make_pipeline_policy(sc)
    pol.reset()
    sim = PipelineSimulation(sc, engine=engine, progress=progress, memory_budget=memory_budget)
    obs = sim.start()
    while obs is not None:
        obs = sim.step(pol.decide(obs))
    res = sim.result()
    res.summary["policy"] = pol.kind
    return res


__all__ = ["PipelineObservation", "e2e_observation", "PipelineResult", "PipelineSimulation", "simulate_pipeline", "stage_scenario",
           "stage_seed"]
