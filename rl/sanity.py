"""Checks that refuse a meaningless answer: the "sanity" section of ``rl.evaluate``, ``cluster.validate`` and
``cluster.pipeline``.

An evaluation where every policy sits at the minimum replica count, or an "oracle" that costs more than the
best static count, prints a table that looks like a result and means nothing. Each check here is a pure
function of what the command measured; the commands print the section, record it in their JSON
(``sanity``), and fail (exit code ``EXIT_DEGENERATE``, one line naming the check) unless
``--allow-degenerate`` is given. Checks with ``severity == "warn"`` are printed and recorded, never fatal.

- :func:`load_needs_scaling` -- somewhere in the evaluated load, more than ``min_replicas`` are needed
  (``rl.study`` rule 7: the share of seconds whose 5-s mean load exceeds what ``min_replicas`` serve at the
  SLO, by the simulated fleet capacities) for at least ``MIN_SHARE`` of a window's seconds; else the
  comparison says nothing about autoscaling.
- :func:`policies_scale` -- at least one adaptive policy used more than ``min_replicas`` (mean replicas above
  ``min + MIN_EXTRA_REPLICAS``).
- :func:`oracle_is_bound` -- per window and seed, the oracle costs no more than the best static count in
  hindsight (within ``COST_TOL``) at no more violations (within ``VIOL_TOL_PTS`` points of the larger of
  the static count's and the target); :mod:`rl.oracle` holds by construction, so a failure means the oracle
  or the capacity model is wrong.
- :func:`pipeline_oracle_best` -- pipelines: the oracle meets the SLO target with the best IPA objective of
  the contenders that do.
- :func:`validation_load` -- on the real stack, every policy's real load reached the replica range it was
  meant to test (needs more than ``min_replicas`` for ``MIN_SHARE`` of the run by the calibrated fleet
  capacities) and the load generator delivered what was planned (at least ``MIN_DELIVERED`` of it).
- :func:`costs_differ` (warn) -- two policies the study means to compare did not cost the same.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from rl.study import MIN_SHARE

EXIT_DEGENERATE = 3
MIN_EXTRA_REPLICAS = 0.02
COST_TOL = 0.005
VIOL_TOL_PTS = 0.0005
MIN_DELIVERED = 0.97
SAME_COST = 0.01


class DegenerateResult(RuntimeError):
    """A command's result failed a sanity check (the message is the one line to print; exit code 3)."""

    exit_code = EXIT_DEGENERATE


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    severity: str = "fail"          # "fail" | "warn"
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.severity == "fail" else "warn")
        return f"  [{mark}] {self.name}: {self.detail}"


def load_needs_scaling(windows: Iterable[Mapping], min_replicas: int, min_share: float = MIN_SHARE) -> Check:
    """``windows``: ``{"window": name, "share_above_min": share}`` each (see module docstring)."""
    ws = [dict(w) for w in windows]
    if not ws:
        return Check("load needs scaling", False, "no window was evaluated")
    best = max(ws, key=lambda w: w["share_above_min"])
    never = [w["window"] for w in ws if w["share_above_min"] <= 0]
    ok = best["share_above_min"] >= min_share
    detail = (f"the load needs more than {min_replicas} replica(s) {best['share_above_min']:.1%} of the time in "
              f"window {best['window']} (needed: >= {min_share:.0%} somewhere)")
    if never:
        detail += f"; never in {', '.join(never)}"
    return Check("load needs scaling", ok, detail, values={"windows": ws, "min_share": min_share})


def policies_scale(mean_replicas: Mapping[str, float], min_replicas: int,
                   extra: float = MIN_EXTRA_REPLICAS) -> Check:
    """``mean_replicas``: adaptive policy -> its mean replicas over the evaluation."""
    if not mean_replicas:
        return Check("some policy scales", True, "no adaptive policy evaluated (skipped)")
    above = {k: v for k, v in mean_replicas.items() if v > min_replicas + extra}
    ok = bool(above)
    top = max(mean_replicas.items(), key=lambda kv: kv[1])
    detail = (f"{len(above)} of {len(mean_replicas)} adaptive policies used more than {min_replicas} replica(s) on "
              f"average (most: {top[0]} {top[1]:.2f})") if ok else \
        f"every adaptive policy sat at {min_replicas} replica(s) (most: {top[0]} {top[1]:.2f})"
    return Check("some policy scales", ok, detail, values={"mean_replicas": dict(mean_replicas)})


def oracle_is_bound(pairs: Iterable[Mapping], slo_target: float, cost_tol: float = COST_TOL,
                    viol_tol: float = VIOL_TOL_PTS) -> Check:
    """``pairs``: ``{"window", "seed", "oracle_cost", "oracle_viol", "static_cost", "static_viol",
    "static_replicas"}`` per run."""
    ps = [dict(p) for p in pairs]
    if not ps:
        return Check("oracle is a bound", True, "oracle or static_best not evaluated (skipped)")
    bad = [p for p in ps if p["oracle_cost"] > p["static_cost"] * (1 + cost_tol)
           or p["oracle_viol"] > max(p["static_viol"], slo_target) + viol_tol]
    worst = max(ps, key=lambda p: p["oracle_cost"] / max(p["static_cost"], 1e-9))
    ratio = worst["oracle_cost"] / max(worst["static_cost"], 1e-9)
    if bad:
        b = bad[0]
        detail = (f"window {b['window']} seed {b['seed']}: the oracle costs {b['oracle_cost']:.0f} replica-s at "
                  f"{b['oracle_viol']:.2%} violations, the best static count ({b['static_replicas']}) "
                  f"{b['static_cost']:.0f} at {b['static_viol']:.2%}: not a lower bound")
    else:
        detail = (f"in all {len(ps)} runs the oracle costs at most the best static count in hindsight "
                  f"(highest ratio {ratio:.3f}) at no more violations")
    return Check("oracle is a bound", not bad, detail, values={"runs": ps})


