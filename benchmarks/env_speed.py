"""RL environment speed: env steps per second and simulated requests per second inside the env.

    python benchmarks/env_speed.py [--steps 3000] [--policy random|hold] [--synthetic-only] [--json OUT]

Steps the :class:`rl.env.ServeSimEnv` (one step = one control interval of the
scenario, ``record_requests: false``) with random or "hold" (delta 0) actions,
resetting at episode ends (resets are included in the timing), and reports
wall time per step, steps/s and simulated requests/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--policy", choices=("random", "hold"), default="random")
    ap.add_argument("--synthetic-only", action="store_true", help="no trace needed")
    ap.add_argument("--config", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    from rl.env import ServeSimEnv
    from simulator.config import ConfigError
    try:
        env = ServeSimEnv({"config": a.config, "synthetic_only": a.synthetic_only})
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    hold = env.action_map["values"].index(0) if 0 in env.action_map["values"] else 0
    env.action_space.seed(a.seed)
    env.reset(seed=a.seed)  # warm-up: numba compilation, trace load
    t0 = time.perf_counter()
    _, _ = env.reset(seed=a.seed + 1)
    reqs = 0.0
    episodes = 1
    for i in range(a.steps):
        act = env.action_space.sample() if a.policy == "random" else hold
        _, _, term, trunc, info = env.step(act)
        reqs += info["arrival_rps"] * env.interval
        if term or trunc:
            env.reset(seed=a.seed + 2 + i)
            episodes += 1
    wall = time.perf_counter() - t0
    out = {"steps": a.steps, "episodes": episodes, "wall_s": wall, "steps_per_s": a.steps / wall,
           "ms_per_step": 1e3 * wall / a.steps, "sim_requests": reqs, "sim_requests_per_s": reqs / wall,
           "sim_seconds_per_s": a.steps * env.interval / wall, "interval_s": env.interval,
           "policy": a.policy, "synthetic_only": a.synthetic_only, "seed": a.seed,
           "scenario": env.cfg["scenario_name"], "python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count()}
    print(f"{out['steps_per_s']:.0f} env steps/s ({out['ms_per_step']:.2f} ms/step, {episodes} episodes), "
          f"{out['sim_requests_per_s']:,.0f} simulated requests/s, {out['sim_seconds_per_s']:,.0f} simulated s/s "
          f"({a.policy} actions, interval {env.interval:g} s)")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(out, f, indent=2)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
