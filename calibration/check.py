"""Can I trust the simulator for my case? Compare one measured run with its simulation.

    python -m calibration.check CALIBRATED.yaml RUN_DIR [--out DIR] [--force] [--seeds 3] [--allow-partial]

``RUN_DIR`` is one ``runs/<run>/`` folder of any measurement (any workload, any
replica count, measured after the calibration or not). The run is replayed in
the calibrated simulator with its own workload and replica history (see
:mod:`calibration.replay`), and the same table as the fidelity report is printed
and written to ``DIR`` (default ``report/check/<run>``): ``check.md``,
``check.json``, ``latency_cdf.png``, ``timeline.png`` (an existing ``DIR`` is replaced
only with ``--force`` and only if an earlier check wrote it). Errors print one line
and exit with code 2.

The run gets the damage checks ``calibration.fit`` applies (see
:mod:`calibration.measurements`): against its own ``run.json`` and, when it
sits in a measurement folder (``<root>/runs/<run>/``), against that folder's
``manifest.json``. A damaged run is refused with one line; ``--allow-partial``
checks it as far as it is intact and lists the problem under the warnings of
``check.md`` / ``check.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from simulator.config import ConfigError, load_scenario
from simulator.io import OutputFolder, json_has_keys, jsonable, run_cli

from .fit import run_description
from .measurements import CalibrationError, load_run_checked
from .compare import compare, targets_for
from .replay import measured_summary, simulate_run
from .report import plot_cdfs, plot_timelines, table


def run_check(calibrated: str, run_dir: str, out: str | None = None, seeds: int = 3, plots: bool = True,
              force: bool = False, allow_partial: bool = False) -> dict:
    try:
        sc = load_scenario(calibrated)
    except ConfigError as e:
        raise CalibrationError(str(e)) from None
    run = load_run_checked(run_dir, allow_partial)
    with OutputFolder(out or os.path.join("report", "check", run.name), "calibration.check", force=force,
                      legacy=json_has_keys("check.json", "calibrated", "run", "errors")) as of:
        sim = simulate_run(sc, run, tuple(range(seeds)))
        ms = measured_summary(run)
        target_set, targets = targets_for([ms])
        res = {"calibrated": calibrated, "run": str(run_dir), "name": run.name, "seeds": seeds,
               "describe": run_description(run), "measured": ms, "simulated": sim["summary"],
               "errors": compare(ms, sim["summary"], targets=targets), "target_set": target_set,
               "targets": {k: {"kind": v[0], "tolerance": v[1]} for k, v in targets.items()},
               "warnings": run.warnings, "allow_partial": allow_partial,
               "calibration_source": (sc.provenance or {}).get("source")}
        res = jsonable(res)
        tmp = of.path
        lines = [f"# Check: {run.name} against {calibrated}", "",
                 f"Run `{run_dir}`; calibration from `{res['calibration_source']}`; {seeds} simulated seeds pooled.",
                 ""] + table({run.name: res}, {run.name: res["describe"]})
        if run.warnings:
            lines += ["", "Warnings:", ""] + [f"- {w}" for w in run.warnings]
        lines += ["", f"Targets (as for held-out runs; the {target_set} set of calibration.compare): "
                  + ", ".join(f"{k} {v[0]} <= {v[1]:g}" for k, v in targets.items())]
        if plots:
            meas = SimpleNamespace(runs={run.name: run})
            held = {run.name: {"_sim": sim}}
            plot_cdfs(tmp / "latency_cdf.png", meas, {}, held)
            plot_timelines(tmp / "timeline.png", meas, held, {})
            lines += ["", "![latency_cdf.png](latency_cdf.png)", "", "![timeline.png](timeline.png)"]
        (tmp / "check.md").write_text("\n".join(lines) + "\n")
        (tmp / "check.json").write_text(json.dumps(res, indent=1))
    res["out"] = of.shown
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibration.check", description=__doc__.split("\n\n")[0])
    ap.add_argument("calibrated", help="calibrated scenario, e.g. configs/calibrated/baseline.yaml")
    ap.add_argument("run_dir", help="one measured run folder, e.g. results/new/runs/const2")
    ap.add_argument("--out", help="output folder (default report/check/<run>)")
    ap.add_argument("--force", action="store_true", help="replace --out if an earlier check wrote it")
    ap.add_argument("--seeds", type=int, default=3, help="simulation seeds (pooled; default 3)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--allow-partial", action="store_true",
                    help="check a damaged run (cut short, not listed in its manifest) as far as it is intact "
                         "instead of refusing it; the problem is listed in the warnings")
    a = ap.parse_args(argv)

    def body() -> int:
        if a.seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        res = run_check(a.calibrated, a.run_dir, a.out, a.seeds, plots=not a.no_plots, force=a.force,
                        allow_partial=a.allow_partial)
        for w in res["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print("\n".join(table({res["name"]: res}, {res["name"]: res["describe"]})))
        ok = [k for k, e in res["errors"].items() if e.get("within_target")]
        print(f"within target ({res['target_set']} set): {len(ok)}/{len(res['targets'])} ({', '.join(ok) or 'none'}); "
              f"wrote {res['out']}")
        return 0
    return run_cli(body, (CalibrationError,))


if __name__ == "__main__":
    sys.exit(main())
