"""Simulator speed, side by side in one process.

    python benchmarks/sim_speed.py [--requests 2000000] [--ref-requests N] [--ciw-requests N] [--memory]

1. The reference scenario (configs/reference.yaml: 8 replicas x 2 instances, max_batch_size 16,
   2 ms delay, gamma service, Poisson at ~80% of saturation, round-robin) on the fast engine.
2. The same scenario on the per-request SimPy reference engine.
3. An M/M/c queue (c=8, rho=0.8) on the fast engine and on ciw.
4. With --memory: a simulated 24 h at 400 rps with per-request records off; peak RSS.

Prints simulated requests per wall-second and the ratios (targets: fast >= 1e6 req/s,
>= 8x reference, >= 15x ciw). Compile time is excluded by a short warm-up run first.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simulator import load_scenario, scenario_from_dict, simulate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rate_of(sc, engine):
    t = time.perf_counter()
    r = simulate(sc, engine=engine)
    wall = time.perf_counter() - t
    return r.summary["requests"] / wall, r.summary, wall


def mmc(n, engine=None):
    c, mu, rho = 8, 100.0, 0.8
    lam = rho * c * mu
    return scenario_from_dict({
        "seed": 3, "duration_s": n / lam, "record_requests": False,
        "workload": {"kind": "poisson", "rate_rps": lam},
        "service": {"kind": "exponential", "mean_ms": 1000 / mu},
        "batching": {"max_batch_size": 1, "instances": c},
        "autoscaler": {"kind": "static", "interval_s": 60}}), lam, mu, c


def ciw_rate(n):
    import ciw
    _, lam, mu, c = mmc(n)
    net = ciw.create_network(arrival_distributions=[ciw.dists.Exponential(lam)],
                             service_distributions=[ciw.dists.Exponential(mu)], number_of_servers=[c])
    ciw.seed(3)
    q = ciw.Simulation(net)
    t = time.perf_counter()
    q.simulate_until_max_time(n / lam)
    wall = time.perf_counter() - t
    recs = q.get_all_records()
    wq = sum(r.waiting_time for r in recs) / len(recs)
    return len(recs) / wall, wq, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2_000_000)
    ap.add_argument("--ref-requests", type=int, default=None, help="default: same as --requests")
    ap.add_argument("--ciw-requests", type=int, default=200_000)
    ap.add_argument("--memory", action="store_true", help="also run a simulated 24 h at 400 rps")
    a = ap.parse_args()
    base = load_scenario(os.path.join(ROOT, "configs", "reference.yaml"))
    rate = base.workload.rate_rps

    def ref_sc(n):
        return load_scenario(os.path.join(ROOT, "configs", "reference.yaml"), [f"duration_s={n / rate}"])

    simulate(ref_sc(20_000))                               # compile / warm caches
    simulate(mmc(20_000)[0])
    fast, s_fast, w_fast = rate_of(ref_sc(a.requests), "fast")
    nref = a.ref_requests or a.requests
    ref, s_ref, w_ref = rate_of(ref_sc(nref), "reference")
    mfast, s_m, w_m = rate_of(mmc(a.ciw_requests)[0], "fast")
    crate, cwq, w_c = ciw_rate(a.ciw_requests)
    rows = [
        ("reference scenario, fast engine", s_fast["requests"], w_fast, fast),
        ("reference scenario, SimPy per-request engine", s_ref["requests"], w_ref, ref),
        ("M/M/8 rho=0.8, fast engine", s_m["requests"], w_m, mfast),
        ("M/M/8 rho=0.8, ciw", a.ciw_requests, w_c, crate),
    ]
    print(f"{'run':48s} {'requests':>10s} {'wall s':>8s} {'req/wall-s':>12s}")
    for name, n, w, r in rows:
        print(f"{name:48s} {n:10d} {w:8.2f} {r:12,.0f}")
    print(f"\nfast engine: {fast:,.0f} simulated requests/s (target >= 1,000,000)"
          f" -> {'OK' if fast >= 1e6 else 'BELOW TARGET'}")
    print(f"fast / per-request SimPy: {fast / ref:.1f}x (target >= 8x)")
    print(f"fast / ciw (M/M/8):       {mfast / crate:.1f}x (target >= 15x)")
    print(f"mean wait M/M/8: fast {s_m['queue_ms']['mean']:.3f} ms, ciw {cwq * 1e3:.3f} ms")
    print(f"reference scenario: mean batch {s_fast['mean_batch_size']:.2f}, "
          f"p99 {s_fast['latency_ms']['p99']:.2f} ms (fast) vs {s_ref['latency_ms']['p99']:.2f} ms (reference)")
    if a.memory:
        day = scenario_from_dict({
            "seed": 5, "duration_s": 86400, "record_requests": False,
            "workload": {"kind": "poisson", "rate_rps": 400},
            "service": {"per_batch": {1: {"kind": "gamma", "mean_ms": 8, "cv": 0.3},
                                      8: {"kind": "gamma", "mean_ms": 30, "cv": 0.2}}},
            "batching": {"max_batch_size": 8, "max_queue_delay_us": 2000},
            "cluster": {"replicas": 2, "min_replicas": 1, "max_replicas": 8},
            "autoscaler": {"kind": "static", "interval_s": 15}})
        t = time.perf_counter()
        r = simulate(day)
        w = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\n24 h at 400 rps, records off: {r.summary['requests']:,} requests in {w:.1f} s "
              f"({r.summary['requests'] / w:,.0f}/s); peak RSS of this whole process {rss:.0f} MiB "
              f"(target < 1024 MiB)")


if __name__ == "__main__":
    main()
