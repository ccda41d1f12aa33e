"""The live controller: a scaling policy in the loop of a real deployment.

Every ``interval_s`` of wall-clock time (ticks at ``t0 + k * interval_s``, ``t0``
the start of the load) the :class:`Controller`

1. builds the :class:`simulator.policy.Observation` of the interval that just
   ended from live metrics -- Triton's counters scraped from every replica at the
   tick and the client request log streamed by the load generator (see
   :mod:`cluster.stack.loadgen`, ``plan["stream"]``) -- with
   :func:`cluster.stack.scrape.observation_from_window`, i.e. the metric definitions of
   :mod:`simulator.policy` that the simulator uses; ``time_s`` is the run time of
   the tick and ``interval_s`` the nominal interval, exactly as in a simulated run;
2. asks the policy (``policy.decide(obs)``), clamps the answer to
   ``[min_replicas, max_replicas]`` (:func:`simulator.policy.replicas_to_ask`, the simulator's rule);
3. asks the backend for that many replicas (``backend.scale(n)``).

Safety:

- a policy is checked before any scaling happens (:func:`check_policy`): it
  must load, and answer a set of synthetic observations (idle, loaded,
  overloaded, missing latencies) with finite replica counts inside
  ``[min_replicas, max_replicas]``; otherwise :class:`PolicyRejected`;
- if the metrics of an interval are missing (a scrape fails or a ready replica
  does not answer it, or the load generator's feed has been silent for a whole
  interval), the controller holds its last decision and logs why; the same if
  the policy raises at run time; an answer that is NaN, infinite or not a number is
  held by :func:`simulator.policy.replicas_to_ask`, the rule the simulator applies too
  (it is never asked to scale to a non-number);
- the replica count sent to the backend is always clamped.

The parts a pipeline's controller (:mod:`cluster.controller_pipeline`) does the same way are public functions
here, used by both: :class:`LiveWindow` (one deployment's observation of an interval), :func:`ask_policy`,
:func:`scale_backend`, :func:`backend_counts`, :func:`check_answer_number`, :func:`tick_loop` (the clock).

The first interval starts at ``t0`` with a counter snapshot taken then; the
controller evaluates each tick ``lag_s`` (0.25 s) after it, so that the load
generator's feed (every 0.25 s) holds every request that finished before the tick.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from simulator.config import ConfigError
from simulator.policy import Observation, Policy, clamp_replicas, replicas_to_ask

from .stack.scrape import model_counters, observation_from_window, parse_prometheus


class PolicyRejected(ConfigError):
    """The policy failed its pre-flight check; nothing was scaled."""


# --------------------------------------------------------------------------- policy checks


def error_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a log line shows."""
    msg = str(e).strip()
    return msg.splitlines()[0] if msg else type(e).__name__


