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
replica schedule falls back to the run's planned events), ``batches.csv`` (the
distribution of executed batch sizes; without it only their mean, from the counters).

Damaged measurements are refused, never used silently (issue 12). Every run is
checked against its own ``run.json`` and the folder's ``manifest.json`` by the
pure functions of the "damage checks" section below (each states its rule):
``requests.csv`` cut mid-row, fewer (or more) rows than the load generator
logged, a different count of requests in the measured window than the run's
summary, sends that stop long before ``duration_s``, a run listed in the
manifest but missing on disk, a run on disk the manifest does not list, a run
whose summary differs from the manifest's. Any of these raises a
:class:`CalibrationError` naming the run and what is wrong. With
``allow_partial`` the reader continues and lists each problem, with what it
did, in the warnings (the report's and the calibrated scenario's provenance):

- a run whose requests stop early (cut file, lost rows, load stopped early) is
  analysed up to its last intact send: its window becomes
  ``[warmup_s, last send)`` instead of ``[warmup_s, duration_s)``, so counts,
  rates and the replay all cover the same span (``requests.csv`` is written in
  send order, so what remains is every request sent before that instant); the
  incomplete last row of a cut file is dropped;
- a run that cannot be read at all, or has nothing intact in its window, is
  left out;
- a run on disk the manifest does not list is *used*: the manifest records
  what one ``cluster.measure`` call measured, so such a run may come from
  another measurement (other stack, other versions) and is refused by default;
  ``--allow-partial`` is the user saying it belongs;
- listed runs missing on disk, and count mismatches that lose nothing
  (more rows than logged, a summary that differs from the manifest's), are
  only listed.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

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
BATCH_COLUMNS = ("t_s", "replica", "batch_size", "batches")


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
    batches: pd.DataFrame | None = None   # batches.csv: executed batches per size, cumulative per replica
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
    sweep_dir: Path | None = None      # where compute.csv came from (None: root/sweep; a pipeline stage's variant:
                                       # root/sweep/<stage>/<variant>)

    @property
    def sweep(self) -> Path:
        return self.sweep_dir if self.sweep_dir is not None else self.root / "sweep"


def scenario_at(d, where: str) -> Scenario:
    """A scenario dict of a measurement file, or one line naming ``where`` (file and key) and what is wrong."""
    try:
        return scenario_from_dict(d)
    except ConfigError as e:
        raise CalibrationError(f"{where}: {e}") from None


def identical_groups(runs) -> dict[str, list]:
    """Runs (anything with ``.group``) by configuration: runs with an identical configuration share a group
    (held out together, compared with each other for the noise floor)."""
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    return groups


def held_out_splits(runs) -> list[tuple[list, list]]:
    """Leave one configuration out: per group of identical runs, (those runs, every other run)."""
    runs = list(runs)
    return [(test, [r for r in runs if r.group != g]) for g, test in identical_groups(runs).items()]


def repeat_pairs(runs) -> list[tuple]:
    """Every pair of runs with an identical configuration (the noise floor's pairs)."""
    return [(g[i], g[j]) for g in identical_groups(runs).values() for i in range(len(g)) for j in range(i + 1, len(g))]


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root.parent)) if root.parent != Path("") else str(p)
    except ValueError:
        return str(p)


def read_csv(path: Path, required: tuple[str, ...], label: str, optional: bool = False,
             complete_rows_only: bool = False) -> pd.DataFrame | None:
    """Read a CSV and check its columns; errors name ``label`` (the file as the user knows it).
    ``complete_rows_only``: ignore what follows the last line break (a file cut mid-row, see :func:`cut_mid_row`)."""
    if not path.exists():
        if optional:
            return None
        raise CalibrationError(f"{label}: file missing")
    try:
        if complete_rows_only:
            data = path.read_bytes()
            df = pd.read_csv(io.BytesIO(data[:data.rfind(b"\n") + 1]))
        else:
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


