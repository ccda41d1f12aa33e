"""What chaining stages through the client costs, on the real stack (local backend, the built-in models).

    python benchmarks/chain_overhead.py [--rate 20] [--seconds 15] [--rounds 2] [--json OUT]

1. One deployment of the built-in MobileNetV4-Conv-Small (one replica behind HAProxy) under the same Poisson
   arrivals sent two ways, alternated ``--rounds`` times so that drift hits both alike: ``single`` (the load
   generator's single-model path: one call per request) and ``chain`` (the same deployment as a one-stage
   pipeline: the chained-call path of :mod:`cluster.stack.loadgen`). The difference of their client latencies
   is what the chain code itself costs per stage.
2. The built-in two-stage pipeline (image -> labels, one replica each) at the same rate: per request the
   chaining gap (the client's time from stage 1's response to stage 2's send: reading the output, building the
   next request) and end to end vs the sum of the two stages' client latencies.

Prints median / p95 / mean of each (ms) and writes them to ``--json``. Run it through the machine lock
(``/work/bin/heavy``): it starts real servers.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAGE = {"batching": {"max_batch_size": 4, "max_queue_delay_us": 500}, "cluster": {"replicas": 1, "max_replicas": 1}}


def scenario(stages: list[dict], rate: float, seconds: float, seed: int):
    from simulator.config import scenario_from_dict
    return scenario_from_dict({"seed": seed, "duration_s": seconds, "slo_ms": 1000,
                               "workload": {"kind": "poisson", "rate_rps": rate},
                               "pipeline": {"stages": [{**STAGE, "name": n, "service": {"mean_ms": 5}}
                                                       for n in stages]}})


def stack(stages: list[str]):
    from cluster.stack.config import ModelSpec, StackSettings, StageModels
    models = {"image": "mobilenetv4_conv_small", "labels": "label_encoder_small"}
    return StackSettings(stage_models=StageModels(tuple((n, (("default", ModelSpec(builtin=models[n])),))
                                                        for n in stages)))


def run(dep, sc, st, work: Path, chained: bool) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(end-to-end client latencies, per-stage visit latencies, stage-2 gaps) of one load run, ms, ok requests."""
    from cluster.measure import load_keys
    from cluster.stack.chain import chain_plan
    from cluster.stack.loadgen import run_load
    first = dep.stages[0]
    where = chain_plan(dep.stages, work, sc.seed) if chained else \
        {"url": first.backend.endpoints["lb"], **first.served.load_plan(work, sc.seed)}
    res = run_load({**where, **load_keys(sc, st, time.time() + 1.0)}, work)
    rows = [r for r in csv.DictReader(open(res.requests_path)) if r["status"] == "ok"]
    e2e = np.array([float(r["latency_ms"]) for r in rows])
    if not chained:
        return e2e, [], np.zeros(0)
    visits = list(csv.DictReader(open(res.visits_path)))
    per = [np.array([float(v["latency_ms"]) for v in visits if v["stage"] == str(k) and v["status"] == "ok"])
           for k in range(len(dep.stages))]
    gaps = np.array([float(v["gap_ms"]) for v in visits if v["gap_ms"] not in ("", "nan")])
    return e2e, per, gaps


def stats(x: np.ndarray) -> dict:
    return {"n": int(len(x)), "p50": float(np.median(x)), "p95": float(np.percentile(x, 95)), "mean": float(x.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals per second (default 20)")
    ap.add_argument("--seconds", type=float, default=15.0, help="load per run (default 15)")
    ap.add_argument("--rounds", type=int, default=2, help="single/chain alternations (default 2)")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    from cluster.stack import procs
    from cluster.stack.chain import PipelineDeployment
    procs.install_signal_handlers()
    out: dict = {"rate_rps": a.rate, "seconds": a.seconds, "rounds": a.rounds}
    with tempfile.TemporaryDirectory(prefix="chain-overhead-") as d:
        work = Path(d)
        sc1, st1 = scenario(["image"], a.rate, a.seconds, 1), stack(["image"])
        lat: dict[str, list] = {"single": [], "chain": []}
        with PipelineDeployment(sc1, st1, work / "one") as dep:
            dep.deploy()
            for r in range(a.rounds):
                for mode in ("single", "chain"):
                    e2e, _, _ = run(dep, sc1, st1, work / f"{mode}{r}", mode == "chain")
                    lat[mode].append(e2e)
        single, chain = (np.concatenate(lat[m]) for m in ("single", "chain"))
        out["one_stage"] = {"single": stats(single), "chain": stats(chain),
                            "chain_minus_single_p50_ms": float(np.median(chain) - np.median(single)),
                            "chain_minus_single_mean_ms": float(chain.mean() - single.mean())}
        sc2, st2 = scenario(["image", "labels"], a.rate, a.seconds, 2), stack(["image", "labels"])
        with PipelineDeployment(sc2, st2, work / "two") as dep:
            dep.deploy()
            e2e, per, gaps = run(dep, sc2, st2, work / "two_load", True)
        out["two_stage"] = {"e2e": stats(e2e), "image": stats(per[0]), "labels": stats(per[1]), "gap": stats(gaps),
                            "e2e_minus_stage_sum_mean_ms": float(e2e.mean() - per[0].mean() - per[1].mean())}
    o, t = out["one_stage"], out["two_stage"]
    print(f"one stage (mobilenetv4_conv_small, 1 replica, {a.rate:g} req/s, {a.rounds} x {a.seconds:g} s each):")
    for m in ("single", "chain"):
        print(f"  {m:<7} p50 {o[m]['p50']:7.2f}  p95 {o[m]['p95']:7.2f}  mean {o[m]['mean']:7.2f} ms  (n={o[m]['n']})")
    print(f"  chain - single: p50 {o['chain_minus_single_p50_ms']:+.2f} ms, "
          f"mean {o['chain_minus_single_mean_ms']:+.2f} ms")
    print(f"two stages (image -> labels, 1 replica each, {a.rate:g} req/s, {a.seconds:g} s):")
    for m in ("e2e", "image", "labels", "gap"):
        print(f"  {m:<7} p50 {t[m]['p50']:7.2f}  p95 {t[m]['p95']:7.2f}  mean {t[m]['mean']:7.2f} ms  (n={t[m]['n']})")
    print(f"  end to end - (image + labels), mean: {t['e2e_minus_stage_sum_mean_ms']:.3f} ms")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
