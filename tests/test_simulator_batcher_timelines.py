"""Hand-computed request timelines for each dynamic-batcher rule, on both engines.

Arrivals are placed exactly with a ``timestamps`` workload (a CSV of seconds; the
workload makes times relative to the first timestamp, so every timeline starts
with an arrival at 0). Service times are deterministic per batch size (all sizes
listed, so nothing is interpolated) and there is no overhead, so every
dispatch and completion instant below follows from the rules in
:mod:`simulator.batching` by hand. All times in the comments are milliseconds.
"""
import math

import pytest

from simulator import scenario_from_dict
from simulator.batching import OK, REJECTED, TIMEOUT
from simulator.engine import Simulation, simulate

ENGINES = ("fast", "reference")


def scenario(tmp_path, arrivals_ms, batching, service_ms, *, replicas=1, lb="round_robin",
             duration_s=1.0, interval_s=0.5, **cluster):
    assert arrivals_ms[0] == 0, "timestamps are relative to the first one"
    p = tmp_path / "arrivals.csv"
    p.write_text("t\n" + "\n".join(repr(a / 1000) for a in arrivals_ms) + "\n")
    return scenario_from_dict({
        "seed": 1, "duration_s": duration_s, "slo_ms": 1000,
        "workload": {"kind": "timestamps", "path": str(p), "column": "t"},
        "service": {"per_batch": {b: {"kind": "deterministic", "mean_ms": ms} for b, ms in service_ms.items()}},
        "batching": batching,
        "cluster": {"replicas": replicas, "load_balancer": lb, **cluster},
        "autoscaler": {"kind": "static", "interval_s": interval_s}})


def check(res, expected):
    """``expected``: one (dispatch_ms, completion_ms, batch_size, status[, replica]) per request."""
    r = res.records
    assert len(r["arrival_s"]) == len(expected)
    for rid, exp in enumerate(expected):
        disp, done, bs, status = exp[:4]
        got = (r["dispatch_s"][rid] * 1e3, r["completion_s"][rid] * 1e3, int(r["batch_size"][rid]),
               int(r["status"][rid]), int(r["replica"][rid]))
        msg = f"request {rid}: expected {exp}, got {got}"
        assert abs(got[0] - disp) < 1e-6 and abs(got[1] - done) < 1e-6, msg
        assert got[2] == bs and got[3] == status, msg
        if len(exp) > 4:
            assert got[4] == exp[4], msg


