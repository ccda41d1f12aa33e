"""Calibrate the simulator to a measurement folder and report its fidelity.

    python -m calibration.fit results/baseline [--name NAME] [--config-out PATH] [--report DIR] [--force]
                                               [--seeds 3] [--allow-partial] [--quiet]

Writes ``configs/calibrated/<name>.yaml`` (a scenario ``simulator.run`` accepts,
with ``provenance``: source folder, fit criteria, goodness of fit per batch
size, every fitted number and warning) and ``report/<name>/`` with
``fidelity.md``, ``fidelity.json`` and PNGs (the report folder is checked before the fit
starts: an existing one is replaced only with ``--force`` and only if an earlier fit wrote it). See :mod:`calibration.calibrate`
for what is fitted from what, :mod:`calibration.replay` for how a run is
replayed and compared.

Fidelity:

- **in-sample**: run-derived parameters (overhead mean, contention factor)
  fitted on all runs, every run replayed;
- **held out, leave-one-run-out**: for each run (runs with an identical
  configuration, e.g. a repeat, are held out together), fit on the others and
  predict it;
- **held out across replica counts**: fit on the one-replica runs, predict the
  runs that used more replicas, and the reverse;
- **noise floor**: runs with an identical configuration compared with each other
  (relative differences of the same metrics): no simulator can be expected to
  be closer to a run than a repeat of that run is.

Sweep-derived parts (per-batch shapes, interference, start-up, overhead shape)
never see the runs and are shared by every fold.

A **pipeline** measurement folder (its scenario has ``pipeline:``; cluster/RESULTS_FORMAT.md "Pipelines") is
calibrated by :mod:`calibration.pipeline`: every stage and variant by the single-model fit above, each stage's hop
(its overhead outside Triton + the client's gap before the next stage), a calibrated pipeline scenario, and the
same fidelity sections end to end and per stage (the issue-15 targets, :data:`calibration.compare.PIPELINE_TARGETS`;
no across-replica-counts section). A stage missing its sweep, a run missing a stage's folder or naming a variant
the scenario lacks, visits that do not add up: one line each, as below.

Errors (missing files, wrong format version, nothing fittable) print one line
``error: ...`` naming the file and exit with code 2, and write nothing.

Damaged measurements are refused the same way (one line naming the run and
what is wrong): a ``requests.csv`` cut mid-row or holding fewer rows than its
``run.json`` says, sends that stop long before ``duration_s``, a run listed in
``manifest.json`` but missing on disk, a run on disk the manifest does not list
(see :mod:`calibration.measurements` for each rule). ``--allow-partial``
continues instead: a run missing its end is analysed up to its last intact
send, an unreadable one is left out, an unlisted one is used, and each problem,
with what was done, is listed under the warnings of ``fidelity.md``,
``fidelity.json`` and the calibrated scenario's ``provenance``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path


from simulator.config import ConfigError
from simulator.io import OutputFolder, json_has_keys, jsonable, run_cli

from . import fitting
from .calibrate import calibrate, log, shared_fits, source_label, write_scenario
from .compare import BATCHING_MEAN, compare, targets_for
from .measurements import (CalibrationError, Measurements, RunData, held_out_splits, is_pipeline, load_manifest,
                           load_measurements, repeat_pairs, served_peak)
from .replay import measured_summary, simulate_run


def run_description(r: RunData) -> dict:
    """What a run was: workload kind, open or closed loop, replicas used, duration and warm-up."""
    w = r.scenario.workload
    return {"workload": w.kind if w.kind != "schedule" else "/".join(s.kind for s in w.segments),
            "loop": "open" if r.open_loop else "closed", "replicas": r.max_replicas_used,
            "duration_s": r.duration_s, "warmup_s": r.warmup_s}


def evaluate(sc, runs: list[RunData], seeds, keep: bool = False, targets: dict | None = None) -> dict:
    out = {}
    for r in runs:
        sim = simulate_run(sc, r, seeds)
        ms = measured_summary(r)
        out[r.name] = {"measured": ms, "simulated": sim["summary"],
                       "errors": compare(ms, sim["summary"], targets=targets), **({"_sim": sim} if keep else {})}
    return out


def noise_floor(meas: Measurements) -> dict:
    pairs = []
    for x, y in repeat_pairs(meas.runs.values()):
        a, b = measured_summary(x), measured_summary(y)
        pairs.append({"runs": [x.name, y.name], "a": a, "b": b, "errors": compare(a, b)})
    return {"pairs": pairs}


def run_fit(root: str, name: str | None = None, config_out: str | None = None, report_dir: str | None = None,
            seeds: int = 3, quiet: bool = False, plots: bool = True, force: bool = False,
            allow_partial: bool = False) -> dict:
    """Calibrate to the measurement folder ``root``; write the calibrated scenario and the report folder
    (:class:`simulator.io.OutputFolder`: an existing report is replaced only with ``force`` and only if an
    earlier ``calibration.fit`` wrote it; checked before the fitting starts). ``allow_partial``: use damaged
    measurements as far as they are intact (each problem in the report's warnings) instead of refusing them."""
    name = name or Path(root).resolve().name
    report_dir = report_dir or os.path.join("report", name)
    with OutputFolder(report_dir, "calibration.fit", force=force, flag="--report",
                      legacy=json_has_keys("fidelity.json", "held_out", "noise_floor")) as report:
        # the report folder is checked first (never written into, whatever the measurement folder holds)
        if is_pipeline(load_manifest(Path(root))):
            from .pipeline import fit_pipeline
            return fit_pipeline(root, name, config_out, report, seeds, quiet, plots, allow_partial)
        meas = load_measurements(root, allow_partial)
        return _fit(meas, root, name, config_out, report, seeds, quiet, plots, allow_partial)


def _fit(meas: Measurements, root: str, name: str, config_out: str | None, report: OutputFolder, seeds: int,
         quiet: bool, plots: bool, allow_partial: bool = False) -> dict:
    t_start = dt.datetime.now(dt.timezone.utc)
    command = ["python -m calibration.fit", str(root), "--name", name] + (["--allow-partial"] if allow_partial else [])
    config_out = config_out or os.path.join("configs", "calibrated", f"{name}.yaml")
    seeds_t = tuple(range(seeds))
    runs = list(meas.runs.values())
    target_set, TARGETS = targets_for([measured_summary(r) for r in runs])
    for w in meas.warnings:
        log(f"warning: {w}", quiet)
    log(f"[fit] {len(runs)} runs: {', '.join(r.name for r in runs)}; fitting sweep data ...", quiet)
    shared = shared_fits(meas)
    comp = shared["compute"]
    for row in comp["rows"]:
        log(f"[fit] batch {row['batch_size']}: n={row['n']} {row['chosen']} mean {row['fit']['mean']:.2f} ms "
            f"p99 {row['fit']['p99']:.2f} ms (KS {row['ks']:.3f})", quiet)
    for p in comp["partial"]:
        log(f"warning: partial fit: batch {p['batch_size']}: {p['reason']}", quiet)
    intf = shared["interference"]
    log(f"[fit] interference: node_cores={intf['node_cores']} interference={intf['interference']:.3f}"
        + (f" ({intf.get('note')})" if intf.get("note") else ""), quiet)

    # ---- in-sample
    sc_all, info_all = calibrate(meas, runs, shared, (0,), quiet)
    log(f"[fit] overhead mean {info_all['overhead']['mean_ms']:.2f} ms", quiet)
    log(f"[fidelity] in-sample replay of {len(runs)} runs x {seeds} seeds ...", quiet)
    in_sample = evaluate(sc_all, runs, seeds_t, keep=plots, targets=TARGETS)

    # ---- held out: leave one run (group) out
    loro, folds = {}, []
    for test, train in held_out_splits(runs):
        names = [r.name for r in test]
        if not train:
            folds.append({"test": names, "train": [], "skipped": "no other runs to fit on"})
            continue
        sc_g, info_g = calibrate(meas, train, shared, (0,), quiet, label=f" -{'/'.join(names)}")
        folds.append({"test": names, "train": info_g["train_runs"], "scale": info_g["contention"]["scale"],
                      "rate_contention": info_g["contention"]["rate_contention"],
                      "rate_cores": info_g["contention"].get("rate_cores", 0.0),
                      "overhead_ms": info_g["overhead"]["mean_ms"]})
        loro.update(evaluate(sc_g, test, seeds_t, keep=plots, targets=TARGETS))
    # ---- held out: across replica counts
    by_rep = {}
    one = [r for r in runs if r.max_replicas_used <= 1]
    many = [r for r in runs if r.max_replicas_used > 1]
    for label, train, test in (("fit 1 replica -> predict >1", one, many), ("fit >1 replicas -> predict 1", many, one)):
        if not train or not test:
            continue
        sc_r, info_r = calibrate(meas, train, shared, (0,), quiet, label=f" {label}")
        by_rep[label] = {"train": [r.name for r in train], "scale": info_r["contention"]["scale"],
                         "rate_contention": info_r["contention"]["rate_contention"],
                         "rate_cores": info_r["contention"].get("rate_cores", 0.0),
                         "overhead_ms": info_r["overhead"]["mean_ms"],
                         "runs": evaluate(sc_r, test, seeds_t, targets=TARGETS)}
    nf = noise_floor(meas)

    # ---- outputs
    prov = {
        "source": source_label(meas), "source_format": meas.manifest.get("format"),
        "source_created": meas.manifest.get("created"), "source_seed": meas.manifest.get("seed"),
        "source_machine": meas.manifest.get("machine"),
        "calibrated": t_start.isoformat(timespec="seconds"),
        "command": " ".join(command), "allow_partial": allow_partial,
        "criteria": {"family_selection": f"lowest AIC among {', '.join(fitting.FAMILIES)}, kept if its KS "
                                         f"distance <= {fitting.KS_MAX}, else the sample's quantiles "
                                         f"({fitting.EMPIRICAL_LEVELS} levels)",
                     "min_samples": fitting.MIN_SAMPLES,
                     "contention": "two candidates, the smaller residual of the training runs' own factors "
                                   "(bisection: replayed per-request compute = Triton's counters) kept: (rate) "
                                   "compute x scale x (1 + rate_contention x node req/s over the last second), a "
                                   "weighted line of factor vs request rate; (cores) compute x scale, with "
                                   "rate_cores x node req/s cores of request handling joining the executing "
                                   "batches in the interference term, rate_cores from a grid by agreement of "
                                   "the runs' scales",
                     "overhead": "shape from the sweep (client - queue - compute), mean from the runs (client "
                                 "latency - Triton queue - compute per request)",
                     "interference": "least squares slowdown(k) = 1 + interference * max(0, k - node_cores)"},
        "per_batch": [{k: v for k, v in row.items() if k != "candidates"} for row in comp["rows"]],
        "partial": comp["partial"] + ([{"what": "startup", "reason": shared["startup"][1].get("note")}]
                                      if shared["startup"][1].get("partial") else []),
        "mean_curve": comp["mean_curve"], "interference": intf,
        "startup": {k: v for k, v in shared["startup"][1].items() if k != "samples_s"},
        "overhead": info_all["overhead"], "contention": {k: v for k, v in info_all["contention"].items()
                                                          if k != "iterations"},
        "warnings": meas.warnings,
        "stack": served_peak(meas),
    }
    sc_out = sc_all.replace(name=f"calibrated:{name}", provenance=jsonable(prov))
    fid = {"name": name, "source": source_label(meas), "config": config_out, "seeds": seeds,
           "created": t_start.isoformat(timespec="seconds"),
           "targets": {k: {"kind": v[0], "tolerance": v[1]} for k, v in TARGETS.items()}, "target_set": target_set,
           "target_rule": "batching targets when some measured run's mean batch size >= "
                          f"{BATCHING_MEAN:g} (Triton batches), else the calibration targets",
           "runs": {r.name: run_description(r) for r in runs},
           "in_sample": {k: {kk: vv for kk, vv in v.items() if kk != "_sim"} for k, v in in_sample.items()},
           "held_out": {"leave_one_run_out": {k: {kk: vv for kk, vv in v.items() if kk != "_sim"}
                                              for k, v in loro.items()},
                        "folds": folds, "across_replica_counts": by_rep},
           "noise_floor": nf, "provenance": prov,
           "fits": {"per_batch": comp["rows"], "overhead_shape": shared["overhead_shape"][1],
                    "startup": shared["startup"][1]}}
    fid = jsonable(fid)
    write_scenario(sc_out, config_out, root)
    # report: written into the output folder, put in place (atomically) when run_fit returns
    from .report import write_report
    log(f"[report] writing {report.shown} ...", quiet)
    fid["report_dir"] = report.shown
    write_report(report.path, fid, meas, shared, in_sample, loro, plots=plots)
    return fid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibration.fit", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="measurement folder written by python -m cluster.measure")
    ap.add_argument("--name", help="calibration name (default: the folder's name)")
    ap.add_argument("--config-out", help="calibrated scenario path (default configs/calibrated/<name>.yaml)")
    ap.add_argument("--report", help="report folder (default report/<name>)")
    ap.add_argument("--seeds", type=int, default=3, help="simulation seeds per replayed run (pooled; default 3)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    ap.add_argument("--allow-partial", action="store_true",
                    help="use damaged measurements (a run cut short, a run missing or unlisted) as far as they are "
                         "intact instead of refusing them; each problem is listed in the report's warnings")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--force", action="store_true",
                    help="replace the report folder if an earlier calibration.fit wrote it (never another folder)")
    a = ap.parse_args(argv)

    def body() -> int:
        if a.seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        fid = run_fit(a.folder, a.name, a.config_out, a.report, a.seeds, a.quiet, plots=not a.no_plots,
                      force=a.force, allow_partial=a.allow_partial)
        from .report import pipeline_summary_lines, summary_lines
        print("\n".join(pipeline_summary_lines(fid) if fid.get("kind") == "pipeline" else summary_lines(fid)))
        return 0
    return run_cli(body, (CalibrationError,))


if __name__ == "__main__":
    sys.exit(main())
