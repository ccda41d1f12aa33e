"""Model selection on the tuning days: ``python -m rl.select RUN_DIR`` (one training run's snapshots).

The rule, used for a run's snapshots and for a population's trials alike (:func:`pick`): the candidate with
the fewest replica-seconds whose SLO-violation rate over the tuning windows (``trace.tune_days``, never the
evaluation days; the windows the baselines are tuned on, :func:`rl.baselines.tuning_set`) is at most
``slo_target`` -- the criterion the tuned HPA was chosen by; if none meets it, the one with the fewest
violations.

A pipeline scenario's policies (:mod:`rl.pipeline_env`) are scored on the windows ``rl.pipeline_eval`` tunes its
contenders on (IPA's four patterns of the tuning days, real time, the same initial replicas and simulation seed,
:func:`pipeline_tuning_scores`), and the cost of the rule is IPA's objective negated, ``ipa_cost = replica_weight
x mean replicas (all stages) - mean accuracy of the served requests`` (:func:`cost_key`), the criterion
``rl.pipeline_eval`` tunes IPA by: a variant that costs more replicas is worth them when it buys more accuracy.

``python -m rl.select RUN_DIR`` evaluates every ``RUN_DIR/snapshots/policy_iter*.pt`` (without snapshots:
``RUN_DIR/policy_final.pt`` or ``RUN_DIR/policy.pt``) greedily on the tuning windows, writes
``RUN_DIR/curve.csv`` (iteration, env steps, replica-seconds, SLO-violation rate, worst p99) and copies the
chosen file to ``RUN_DIR/policy_selected.pt``. ``rl.train`` does the same for every trial of a population.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import sys
from typing import Callable, Iterable, Mapping

from rl.common import DEFAULT_CONFIG, is_pipeline, load_rl_config
from simulator.config import ConfigError
from simulator.io import run_cli


def snapshot_files(run_dir: str) -> list[str]:
    """A run's snapshots (oldest first; ``rl.train`` also snapshots the last iteration), or its final
    policy when it has none."""
    files = sorted(glob.glob(os.path.join(run_dir, "snapshots", "policy_iter*.pt")))
    if not files:
        for name in ("policy_final.pt", "policy.pt"):
            if os.path.exists(os.path.join(run_dir, name)):
                return [os.path.join(run_dir, name)]
    return files


def tuning_scores(files: Iterable[str], cfg: Mapping, seed: int = 1000,
                  log: Callable[[str], None] | None = None) -> list[dict]:
    """Each policy file greedily on the tuning windows (simulation seed ``seed + i`` for window ``i``):
    ``{"file", "iteration", "env_steps", "replica_seconds", "slo_violation_rate", "p99_ms_max"}``."""
    if is_pipeline(cfg):
        return pipeline_tuning_scores(files, cfg, seed, log)
    from rl.baselines import run_one, summarize, tuning_set
    from simulator.learned import LearnedPolicy
    _, scen, model = tuning_set(dict(cfg), seed)
    rows = []
    for f in files:
        pol = LearnedPolicy.load(f)
        tr = pol.meta.get("training", {})
        rs = viol = req = p99 = 0.0
        for sc in scen:
            r = summarize(run_one(sc, pol.spec(), model, policy=pol))
            rs += r["replica_seconds"]
            viol += r["violations"]
            req += r["requests"]
            p99 = max(p99, r["p99_ms"])
        row = {"file": f, "iteration": tr.get("iterations"), "env_steps": tr.get("env_steps"),
               "replica_seconds": round(rs, 1), "slo_violation_rate": viol / max(req, 1.0), "p99_ms_max": p99}
        rows.append(row)
        if log:
            log(f"{os.path.basename(f):24s} iter {row['iteration']!s:>4s}  replica-s {rs:8.0f}  "
                f"SLO-viol {row['slo_violation_rate']:.4f}")
    return rows


def pipeline_tuning_scores(files: Iterable[str], cfg: Mapping, seed: int = 1000,
                           log: Callable[[str], None] | None = None) -> list[dict]:
    """Each pipeline policy file greedily on ``rl.pipeline_eval``'s tuning windows (module docstring; simulation
    seed ``seed``): :func:`tuning_scores`' fields plus ``accuracy`` (over the served requests), ``mean_replicas``
    (all stages) and ``ipa_cost``."""
    from rl.common import base_scenario, load_trace, select_windows
    from rl.pipeline_eval import window_scenario
    from simulator.pipeline import simulate_pipeline
    from simulator.pipeline_learned import PipelineLearnedPolicy
    base = base_scenario(cfg)
    tr = cfg["trace"]
    rates = load_trace(tr["path"])
    caps = [c[st.variant] for c, st in zip(cfg["pipeline"]["capacity_rps_per_replica"], base.pipeline.stages)]
    wins = list(select_windows(rates, tr["tune_days"], length=1200, what="trace.tune_days").values())
    rw = float(cfg["pipeline"]["replica_weight"])
    rows = []
    for f in files:
        pol = PipelineLearnedPolicy.load(f, base)
        t = pol.meta.get("training", {})
        rs = viol = req = acc = done = span = p99 = 0.0
        for w in wins:
            sc = window_scenario(base, tr["path"], w["start"], w["length"], float(tr["scale"]), seed, rates, caps,
                                 autoscaler=pol.spec())
            m = simulate_pipeline(sc, policy=pol).summary
            rs += m["replica_seconds"]
            viol += m["slo_violation_rate"] * m["requests"]
            req += m["requests"]
            if m["completed"]:
                acc += m["accuracy"]["mean"] * m["completed"]
                done += m["completed"]
            span += sc.duration_s - sc.warmup_s
            p99 = max(p99, m["latency_ms"]["p99"])
        mean_reps, accuracy = rs / span, acc / max(done, 1.0)
        row = {"file": f, "iteration": t.get("iterations"), "env_steps": t.get("env_steps"),
               "replica_seconds": round(rs, 1), "slo_violation_rate": viol / max(req, 1.0), "p99_ms_max": p99,
               "accuracy": accuracy, "mean_replicas": mean_reps, "ipa_cost": rw * mean_reps - accuracy}
        rows.append(row)
        if log:
            log(f"{os.path.basename(f):24s} iter {row['iteration']!s:>4s}  replica-s {rs:8.0f}  accuracy "
                f"{accuracy:.4f}  SLO-viol {row['slo_violation_rate']:.4f}")
    return rows


def cost_key(cfg: Mapping) -> str:
    """The cost :func:`pick` ranks by: ``replica_seconds``; ``ipa_cost`` for a pipeline (module docstring)."""
    return "ipa_cost" if is_pipeline(cfg) else "replica_seconds"


def pick(rows: list[Mapping], slo_target: float, cost: str = "replica_seconds") -> tuple[Mapping, bool]:
    """``(best, meets)``: the cheapest row (by ``cost``) with ``slo_violation_rate <= slo_target`` (ties: fewer
    violations, then the earlier row), else the row with the fewest violations."""
    if not rows:
        raise ValueError("nothing to select from")
    ok = [r for r in rows if r["slo_violation_rate"] <= slo_target]
    if ok:
        return min(ok, key=lambda r: (r[cost], r["slo_violation_rate"])), True
    return min(rows, key=lambda r: (r["slo_violation_rate"], r[cost])), False


def write_csv(path: str, rows: list[Mapping]) -> None:
    """Rows (same keys) to ``path`` atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def copy_atomic(src: str, dst: str) -> None:
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def select_run(run_dir: str, cfg: Mapping, seed: int = 1000, dst_name: str = "policy_selected.pt",
               log: Callable[[str], None] | None = None) -> dict:
    """Score a run's snapshots on the tuning windows, write ``curve.csv``, copy the chosen one to
    ``run_dir/dst_name``; returns ``{"selected": row, "meets": bool, "curve": rows}``."""
    files = snapshot_files(run_dir)
    if not files:
        raise ConfigError(f"{run_dir}: no policy.pt or snapshots/policy_iter*.pt")
    rows = tuning_scores(files, cfg, seed, log)
    for r in rows:
        r["file"] = os.path.relpath(r["file"], run_dir)
    write_csv(os.path.join(run_dir, "curve.csv"), rows)
    best, meets = pick(rows, float(cfg["slo_target"]), cost_key(cfg))
    copy_atomic(os.path.join(run_dir, best["file"]), os.path.join(run_dir, dst_name))
    return {"selected": dict(best), "meets": meets, "curve": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl.select", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--scenario", default=None)
    ap.add_argument("--seed", type=int, default=1000, help="simulation seed base (as the baseline tuning)")
    a = ap.parse_args(argv)
    return run_cli(lambda: _run(a))


def _run(a) -> int:
    cfg = load_rl_config(a.config, scenario=a.scenario)
    out = select_run(a.run_dir, cfg, a.seed, log=lambda m: print(m, flush=True))
    best = out["selected"]
    print(f"selected {best['file']} ({'meets' if out['meets'] else 'misses'} the SLO-violation target "
          f"{cfg['slo_target']} on the tuning windows) -> {os.path.join(a.run_dir, 'policy_selected.pt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
