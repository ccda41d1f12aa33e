"""The live pipeline controller: a pipeline policy in the loop of a real multi-stage deployment.

The pipeline counterpart of :class:`cluster.controller.Controller` (read it first: same clock, same safety
rules, and the same public functions for what is the same -- :class:`~cluster.controller.LiveWindow` for a
stage's observation, :func:`~cluster.controller.ask_policy`, :func:`~cluster.controller.scale_backend`,
:func:`~cluster.controller.tick_loop`, :func:`simulator.policy.replicas_to_ask` for a replica count).
Every ``interval_s`` of wall-clock time the :class:`PipelineController`

1. builds the :class:`simulator.pipeline.PipelineObservation` of the interval that just ended, with the
   pipeline simulator's metric definitions: per stage the single-model observation
   (:func:`cluster.stack.scrape.observation_from_window`) of that stage's live Triton counters and of the
   chained client's log of the visits it served (its arrivals = sends to its load balancer, its latency =
   the visit's client latency: from arrival at the stage to the response, hop included, as the simulator's
   stage latency), the end-to-end observation (:func:`simulator.pipeline.e2e_observation`, the simulator's
   own builder, from the client's end-to-end log), each stage's variant and batch size, and the mean
   accuracy of the interval's completions (the variants' accuracies combined by ``pipeline.accuracy``);
2. asks the pipeline policy for one :class:`~simulator.pipeline_policy.StageDecision` per stage;
3. per stage: the replica count by the single-model rule (rounded, clamped to the stage's
   ``[min_replicas, max_replicas]``, a non-number held), asked of that stage's backend (``backend.scale``).

**Variant and batch-size switches are not done on the real stack.** A switch is a rolling update to replicas
serving another Triton model (another variant's) or another batcher configuration; the chained client calls a
stage's model by name behind one load balancer, so replicas of two variants cannot share it, and the local
backend writes one model repository per deployment. :func:`check_pipeline_policy` therefore refuses, in one
line and before anything starts, a policy that asks any stage for another variant or batch size on the
synthetic observations; a switch asked at run time anyway is not acted on (counted as ``held_config``, the
replica count still applied: the simulator's rule for a configuration it cannot serve).

Safety, as for one model: the policy is checked first on synthetic observations (per stage
:func:`cluster.controller.synthetic_observations`; it must answer one decision per stage, whole replica
counts inside each stage's range); metrics missing at any stage, a policy that raises, or an answer that is
not one decision per stage: every stage holds its last count; every tick is logged (:meth:`PipelineDecision.rows`).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from simulator.pipeline import PipelineObservation, e2e_observation
from simulator.pipeline_policy import StageDecision
from simulator.policy import Observation, clamp_replicas, replicas_to_ask

from .controller import (LiveRequests, LiveWindow, PolicyRejected, ask_policy, backend_counts, check_answer_number,
                         check_interval, error_line, scale_backend, synthetic_observations, tick_loop)
from .stack.scrape import observation_from_window

SWITCH_REFUSED = "the real stack cannot switch a stage's variant or batch size (cluster.controller_pipeline)"


class PipelineRequests:
    """The chained client's live feed split by stage: ``e2e`` (the end-to-end log) and ``stages[k]`` (the
    visits stage ``k`` served, keyed by request), each a :class:`~cluster.controller.LiveRequests`.
    ``feed(msg)`` takes one live-feed line (:mod:`cluster.stack.loadgen`: ``sends``, ``done``,
    ``stage_sends``, ``stage_done``); every part sees every line (the heartbeat)."""

    def __init__(self, n_stages: int, clock: Callable[[], float] = time.time):
        self.e2e = LiveRequests(clock)
        self.stages = [LiveRequests(clock) for _ in range(n_stages)]

    def feed(self, msg: dict) -> None:
        self.e2e.feed(msg)
        for k, lr in enumerate(self.stages):
            lr.feed({"sends": [(s, t) for s, j, t in msg.get("stage_sends", ()) if j == k],
                     "done": [(s, t, lat, st) for s, j, t, lat, st in msg.get("stage_done", ()) if j == k]})


def combined_accuracy(accuracies: Sequence[float], rule: str) -> float:
    """A request's accuracy from the accuracies of the variants that served it: ``product`` or ``mean``
    (:func:`simulator.ipa.pipeline_accuracy`, the simulator's rule)."""
    from simulator.ipa import pipeline_accuracy
    return pipeline_accuracy(accuracies, rule)


def live_pipeline_observation(stage_obs: Sequence[Observation], e2e_window: Observation, *, tick: int,
                              interval_s: float, variants: Sequence[str], batch_sizes: Sequence[int],
                              accuracy: float) -> PipelineObservation:
    """The :class:`PipelineObservation` of tick ``tick``: the stages' observations, the end-to-end one built by
    :func:`simulator.pipeline.e2e_observation` from ``e2e_window`` (the single-model observation of the
    end-to-end client log: its completions, percentiles, violations, failures), the stages' configuration,
    and ``accuracy`` (of every completion: the configuration is fixed on the real stack) when the interval
    completed a request, NaN when not."""
    t = tick * interval_s
    w = e2e_window
    e2e = e2e_observation(stage_obs, time_s=t, interval_s=interval_s, completion_rps=w.completion_rps,
                          p50_ms=w.latency_p50_ms, p95_ms=w.latency_p95_ms, p99_ms=w.latency_p99_ms,
                          slo_violation_frac=w.slo_violation_frac, failures=w.failures, slo_ms=w.slo_ms)
    return PipelineObservation(time_s=t, interval_s=interval_s, stages=tuple(stage_obs), e2e=e2e,
                               variants=tuple(variants), batch_sizes=tuple(int(b) for b in batch_sizes),
                               accuracy=float(accuracy) if w.completion_rps > 0 else math.nan)


def stage_answer(d: Any, variant: str, batch_size: int) -> tuple[Any, str]:
    """``(replicas answer, refusal)`` of one stage's decision ``d`` (a :class:`StageDecision` or a bare count)
    for a stage serving ``variant`` at ``batch_size``: ``refusal`` names the switch asked ("" when none: no
    variant / batch size given, or the current ones)."""
    if not isinstance(d, StageDecision):
        return d, ""
    v = variant if d.variant is None else d.variant
    b = batch_size if d.max_batch_size is None else d.max_batch_size
    if v != variant or b != batch_size:
        return d.replicas, f"asked for variant {v} at batch size {b} (serves {variant} at {batch_size})"
    return d.replicas, ""


def decisions_of(raw: Any, n: int) -> tuple[list | None, str]:
    """The answer as one decision per stage, or ``(None, reason)`` when it is not a sequence of ``n``."""
    if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__"):
        return None, f"policy answer rejected: {raw!r:.80} is not one decision per stage"
    if len(raw) != n:
        return None, f"policy answer rejected: {len(raw)} decision(s) for a pipeline of {n} stages"
    return list(raw), ""


def synthetic_pipeline_observations(*, interval_s: float, slo_ms: float, min_replicas: Sequence[int],
                                    max_replicas: Sequence[int], capacities: Sequence[float],
                                    variants: Sequence[str], batch_sizes: Sequence[int],
                                    accuracy: float) -> list[PipelineObservation]:
    """Pipeline observations a policy must answer sensibly: the cases of
    :func:`cluster.controller.synthetic_observations` at every stage at once (idle, light, at capacity,
    overloaded, over the SLO with few replicas, no latencies); end to end: the last stage's completions, the
    stages' percentiles summed, the worst stage's violations, the failures summed."""
    per = [synthetic_observations(interval_s=interval_s, slo_ms=slo_ms, min_replicas=lo, max_replicas=hi,
                                  capacity_rps=c) for lo, hi, c in zip(min_replicas, max_replicas, capacities)]
    out = []
    for i, obs in enumerate(zip(*per)):
        last = obs[-1]
        w = Observation(**{**last.to_dict(), "latency_p50_ms": sum(o.latency_p50_ms for o in obs),
                           "latency_p95_ms": sum(o.latency_p95_ms for o in obs),
                           "latency_p99_ms": sum(o.latency_p99_ms for o in obs),
                           "slo_violation_frac": max(o.slo_violation_frac for o in obs),
                           "failures": sum(o.failures for o in obs)})
        out.append(live_pipeline_observation(obs, w, tick=i + 1, interval_s=interval_s, variants=variants,
                                             batch_sizes=batch_sizes, accuracy=accuracy))
    return out


def check_pipeline_policy(policy, *, names: Sequence[str], variants: Sequence[str], batch_sizes: Sequence[int],
                          interval_s: float, slo_ms: float, min_replicas: Sequence[int],
                          max_replicas: Sequence[int], capacities: Sequence[float], accuracy: float = 1.0,
                          name: str = "policy") -> list[list[int]]:
    """Reject (:class:`~cluster.controller.PolicyRejected`, one line) a pipeline policy that raises, answers
    anything but one decision per stage, a replica count that is not a whole number in the stage's range, or a
    variant / batch-size switch (module docstring), on :func:`synthetic_pipeline_observations`; or was trained
    at another control interval. Returns its replica answers per observation; reset before and after."""
    check_interval(policy, interval_s, name)
    out = []
    policy.reset()
    try:
        for pobs in synthetic_pipeline_observations(interval_s=interval_s, slo_ms=slo_ms, min_replicas=min_replicas,
                                                    max_replicas=max_replicas, capacities=capacities,
                                                    variants=variants, batch_sizes=batch_sizes, accuracy=accuracy):
            what = f"a synthetic observation (arrival {pobs.e2e.arrival_rps:.0f} rps)"
            try:
                raw = policy.decide(pobs)
            except Exception as e:  # noqa: BLE001 - any failure rejects the policy
                raise PolicyRejected(f"{name}: fails on {what}: {error_line(e)}") from None
            ds, why = decisions_of(raw, len(names))
            if ds is None:
                raise PolicyRejected(f"{name}: {why.replace('policy answer rejected: ', 'answered ')} to {what}")
            row = []
            for k, d in enumerate(ds):
                reps, switch = stage_answer(d, variants[k], batch_sizes[k])
                if switch:
                    raise PolicyRejected(f"{name}: stage {names[k]}: {switch} on {what}; {SWITCH_REFUSED}")
                row.append(check_answer_number(reps, name, f"{what} at stage {names[k]}", min_replicas[k],
                                               max_replicas[k]))
            out.append(row)
    finally:
        policy.reset()
    return out


# --------------------------------------------------------------------------- the controller


@dataclass
class StageTick:
    """One stage at one tick: the policy's answer and what was asked of the stage's backend."""

    raw: Any = None
    desired: int = 0
    held: bool = False
    held_config: bool = False
    reason: str = ""
    ready: int = 0
    pending: int = 0
    scale_error: str = ""


@dataclass
class PipelineDecision:
    """One control tick of a pipeline: the observation (None: metrics missing) and every stage's outcome."""

    tick: int
    t_s: float
    t_eval_epoch: float
    obs: PipelineObservation | None
    stages: list[StageTick]
    reason: str = ""                 # why every stage held (metrics missing, policy error, bad answer)

    def rows(self, names: Sequence[str]) -> list[dict]:
        """One row per stage and an ``e2e`` row (desired = the sum), with the observation's features."""
        nan = float("nan")
        out = []
        for k, (n, s) in enumerate(zip(names, self.stages)):
            o = self.obs.stages[k].to_dict() if self.obs is not None else {}
            out.append({"tick": self.tick, "t_s": round(self.t_s, 3), "stage": n, "desired": s.desired,
                        "held": int(s.held), "held_config": int(s.held_config),
                        "raw": "" if s.raw is None else s.raw, "ready": s.ready, "pending": s.pending,
                        "reason": s.reason or self.reason, "scale_error": s.scale_error, "accuracy": nan,
                        **{f: o.get(f, nan) for f in Observation.FEATURES}})
        o = self.obs.e2e.to_dict() if self.obs is not None else {}
        out.append({"tick": self.tick, "t_s": round(self.t_s, 3), "stage": "e2e",
                    "desired": sum(s.desired for s in self.stages), "held": int(any(s.held for s in self.stages)),
                    "held_config": int(any(s.held_config for s in self.stages)), "raw": "",
                    "ready": sum(s.ready for s in self.stages), "pending": sum(s.pending for s in self.stages),
                    "reason": self.reason, "scale_error": "",
                    "accuracy": self.obs.accuracy if self.obs is not None else nan,
                    **{f: o.get(f, nan) for f in Observation.FEATURES}})
        return out


@dataclass
class PipelineController:
    """``windows[k]``: stage ``k``'s :class:`~cluster.controller.LiveWindow` (its backend, model, visit log,
    range); ``names``, ``variants``, ``batch_sizes``: the stages' (fixed on the real stack); ``accuracy``: a
    completion's (:func:`combined_accuracy`); ``e2e``: the end-to-end client log."""

    windows: list[LiveWindow]
    names: list[str]
    variants: list[str]
    batch_sizes: list[int]
    accuracy: float
    policy: Any
    interval_s: float
    slo_ms: float
    e2e: LiveRequests | None = None
    lag_s: float = 0.25
    name: str = "policy"
    log: Callable[[str], None] = field(default=lambda m: None)
    decisions: list[PipelineDecision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.last: list[int] | None = None

    @property
    def scrapes(self) -> int:
        return sum(len(w.scrapes) for w in self.windows)

    def _lasts(self) -> list[int]:
        if self.last is None:
            self.last = [clamp_replicas(getattr(w.backend, "desired", w.min_replicas), w.min_replicas, w.max_replicas)
                         for w in self.windows]
        return self.last

    # ---- the decision logic (no clock, no I/O but backend.scale)
    def decide(self, tick: int, obs: PipelineObservation | None, missing_reason: str = "",
               t_eval: float = 0.0) -> PipelineDecision:
        t_run = tick * self.interval_s
        last = self._lasts()
        ticks = []
        for w, n in zip(self.windows, last):
            r, p = backend_counts(w.backend)
            ticks.append(StageTick(desired=n, ready=r, pending=p))
        d = PipelineDecision(tick, t_run, t_eval, obs, ticks)
        self.decisions.append(d)
        raw, err = (None, f"metrics missing: {missing_reason or 'unknown'}") if obs is None else \
            ask_policy(self.policy, obs)
        ds = None
        if not err:
            ds, err = decisions_of(raw, len(self.windows))
        if err:
            d.reason = err
            for s in ticks:
                s.held = True
            self.log(f"[{self.name}] t={t_run:.0f}s {err}; holding {'/'.join(map(str, last))} replica(s)")
            return d
        for k, (w, s, dk) in enumerate(zip(self.windows, ticks, ds)):
            reps, switch = stage_answer(dk, self.variants[k], self.batch_sizes[k])
            s.raw = reps if isinstance(reps, (int, float, str)) else repr(reps)
            notes = []
            if switch:
                s.held_config = True
                notes.append(f"{switch}: not acted on ({SWITCH_REFUSED})")
            ans = replicas_to_ask(reps, last[k], w.min_replicas, w.max_replicas)
            s.desired, s.held = ans.replicas, ans.held
            if ans.reason:
                notes.append(ans.reason)
            s.reason = "; ".join(notes)
            if s.reason:
                self.log(f"[{self.name}] t={t_run:.0f}s stage {self.names[k]}: {s.reason}")
            if ans.held:
                continue
            s.scale_error = scale_backend(w.backend, s.desired)
            if s.scale_error:
                self.errors.append(f"{self.names[k]}: {s.scale_error}")
                self.log(f"[{self.name}] t={t_run:.0f}s stage {self.names[k]}: scale({s.desired}) failed: "
                         f"{s.scale_error}")
            last[k] = s.desired
        self.log(f"[{self.name}] t={t_run:.0f}s desired " + ", ".join(
            f"{n} {s.desired}" for n, s in zip(self.names, ticks)))
        return d

    # ---- live observation
    def observe(self, tick: int) -> tuple[PipelineObservation | None, str]:
        """The :class:`PipelineObservation` of interval ``tick`` (every stage scraped, even after one failed)."""
        got = [(n, *w.observe(tick)) for n, w in zip(self.names, self.windows)]
        bad = [f"stage {n}: {why}" for n, o, why in got if o is None]
        if bad:
            return None, "; ".join(bad)
        w0 = self.windows[0]
        ta, tb = w0.t0 + (tick - 1) * self.interval_s, w0.t0 + tick * self.interval_s
        ew = observation_from_window(ta, tb, self.e2e.view() if self.e2e is not None else None, {}, {},
                                     replicas=0, replicas_ready=0, replicas_pending=0, instances=1,
                                     slo_ms=self.slo_ms, min_replicas=0, max_replicas=0)
        return live_pipeline_observation([o for _, o, _ in got], ew, tick=tick, interval_s=self.interval_s,
                                         variants=self.variants, batch_sizes=self.batch_sizes,
                                         accuracy=self.accuracy), ""

    def start(self, t0_epoch: float) -> None:
        """Reset the policy and open every stage's first interval (at ``t0``)."""
        self.policy.reset()
        self.last = None
        for n, w in zip(self.names, self.windows):
            why = w.open(t0_epoch)
            if why:
                self.log(f"[{self.name}] start: stage {n}: {why}")

    def run(self, t0_epoch: float, duration_s: float, stop: threading.Event) -> None:
        """Tick until ``duration_s`` of run time (or ``stop``): :func:`cluster.controller.tick_loop`."""
        tick_loop(self, t0_epoch, duration_s, stop)


def pipeline_controller(stages, policy, *, sc, interval_s: float, requests: PipelineRequests | None,
                        name: str = "policy", log: Callable[[str], None] = lambda m: None) -> PipelineController:
    """The controller of deployed pipeline ``stages`` (:class:`cluster.stack.chain.Stage` s with their
    backends) of pipeline scenario ``sc``."""
    specs = sc.pipeline.stages
    windows = [LiveWindow(st.backend, st.served.name, requests.stages[k] if requests is not None else None,
                          interval_s, sc.slo_ms, st.scenario.cluster.min_replicas, st.scenario.cluster.max_replicas,
                          st.scenario.batching.instances) for k, st in enumerate(stages)]
    accs = [specs[k].variants[specs[k].variant_index(st.variant)].accuracy for k, st in enumerate(stages)]
    return PipelineController(windows, [st.name for st in stages], [st.variant for st in stages],
                              [st.scenario.batching.max_batch_size for st in stages],
                              combined_accuracy(accs, sc.pipeline.accuracy), policy, interval_s, sc.slo_ms,
                              e2e=requests.e2e if requests is not None else None, name=name, log=log)


__all__ = ["PipelineController", "PipelineDecision", "PipelineRequests", "SWITCH_REFUSED", "StageTick",
           "check_pipeline_policy", "combined_accuracy", "decisions_of", "live_pipeline_observation",
           "pipeline_controller", "stage_answer", "synthetic_pipeline_observations"]
