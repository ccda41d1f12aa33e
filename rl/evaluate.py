"""``python -m rl.evaluate POLICY.pt [...] --trace PATH --out DIR`` -- a learned policy vs every baseline.

Runs each policy file and the baselines (:mod:`rl.baselines`: default and tuned
HPA, Knative KPA, IPA-style predictive, static tuned / best-in-hindsight, the
oracle) on the same held-out trace windows with the same seeds, and writes
into ``--out`` (atomically: a temporary folder renamed at the end; an existing
``--out`` is replaced only with ``--force`` and only if an earlier evaluation wrote it):

- ``results.csv``: one row per (policy, window, seed);
- ``summary.csv``: per policy over all windows and seeds -- replica-seconds,
  cost relative to the oracle, SLO-violation rate, p99 (mean and worst),
  failures, scaling actions -- and per (policy, window) in ``by_window.csv``;
- ``results.json``: everything above plus the windows, seeds, trace scale,
  tuned baseline settings, the scenario and the policies' provenance;
- ``timeline_<window>.png`` (replicas of every policy over time against the
  load, first seed) and ``cost_violation.png``.

Windows: ``--start/--length`` (trace seconds) give one window; otherwise four
20-minute windows like the IPA paper's patterns (bursty, steady low, steady
high, fluctuating) are chosen from the config's ``trace.eval_days`` (or from
the whole trace if it is shorter). ``--scale auto`` sizes the trace so its p99
rate needs ``target_util * max_replicas`` replicas (the factor is recorded).
Baselines are tuned on the config's ``trace.tune_days`` (``--tuned FILE`` reuses
a tuning written by ``python -m rl.baselines`` or an earlier evaluation).

A pipeline scenario (``--scenario configs/pipeline_example.yaml``, or a config whose scenario is one) runs
``rl.pipeline_eval``'s comparison instead, with the same policy files, ``--out``, ``--config``, ``--seeds``,
``--force``, ``--no-plots``, ``--allow-degenerate`` and ``--baselines`` (there: ``hpa``, ``kpa``, ``ipa``,
``oracle``); the trace and window options, ``--tuned`` and ``--perturb`` are single-model only and refused.

``--perturb service=1.3,startup=2`` evaluates everything on a drifted deployment
(:mod:`rl.drift`; keys ``service`` -- per-batch service times, ``startup`` --
replica start-up delays, ``overhead`` -- per-request time outside the server,
``contention`` -- the node's interference / rate-contention terms; each a factor
> 0): the learned policies and the baselines keep what they were trained or tuned
with on the nominal deployment (a tuning is never redone on the perturbed one),
the same load is replayed, and the oracle and the best static count know the
perturbed deployment (its capacity is simulated again), so they stay bounds.
The factors are recorded in ``results.json`` (``perturb``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from rl.baselines import baseline_specs, run_one, summarize, tune
from rl import sanity
from rl.drift import PERTURB_KEYS, parse_perturb, perturb_label, perturb_scenario
from rl.common import policy_names as common_policy_names
from rl.common import (DAY_S, DEFAULT_CONFIG, auto_trace_scale, base_scenario, jsonable, load_rl_config, load_trace,
                       require_single_model, select_windows, trace_scenario, window_stats, write_json)
from simulator.io import OutputFolder, json_has_keys, run_cli
from simulator.config import ConfigError
from simulator.policy import StaticPolicy

BASELINES = ("hpa_default", "hpa_tuned", "knative", "predictive", "static_tuned", "static_best", "oracle")


def _parse_baselines(s: str) -> list[str]:
    if s in ("all", ""):
        return list(BASELINES)
    if s == "none":
        return []
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in BASELINES]
    if bad:
        raise ConfigError(f"--baselines: unknown {bad[0]!r}; choose from all, none, {', '.join(BASELINES)}")
    return out


def _windows(a, rates: np.ndarray, cfg: dict) -> list[dict]:
    n = len(rates)
    if a.start is not None:
        length = a.length or 1200
        if a.start < 0 or length <= 0:
            raise ConfigError(f"--start/--length: must be >= 0 and > 0 (got {a.start}, {length})")
        if a.start + length > n:
            raise ConfigError(f"--start {a.start:g} --length {length:g}: beyond the end of {a.trace} "
                              f"({n} seconds)")
        return [dict(window_stats(rates, int(a.start), int(length)), pattern="custom")]
    length = int(a.length or 1200)
    days = cfg["trace"]["eval_days"]
    if days[1] * DAY_S > n:
        days = [1, max(1, int(math.ceil(n / DAY_S)))]
    try:
        w = select_windows(rates, days, length=length, step=max(60, length // 4), what=f"{a.trace} (days {days})")
    except ConfigError:
        if n < 2 * length:
            raise ConfigError(f"{a.trace}: {n} seconds is too short for {length}-s windows; "
                              f"give --start/--length") from None
        raise
    return list(w.values())


def policy_names(paths: list[str], reserved=BASELINES) -> list[str]:
    """:func:`rl.common.policy_names` with the baselines' names reserved."""
    return common_policy_names(paths, reserved)


