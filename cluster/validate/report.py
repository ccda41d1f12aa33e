"""The validation's human outputs: the real-vs-simulated table (console and ``report.md``) and the
overlay plots."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from calibration.compare import VALIDATION_TARGETS

def fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if kind == "pct":
        return f"{v * 100:.2f} %"
    if kind == "rel":
        return f"{v * 100:+.1f} %"
    if kind == "int":
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


ROWS = (("replica-seconds", "replica_seconds", ""), ("SLO violations", "slo_violation_rate", "pct"),
        ("p50 ms", "p50_ms", ""), ("p95 ms", "p95_ms", ""), ("p99 ms", "p99_ms", ""),
        ("failures", "failures", "int"))


def table_lines(summary: dict, markdown: bool = True) -> list[str]:
    """The real-vs-simulated table (one row per policy and metric group)."""
    pols = summary["policies"]
    if markdown:
        head = ("| policy | replica-s real / sim (err) | SLO viol. real / sim | p50 ms real / sim (err) | "
                "p95 ms real / sim (err) | p99 ms real / sim (err) | failures real / sim |")
        lines = [head, "|" + "---|" * 7]
    else:
        lines = [f"{'policy':<12} {'replica-s real/sim':>22} {'err':>7} {'SLO-viol real/sim':>19} "
                 f"{'p50 real/sim':>14} {'p95 real/sim':>14} {'err':>7} {'p99 real/sim':>14} {'fail r/s':>10}"]
    for name, p in pols.items():
        cmp_ = p["compare"]

        def rs(k, kind=""):
            return f"{fmt(cmp_[k]['real'], kind)} / {fmt(cmp_[k]['sim'], kind)}"

        def ok(k):
            w = cmp_[k].get("within_target")
            return "" if w is None else (" ✓" if w else " ✗")
        if markdown:
            lines.append(f"| {name} | {rs('replica_seconds')} ({fmt(cmp_['replica_seconds']['rel_err'], 'rel')}{ok('replica_seconds')}) | "
                         f"{rs('slo_violation_rate', 'pct')} | {rs('p50_ms')} ({fmt(cmp_['p50_ms']['rel_err'], 'rel')}) | "
                         f"{rs('p95_ms')} ({fmt(cmp_['p95_ms']['rel_err'], 'rel')}{ok('p95_ms')}) | "
                         f"{rs('p99_ms')} ({fmt(cmp_['p99_ms']['rel_err'], 'rel')}) | {rs('failures', 'int')} |")
        else:
            lines.append(f"{name:<12} {rs('replica_seconds'):>22} {fmt(cmp_['replica_seconds']['rel_err'], 'rel'):>7} "
                         f"{rs('slo_violation_rate', 'pct'):>19} {rs('p50_ms'):>14} {rs('p95_ms'):>14} "
                         f"{fmt(cmp_['p95_ms']['rel_err'], 'rel'):>7} {rs('p99_ms'):>14} {rs('failures', 'int'):>10}")
    return lines


def workload_line(w: dict, duration_s: float) -> str:
    """The report's sentence on the validation load (``summary["workload"]``)."""
    if w["kind"] == "trace":
        return (f"Workload: `{os.path.basename(w['trace'])}` trace seconds {w['start_s']:g}..{w['start_s'] + w['length_s']:g} "
                f"compressed x{w['speedup']:g} into {duration_s:g} s, rate scale {w['scale']:g} ({w['scale_rule']}); "
                f"mean {w['mean_rps']:g} rps, p99 {w['p99_rps']:g} rps, max {w['max_rps']:g} rps.")
    return f"Workload: `{json.dumps(w.get('spec'))[:300]}` for {duration_s:g} s."


