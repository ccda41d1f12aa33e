"""The real dynamic batcher against rule 2 of :mod:`simulator.batching`, on the bundled Triton (``cluster.probe``).

One instance busy with a 12-item request (~50 ms); B arrives 12 ms later, C 40 ms later. With a 5 ms queue
delay B's delay expires while the instance is busy and B is sealed alone: C runs in a batch of its own. With
delay 0, B and C run together. With C at 25 ms and D at 61 ms (after the instance started B), C and D run
together: starting the sealed batch did not seal C. The simulator's hand-computed timelines of the same
patterns are ``test_simulator_batcher_timelines.test_delay_seals_one_batch_ahead`` and
``test_starting_a_sealed_batch_does_not_seal_the_next``. Eight repetitions each; Python threads' send instants
wobble by a millisecond or more on a loaded machine, so a majority (not every repetition) must show the pattern.
"""
from __future__ import annotations

import pytest

from cluster.probe import probe
from cluster.stack import procs
from helpers import real_stack_prerequisites

pytestmark = [pytest.mark.slow, pytest.mark.realserver]


@pytest.fixture(scope="module", autouse=True)
def prerequisites():
    real_stack_prerequisites(export_builtin=False)
    from cluster.stack.builtins import builtin_export
    builtin_export("text_encoder_small")


@pytest.mark.parametrize("delay_us, pattern, expected, other", [
    (5000, [0, 12, 40], (12, 1, 1), (12, 2)),
    (0, [0, 12, 40], (12, 2), (12, 1, 1)),
    (5000, [0, 12, 25, 61], (12, 2, 1), (12, 1, 1, 1)),
])
def test_delay_seals_one_batch_ahead_on_the_real_server(delay_us, pattern, expected, other):
    res = probe(delay_us, pattern, reps=8, first_batch=12)
    per_rep = dict(res["per_rep"])
    assert sum(per_rep.values()) == 8
    assert per_rep.get(expected, 0) >= 5, (res["per_rep"], res["send_ms_mean"])
    assert per_rep.get(expected, 0) > per_rep.get(other, 0)
    assert procs.live_children() == []


def test_bad_pattern_is_refused_before_any_server_starts():
    with pytest.raises(ValueError, match="pattern"):
        probe(5000, [3, 1])
    assert procs.live_children() == []