def check_answer_number(raw, name: str, what: str, lo: int, hi: int) -> int:
    """A pre-flight answer (one replica count) as an int; :class:`PolicyRejected` (one line) when it is not a
    whole number in ``[lo, hi]``. ``what`` says which observation (and stage) it answered."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, np.integer, np.floating)):
        raise PolicyRejected(f"{name}: answered {raw!r} (not a number) to {what}")
    v = float(raw)
    if not math.isfinite(v):
        raise PolicyRejected(f"{name}: answered {raw!r} to {what}")
    if v != round(v) or not lo <= v <= hi:
        raise PolicyRejected(f"{name}: answered {raw!r} replicas to {what}; allowed: whole numbers in [{lo}, {hi}]")
    return int(v)


def load_policy_file(path: str):
    """A :class:`simulator.learned.LearnedPolicy` from ``policy.pt``; :class:`PolicyRejected` if it cannot load."""
    from simulator.learned import LearnedPolicy
    try:
        return LearnedPolicy.load(path)
    except ConfigError as e:
        raise PolicyRejected(str(e).replace("autoscaler.path: ", "", 1)) from None


def synthetic_observations(*, interval_s: float, slo_ms: float, min_replicas: int, max_replicas: int,
                           capacity_rps: float = 50.0) -> list[Observation]:
    """Observations a policy must answer sensibly: idle, light, at capacity, overloaded, no latencies."""
    nan = float("nan")
    out = []
    cases = [  # (load factor of max capacity, replicas, latency factor of SLO, busy, missing latency)
        (0.0, min_replicas, 0.0, 0.0, True),
        (0.2, min_replicas, 0.3, 0.3, False),
        (0.6, max(min_replicas, (min_replicas + max_replicas) // 2), 0.5, 0.6, False),
        (1.0, max_replicas, 0.9, 0.9, False),
        (2.0, max_replicas, 5.0, 1.0, False),
        (1.0, min_replicas, 3.0, 1.0, False),
    ]
    for i, (f, reps, lat, busy, missing) in enumerate(cases):
        reps = max(int(reps), 0)
        rate = f * capacity_rps * max(max_replicas, 1)
        lp = nan if missing else lat * slo_ms
        out.append(Observation(
            time_s=(i + 1) * interval_s, interval_s=interval_s, arrival_rps=rate, completion_rps=min(rate, capacity_rps * max(reps, 1)),
            latency_p50_ms=lp * 0.6 if not missing else nan, latency_p95_ms=lp, latency_p99_ms=lp * 1.3 if not missing else nan,
            slo_violation_frac=nan if missing else (0.5 if lat > 1 else 0.0), queue_ms=nan if missing else lat * slo_ms * 0.3,
            batch_size=nan if missing else 1.0 + 3 * busy, busy_fraction=busy, inflight=rate * lat * slo_ms / 1000.0 if not missing else 0.0,
            replicas=reps, replicas_ready=reps, replicas_pending=0, failures=0 if f < 2 else int(rate * interval_s * 0.05),
            slo_ms=slo_ms, min_replicas=min_replicas, max_replicas=max_replicas))
    return out


def check_interval(policy, interval_s: float, name: str) -> None:
    """:class:`PolicyRejected` when ``policy`` was trained at another control interval than ``interval_s``."""
    want = getattr(policy, "interval_s", None)
    if want is not None and abs(float(want) - float(interval_s)) > 1e-6:
        raise PolicyRejected(f"{name}: trained with control interval {float(want):g} s, the controller runs at "
                             f"{float(interval_s):g} s")


def check_policy(policy: Policy, *, interval_s: float, slo_ms: float, min_replicas: int, max_replicas: int,
                 capacity_rps: float = 50.0, name: str = "policy") -> list[int]:
    """Reject (``PolicyRejected``) a policy that raises, or answers NaN / a non-number / a count outside
    ``[min_replicas, max_replicas]``, on :func:`synthetic_observations`. Returns its answers; the
    policy is reset before and after."""
    check_interval(policy, interval_s, name)
    answers = []
    policy.reset()
    try:
        for obs in synthetic_observations(interval_s=interval_s, slo_ms=slo_ms, min_replicas=min_replicas,
                                          max_replicas=max_replicas, capacity_rps=capacity_rps):
            try:
                raw = policy.decide(obs)
            except Exception as e:  # noqa: BLE001 - any failure rejects the policy
                raise PolicyRejected(f"{name}: fails on a synthetic observation "
                                     f"(arrival {obs.arrival_rps:.0f} rps, {obs.replicas} replicas): "
                                     f"{error_line(e)}") from None
            answers.append(check_answer_number(raw, name, f"a synthetic observation (arrival {obs.arrival_rps:.0f} "
                                                          f"rps)", min_replicas, max_replicas))
    finally:
        policy.reset()
    return answers


# --------------------------------------------------------------------------- live inputs


class LiveRequests:
    """The client request log as streamed by the load generator (thread-safe).

    ``feed(msg)`` takes one live-feed line (``sends`` / ``done``); :meth:`view`
    gives the columns :func:`observation_from_window` wants, with requests still in
    flight as latency +inf (counted as in flight, never as finished).
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._sent: dict[int, float] = {}
        self._done: dict[int, tuple[float, float, str]] = {}
        self.last_msg: float | None = None
        self.clock = clock

    def feed(self, msg: dict) -> None:
        with self._lock:
            for seq, t in msg.get("sends", ()):
                self._sent[int(seq)] = float(t)
            for seq, t, lat, status in msg.get("done", ()):
                self._done[int(seq)] = (float(t), float("nan") if lat is None else float(lat), str(status))
            self.last_msg = self.clock()

    def add(self, seq: int, t_send: float, latency_ms: float | None = None, status: str = "ok") -> None:
        """Tests / closed-form callers: one request (finished when ``latency_ms`` is given)."""
        with self._lock:
            self._sent[seq] = t_send
            if latency_ms is not None:
                self._done[seq] = (t_send, latency_ms, status)
            self.last_msg = self.clock()

    def silent_for(self) -> float:
        with self._lock:
            return math.inf if self.last_msg is None else self.clock() - self.last_msg

    def view(self) -> dict[str, np.ndarray]:
        with self._lock:
            done = list(self._done.values())
            infl = [t for s, t in self._sent.items() if s not in self._done]
        ts = np.array([d[0] for d in done] + infl, float)
        lat = np.array([d[1] for d in done] + [math.inf] * len(infl), float)
        st = np.array([d[2] for d in done] + ["inflight"] * len(infl), object)
        return {"t_send": ts, "latency_ms": lat, "status": st}


