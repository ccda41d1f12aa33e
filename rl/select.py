"""``python -m rl.select RUN_DIR`` -- learning curve and model selection on the tuning days.

Evaluates every ``RUN_DIR/snapshots/policy_iter*.pt`` and ``RUN_DIR/policy.pt``
greedily on the baselines' tuning windows (``trace.tune_days`` -- never the
evaluation days), writes ``RUN_DIR/curve.csv`` (iteration, env steps,
replica-seconds, SLO-violation rate, p99) and copies the cheapest snapshot whose
SLO-violation rate is <= ``slo_target`` to ``RUN_DIR/policy_selected.pt``
(if none meets it, the one with the fewest violations).
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import sys

from rl.baselines import run_one, summarize, tuning_windows
from rl.common import DEFAULT_CONFIG, base_scenario, load_rl_config, load_trace, trace_scenario
from simulator.io import run_cli
from simulator.config import ConfigError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl.select", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--scenario", default=None)
    ap.add_argument("--seed", type=int, default=1000, help="simulation seed base (as the baseline tuning)")
    a = ap.parse_args(argv)
    return run_cli(lambda: _run(a))


def _run(a) -> int:
    from simulator.learned import LearnedPolicy
    files = sorted(glob.glob(os.path.join(a.run_dir, "snapshots", "policy_iter*.pt")))
    if os.path.exists(os.path.join(a.run_dir, "policy.pt")):
        files.append(os.path.join(a.run_dir, "policy.pt"))
    if not files:
        raise ConfigError(f"{a.run_dir}: no policy.pt or snapshots/policy_iter*.pt")
    cfg = load_rl_config(a.config, scenario=a.scenario)
    rates = load_trace(cfg["trace"]["path"])
    base = base_scenario(cfg)
    cap = cfg["capacity_rps_per_replica"]
    wins = tuning_windows(cfg, rates)
    scen = [trace_scenario(base, cfg["trace"]["path"], w["start"], w["length"], cfg["trace"]["scale"], 1.0,
                           a.seed + i, cap, rates=rates) for i, w in enumerate(wins)]
    from simulator.service import build_service_model
    model = build_service_model(base.service, base.batching.max_batch_size)
    rows = []
    for f in files:
        pol = LearnedPolicy.load(f)
        tr = pol.meta.get("training", {})
        tot = {"replica_seconds": 0.0, "violations": 0.0, "requests": 0.0, "p99": 0.0}
        for sc in scen:
            r = summarize(run_one(sc, pol.spec(), model, policy=pol))
            tot["replica_seconds"] += r["replica_seconds"]
            tot["violations"] += r["violations"]
            tot["requests"] += r["requests"]
            tot["p99"] = max(tot["p99"], r["p99_ms"])
        row = {"file": os.path.relpath(f, a.run_dir), "iteration": tr.get("iterations"),
               "env_steps": tr.get("env_steps"), "replica_seconds": round(tot["replica_seconds"], 1),
               "slo_violation_rate": tot["violations"] / max(tot["requests"], 1.0), "p99_ms_max": tot["p99"]}
        rows.append(row)
        print(f"{row['file']:32s} iter {row['iteration']!s:>4s} steps {row['env_steps']!s:>8s}  replica-s "
              f"{row['replica_seconds']:8.0f}  SLO-viol {row['slo_violation_rate']:.4f}", flush=True)
    tmp = os.path.join(a.run_dir, "curve.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, os.path.join(a.run_dir, "curve.csv"))
    ok = [r for r in rows if r["slo_violation_rate"] <= cfg["slo_target"]]
    best = min(ok, key=lambda r: r["replica_seconds"]) if ok else min(rows, key=lambda r: r["slo_violation_rate"])
    dst = os.path.join(a.run_dir, "policy_selected.pt")
    shutil.copyfile(os.path.join(a.run_dir, best["file"]), dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    print(f"selected {best['file']} ({'meets' if ok else 'misses'} the SLO-violation target {cfg['slo_target']} "
          f"on the tuning windows) -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
