"""The memory a run needs, estimated before it starts, against a budget.

A scenario can ask for more than the machine holds (``duration_s: 1e12`` with request
records on grew to 13.4 GB in ten minutes before it was killed). :class:`~simulator.engine.Simulation`
estimates the run's memory first (:func:`estimate_memory`) and refuses, with one
:class:`~simulator.config.ConfigError` line, a run whose estimate exceeds the budget
(:func:`check_memory`); it also stops a run whose records outgrow the budget anyway
(``max_records`` in :class:`MemoryEstimate`).

The estimate, in bytes (peak figures per item, measured with ``tracemalloc`` on this
layout, the same on any machine: they are the sizes of the data kept, not speeds):

- request records (``record_requests: true``): ``expected requests x RECORD_BYTES[engine]``
  (simulating and writing ``requests.parquet``);
- the per-interval timeline: ``duration_s / interval_s x TIMELINE_ROW_BYTES``;
- closed-loop users: ``users x USER_BYTES[engine]``;
- the fast engine's replica slots: ``(2 max_replicas + 2) x instances x max_batch_size x 24`` (with several
  serving configurations, :mod:`simulator.variants`, the largest ``max_batch_size`` of them: the slots' batch
  arrays are sized for it).

Expected requests (:func:`expected_requests`): open loop, the workload's expected arrivals
(:func:`simulator.workload.expected_arrivals`: rate x duration for poisson, the integral of
the schedule or trace rate, the timestamps' count); closed loop, an upper bound,
``users / max(think + latency floor, 1 ms) x duration_s`` (the 1 ms is the engines' floor on a
failing user's think + overhead), where the latency floor is the mean overhead plus, when no
request can fail without being computed (no ``max_queue_size``, no ``queue_timeout_us``,
``min_replicas > 0``), the mean compute time of a batch of 1; the rate is then also capped at
:func:`simulator.service.saturation_rps` of ``max_replicas`` replicas. With several serving configurations the
bound takes the fastest one (the smallest batch-1 time, the largest saturation rate) and ``2 x max_replicas``
replicas (a rolling update, maxSurge 100 %, serves with old and new replicas at once).

``model`` (in the functions below): the scenario's :class:`~simulator.service.ServiceModel`, if already
built, or a list of them, one per serving configuration (:func:`simulator.variants.serving_models`).

The budget (:func:`memory_budget`): the ``budget`` argument (``--memory-budget``), else the
environment variable ``SERVESIM_MEMORY_BUDGET``, else half of the machine's memory. Sizes
are bytes, or a number with ``K``, ``M``, ``G`` or ``T`` (powers of 1024; ``GB`` and ``GiB``
mean the same).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from simulator.config import ConfigError, Scenario

# peak bytes per item (tracemalloc, 200k requests / 30k ticks / 100k users; see the module docstring).
# Records, fast engine: 48 B kept (arrays sized for the expected requests up front) + the summary's
# percentile and the Parquet writer's temporaries, peak 70 B; reference engine: Python lists, 191 B.
RECORD_BYTES = {"fast": 72, "reference": 192}
TIMELINE_ROW_BYTES = 750
USER_BYTES = {"fast": 240, "reference": 1600}
SLOT_ITEM_BYTES = 24            # a batch slot's arrival time, request id and user (8 bytes each)
MIN_CYCLE_S = 1e-3              # the engines' floor on a failing closed-loop user's think + overhead
BUDGET_ENV = "SERVESIM_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_size(text: str | int | float, what: str = BUDGET_ENV) -> int:
    """``'8G'``, ``'512M'``, ``'1.5e9'``, ``2**30`` -> bytes; ConfigError naming ``what`` otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        v = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTkmgt]?)(?:i?[Bb])?\s*", str(text))
        if not m:
            raise ConfigError(f"{what}: must be a size in bytes, e.g. 8G, 512M or 2000000000 (got {text!r})")
        try:
            v = float(m.group(1)) * _UNITS[m.group(2).upper()]
        except ValueError:
            raise ConfigError(f"{what}: must be a size in bytes, e.g. 8G, 512M or 2000000000 (got {text!r})") \
                from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{what}: must be a positive size (got {text!r})")
    return int(v)