def scrape_counters(backend, model: str) -> tuple[dict | None, str]:
    """``({replica: counters}, "")`` from every replica, or ``(None, reason)`` when metrics are missing."""
    try:
        ready = set(backend.endpoints.get("replicas", {}))
        texts = backend.metrics()
    except Exception as e:  # noqa: BLE001 - any scrape failure is "metrics missing"
        return None, f"scrape failed ({type(e).__name__}: {e})"
    missing = sorted(ready - set(texts))
    if missing:
        return None, f"no metrics from ready replica(s) {', '.join(missing)}"
    return {rep: model_counters(parse_prometheus(t), model) for rep, t in texts.items()}, ""


# --------------------------------------------------------------------------- shared by the controllers


def backend_counts(backend) -> tuple[int, int]:
    """(ready, pending) replicas of ``backend``; (0, 0) when it cannot say."""
    try:
        return int(backend.ready_replicas), int(backend.pending_replicas)
    except Exception:  # noqa: BLE001
        return 0, 0


def ask_policy(policy, obs) -> tuple[Any, str]:
    """``(policy.decide(obs), "")``, or ``(None, "policy error: <first line>")`` when it raises: a failing
    policy must not crash the run (the controller holds)."""
    try:
        return policy.decide(obs), ""
    except Exception as e:  # noqa: BLE001
        return None, f"policy error: {error_line(e)[:200]}"


def scale_backend(backend, n: int) -> str:
    """``backend.scale(n)``; the error (``"Type: message"``, "" when none): recorded, the next tick tries again."""
    try:
        backend.scale(n)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"[:300]
    return ""


