"""Simulator speed, side by side in one run.

    python benchmarks/sim_speed.py [--requests 2000000] [--ref-requests N] [--ciw-requests N] [--memory]
                                   [--whole-duration-s 4000] [--only engine|whole]

1. The reference scenario (configs/reference.yaml: 8 replicas x 2 instances, max_batch_size 16,
   2 ms delay, gamma service, Poisson at ~80% of saturation, round-robin) on the fast engine.
2. The same scenario on the per-request SimPy reference engine.
3. An M/M/c queue (c=8, rho=0.8) on the fast engine and on ciw.
4. A three-stage pipeline (issue 15): each stage the reference scenario's deployment, linked end to end
   (:mod:`simulator.pipeline`), on the fast engine, against the single-stage reference scenario: simulated
   requests per wall-second per stage visit, and the ratio (target: the pipeline within 2x, i.e. >= 0.5).
5. With --memory: a simulated 24 h at 400 rps with per-request records off; peak RSS.
6. The whole command (issue 11): ``python -m simulator.run`` on the WHOLE scenario below (8 replicas
   x 2 instances, exponential 10 ms, Poisson 1280 rps, 4000 s: ~5.1 M requests, records on, plots on)
   as a subprocess, wall time from start to exit: first start with an empty numba cache (a fresh
   clone: everything compiled, the cache written) and second start (the cache loaded); against the
   obvious per-request SimPy model of the same scenario (:func:`obvious_simpy`: one process per
   request, a ``simpy.Resource`` of 2 instances per replica, round-robin, per-request records kept),
   run in this process; and ``simulate()`` alone (no imports, no output) in a fresh process, first and
   second start.

Prints simulated requests per wall-second and the ratios (targets: fast >= 1e6 req/s,
>= 8x reference, >= 15x ciw; the whole command, second start, >= 8x the obvious SimPy model).
Compile time is excluded from the engine rows by a short warm-up run first.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
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


WHOLE = {"name": "whole-process", "seed": 1, "duration_s": 4000, "warmup_s": 0, "slo_ms": 100,
         "record_requests": True, "workload": {"kind": "poisson", "rate_rps": 1280},
         "service": {"kind": "exponential", "mean_ms": 10},
         "batching": {"max_batch_size": 1, "instances": 2}, "cluster": {"replicas": 8},
         "autoscaler": {"kind": "static", "interval_s": 15}}


def obvious_simpy(rate_rps, duration_s, replicas, instances, mean_s, seed):
    """The obvious per-request SimPy model: Poisson arrivals, round-robin over ``replicas`` servers of
    ``instances`` slots each (``simpy.Resource``), exponential service, one process per request,
    per-request records (arrival, start, completion, replica) kept in lists. Returns (requests, mean ms)."""
    import simpy
    rnd = random.Random(seed)
    env = simpy.Environment()
    servers = [simpy.Resource(env, capacity=instances) for _ in range(replicas)]
    arrival, start, done, replica = [], [], [], []

    def request(k):
        t0 = env.now
        with servers[k].request() as slot:
            yield slot
            t1 = env.now
            yield env.timeout(rnd.expovariate(1.0 / mean_s))
        arrival.append(t0)
        start.append(t1)
        done.append(env.now)
        replica.append(k)

    def source():
        i = 0
        while True:
            yield env.timeout(rnd.expovariate(rate_rps))
            if env.now >= duration_s:
                return
            env.process(request(i % replicas))
            i += 1

    env.process(source())
    env.run()
    n = len(arrival)
    return n, 1e3 * sum(d - a for a, d in zip(arrival, done)) / max(n, 1)


def whole_command(scenario_yaml, out, cache_dir):
    """Wall seconds of the whole ``python -m simulator.run`` command in a subprocess (numba cache in
    ``cache_dir``); the run's summary line."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "simulator.run", scenario_yaml, "--out", out, "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"simulator.run failed ({p.returncode}): {p.stderr.strip()}")
    return wall


ENGINE_ALONE = """
import sys, time
from simulator import load_scenario, simulate
sc = load_scenario(sys.argv[1])
t = time.perf_counter()
simulate(sc)
print(time.perf_counter() - t)
"""


