"""``python -m simulator.run SCENARIO.yaml --out DIR [--seed N] [--set key=value ...]``

Runs one scenario and writes, into DIR (atomically: a temporary folder renamed
at the end, so a failed or interrupted run leaves nothing half-written):

- ``summary.json``: figures over requests arriving in [warmup_s, duration_s),
  with the resolved scenario, seed, engine and servesim version;
- ``timeline.csv``: one row per control interval (the policy's observation,
  its decision, cumulative replica-seconds, and the seed);
- ``requests.parquet``: per request (arrival, dispatch, completion, replica,
  batch size, status), scenario and seed in the file's metadata — unless
  ``record_requests: false`` / ``--no-records`` (long runs);
- ``scenario.yaml``: the resolved scenario (re-runnable as is);
- ``latency_cdf.png`` and ``timeline.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from simulator.config import ConfigError, dump_scenario, load_scenario
from simulator.engine import ENGINES, simulate
from simulator.io import jsonable

VERSION = "0.1.0"


def write_outputs(res, out: str, plots: bool = True) -> None:
    """Write a :class:`~simulator.engine.Result` into folder ``out`` atomically."""
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out.rstrip("/")) + "-", dir=parent)
    try:
        # requests.parquet is written by a second thread (pyarrow releases the GIL) while the rest,
        # plots included, is written here
        with ThreadPoolExecutor(max_workers=1) as pool:
            parquet = None if res.records is None else \
                pool.submit(res.write_records_parquet, os.path.join(tmp, "requests.parquet"))
            summary = dict(res.summary)
            summary["servesim_version"] = VERSION
            with open(os.path.join(tmp, "summary.json"), "w") as f:
                json.dump(jsonable(summary), f, indent=2)
            res.write_timeline_csv(os.path.join(tmp, "timeline.csv"))
            dump_scenario(res.scenario, os.path.join(tmp, "scenario.yaml"))
            if plots:
                from simulator import plots as P
                P.latency_cdf(res, os.path.join(tmp, "latency_cdf.png"))
                P.timeline(res, os.path.join(tmp, "timeline.png"))
            if parquet is not None:
                parquet.result()
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prefetch_output_modules(records: bool, plots: bool) -> None:
    """Import the libraries :func:`write_outputs` needs (pyarrow ~0.2 s, matplotlib ~0.6 s) in a
    background thread, so that they load while the compiled engine, which releases the GIL,
    simulates. An import that fails here fails again, with its message, where it is used."""
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
    threading.Thread(target=load, name="servesim-prefetch", daemon=True).start()


def print_summary(s: dict, out: str | None = None) -> None:
    lat = s["latency_ms"]
    f = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
    print(f"requests {s['requests']}  completed {s['completed']}  failed {s['failed']}  "
          f"throughput {f(s['throughput_rps'])} req/s")
    print(f"latency ms: mean {f(lat['mean'])}  p50 {f(lat['p50'])}  p95 {f(lat['p95'])}  p99 {f(lat['p99'])}  "
          f"(queue mean {f(s['queue_ms']['mean'])}, batch {f(s['mean_batch_size'])})")
    print(f"SLO {s['slo_ms']:g} ms violated by {100 * s['slo_violation_rate']:.2f}% of requests; "
          f"replica-seconds {s['replica_seconds']:.1f} (mean {s['mean_replicas']:.2f} replicas)")
    print(f"engine {s['engine']}, seed {s['seed']}, {s['sim_requests_per_wall_s']:,.0f} simulated requests/wall-s")
    if out:
        print(f"wrote {out}/summary.json, timeline.csv, "
              f"{'requests.parquet, ' if s['scenario'].get('record_requests') else ''}latency_cdf.png, timeline.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulator.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", help="scenario YAML file")
    ap.add_argument("--out", required=True, help="output folder (replaced atomically)")
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
    try:
        overrides = list(a.set) + (["record_requests=false"] if a.no_records else [])
        sc = load_scenario(a.scenario, overrides, seed=a.seed)
        from tqdm import tqdm
        bar = tqdm(total=sc.duration_s, unit="sim-s", disable=a.quiet, desc="simulating",
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim-s [{elapsed}<{remaining}]")

        def progress(t):
            bar.update(t - bar.n)

        prefetch_output_modules(sc.record_requests, not a.no_plots)
        res = simulate(sc, engine=a.engine, progress=progress, memory_budget=a.memory_budget)
        bar.update(sc.duration_s - bar.n)
        bar.close()
        write_outputs(res, a.out, plots=not a.no_plots)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    print_summary(res.summary, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