@dataclass
class LiveWindow:
    """One deployment's live inputs: its ``backend`` (scraped for ``model``'s Triton counters) and the client
    log of the requests it served (``requests``). :meth:`open` takes the snapshot that opens the first interval
    (at ``t0``); :meth:`observe` gives the :class:`Observation` of interval ``tick`` with the simulator's
    conventions (time = the tick's run time, the nominal interval), or ``(None, why)`` when metrics are
    missing (a scrape fails, a ready replica does not answer, no snapshot opened the interval, the load
    generator's feed is silent)."""

    backend: Any
    model: str
    requests: LiveRequests | None
    interval_s: float
    slo_ms: float
    min_replicas: int
    max_replicas: int
    instances: int = 1
    scrapes: list[tuple[float, dict]] = field(default_factory=list)     # (epoch, {replica: counters})

    def __post_init__(self):
        self._snap: tuple[float, dict] | None = None
        self.t0 = 0.0

    def open(self, t0_epoch: float) -> str:
        """Snapshot at the start; the reason when metrics are missing ("" when not)."""
        self.t0 = t0_epoch
        snap, why = scrape_counters(self.backend, self.model)
        self._snap = (time.time(), snap) if snap is not None else None
        if snap is not None:
            self.scrapes.append(self._snap)
        return why

    def observe(self, tick: int) -> tuple[Observation | None, str]:
        """The Observation of ``[t0 + (tick-1) iv, t0 + tick iv)`` from a scrape now and the live request log."""
        ta = self.t0 + (tick - 1) * self.interval_s
        tb = self.t0 + tick * self.interval_s
        snap, why = scrape_counters(self.backend, self.model)
        prev = self._snap
        self._snap = (time.time(), snap) if snap is not None else None
        if snap is None:
            return None, why
        self.scrapes.append(self._snap)
        if prev is None:
            return None, "no counter snapshot at the start of the interval"
        if self.requests is not None and self.requests.silent_for() > self.interval_s:
            return None, f"load generator feed silent for {self.requests.silent_for():.1f} s"
        ready, pending = backend_counts(self.backend)
        obs = observation_from_window(ta, tb, self.requests.view() if self.requests is not None else None,
                                      prev[1], snap, replicas=ready + pending, replicas_ready=ready,
                                      replicas_pending=pending, instances=self.instances, slo_ms=self.slo_ms,
                                      min_replicas=self.min_replicas, max_replicas=self.max_replicas)
        # the simulator's conventions: run time of the tick, the nominal interval
        return dataclasses.replace(obs, time_s=tick * self.interval_s, interval_s=self.interval_s), ""


def tick_loop(ctl, t0_epoch: float, duration_s: float, stop: threading.Event) -> None:
    """A controller's clock: ``ctl.start(t0)`` at ``t0``, then at every ``t0 + k * ctl.interval_s + ctl.lag_s``
    (k = 1, 2, ... up to ``duration_s`` of run time, or until ``stop``) ``ctl.decide(k, *ctl.observe(k))``.
    Every failure is logged into ``ctl.errors`` / ``ctl.log``, none escapes (the run goes on with the last
    decision)."""
    try:
        if stop.wait(max(0.0, t0_epoch - time.time())):
            return
        ctl.start(t0_epoch)
        k = 1
        while k * ctl.interval_s <= duration_s + 1e-9:
            if stop.wait(max(0.0, t0_epoch + k * ctl.interval_s + ctl.lag_s - time.time())):
                return
            try:
                obs, why = ctl.observe(k)
            except Exception as e:  # noqa: BLE001
                obs, why = None, f"observation failed ({type(e).__name__}: {e})"
            ctl.decide(k, obs, why, time.time())
            k += 1
    except Exception as e:  # noqa: BLE001
        ctl.errors.append(f"controller stopped: {type(e).__name__}: {e}")
        ctl.log(f"[{ctl.name}] controller stopped: {type(e).__name__}: {e}")


# --------------------------------------------------------------------------- controller


@dataclass
class Decision:
    """One control tick: what the policy saw and what was asked of the backend."""

    tick: int
    t_s: float                      # run time of the tick (k * interval_s)
    t_eval_epoch: float
    obs: dict | None                # the Observation (None: metrics missing)
    raw: Any = None                 # the policy's answer
    desired: int = 0                # replicas asked for (clamped; the held value when held)
    held: bool = False
    reason: str = ""
    ready: int = 0
    pending: int = 0
    scale_error: str = ""

    def row(self) -> dict:
        d = {"tick": self.tick, "t_s": round(self.t_s, 3), "desired": self.desired, "held": int(self.held),
             "raw": "" if self.raw is None else self.raw, "ready": self.ready, "pending": self.pending,
             "reason": self.reason, "scale_error": self.scale_error}
        for k in Observation.FEATURES:
            d[k] = (self.obs or {}).get(k, float("nan"))
        return d


