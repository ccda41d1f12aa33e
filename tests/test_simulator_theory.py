"""The fast engine against closed-form queueing results (batching off, one replica).

Mean waiting time in queue (``queue_ms``: arrival -> start of service) must be
within 2% of theory. Runs are long enough (1-2 million customers, fixed seeds)
that the estimator's own noise is well under that.
"""
import math

import pytest

from simulator import scenario_from_dict, simulate


def run(rate, service, instances=1, n=1_500_000, seed=11):
    dur = n / rate
    sc = scenario_from_dict({
        "seed": seed, "duration_s": dur, "warmup_s": dur * 0.02, "record_requests": False,
        "workload": {"kind": "poisson", "rate_rps": rate},
        "service": service,
        "batching": {"max_batch_size": 1, "instances": instances},
        "autoscaler": {"kind": "static", "interval_s": 60},
    })
    return simulate(sc).summary


def erlang_c(c, a):
    """Probability of waiting in M/M/c with offered load a = lambda/mu (Erlang C)."""
    s = sum(a ** k / math.factorial(k) for k in range(c))
    top = a ** c / math.factorial(c) * c / (c - a)
    return top / (s + top)


def close(got, want, tol=0.02):
    assert abs(got - want) / want < tol, f"got {got:.4f}, theory {want:.4f} ({(got / want - 1) * 100:+.2f}%)"


def test_mm1():
    lam, s = 70.0, 0.010          # rho = 0.7
    rho = lam * s
    want = rho / (1 - rho) * s * 1e3          # Wq = rho/(mu - lambda)
    close(run(lam, {"kind": "exponential", "mean_ms": 10})["queue_ms"]["mean"], want)


def test_mmc_erlang_c():
    c, lam, s = 3, 240.0, 0.010  # a = 2.4, rho = 0.8
    a = lam * s
    want = erlang_c(c, a) / (c / s - lam) * 1e3
    close(run(lam, {"kind": "exponential", "mean_ms": 10}, instances=c, n=2_000_000)["queue_ms"]["mean"], want)


def test_md1():
    lam, s = 80.0, 0.010
    rho = lam * s
    want = rho * s / (2 * (1 - rho)) * 1e3     # Wq = rho / (2 mu (1 - rho))
    close(run(lam, {"kind": "deterministic", "mean_ms": 10})["queue_ms"]["mean"], want)


@pytest.mark.parametrize("kind,cv", [("gamma", 0.5), ("lognormal", 1.5)])
def test_mg1_pollaczek_khinchine(kind, cv):
    lam, s = 75.0, 0.010
    rho = lam * s
    es2 = s * s * (1 + cv * cv)
    want = lam * es2 / (2 * (1 - rho)) * 1e3   # P-K: Wq = lambda E[S^2] / (2 (1 - rho))
    n = 1_500_000 if cv < 1 else 3_000_000   # heavier tail needs more customers
    close(run(lam, {"kind": kind, "mean_ms": 10, "cv": cv}, n=n)["queue_ms"]["mean"], want)


def test_little_and_service_mean():
    """Sanity that would catch accounting slips: mean latency = queue + service; throughput = lambda."""
    s = run(50.0, {"kind": "exponential", "mean_ms": 10}, n=300_000)
    assert abs(s["latency_ms"]["mean"] - s["queue_ms"]["mean"] - 10.0) < 0.15
    assert abs(s["throughput_rps"] / 50.0 - 1) < 0.01
    assert s["failed"] == 0 and s["mean_batch_size"] == 1.0
