"""Regression: batching delay timers late in a long run (float precision of absolute times)."""
import numpy as np
import pytest

from simulator import scenario_from_dict, simulate
from simulator.batching import batch_decision


def test_timer_fires_exactly_at_large_times():
    pref = np.zeros(0, dtype=np.int64)
    oldest = 86_123.456789
    n, deadline = batch_decision(3, oldest, oldest + 1e-4, 8, pref, 2000.0)
    assert n == 0 and deadline == oldest + 2000.0 * 1e-6
    n, _ = batch_decision(3, oldest, deadline, 8, pref, 2000.0)     # firing at the deadline sends
    assert n == 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_batching_a_day_into_the_run(engine):
    # idle for a day, then 20 s of load that relies on delay-timer expiry (no preferred sizes reached)
    sc = scenario_from_dict({
        "seed": 3, "duration_s": 86_420, "warmup_s": 86_390, "record_requests": False,
        "workload": {"kind": "schedule", "segments": [
            {"kind": "constant", "duration_s": 86_400, "rate_rps": 0},
            {"kind": "constant", "duration_s": 20, "rate_rps": 50}]},
        "service": {"kind": "gamma", "mean_ms": 4, "cv": 0.3},
        "batching": {"max_batch_size": 8, "max_queue_delay_us": 2000},
        "autoscaler": {"kind": "static", "interval_s": 60}})
    s = simulate(sc, engine=engine).summary
    assert s["requests"] > 0 and s["completed"] == s["requests"]
    # every request waits at most the 2 ms delay plus a batch in service (light load)
    assert s["queue_ms"]["mean"] < 2.0 + 4 * 3
