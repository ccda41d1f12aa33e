"""Node contention as pure compiled functions, shared by both engines.

Replicas share one node's cores (``ClusterSpec``: ``node_cores``, ``interference``,
``rate_cores``, ``rate_contention``, ``rate_window_s``; all 0 = off). A batch that starts
executing at ``t`` has its drawn compute time multiplied by :func:`contention_factor`::

    (1 + interference * max(0, k + rate_cores * r - node_cores)) * (1 + rate_contention * r)

- ``k``: batches executing on the node once this one has started (itself included);
- ``r``: the node's arrival rate (req/s) over the last *complete* ``rate_window_s`` bin
  before ``t`` (time cut in fixed bins ``[j w, (j+1) w)``; :func:`node_rate`), counted by
  :func:`note_arrival` on every arrival;
- the first term is shared-core interference: more runnable batches (plus ``rate_cores * r``
  cores of request handling) than cores slow every one of them down; it is 1 while the
  node has a core to spare. ``interference = 0`` disables it (``rate_cores`` acts only
  through it);
- the second term is CPU contention from request handling outside the model (load
  generator, load balancer, HTTP front end on the same cores), proportional to the rate.

Sources: the form of the interference term is the least-squares model
``slowdown(k) = 1 + interference * max(0, k - node_cores)`` that ``calibration.fit`` fits to
the measured interference sweep (``sweep/interference.csv``: per-batch compute time with
``k`` batches executing at once on a ``node_cores``-core node); the rate terms are fitted by
calibration from the runs' Triton compute counters against the node's request rate
(README, "Calibration"). The rule is stated where users set the keys, in
:class:`simulator.config.ClusterSpec`.

The rate window's state is a float64 array ``[bin index, arrivals in that bin, arrivals
in the bin before]`` (:func:`new_rate_window`), owned by the engine.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

RW_BIN, RW_CUR, RW_PREV = 0, 1, 2


def new_rate_window() -> np.ndarray:
    """State of :func:`note_arrival` / :func:`node_rate` before the first arrival."""
    return np.array([-1.0, 0.0, 0.0])


@njit(cache=True)
def note_arrival(rw, t, window_s):
    """Count an arrival at ``t`` in its ``window_s`` bin (``rw``: see :func:`new_rate_window`)."""
    b = math.floor(t / window_s)
    if b == rw[RW_BIN]:
        rw[RW_CUR] += 1.0
    else:
        rw[RW_PREV] = rw[RW_CUR] if b == rw[RW_BIN] + 1.0 else 0.0
        rw[RW_CUR] = 1.0
        rw[RW_BIN] = b


@njit(cache=True)
def node_rate(rw, t, window_s):
    """Node arrival rate (req/s) over the last complete ``window_s`` bin before ``t``."""
    b = math.floor(t / window_s)
    if b == rw[RW_BIN]:
        return rw[RW_PREV] / window_s
    if b == rw[RW_BIN] + 1.0:
        return rw[RW_CUR] / window_s
    return 0.0


@njit(cache=True)
def contention_factor(k, node_cores, interference, rate_cores, rate_contention, r):
    """Multiplier of a batch's compute time: ``k`` batches executing (itself included), node
    arrival rate ``r`` req/s; see the module docstring for the rule and its sources."""
    f = 1.0
    if interference > 0.0:
        extra = k - node_cores + rate_cores * r
        if extra > 0.0:
            f = 1.0 + interference * extra
    if rate_contention > 0.0:
        f *= 1.0 + rate_contention * r
    return f
