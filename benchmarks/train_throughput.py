"""Training throughput against the number of env runners: env steps/s and seconds per PPO iteration.

    python benchmarks/train_throughput.py [--runners 0,1,2] [--iterations 4] [--json OUT]

For each number of remote env runners, one ``python -m rl.train`` trial (one seed, the default config,
``--iterations`` iterations) with ``--num-cpus`` = 1 + runners; from its ``progress.csv``, the median over
the iterations after the first (RLlib warm-up) of: seconds per iteration, env steps sampled per second of
iteration, and RLlib's own sampling and learner-update timers. 0 runners = the trial samples in its own
process, between learner updates.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(runners: int, iterations: int, out: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "rl.train", "--seeds", "1", "--iterations", str(iterations), "--num-env-runners",
           str(runners), "--num-cpus", str(1 + runners), "--snapshot-every", str(10 * iterations),
           "--checkpoint-every", "0", "--quiet", "--out", out, *extra]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"rl.train failed with {runners} runner(s): {p.stderr.strip().splitlines()[-1:]}")
    rows = list(csv.DictReader(open(os.path.join(out, "trials", "seed0", "progress.csv"))))[1:]

    def med(k):
        xs = [float(r[k]) for r in rows if r.get(k) not in (None, "")]
        return round(statistics.median(xs), 2) if xs else None
    return {"env_runners": runners, "iterations_measured": len(rows), "iter_s": med("iter_s"),
            "env_steps_per_s": med("env_steps_per_s"), "sample_s": med("sample_s"), "learn_s": med("learn_s")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runners", default="0,1,2", help="comma list of env-runner counts")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("extra", nargs="*", help="more rl.train arguments (after --)")
    a = ap.parse_args(argv)
    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(x) for x in a.runners.split(",")]:
            r = run(k, a.iterations, os.path.join(tmp, f"r{k}"), a.extra)
            res.append(r)
            print(f"env runners {k}: {r['iter_s']} s/iteration, {r['env_steps_per_s']} env steps/s, sampling "
                  f"{r['sample_s']} s, learner {r['learn_s']} s (median of {r['iterations_measured']})", flush=True)
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "results": res,
           "command": " ".join(["python", "benchmarks/train_throughput.py"] + (argv or sys.argv[1:]))}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
