"""The node-contention rule (simulator.contention), hand-computed."""
import numpy as np
import pytest

from simulator.contention import contention_factor, new_rate_window, node_rate, note_arrival


@pytest.mark.parametrize("k, cores, interference, rate_cores, rate_contention, r, expected", [
    (5, 2, 0.0, 0.0, 0.0, 300.0, 1.0),          # everything off
    (1, 2, 0.25, 0.0, 0.0, 0.0, 1.0),           # a core to spare
    (2, 2, 0.25, 0.0, 0.0, 0.0, 1.0),           # exactly as many batches as cores
    (3, 2, 0.25, 0.0, 0.0, 0.0, 1.25),          # 1 + 0.25 * (3 - 2)
    (5, 2, 0.25, 0.0, 0.0, 0.0, 1.75),          # 1 + 0.25 * (5 - 2)
    (3, 0, 0.1, 0.0, 0.0, 0.0, 1.3),            # node_cores 0: every batch counts
    (3, 2, 0.25, 0.01, 0.0, 50.0, 1.375),       # 1 + 0.25 * (3 + 0.01 * 50 - 2)
    (1, 2, 0.25, 0.01, 0.0, 50.0, 1.0),         # 1 + 0.5 - 2 < 0: request handling fits the spare core
    (2, 2, 0.25, 0.01, 0.0, 50.0, 1.125),       # 2 + 0.5 - 2 = 0.5
    (3, 2, 0.0, 0.01, 0.0, 50.0, 1.0),          # rate_cores acts only through the interference term
    (1, 2, 0.0, 0.0, 0.002, 100.0, 1.2),        # 1 + 0.002 * 100
    (3, 2, 0.25, 0.0, 0.002, 100.0, 1.5),       # 1.25 * 1.2
    (1, 2, 0.0, 0.0, 0.002, 0.0, 1.0),          # no arrivals in the last bin
])
def test_contention_factor(k, cores, interference, rate_cores, rate_contention, r, expected):
    assert contention_factor(k, float(cores), interference, rate_cores, rate_contention, r) == \
        pytest.approx(expected, rel=1e-12)


def test_node_rate_counts_the_last_complete_bin():
    rw = new_rate_window()
    w = 0.5
    assert node_rate(rw, 0.2, w) == 0.0                     # nothing counted yet
    for t in (0.1, 0.2, 0.4):                               # bin 0: three arrivals
        note_arrival(rw, t, w)
    assert node_rate(rw, 0.45, w) == 0.0                    # bin 0 is not complete yet
    assert node_rate(rw, 0.7, w) == 3 / w                   # in bin 1: bin 0's count
    note_arrival(rw, 0.6, w)                                # bin 1: one arrival
    assert node_rate(rw, 0.9, w) == 3 / w                   # still bin 0's count while in bin 1
    assert node_rate(rw, 1.2, w) == 1 / w                   # in bin 2: bin 1's count
    assert node_rate(rw, 1.6, w) == 0.0                     # in bin 3: bin 2 had no arrivals
    note_arrival(rw, 2.1, w)                                # bin 4, after two empty bins
    assert node_rate(rw, 2.2, w) == 0.0                     # bin 3 was empty (not bin 1's count)
    assert node_rate(rw, 2.6, w) == 1 / w
    np.testing.assert_array_equal(rw, [4.0, 1.0, 0.0])
