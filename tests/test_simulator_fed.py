"""A deployment fed its arrivals from outside (``Simulation(fed=True)``, how a pipeline's stage k+1 receives
stage k's responses) behaves exactly as the same deployment generating those arrivals itself, in both engines,
and hands back every request once through ``take_finished``."""
import numpy as np
import pytest

from simulator.config import scenario_from_dict
from simulator.engine import Simulation
from simulator.workload import ArrivalSource

SC = dict(seed=3, duration_s=40, warmup_s=5, slo_ms=50, workload=dict(kind="poisson", rate_rps=500),
          service=dict(per_batch={1: dict(kind="gamma", mean_ms=8, cv=0.3), 4: dict(kind="gamma", mean_ms=14, cv=0.3)},
                       overhead=dict(kind="exponential", mean_ms=1)),
          batching=dict(max_batch_size=4, max_queue_delay_us=2000, queue_timeout_us=10000),
          cluster=dict(replicas=2, max_replicas=3, startup_s=3), autoscaler=dict(kind="static", interval_s=5))


def _run(sim, take):
    out = []
    obs = sim.start()
    while obs is not None:
        if take:
            out.append(sim.dp.take_finished())
        obs = sim.step(2 if obs.time_s < 20 else 3)
    if take:
        out.append(sim.dp.take_finished())
    return sim.result(), out


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_fed_equals_generated(engine):
    sc = scenario_from_dict(SC)
    own, _ = _run(Simulation(sc, engine=engine), take=False)
    fed = Simulation(sc, engine=engine, fed=True)
    arrivals = ArrivalSource(sc.workload, sc.duration_s, sc.seed).until(sc.duration_s)
    fed.feed(arrivals[:len(arrivals) // 2])           # in two pushes, the second before its instants come
    fed.run_until(0.0)
    fed.feed(arrivals[len(arrivals) // 2:])
    res, fin = _run(fed, take=True)
    a, b = own.records, res.records
    assert len(a["arrival_s"]) == len(arrivals) > 1000
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k
    assert (b["status"] != 0).sum() > 0                 # timeouts happen: failures are handed back too
    ids = np.concatenate([f[0] for f in fin])
    assert np.array_equal(np.sort(ids), np.arange(len(arrivals)))     # each request exactly once
    done = np.concatenate([f[1] for f in fin])[np.argsort(ids)]
    status = np.concatenate([f[2] for f in fin])[np.argsort(ids)]
    assert np.array_equal(done, b["completion_s"]) and np.array_equal(status, b["status"])
    replica = np.concatenate([f[3] for f in fin])[np.argsort(ids)]
    arrival = np.concatenate([f[4] for f in fin])[np.argsort(ids)]
    assert np.array_equal(replica, b["replica"]) and np.array_equal(arrival, b["arrival_s"])


def test_feed_needs_fed_mode():
    sim = Simulation(scenario_from_dict(SC))
    with pytest.raises(RuntimeError, match="fed=True"):
        sim.feed(np.array([1.0]))
