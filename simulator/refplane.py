"""The reference data plane: one SimPy process per request, written for clarity.

This is the slow, obviously-right model that the fast compiled data plane
(:mod:`simulator.fastplane`) is tested against. It has the same public surface
as :class:`~simulator.fastplane.FastPlane` and lives in the SimPy environment
that :mod:`simulator.engine` steps, so its events interleave with the control
plane's (ticks, start-ups, drains):

- open loop: one arrival-generator process pulls arrival instants from the
  :class:`~simulator.workload.ArrivalSource` a chunk at a time and starts one
  request process per arrival;
- closed loop: one process per user: send, wait for the response (its
  overhead included), think, repeat; user ``u`` starts at ``u / spawn_rate``
  and stops sending at ``duration_s``;
- a request process: arrival -> load-balancer choice -> enqueue on the chosen
  replica (or dropped / rejected) -> wait to be dispatched in a batch (or time
  out) -> wait for the batch to complete -> account;
- per replica, a batcher process applies Triton's dynamic-batcher rules
  (:func:`simulator.batching.batch_decision`) whenever something changes (an
  arrival, a freed instance, a timeout, its delay timer), and every dispatched
  batch runs in its own process on one of the replica's model instances.

Random quantities use the same counter-based keys as the fast plane
(:mod:`simulator.rng`), so both engines give identical per-request results.

Time and ties. Every event is scheduled at an *absolute* instant computed with
the same floating-point expression as the fast plane (batch completion
``start + svc``, delay timer ``oldest arrival + delay`` (returned by ``batch_decision``), queue deadline
``arrival + timeout``), so equal instants compare equal. At equal instants the
order is (SimPy orders events by time, then priority, then creation):

1. control-plane events (SimPy's default priority; the fast plane, too,
   processes a control event before its own events at that instant);
2. batch completions, then queue timeouts, then batcher delay timers, then
   arrivals (closed loop: in user order), as :mod:`simulator.batching`
   specifies;
3. each of those events' own consequences (the request, batcher and batch
   processes it wakes) run at the same instant with SimPy's default and urgent
   priorities, i.e. all of them before the next event of group 2.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import simpy
from simpy.events import Event

from simulator.batching import DROPPED, OK, REJECTED, TIMEOUT, batch_decision, may_seal_ahead
from simulator.contention import contention_factor, new_rate_window, node_rate, note_arrival
from simulator.metrics import (A_ARRIVALS, A_BUSY_S, A_COMPUTE_S, A_DROPPED, A_EXEC, A_FAIL, A_INFER,
                               A_LAT2_S, A_LAT_S, A_OK, A_QUEUE_S, A_REJECTED, A_SLO_VIOL, A_TIMEOUT,
                               H_BINS, N_ACC, hist_bin)
from simulator.rng import LB, OVERHEAD, SERVICE, THINK, uniform
from simulator.service import draw
from simulator.workload import CHUNK_S

# SimPy priorities of the data plane's own events (lower runs first at equal times;
# SimPy's URGENT = 0 and NORMAL = 1 are used by the control plane and by wake-ups).
PRIO_COMPLETION = 2
PRIO_TIMEOUT = 3
PRIO_TIMER = 4
PRIO_ARRIVAL = 10          # closed loop: PRIO_ARRIVAL + user index

STARTING, READY, DRAINING, GONE = "starting", "ready", "draining", "gone"


class _At(Event):
    """An event that fires at absolute time ``t`` with SimPy priority ``priority``.

    ``env.timeout(t - now)`` would fire at ``now + (t - now)``, which can miss
    ``t`` by one ulp; the delay is nudged so that the event lands exactly on ``t``.
    """

    def __init__(self, env: simpy.Environment, t: float, priority: int):
        super().__init__(env)
        self._ok = True
        self._value = None
        now = env.now
        d = t - now
        while now + d < t:
            d = math.nextafter(d, math.inf)
        while now + d > t:
            d = math.nextafter(d, -math.inf)
        env.schedule(self, priority, d)


class Request:
    __slots__ = ("rid", "user", "arrival", "replica", "dispatched", "done", "batch", "status",
                 "overhead", "done_s")

    def __init__(self, rid: int, user: int, arrival: float):
        self.rid = rid
        self.user = user                 # closed-loop user index, -1 for open loop
        self.arrival = arrival
        self.replica = None
        self.dispatched = None           # event: taken into a batch (only needed with queue timeouts)
        self.done = None                 # event: its batch completed
        self.batch = None
        self.status = -1
        self.overhead = 0.0
        self.done_s = math.nan           # when the client has the response (server time + overhead)


class Batch:
    __slots__ = ("requests", "start", "svc", "instance")

    def __init__(self, requests: list, start: float, svc: float, instance: int):
        self.requests = requests
        self.start = start
        self.svc = svc
        self.instance = instance


class Replica:
    """One Triton server: a FIFO queue, a dynamic batcher, ``instances`` model instances."""

    def __init__(self, uid: int, instances: int, env: simpy.Environment, config: int = 0):
        self.uid = uid
        self.config = config                                      # its serving configuration (simulator.variants)
        self.state = STARTING
        self.queue: deque[Request] = deque()
        self.sealed: list[Request] = []                          # a batch sealed ahead, waiting for an instance
        self.running: list[Batch | None] = [None] * instances   # batch on each instance
        self.n_batches = 0                                        # batches dispatched so far
        self.wake = env.event()                                   # pokes the batcher
        self.timer: Event | None = None                           # pending delay timer

    def empty(self) -> bool:
        return not self.queue and not self.sealed and all(b is None for b in self.running)

    def outstanding(self) -> int:
        return (len(self.queue) + len(self.sealed)
                + sum(len(b.requests) for b in self.running if b is not None))


class RefPlane:
    """Per-request SimPy data plane with the public surface of ``FastPlane``."""

    name = "reference"

    def __init__(self, sc, models, think_table, arrivals, env: simpy.Environment, memory=None):
        """``models``: one :class:`~simulator.service.ServiceModel` per serving configuration
        (:mod:`simulator.variants`), all with the deployment's overhead; a replica serves with
        ``models[config]`` (:meth:`add_replica`)."""
        b = sc.batching
        self.sc, self.env = sc, env
        self.arrivals = arrivals
        self.closed = sc.workload.kind == "closed_loop"
        self.seed = sc.seed
        # per serving configuration: max batch size and service table (the preferred sizes are the deployment's:
        # batch_decision skips those above a configuration's max batch size)
        self.max_batch = [m.max_batch for m in models]
        self.preferred = np.array(b.preferred_batch_sizes, dtype=np.int64)
        self.tables = [m.table for m in models]
        self.delay_us = float(b.max_queue_delay_us)
        self.instances = b.instances
        self.max_queue = b.max_queue_size
        self.timeout_s = b.queue_timeout_us * 1e-6
        self.lb = sc.cluster.load_balancer
        self.interference = sc.cluster.interference
        self.cores = float(sc.cluster.node_cores)
        self.rate_cont = sc.cluster.rate_contention
        self.rate_cores = sc.cluster.rate_cores
        self.rate_win = sc.cluster.rate_window_s
        self.rate_window = new_rate_window()       # arrivals per rate_window_s bin (node contention)
        self.warmup = sc.warmup_s
        self.slo_s = sc.slo_ms * 1e-3
        self.stop = sc.duration_s
        self.model = models[0]                     # its overhead (the hop) is every configuration's
        self.think_table = think_table
        self.record = sc.record_requests
        self.memory = memory                       # simulator.memory.MemoryEstimate or None
        self.max_records = memory.max_records(self.name) if memory is not None and self.record else None

        self.replicas: dict[int, Replica] = {}    # live replicas (starting, ready, draining)
        self.ready: list[Replica] = []             # in readiness order
        self.rr = 0                                # round-robin counter
        self.n_busy = 0                            # batches executing on the node (interference)
        self.next_id = 0
        self.n_finished = 0
        self.finished: list[tuple] = []    # (id, completion, status, replica, arrival) since take_finished()
        self.fed_pending = 0                       # arrivals fed (feed()) whose instant has not come yet
        self.gone: list[tuple[int, float]] = []
        self.stopped = False
        self.interval_start = 0.0

        self.ia = np.zeros(N_ACC)
        self.ga = np.zeros(N_ACC)
        self.ih = np.zeros(H_BINS, dtype=np.int64)
        self.gh = np.zeros(H_BINS, dtype=np.int64)
        self.rec: dict[str, list] = {k: [] for k in ("arrival_s", "dispatch_s", "completion_s",
                                                     "replica", "batch_size", "status")}

        if self.closed:
            for u in range(sc.workload.users):
                env.process(self._user(u))
        elif arrivals is not None:                 # else fed: arrivals come through feed()
            env.process(self._open_loop())

    # ------------------------------------------------------------------ workload

    def _open_loop(self):
        t = 0.0
        while t < self.stop and not self.stopped:
            t_end = t + CHUNK_S
            for a in self.arrivals.until(t_end):
                a = float(a)
                yield _At(self.env, a, PRIO_ARRIVAL)
                if self.stopped:
                    return
                self.env.process(self._request(self._new_request(-1)))
            t = t_end

    def feed(self, times) -> None:
        """Open-loop arrivals pushed from outside (a pipeline's upstream stage), sorted, none in the past:
        one arrival event each, created in the order given, so equal instants arrive in that order."""
        for a in times:
            ev = _At(self.env, float(a), PRIO_ARRIVAL)
            ev.callbacks.append(self._fed_arrival)
            self.fed_pending += 1

    def _fed_arrival(self, ev: Event) -> None:
        self.fed_pending -= 1
        self.env.process(self._request(self._new_request(-1)))

    def _user(self, u: int):
        sr = self.sc.workload.spawn_rate
        t = u / sr if sr > 0 else 0.0
        if t >= self.stop:
            return
        yield _At(self.env, t, PRIO_ARRIVAL + u)
        k = 0                                      # requests of this user completed so far
        while not self.stopped:
            req = self._new_request(u)
            yield self.env.process(self._request(req))
            think = float(draw(self.think_table, uniform(self.seed, THINK, u, k)))
            k += 1
            if req.status != OK and think + req.overhead < 1e-3:
                think = 1e-3 - req.overhead        # a failing user with no think time would spin
            nxt = req.done_s + think
            if nxt >= self.stop:
                return
            yield _At(self.env, nxt, PRIO_ARRIVAL + u)

    def _new_request(self, user: int) -> Request:
        t = self.env.now
        req = Request(self.next_id, user, t)
        self.next_id += 1
        if self.rate_cont > 0.0 or self.rate_cores > 0.0:
            note_arrival(self.rate_window, t, self.rate_win)
        self.ia[A_ARRIVALS] += 1
        if t >= self.warmup:
            self.ga[A_ARRIVALS] += 1
        if self.record:
            if self.max_records is not None and self.next_id > self.max_records:
                from simulator.memory import records_overflow
                raise records_overflow(self.memory, self.name, t)
            for k, v in (("arrival_s", t), ("dispatch_s", math.nan), ("completion_s", math.nan),
                         ("replica", -1), ("batch_size", -1), ("status", -1)):
                self.rec[k].append(v)
        return req

    # ------------------------------------------------------------------ one request

    def _route(self, req: Request) -> Replica | None:
        n = len(self.ready)
        if n == 0:
            return None
        if self.lb == "round_robin":
            rep = self.ready[self.rr % n]
            self.rr += 1
        elif self.lb == "random":
            rep = self.ready[int(uniform(self.seed, LB, req.rid, 0) * n)]
        else:   # least outstanding: first replica (in readiness order) with the fewest
            rep = min(self.ready, key=Replica.outstanding)
        return rep

    def _request(self, req: Request):
        now = self.env.now
        rep = self._route(req)
        if rep is None:
            self._finish(req, now, DROPPED, now, 0, -1, 0.0, 0.0)
            return
        if self.max_queue > 0 and len(rep.queue) >= self.max_queue:
            self._finish(req, now, REJECTED, now, 0, rep.uid, 0.0, 0.0)
            return
        req.replica = rep
        req.done = self.env.event()
        rep.queue.append(req)
        if self.timeout_s > 0:
            req.dispatched = self.env.event()
        self._poke(rep)
        if self.timeout_s > 0:
            deadline = _At(self.env, req.arrival + self.timeout_s, PRIO_TIMEOUT)
            yield req.dispatched | deadline
            if not req.dispatched.triggered:
                # still pending at its deadline: it is the oldest pending request (FIFO)
                assert rep.queue[0] is req
                rep.queue.popleft()
                t = self.env.now
                self._finish(req, t, TIMEOUT, t, 0, rep.uid, 0.0, 0.0)
                self._poke(rep)
                self._check_gone(rep, t)
                return
        t = yield req.done
        b = req.batch
        self._finish(req, t, OK, b.start, len(b.requests), rep.uid, b.start - req.arrival, b.svc)

    def _overhead_s(self, rid: int) -> float:
        if self.model.overhead_zero:
            return 0.0
        return float(draw(self.model.overhead, uniform(self.seed, OVERHEAD, rid, 0))) * 1e-3

    def _finish(self, req: Request, t_server: float, status: int, disp_t: float, bsize: int,
                uid: int, queue_s: float, compute_s: float) -> None:
        """Account one finished request (same accumulators as the fast plane)."""
        ov = self._overhead_s(req.rid)
        done = t_server + ov
        lat = done - req.arrival
        counted = req.arrival >= self.warmup
        ia, ga = self.ia, self.ga
        if status == OK:
            ia[A_OK] += 1.0
            ia[A_QUEUE_S] += queue_s
            ia[A_COMPUTE_S] += compute_s
            ia[A_LAT_S] += lat
            hb = hist_bin(lat * 1e3)
            self.ih[hb] += 1
            if lat > self.slo_s:
                ia[A_SLO_VIOL] += 1.0
            if counted:
                ga[A_OK] += 1.0
                ga[A_QUEUE_S] += queue_s
                ga[A_COMPUTE_S] += compute_s
                ga[A_LAT_S] += lat
                ga[A_LAT2_S] += lat * lat
                self.gh[hb] += 1
                if lat > self.slo_s:
                    ga[A_SLO_VIOL] += 1.0
        else:
            k = {REJECTED: A_REJECTED, TIMEOUT: A_TIMEOUT, DROPPED: A_DROPPED}[status]
            for acc, take in ((ia, True), (ga, counted)):
                if take:
                    acc[A_FAIL] += 1.0
                    acc[A_SLO_VIOL] += 1.0
                    acc[k] += 1.0
        req.status, req.overhead, req.done_s = status, ov, done
        self.n_finished += 1
        self.finished.append((req.rid, done, status, uid, req.arrival))
        if self.record:
            r, i = self.rec, req.rid
            r["dispatch_s"][i] = disp_t
            r["completion_s"][i] = done
            r["replica"][i] = uid
            r["batch_size"][i] = bsize
            r["status"][i] = status

    # ------------------------------------------------------------------ one replica

    def _poke(self, rep: Replica) -> None:
        if not rep.wake.triggered:
            rep.wake.succeed()

    def _batcher(self, rep: Replica):
        """Re-run the dynamic batcher every time the replica's state changes."""
        while True:
            yield rep.wake
            rep.wake = self.env.event()
            self._run_batcher(rep)

    def _run_batcher(self, rep: Replica) -> None:
        t = self.env.now
        rep.timer = None
        started_sealed = False
        while True:
            free = next((i for i, b in enumerate(rep.running) if b is None), None)
            if free is None:
                # every instance busy: with a delay, seal one batch ahead (simulator.batching rule 2), but not
                # at the instant a sealed batch started (the next arrival or delay timer does)
                if not started_sealed and rep.queue and may_seal_ahead(self.delay_us, len(rep.sealed)):
                    n, deadline = batch_decision(len(rep.queue), rep.queue[0].arrival, t,
                                                 self.max_batch[rep.config], self.preferred, self.delay_us)
                    if n == 0:
                        self._set_timer(rep, deadline)
                    else:
                        rep.sealed = self._take(rep, int(n))
                return
            if rep.sealed:
                reqs, rep.sealed = rep.sealed, []
                self._start(rep, free, reqs, t)
                started_sealed = True
                continue
            if not rep.queue:
                return
            n, deadline = batch_decision(len(rep.queue), rep.queue[0].arrival, t,
                                         self.max_batch[rep.config], self.preferred, self.delay_us)
            if n == 0:
                self._set_timer(rep, deadline)
                return
            self._dispatch(rep, free, int(n), t)

    def _set_timer(self, rep: Replica, deadline: float) -> None:
        rep.timer = timer = _At(self.env, deadline, PRIO_TIMER)
        timer.callbacks.append(lambda ev, rep=rep: self._on_timer(rep, ev))

    def _on_timer(self, rep: Replica, ev: Event) -> None:
        if rep.timer is ev:          # a timer superseded by a later decision is ignored
            rep.timer = None
            self._poke(rep)

    def _take(self, rep: Replica, n: int) -> list:
        """The first ``n`` queued requests, out of the queue (so no queue timeout applies to them any more)."""
        reqs = [rep.queue.popleft() for _ in range(n)]
        for r in reqs:
            if r.dispatched is not None:
                r.dispatched.succeed()
        return reqs

    def _dispatch(self, rep: Replica, instance: int, n: int, t: float) -> None:
        self._start(rep, instance, self._take(rep, n), t)

    def _start(self, rep: Replica, instance: int, reqs: list, t: float) -> None:
        """Start the batch ``reqs`` (already out of the queue) on ``instance`` at ``t``."""
        k = rep.n_batches
        rep.n_batches += 1
        svc = float(draw(self.tables[rep.config][len(reqs) - 1], uniform(self.seed, SERVICE, rep.uid, k))) * 1e-3
        self.n_busy += 1
        if self.interference > 0.0 or self.rate_cont > 0.0:
            svc *= contention_factor(self.n_busy, self.cores, self.interference, self.rate_cores, self.rate_cont,
                                     node_rate(self.rate_window, t, self.rate_win))
        batch = Batch(reqs, t, svc, instance)
        rep.running[instance] = batch
        for r in reqs:
            r.batch = batch
        self.env.process(self._execute(rep, batch))

    def _execute(self, rep: Replica, batch: Batch):
        """One model instance computing one batch."""
        yield _At(self.env, batch.start + batch.svc, PRIO_COMPLETION)
        t = self.env.now
        n = len(batch.requests)
        if rep.state == READY:
            self.ia[A_BUSY_S] += t - max(batch.start, self.interval_start)
        self.ia[A_EXEC] += 1.0
        self.ia[A_INFER] += n
        if batch.start >= self.warmup:
            self.ga[A_EXEC] += 1.0
            self.ga[A_INFER] += n
        rep.running[batch.instance] = None
        self.n_busy -= 1
        for r in batch.requests:
            r.done.succeed(t)
        self._poke(rep)
        self._check_gone(rep, t)

    def _check_gone(self, rep: Replica, t: float) -> None:
        if rep.state == DRAINING and rep.empty():
            rep.state = GONE
            del self.replicas[rep.uid]
            self.gone.append((rep.uid, t))

    # ------------------------------------------------------------------ FastPlane surface

    def advance(self, t: float) -> None:
        """Process data-plane events before ``t``. They live in the shared environment,
        which the engine steps itself; only the final drain-out (``t = inf``, after
        :meth:`stop_arrivals`) needs stepping here, until every request has finished."""
        if math.isinf(t):
            while (self.n_finished < self.next_id or self.fed_pending > 0) and self.env.peek() < math.inf:
                self.env.step()
        else:
            while self.env.peek() < t:
                self.env.step()

    def add_replica(self, uid: int, config: int = 0) -> None:
        """A starting replica ``uid`` serving with configuration ``config`` (an index into the models)."""
        rep = Replica(uid, self.instances, self.env, config)
        self.replicas[uid] = rep
        self.env.process(self._batcher(rep))

    def set_ready(self, uid: int, t: float) -> None:
        rep = self.replicas[uid]
        rep.state = READY
        self.ready.append(rep)

    def drain(self, uid: int, t: float) -> bool:
        """Stop routing to ``uid``; True if it is gone at once (starting, or empty)."""
        rep = self.replicas[uid]
        if rep.state == READY:
            self.ready.remove(rep)
            if not rep.empty():
                rep.state = DRAINING
                return False
        rep.state = GONE
        del self.replicas[uid]
        return True

    def pop_gone(self) -> list[tuple[int, float]]:
        out, self.gone = self.gone, []
        return out

    def take_interval(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        ia = self.ia.copy()
        busy = 0.0
        for rep in self.replicas.values():
            if rep.state == READY:
                for b in rep.running:
                    if b is not None:
                        busy += t - max(b.start, self.interval_start)
        ia[A_BUSY_S] += busy
        ih = self.ih.copy()
        self.ia[:] = 0.0
        self.ih[:] = 0
        self.interval_start = t
        return ia, ih

    def inflight(self) -> int:
        return sum(rep.outstanding() for rep in self.replicas.values() if rep.state in (READY, DRAINING))

    def take_finished(self) -> tuple[np.ndarray, ...]:
        """Requests finished since the last call: ids, client-side completion instants, statuses, replicas (-1:
        none took it) and arrival instants (id order)."""
        f = sorted(self.finished)
        self.finished = []
        cols = list(zip(*f)) if f else [()] * 5
        return tuple(np.array(c, dtype=t) for c, t in zip(cols, (np.int64, float, np.int64, np.int64, float)))

    def stop_arrivals(self) -> None:
        self.stopped = True
        self.arrivals = None

    def records(self) -> dict[str, np.ndarray]:
        r = self.rec
        out = {k: np.array(r[k], dtype=float) for k in ("arrival_s", "dispatch_s", "completion_s")}
        out.update({k: np.array(r[k], dtype=np.int64) for k in ("replica", "batch_size", "status")})
        return out

    @property
    def n_requests(self) -> int:
        return self.next_id