def is_pipeline(man: dict) -> bool:
    """Whether ``manifest.json`` describes a pipeline measurement (its scenario has ``pipeline:``; the folder
    layout of cluster/RESULTS_FORMAT.md "Pipelines", read by :mod:`calibration.pipeline`)."""
    return isinstance(man.get("scenario"), dict) and "pipeline" in man["scenario"]


def refuse_pipeline(man: dict, where: Path, what: str) -> None:
    """One line when a single-model reader is handed a pipeline measurement."""
    if is_pipeline(man):
        raise CalibrationError(f"{where}: a pipeline measurement (its scenario has pipeline:); {what} reads "
                               f"single-model measurements (python -m calibration.fit calibrates a pipeline folder)")


# --------------------------------------------------------------------------- damage checks (issue 12)

SEND_TIME_RESOLUTION_S = 1e-6   # cluster.measure writes t_send_s rounded to the microsecond
TAIL_MIN_S = 1.0                # silence at the end of a run that is always accepted
TAIL_GAPS = 3.0                 # ... and up to this many times the run's longest gap between two sends
SUMMARY_COUNTS = ("requests", "successes", "failures")


class Damage(NamedTuple):
    """What is wrong with a run (one phrase), and whether requests are missing from its ``requests.csv``
    (``lost``: the run can only be used up to its last intact send)."""
    what: str
    lost: bool


def cut_mid_row(last_byte: bytes) -> Damage | None:
    """Rule: ``cluster.measure`` (Python's csv writer) ends every row of ``requests.csv``, the last one
    included, with a line break; a non-empty file whose last byte is not ``\\n`` was cut while written or
    copied, and its last row is incomplete (a field cut short still parses, as a different number)."""
    if last_byte in (b"", b"\n"):
        return None
    return Damage("requests.csv ends mid-row (no line break at the end: cut while written or copied)", True)


def row_count_damage(rows: int, logged) -> Damage | None:
    """Rule: ``requests.csv`` holds one row per request the load generator logged, warm-up included:
    ``rows == run.json: loadgen.n_requests`` (the length of the log it wrote). Fewer rows were lost; more
    were added."""
    if not isinstance(logged, (int, float)) or isinstance(logged, bool) or not math.isfinite(logged):
        return Damage("run.json has no loadgen.n_requests (cannot check that requests.csv holds every request)",
                      False)
    logged = int(logged)
    if rows == logged:
        return None
    return Damage(f"requests.csv has {rows} rows, run.json's loadgen logged {logged}", rows < logged)


def window_count_damage(t_send: np.ndarray, warmup_s: float, duration_s: float, counted) -> Damage | None:
    """Rule: ``run.json: summary.requests`` counts the requests *sent in the measured window*
    ``[warmup_s, duration_s)`` (``cluster.measure`` leaves the warm-up out of the summary), so it equals the
    rows of ``requests.csv`` sent in that window. The file rounds send times to ``SEND_TIME_RESOLUTION_S``, so
    a row that close to an edge may have been on either side: the count must lie between the rows surely
    inside and the rows possibly inside."""
    if not isinstance(counted, (int, float)) or isinstance(counted, bool) or not math.isfinite(counted):
        return Damage("run.json has no summary.requests (cannot check requests.csv against the run's summary)",
                      False)
    t = np.asarray(t_send, float)
    t = t[np.isfinite(t)]
    r = SEND_TIME_RESOLUTION_S
    sure = int(((t - r >= warmup_s) & (t + r < duration_s)).sum())
    maybe = int(((t + r >= warmup_s) & (t - r < duration_s)).sum())
    if sure <= counted <= maybe:
        return None
    n = sure if counted < sure else maybe
    return Damage(f"requests.csv has {n} requests sent in [{warmup_s:g}, {duration_s:g}) s, run.json's summary "
                  f"counts {int(counted)}", maybe < counted)


