"""The real dynamic batcher against rule 2 of :mod:`simulator.batching`, on the bundled Triton (``cluster.probe``).

One instance busy with an 8-item request (~35 ms); B arrives 14 ms later, C 32 ms later. With a 5 ms queue
delay B's delay expires while the instance is busy and B is sealed alone: C runs in a batch of its own. With
delay 0, B and C run together. The simulator's hand-computed timeline of the same pattern is
``test_simulator_batcher_timelines.test_delay_seals_one_batch_ahead``. Eight repetitions each; the send
instants of Python threads wobble by a few ms, so a majority (not every repetition) must show the pattern.
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


@pytest.mark.parametrize("delay_us, expected, other", [(5000, (8, 1, 1), (8, 2)), (0, (8, 2), (8, 1, 1))])
def test_delay_seals_one_batch_ahead_on_the_real_server(delay_us, expected, other):
    res = probe(delay_us, [0, 14, 32], reps=8)
    per_rep = dict(res["per_rep"])
    assert sum(per_rep.values()) == 8
    assert per_rep.get(expected, 0) >= 5, (res["per_rep"], res["send_ms_mean"])
    assert per_rep.get(expected, 0) > per_rep.get(other, 0)
    assert procs.live_children() == []


def test_bad_pattern_is_refused_before_any_server_starts():
    with pytest.raises(ValueError, match="pattern"):
        probe(5000, [3, 1])
    assert procs.live_children() == []
