"""One rule for a policy's answer (simulator.policy.replicas_to_ask), the same in the simulator and in the real
controller: a finite number is rounded and clamped; NaN, an infinity or a non-number holds the last decision
and is counted. Hand-computed decisions."""
from __future__ import annotations

import math

import pytest

from cluster.controller import Controller
from helpers import FakeBackend
from simulator import scenario_from_dict
from simulator.engine import Simulation, simulate
from simulator.policy import Observation, Policy, replicas_to_ask

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("answer,last,expect,held", [
    (3, 2, 3, False), (3.4, 2, 3, False), (3.6, 2, 4, False), (9, 2, 5, False), (-4, 2, 1, False),
    (NAN, 2, 2, True), (INF, 2, 2, True), (-INF, 4, 4, True), ("many", 3, 3, True), (None, 3, 3, True),
    (True, 3, 3, True), ("3", 2, 2, True), (NAN, 9, 5, True),
])
def test_replicas_to_ask(answer, last, expect, held):
    a = replicas_to_ask(answer, last, 1, 5)
    assert (a.replicas, a.held) == (expect, held)
    if held:
        assert "not a finite number" in a.reason and f"holding {expect}" in a.reason
    elif answer in (9, -4):
        assert a.reason == f"clamped {answer!r} to {expect}"


class Script(Policy):
    """Answers from a list, one per decision."""

    kind = "script"

    def __init__(self, answers):
        self.answers = list(answers)
        self.i = 0

    def reset(self):
        self.i = 0

    def decide(self, obs: Observation):
        a = self.answers[min(self.i, len(self.answers) - 1)]
        self.i += 1
        return a


ANSWERS = [3, NAN, 5, "many", 9, INF, None, 1, NAN]
EXPECTED = [3, 3, 5, 5, 6, 6, 6, 1, 1]           # max_replicas 6; held answers keep the last decision


def _scenario():
    return scenario_from_dict({"duration_s": 100.0, "workload": {"kind": "poisson", "rate_rps": 20},
                               "service": {"mean_ms": 5}, "record_requests": False,
                               "cluster": {"replicas": 2, "max_replicas": 6},
                               "autoscaler": {"kind": "static", "interval_s": 10.0}})


def test_the_simulator_holds_and_counts_bad_answers():
    res = simulate(_scenario(), policy=Script(ANSWERS))
    # decisions at ticks 1..9 (t = 10..90 s) set the desired count of rows 0..8
    assert [row["desired"] for row in res.timeline[:9]] == EXPECTED
    assert [row["held"] for row in res.timeline[:9]] == [0, 1, 0, 1, 0, 1, 1, 0, 1]
    # a tenth decision (t = 100 s, the last answer repeated: NaN) is held too
    assert res.summary["held_decisions"] == sum(row["held"] for row in res.timeline) == 6


def test_stepping_a_simulation_with_nan_does_not_raise():
    sim = Simulation(_scenario())
    obs = sim.start()
    obs = sim.step(NAN)                     # held at the initial 2 replicas
    assert obs.replicas == 2 and sim.held_decisions == 1


def test_the_controller_applies_the_same_rule():
    be = FakeBackend(2)
    ctl = Controller(be, Script(ANSWERS), interval_s=10.0, slo_ms=100.0, min_replicas=1, max_replicas=6)
    obs = Observation(time_s=10.0, interval_s=10.0, arrival_rps=20.0, completion_rps=20.0, latency_p50_ms=5.0,
                      latency_p95_ms=6.0, latency_p99_ms=7.0, slo_violation_frac=0.0, queue_ms=0.1, batch_size=1.0,
                      busy_fraction=0.1, inflight=0.0, replicas=2, replicas_ready=2, replicas_pending=0, failures=0,
                      slo_ms=100.0, min_replicas=1, max_replicas=6)
    ds = [ctl.decide(k + 1, obs) for k in range(len(ANSWERS))]
    assert [d.desired for d in ds] == EXPECTED
    assert [int(d.held) for d in ds] == [0, 1, 0, 1, 0, 1, 1, 0, 1]
    assert be.scaled == [3, 5, 6, 1]                # a held answer asks nothing of the backend
    assert all("not a finite number" in d.reason for d in ds if d.held)
    assert math.isnan(ds[1].raw) and ds[3].raw == "many"