def early_end_damage(t_send: np.ndarray, latency_ms: np.ndarray, duration_s: float) -> Damage | None:
    """Rule: the load runs until ``duration_s`` (closed loop: users send until then; open loop: arrivals
    fill ``[0, duration_s)``), so the run's last activity -- its last send, or its last completion
    ``t_send_s + latency_ms`` (closed-loop users stuck on slow requests at the end still complete them) --
    comes within ``max(TAIL_MIN_S, TAIL_GAPS x the longest gap between two consecutive sends)`` of
    ``duration_s``. For a Poisson stream of ``n`` sends the silence after the last send exceeds ``TAIL_GAPS``
    times the longest inner gap with probability about ``n ** -TAIL_GAPS``. A run planned to fall silent at
    its end (a trace with an idle tail) is flagged too; ``--allow-partial`` accepts it."""
    t = np.asarray(t_send, float)
    lat = np.asarray(latency_ms, float)
    fin = np.isfinite(t)
    if not fin.any():
        return Damage("requests.csv has no send times", True)
    ts = np.sort(t[fin])
    done = t + lat / 1e3
    last = max(float(ts[-1]), float(np.max(done[np.isfinite(done)], initial=-math.inf)))
    longest = float(np.diff(ts).max()) if len(ts) > 1 else 0.0
    allowed = max(TAIL_MIN_S, TAIL_GAPS * longest)
    if duration_s - last <= allowed:
        return None
    return Damage(f"sends end at {ts[-1]:.2f} s, {duration_s - ts[-1]:.2f} s before duration_s {duration_s:g} "
                  f"(at most {allowed:.2f} s expected: {TAIL_GAPS:g} x the longest gap between sends, >= "
                  f"{TAIL_MIN_S:g} s): the load stopped early", True)


def summary_damage(run_summary: dict, manifest_summary) -> Damage | None:
    """Rule: ``manifest.json: runs.<run>`` is the summary ``run.json`` holds (``cluster.measure`` writes the
    same object to both); different counts mean the run folder was replaced or edited after the measurement."""
    if not isinstance(manifest_summary, dict):
        return None
    diff = [k for k in SUMMARY_COUNTS if k in manifest_summary and run_summary.get(k) != manifest_summary[k]]
    if not diff:
        return None
    k = diff[0]
    return Damage(f"run.json's summary has {k} = {run_summary.get(k)}, manifest.json's runs entry "
                  f"{manifest_summary[k]}", False)


MISSING_ON_DISK = "listed in manifest.json's runs but missing on disk"
NOT_LISTED = "not listed in manifest.json's runs, so not part of this measurement's record"


def run_listing(listed, on_disk) -> tuple[list[str], list[str]]:
    """Rule: ``manifest.json: runs`` names every run the measurement made (``cluster.measure`` writes it
    from the runs it writes to ``runs/<run>/``): each must be on disk, and a folder it does not name was not
    measured with this manifest's stack, versions and machine. Returns (missing on disk, not listed)."""
    listed, on_disk = set(listed), set(on_disk)
    return sorted(listed - on_disk), sorted(on_disk - listed)


def refuse_or_warn(line: str, action: str, allow_partial: bool, warnings: list[str]) -> None:
    """Without ``allow_partial``: raise the problem as one line, with what ``--allow-partial`` would do.
    With it: record the problem and what was done in ``warnings``."""
    if not allow_partial:
        raise CalibrationError(f"{line} (--allow-partial: {action}, listed as a warning)")
    warnings.append(f"{line}; --allow-partial: {action}")


