"""``python -m simulator.run SCENARIO.yaml --out DIR [--seed N] [--set key=value ...]``

Runs one scenario and writes, into DIR (atomically: a temporary folder renamed
at the end, so a failed or interrupted run leaves nothing half-written; DIR is
checked before simulating: an existing DIR is replaced only with ``--force`` and
only if an earlier ``simulator.run`` wrote it, see :class:`simulator.io.OutputFolder`):

- ``summary.json``: figures over requests arriving in [warmup_s, duration_s),
  with the resolved scenario, seed, engine and servesim version (``held_decisions``:
  policy answers that were not finite numbers, so the last decision was held);
- ``timeline.csv``: one row per control interval (the policy's observation,
  its decision, ``held`` 1 when that decision was held, cumulative replica-seconds,
  and the seed);
- ``requests.parquet``: per request (arrival, dispatch, completion, replica,
  batch size, status), scenario and seed in the file's metadata — unless
  ``record_requests: false`` / ``--no-records`` (long runs);
- ``scenario.yaml``: the resolved scenario (re-runnable as is);
- ``latency_cdf.png`` and ``timeline.png`` (unless ``--no-plots``);
- ``.servesim-output.json``: the output marker (see :class:`simulator.io.OutputFolder`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from simulator.config import dump_scenario, load_scenario
from simulator.engine import ENGINES, simulate
from simulator.io import OutputFolder, json_has_keys, jsonable, run_cli

VERSION = "0.1.0"


def write_outputs(res, folder, plots: bool = True) -> list[str]:
    """Write a :class:`~simulator.engine.Result` into ``folder`` (an existing, empty working folder: the
    :class:`~simulator.io.OutputFolder` puts it in place); returns the names of the files written.
    ``requests.parquet`` is written by a second thread (pyarrow releases the GIL) while the rest, plots
    included, is written here."""
    folder = str(folder)
    files = ["summary.json", "timeline.csv", "scenario.yaml"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        parquet = None if res.records is None else \
            pool.submit(res.write_records_parquet, os.path.join(folder, "requests.parquet"))
        summary = dict(res.summary)
        summary["servesim_version"] = VERSION
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(jsonable(summary), f, indent=2)
        res.write_timeline_csv(os.path.join(folder, "timeline.csv"))
        dump_scenario(res.scenario, os.path.join(folder, "scenario.yaml"))
        if plots:
            from simulator import plots as P
            P.latency_cdf(res, os.path.join(folder, "latency_cdf.png"))
            P.timeline(res, os.path.join(folder, "timeline.png"))
            files += ["latency_cdf.png", "timeline.png"]
        if parquet is not None:
            parquet.result()
            files.append("requests.parquet")
    return files


def write_pipeline_outputs(res, folder, plots: bool = True) -> list[str]:
    """Write a :class:`~simulator.pipeline.PipelineResult` into ``folder`` (as :func:`write_outputs`:
    end-to-end ``requests.parquet`` and per-visit ``stages.parquet``, per-stage timeline rows)."""
    folder = str(folder)
    files = res.write(folder, {"servesim_version": VERSION})
    dump_scenario(res.scenario, os.path.join(folder, "scenario.yaml"))
    files.append("scenario.yaml")
    if plots:
        from simulator import plots as P
        P.pipeline_latency_cdf(res, os.path.join(folder, "latency_cdf.png"))
        P.pipeline_timeline(res, os.path.join(folder, "timeline.png"))
        files += ["latency_cdf.png", "timeline.png"]
    return files


def print_pipeline_summary(s: dict, out: str | None = None, files: list[str] | None = None) -> None:
    lat, f = s["latency_ms"], _fmt
    print(f"pipeline {' -> '.join(s['pipeline'])}: requests {s['requests']}  completed {s['completed']}  "
          f"failed {s['failed']}  throughput {f(s['throughput_rps'])} req/s")
    print(f"end-to-end latency ms: mean {f(lat['mean'])}  p50 {f(lat['p50'])}  p95 {f(lat['p95'])}  "
          f"p99 {f(lat['p99'])}; SLO {s['slo_ms']:g} ms violated by {100 * s['slo_violation_rate']:.2f}%")
    print(f"accuracy ({s['accuracy']['rule']}) {f(s['accuracy']['mean'])}; replica-seconds "
          f"{s['replica_seconds']:.1f} (mean {s['mean_replicas']:.2f} replicas)")
    for name, st in s["stages"].items():
        print(f"  stage {name} [{st['variant']}]: latency mean {f(st['latency_ms']['mean'])} p95 "
              f"{f(st['latency_ms']['p95'])} ms, queue {f(st['queue_ms']['mean'])} ms, batch "
              f"{f(st['mean_batch_size'])}, replica-seconds {st['replica_seconds']:.1f}, failed here {st['failed_here']}")
    print(f"engine {s['engine']}, seed {s['seed']}, {s['sim_stage_visits_per_wall_s']:,.0f} simulated stage "
          f"visits/wall-s")
    if out:
        print(f"wrote {out}/" + ", ".join(files or ()))


def prefetch_output_modules(records: bool, plots: bool) -> None:
    """Import the libraries :func:`write_outputs` needs (pyarrow ~0.2 s, matplotlib ~0.6 s) in a
    background thread, so that they load while the compiled engine, which releases the GIL,
    simulates. An import that fails here fails again, with its message, where it is used. The thread is not a
    daemon: a run that stops early (a bad trace file found while simulating) waits for the import to finish
    before the interpreter exits, since interrupting pyarrow's native initialisation aborts the process
    ("terminate called without an active exception", seen once in the CLI tests on a loaded machine)."""
    import threading
    names = (["pyarrow.parquet"] if records else []) + \
        (["matplotlib.figure", "matplotlib.backends.backend_agg"] if plots else [])

    def load():
        import importlib
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:
                return
    threading.Thread(target=load, name="servesim-prefetch", daemon=False).start()


def output_folder(out: str, force: bool = False) -> OutputFolder:
    """``--out`` checked and locked before simulating (see :class:`simulator.io.OutputFolder`); earlier
    ``simulator.run`` folders are recognised by their marker (or, before it existed, their summary.json)."""
    return OutputFolder(out, "simulator.run", force=force, legacy=json_has_keys("summary.json", "servesim_version"))


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def print_summary(s: dict, out: str | None = None, files: list[str] | None = None) -> None:
    lat, f = s["latency_ms"], _fmt
    print(f"requests {s['requests']}  completed {s['completed']}  failed {s['failed']}  "
          f"throughput {f(s['throughput_rps'])} req/s")
    print(f"latency ms: mean {f(lat['mean'])}  p50 {f(lat['p50'])}  p95 {f(lat['p95'])}  p99 {f(lat['p99'])}  "
          f"(queue mean {f(s['queue_ms']['mean'])}, batch {f(s['mean_batch_size'])})")
    print(f"SLO {s['slo_ms']:g} ms violated by {100 * s['slo_violation_rate']:.2f}% of requests; "
          f"replica-seconds {s['replica_seconds']:.1f} (mean {s['mean_replicas']:.2f} replicas)")
    print(f"engine {s['engine']}, seed {s['seed']}, {s['sim_requests_per_wall_s']:,.0f} simulated requests/wall-s")
    if out:
        print(f"wrote {out}/" + ", ".join(files or ()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulator.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", help="scenario YAML file")
    ap.add_argument("--out", required=True, help="output folder (written atomically; see --force)")
    ap.add_argument("--force", action="store_true",
                    help="replace --out if an earlier simulator.run wrote it (never another folder)")
    ap.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a scenario key, e.g. --set workload.rate_rps=80 (repeatable)")
    ap.add_argument("--engine", choices=ENGINES, default="fast")
    ap.add_argument("--no-records", action="store_true", help="skip requests.parquet (long runs)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--memory-budget", metavar="SIZE", default=None,
                    help="refuse a run whose estimated memory exceeds SIZE (e.g. 8G; default "
                         "$SERVESIM_MEMORY_BUDGET, else half the machine's memory)")
    a = ap.parse_args(argv)

    def body() -> int:
        overrides = list(a.set) + (["record_requests=false"] if a.no_records else [])
        sc = load_scenario(a.scenario, overrides, seed=a.seed)
        with output_folder(a.out, a.force) as of:         # refused here, before simulating
            bars = []          # the bar appears at the first progress report: a refusal before it is one clean line

            def progress(t):
                if not bars:
                    from tqdm import tqdm
                    bars.append(tqdm(total=sc.duration_s, unit="sim-s", disable=a.quiet, desc="simulating",
                                     bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim-s [{elapsed}<{remaining}]"))
                bars[0].update(t - bars[0].n)

            prefetch_output_modules(sc.record_requests, not a.no_plots)
            try:
                if sc.pipeline is not None:
                    from simulator.pipeline import simulate_pipeline
                    res = simulate_pipeline(sc, engine=a.engine, progress=progress, memory_budget=a.memory_budget)
                else:
                    res = simulate(sc, engine=a.engine, progress=progress, memory_budget=a.memory_budget)
                progress(sc.duration_s)
            finally:
                for bar in bars:
                    bar.close()
            if sc.pipeline is not None:
                files = write_pipeline_outputs(res, of.path, plots=not a.no_plots)
            else:
                files = write_outputs(res, of.path, plots=not a.no_plots)
        (print_pipeline_summary if sc.pipeline is not None else print_summary)(res.summary, a.out, files)
        return 0
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
