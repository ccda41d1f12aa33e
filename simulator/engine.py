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

Serving configurations (:mod:`simulator.variants`): every replica serves with one configuration (a
model variant's service times and a max batch size; the rest of the batcher, the hop and the cluster are
the deployment's). A run made without ``configs`` has exactly one, the scenario's own. ``reconfigure``
switches the deployment to another one by a rolling update (maxSurge 100 %, maxUnavailable 0; see
:mod:`simulator.variants`); a replica count asked for during a roll is the new configuration's, and cost
counts every replica, old and new.

The run stops offering load at ``duration_s`` (no new arrivals, closed-loop
users stop), then lets the requests in flight finish; all summary figures are
over requests that *arrived* in ``[warmup_s, duration_s)``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

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
from simulator.variants import (ServingConfig, check_config_index, check_configs, default_config,
                                rolling_update_drains, serving_models)
from simulator.workload import ArrivalSource

ENGINES = ("fast", "reference")


@dataclass
class Replica:
    uid: int
    requested_s: float
    ready_s: float = math.nan
    drain_s: float = math.nan
    gone_s: float = math.nan
    config: int = 0            # index of the serving configuration it serves with (simulator.variants)

    @property
    def alive(self) -> bool:
        return math.isnan(self.gone_s)

    def cost_seconds(self, a: float, b: float) -> float:
        """Its replica-seconds within ``[a, b]``: from its request until it is gone (or ``b``)."""
        end = self.gone_s if not math.isnan(self.gone_s) else b
        return max(0.0, min(end, b) - max(self.requested_s, a))


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
    ``cluster.startup_s``, or the replica's serving configuration's own start-up delay).
    Replaying a measured run uses it to make each replica ready exactly when the real
    one was (:mod:`calibration.replay`).

    ``configs`` (:class:`~simulator.variants.ServingConfig`, names unique, ``max_batch_size >= 1``)
    are the serving configurations replicas may serve with, ``config`` the index of the one the
    run starts with. ``None``: one configuration built from the scenario (``service``,
    ``batching.max_batch_size``, ``cluster.startup_s``; ``model``, if given, is its prebuilt
    service model), which runs exactly as a scenario always has. The batcher's other settings
    and the per-request overhead are the deployment's, shared by all configurations; a preferred
    batch size above a configuration's ``max_batch_size`` is ignored for its replicas.
    :meth:`reconfigure` switches configuration by a rolling update. With ``configs`` given, the
    summary also has ``reconfigurations`` and ``variant_seconds`` (replica-seconds per configuration
    name over the measured window), and every timeline row ``config`` (the index of the
    configuration replicas are asked for) and ``rolling`` (1 while a roll is in progress).
    """

    def __init__(self, sc: Scenario, engine: str = "fast", model: ServiceModel | None = None,
                 progress: Callable[[float], None] | None = None,
                 startup_delay: StartupDelay | None = None, memory_budget: str | int | float | None = None,
                 fed: bool = False, configs: Sequence[ServingConfig] | None = None, config: int = 0):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)} (got {engine!r})")
        self.sc = sc
        self.engine = engine
        self.configs_given = configs is not None
        if configs is None:
            self.configs = (default_config(sc),)
            self.model = model or build_service_model(sc.service, sc.batching.max_batch_size)
            self.models = [self.model]
        else:
            if model is not None:
                raise ValueError("give either model (the prebuilt service model of the scenario's one "
                                 "configuration) or configs, not both")
            self.configs = check_configs(configs)
            self.models = serving_models(sc, self.configs)
            self.model = self.models[0]
        self.config = check_config_index(config, self.configs)   # the configuration replicas are asked for
        # refused here (ConfigError), before anything is allocated, if it would not fit the budget
        self.memory = check_memory(sc, engine, memory_budget, self.models if self.configs_given else self.model)
        self.env = simpy.Environment()
        think = dist_table(sc.workload.think) if sc.workload.kind == "closed_loop" else np.zeros(2)
        if fed and sc.workload.kind == "closed_loop":
            raise ValueError("a fed deployment takes open-loop arrivals from feed(); its workload is closed_loop")
        self.fed = fed
        arrivals = None if sc.workload.kind == "closed_loop" or fed else \
            ArrivalSource(sc.workload, sc.duration_s, sc.seed)
        if engine == "fast":
            from simulator.fastplane import FastPlane
            self.dp = FastPlane(sc, self.models, think, arrivals, memory=self.memory)
        else:
            from simulator.refplane import RefPlane
            self.dp = RefPlane(sc, self.models, think, arrivals, self.env, memory=self.memory)
        self.startup_table = dist_table(sc.cluster.startup)
        self.startup_tables = [self.startup_table if c.startup is None else dist_table(c.startup)
                               for c in self.configs]
        self.startup_delay = startup_delay
        self.replicas: dict[int, Replica] = {}
        self.next_uid = 0
        self.interval = sc.autoscaler.interval_s
        self.tick = 0
        self.timeline: list[dict[str, Any]] = []
        self.progress = progress
        self._t0 = 0.0
        self._last_desired = sc.cluster.replicas
        self.desired = sc.cluster.replicas  # replicas asked for (of the current configuration)
        self.held_decisions = 0         # policy answers that were not numbers (the last decision was held)
        self.reconfigurations = 0       # reconfigure() calls that changed the configuration
        self._started = False

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
        r = Replica(uid=uid, requested_s=t, config=self.config)
        self.replicas[uid] = r
        self.dp.add_replica(uid, self.config)
        if ready_now:
            r.ready_s = t
            self.dp.set_ready(uid, t)
        else:
            delay = self.startup_delay(uid, t) if self.startup_delay is not None else None
            if delay is None:
                delay = self.drawn_startup_delay(uid)
            if not math.isinf(delay):
                self.env.process(self._startup(r, delay))

    def drawn_startup_delay(self, uid: int, config: int | None = None) -> float:
        """Start-up delay (s) of replica ``uid`` drawn from the start-up delay of its serving configuration
        (``config``; default: the replica's, else the current one), which is the scenario's
        ``cluster.startup_s`` unless the configuration has its own."""
        if config is None:
            r = self.replicas.get(uid)
            config = r.config if r is not None else self.config
        return float(draw(self.startup_tables[config], uniform(self.sc.seed, STARTUP, uid, 0)))

    def _startup(self, r: Replica, delay: float):
        yield self.env.timeout(delay)
        if r.alive and math.isnan(r.drain_s) and self.env.now <= self.sc.duration_s:
            r.ready_s = self.env.now
            self.dp.set_ready(r.uid, self.env.now)
            self._drain_old(self.env.now)

    def _remove(self, r: Replica, t: float) -> None:
        r.drain_s = t
        if self.dp.drain(r.uid, t):
            r.gone_s = t

    @staticmethod
    def _scale_down_order(starting: list[Replica], ready: list[Replica]) -> list[Replica]:
        """Replicas in the order a scale-down removes them: starting ones first (newest first), then ready
        ones (most recently ready first), as a ReplicaSet deletes pods (not-ready before ready, newer first)."""
        return sorted(starting, key=lambda r: -r.requested_s) + sorted(ready, key=lambda r: (-r.ready_s, -r.uid))

    def _split(self, state: str) -> tuple[list[Replica], list[Replica]]:
        """Live, not draining replicas in ``state``: (of the current configuration, of any other)."""
        new, old = [], []
        for r in self._live(state):
            (new if r.config == self.config else old).append(r)
        return new, old

    def _drain_old(self, t: float) -> None:
        """Drain old-configuration ready replicas as far as the rolling update allows
        (:func:`simulator.variants.rolling_update_drains`)."""
        new_ready, old_ready = self._split("ready")
        k = rolling_update_drains(len(old_ready), len(new_ready), self.desired)
        for r in self._scale_down_order([], old_ready)[:k]:
            self._remove(r, t)

    def scale_to(self, n: int, t: float) -> None:
        """Ask for ``n`` replicas of the current configuration at ``t`` (now): add starting ones, or remove
        (:meth:`_scale_down_order`). During a roll, old-configuration ready replicas drain first as far as
        :func:`~simulator.variants.rolling_update_drains` allows with ``n`` desired; old ones still starting
        are removed."""
        self.desired = n
        new_starting, old_starting = self._split("starting")
        for r in old_starting:
            self._remove(r, t)
        self._drain_old(t)
        new_ready, _ = self._split("ready")
        cur = len(new_starting) + len(new_ready)
        if n > cur:
            for _ in range(n - cur):
                self._add(t, ready_now=False)
        elif n < cur:
            for r in self._scale_down_order(new_starting, new_ready)[:cur - n]:
                self._remove(r, t)

    def reconfigure(self, config: int, t: float | None = None) -> None:
        """Switch the deployment to serving configuration ``config`` at ``t`` (default: now; a later ``t`` is
        scheduled) by a rolling update (:mod:`simulator.variants`): the desired count of ``config`` replicas is
        asked for at once (each with ``config``'s start-up delay), replicas of other configurations still
        starting are removed, and the others' ready replicas drain as new ones become ready. Every replica not
        of the newest configuration is old, so reconfiguring mid-roll (to a third one, or back) is the same
        rule with the newest target. To the current configuration: nothing happens (not counted). To change
        both the configuration and the replica count at one tick, reconfigure first, then :meth:`step` /
        :meth:`apply` the count (the other order first asks for replicas of the old configuration, which the
        reconfiguration then cancels)."""
        config = check_config_index(config, self.configs)
        now = self.env.now
        if (t is None or t == now) and not self._started:
            raise RuntimeError("reconfigure() now needs a started run (start() first); to start with another "
                               "configuration pass config= to Simulation")
        if t is None or t == now:
            self._reconfigure(config, now)
        elif t < now:
            raise ValueError(f"reconfigure: t must be now ({now}) or later (got {t})")
        else:
            def later():
                yield self.env.timeout(t - now)
                self._reconfigure(config, self.env.now)
            self.env.process(later())

    def _reconfigure(self, config: int, t: float) -> None:
        if config == self.config:
            return
        self.config = config
        self.reconfigurations += 1
        self.scale_to(self.desired, t)
        if self.timeline and self.timeline[-1]["time_s"] == t and "config" in self.timeline[-1]:
            self.timeline[-1]["config"] = config          # like "desired": what this tick's decision asks for
            self.timeline[-1]["rolling"] = int(self.rolling)

    @property
    def rolling(self) -> bool:
        """Whether a rolling update is in progress: a replica of another configuration still serves (ready)."""
        return any(r.config != self.config for r in self._live("ready"))

    def config_seconds(self, a: float, b: float) -> dict[str, float]:
        """Replica-seconds within ``[a, b]`` per serving configuration name (cost: from request until gone)."""
        out = {c.name: 0.0 for c in self.configs}
        for r in self.replicas.values():
            out[self.configs[r.config].name] += r.cost_seconds(a, b)
        return out

    def replica_configs(self, uids: np.ndarray) -> np.ndarray:
        """The serving-configuration index of each replica id in ``uids`` (a request's ``replica`` record);
        -1 for -1 (a request no replica took)."""
        table = np.array([self.replicas[u].config for u in range(self.next_uid)] + [-1], dtype=np.int64)
        return table[np.asarray(uids, dtype=np.int64)]

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
        self._started = True
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
        new_ready, old_ready = self._split("ready")
        new_starting, old_starting = self._split("starting")
        ready, pending = len(new_ready) + len(old_ready), len(new_starting) + len(old_starting)
        # requested: the current configuration's replicas (a Deployment's spec.replicas, what an HPA reads as
        # current); during a roll the old ready ones still serve and count as ready. Without a roll: ready + pending.
        requested = len(new_ready) + len(new_starting)
        obs = Observation(
            time_s=t, interval_s=iv, arrival_rps=ia[A_ARRIVALS] / iv, completion_rps=ia[A_OK] / iv,
            latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
            slo_violation_frac=safe_div(ia[A_SLO_VIOL], done),
            queue_ms=safe_div(ia[A_QUEUE_S], ia[A_OK]) * 1e3,
            batch_size=safe_div(ia[A_INFER], ia[A_EXEC]),
            busy_fraction=min(1.0, safe_div(ia[A_BUSY_S], cap)) if cap > 0 else float("nan"),
            inflight=float(self.dp.inflight()), replicas=requested, replicas_ready=ready,
            replicas_pending=pending, failures=int(ia[A_FAIL]), slo_ms=self.sc.slo_ms,
            min_replicas=self.sc.cluster.min_replicas, max_replicas=self.sc.cluster.max_replicas)
        row = obs.to_dict()
        row["desired"] = requested
        row["held"] = 0
        row["replica_seconds"] = self.replica_seconds(0.0, t)
        if self.configs_given:
            row["config"] = self.config
            row["rolling"] = int(self.rolling)
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
            tot += r.cost_seconds(a, b)
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
            **({"reconfigurations": self.reconfigurations,
                "variant_seconds": self.config_seconds(sc.warmup_s, sc.duration_s)} if self.configs_given else {}),
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