def _last_byte(path: Path) -> bytes:
    if not path.exists():
        return b""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return b""
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_deployment(ddir: Path, warn: list[str]) -> tuple[pd.DataFrame | None, pd.DataFrame | None,
                                                          pd.DataFrame | None]:
    """A deployment's files of a run (a single model's ``runs/<run>/``, a pipeline stage's
    ``runs/<run>/stages/<stage>/``): ``replicas.csv``, ``metrics.csv`` (the ``nv_inference*`` rows) and
    ``batches.csv``, each optional (None, with a warning for the first two saying what is lost)."""
    reps = read_csv(ddir / "replicas.csv", REPLICA_COLUMNS, str(ddir / "replicas.csv"), optional=True)
    if reps is None:
        warn.append(f"{ddir / 'replicas.csv'}: missing; replica schedule taken from the run's planned events")
    else:
        reps = _numeric(reps, ("t_request_s", "t_ready_s", "t_drain_s", "t_gone_s"), str(ddir / "replicas.csv"))
    met = read_csv(ddir / "metrics.csv", METRIC_COLUMNS, str(ddir / "metrics.csv"), optional=True)
    if met is None:
        warn.append(f"{ddir / 'metrics.csv'}: missing; run left out of the contention and overhead fits")
    else:
        met = _numeric(met, ("t_s", "value"), str(ddir / "metrics.csv"))
        met = met[met["metric"].astype(str).str.startswith("nv_inference")]
    bat = read_csv(ddir / "batches.csv", BATCH_COLUMNS, str(ddir / "batches.csv"), optional=True)
    if bat is not None:
        bat = _numeric(bat, ("t_s", "batch_size", "batches"), str(ddir / "batches.csv"))
    return reps, met, bat


def load_run(rdir: Path, allow_partial: bool = False, manifest_summary: dict | None = None,
             deployment: bool = True) -> RunData:
    """One ``runs/<run>/`` folder (also used by ``calibration.check`` on a fresh run), checked against its own
    ``run.json`` and, when given, the manifest's summary of it (damage checks above). A damaged run raises a
    :class:`CalibrationError`; with ``allow_partial`` it is used as the module docstring says, its warnings
    saying so (a run with nothing intact still raises). ``deployment``: read the deployment's files
    (:func:`read_deployment`); a pipeline run's deployments are its stages' folders, read by
    :mod:`calibration.pipeline`."""
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
    if not isinstance(meta, dict):
        raise CalibrationError(f"{rj}: expected a JSON object")
    for k in ("scenario", "duration_s", "warmup_s"):
        if k not in meta:
            raise CalibrationError(f"{rj}: missing key '{k}'")
    sc = scenario_at(meta["scenario"], f"{rj}: scenario")
    warn: list[str] = []
    name = str(meta.get("name") or rdir.name)
    duration_s, warmup_s = float(meta["duration_s"]), float(meta["warmup_s"])
    summary = meta.get("summary") if isinstance(meta.get("summary"), dict) else {}
    loadgen = meta.get("loadgen") if isinstance(meta.get("loadgen"), dict) else {}
    rpath = rdir / "requests.csv"
    cut = cut_mid_row(_last_byte(rpath))
    req = read_csv(rpath, REQUEST_COLUMNS, str(rpath), complete_rows_only=cut is not None)
    req = _numeric(req, ("t_send_s", "latency_ms"), str(rpath))
    # ---- damage: the first loss found explains the rest (a cut file also misses rows in the window ...)
    t_send, lat = req["t_send_s"].to_numpy(float), req["latency_ms"].to_numpy(float)
    found = [cut] if cut else []
    for d in (row_count_damage(len(req), loadgen.get("n_requests")),
              window_count_damage(t_send, warmup_s, duration_s, summary.get("requests")),
              early_end_damage(t_send, lat, duration_s)):
        if d is not None and not (d.lost and any(f.lost for f in found if f is not cut)):
            found.append(d)
    d = summary_damage(summary, manifest_summary)
    if d is not None:
        found.append(d)
    if found:
        line = f"{rdir}: " + "; ".join(f.what for f in found)
        action = "used as it is"
        if any(f.lost for f in found):
            sent = t_send[np.isfinite(t_send)]
            end = float(sent.max()) if len(sent) else -math.inf
            if end <= warmup_s:
                raise CalibrationError(f"{line}; nothing intact in [{warmup_s:g}, {duration_s:g}) s")
            action = (f"analysed over [{warmup_s:g}, {end:.2f}) s instead of [{warmup_s:g}, {duration_s:g}) s"
                      + ("; the incomplete last row dropped" if cut else ""))
            duration_s = min(duration_s, end)
        refuse_or_warn(line, action, allow_partial, warn)
    req["status"] = req["status"].fillna("error").astype(str)
    bad = req["t_send_s"].isna() | ~np.isfinite(req["t_send_s"].fillna(0))
    ok = req["status"] == "ok"
    bad_lat = ok & (req["latency_ms"].isna() | (req["latency_ms"] < 0))
    if bad_lat.any():
        warn.append(f"{rpath}: {int(bad_lat.sum())} 'ok' rows with missing or negative latency_ms ignored")
    if bad.any():
        warn.append(f"{rpath}: {int(bad.sum())} rows without a send time (never sent) count as failures of the "
                    f"measured run")
    req = req[~bad_lat].copy()
    if not len(req):
        raise CalibrationError(f"{rpath}: no requests")
    reps, met, bat = read_deployment(rdir, warn) if deployment else (None, None, None)
    events = list(meta.get("events") or [])
    key = json.dumps({"scenario": meta["scenario"] | {"name": ""}, "events": events}, sort_keys=True, default=str)
    return RunData(name=name, dir=rdir, scenario=sc, duration_s=duration_s, warmup_s=warmup_s,
                   slo_ms=float(sc.slo_ms), requests=req, replicas=reps, events=events, metrics=met,
                   summary=dict(summary), group=hashlib.sha1(key.encode()).hexdigest()[:10], warnings=warn,
                   batches=bat)


