"""The overhead-spread stage: fitted on training runs' client-latency quantiles, recovers the truth."""
import math

import pytest

import calib_synth as syn
from calibration.calibrate import calibrate, quantile_loss, shared_fits
from calibration.measurements import load_measurements


def test_quantile_loss_arithmetic():
    m = {"p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 40.0}
    s = {"p50_ms": 10.0, "p95_ms": 20.0 * math.e, "p99_ms": 40.0 / math.e}
    assert abs(quantile_loss(m, s) - 2.0) < 1e-12          # 0^2 + 1^2 + (-1)^2
    assert quantile_loss(m, {"p50_ms": float("nan")}) == 0.0


@pytest.mark.parametrize("run_cv,allowed", [
    (None, {"sweep_shape", "lognormal_cv0.5", "lognormal_cv1"}),  # runs as wide as the sweep (cv 0.4)
    (3.0, {"lognormal_cv2", "lognormal_cv3", "lognormal_cv4.5"}),  # runs far wider than the idle sweep
])
def test_spread_recovered_from_training_runs(tmp_path, run_cv, allowed):
    # the three runs cut to 25 s each (~1.7-2.7 k requests: enough for p99; the classes below are coarse)
    runs = [(n, {**set_, "duration_s": 25}, ev) for n, set_, ev in syn.RUNS if n in ("const1", "const2", "baseline")]
    root = syn.write_folder(tmp_path / "synthetic", runs=runs, sweep_samples=200, run_overhead_cv=run_cv)
    meas = load_measurements(str(root))
    sc, info = calibrate(meas, list(meas.runs.values()), shared_fits(meas), seeds=(0,))
    spread = info["overhead"]["spread"]
    assert spread["chosen"] in allowed, spread
    assert abs(sc.service.overhead.mean_value / syn.OVERHEAD[0] - 1) < 0.1
