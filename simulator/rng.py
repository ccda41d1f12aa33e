"""Counter-based random numbers: one uniform per (seed, stream, a, b).

Both engines (the fast data plane and the per-request SimPy reference) draw the
same random quantity from the same key, whatever order they visit events in,
so they give identical per-request results for the same seed. The mixer is
SplitMix64's finaliser (Steele, Lea & Flood 2014), applied to a combination of
the key words; the top 53 bits give a double in (0, 1).

Streams (the ``stream`` word):
    SERVICE   (a=replica id, b=batch index on that replica)
    OVERHEAD  (a=request id, b=0)
    LB        (a=request id, b=0)     random load balancing
    THINK     (a=user id, b=request index of that user)
    STARTUP   (a=replica id, b=0)
"""
from __future__ import annotations

import numpy as np
from numba import njit

SERVICE, OVERHEAD, LB, THINK, STARTUP, ARRIVAL = 1, 2, 3, 4, 5, 6

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def uniform(seed, stream, a, b):
    """A double in the open interval (0, 1), a pure function of its four integer arguments."""
    z = _mix(np.uint64(seed) * _G + np.uint64(stream))
    z = _mix(z + np.uint64(a) * _G)
    z = _mix(z ^ (np.uint64(b) * _G + _G))
    return ((z >> np.uint64(11)).item() + 0.5) * (1.0 / 9007199254740992.0)
