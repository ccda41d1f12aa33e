"""The one measured-vs-simulated comparison (calibration.compare): a side's summary, relative errors and
the two target sets, by hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.compare import (CALIBRATION_METRICS, CALIBRATION_TARGETS, VALIDATION_METRICS, VALIDATION_TARGETS,
                                 compare, rel_err, replica_seconds, summarize_side)


def test_summaries_and_relative_errors():
    assert rel_err(110.0, 100.0) == pytest.approx(0.10)
    assert rel_err(90.0, 100.0) == pytest.approx(-0.10)
    assert math.isnan(rel_err(1.0, 0.0)) and math.isnan(rel_err(float("nan"), 1.0))
    # replica time: [requested, gone) clipped to the window; inf = alive at the end
    assert replica_seconds([(-3.0, math.inf), (20.0, 50.0), (70.0, 200.0)], 10.0, 100.0) == pytest.approx(90 + 30 + 30)
    t = np.array([1.0, 12.0, 13.0, 14.0, 15.0, 99.0, 120.0])
    lat = np.array([500.0, 10.0, 20.0, 40.0, np.nan, 10.0, 5.0])
    ok = np.array([True, True, True, True, False, True, True])
    s = summarize_side(t, lat, ok, 10.0, 100.0, 30.0, replicas=[(0.0, math.inf)])
    assert s["requests"] == 5 and s["failures"] == 1 and s["late"] == 1
    assert s["slo_violation_rate"] == pytest.approx(2 / 5)
    assert s["p50_ms"] == pytest.approx(15.0)
    assert s["replica_seconds"] == pytest.approx(90.0) and s["mean_replicas"] == pytest.approx(1.0)
    # pooled copies (simulated seeds): per-run counts and cost, pooled percentiles
    s2 = summarize_side(np.r_[t, t], np.r_[lat, lat], np.r_[ok, ok], 10.0, 100.0, 30.0, copies=2,
                        replicas=[(0.0, math.inf)] * 2)
    assert s2["requests"] == 5 and s2["replica_seconds"] == pytest.approx(90.0)
    assert s2["p50_ms"] == pytest.approx(15.0) and s2["slo_violation_rate"] == pytest.approx(0.4)
    c = compare({**s, "scaling_actions": 2}, {**s, "replica_seconds": 99.0, "p95_ms": s["p95_ms"] * 1.2,
                                              "scaling_actions": 2}, VALIDATION_METRICS, VALIDATION_TARGETS)
    assert c["replica_seconds"]["rel_err"] == pytest.approx(0.10) and c["replica_seconds"]["within_target"]
    assert c["p95_ms"]["rel_err"] == pytest.approx(0.2) and not c["p95_ms"]["within_target"]
    assert c["slo_violation_rate"]["abs_err"] == 0
    # the same side in the calibration's terms: failure rate and SLO attainment are its complements
    assert s["failure_rate"] == pytest.approx(1 / 5) and s["slo_attainment"] == pytest.approx(3 / 5)
    assert s["slo_attainment"] == pytest.approx(1 - s["slo_violation_rate"])
    assert s["throughput_rps"] == pytest.approx(4 / 90)


def test_unsent_measured_requests_count_as_failures():
    # a measured request never sent (t_send NaN) is a failure of the run, whatever the window
    s = summarize_side([np.nan, 20.0, 30.0], [np.nan, 10.0, 10.0], [False, True, True], 10.0, 100.0, 50.0)
    assert s["requests"] == 3 and s["failures"] == 1 and s["failure_rate"] == pytest.approx(1 / 3)
    assert "replica_seconds" not in s          # no replica history given


def test_calibration_targets_relative_and_absolute():
    real = {"p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 30.0, "throughput_rps": 100.0, "slo_attainment": 0.95,
            "mean_ms": 12.0, "failure_rate": 0.0}
    sim = {"p50_ms": 10.9, "p95_ms": 22.5, "p99_ms": 34.0, "throughput_rps": 97.5, "slo_attainment": 0.975,
           "mean_ms": 12.0, "failure_rate": 0.0}
    c = compare(real, sim)                       # the calibration's metrics and targets by default
    assert set(c) == set(CALIBRATION_METRICS)
    assert c["p50_ms"]["within_target"] and c["p50_ms"]["target"] == "rel <= 0.1"
    assert not c["p95_ms"]["within_target"]      # +12.5 % > 10 %
    assert c["p99_ms"]["within_target"]          # +13.3 % <= 15 %
    assert c["throughput_rps"]["within_target"]  # -2.5 % within 3 %
    # SLO attainment is judged in absolute points: +2.5 points > 2
    assert c["slo_attainment"]["abs_err"] == pytest.approx(0.025) and not c["slo_attainment"]["within_target"]
    assert "target" not in c["mean_ms"] and math.isnan(c["failure_rate"]["rel_err"])
    assert set(CALIBRATION_TARGETS) <= set(CALIBRATION_METRICS) and set(VALIDATION_TARGETS) <= set(VALIDATION_METRICS)
