"""Read a measurement folder (the format ``cluster.measure`` writes; see ``cluster/RESULTS_FORMAT.md``).

Everything calibration needs is validated here, and every problem is a
:class:`CalibrationError` whose one-line message names the file and what is
missing or wrong. Problems that only weaken a fit (a few bad rows, an optional
file absent) are *warnings*: the data are cleaned, and the warning travels to
the report and the calibrated scenario's provenance.

Required: ``manifest.json`` (``format`` must be ``servesim-measurements/1``),
``sweep/compute.csv``, and at least one run with ``run.json`` and
``requests.csv``. Optional: ``sweep/interference.csv`` (no interference fit
without it), ``startup/startup.csv``, a run's ``metrics.csv`` (the run is left
out of the compute-contention and overhead fits), ``replicas.csv`` (the
replica schedule falls back to the run's planned events).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.config import ConfigError, Scenario, scenario_from_dict

FORMAT = "servesim-measurements/1"

REQUEST_COLUMNS = ("seq", "user", "t_send_s", "latency_ms", "status")
REPLICA_COLUMNS = ("name", "t_request_s", "t_ready_s", "t_drain_s", "t_gone_s", "end_reason")
METRIC_COLUMNS = ("t_s", "replica", "metric", "value")
COMPUTE_COLUMNS = ("batch_size", "compute_infer_ms", "compute_input_ms", "compute_output_ms", "queue_ms",
                   "client_ms")
INTERFERENCE_COLUMNS = ("replicas", "replica", "batches", "compute_ms", "concurrency")
STARTUP_COLUMNS = ("process_to_ready_s",)


class CalibrationError(Exception):
    """A measurement folder or calibrated file cannot be used. The message is user-facing (one line)."""


@dataclass
class RunData:
    name: str
    dir: Path
    scenario: Scenario
    duration_s: float
    warmup_s: float
    slo_ms: float
    requests: pd.DataFrame
    replicas: pd.DataFrame | None
    events: list
    metrics: pd.DataFrame | None
    summary: dict
    group: str = ""                    # runs with identical configuration share a group
    warnings: list[str] = field(default_factory=list)

    @property
    def open_loop(self) -> bool:
        return self.scenario.workload.kind != "closed_loop"

    @property
    def max_replicas_used(self) -> int:
        if self.replicas is not None and len(self.replicas):
            return int(len(self.replicas))
        n = self.scenario.cluster.replicas
        return max([n] + [int(e.get("scale", n)) for e in self.events if "scale" in e])


@dataclass
class Measurements:
    root: Path
    manifest: dict
    base: Scenario
    runs: dict[str, RunData]
    compute: pd.DataFrame
    interference: pd.DataFrame | None
    startup: pd.DataFrame | None
    warnings: list[str] = field(default_factory=list)


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root.parent)) if root.parent != Path("") else str(p)
    except ValueError:
        return str(p)


def read_csv(path: Path, required: tuple[str, ...], label: str, optional: bool = False) -> pd.DataFrame | None:
    """Read a CSV and check its columns; errors name ``label`` (the file as the user knows it)."""
    if not path.exists():
        if optional:
            return None
        raise CalibrationError(f"{label}: file missing")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise CalibrationError(f"{label}: file is empty (expected a header with {', '.join(required)})") from None
    except Exception as e:  # parser errors
        raise CalibrationError(f"{label}: cannot read CSV: {str(e).splitlines()[0]}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CalibrationError(f"{label}: missing column(s) {', '.join(missing)} "
                               f"(has {', '.join(map(str, df.columns)) or 'none'})")
    return df


def _numeric(df: pd.DataFrame, cols, label: str) -> pd.DataFrame:
    for c in cols:
        if df[c].dtype == object:
            conv = pd.to_numeric(df[c], errors="coerce")
            bad = conv.isna() & df[c].notna() & (df[c].astype(str).str.strip() != "")
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise CalibrationError(f"{label}: column {c} row {i + 2}: not a number ({df[c].iloc[i]!r})")
            df[c] = conv
    return df


def load_manifest(root: Path) -> dict:
    mp = root / "manifest.json"
    if not root.exists():
        raise CalibrationError(f"{root}: measurement folder not found")
    if not root.is_dir():
        raise CalibrationError(f"{root}: not a folder (expected a measurement folder written by cluster.measure)")
    if not mp.exists():
        raise CalibrationError(f"{mp}: file missing (is {root} a folder written by python -m cluster.measure?)")
    try:
        man = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{mp}: not valid JSON ({e})") from None
    if not isinstance(man, dict):
        raise CalibrationError(f"{mp}: expected a JSON object")
    fmt = man.get("format")
    if fmt is None:
        raise CalibrationError(f"{mp}: no 'format' key (expected format {FORMAT!r})")
    if fmt != FORMAT:
        raise CalibrationError(f"{mp}: format {fmt!r} is not supported (this calibration reads {FORMAT!r})")
    return man


def load_run(rdir: Path) -> RunData:
    """One ``runs/<run>/`` folder (also used by ``calibration.check`` on a fresh run)."""
    rdir = Path(rdir)
    if not rdir.is_dir():
        raise CalibrationError(f"{rdir}: run folder not found")
    rj = rdir / "run.json"
    if not rj.exists():
        raise CalibrationError(f"{rj}: file missing (a run folder needs run.json and requests.csv)")
    try:
        meta = json.loads(rj.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{rj}: not valid JSON ({e})") from None
    for k in ("scenario", "duration_s", "warmup_s"):
        if k not in meta:
            raise CalibrationError(f"{rj}: missing key '{k}'")
    try:
        sc = scenario_from_dict(meta["scenario"])
    except ConfigError as e:
        raise CalibrationError(f"{rj}: scenario: {e}") from None
    warn: list[str] = []
    name = str(meta.get("name") or rdir.name)
    req = read_csv(rdir / "requests.csv", REQUEST_COLUMNS, str(rdir / "requests.csv"))
    req = _numeric(req, ("t_send_s", "latency_ms"), str(rdir / "requests.csv"))
    req["status"] = req["status"].fillna("error").astype(str)
    bad = req["t_send_s"].isna() | ~np.isfinite(req["t_send_s"].fillna(0))
    ok = req["status"] == "ok"
    bad_lat = ok & (req["latency_ms"].isna() | (req["latency_ms"] < 0))
    if bad_lat.any():
        warn.append(f"{rdir / 'requests.csv'}: {int(bad_lat.sum())} 'ok' rows with missing or negative "
                    f"latency_ms ignored")
    if bad.any():
        warn.append(f"{rdir / 'requests.csv'}: {int(bad.sum())} rows without a send time (never sent) "
                    f"count as failures of the measured run")
    req = req[~bad_lat].copy()
    if not len(req):
        raise CalibrationError(f"{rdir / 'requests.csv'}: no requests")
    reps = read_csv(rdir / "replicas.csv", REPLICA_COLUMNS, str(rdir / "replicas.csv"), optional=True)
    if reps is None:
        warn.append(f"{rdir / 'replicas.csv'}: missing; replica schedule taken from the run's planned events")
    else:
        reps = _numeric(reps, ("t_request_s", "t_ready_s", "t_drain_s", "t_gone_s"), str(rdir / "replicas.csv"))
    met = read_csv(rdir / "metrics.csv", METRIC_COLUMNS, str(rdir / "metrics.csv"), optional=True)
    if met is None:
        warn.append(f"{rdir / 'metrics.csv'}: missing; run left out of the contention and overhead fits")
    else:
        met = _numeric(met, ("t_s", "value"), str(rdir / "metrics.csv"))
        met = met[met["metric"].astype(str).str.startswith("nv_inference")]
    events = list(meta.get("events") or [])
    key = json.dumps({"scenario": meta["scenario"] | {"name": ""}, "events": events}, sort_keys=True, default=str)
    return RunData(name=name, dir=rdir, scenario=sc, duration_s=float(meta["duration_s"]),
                   warmup_s=float(meta["warmup_s"]), slo_ms=float(sc.slo_ms), requests=req, replicas=reps,
                   events=events, metrics=met, summary=dict(meta.get("summary") or {}),
                   group=hashlib.sha1(key.encode()).hexdigest()[:10], warnings=warn)


def clean_compute(df: pd.DataFrame, label: str) -> tuple[pd.DataFrame, list[str]]:
    """Per-batch compute samples: total = input + infer + output (ms); drop bad rows, with warnings."""
    warn = []
    df = _numeric(df.copy(), COMPUTE_COLUMNS, label)
    cols = ["compute_infer_ms", "compute_input_ms", "compute_output_ms"]
    bad = df[cols + ["batch_size"]].isna().any(axis=1) | (df[cols] < 0).any(axis=1)
    if bad.any():
        warn.append(f"{label}: {int(bad.sum())} rows with NaN or negative durations dropped")
    df = df[~bad].copy()
    # statistics lag (folders written before the sweep waited for Triton's counters): a 0 ms row, then a
    # row holding two batches' time. Drop both.
    drop = np.zeros(len(df), bool)
    infer = df["compute_infer_ms"].to_numpy()
    bs = df["batch_size"].to_numpy()
    for i in np.flatnonzero(infer <= 0):
        drop[i] = True
        if i + 1 < len(df) and bs[i + 1] == bs[i]:
            drop[i + 1] = True
    if drop.any():
        warn.append(f"{label}: {int((infer <= 0).sum())} zero-time rows (statistics not yet updated) dropped "
                    f"with the following doubled row ({int(drop.sum())} rows)")
    df = df[~drop].copy()
    df["batch_size"] = df["batch_size"].astype(int)
    df["service_ms"] = df["compute_infer_ms"] + df["compute_input_ms"] + df["compute_output_ms"]
    df["overhead_ms"] = df["client_ms"] - df["queue_ms"] - df["service_ms"]
    return df, warn


def load_measurements(root: str | os.PathLike) -> Measurements:
    root = Path(root)
    man = load_manifest(root)
    warn: list[str] = []
    try:
        base = scenario_from_dict(man.get("scenario") or {})
    except ConfigError as e:
        raise CalibrationError(f"{root / 'manifest.json'}: scenario: {e}") from None
    cpath = root / "sweep" / "compute.csv"
    comp = read_csv(cpath, COMPUTE_COLUMNS, str(cpath))
    comp, w = clean_compute(comp, str(cpath))
    warn += w
    if not len(comp):
        raise CalibrationError(f"{cpath}: no usable compute samples")
    ipath = root / "sweep" / "interference.csv"
    intf = read_csv(ipath, INTERFERENCE_COLUMNS, str(ipath), optional=True)
    if intf is None:
        warn.append(f"{ipath}: missing; no interference fit (cluster.interference = 0)")
    else:
        intf = _numeric(intf, INTERFERENCE_COLUMNS[:1] + INTERFERENCE_COLUMNS[2:], str(ipath))
        badi = intf[["compute_ms", "concurrency"]].isna().any(axis=1) | (intf["compute_ms"] <= 0)
        if badi.any():
            warn.append(f"{ipath}: {int(badi.sum())} rows with NaN or non-positive compute_ms dropped")
            intf = intf[~badi]
    spath = root / "startup" / "startup.csv"
    st = read_csv(spath, STARTUP_COLUMNS, str(spath), optional=True)
    if st is None:
        warn.append(f"{spath}: missing; start-up delay from the runs' scale-ups only")
    else:
        st = _numeric(st, STARTUP_COLUMNS, str(spath))
        bads = st["process_to_ready_s"].isna() | (st["process_to_ready_s"] <= 0)
        if bads.any():
            warn.append(f"{spath}: {int(bads.sum())} rows with NaN or non-positive process_to_ready_s dropped")
            st = st[~bads]
    rroot = root / "runs"
    if not rroot.is_dir():
        raise CalibrationError(f"{rroot}: folder missing (no measured runs to calibrate against)")
    runs = {}
    for rd in sorted(p for p in rroot.iterdir() if p.is_dir()):
        r = load_run(rd)
        runs[r.name] = r
        warn += r.warnings
    if not runs:
        raise CalibrationError(f"{rroot}: no run folders")
    return Measurements(root=root, manifest=man, base=base, runs=runs, compute=comp, interference=intf,
                        startup=st, warnings=warn)


# --------------------------------------------------------------------------- counters


def counter_deltas(met: pd.DataFrame, t_from: float = -math.inf, t_to: float = math.inf) -> dict[str, float]:
    """Sum over replicas of each ``nv_inference_*`` counter's change from the last scrape before ``t_from``
    to the last scrape at or before ``t_to`` (a replica first scraped after ``t_from`` counts from 0; a
    counter that went down -- a restarted replica -- counts from 0 too)."""
    m = met[(met["t_s"] <= t_to)]
    m = m.groupby(["replica", "metric", "t_s"], as_index=False)["value"].sum()
    out: dict[str, float] = {}
    for (rep, metric), g in m.groupby(["replica", "metric"]):
        g = g.sort_values("t_s")
        before = g[g["t_s"] < t_from]
        after = g[g["t_s"] >= t_from]
        if not len(after):
            continue
        v1 = float(after["value"].iloc[-1])
        v0 = float(before["value"].iloc[-1]) if len(before) else 0.0   # new replica: counts from 0
        out[metric] = out.get(metric, 0.0) + (v1 - v0 if v1 >= v0 else v1)
    return out


# --------------------------------------------------------------------------- what the stack was seen to serve

SERVED_BIN_S = 10.0


def served_peak(meas: Measurements, bin_s: float = SERVED_BIN_S, max_fail: float = 0.01) -> dict:
    """The highest rate the measured stack (load generator, load balancer and replicas together) was seen to
    serve: the largest successful-completion rate over ``bin_s`` bins of send time, among bins where at most
    ``max_fail`` of the requests sent failed, over every run. A demonstrated rate, not a limit: the study
    never asks the real stack for more (``max_served_rps`` in the calibrated scenario's provenance).
    """
    best = {"max_served_rps": 0.0, "run": None, "t_s": None}
    for r in meas.runs.values():
        q = r.requests
        t = q["t_send_s"].to_numpy(float)
        fin = np.isfinite(t)
        if not fin.any():
            continue
        ok = (q["status"] == "ok").to_numpy() & fin
        b = np.floor(t[fin] / bin_s).astype(int)
        b -= b.min()
        sent = np.bincount(b, minlength=b.max() + 1)
        good = np.bincount(b, weights=ok[fin].astype(float), minlength=b.max() + 1)
        full = sent >= 1
        fail = np.where(full, 1.0 - good / np.maximum(sent, 1), 1.0)
        rate = np.where(fail <= max_fail, good / bin_s, 0.0)
        if len(rate) > 2:
            rate = rate[1:-1]          # the first and last bins are partial
        if len(rate) and rate.max() > best["max_served_rps"]:
            i = int(np.argmax(rate))
            best = {"max_served_rps": round(float(rate[i]), 2), "run": r.name,
                    "t_s": round(float(np.nanmin(t[fin]) // bin_s * bin_s + (i + 1) * bin_s), 1)}
    best["rule"] = (f"largest successful-completion rate over {bin_s:g}-s bins of send time with <= "
                    f"{max_fail:.0%} failures, over every measured run (first and last bin of a run left out)")
    return best
