"""Fitted parameters against known generating distributions."""
import numpy as np
import pytest
from scipy import stats

from calibration.fitting import fit_duration, fit_interference, fit_mean_curve


@pytest.mark.parametrize("family,dist,mean,cv,shift", [
    ("gamma", stats.gamma(4, scale=2.5), 10.0, 0.5, 0.0),
    ("lognormal", stats.lognorm(0.6, scale=20.0), 20.0 * np.exp(0.18), np.sqrt(np.exp(0.36) - 1), 0.0),
    ("shifted_exponential", stats.expon(loc=5, scale=3), 8.0, 1.0, 5.0),
    ("shifted_gamma", stats.gamma(3, loc=12, scale=1.0), 15.0, 1 / np.sqrt(3), 12.0),
])
def test_recovers_generating_family_and_moments(family, dist, mean, cv, shift):
    x = dist.rvs(size=4000, random_state=np.random.default_rng(2))
    f = fit_duration(x)
    assert f.chosen == family, f.report()
    assert abs(f.dist.mean / mean - 1) < 0.03
    assert abs(f.dist.cv - cv) < 0.06
    assert abs(f.dist.shift - shift) < 0.05 * max(mean, 1)


def test_bimodal_falls_back_to_empirical_quantiles():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(10, 0.3, 2000), rng.normal(30, 0.3, 2000)])
    f = fit_duration(x)
    assert f.chosen == "empirical" and "KS distance" in f.note
    assert abs(np.median(f.dist.quantiles) - np.median(x)) < 5


def test_too_few_or_bad_samples_are_errors():
    with pytest.raises(ValueError, match="only 5 samples"):
        fit_duration([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="non-positive"):
        fit_duration(np.r_[np.ones(40), -1.0])


def test_mean_curve_and_interference():
    c = fit_mean_curve([1, 2, 4, 8], [5.0, 7.0, 11.0, 19.0])
    assert abs(c["intercept_ms"] - 3.0) < 1e-9 and abs(c["per_item_ms"] - 2.0) < 1e-9 and c["r2"] > 0.999
    f = fit_interference([1, 2, 3, 4], [1.0, 1.0, 1.3, 1.6], node_cores=2)
    assert abs(f["alpha"] - 0.3) < 1e-9 and f["rms"] < 1e-9


def _unit_model():
    from simulator import scenario_from_dict
    from simulator.service import build_service_model
    sc = scenario_from_dict({"service": {"per_batch": {1: {"kind": "deterministic", "mean_ms": 10},
                                                       4: {"kind": "deterministic", "mean_ms": 22}}},
                             "batching": {"max_batch_size": 4}, "workload": {"kind": "poisson", "rate_rps": 1}})
    return build_service_model(sc.service, 4)


def test_mix_mean_weighs_each_request_by_its_batch():
    from calibration.calibrate import mix_mean_ms
    unit = _unit_model()
    # sizes 2 and 3 interpolate the listed ones: 14 and 18 ms
    assert [round(unit.mean_ms(b), 9) for b in (1, 2, 3, 4)] == [10, 14, 18, 22]
    # half the batches of size 1, half of size 4: requests 0.5 x 1 and 0.5 x 4 -> (0.5*10 + 2*22) / 2.5 = 19.6
    assert mix_mean_ms({1: 0.5, 4: 0.5}, unit) == pytest.approx(19.6)
    assert mix_mean_ms({2: 1.0}, unit) == pytest.approx(14.0)
    assert np.isnan(mix_mean_ms({}, unit)) and np.isnan(mix_mean_ms({9: 1.0}, unit))


def test_relative_compute_is_the_speed_whatever_the_batch_mix():
    """A run and a replay at the same speed (1.1 x the sweep) but with different batch sizes: per-request compute
    differs by 2x, the relative compute does not (so the contention fit does not read the mix as speed)."""
    from calibration.calibrate import relative_compute
    unit = _unit_model()
    run_mix, replay_mix = {1: 0.5, 4: 0.5}, {1: 1.0}
    run_ms, replay_ms = 1.1 * 19.6, 1.1 * 10.0
    assert run_ms / replay_ms == pytest.approx(1.96)
    assert relative_compute(run_ms, run_mix, unit) == pytest.approx(1.1)
    assert relative_compute(replay_ms, replay_mix, unit) == pytest.approx(1.1)
    # without a batch-size distribution (no batches.csv): plain compute per request
    assert relative_compute(run_ms, None, unit) == run_ms and relative_compute(run_ms, {}, None) == run_ms