@dataclass
class Controller:
    backend: Any
    policy: Policy
    interval_s: float
    slo_ms: float
    min_replicas: int
    max_replicas: int
    instances: int = 1
    model: str = ""
    requests: LiveRequests | None = None
    lag_s: float = 0.25
    name: str = "policy"
    log: Callable[[str], None] = field(default=lambda m: None)
    decisions: list[Decision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.last = None
        self.window = LiveWindow(self.backend, self.model, self.requests, self.interval_s, self.slo_ms,
                                 self.min_replicas, self.max_replicas, self.instances)

    @property
    def scrapes(self) -> list[tuple[float, dict]]:
        return self.window.scrapes

    # ---- the decision logic (no clock, no I/O but backend.scale)
    def decide(self, tick: int, obs: Observation | None, missing_reason: str = "", t_eval: float = 0.0) -> Decision:
        t_run = tick * self.interval_s
        ready, pending = backend_counts(self.backend)
        d = Decision(tick=tick, t_s=t_run, t_eval_epoch=t_eval, obs=None if obs is None else obs.to_dict(),
                     ready=ready, pending=pending)
        if self.last is None:
            self.last = clamp_replicas(getattr(self.backend, "desired", self.min_replicas), self.min_replicas,
                                       self.max_replicas)
        raw, err = (None, f"metrics missing: {missing_reason or 'unknown'}") if obs is None else \
            ask_policy(self.policy, obs)
        if err:
            d.desired, d.held, d.reason = self.last, True, err
            self.log(f"[{self.name}] t={t_run:.0f}s {d.reason}; holding {self.last} replica(s)")
            self.decisions.append(d)
            return d
        d.raw = raw if isinstance(raw, (int, float, str)) else repr(raw)
        ans = replicas_to_ask(raw, self.last, self.min_replicas, self.max_replicas)
        n = ans.replicas
        if ans.held:
            d.desired, d.held, d.reason = n, True, ans.reason
            self.log(f"[{self.name}] t={t_run:.0f}s {d.reason}")
            self.decisions.append(d)
            return d
        if ans.reason:
            d.reason = ans.reason
            self.log(f"[{self.name}] t={t_run:.0f}s {d.reason}")
        d.desired = n
        d.scale_error = scale_backend(self.backend, n)
        if d.scale_error:
            self.errors.append(d.scale_error)
            self.log(f"[{self.name}] t={t_run:.0f}s scale({n}) failed: {d.scale_error}")
        self.last = n
        self.decisions.append(d)
        return d

    # ---- live observation
    def observe(self, tick: int) -> tuple[Observation | None, str]:
        """The Observation of ``[t0 + (tick-1) iv, t0 + tick iv)`` (:meth:`LiveWindow.observe`)."""
        return self.window.observe(tick)

    def start(self, t0_epoch: float) -> None:
        """Reset the policy and take the counter snapshot that opens the first interval (at ``t0``)."""
        self.policy.reset()
        self.last = None
        why = self.window.open(t0_epoch)
        if why:
            self.log(f"[{self.name}] start: {why}")

    def run(self, t0_epoch: float, duration_s: float, stop: threading.Event) -> None:
        """Tick until ``duration_s`` of run time (or ``stop``): :func:`tick_loop`."""
        tick_loop(self, t0_epoch, duration_s, stop)


__all__ = ["Controller", "Decision", "LiveRequests", "LiveWindow", "PolicyRejected", "ask_policy", "backend_counts",
           "check_answer_number", "check_interval", "check_policy", "error_line", "load_policy_file", "scale_backend",
           "scrape_counters", "synthetic_observations", "tick_loop"]