def manifest_runs(man: dict):
    """The runs ``manifest.json`` lists (name -> summary), or None when it lists none (no ``runs`` object)."""
    runs = man.get("runs")
    return runs if isinstance(runs, dict) else None


def load_run_checked(rdir: str | os.PathLike, allow_partial: bool = False) -> RunData:
    """A run folder on its own (``calibration.check``): :func:`load_run`, and, when the folder sits in a
    measurement (``<root>/runs/<run>/`` next to ``<root>/manifest.json``), the manifest's listing and summary
    of it. A run folder copied out of its measurement has no manifest to check against."""
    rdir = Path(rdir)
    root = rdir.parent.parent
    listed = None
    if rdir.parent.name == "runs" and (root / "manifest.json").exists():
        man = load_manifest(root)
        refuse_pipeline(man, root / "manifest.json", "calibration.check")
        listed = manifest_runs(man)
    warn: list[str] = []
    if listed is not None and rdir.name not in listed:
        refuse_or_warn(f"{rdir}: {NOT_LISTED}", "used", allow_partial, warn)
    r = load_run(rdir, allow_partial, (listed or {}).get(rdir.name))
    r.warnings[:0] = warn
    return r


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


def checked_run_folders(root: Path, man: dict, allow_partial: bool, warn: list[str]) -> tuple[list[Path], dict | None]:
    """The run folders under ``root/runs`` and the manifest's listing of runs, checked against each other
    (:func:`run_listing`; each problem refused, or with ``allow_partial`` listed in ``warn``)."""
    rroot = root / "runs"
    if not rroot.is_dir():
        raise CalibrationError(f"{rroot}: folder missing (no measured runs to calibrate against)")
    on_disk = sorted(p for p in rroot.iterdir() if p.is_dir())
    listed = manifest_runs(man)
    if listed is None:
        refuse_or_warn(f"{root / 'manifest.json'}: no 'runs' (cannot check that every measured run is on disk)",
                       "used the runs on disk", allow_partial, warn)
    else:
        missing, unlisted = run_listing(listed, [p.name for p in on_disk])
        for n in missing:
            refuse_or_warn(f"{rroot / n}: {MISSING_ON_DISK}", "continued without it", allow_partial, warn)
        for n in unlisted:
            refuse_or_warn(f"{rroot / n}: {NOT_LISTED}", "used", allow_partial, warn)
    return on_disk, listed