def report_md(s: dict) -> str:
    w = s["workload"]
    L = [f"# Sim-to-real validation: {s['policy_file']}", "",
         f"Created {s['created']} on {s['machine']} ({s['backend']} backend). Calibrated scenario "
         f"`{s['scenario_path']}` (SLO {s['slo_ms']:g} ms, replicas {s['min_replicas']}..{s['max_replicas']}). "
         f"Simulated side: {s['sim_seeds']} seed(s) per policy, replaying each real run's own send times and "
         f"initial replicas with the same policy object. Summary window: requests sent in "
         f"[{s['warmup_s']:g}, {s['duration_s']:g}) s.", ""]
    L += [workload_line(w, s["duration_s"]), ""]
    L += ["## Real vs simulated", ""] + table_lines(s) + [
        "", "Cells: real / simulated (relative error of the simulation). Targets: replica-seconds within "
        f"{VALIDATION_TARGETS['replica_seconds'][1] * 100:.0f} %, p95 within {VALIDATION_TARGETS['p95_ms'][1] * 100:.0f} % (✓/✗).", ""]
    L += ["| policy | what | interval | initial replicas | scaling actions real / sim | held ticks (metrics missing) | mean replicas real / sim |",
          "|---|---|---|---|---|---|---|"]
    for name, p in s["policies"].items():
        c = p["compare"]
        L.append(f"| {name} | {p['label']} | {p['interval_s']:g} s | {p['initial_replicas']} | "
                 f"{fmt(c['scaling_actions']['real'], 'int')} / {fmt(c['scaling_actions']['sim'])} | "
                 f"{p['real']['held_ticks']} of {p['real']['ticks']} | "
                 f"{c['mean_replicas']['real']:.2f} / {c['mean_replicas']['sim']:.2f} |")
    rk = s["ranking"]
    L += ["", "## Ranking", "",
          f"Cost order (cheapest first): real {' < '.join(rk['cost_order_real'])}; simulated "
          f"{' < '.join(rk['cost_order_sim'])} ({'same' if rk['cost_order_agrees'] else 'different'}).", "",
          f"Pairwise (equal SLO = violation rates within {rk['equal_slo_pts']:g} points):", "",
          "| pair | real | simulated | agree |", "|---|---|---|---|"]
    for p in rk["pairs"]:
        def v(x):
            return f"{x['winner'] or '-'} ({x['why']})"
        L.append(f"| {p['a']} vs {p['b']} | {v(p['real'])} | {v(p['sim'])} | {'yes' if p['agree'] else 'no'} |")
    t = s["targets"]
    L += ["", "## Targets", "",
          f"- simulated vs real replica-seconds within 10 % for every policy: **{'met' if t['cost'] else 'not met'}**",
          f"- simulated vs real p95 within 15 % for every policy: **{'met' if t['p95'] else 'not met'}**",
          f"- same ranking of policies in simulation and reality: **{'met' if t['ranking'] else 'not met'}**", ""]
    if s.get("static"):
        st = s["static"]
        L += [f"Static count: {st['replicas']} (smallest with simulated SLO violations <= {st['slo_target'] * 100:g} % on this "
              f"workload; " + ", ".join(f"{r['replicas']}: {r['slo_violation_rate'] * 100:.2f} %" for r in st["grid"]) + ").", ""]
    if s.get("hpa"):
        L += [f"Tuned HPA: {json.dumps(s['hpa']['params'])} every {s['hpa']['interval_s']:g} s ({s['hpa']['source']}).", ""]
    notes = []
    for name, p in s["policies"].items():
        if p["real"]["held_ticks"]:
            notes.append(f"{name}: the controller held its decision at {p['real']['held_ticks']} tick(s) "
                         f"(metrics missing; see {name}/controller.log)")
        if p.get("errors"):
            notes.append(f"{name}: {len(p['errors'])} backend/controller error(s): {p['errors'][0][:200]}")
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    L += ["## Plots", "", "`overlay.png`: per policy, replicas requested / ready (real solid, simulated dashed) and "
          "p95 latency per control interval, real vs simulated. `overlay_<policy>.png`: the same per policy, "
          "with the offered load.", ""]
    L += ["## Files", "", "`summary.json` (everything here), `<policy>/requests.csv` (every real request), "
          "`<policy>/decisions.csv` (every control tick: the live observation, the policy's answer, replicas asked, "
          "held or not), `<policy>/replicas.csv`, `<policy>/sim_timeline.csv` (first seed), "
          "`<policy>/controller.log`, `<policy>/logs/`.", ""]
    return "\n".join(L)


