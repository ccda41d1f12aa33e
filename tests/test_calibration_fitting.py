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
