"""Damaged measurements are refused with one line, or used as far as intact with ``--allow-partial`` (issue 12).

Every folder is the synthetic measurement of ``calib_synth`` (written as ``cluster.measure`` writes it: a
run's summary counts the requests sent in ``[warmup_s, duration_s)``, ``loadgen.n_requests`` every row,
``manifest.json`` lists every run), damaged the way a user's copy can be. The expected lines are built from the
damaged files themselves (rows counted, last send time read back), never from the checks under test.
"""
import json
import shutil

import numpy as np
import pytest
import yaml

import calib_synth as syn
from calibration import check as chk
from calibration import fit as fitmod
from calibration import measurements as ms
from calibration.measurements import load_measurements
from calibration.replay import measured_summary
from simulator import scenario_from_dict
from simulator.config import load_scenario

RATE = 70.0            # const1's generating Poisson rate (req/s)
RUNS = [("baseline", {"duration_s": 12}, []),
        ("const1", {"workload": {"kind": "poisson", "rate_rps": RATE}, "duration_s": 20}, []),
        ("const2", {"workload": {"kind": "poisson", "rate_rps": 110}, "cluster": {"replicas": 2},
                    "duration_s": 12}, [])]
WARMUP, DURATION = 3, 20          # const1's window (BASE warmup_s 3)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return syn.write_folder(tmp_path_factory.mktemp("damage") / "m", runs=RUNS, sweep_samples=60)