def pipeline_oracle_best(summary: Iterable[Mapping], slo_target: float, replica_weight: float) -> Check:
    """Pipelines (:mod:`rl.pipeline_eval`): the oracle meets the SLO-violation target and its IPA objective
    (``accuracy - replica_weight x mean replicas``) is at least that of every contender meeting the target;
    ``summary``: per policy ``{"policy", "accuracy", "mean_replicas", "slo_violation_rate"}``."""
    rows = {r["policy"]: r for r in summary}
    if "oracle" not in rows:
        return Check("oracle is a bound", True, "oracle not evaluated (skipped)")

    def obj(r):
        return r["accuracy"] - replica_weight * r["mean_replicas"]
    o = rows["oracle"]
    if o["slo_violation_rate"] > slo_target + VIOL_TOL_PTS:
        return Check("oracle is a bound", False, f"the oracle violates the SLO for {o['slo_violation_rate']:.2%} of "
                     f"requests (target {slo_target:.2%}): not a bound", values={"oracle": dict(o)})
    beat = [n for n, r in rows.items() if n != "oracle" and r["slo_violation_rate"] <= slo_target
            and obj(r) > obj(o) + 1e-9]
    if beat:
        r = rows[beat[0]]
        return Check("oracle is a bound", False, f"{beat[0]} meets the SLO target with a better objective "
                     f"({obj(r):.4f}) than the oracle ({obj(o):.4f}): not a bound", values={"policies": rows})
    return Check("oracle is a bound", True, f"the oracle meets the SLO target ({o['slo_violation_rate']:.2%}) with "
                 f"the best objective ({obj(o):.4f}) of the contenders that do", values={"policies": rows})


def validation_load(per_policy: Mapping[str, Mapping], min_replicas: int, min_share: float = MIN_SHARE,
                    min_delivered: float = MIN_DELIVERED) -> Check:
    """``per_policy``: name -> ``{"share_above_min", "delivered", "share_time_above_min"}`` of its real run."""
    if not per_policy:
        return Check("real load reached the range", False, "no real run")
    bad = []
    for n, v in per_policy.items():
        if v["share_above_min"] < min_share:
            bad.append(f"{n}: its real load needed more than {min_replicas} replica(s) only "
                       f"{v['share_above_min']:.1%} of the time (< {min_share:.0%})")
        elif not (v.get("delivered", 1.0) >= min_delivered):
            bad.append(f"{n}: the load generator sent {v['delivered']:.1%} of the planned requests "
                       f"(< {min_delivered:.0%})")
    shares = ", ".join(f"{n} {v['share_above_min']:.0%}" for n, v in per_policy.items())
    used = ", ".join(f"{n} {v.get('share_time_above_min', math.nan):.0%}" for n, v in per_policy.items())
    detail = bad[0] if bad else (f"load needing more than {min_replicas} replica(s): {shares} of the run; time "
                                 f"with more than {min_replicas} replica(s) requested: {used}")
    return Check("real load reached the range", not bad, detail, values={"policies": dict(per_policy)})


def costs_differ(a: str, cost_a: float, b: str, cost_b: float, same: float = SAME_COST) -> Check:
    """Warn when two policies the study compares cost the same (within ``same``)."""
    rel = abs(cost_a - cost_b) / max(min(cost_a, cost_b), 1e-9)
    ok = rel > same
    signed = (cost_a - cost_b) / max(cost_b, 1e-9)       # a relative to b, as the tables print it
    return Check(f"{a} and {b} differ", ok,
                 f"{a} {cost_a:.0f} vs {b} {cost_b:.0f} replica-s ({signed:+.1%})" + ("" if ok else ": the same cost"),
                 severity="warn", values={a: cost_a, b: cost_b})


def section(checks: Iterable[Check]) -> list[str]:
    """The printed "sanity" section."""
    return ["sanity:"] + [c.line() for c in checks]


def record(checks: Iterable[Check], allowed: bool) -> dict:
    """The JSON form: ``{"ok", "allowed_degenerate", "checks": [...]}``."""
    cs = list(checks)
    return {"ok": all(c.ok or c.severity != "fail" for c in cs), "allowed_degenerate": bool(allowed),
            "checks": [asdict(c) for c in cs]}


def failure(checks: Iterable[Check]) -> str | None:
    """One line naming the first failing check, or None."""
    for c in checks:
        if not c.ok and c.severity == "fail":
            return f"degenerate result ({c.name}): {c.detail}"
    return None


__all__ = ["Check", "DegenerateResult", "EXIT_DEGENERATE", "costs_differ", "failure", "load_needs_scaling",
           "oracle_is_bound", "policies_scale", "record", "section", "validation_load"]