@pytest.mark.parametrize("engine", ENGINES)
def test_preferred_size_dispatches_at_once(tmp_path, engine):
    sc = scenario(tmp_path, [0, 1, 2, 3, 5, 30, 31],
                  {"max_batch_size": 8, "preferred_batch_sizes": [4], "max_queue_delay_us": 10000},
                  {1: 8, 2: 12, 3: 16, 4: 20, 5: 24, 6: 28, 7: 32, 8: 36})
    check(simulate(sc, engine=engine), [
        # r0..r2 at 0,1,2: q = 1..3, no preferred size <= q, delay (10) not expired: wait.
        # r3 at 3: q = 4 = preferred -> batch of 4 at once at 3; svc(4) = 20 -> done 23.
        (3, 23, 4, OK), (3, 23, 4, OK), (3, 23, 4, OK), (3, 23, 4, OK),
        # r4 at 5 waits (the only instance is busy); at 23 the instance frees, q = 1 and r4 has
        # waited 18 >= 10 -> batch of 1 at 23; svc(1) = 8 -> 31.
        (23, 31, 1, OK),
        # r5 at 30 waits (busy until 31). At 31 the completion comes first (tie rule), q = 1 and
        # r5 has waited 1 < 10: wait; then r6 arrives, q = 2 (not preferred): wait. The delay runs
        # from the oldest pending request r5: 30 + 10 = 40 -> batch of 2 at 40; svc(2) = 12 -> 52.
        (40, 52, 2, OK), (40, 52, 2, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
def test_largest_preferred_size_when_instance_frees(tmp_path, engine):
    sc = scenario(tmp_path, [0, 1, 2, 3, 4, 5, 6],
                  {"max_batch_size": 8, "preferred_batch_sizes": [2, 4], "max_queue_delay_us": 3000},
                  {1: 10, 2: 12, 3: 14, 4: 16, 5: 18, 6: 20, 7: 22, 8: 24})
    check(simulate(sc, engine=engine), [
        # r0 at 0: q = 1, wait (timer 3); r1 at 1: q = 2 = preferred -> batch [r0 r1] at 1, done 1+12 = 13.
        (1, 13, 2, OK), (1, 13, 2, OK),
        # the instance is busy; with a delay the batcher seals one batch ahead (rule 2): r2 at 2 waits
        # (q = 1, timer 2+3 = 5); r3 at 3 makes q = 2 = preferred -> [r2 r3] sealed at 3. r4..r6 (4..6)
        # queue behind it. At 13 [r2 r3] starts, done 13+12 = 25, and the batcher seals the next batch
        # at once: the oldest (r4) has waited 9 >= 3, the delay is exceeded, so the largest batch
        # possible, not the largest preferred size (2), is sealed: [r4 r5 r6], started at 25, done 25+14 = 39.
        (13, 25, 2, OK), (13, 25, 2, OK), (25, 39, 3, OK), (25, 39, 3, OK), (25, 39, 3, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_capped_at_largest_preferred_size_until_the_delay_expires(tmp_path, engine):
    sc = scenario(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                  {"max_batch_size": 8, "preferred_batch_sizes": [2], "max_queue_delay_us": 50000},
                  {1: 10, 2: 12, 3: 14, 4: 16, 5: 18, 6: 20, 7: 22, 8: 24})
    check(simulate(sc, engine=engine), [
        # r0 at 0 waits (timer 50); r1 at 1: q = 2 = preferred -> [r0 r1] at 1, done 13.
        (1, 13, 2, OK), (1, 13, 2, OK),
        # r2..r11 (2..11) queue while busy: at 13 q = 10 >= max_batch_size 8, but the oldest has waited
        # 11 < 50: only the largest preferred size goes -> [r2 r3] at 13, done 25; then at 25 [r4 r5]
        # (oldest 4, waited 21 < 50), done 37; at 37 [r6 r7], done 49; at 49 [r8 r9], done 61.
        (13, 25, 2, OK), (13, 25, 2, OK), (25, 37, 2, OK), (25, 37, 2, OK), (37, 49, 2, OK), (37, 49, 2, OK),
        (49, 61, 2, OK), (49, 61, 2, OK),
        # at 61 q = 2 (r10 at 10: waited 51 >= 50, expired): min(q, 8) = 2 -> [r10 r11], done 73.
        (61, 73, 2, OK), (61, 73, 2, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
def test_expired_delay_sends_past_the_largest_preferred_size(tmp_path, engine):
    sc = scenario(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7],
                  {"max_batch_size": 8, "preferred_batch_sizes": [2], "max_queue_delay_us": 5000},
                  {1: 10, 2: 12, 3: 14, 4: 16, 5: 18, 6: 20, 7: 22, 8: 24})
    check(simulate(sc, engine=engine), [
        (1, 13, 2, OK), (1, 13, 2, OK),
        # busy: r2 at 2 waits (timer 7), r3 at 3 completes the preferred size 2 -> [r2 r3] sealed at 3
        # (rule 2), started at 13, done 25. At 13 the oldest pending (r4, 4) has waited 9 >= 5: all four
        # pending are sealed at once (past the largest preferred size), started at 25, done 25+16 = 41.
        (13, 25, 2, OK), (13, 25, 2, OK), (25, 41, 4, OK), (25, 41, 4, OK), (25, 41, 4, OK), (25, 41, 4, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("delay_us", [5000, 0])
def test_delay_seals_one_batch_ahead(tmp_path, engine, delay_us):
    """The pattern measured on the real server (python -m cluster.probe): two requests arrive while the
    instance is busy, the second after the first's delay has expired."""
    sc = scenario(tmp_path, [0, 10, 24], {"max_batch_size": 16, "max_queue_delay_us": delay_us},
                  {1: 30, 2: 40, 3: 50})
    if delay_us:
        check(simulate(sc, engine=engine), [
            # r0 alone: timer 0+5 -> runs 5 -> 35. r1 at 10: busy; its delay expires at 15 -> [r1] sealed.
            (5, 35, 1, OK),
            # r2 at 24 does not join the sealed batch: [r1] starts at 35 (done 65), and [r2] (waited
            # 11 >= 5) is sealed then, started at 65, done 95.
            (35, 65, 1, OK), (65, 95, 1, OK),
        ])
    else:
        check(simulate(sc, engine=engine), [
            # delay 0: r0 runs 0 -> 30; r1 and r2 wait, and both go when the instance frees: 30 -> 70.
            (0, 30, 1, OK), (30, 70, 2, OK), (30, 70, 2, OK),
        ])


@pytest.mark.parametrize("engine", ENGINES)
def test_starting_a_sealed_batch_does_not_seal_the_next(tmp_path, engine):
    sc = scenario(tmp_path, [0, 10, 20, 40], {"max_batch_size": 16, "max_queue_delay_us": 5000},
                  {1: 30, 2: 40, 3: 50})
    check(simulate(sc, engine=engine), [
        # r0 runs 5 -> 35; r1 at 10 is sealed at 15; r2 at 20 waits behind it.
        (5, 35, 1, OK), (35, 65, 1, OK),
        # at 35 [r1] starts; r2 (waited 15 >= 5) is not sealed then: the batcher runs again at r3's
        # arrival (40), which seals [r2 r3]; they start when r1 is done (65), done 65+40 = 105.
        (65, 105, 2, OK), (65, 105, 2, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
def test_sealed_requests_do_not_time_out(tmp_path, engine):
    sc = scenario(tmp_path, [0, 5, 8, 30, 40],
                  {"max_batch_size": 4, "max_queue_delay_us": 2000, "queue_timeout_us": 20000},
                  {1: 30, 2: 40, 3: 50, 4: 60})
    res = simulate(sc, engine=engine)
    check(res, [
        # r0: timer 2 -> runs 2 -> 32.
        (2, 32, 1, OK),
        # r1 at 5: busy; sealed at 5+2 = 7. It has left the queue, so its deadline 5+20 = 25 passes.
        # It starts at 32, done 62.
        (32, 62, 1, OK),
        # r2 at 8 waits behind the sealed batch (one sealed batch at a time): still pending at its
        # deadline 8+20 = 28 -> TIMEOUT at 28.
        (28, 28, 0, TIMEOUT, 0),
        # r3 at 30 waits: r1 starting at 32 does not run the batcher; r4's arrival at 40 does, and seals
        # [r3 r4] (r3 waited 10 >= 2). Their deadlines, 50 and 60, pass; they start at 62, done 62+40 = 102.
        (62, 102, 2, OK), (62, 102, 2, OK),
    ])
    assert res.summary["timed_out"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_sealed_requests_do_not_count_toward_max_queue_size(tmp_path, engine):
    sc = scenario(tmp_path, [0, 5, 10, 11],
                  {"max_batch_size": 4, "max_queue_delay_us": 2000, "max_queue_size": 1},
                  {1: 30, 2: 40, 3: 50, 4: 60})
    res = simulate(sc, engine=engine)
    check(res, [
        (2, 32, 1, OK),
        # r1 at 5 (pending 0 -> accepted), sealed at 7: pending 0 again.
        (32, 62, 1, OK),
        # r2 at 10 is accepted (pending 0 < 1); no arrival runs the batcher after r1 starts (32), so r2 goes
        # when the instance frees: 62, done 92.
        (62, 92, 1, OK),
        # r3 at 11 finds r2 pending = max_queue_size -> REJECTED at once.
        (11, 11, 0, REJECTED, 0),
    ])
    assert res.summary["rejected"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_delay_measured_from_oldest_pending(tmp_path, engine):
    sc = scenario(tmp_path, [0, 3, 20, 21, 22.5],
                  {"max_batch_size": 8, "max_queue_delay_us": 4000},
                  {1: 8, 2: 12, 3: 14, 4: 16, 5: 18, 6: 20, 7: 22, 8: 24})
    check(simulate(sc, engine=engine), [
        # no preferred sizes: only max_batch_size (8) sends early. r0 at 0 -> timer at 0+4 = 4;
        # r1 at 3 does not restart it (oldest is still r0): batch [r0 r1] at 4, done 4+12 = 16.
        (4, 16, 2, OK), (4, 16, 2, OK),
        # r2 at 20 (instance free) -> timer at 24; r3 at 21 and r4 at 22.5 join; at 24 (from the
        # oldest, not 22.5+4 = 26.5) batch of 3 at 24, done 24+14 = 38.
        (24, 38, 3, OK), (24, 38, 3, OK), (24, 38, 3, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
def test_max_batch_size_cap(tmp_path, engine):
    sc = scenario(tmp_path, [0, 1, 2, 3, 4, 5, 6],
                  {"max_batch_size": 4, "max_queue_delay_us": 0},
                  {1: 10, 2: 12, 3: 14, 4: 16})
    check(simulate(sc, engine=engine), [
        # delay 0: a free instance sends whatever is pending. r0 at 0 alone, done 0+10 = 10.
        (0, 10, 1, OK),
        # r1..r6 queue (1..6). At 10: q = 6 >= 4 -> max_batch_size batch [r1..r4] at 10, done 26.
        (10, 26, 4, OK), (10, 26, 4, OK), (10, 26, 4, OK), (10, 26, 4, OK),
        # at 26: the remaining 2 -> batch of 2 at 26, done 26+12 = 38.
        (26, 38, 2, OK), (26, 38, 2, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_formed_only_when_instance_frees(tmp_path, engine):
    sc = scenario(tmp_path, [0, 1, 2, 3, 4, 12],
                  {"max_batch_size": 4, "max_queue_delay_us": 0, "instances": 2},
                  {1: 10, 2: 12, 3: 14, 4: 16})
    check(simulate(sc, engine=engine), [
        # r0 at 0 on instance A, done 10; r1 at 1 on instance B, done 11.
        (0, 10, 1, OK), (1, 11, 1, OK),
        # r2, r3, r4 (2, 3, 4) wait: both instances busy, no batch is formed while they do.
        # At 10, A frees -> one batch of all 3 pending at 10, done 10+14 = 24.
        (10, 24, 3, OK), (10, 24, 3, OK), (10, 24, 3, OK),
        # B freed at 11 with an empty queue; r5 at 12 goes at once on B, done 22.
        (12, 22, 1, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
def test_queue_full_rejection(tmp_path, engine):
    sc = scenario(tmp_path, [0, 1, 2, 3, 11],
                  {"max_batch_size": 1, "instances": 1, "max_queue_size": 2},
                  {1: 10})
    res = simulate(sc, engine=engine)
    check(res, [
        # r0 at 0 executes (0 -> 10); executing requests do not count toward max_queue_size.
        (0, 10, 1, OK),
        # r1, r2 wait (pending 1, then 2); r1 runs 10 -> 20, r2 20 -> 30.
        (10, 20, 1, OK), (20, 30, 1, OK),
        # r3 at 3 finds 2 pending = max_queue_size -> REJECTED at once (dispatch = completion = 3).
        (3, 3, 0, REJECTED, 0),
        # r4 at 11: only r2 pending -> accepted, runs after r2: 30 -> 40.
        (30, 40, 1, OK),
    ])
    assert res.summary["rejected"] == 1 and res.summary["completed"] == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_queue_timeout(tmp_path, engine):
    # the tie below is exact in floating point: deadline 0.005 + 5000e-6 == completion 0 + 10e-3
    assert 0.005 + 5000 * 1e-6 == 0.0 + 10.0 * 1e-3
    sc = scenario(tmp_path, [0, 1, 5, 7],
                  {"max_batch_size": 1, "instances": 1, "queue_timeout_us": 5000},
                  {1: 10})
    res = simulate(sc, engine=engine)
    check(res, [
        (0, 10, 1, OK),
        # r1 at 1 still pending at its deadline 1+5 = 6 (instance busy until 10) -> TIMEOUT at 6.
        (6, 6, 0, TIMEOUT, 0),
        # r2 at 5: deadline 10 = the instant r0 completes; completions come first, so r2 is
        # dispatched at 10 (not timed out), done 20.
        (10, 20, 1, OK),
        # r3 at 7: deadline 12, instance busy until 20 -> TIMEOUT at 12.
        (12, 12, 0, TIMEOUT, 0),
    ])
    assert res.summary["timed_out"] == 2


@pytest.mark.parametrize("engine", ENGINES)
def test_timeout_expires_before_batcher_decides(tmp_path, engine):
    sc = scenario(tmp_path, [0, 10, 11],
                  {"max_batch_size": 4, "preferred_batch_sizes": [2], "max_queue_delay_us": 2000,
                   "queue_timeout_us": 2000},
                  {1: 5, 2: 6, 3: 7, 4: 8})
    check(simulate(sc, engine=engine), [
        # r0 alone: the delay timer (0 + 2) and its deadline (0 + 2) coincide; timeouts expire
        # before the batcher decides -> TIMEOUT at 2.
        (2, 2, 0, TIMEOUT),
        # r1 at 10, r2 at 11 -> preferred size 2 at 11, done 11+6 = 17.
        (11, 17, 2, OK), (11, 17, 2, OK),
    ])


@pytest.mark.parametrize("engine", ENGINES)
def test_drain_on_scale_down(tmp_path, engine):
    sc = scenario(tmp_path, [0, 82, 83, 84, 85, 86, 87, 88, 105, 106],
                  {"max_batch_size": 1, "instances": 1}, {1: 10},
                  replicas=2, min_replicas=1, max_replicas=2, duration_s=0.3, interval_s=0.1)
    sim = Simulation(sc, engine=engine)
    obs = sim.start()
    # tick at 100: in flight are r4 running + r6 queued on replica 0, r3 running + r5, r7 queued
    # on replica 1 (see below) -> 5.
    assert obs.inflight == 5 and obs.replicas_ready == 2
    # busy in [0, 100): replica 0: 0-10, 83-93, 93-100 (r4, still running) = 27; replica 1:
    # 82-92, 92-100 = 18; capacity 2 replicas x 100 -> 45/200.
    assert obs.busy_fraction == pytest.approx(0.225, abs=1e-12)
    # scale 2 -> 1 at 100: both became ready at 0, the higher uid (replica 1) is removed.
    while obs is not None:
        obs = sim.step(1)
    res = sim.result()
    check(res, [
        # round robin over [replica 0, replica 1] by request count, one instance, 10 per request:
        (0, 10, 1, OK, 0),
        (82, 92, 1, OK, 1), (83, 93, 1, OK, 0), (92, 102, 1, OK, 1), (93, 103, 1, OK, 0),
        (102, 112, 1, OK, 1), (103, 113, 1, OK, 0), (112, 122, 1, OK, 1),
        # after the drain at 100 replica 1 gets nothing new: r8 (105) and r9 (106) queue on
        # replica 0 behind r6 (until 113): 113 -> 123, 123 -> 133.
        (113, 123, 1, OK, 0), (123, 133, 1, OK, 0),
    ])
    r0, r1 = res.replicas
    assert math.isnan(r0.drain_s) and math.isnan(r0.gone_s)
    # replica 1 finishes its queue (r5, r7) and is gone at its last completion, 122
    assert r1.drain_s == pytest.approx(0.1) and r1.gone_s == pytest.approx(0.122, abs=1e-12)
    # replica-seconds: replica 0 for the whole 300 + replica 1 until gone (122)
    assert res.summary["replica_seconds"] == pytest.approx(0.3 + 0.122, abs=1e-12)
    # second interval [100, 200): only replica 0 is ready; busy 100-103 (r4) + r6 + r8 + r9 = 33;
    # replica 1's draining work does not count.
    row = res.timeline[1]
    assert row["replicas_ready"] == 1 and row["busy_fraction"] == pytest.approx(0.33, abs=1e-12)
    assert row["replica_seconds"] == pytest.approx(0.2 + 0.122, abs=1e-12)
