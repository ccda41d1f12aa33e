"""The control plane and the library entry point ``simulate(scenario) -> Result``.

SimPy runs the control plane: replica start-ups (a start-up delay drawn per
replica), scale-down drains, and the autoscaler's control ticks every
``autoscaler.interval_s``. Before SimPy processes each control event, the data
plane is advanced to that instant: the fast engine (:mod:`simulator.fastplane`)
in compiled code, or the per-request SimPy reference engine
(:mod:`simulator.refplane`), whose own events live in the same SimPy
environment.

Replica lifecycle and cost: ``cluster.replicas`` start ready at t=0. A scale-up
requests a replica (cost starts), which becomes ready after its start-up delay.
A scale-down removes starting replicas first (newest first), then ready ones
(most recently ready first) — the order a Kubernetes ReplicaSet deletes pods in
(not-ready before ready, newer before older). A removed ready replica drains: it
gets no new requests, finishes what it holds, then is gone. Cost is
replica-seconds from request until gone, clipped to the measured window
``[warmup_s, duration_s]``.

The run stops offering load at ``duration_s`` (no new arrivals, closed-loop
users stop), then lets the requests in flight finish; all summary figures are
over requests that *arrived* in ``[warmup_s, duration_s)``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import simpy

from simulator.batching import STATUS_NAMES
from simulator.config import Dist, Scenario
from simulator.memory import check_memory
from simulator.metrics import (A_ARRIVALS, A_BUSY_S, A_COMPUTE_S, A_DROPPED, A_EXEC, A_FAIL, A_INFER,
                               A_LAT_S, A_OK, A_QUEUE_S, A_REJECTED, A_SLO_VIOL, A_TIMEOUT,
                               exact_quantiles, hist_quantiles, safe_div)
from simulator.policy import Observation, Policy, make_policy, replicas_to_ask
from simulator.rng import STARTUP, uniform
from simulator.service import GRID_U, ServiceModel, build_service_model, draw, quantile_function
from simulator.workload import ArrivalSource

ENGINES = ("fast", "reference")


@dataclass
class Replica:
    uid: int
    requested_s: float
    ready_s: float = math.nan
    drain_s: float = math.nan
    gone_s: float = math.nan

    @property
    def alive(self) -> bool:
        return math.isnan(self.gone_s)


@dataclass
class Result:
    """What one simulated run produced (nothing is written to disk until a ``write_*`` method is called)."""

    scenario: Scenario
    summary: dict[str, Any]
    timeline: list[dict[str, Any]]
    replicas: list[Replica]
    records: dict[str, np.ndarray] | None = None
    wall_s: float = 0.0
    # client latencies of the successes that arrived after warm-up, binned as in simulator.metrics
    latency_histogram: np.ndarray | None = None

    def timeline_frame(self):
        import pandas as pd
        return pd.DataFrame(self.timeline)

    def records_frame(self):
        import pandas as pd
        if self.records is None:
            return None
        df = pd.DataFrame(self.records)
        df["status"] = pd.Categorical.from_codes(np.clip(df["status"].to_numpy(), 0, 3),
                                                 categories=list(STATUS_NAMES))
        return df

    def write_timeline_csv(self, path: str) -> None:
        """One row per control interval (:attr:`timeline`) plus the seed; NaN as an empty cell."""
        import csv
        header = list(dict.fromkeys(k for row in self.timeline for k in row)) + ["seed"]
        seed = self.scenario.seed
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in self.timeline:
                w.writerow(["" if isinstance(v, float) and math.isnan(v) else v
                            for v in (row.get(k, math.nan) for k in header[:-1])] + [seed])

    def records_table(self):
        """Per-request records as a ``pyarrow.Table`` built from the arrays themselves (no copy):
        arrival, dispatch and completion seconds, replica, batch size, and the status as a dictionary
        column of :data:`~simulator.batching.STATUS_NAMES`; the scenario and seed in its metadata."""
        import pyarrow as pa
        from simulator.io import jsonable
        if self.records is None:
            return None

        # columns over the arrays' own buffers: pa.array() would import pandas (~0.6 s) to inspect them
        def column(a):
            a = np.ascontiguousarray(a)
            return pa.Array.from_buffers(pa.from_numpy_dtype(a.dtype), len(a), [None, pa.py_buffer(a)])

        names = [s.encode() for s in STATUS_NAMES]
        offsets = np.cumsum([0] + [len(s) for s in names]).astype(np.int32)
        statuses = pa.Array.from_buffers(pa.string(), len(names), [None, pa.py_buffer(offsets),
                                                                   pa.py_buffer(b"".join(names))])
        r = self.records
        keys = ("arrival_s", "dispatch_s", "completion_s", "replica", "batch_size")
        cols = [column(r[k]) for k in keys]
        cols.append(pa.DictionaryArray.from_arrays(column(np.clip(r["status"], 0, len(names) - 1).astype(np.int8)),
                                                   statuses))
        meta = {b"servesim.scenario": json.dumps(jsonable(self.scenario.to_dict())).encode(),
                b"servesim.seed": str(self.scenario.seed).encode()}
        return pa.Table.from_arrays(cols, names=[*keys, "status"], metadata=meta)

    def write_records_parquet(self, path: str) -> None:
        """:meth:`records_table` as Parquet (snappy; only the status column dictionary-encoded: the
        others are nearly all distinct, and trying to dictionary-encode them triples the writing time)."""
        import pyarrow.parquet as pq
        pq.write_table(self.records_table(), path, use_dictionary=["status"])


def dist_table(d: Dist) -> np.ndarray:
    return quantile_function(d, GRID_U)


StartupDelay = Callable[[int, float], "float | None"]


class Simulation:
    """A run that can be stepped one control interval at a time (used by RL envs).

    ``obs = sim.start()``, then ``obs = sim.step(desired)`` until ``obs is None``;
    ``sim.result()`` afterwards. :func:`simulate` drives it with a :class:`Policy`.

    The run's memory is estimated first and a run over ``memory_budget`` is refused
    (:func:`simulator.memory.check_memory`; ``summary["memory"]`` records the estimate and budget).

    ``startup_delay(uid, t)``, if given, decides the start-up delay of every replica a
    scale-up adds (the ``cluster.replicas`` present at t=0 are ready at once): called
    once per added replica, in the order they are added, with its id and the instant it
    was requested; it returns the seconds until it is ready (``math.inf``: never ready),
    or ``None`` for the scenario's own draw (:meth:`drawn_startup_delay`, from
    ``cluster.startup_s``). Replaying a measured run uses it to make each replica ready
    exactly when the real one was (:mod:`calibration.replay`).
    """

    def __init__(self, sc: Scenario, engine: str = "fast", model: ServiceModel | None = None,
                 progress: Callable[[float], None] | None = None,
                 startup_delay: StartupDelay | None = None, memory_budget: str | int | float | None = None,
                 fed: bool = False):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)} (got {engine!r})")
        self.sc = sc
        self.engine = engine
        self.model = model or build_service_model(sc.service, sc.batching.max_batch_size)
        # refused here (ConfigError), before anything is allocated, if it would not fit the budget
        self.memory = check_memory(sc, engine, memory_budget, self.model)
        self.env = simpy.Environment()
        think = dist_table(sc.workload.think) if sc.workload.kind == "closed_loop" else np.zeros(2)
        if fed and sc.workload.kind == "closed_loop":
            raise ValueError("a fed deployment takes open-loop arrivals from feed(); its workload is closed_loop")
        self.fed = fed
        arrivals = None if sc.workload.kind == "closed_loop" or fed else \
            ArrivalSource(sc.workload, sc.duration_s, sc.seed)
        if engine == "fast":
            from simulator.fastplane import FastPlane
            self.dp = FastPlane(sc, self.model, think, arrivals, memory=self.memory)
        else:
            from simulator.refplane import RefPlane
            self.dp = RefPlane(sc, self.model, think, arrivals, self.env, memory=self.memory)
        self.startup_table = dist_table(sc.cluster.startup)
        self.startup_delay = startup_delay
        self.replicas: dict[int, Replica] = {}
        self.next_uid = 0
        self.interval = sc.autoscaler.interval_s
        self.tick = 0
        self.timeline: list[dict[str, Any]] = []
        self.progress = progress
        self._t0 = 0.0
        self._last_desired = sc.cluster.replicas
        self.held_decisions = 0         # policy answers that were not numbers (the last decision was held)

    # ---- replica management
    def _live(self, state: str) -> list[Replica]:
        out = []
        for r in self.replicas.values():
            if not r.alive or not math.isnan(r.drain_s):
                continue
            ready = not math.isnan(r.ready_s)
            if (state == "ready") == ready:
                out.append(r)
        return out

    def _add(self, t: float, ready_now: bool) -> None:
        uid = self.next_uid
        self.next_uid += 1
        r = Replica(uid=uid, requested_s=t)
        self.replicas[uid] = r
        self.dp.add_replica(uid)
        if ready_now:
            r.ready_s = t
            self.dp.set_ready(uid, t)
        else:
            delay = self.startup_delay(uid, t) if self.startup_delay is not None else None
            if delay is None:
                delay = self.drawn_startup_delay(uid)
            if not math.isinf(delay):
                self.env.process(self._startup(r, delay))

    def drawn_startup_delay(self, uid: int) -> float:
        """Start-up delay (s) of replica ``uid`` drawn from the scenario's ``cluster.startup_s``."""
        return float(draw(self.startup_table, uniform(self.sc.seed, STARTUP, uid, 0)))

    def _startup(self, r: Replica, delay: float):
        yield self.env.timeout(delay)
        if r.alive and math.isnan(r.drain_s) and self.env.now <= self.sc.duration_s:
            r.ready_s = self.env.now
            self.dp.set_ready(r.uid, self.env.now)

    def _remove(self, r: Replica, t: float) -> None:
        r.drain_s = t
        if self.dp.drain(r.uid, t):
            r.gone_s = t

    def scale_to(self, n: int, t: float) -> None:
        starting = sorted(self._live("starting"), key=lambda r: -r.requested_s)
        ready = sorted(self._live("ready"), key=lambda r: (-r.ready_s, -r.uid))
        cur = len(starting) + len(ready)
        if n > cur:
            for _ in range(n - cur):
                self._add(t, ready_now=False)
        elif n < cur:
            victims = (starting + ready)[:cur - n]
            for r in victims:
                self._remove(r, t)

    def _collect_gone(self) -> None:
        for uid, t in self.dp.pop_gone():
            self.replicas[uid].gone_s = t

    # ---- running
    def feed(self, times: np.ndarray) -> None:
        """Arrivals pushed from outside (``fed=True``): sorted instants, none before the last :meth:`run_until`.
        A pipeline's stage k+1 is fed the instants at which stage k's responses reach it."""
        if not self.fed:
            raise RuntimeError("feed() needs a Simulation made with fed=True")
        if len(times):
            self.dp.feed(np.asarray(times, dtype=float))

    def run_until(self, t: float) -> None:
        """Advance the control and data planes to ``t`` (no observation, no decision)."""
        self._run_until(t)

    def _run_until(self, t: float) -> None:
        ev = self.env.timeout(max(0.0, t - self.env.now))  # last tick may overshoot duration_s by an ulp
        while not ev.processed:
            nxt = self.env.peek()
            self.dp.advance(nxt)
            self._collect_gone()
            self.env.step()
        self.dp.advance(t)
        self._collect_gone()

    def start(self) -> Observation | None:
        self.begin()
        return self._next_obs()

    def begin(self) -> None:
        """t = 0: the ``cluster.replicas`` present at the start, ready at once (what :meth:`start` does before
        running to the first tick; a pipeline begins every stage, then runs them tick by tick itself)."""
        self._t0 = time.perf_counter()
        for _ in range(self.sc.cluster.replicas):
            self._add(0.0, ready_now=True)

    def _next_obs(self) -> Observation | None:
        t_next = (self.tick + 1) * self.interval
        if t_next > self.sc.duration_s + 1e-9:
            self._run_until(self.sc.duration_s)
            self.finish()
            return None
        self._run_until(t_next)
        self.tick += 1
        if self.progress:
            self.progress(t_next)
        return self.observe(t_next)

    def step(self, desired: Any) -> Observation | None:
        """Apply the policy's answer for the current tick (:meth:`apply`), run to the next tick."""
        self.apply(desired)
        return self._next_obs()

    def apply(self, desired: Any) -> int:
        """Apply a policy's answer now (:func:`simulator.policy.replicas_to_ask`: clamped; NaN / inf / a
        non-number holds the last decision and is counted); returns the replica count asked for."""
        t = self.env.now
        ans = replicas_to_ask(desired, self._last_desired, self.sc.cluster.min_replicas, self.sc.cluster.max_replicas)
        n = ans.replicas
        self.held_decisions += ans.held
        self._last_desired = n
        if self.timeline:
            self.timeline[-1]["desired"] = n
            self.timeline[-1]["held"] = int(ans.held)
        self.scale_to(n, t)
        return n

    def _ready_seconds(self, a: float, b: float) -> float:
        tot = 0.0
        for r in self.replicas.values():
            if math.isnan(r.ready_s):
                continue
            end = r.drain_s if not math.isnan(r.drain_s) else b
            tot += max(0.0, min(end, b) - max(r.ready_s, a))
        return tot

    def observe(self, t: float) -> Observation:
        ia, ih = self.dp.take_interval(t)
        iv = self.interval
        p50, p95, p99 = hist_quantiles(ih, (0.5, 0.95, 0.99))
        done = ia[A_OK] + ia[A_FAIL]
        cap = self._ready_seconds(t - iv, t) * self.sc.batching.instances
        ready = len(self._live("ready"))
        pending = len(self._live("starting"))
        obs = Observation(
            time_s=t, interval_s=iv, arrival_rps=ia[A_ARRIVALS] / iv, completion_rps=ia[A_OK] / iv,
            latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
            slo_violation_frac=safe_div(ia[A_SLO_VIOL], done),
            queue_ms=safe_div(ia[A_QUEUE_S], ia[A_OK]) * 1e3,
            batch_size=safe_div(ia[A_INFER], ia[A_EXEC]),
            busy_fraction=min(1.0, safe_div(ia[A_BUSY_S], cap)) if cap > 0 else float("nan"),
            inflight=float(self.dp.inflight()), replicas=ready + pending, replicas_ready=ready,
            replicas_pending=pending, failures=int(ia[A_FAIL]), slo_ms=self.sc.slo_ms,
            min_replicas=self.sc.cluster.min_replicas, max_replicas=self.sc.cluster.max_replicas)
        row = obs.to_dict()
        row["desired"] = ready + pending
        row["held"] = 0
        row["replica_seconds"] = self.replica_seconds(0.0, t)
        self.timeline.append(row)
        return obs

    def finish(self) -> None:
        """End of the run: stop the offered load (not a fed deployment's: its upstream may still send), let
        every request in flight finish."""
        if not self.fed:
            self.dp.stop_arrivals()
        self.dp.advance(math.inf)
        self._collect_gone()
        self._wall = time.perf_counter() - self._t0

    def replica_seconds(self, a: float, b: float) -> float:
        """Replica-seconds (cost) in ``[a, b]``: every replica from its request until it is gone."""
        tot = 0.0
        for r in self.replicas.values():
            end = r.gone_s if not math.isnan(r.gone_s) else b
            tot += max(0.0, min(end, b) - max(r.requested_s, a))
        return tot

    def result(self) -> Result:
        sc = self.sc
        ga = self.dp.ga
        window = sc.duration_s - sc.warmup_s
        recs = self.dp.records() if sc.record_requests else None
        if recs is not None:
            a = recs["arrival_s"]
            m = (a >= sc.warmup_s) & (recs["status"] == 0)
            lat_ms = (recs["completion_s"][m] - a[m]) * 1e3
            p50, p95, p99 = exact_quantiles(lat_ms, (0.5, 0.95, 0.99))
            pct_source = "exact"
        else:
            p50, p95, p99 = hist_quantiles(self.dp.gh, (0.5, 0.95, 0.99))
            pct_source = "histogram"
        n_req = ga[A_ARRIVALS]
        summary = {
            "requests": int(n_req), "completed": int(ga[A_OK]), "failed": int(ga[A_FAIL]),
            "rejected": int(ga[A_REJECTED]), "timed_out": int(ga[A_TIMEOUT]), "dropped": int(ga[A_DROPPED]),
            "success_rate": safe_div(ga[A_OK], n_req),
            "throughput_rps": ga[A_OK] / window,
            "latency_ms": {"mean": safe_div(ga[A_LAT_S], ga[A_OK]) * 1e3, "p50": p50, "p95": p95, "p99": p99,
                           "percentiles_from": pct_source},
            "queue_ms": {"mean": safe_div(ga[A_QUEUE_S], ga[A_OK]) * 1e3},
            "compute_ms": {"mean": safe_div(ga[A_COMPUTE_S], ga[A_OK]) * 1e3},
            "mean_batch_size": safe_div(ga[A_INFER], ga[A_EXEC]),
            "slo_ms": sc.slo_ms,
            "slo_violation_rate": safe_div(ga[A_SLO_VIOL], n_req),
            "replica_seconds": self.replica_seconds(sc.warmup_s, sc.duration_s),
            "mean_replicas": self.replica_seconds(sc.warmup_s, sc.duration_s) / window,
            "held_decisions": self.held_decisions,
            "scaling_actions": sum(1 for i in range(1, len(self.timeline))
                                   if self.timeline[i]["desired"] != self.timeline[i - 1]["desired"]),
            "seed": sc.seed, "engine": self.engine,
            "wall_s": getattr(self, "_wall", math.nan),
            "sim_requests_per_wall_s": safe_div(self.dp.n_requests, getattr(self, "_wall", math.nan)),
            "memory": {"estimate_bytes": self.memory.total, "expected_requests": self.memory.requests,
                       "budget_bytes": self.memory.budget, "budget_from": self.memory.budget_source},
            "scenario": sc.to_dict(),
        }
        return Result(scenario=sc, summary=summary, timeline=self.timeline,
                      replicas=sorted(self.replicas.values(), key=lambda r: r.uid), records=recs,
                      wall_s=summary["wall_s"], latency_histogram=self.dp.gh.copy())


def simulate(sc: Scenario, engine: str = "fast", policy: Policy | None = None,
             progress: Callable[[float], None] | None = None, model: ServiceModel | None = None,
             memory_budget: str | int | float | None = None) -> Result:
    """Run one scenario to the end and return its :class:`Result` (no disk I/O).

    ``policy`` overrides the scenario's ``autoscaler`` block (its ``interval_s`` still applies).
    A run whose estimated memory exceeds ``memory_budget`` (bytes or e.g. ``"8G"``; default
    ``$SERVESIM_MEMORY_BUDGET``, else half the machine's memory) is refused with a
    :class:`~simulator.config.ConfigError` before it starts (:mod:`simulator.memory`).
    """
    pol = policy if policy is not None else make_policy(sc.autoscaler)
    pol.reset()
    sim = Simulation(sc, engine=engine, progress=progress, model=model, memory_budget=memory_budget)
    obs = sim.start()
    while obs is not None:
        obs = sim.step(pol.decide(obs))
    return sim.result()