def engine_alone(scenario_yaml, cache_dir):
    """Wall seconds of ``simulate()`` alone (compilation or cache loading included; imports and
    output excluded) in a fresh process with its numba cache in ``cache_dir``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    p = subprocess.run([sys.executable, "-c", ENGINE_ALONE, scenario_yaml], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"simulate() failed ({p.returncode}): {p.stderr.strip()}")
    return float(p.stdout.split()[-1])


def whole_process(duration_s):
    """Rows for the whole-command section (see the module docstring)."""
    import json
    import shutil

    import yaml
    d = dict(WHOLE, duration_s=float(duration_s))
    tmp = tempfile.mkdtemp(prefix="sim_speed-")
    try:
        path = os.path.join(tmp, "whole.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(d, f)
        rows = []
        for what, run in (("whole command", lambda cache, k: whole_command(path, os.path.join(tmp, f"o{k}"), cache)),
                          ("simulate() alone", lambda cache, k: engine_alone(path, cache))):
            cache = os.path.join(tmp, f"numba-cache-{len(rows)}")  # empty: the first start compiles, writes it
            for k, start in enumerate(("first start (empty numba cache)", "second start (cache loaded)")):
                rows.append((f"{what}, {start}", run(cache, k)))
        with open(os.path.join(tmp, "o1", "summary.json")) as f:
            s = json.load(f)
        n, mean_ms = s["requests"], s["latency_ms"]["mean"]
        t = time.perf_counter()
        n_obv, mean_obv = obvious_simpy(d["workload"]["rate_rps"], d["duration_s"], d["cluster"]["replicas"],
                                        d["batching"]["instances"], d["service"]["mean_ms"] * 1e-3, d["seed"])
        w_obv = time.perf_counter() - t
        return [(name, n, w) for name, w in rows] + [("obvious per-request SimPy model", n_obv, w_obv)], \
            (mean_ms, mean_obv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_rows(rows):
    print(f"{'run':60s} {'requests':>10s} {'wall s':>8s} {'req/wall-s':>12s}")
    for name, n, w in rows:
        print(f"{name:60s} {n:10d} {w:8.2f} {n / w:12,.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2_000_000)
    ap.add_argument("--ref-requests", type=int, default=None, help="default: same as --requests")
    ap.add_argument("--ciw-requests", type=int, default=200_000)
    ap.add_argument("--whole-duration-s", type=float, default=WHOLE["duration_s"],
                    help="simulated seconds of the whole-command scenario (default 4000: ~5.1 M requests)")
    ap.add_argument("--only", choices=("engine", "pipeline", "whole"), default=None, help="run one section only")
    ap.add_argument("--memory", action="store_true", help="also run a simulated 24 h at 400 rps")
    a = ap.parse_args()
    if a.only in (None, "engine"):
        engine_section(a)
    if a.only in (None, "pipeline"):
        pipeline_section(a)
    if a.memory:
        memory_section()            # before the whole-command section: its peak RSS is this run's alone
    if a.only in (None, "whole"):
        rows, (mean_ms, mean_obv) = whole_process(a.whole_duration_s)
        print(f"\nthe whole command: python -m simulator.run WHOLE.yaml --out DIR (8 replicas x 2 instances, "
              f"exponential 10 ms, Poisson 1280 rps, {a.whole_duration_s:g} s, records and plots on)")
        print_rows(rows)
        obv = rows[-1][1] / rows[-1][2]
        for name, n, w in rows[:-1]:
            print(f"{name:60s} {(n / w) / obv:5.1f}x the obvious SimPy model"
                  + ("  (target >= 8x)" if name.startswith("whole command, second") else ""))
        print(f"mean latency: {mean_ms:.2f} ms (simulator.run) vs {mean_obv:.2f} ms (obvious SimPy model)")


def engine_section(a):
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
    print_rows([
        ("reference scenario, fast engine", s_fast["requests"], w_fast),
        ("reference scenario, SimPy per-request engine", s_ref["requests"], w_ref),
        ("M/M/8 rho=0.8, fast engine", s_m["requests"], w_m),
        ("M/M/8 rho=0.8, ciw", a.ciw_requests, w_c),
    ])
    print(f"\nfast engine: {fast:,.0f} simulated requests/s (target >= 1,000,000)"
          f" -> {'OK' if fast >= 1e6 else 'BELOW TARGET'}")
    print(f"fast / per-request SimPy: {fast / ref:.1f}x (target >= 8x)")
    print(f"fast / ciw (M/M/8):       {mfast / crate:.1f}x (target >= 15x)")
    print(f"mean wait M/M/8: fast {s_m['queue_ms']['mean']:.3f} ms, ciw {cwq * 1e3:.3f} ms")
    print(f"reference scenario: mean batch {s_fast['mean_batch_size']:.2f}, "
          f"p99 {s_fast['latency_ms']['p99']:.2f} ms (fast) vs {s_ref['latency_ms']['p99']:.2f} ms (reference)")


def three_stage(n):
    """The reference scenario's deployment three times in a row, ``n`` requests offered."""
    base = load_scenario(os.path.join(ROOT, "configs", "reference.yaml"))
    d = base.to_dict()
    stage = {"service": d.pop("service"), "batching": d.pop("batching"), "cluster": d.pop("cluster"),
             "autoscaler": d.pop("autoscaler")}
    d["duration_s"] = n / base.workload.rate_rps
    d["slo_ms"] = 3 * base.slo_ms
    stage["hop"] = stage["service"].pop("overhead")          # a single model's overhead is a stage's hop
    d["pipeline"] = {"stages": [dict(stage, name=f"s{k}") for k in range(3)]}
    return scenario_from_dict(d)


def pipeline_section(a):
    from simulator.pipeline import simulate_pipeline
    rate = load_scenario(os.path.join(ROOT, "configs", "reference.yaml")).workload.rate_rps
    simulate_pipeline(three_stage(20_000))                 # compile / warm caches
    n = a.requests // 2
    single = load_scenario(os.path.join(ROOT, "configs", "reference.yaml"), [f"duration_s={n / rate}"])
    simulate(single)
    one, s1, w1 = rate_of(single, "fast")
    t = time.perf_counter()
    r = simulate_pipeline(three_stage(n))
    w3 = time.perf_counter() - t
    visits = sum(v["requests"] for v in r.summary["stages"].values())
    print_rows([("reference scenario, one stage, fast engine", s1["requests"], w1),
                ("reference deployment x 3 stages (per stage visit), fast engine", visits, w3)])
    print(f"three-stage pipeline / single stage, per stage visit: {(visits / w3) / one:.2f} "
          f"(target >= 0.5: within 2x); end-to-end p99 {r.summary['latency_ms']['p99']:.2f} ms")


def memory_section():
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
