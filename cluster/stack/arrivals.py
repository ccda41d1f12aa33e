"""Arrival instants and duration samples for the real load generator.

Both come from the simulator's own definitions, so the real load and the
simulated load are the same sequence for the same seed:

- :func:`arrival_times` is :func:`simulator.workload.arrival_times`;
- :func:`sample_dist` draws from a :class:`~simulator.config.Dist` through its
  exact quantile function (:func:`simulator.service.quantile_function`).
"""
from __future__ import annotations

import numpy as np

from simulator.config import Dist
from simulator.service import quantile_function
from simulator.workload import arrival_times

__all__ = ["arrival_times", "sample_dist"]


def sample_dist(d: Dist, rng: np.random.Generator, n: int | None = None):
    """Samples of ``d`` (a float when ``n`` is None, else an array of ``n``)."""
    u = rng.uniform(1e-12, 1 - 1e-12, 1 if n is None else n)
    x = quantile_function(d, u)
    return float(x[0]) if n is None else x