def load_measurements(root: str | os.PathLike, allow_partial: bool = False) -> Measurements:
    """A measurement folder, every run checked (damage checks above); ``allow_partial`` as the module
    docstring says."""
    root = Path(root)
    man = load_manifest(root)
    refuse_pipeline(man, root / "manifest.json", "this reader")
    warn: list[str] = []
    base = scenario_at(man.get("scenario") or {}, f"{root / 'manifest.json'}: scenario")
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
    on_disk, listed = checked_run_folders(root, man, allow_partial, warn)
    runs: dict[str, RunData] = {}
    for rd in on_disk:
        try:
            r = load_run(rd, allow_partial, (listed or {}).get(rd.name))
        except CalibrationError as e:
            if not allow_partial:
                raise
            warn.append(f"{e}; --allow-partial: run left out")
            continue
        if r.name in runs:
            refuse_or_warn(f"{rd}: run.json names the run {r.name!r}, as {runs[r.name].dir} does", "left out",
                           allow_partial, warn)
            continue
        runs[r.name] = r
        warn += r.warnings
    if not runs:
        raise CalibrationError(f"{rroot}: no usable run folders")
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


COUNTER_TAIL_S = 1.5      # counters are read up to duration_s + this: requests sent before the end complete


def batch_histogram(run: RunData) -> dict[int, float] | None:
    """``{batch size: batches executed}`` over the run's window, from ``batches.csv`` (Triton's per-batch-size
    statistics, scraped with the metrics): each replica's cumulative count from its last scrape before
    ``warmup_s`` to its last scrape at or before ``duration_s + COUNTER_TAIL_S`` (as :func:`counter_deltas`).
    None without ``batches.csv`` rows."""
    b = run.batches
    if b is None or not len(b):
        return None
    m = b.rename(columns={"batch_size": "metric", "batches": "value"})
    d = counter_deltas(m, run.warmup_s, run.duration_s + COUNTER_TAIL_S)
    out = {int(k): float(v) for k, v in sorted(d.items()) if v > 0}
    return out or None


def measured_batching(run: RunData) -> dict:
    """The run's batching as Triton saw it, over the window: ``mean_batch_size`` (items per executed batch),
    ``queue_ms`` (mean time a successful request waited in the scheduler's queue:
    Δ``nv_inference_queue_duration_us`` / Δ``nv_inference_request_success``) and ``batch_shares`` (share of
    executed batches per size, from :func:`batch_histogram`; ``{}`` when unknown). NaN without counters."""
    out = {"mean_batch_size": math.nan, "queue_ms": math.nan, "batch_shares": {}}
    h = batch_histogram(run)
    if h:
        n = sum(h.values())
        out["batch_shares"] = {b: v / n for b, v in h.items()}
        out["mean_batch_size"] = sum(b * v for b, v in h.items()) / n
    if run.metrics is not None and len(run.metrics):
        d = counter_deltas(run.metrics, run.warmup_s, run.duration_s + COUNTER_TAIL_S)
        succ, ex = d.get("nv_inference_request_success", 0.0), d.get("nv_inference_exec_count", 0.0)
        if succ > 0:
            out["queue_ms"] = d.get("nv_inference_queue_duration_us", 0.0) / succ / 1e3
        if not h and ex > 0:
            out["mean_batch_size"] = d.get("nv_inference_count", 0.0) / ex
    return out


# --------------------------------------------------------------------------- what the stack was seen to serve

SERVED_BIN_S = 10.0


def served_peak(meas: Measurements, bin_s: float = SERVED_BIN_S, max_fail: float = 0.01) -> dict:
    """The highest rate the measured stack (load generator, load balancer and replicas together) was seen to
    serve: the largest successful-completion rate over ``bin_s`` bins of send time, among bins where at most
    ``max_fail`` of the requests sent failed, over every run. A demonstrated rate, not a limit: the study
    never asks the real stack for more (``max_served_rps`` in the calibrated scenario's provenance).
    """
    return served_peak_of_runs(meas.runs.values(), bin_s, max_fail)


def served_peak_of_runs(runs, bin_s: float = SERVED_BIN_S, max_fail: float = 0.01) -> dict:
    """:func:`served_peak` over the given runs (``RunData``; a pipeline's: its end-to-end runs)."""
    best = {"max_served_rps": 0.0, "run": None, "t_s": None}
    for r in runs:
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
