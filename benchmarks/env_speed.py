"""RL environment speed: env steps per second and simulated requests per second inside the env.

    python benchmarks/env_speed.py [--steps 3000] [--policy random|hold] [--synthetic-only] [--json OUT]
    python benchmarks/env_speed.py --pipeline configs/pipeline_example.yaml     # + the pipeline env, and the ratio

Steps the :class:`rl.env.ServeSimEnv` (one step = one control interval of the
scenario, ``record_requests: false``) with random or "hold" (delta 0) actions,
resetting at episode ends (resets are included in the timing), and reports
wall time per step, steps/s and simulated requests/s. With ``--pipeline``, the
pipeline environment (:class:`rl.pipeline_env.PipelineEnv`, the same settings on that
scenario; "hold" = the first index of every part) is stepped the same way in the
same run, and the ratios pipeline / single model are reported: env steps/s, and
simulated requests/s (a pipeline request visits every stage; its steps are
the pipeline's interval).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(env, steps: int, policy: str, seed: int, hold) -> dict:
    """Step ``env`` ``steps`` times (random or ``hold`` actions), resetting at episode ends (timed too)."""
    env.action_space.seed(seed)
    env.reset(seed=seed)  # warm-up: numba compilation, trace load
    t0 = time.perf_counter()
    _, _ = env.reset(seed=seed + 1)
    reqs = 0.0
    episodes = 1
    for i in range(steps):
        act = env.action_space.sample() if policy == "random" else hold
        _, _, term, trunc, info = env.step(act)
        reqs += info["arrival_rps"] * env.interval
        if term or trunc:
            env.reset(seed=seed + 2 + i)
            episodes += 1
    wall = time.perf_counter() - t0
    return {"steps": steps, "episodes": episodes, "wall_s": wall, "steps_per_s": steps / wall,
            "ms_per_step": 1e3 * wall / steps, "sim_requests": reqs, "sim_requests_per_s": reqs / wall,
            "sim_seconds_per_s": steps * env.interval / wall, "interval_s": env.interval}


def line(what: str, r: dict, policy: str) -> str:
    return (f"{what}: {r['steps_per_s']:.0f} env steps/s ({r['ms_per_step']:.2f} ms/step, {r['episodes']} episodes), "
            f"{r['sim_requests_per_s']:,.0f} simulated requests/s, {r['sim_seconds_per_s']:,.0f} simulated s/s "
            f"({policy} actions, interval {r['interval_s']:g} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--policy", choices=("random", "hold"), default="random")
    ap.add_argument("--synthetic-only", action="store_true", help="no trace needed")
    ap.add_argument("--config", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--pipeline", default=None, metavar="SCENARIO",
                    help="also step the pipeline env on this pipeline scenario; report the ratio")
    a = ap.parse_args(argv)
    from rl.env import ServeSimEnv
    from simulator.config import ConfigError
    try:
        env = ServeSimEnv({"config": a.config, "synthetic_only": a.synthetic_only})
        penv = None
        if a.pipeline:
            from rl.pipeline_env import PipelineEnv
            penv = PipelineEnv({"config": a.config, "scenario": a.pipeline, "synthetic_only": a.synthetic_only})
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    hold = env.action_map["values"].index(0) if 0 in env.action_map["values"] else 0
    out = dict(measure(env, a.steps, a.policy, a.seed, hold), policy=a.policy, synthetic_only=a.synthetic_only,
               seed=a.seed, scenario=env.cfg["scenario_name"], python=platform.python_version(),
               machine=platform.machine(), cpus=os.cpu_count())
    print(line("single model", out, a.policy))
    if penv is not None:
        p = measure(penv, a.steps, a.policy, a.seed, [0] * len(penv.action_space.nvec))
        out["pipeline"] = dict(p, scenario=penv.cfg["scenario_name"], stages=len(penv.stages))
        out["ratio_steps_per_s"] = p["steps_per_s"] / out["steps_per_s"]
        out["ratio_sim_requests_per_s"] = p["sim_requests_per_s"] / out["sim_requests_per_s"]
        print(line(f"pipeline ({len(penv.stages)} stages)", p, a.policy))
        print(f"pipeline / single model: {out['ratio_steps_per_s']:.2f}x env steps/s, "
              f"{out['ratio_sim_requests_per_s']:.2f}x simulated requests/s")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(out, f, indent=2)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
