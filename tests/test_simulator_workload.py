import numpy as np
import pytest

from simulator.config import ConfigError, scenario_from_dict
from simulator.workload import ArrivalSource, arrival_times, mean_rate, schedule_rate


def wl(**w):
    return scenario_from_dict({"workload": w, "service": {"mean_ms": 1}}).workload


def test_poisson_rate_and_exponential_gaps():
    a = arrival_times(wl(kind="poisson", rate_rps=200), 2000, 3)
    assert abs(len(a) / 2000 / 200 - 1) < 0.01
    gaps = np.diff(a)
    assert abs(gaps.mean() * 200 - 1) < 0.01
    assert abs(gaps.std() / gaps.mean() - 1) < 0.01          # exponential: cv = 1


def test_chunking_does_not_change_arrivals():
    spec = wl(kind="poisson", rate_rps=50)
    whole = arrival_times(spec, 100, 9)
    src = ArrivalSource(spec, 100, 9)
    parts = np.concatenate([src.until(t) for t in (3.3, 17.0, 17.0, 55.5, 100)])
    np.testing.assert_array_equal(whole, parts)


def test_schedule_shapes():
    segs = [{"kind": "step", "duration_s": 100, "rate_rps": 10, "to_rps": 50, "at_s": 40},
            {"kind": "ramp", "duration_s": 100, "rate_rps": 0, "to_rps": 100},
            {"kind": "spike", "duration_s": 100, "rate_rps": 5, "peak_rps": 500, "at_s": 50, "width_s": 10},
            {"kind": "sinusoid", "duration_s": 100, "rate_rps": 20, "amplitude_rps": 40, "period_s": 50}]
    spec = wl(kind="schedule", segments=segs)
    r = schedule_rate(spec.segments, np.array([39.9, 40.0, 150.0, 255.0, 249.9, 312.5, 337.5, 1000.0]))
    np.testing.assert_allclose(r, [10, 50, 50, 500, 5, 60, 0, 20], atol=1e-6)  # clipped at 0; after the end the last rate (20) holds
    a = arrival_times(spec, 400, 1)
    counts = np.histogram(a, bins=[0, 40, 100, 200, 250, 260, 300])[0]
    expect = [400, 3000, 5000, 250, 5000, 200]
    for c, e in zip(counts, expect):
        assert abs(c - e) < 4 * np.sqrt(e) + 1, (counts, expect)


def test_trace_window_speedup_scale(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("rps\n" + "\n".join(str(x) for x in [10] * 60 + [100] * 60 + [0] * 60))
    spec = wl(kind="trace", path=str(p), speedup=10, scale=2.0, offset_s=30, length_s=120)
    # sim second s covers trace seconds 30+10s .. : rate 20 for 3 s, then 200 for 6 s, then 0
    a = arrival_times(spec, 20, 4)
    c = np.histogram(a, bins=[0, 3, 9, 20])[0]
    assert abs(c[0] - 60) < 4 * np.sqrt(60) and abs(c[1] - 1200) < 4 * np.sqrt(1200) and c[2] == 0
    assert abs(mean_rate(spec, 9) - (20 * 3 + 200 * 6) / 9) < 1


def test_timestamps_replay_exact_and_scaled(tmp_path):
    p = tmp_path / "ts.csv"
    p.write_text("TIMESTAMP\n2023-01-01 00:00:10\n2023-01-01 00:00:11.5\n2023-01-01 00:00:14\n")
    np.testing.assert_allclose(arrival_times(wl(kind="timestamps", path=str(p)), 100, 0), [0, 1.5, 4])
    np.testing.assert_allclose(arrival_times(wl(kind="timestamps", path=str(p), speedup=2), 100, 0), [0, .75, 2])
    a = arrival_times(wl(kind="timestamps", path=str(p), scale=3.0), 100, 0)
    assert len(a) == 9 and np.all(np.diff(a) >= 0)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        arrival_times(wl(kind="trace", path=str(tmp_path / "nope.csv")), 10, 0)
    p = tmp_path / "x.csv"
    p.write_text("other\n1\n")
    with pytest.raises(ConfigError, match="no column 'rps'"):
        arrival_times(wl(kind="trace", path=str(p)), 10, 0)
    p.write_text("rps\n1\n-4\n")
    with pytest.raises(ConfigError, match="row 3: negative rate"):
        arrival_times(wl(kind="trace", path=str(p)), 10, 0)
    p.write_text("TIMESTAMP\n2023-01-01\nnot-a-time\n")
    with pytest.raises(ConfigError, match="row 3: not a number or timestamp"):
        arrival_times(wl(kind="timestamps", path=str(p)), 10, 0)


@pytest.mark.parametrize("kind, column, text, message", [
    ("trace", "rps", "rps\n", "column 'rps' has no values (an empty trace)"),
    ("trace", "rps", "rps\n\n\n", "column 'rps' has no values (an empty trace)"),
    ("trace", "rps", "", "file is empty (expected a CSV with a 'rps' column)"),
    ("timestamps", "TIMESTAMP", "TIMESTAMP\n", "column 'TIMESTAMP' has no values (an empty timestamps file)"),
    ("trace", "rps", "rps\n10\n12\n100\nabc\n20\n", "column 'rps' row 5: not a number ('abc')"),
    ("trace", "rps", "rps\n10\n\n12\n", "column 'rps' row 3: empty value"),
    ("timestamps", "TIMESTAMP", "TIMESTAMP\n2023-01-01 00:00:10\n15\n",
     "column 'TIMESTAMP' row 3: not a number or timestamp ('15')"),
    ("timestamps", "t", "t\n0.5\n1.5\noops\n", "column 't' row 4: not a number or timestamp ('oops')"),
])
def test_empty_and_non_numeric_files_name_file_row_and_value(tmp_path, kind, column, text, message):
    p = tmp_path / "x.csv"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        arrival_times(wl(kind=kind, path=str(p), column=column), 10, 0)
    assert str(e.value) == f"{p}: {message}"


def test_trailing_blank_lines_are_ignored(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("rps\n" + "\n".join(["100"] * 10) + "\n\n\n")
    assert abs(len(arrival_times(wl(kind="trace", path=str(p)), 10, 0)) - 1000) < 4 * 1000 ** 0.5