def format_size(n: float) -> str:
    for unit, div in (("TB", 2 ** 40), ("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B"


def machine_memory_bytes() -> int:
    """Physical memory of this machine (``sysconf``)."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_budget(budget: str | int | float | None = None) -> tuple[int, str]:
    """(bytes, where it came from): ``budget`` if given, else ``$SERVESIM_MEMORY_BUDGET``, else half
    the machine's memory."""
    if budget is not None:
        return parse_size(budget, "--memory-budget"), "--memory-budget"
    env = os.environ.get(BUDGET_ENV)
    if env:
        return parse_size(env, BUDGET_ENV), BUDGET_ENV
    return machine_memory_bytes() // 2, "half the machine's memory"


def _models(sc: Scenario, model) -> list:
    """``model`` (see the module docstring) as a list of service models, one per serving configuration."""
    if isinstance(model, (list, tuple)):
        return list(model)
    from simulator.service import build_service_model
    return [model or build_service_model(sc.service, sc.batching.max_batch_size)]


def expected_requests(sc: Scenario, model=None) -> float:
    """Requests the run is expected to send (closed loop: an upper bound); see the module docstring."""
    wl = sc.workload
    if wl.kind != "closed_loop":
        from simulator.workload import expected_arrivals
        return expected_arrivals(wl, sc.duration_s, sc.seed)
    from simulator.service import saturation_rps
    models = _models(sc, model)
    b, c = sc.batching, sc.cluster
    fail_fast = b.max_queue_size > 0 or b.queue_timeout_us > 0 or c.min_replicas == 0
    fastest_ms = min(m.mean_ms(1) for m in models)
    floor_s = sc.service.overhead.mean_value * 1e-3 + (0.0 if fail_fast else fastest_ms * 1e-3)
    rate = wl.users / max(wl.think.mean_value + floor_s, MIN_CYCLE_S)
    if not fail_fast:
        surge = 2 if len(models) > 1 else 1
        rate = min(rate, max(saturation_rps(sc, surge * c.max_replicas, m) for m in models))
    return rate * sc.duration_s


def slot_batch_size(sc: Scenario, model=None) -> int:
    """The batch size the fast engine's replica slots are sized for: ``batching.max_batch_size``, or with
    several serving configurations the largest of theirs."""
    if isinstance(model, (list, tuple)):
        return max(m.max_batch for m in model)
    return sc.batching.max_batch_size


@dataclass(frozen=True)
class MemoryEstimate:
    requests: float               # expected requests (closed loop: an upper bound)
    parts: dict                   # bytes per part: records, timeline, users, slots
    budget: int                   # bytes
    budget_source: str

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    def max_records(self, engine: str) -> int:
        """Request records that fit in what the budget leaves after the other parts."""
        rest = self.budget - sum(v for k, v in self.parts.items() if k != "records")
        return max(0, int(rest // RECORD_BYTES[engine]))


def estimate_memory(sc: Scenario, engine: str = "fast", budget: str | int | float | None = None,
                    model=None) -> MemoryEstimate:
    """The run's memory by part (see the module docstring) and the budget it is held to."""
    n = expected_requests(sc, model)
    b, c = sc.batching, sc.cluster
    parts = {"records": n * RECORD_BYTES[engine] if sc.record_requests else 0.0,
             "timeline": sc.duration_s / sc.autoscaler.interval_s * TIMELINE_ROW_BYTES,
             "users": sc.workload.users * USER_BYTES[engine] if sc.workload.kind == "closed_loop" else 0.0,
             "slots": (2 * c.max_replicas + 2) * b.instances * slot_batch_size(sc, model) * SLOT_ITEM_BYTES
             if engine == "fast" else 0.0}
    size, source = memory_budget(budget)
    return MemoryEstimate(requests=n, parts=parts, budget=size, budget_source=source)


def check_memory(sc: Scenario, engine: str = "fast", budget: str | int | float | None = None,
                 model=None) -> MemoryEstimate:
    """:func:`estimate_memory`, refused with one ConfigError line if it exceeds the budget."""
    est = estimate_memory(sc, engine, budget, model)
    if est.total <= est.budget:
        return est
    need, limit = format_size(est.total), f"{format_size(est.budget)} ({est.budget_source})"
    part = max(est.parts, key=est.parts.get)
    if part == "records":
        fix = ("set record_requests: false (--no-records) to keep bounded summaries only, or shorten duration_s")
        what = f"{est.requests:.3g} requests recorded at {RECORD_BYTES[engine]} B each"
    elif part == "timeline":
        fix = "shorten duration_s or lengthen autoscaler.interval_s"
        what = f"{sc.duration_s / sc.autoscaler.interval_s:.3g} control intervals in the timeline"
    elif part == "users":
        fix = "use fewer workload.users"
        what = f"{sc.workload.users} closed-loop users"
    else:
        fix = "lower cluster.max_replicas, batching.instances or batching.max_batch_size"
        what = f"{2 * sc.cluster.max_replicas + 2} replica slots x {sc.batching.instances} instances x " \
               f"batches of {slot_batch_size(sc, model)}"
    raise ConfigError(f"this run would need about {need} of memory ({what}), over the memory budget of "
                      f"{limit}: {fix} (or raise the budget with --memory-budget / {BUDGET_ENV})")


def records_overflow(est: MemoryEstimate, engine: str, t: float) -> ConfigError:
    """The error of a run whose request records outgrow the budget while it runs (the estimate was low)."""
    return ConfigError(f"request records outgrew the memory budget of {format_size(est.budget)} "
                       f"({est.budget_source}) at {est.max_records(engine):,} requests (t = {t:.6g} s; "
                       f"{est.requests:.3g} were expected): set record_requests: false (--no-records) to keep "
                       f"bounded summaries only, or shorten duration_s (or raise the budget with --memory-budget "
                       f"/ {BUDGET_ENV})")


__all__ = ["RECORD_BYTES", "TIMELINE_ROW_BYTES", "USER_BYTES", "BUDGET_ENV", "MemoryEstimate", "parse_size",
           "format_size", "machine_memory_bytes", "memory_budget", "expected_requests", "slot_batch_size",
           "estimate_memory", "check_memory", "records_overflow"]
