import numpy as np
import pytest
from scipy import stats

from simulator.config import Dist, ServiceSpec
from simulator.rng import uniform
from simulator.service import build_service_model, draw, quantile_function


def sample(model, b, n=200_000, seed=5):
    return np.array([draw(model.table[b - 1], uniform(seed, 1, 0, i)) for i in range(n)])


@pytest.mark.parametrize("d,dist", [
    (Dist("exponential", 10, 1), stats.expon(scale=10)),
    (Dist("gamma", 10, 0.5), stats.gamma(4, scale=2.5)),
    (Dist("lognormal", 10, 0.8), stats.lognorm(np.sqrt(np.log(1.64)), scale=10 / np.sqrt(1.64))),
    (Dist("gamma", 10, 0.5, shift=4), stats.gamma(4, loc=4, scale=1.5)),
])
def test_draws_follow_the_generating_distribution(d, dist):
    m = build_service_model(ServiceSpec(per_batch=((1, d),)), 1)
    x = sample(m, 1)
    assert stats.kstest(x, dist.cdf).pvalue > 0.001
    assert abs(x.mean() / dist.mean() - 1) < 0.01
    assert abs(m.mean_ms(1) / dist.mean() - 1) < 1e-4


def test_weibull_cv_and_empirical():
    m = build_service_model(ServiceSpec(per_batch=((1, Dist("weibull", 10, 0.4)),)), 1)
    x = sample(m, 1)
    assert abs(x.std() / x.mean() - 0.4) < 0.01 and abs(x.mean() - 10) < 0.05
    q = (1.0, 2.0, 4.0, 8.0, 20.0)
    e = build_service_model(ServiceSpec(per_batch=((1, Dist("empirical", quantiles=q)),)), 1)
    np.testing.assert_allclose(quantile_function(Dist("empirical", quantiles=q), [0.5, 0.625]), [4.0, 6.0])
    x = sample(e, 1)
    assert x.min() >= 1.0 and x.max() <= 20.0 and abs(np.median(x) - 4.0) < 0.05


def test_interpolation_between_and_beyond_listed_sizes():
    spec = ServiceSpec(per_batch=((1, Dist("deterministic", 4.0, 0)), (5, Dist("deterministic", 12.0, 0))))
    m = build_service_model(spec, 8)
    # linear between 1 and 5 (slope 2 ms/item), extended with the same slope above 5
    np.testing.assert_allclose([m.mean_ms(b) for b in range(1, 9)], [4, 6, 8, 10, 12, 14, 16, 18], rtol=1e-6)
    one = build_service_model(ServiceSpec(per_batch=((1, Dist("gamma", 10, 0.3)),), batch_slope=0.5), 4)
    np.testing.assert_allclose([one.mean_ms(b) for b in (1, 2, 4)], [10, 15, 25], rtol=1e-4)
    # quantile mixing keeps the shape: the cv at b=4 equals the cv at b=1 when only scaled
    x1, x4 = sample(one, 1, 50_000), sample(one, 4, 50_000)
    assert abs(x1.std() / x1.mean() - x4.std() / x4.mean()) < 0.005