def static_sweep(sc, lo: int, hi: int, slo_target: float, model) -> tuple[int, dict]:
    """Best static count in hindsight for this very run: ``lo`` upward until a count meets the target
    (violations fall with the count); ``(count, {count: result})``, the count with the fewest violations
    when none meets it. The runs are also the oracle's static candidates."""
    runs = {}
    for n in range(lo, hi + 1):
        sc2 = sc.replace(cluster=dataclasses.replace(sc.cluster, replicas=n))
        runs[n] = run_one(sc2, None, model, policy=StaticPolicy(n))
        if runs[n].summary["slo_violation_rate"] <= slo_target:
            return n, runs
    return min(runs, key=lambda k: (runs[k].summary["slo_violation_rate"], k)), runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl.evaluate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policies", nargs="*", help="policy.pt files (none: baselines only)")
    ap.add_argument("--baselines", default="all", help=f"all | none | comma list of {', '.join(BASELINES)}")
    ap.add_argument("--trace", default=None, help="rate trace CSV (header rps, one line per second); "
                                                  "default: the config's trace")
    ap.add_argument("--start", type=float, default=None, help="window start (trace seconds)")
    ap.add_argument("--length", type=float, default=None, help="window length (trace seconds, default 1200)")
    ap.add_argument("--scale", default="config", help="rate factor; config (default: the config's trace.scale); "
                                                      "auto (the study rule on --trace)")
    ap.add_argument("--speedup", type=float, default=1.0, help="trace seconds per simulated second")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--scenario", default=None, help="scenario YAML (default: the config's)")
    ap.add_argument("--tuned", default=None, help="reuse a baseline tuning (JSON from rl.baselines / an earlier run)")
    ap.add_argument("--perturb", default=None, metavar="KEY=F,...",
                    help=f"evaluate on a drifted deployment, e.g. service=1.3,startup=2 (keys: {', '.join(PERTURB_KEYS)})")
    ap.add_argument("--out", required=True, help="output folder (written atomically)")
    ap.add_argument("--force", action="store_true",
                    help="replace --out if an earlier rl.evaluate wrote it (never another folder)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--allow-degenerate", action="store_true",
                    help="exit 0 even when a sanity check fails (the section is still printed and recorded)")
    a = ap.parse_args(argv)
    pipe = run_cli(lambda: _pipeline_argv(a))
    if isinstance(pipe, list):
        from rl import pipeline_eval
        return pipeline_eval.main(pipe)
    if pipe:
        return pipe
    return run_cli(lambda: _run(a), errors=(sanity.DegenerateResult,))


# options of a single-model evaluation that a pipeline comparison has no use for (it always replays the four
# held-out windows of the config's eval days at the rule's scale, in real time, tuning its contenders itself)
SINGLE_MODEL_ONLY = ("trace", "start", "length", "scale", "speedup", "tuned", "perturb")


def _pipeline_argv(a) -> list[str] | int:
    """When the scenario (``--scenario``, else the config's) is a pipeline, ``rl.pipeline_eval``'s arguments for
    the same comparison (the one code path for pipelines: per-stage HPA and KPA, the IPA-style configurator, the
    oracle and the policy files on the held-out windows); else 0. An option only a single-model evaluation
    takes is refused in one line."""
    import yaml
    from simulator.config import load_scenario
    from rl.common import resolve_path
    path = a.scenario
    if path is None:
        if not os.path.exists(a.config):
            return 0                                   # the single-model path reports the missing file
        with open(a.config) as f:
            raw = yaml.safe_load(f) or {}
        path = raw.get("scenario") if isinstance(raw, dict) else None
        if not isinstance(path, str):
            return 0
        path = resolve_path(path, os.path.dirname(os.path.abspath(a.config)))
    if not os.path.exists(path) or load_scenario(path).pipeline is None:
        return 0
    defaults = {"scale": "config", "speedup": 1.0}
    for k in SINGLE_MODEL_ONLY:
        if getattr(a, k) != defaults.get(k):
            raise ConfigError(f"--{k}: not taken for a pipeline scenario ({path}): rl.pipeline_eval replays the "
                              f"config's held-out windows at its own scale rule")
    from rl.pipeline_eval import CONTENDERS
    if a.baselines in ("all", ""):
        contenders = list(CONTENDERS)
    elif a.baselines == "none":
        contenders = []
    else:
        contenders = [x.strip() for x in a.baselines.split(",") if x.strip()]
        bad = [x for x in contenders if x not in CONTENDERS]
        if bad:
            raise ConfigError(f"--baselines: unknown {bad[0]!r} for a pipeline scenario; choose from all, none, "
                              f"{', '.join(CONTENDERS)}")
    argv = [path, *a.policies, "--out", a.out, "--config", a.config, "--seeds", str(a.seeds),
            "--contenders", ",".join(contenders)]
    return argv + [f for f, on in (("--force", a.force), ("--no-plots", a.no_plots),
                                   ("--allow-degenerate", a.allow_degenerate)) if on]


def _run(a) -> int:
    """Check ``--out`` first (refused before any simulation), evaluate, put the folder in place, then judge."""
    t_start = time.time()
    with OutputFolder(a.out, "rl.evaluate", force=a.force,
                      legacy=json_has_keys("results.json", "summary", "by_window", "rows")) as of:
        summary, checks = _evaluate(a, of.path)
    print_table(summary)
    print("\n".join(sanity.section(checks)))
    print(f"wrote {a.out}/results.csv, summary.csv, by_window.csv, results.json"
          f"{'' if a.no_plots else ', timeline_*.png, cost_violation.png'} ({time.time() - t_start:.0f} s)")
    bad = sanity.failure(checks)
    if bad and not a.allow_degenerate:
        raise sanity.DegenerateResult(f"{bad} (results written to {a.out}; --allow-degenerate accepts them)")
    return 0


def _evaluate(a, folder) -> tuple[list[dict], list]:
    """Run every policy and baseline; write the files into ``folder``; ``(summary rows, sanity checks)``."""
    t_start = time.time()
    if a.seeds < 1:
        raise ConfigError("--seeds: must be >= 1")
    if not (a.speedup > 0 and math.isfinite(a.speedup)):
        raise ConfigError(f"--speedup: must be > 0 (got {a.speedup})")
    base_names = _parse_baselines(a.baselines)
    factors = parse_perturb(a.perturb)
    from simulator.learned import LearnedPolicy
    pols = {name: LearnedPolicy.load(p) for name, p in zip(policy_names(a.policies), a.policies)}
    if not pols and not base_names:
        raise ConfigError("nothing to evaluate: give policy files and/or --baselines")
    cfg = load_rl_config(a.config, scenario=a.scenario)
    require_single_model(cfg, "rl.evaluate")
    trace = os.path.abspath(a.trace) if a.trace else cfg["trace"]["path"]
    rates = load_trace(trace)
    if a.scale == "config" and trace == cfg["trace"]["path"]:
        scale, scale_rule = float(cfg["trace"]["scale"]), cfg["trace"].get("scale_rule", "the config's trace.scale")
    elif a.scale in ("auto", "config"):
        n_days = max(1, int(math.ceil(len(rates) / DAY_S)))
        days = cfg["trace"]["eval_days"] if cfg["trace"]["eval_days"][1] * DAY_S <= len(rates) else [1, n_days]
        scale, scale_rule, _ = auto_trace_scale(rates, days, base_scenario(cfg), float(cfg["slo_target"]),
                                                float(cfg["trace"]["target_util"]))
    else:
        try:
            scale = float(a.scale)
        except ValueError:
            raise ConfigError(f"--scale: must be a number or auto (got {a.scale!r})") from None
        if not scale > 0:
            raise ConfigError(f"--scale: must be > 0 (got {a.scale})")
        scale_rule = "given (--scale)"
    a.trace = trace
    wins = _windows(a, rates, cfg)
    base = perturb_scenario(base_scenario(cfg), factors)
    for name, p in pols.items():
        ps = p.meta.get("scenario", {})
        if ps.get("hash") and ps["hash"] != cfg["scenario_hash"]:
            print(f"warning: {name} was trained on scenario {ps.get('name')} ({ps.get('hash')}), evaluating on "
                  f"{cfg['scenario_name']} ({cfg['scenario_hash']})", file=sys.stderr)
    cap = cfg["capacity_rps_per_replica"]
    slo_t = float(cfg["slo_target"])
    cap_oracle = cap
    if factors:
        from simulator.capacity import per_replica_capacity
        cap_oracle = float(per_replica_capacity(base, violation_target=slo_t))
        print(f"perturbed deployment: {perturb_label(factors)} (one replica serves {cap_oracle:.1f} req/s at the "
              f"SLO, nominal {cap:.1f}; policies and baselines keep their nominal training / tuning)", flush=True)
    from simulator.service import build_service_model
    model = build_service_model(base.service, base.batching.max_batch_size)

    tuned = None
    need_tuning = any(b in base_names for b in ("hpa_tuned", "knative", "predictive", "static_tuned"))
    if need_tuning:
        if a.tuned:
            if not os.path.exists(a.tuned):
                raise ConfigError(f"--tuned {a.tuned}: file not found")
            with open(a.tuned) as f:
                tuned = json.load(f)
            tuned = tuned.get("tuned", tuned)
            if tuned.get("scenario_hash") not in (None, cfg["scenario_hash"]):
                print(f"warning: --tuned {a.tuned} was tuned on scenario {tuned.get('scenario_hash')}, evaluating "
                      f"on {cfg['scenario_hash']}", file=sys.stderr)
        else:
            tuned = tune(cfg, log=lambda m: print(m, flush=True))
    specs = baseline_specs(tuned, cap)

    seeds = [100 + i for i in range(a.seeds)]
    rows, timelines = [], {}
    from rl.oracle import fleet_caps
    from rl.study import share_above_min
    from simulator.capacity import fleet_capacities
    node_caps = fleet_caps(base, slo_t)                 # per replica count, if replicas contend (else None)
    caps_all = node_caps if node_caps is not None else fleet_capacities(base, base.cluster.max_replicas, slo_t)
    oracle_pairs: list[dict] = []
    load_windows: list[dict] = []
    print(f"evaluating {', '.join(list(pols) + base_names)} on {len(wins)} window(s) x {len(seeds)} seed(s) "
          f"of {os.path.basename(trace)} (scale {scale}, speedup {a.speedup:g})", flush=True)
    for w in wins:
        scs = [trace_scenario(base, trace, w["start"], w["length"], scale, a.speedup, s, cap, rates=rates)
               for s in seeds]
        t_w = time.time()
        per: dict[str, list] = {}
        for name, pol in pols.items():
            per[name] = [run_one(sc, pol.spec(), model, policy=pol) for sc in scs]
        for b in base_names:
            if b in specs:
                sp = specs[b]
                res = []
                for sc in scs:
                    if sp.kind == "static":
                        n = sp.params["replicas"]
                        sc = sc.replace(cluster=sc.cluster.__class__(**{**sc.cluster.__dict__, "replicas": n}))
                    res.append(run_one(sc, sp, model))
                per[b] = res
        extra: dict[str, dict] = {}
        c = base.cluster
        sweeps = [static_sweep(sc, max(c.min_replicas, 1), c.max_replicas, slo_t, model) for sc in scs] \
            if ("static_best" in base_names or "oracle" in base_names) else []
        if "static_best" in base_names:
            per["static_best"] = [runs[n] for n, runs in sweeps]
            extra["static_best"] = {"replicas": [n for n, _ in sweeps]}
        if "oracle" in base_names:
            from rl.oracle import oracle_run
            res, ch = [], []
            if node_caps is not None:
                print(f"  oracle: replicas share the node's cores; fleet capacity by replica count "
                      f"{', '.join(f'{n + 1}: {c:.1f}' for n, c in enumerate(node_caps))} rps", flush=True)
            for sc, (_, runs) in zip(scs, sweeps):
                r, choice, _ = oracle_run(sc, cap_oracle, slo_t, model=model, caps=node_caps, statics=runs)
                res.append(r)
                ch.append(choice)
            per["oracle"] = res
            extra["oracle"] = {"choice": ch}
            for i, sc in enumerate(scs):
                sb = sweeps[i][1][sweeps[i][0]].summary
                oracle_pairs.append({"window": w["pattern"], "seed": sc.seed, "static_replicas": sweeps[i][0],
                                     "oracle_cost": res[i].summary["replica_seconds"],
                                     "oracle_viol": res[i].summary["slo_violation_rate"],
                                     "static_cost": sb["replica_seconds"], "static_viol": sb["slo_violation_rate"]})
        load_windows.append({"window": w["pattern"], "share_above_min": share_above_min(
            rates[int(w["start"]):int(w["start"] + w["length"])] * scale, caps_all, c.min_replicas)})
        for name, res in per.items():
            for i, (sc, r) in enumerate(zip(scs, res)):
                row = {"policy": name, "window": w["pattern"], "start_s": w["start"], "length_s": w["length"],
                       "seed": sc.seed, **summarize(r)}
                if "oracle" in per:
                    row["cost_vs_oracle"] = r.summary["replica_seconds"] / per["oracle"][i].summary["replica_seconds"]
                if name in extra:
                    v = extra[name]
                    row["note"] = json.dumps({k: (x[i] if isinstance(x, list) else x) for k, x in v.items()})
                rows.append(row)
            timelines[(w["pattern"], name)] = [(t["time_s"], t["replicas"], t["arrival_rps"]) for t in res[0].timeline]
        print(f"  window {w['pattern']} (trace s {w['start']}..{w['start'] + w['length']}, mean "
              f"{w['mean_rps'] * scale:.0f} rps scaled): {len(per)} policies in {time.time() - t_w:.0f} s", flush=True)
        for name in per:
            rr = [r for r in rows if r["policy"] == name and r["window"] == w["pattern"]]
            print(f"    {name:14s} replica-s {np.mean([r['replica_seconds'] for r in rr]):8.0f}  SLO-viol "
                  f"{np.mean([r['slo_violation_rate'] for r in rr]):.4f}  p99 {np.mean([r['p99_ms'] for r in rr]):6.1f} ms",
                  flush=True)

    summary = aggregate(rows, ["policy"])
    by_window = aggregate(rows, ["policy", "window"])
    order = list(pols) + [b for b in BASELINES if b in base_names]
    summary.sort(key=lambda r: order.index(r["policy"]))
    by_window.sort(key=lambda r: (r["window"], order.index(r["policy"])))
    mins = base.cluster.min_replicas
    checks = [sanity.load_needs_scaling(load_windows, mins),
              sanity.policies_scale({r["policy"]: r["mean_replicas"] for r in summary
                                     if not r["policy"].startswith("static")}, mins),
              sanity.oracle_is_bound(oracle_pairs, slo_t)]
    by_pol = {r["policy"]: r for r in summary}
    for name in pols:
        if "hpa_tuned" in by_pol:
            checks.append(sanity.costs_differ(name, by_pol[name]["replica_seconds"], "hpa_tuned",
                                              by_pol["hpa_tuned"]["replica_seconds"]))
    result = {"trace": trace, "scale": scale, "scale_rule": scale_rule, "speedup": a.speedup, "seeds": seeds,
              "perturb": {k: factors.get(k, 1.0) for k in PERTURB_KEYS}, "perturb_label": perturb_label(factors),
              "capacity_oracle_rps_per_replica": cap_oracle,
              "windows": wins, "study": (base.provenance or {}).get("study"),
              "sanity": sanity.record(checks, a.allow_degenerate),
              "slo_target": slo_t, "capacity_rps_per_replica": cap, "scenario": cfg["scenario_dict"],
              "config": {k: v for k, v in cfg.items() if k != "scenario_dict"},
              "policies": {n: {"path": os.path.abspath(pp), "meta": p.meta} for (n, p), pp in zip(pols.items(), a.policies)},
              "baselines": {b: ({"kind": specs[b].kind, "params": dict(specs[b].params),
                                 "interval_s": specs[b].interval_s} if b in specs else None) for b in base_names},
              "tuned": tuned,
              "summary": summary, "by_window": by_window, "rows": rows, "wall_s": time.time() - t_start}
    _write(str(folder), result, rows, summary, by_window, timelines, wins, order, not a.no_plots)
    return summary, checks


def aggregate(rows: list[dict], keys: list[str]) -> list[dict]:
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for k, rr in groups.items():
        req = sum(r["requests"] for r in rr)
        d = dict(zip(keys, k))
        d.update(runs=len(rr), replica_seconds=sum(r["replica_seconds"] for r in rr),
                 mean_replicas=float(np.mean([r["mean_replicas"] for r in rr])),
                 slo_violation_rate=sum(r["violations"] for r in rr) / max(req, 1),
                 p99_ms_mean=float(np.mean([r["p99_ms"] for r in rr])), p99_ms_max=float(np.max([r["p99_ms"] for r in rr])),
                 failed=int(sum(r["failed"] for r in rr)),
                 scaling_actions=float(np.mean([r["scaling_actions"] for r in rr])))
        if all("cost_vs_oracle" in r for r in rr):
            orc = sum(r["replica_seconds"] / r["cost_vs_oracle"] for r in rr)
            d["cost_vs_oracle"] = d["replica_seconds"] / orc
        out.append(d)
    return out


def print_table(summary: list[dict]) -> None:
    print(f"{'policy':16s} {'replica-s':>10s} {'vs oracle':>9s} {'SLO-viol':>9s} {'p99 ms':>8s} {'p99 max':>8s} "
          f"{'failed':>7s} {'actions':>7s}")
    for r in summary:
        vo = r.get("cost_vs_oracle")
        print(f"{r['policy']:16s} {r['replica_seconds']:10.0f} {'' if vo is None else f'{vo:.3f}':>9s} "
              f"{r['slo_violation_rate']:9.4f} {r['p99_ms_mean']:8.1f} {r['p99_ms_max']:8.1f} {r['failed']:7d} "
              f"{r['scaling_actions']:7.1f}")


def _csv(path: str, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(jsonable(r))


def _write(folder, result, rows, summary, by_window, timelines, wins, order, plots: bool) -> None:
    _csv(os.path.join(folder, "results.csv"), rows)
    _csv(os.path.join(folder, "summary.csv"), summary)
    _csv(os.path.join(folder, "by_window.csv"), by_window)
    write_json(os.path.join(folder, "results.json"), result)
    if plots:
        _plots(folder, timelines, wins, summary, order)


def _plots(d, timelines, wins, summary, order) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for w in wins:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
        load = None
        for name in order:
            tl = timelines.get((w["pattern"], name))
            if not tl:
                continue
            t = [x[0] for x in tl]
            if load is None:
                load = True
                ax1.plot(t, [x[2] for x in tl], color="k", lw=1)
            ax2.step(t, [x[1] for x in tl], where="post", lw=1.2 if name != "oracle" else 2, label=name,
                     ls="--" if name == "oracle" else "-")
        ax1.set_ylabel("arrival rps")
        ax1.set_title(f"{w['pattern']}: trace seconds {w['start']}..{w['start'] + w['length']}")
        ax2.set_ylabel("replicas (requested)")
        ax2.set_xlabel("simulated time (s)")
        ax2.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        fig.savefig(os.path.join(d, f"timeline_{w['pattern']}.png"), dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in summary:
        x = r.get("cost_vs_oracle", r["replica_seconds"])
        ax.scatter(x, r["slo_violation_rate"] * 100)
        ax.annotate(r["policy"], (x, r["slo_violation_rate"] * 100), fontsize=8)
    ax.set_xlabel("cost (replica-seconds relative to oracle)" if summary and "cost_vs_oracle" in summary[0]
                  else "replica-seconds")
    ax.set_ylabel("SLO violations (% of requests)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "cost_violation.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