@pytest.fixture
def m(clean, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(clean, dst)
    return dst


def _fit(folder, tmp_path, capsys, *extra):
    rc = fitmod.main([str(folder), "--config-out", str(tmp_path / "c.yaml"), "--report", str(tmp_path / "r"),
                      "--seeds", "1", "--no-plots", "--quiet", *extra])
    return rc, capsys.readouterr().err.strip()


def _refused(folder, tmp_path, capsys, line):
    rc, err = _fit(folder, tmp_path, capsys)
    assert (rc, err) == (2, f"error: {line}")
    assert not (tmp_path / "c.yaml").exists() and not (tmp_path / "r").exists()       # nothing written
    assert not list(tmp_path.glob(".*tmp*"))


def _rows(path):
    """(header + complete rows as text lines, the bytes after the last line break)."""
    data = path.read_bytes()
    head, _, rest = data.rpartition(b"\n")
    return head.decode().split("\n"), rest


def _logged(run_dir):
    return json.loads((run_dir / "run.json").read_text())["loadgen"]["n_requests"]


def _trim_warning(meas, run_dir):
    return [w for w in meas.warnings if w.startswith(f"{run_dir}: ")]


# --------------------------------------------------------------------------- the five cases


def test_requests_cut_mid_row(m, tmp_path, capsys):
    rd = m / "runs" / "const1"
    p = rd / "requests.csv"
    data = p.read_bytes()
    cut = len(data) // 2
    while data[cut - 1:cut] == b"\n" or data[cut:cut + 1] == b"\n":
        cut += 1                                          # inside a row, not at either end of one
    p.write_bytes(data[:cut])
    lines, rest = _rows(p)
    assert rest                                           # the damage: an incomplete last row
    rows, end, logged = len(lines) - 1, float(lines[-1].split(",")[3]), _logged(rd)
    assert rows < logged
    what = (f"{rd}: requests.csv ends mid-row (no line break at the end: cut while written or copied); "
            f"requests.csv has {rows} rows, run.json's loadgen logged {logged}")
    action = (f"analysed over [{WARMUP}, {end:.2f}) s instead of [{WARMUP}, {DURATION}) s; "
              f"the incomplete last row dropped")
    _refused(m, tmp_path, capsys, f"{what} (--allow-partial: {action}, listed as a warning)")
    meas = load_measurements(m, allow_partial=True)
    r = meas.runs["const1"]
    assert _trim_warning(meas, rd) == [f"{what}; --allow-partial: {action}"]
    assert len(r.requests) == rows and r.duration_s == end
    # the trimmed run's rate is the generating one again (today's reading: about half of it)
    assert abs(measured_summary(r)["throughput_rps"] / RATE - 1) < 0.2


def test_requests_cut_at_a_row_boundary(m, tmp_path, capsys):
    rd = m / "runs" / "const1"
    p = rd / "requests.csv"
    lines, rest = _rows(p)
    assert not rest
    keep = lines[:len(lines) // 2]
    p.write_text("\n".join(keep) + "\n")
    rows, end, logged = len(keep) - 1, float(keep[-1].split(",")[3]), _logged(rd)
    what = f"{rd}: requests.csv has {rows} rows, run.json's loadgen logged {logged}"
    action = f"analysed over [{WARMUP}, {end:.2f}) s instead of [{WARMUP}, {DURATION}) s"
    _refused(m, tmp_path, capsys, f"{what} (--allow-partial: {action}, listed as a warning)")
    meas = load_measurements(m, allow_partial=True)
    assert _trim_warning(meas, rd) == [f"{what}; --allow-partial: {action}"]
    r = meas.runs["const1"]
    assert len(r.requests) == rows and r.duration_s == end
    assert abs(measured_summary(r)["throughput_rps"] / RATE - 1) < 0.2


def test_run_missing_on_disk(m, tmp_path, capsys):
    shutil.rmtree(m / "runs" / "const2")
    line = f"{m / 'runs' / 'const2'}: listed in manifest.json's runs but missing on disk"
    _refused(m, tmp_path, capsys, f"{line} (--allow-partial: continued without it, listed as a warning)")
    meas = load_measurements(m, allow_partial=True)
    assert set(meas.runs) == {"baseline", "const1"}
    assert f"{line}; --allow-partial: continued without it" in meas.warnings


def test_extra_unlisted_run(m, tmp_path, capsys):
    extra = m / "runs" / "extra"
    shutil.copytree(m / "runs" / "const1", extra)
    meta = json.loads((extra / "run.json").read_text())
    (extra / "run.json").write_text(json.dumps(meta | {"name": "extra"}))
    line = f"{extra}: not listed in manifest.json's runs, so not part of this measurement's record"
    _refused(m, tmp_path, capsys, f"{line} (--allow-partial: used, listed as a warning)")
    meas = load_measurements(m, allow_partial=True)
    assert set(meas.runs) == {"baseline", "const1", "const2", "extra"}        # decided: the user vouches for it
    assert f"{line}; --allow-partial: used" in meas.warnings
    # a second folder holding the same run (run.json's name) is never used twice
    (extra / "run.json").write_text(json.dumps(meta))
    meas = load_measurements(m, allow_partial=True)
    assert meas.runs["const1"].dir == m / "runs" / "const1"
    assert (f"{extra}: run.json names the run 'const1', as {m / 'runs' / 'const1'} does; --allow-partial: left out"
            in meas.warnings)


def test_sends_end_long_before_duration(m, tmp_path, capsys):
    """The load stopped at 8 s of a 20 s run, every file consistent with that (as cluster.measure would have
    written it): only the time span of the sends shows it."""
    rd = m / "runs" / "const1"
    p = rd / "requests.csv"
    lines, _ = _rows(p)
    keep = [lines[0]] + [ln for ln in lines[1:] if float(ln.split(",")[3]) < 8.0]
    p.write_text("\n".join(keep) + "\n")
    t = np.array([float(ln.split(",")[3]) for ln in keep[1:]])
    win = (t >= WARMUP) & (t < DURATION)
    counts = {"requests": int(win.sum()), "successes": int(win.sum()), "failures": 0}    # all 'ok' (synthetic)
    meta = json.loads((rd / "run.json").read_text())
    (rd / "run.json").write_text(json.dumps(meta | {"summary": counts, "loadgen": {"n_requests": len(t)}}))
    man = json.loads((m / "manifest.json").read_text())
    man["runs"]["const1"] = counts
    (m / "manifest.json").write_text(json.dumps(man))
    end = t.max()
    allowed = max(1.0, 3 * np.diff(np.sort(t)).max())
    what = (f"{rd}: sends end at {end:.2f} s, {DURATION - end:.2f} s before duration_s {DURATION} (at most "
            f"{allowed:.2f} s expected: 3 x the longest gap between sends, >= 1 s): the load stopped early")
    action = f"analysed over [{WARMUP}, {end:.2f}) s instead of [{WARMUP}, {DURATION}) s"
    _refused(m, tmp_path, capsys, f"{what} (--allow-partial: {action}, listed as a warning)")
    meas = load_measurements(m, allow_partial=True)
    assert _trim_warning(meas, rd) == [f"{what}; --allow-partial: {action}"]
    assert meas.runs["const1"].duration_s == end
    assert abs(measured_summary(meas.runs["const1"])["throughput_rps"] / RATE - 1) < 0.2


# --------------------------------------------------------------------------- what else is checked


def test_summary_replaced_after_the_measurement(m, tmp_path, capsys):
    man = json.loads((m / "manifest.json").read_text())
    n = man["runs"]["baseline"]["requests"]
    man["runs"]["baseline"]["requests"] = n + 5
    (m / "manifest.json").write_text(json.dumps(man))
    rd = m / "runs" / "baseline"
    line = f"{rd}: run.json's summary has requests = {n}, manifest.json's runs entry {n + 5}"
    _refused(m, tmp_path, capsys, f"{line} (--allow-partial: used as it is, listed as a warning)")
    assert f"{line}; --allow-partial: used as it is" in load_measurements(m, allow_partial=True).warnings


def test_nothing_intact_is_left_out(m):
    rd = m / "runs" / "const1"
    lines, _ = _rows(rd / "requests.csv")
    keep = [lines[0]] + [ln for ln in lines[1:] if float(ln.split(",")[3]) < WARMUP]     # only the warm-up
    (rd / "requests.csv").write_text("\n".join(keep) + "\n")
    meas = load_measurements(m, allow_partial=True)
    assert set(meas.runs) == {"baseline", "const2"}
    w = _trim_warning(meas, rd)
    assert len(w) == 1 and f"nothing intact in [{WARMUP}, {DURATION}) s; --allow-partial: run left out" in w[0]


def test_clean_folder_has_no_damage_warnings(clean):
    meas = load_measurements(clean)                       # the format as cluster.measure writes it passes
    assert set(meas.runs) == {"baseline", "const1", "const2"} and meas.warnings == []


def test_rules_on_hand_computed_cases():
    assert ms.cut_mid_row(b"\n") is None and ms.cut_mid_row(b"") is None
    assert ms.cut_mid_row(b"7").lost
    assert ms.row_count_damage(10, 10) is None
    assert ms.row_count_damage(9, 10).lost and not ms.row_count_damage(11, 10).lost
    assert "no loadgen.n_requests" in ms.row_count_damage(10, None).what
    # window [3, 10): 4.0 surely inside; 3.0 and 9.9999995 within the file's 1e-6 rounding of an edge
    t = np.array([2.0, 3.0, 4.0, 9.9999995])
    for counted in (1, 2, 3):
        assert ms.window_count_damage(t, 3, 10, counted) is None
    low, high = ms.window_count_damage(t, 3, 10, 0), ms.window_count_damage(t, 3, 10, 4)
    assert not low.lost and "has 1 requests sent in [3, 10) s" in low.what
    assert high.lost and "has 3 requests sent in [3, 10) s, run.json's summary counts 4" in high.what
    # sends 1 s apart: 3 s of silence allowed at the end
    t = np.arange(0.0, 11.0)
    assert ms.early_end_damage(t, np.full(11, 5.0), 13.0) is None
    d = ms.early_end_damage(t, np.full(11, 5.0), 13.5)
    assert d.lost and "sends end at 10.00 s, 3.50 s before duration_s 13.5 (at most 3.00 s" in d.what
    # closed-loop users stuck on 30 s timeouts at the end: their completions reach the end, nothing stopped
    lat = np.full(11, 5.0)
    lat[-1] = 30_000.0
    assert ms.early_end_damage(t, lat, 38.0) is None
    assert ms.run_listing(["a", "b"], ["b", "c"]) == (["a"], ["c"])
    assert ms.summary_damage({"requests": 3}, {"requests": 3, "avg_ms": 1.0}) is None
    assert ms.summary_damage({"requests": 3}, None) is None


# --------------------------------------------------------------------------- end to end: fit and check


def test_fit_allow_partial_lists_problems_in_report_and_provenance(m, tmp_path, capsys):
    rd = m / "runs" / "const1"
    p = rd / "requests.csv"
    data = p.read_bytes()
    p.write_bytes(data[:len(data) * 2 // 3].rstrip(b"\n"))              # cut mid-row
    shutil.rmtree(m / "runs" / "const2")
    rc, err = _fit(m, tmp_path, capsys, "--allow-partial")
    assert rc == 0, err
    cut = f"{rd}: requests.csv ends mid-row"
    gone = f"{m / 'runs' / 'const2'}: listed in manifest.json's runs but missing on disk"
    sc = load_scenario(str(tmp_path / "c.yaml"))
    fid = json.loads((tmp_path / "r" / "fidelity.json").read_text())
    md = (tmp_path / "r" / "fidelity.md").read_text()
    for warns in (sc.provenance["warnings"], fid["provenance"]["warnings"]):
        assert any(w.startswith(cut) for w in warns) and any(w.startswith(gone) for w in warns)
    assert f"- {gone}; --allow-partial: continued without it" in md and f"- {cut}" in md
    assert sc.provenance["allow_partial"] is True and "--allow-partial" in sc.provenance["command"]
    assert set(fid["runs"]) == {"baseline", "const1"}


def test_check_refuses_and_allows_partial(m, tmp_path, capsys):
    cfg = tmp_path / "truth.yaml"
    cfg.write_text(yaml.safe_dump(scenario_from_dict(syn.truth_dict({})).to_dict(), sort_keys=False))
    rd = m / "runs" / "const1"
    p = rd / "requests.csv"
    lines, _ = _rows(p)
    keep = lines[:len(lines) // 2]
    p.write_text("\n".join(keep) + "\n")
    rows, end = len(keep) - 1, float(keep[-1].split(",")[3])
    what = f"{rd}: requests.csv has {rows} rows, run.json's loadgen logged {_logged(rd)}"
    action = f"analysed over [{WARMUP}, {end:.2f}) s instead of [{WARMUP}, {DURATION}) s"
    out = tmp_path / "chk"
    args = [str(cfg), str(rd), "--out", str(out), "--seeds", "1", "--no-plots"]
    rc = chk.main(args)
    assert (rc, capsys.readouterr().err.strip()) == (2, f"error: {what} (--allow-partial: {action}, listed as a "
                                                        f"warning)")
    assert not out.exists()
    assert chk.main(args + ["--allow-partial"]) == 0
    assert f"warning: {what}; --allow-partial: {action}" in capsys.readouterr().err
    j = json.loads((out / "check.json").read_text())
    assert j["warnings"] == [f"{what}; --allow-partial: {action}"] and j["describe"]["duration_s"] == end
    assert f"- {what}; --allow-partial: {action}" in (out / "check.md").read_text()
    # the manifest's listing applies to a run checked on its own too
    extra = m / "runs" / "extra"
    shutil.copytree(m / "runs" / "baseline", extra)
    rc = chk.main([str(cfg), str(extra), "--out", str(tmp_path / "chk2"), "--seeds", "1", "--no-plots"])
    assert (rc, capsys.readouterr().err.strip()) == (
        2, f"error: {extra}: not listed in manifest.json's runs, so not part of this measurement's record "
           f"(--allow-partial: used, listed as a warning)")
