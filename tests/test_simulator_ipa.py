"""The IPA-style configurator (simulator.ipa): decisions computed by hand, the exactness of enumeration against
brute force over replica counts too, and the fallback when nothing meets the constraints."""
import itertools
import math

import pytest

from simulator.ipa import StageOption, batch_wait_ms, configure, path_latency_ms, replicas_needed

# stage A: two variants at batch 1 and 4; stage B: one variant at batch 1 (ms are mean batch compute)
A = [StageOption("small", 0.7, 1, 10.0), StageOption("small", 0.7, 4, 20.0),
     StageOption("large", 0.8, 1, 30.0), StageOption("large", 0.8, 4, 60.0)]
B = [StageOption("only", 1.0, 1, 5.0)]


def test_terms_by_hand():
    assert batch_wait_ms(4, 100.0) == pytest.approx(30.0)          # 3 more requests at 100/s
    assert batch_wait_ms(1, 0.0) == 0.0 and math.isinf(batch_wait_ms(4, 0.0))
    assert A[3].throughput_rps == pytest.approx(66.666, rel=1e-4)   # 4 per 60 ms
    assert replicas_needed(A[3], 100.0, 1.0, 1) == 2                # 100 / 66.7 -> 2
    assert replicas_needed(A[2], 100.0, 1.0, 1) == 3                # 100 / 33.3 -> 3 (no float spill to 4)
    assert replicas_needed(A[0], 100.0, 0.8, 1) == 2                # 100 / (100 * 0.8)
    assert path_latency_ms([A[3], B[0]], 100.0) == pytest.approx(60 + 30 + 5)


def test_decisions_by_hand():
    # lambda 100/s, utilisation cap 1, replica weight 0.01: large@4 x2 + only x1 = 0.8 - 0.03 - 5e-4 is best
    ch, ok = configure([A, B], 100.0, 100.0, max_utilization=1.0)
    assert ok and [(c.variant, c.batch, c.replicas) for c in ch] == [("large", 4, 2), ("only", 1, 1)]
    # SLO 90 ms: large@4 needs 95 ms; large@1 x3 (0.8 - 0.04) beats small (0.7 - 0.02)
    ch, ok = configure([A, B], 100.0, 90.0, max_utilization=1.0)
    assert ok and [(c.variant, c.batch, c.replicas) for c in ch][0] == ("large", 1, 3)
    # replicas dear (0.1 each): small@1 x1 (0.7 - 0.2) beats large@4 x2 (0.8 - 0.3)
    ch, ok = configure([A, B], 100.0, 100.0, replica_weight=0.1, max_utilization=1.0)
    assert ok and (ch[0].variant, ch[0].batch, ch[0].replicas) == ("small", 1, 1)
    # product vs mean does not matter with stage B at accuracy 1 and one variant... but the rule is applied
    ch2, _ = configure([A, B], 100.0, 100.0, accuracy_rule="mean", max_utilization=1.0)
    assert (ch2[0].variant, ch2[0].batch) == ("large", 4)


def test_enumeration_is_exact_against_brute_force_over_replicas():
    lam, slo = 140.0, 120.0
    ch, ok = configure([A, B], lam, slo, max_utilization=0.9, max_replicas=[6, 6])
    best = None
    for oa, ob in itertools.product(A, B):
        for na, nb in itertools.product(range(1, 7), range(1, 7)):
            if na * oa.throughput_rps * 0.9 < lam or nb * ob.throughput_rps * 0.9 < lam:
                continue
            if path_latency_ms([oa, ob], lam) > slo:
                continue
            v = oa.accuracy * ob.accuracy - 0.01 * (na + nb) - 1e-4 * (oa.batch + ob.batch)
            if best is None or v > best[0] + 1e-12:
                best = (v, (oa.variant, oa.batch, na), (ob.variant, ob.batch, nb))
    assert ok and [(c.variant, c.batch, c.replicas) for c in ch] == [best[1], best[2]]


def test_fallback_when_nothing_fits():
    ch, ok = configure([A, B], 1000.0, 100.0, max_utilization=1.0, max_replicas=[3, 3])
    assert not ok
    assert (ch[0].variant, ch[0].batch, ch[0].replicas) == ("small", 4, 3)     # highest throughput, capped
    assert ch[1].replicas == 3