def plots(d: Path, s: dict, curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(curves)
    slo = s["slo_ms"]
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 2.9 * len(names) + 0.4), squeeze=False, sharex=True)
    for i, n in enumerate(names):
        cv = curves[n]
        ax = axes[i][0]
        ax.step(cv["ts"], cv["real_req"], where="post", color="C0", lw=1.6, label="real requested")
        ax.step(cv["ts"], cv["real_rdy"], where="post", color="C0", lw=0.9, alpha=0.6, label="real ready")
        ax.step(cv["ts"], cv["sim_req"], where="post", color="C1", lw=1.6, ls="--", label="sim requested")
        ax.step(cv["ts"], cv["sim_rdy"], where="post", color="C1", lw=0.9, ls="--", alpha=0.6, label="sim ready")
        ax.set_ylabel(f"{n}\nreplicas")
        ax.set_ylim(0, s["max_replicas"] + 0.5)
        ax.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
        c = s["policies"][n]["compare"]["replica_seconds"]
        ax.set_title(f"{n}: replica-s real {c['real']:.0f} / sim {c['sim']:.0f} ({fmt(c['rel_err'], 'rel')})", fontsize=9)
        if i == 0:
            ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax2 = ax.twinx()
        ax2.plot(cv["real_series"]["t_s"], cv["real_series"]["arrival_rps"], color="k", lw=0.6, alpha=0.35)
        ax2.set_ylabel("load rps", fontsize=7, color="grey")
        ax2.tick_params(labelsize=7, colors="grey")
        ax = axes[i][1]
        ax.plot(cv["real_series"]["t_s"], cv["real_series"]["p95_ms"], color="C0", lw=1.4, marker=".", label="real p95")
        ax.plot(cv["sim_series"]["t_s"], cv["sim_series"]["p95_ms"], color="C1", lw=1.4, ls="--", marker=".", label="sim p95")
        ax.axhline(slo, color="crimson", lw=0.8, ls=":", label=f"SLO {slo:g} ms")
        ax.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
        c = s["policies"][n]["compare"]["p95_ms"]
        ax.set_title(f"{n}: p95 real {c['real']:.1f} / sim {c['sim']:.1f} ms ({fmt(c['rel_err'], 'rel')})", fontsize=9)
        ax.set_ylabel("p95 latency per interval (ms)")
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("run time (s)")
    fig.suptitle(f"real vs simulated: {os.path.basename(s['policy_file'])} and baselines ({s['backend']} backend)", fontsize=10)
    fig.tight_layout()
    fig.savefig(d / "overlay.png", dpi=100)
    plt.close(fig)
    for n in names:
        cv = curves[n]
        fig, axes2 = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
        ax = axes2[0]
        ax.plot(cv["real_series"]["t_s"], cv["real_series"]["arrival_rps"], color="k", lw=1, label="offered load (real sends)")
        ax.plot(cv["sim_series"]["t_s"], cv["sim_series"]["arrival_rps"], color="C1", lw=1, ls="--", label="simulated arrivals")
        ax.set_ylabel("req/s")
        ax.legend(fontsize=8)
        ax = axes2[1]
        ax.step(cv["ts"], cv["real_req"], where="post", color="C0", lw=1.6, label="real requested")
        ax.step(cv["ts"], cv["real_rdy"], where="post", color="C0", lw=0.9, alpha=0.6, label="real ready")
        ax.step(cv["ts"], cv["sim_req"], where="post", color="C1", lw=1.6, ls="--", label="sim requested")
        ax.step(cv["ts"], cv["sim_rdy"], where="post", color="C1", lw=0.9, ls="--", alpha=0.6, label="sim ready")
        ax.set_ylim(0, s["max_replicas"] + 0.5)
        ax.set_ylabel("replicas")
        ax.legend(fontsize=8, ncol=2)
        ax = axes2[2]
        ax.plot(cv["real_series"]["t_s"], cv["real_series"]["p95_ms"], color="C0", lw=1.4, marker=".", label="real p95")
        ax.plot(cv["sim_series"]["t_s"], cv["sim_series"]["p95_ms"], color="C1", lw=1.4, ls="--", marker=".", label="sim p95")
        ax.axhline(slo, color="crimson", lw=0.8, ls=":", label=f"SLO {slo:g} ms")
        ax.set_ylabel("p95 latency (ms)")
        ax.set_xlabel("run time (s)")
        ax.legend(fontsize=8)
        for a_ in axes2:
            a_.axvspan(0, s["warmup_s"], color="grey", alpha=0.1)
        fig.suptitle(f"{n} ({s['policies'][n]['label']}): real vs simulated", fontsize=10)
        fig.tight_layout()
        fig.savefig(d / f"overlay_{n}.png", dpi=100)
        plt.close(fig)

