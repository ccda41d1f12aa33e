"""The validation load: by default a slice of the shipped Twitter trace at the study's validation peak
(see the package docstring), or any simulator workload block (``--workload``); the initial replicas it
needs."""
from __future__ import annotations

import math
import os

import numpy as np

from rl.common import resolve_path
from simulator.config import ConfigError, Scenario, WorkloadSpec

DEFAULT_TRACE = "simulator/data/traces/twitter_2021_rps_days01-14.csv.gz"
DEFAULT_START_S = 12 * 86400 + 9 * 3600 + 20 * 60      # day 13, 09:20 (held-out days 13-14)
DEFAULT_LENGTH_S = 3000.0                             # 50 trace minutes


def validation_peak(sc: Scenario, slo_target: float) -> tuple[float, str]:
    """The study's validation load (``rl.study`` rule 8) for ``sc``: recorded in its study, else computed."""
    from rl.study import stack_record, study_of, validation_peak_rule
    from simulator.capacity import fleet_capacities
    st = study_of(sc)
    if st is not None:
        return float(st.validation_peak_rps), f"the study's: {st.rules.get('validation_peak_rps', '')}"
    from rl.common import DEFAULTS
    util = float(DEFAULTS["trace"]["target_util"])
    caps = fleet_capacities(sc, sc.cluster.max_replicas, slo_target)
    return validation_peak_rule(float(caps[-1]), util, stack_record(sc).get("max_served_rps"))


def build_workload(a, sc: Scenario, capacity: float) -> tuple[WorkloadSpec, float, dict]:
    """(workload, duration_s, description) of the validation run."""
    from rl.common import load_trace
    if a.workload:
        from simulator.config import load_raw, parse_workload
        raw = load_raw(a.workload)
        if isinstance(raw, dict) and "workload" in raw and "kind" not in raw:
            raw = raw["workload"]
        try:
            wl = parse_workload(raw, "workload", os.path.dirname(os.path.abspath(a.workload)))
        except ConfigError as e:
            raise ConfigError(f"{a.workload}: {e}") from None
        dur = a.duration or 120.0
        return wl, float(dur), {"kind": wl.kind, "source": a.workload, "spec": wl.to_dict()}
    trace = resolve_path(a.trace or DEFAULT_TRACE)
    rates = load_trace(trace)
    start = DEFAULT_START_S if a.start is None else a.start
    length = DEFAULT_LENGTH_S if a.length is None else a.length
    if start < 0 or length <= 0 or start + length > len(rates):
        raise ConfigError(f"--start {start:g} --length {length:g}: outside {trace} ({len(rates)} seconds)")
    dur = float(a.duration or 120.0)
    speedup = length / dur
    x = rates[int(start):int(start + length)]
    p99 = float(np.percentile(x, 99))
    if not p99 > 0:
        raise ConfigError(f"--start {start:g} --length {length:g}: the trace slice has no load")
    rule = "given (--peak-rps)"
    peak = a.peak_rps
    if peak is None:
        peak, rule = validation_peak(sc, a.slo_target)
    if not peak > 0:
        raise ConfigError(f"--peak-rps: must be > 0 (got {peak})")
    scale = round(peak / p99, 4)
    wl = WorkloadSpec(kind="trace", path=trace, column="rps", speedup=speedup, scale=scale, offset_s=float(start),
                      length_s=float(length))
    desc = {"kind": "trace", "trace": trace, "start_s": start, "length_s": length, "speedup": round(speedup, 4),
            "scale": scale, "scale_rule": f"p99 of the slice ({p99:.0f} rps) x scale = peak {peak:.1f} rps: {rule}",
            "mean_rps": round(float(x.mean()) * scale, 2), "p99_rps": round(p99 * scale, 2),
            "max_rps": round(float(x.max()) * scale, 2)}
    return wl, dur, desc


def initial_replicas(arrivals: np.ndarray | None, sc: Scenario, capacity: float, interval_s: float) -> int:
    """Replicas the first two control intervals of load need (+10 %), like rl.common.trace_scenario."""
    c = sc.cluster
    if arrivals is None or not len(arrivals):
        n = c.replicas
    else:
        w = max(2 * interval_s, 10.0)
        r0 = float((arrivals < w).sum()) / w
        n = math.ceil(r0 * 1.1 / max(capacity, 1e-9))
    return int(min(max(n, c.min_replicas, 1), c.max_replicas))

