"""Never lose a user's data (issue 12 §1, §2 and the output cases of §5): every command that writes a folder
goes through simulator.io.OutputFolder -- refuses a folder it did not write (even with --force), replaces its
own only with --force, is exclusive and atomic, and checks --out before any work starts. Temporary
directories only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.io import MARKER, OutputError, OutputFolder, read_marker, run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "configs" / "example.yaml")
SHORT = ["--set", "duration_s=20", "--set", "warmup_s=0", "--quiet"]


def _sim(*args, cwd=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "simulator.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _precious(tmp_path: Path) -> Path:
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.txt").write_text("four years of work")
    return d


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------- §1: a folder it did not write


def _main(cmd: str):
    if cmd == "simulator.run":
        from simulator.run import main
        return lambda out, *f: main([EXAMPLE, "--out", out, *SHORT, *f])
    if cmd == "calibration.fit":
        from calibration.fit import main
        return lambda out, *f: main([str(ROOT / "no-such-measurements"), "--report", out, "--quiet", *f])
    if cmd == "rl.evaluate":
        from rl.evaluate import main
        return lambda out, *f: main(["--baselines", "hpa_default", "--out", out, *f])
    if cmd == "rl.train":
        from rl.train import main
        return lambda out, *f: main(["--out", out, "--iterations", "1", "--quiet", *f])
    if cmd == "cluster.measure":
        from cluster.measure import main
        return lambda out, *f: main([str(ROOT / "configs" / "baseline.yaml"), "--out", out, "--quiet", *f])
    if cmd == "cluster.validate":
        from cluster.validate.cli import main
        return lambda out, *f: main([str(ROOT / "no-such-policy.pt"), "--out", out, "--quiet", *f])
    if cmd == "cluster.pipeline":
        from cluster.pipeline import main
        return lambda out, *f: main(["--out", out, "--only", "study", *f])
    raise AssertionError(cmd)


COMMANDS = ("simulator.run", "calibration.fit", "rl.evaluate", "rl.train", "cluster.measure", "cluster.validate",
            "cluster.pipeline")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_refuses_a_folder_it_did_not_write(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _main(cmd)
    d = _precious(tmp_path)
    for force in ((), ("--force",)):
        if cmd == "cluster.pipeline" and force:
            continue                                  # the pipeline's --force re-runs steps; it never replaces
        assert run(str(d), *force) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"was not written by {cmd}" in line and "precious" in line
        assert (d / "thesis.txt").read_text() == "four years of work"
        assert sorted(os.listdir(d)) == ["thesis.txt"]
    assert sorted(os.listdir(tmp_path)) == ["precious"]      # no temporary folder, no lock file left


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_refuses_the_working_directory_and_a_file(cmd, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("x")
    monkeypatch.chdir(work)
    run = _main(cmd)
    assert run(".", "--force") == 2
    assert "is the working directory" in _one_line(capsys.readouterr().err)
    assert run(str(tmp_path), "--force") == 2                  # a folder holding the working directory
    assert "is the working directory or contains it" in _one_line(capsys.readouterr().err)
    assert run("notes.txt") == 2
    assert "exists and is not a folder" in _one_line(capsys.readouterr().err)
    assert os.listdir(work) == ["notes.txt"] and (work / "notes.txt").read_text() == "x"


def test_simulator_run_replaces_only_its_own_folder_and_only_with_force(tmp_path):
    out = tmp_path / "o"
    r = _sim(EXAMPLE, "--out", str(out), *SHORT, "--seed", "1", "--no-plots")
    assert r.returncode == 0, r.stderr
    assert read_marker(out)["command"] == "simulator.run"
    r = _sim(EXAMPLE, "--out", str(out), *SHORT, "--seed", "2", "--no-plots")
    assert r.returncode == 2 and "already exists (written by simulator.run); --force replaces it" in _one_line(r.stderr)
    assert json.loads((out / "summary.json").read_text())["seed"] == 1
    r = _sim(EXAMPLE, "--out", str(out), *SHORT, "--seed", "2", "--no-plots", "--force")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["seed"] == 2
    # a folder another command wrote is not simulator.run's, --force or not
    other = tmp_path / "m"
    OutputFolder(other, "cluster.measure").__exit__(None, None, None)
    (other / "manifest.json").write_text("{}")
    r = _sim(EXAMPLE, "--out", str(other), *SHORT, "--force")
    assert r.returncode == 2 and "holds the output of cluster.measure, not of simulator.run" in _one_line(r.stderr)
    assert (other / "manifest.json").exists()
    # an empty folder the user made is not its own either
    (tmp_path / "empty").mkdir()
    r = _sim(EXAMPLE, "--out", str(tmp_path / "empty"), *SHORT, "--force")
    assert r.returncode == 2 and "empty folder that was not written by simulator.run" in _one_line(r.stderr)


def test_outputs_written_before_the_marker_are_recognised(tmp_path, capsys):
    from cluster.measure import FORMAT
    from simulator.io import json_format_is
    old = tmp_path / "results"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    with OutputFolder(old, "cluster.measure", force=True, legacy=json_format_is("manifest.json", FORMAT)) as of:
        (of.path / "manifest.json").write_text(json.dumps({"format": FORMAT, "new": True}))
    assert json.loads((old / "manifest.json").read_text())["new"]
    # the same file with another format is someone else's
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "manifest.json").write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(OutputError, match="was not written by cluster.measure"):
        OutputFolder(tmp_path / "x", "cluster.measure", force=True, legacy=json_format_is("manifest.json", FORMAT))


def test_pipeline_resumes_its_own_folder_and_refuses_a_foreign_one(tmp_path, capsys, monkeypatch):
    from cluster.pipeline import main
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p"
    # a fresh folder becomes the pipeline's (marker), even when a step then fails
    assert main(["--out", str(out), "--only", "study"]) == 1
    assert "calibrated" in capsys.readouterr().err and read_marker(out)["command"] == "cluster.pipeline"
    token = read_marker(out)["token"]
    (out / "calibrated").mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--out", str(out), "--only", "study"]) == 1      # resumed in place: nothing removed
    capsys.readouterr()
    assert read_marker(out)["token"] == token and (out / "keep.txt").exists()
    # an earlier pipeline's folder (pipeline.json, no marker) is resumed too
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "pipeline.json").write_text("{}")
    assert main(["--out", str(legacy), "--only", "study"]) == 1
    assert "calibrated" in capsys.readouterr().err and (legacy / "pipeline.json").exists()


def test_train_starts_afresh_only_with_force_and_resume_keeps_the_folder(tmp_path):
    of = OutputFolder(tmp_path / "t", "rl.train", in_place=True)
    (of.path / "checkpoint").mkdir()
    of.close()
    with pytest.raises(OutputError, match="--force replaces it"):
        OutputFolder(tmp_path / "t", "rl.train", in_place=True)
    OutputFolder(tmp_path / "t", "rl.train", in_place=True, reuse=True).close()          # --resume
    assert (tmp_path / "t" / "checkpoint").exists()
    OutputFolder(tmp_path / "t", "rl.train", in_place=True, force=True).close()          # --force: afresh
    assert os.listdir(tmp_path / "t") == [MARKER]


# --------------------------------------------------------------------------- §2: concurrent writers


def test_concurrent_writers_one_wins_the_others_fail_with_one_line(tmp_path):
    out = tmp_path / "same"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "simulator.run", EXAMPLE, "--out", str(out), "--seed", str(s),
                               "--set", "duration_s=60", "--set", "warmup_s=0", "--quiet", "--no-plots"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in (11, 12, 13)]
    res = [(p.wait(180), *p.communicate()) for p in procs]
    winners = [s for s, (rc, _, _) in zip((11, 12, 13), res) if rc == 0]
    assert len(winners) == 1, [(rc, err) for rc, _, err in res]
    for rc, so, err in res:
        if rc != 0:
            assert rc == 2 and "wrote" not in so
            line = _one_line(err)
            assert ("is writing it right now" in line or "already exists" in line), line
    # the folder holds the winner's results, and nothing else is left beside it
    assert json.loads((out / "summary.json").read_text())["seed"] == winners[0]
    assert sorted(os.listdir(tmp_path)) == ["same"]


def test_the_lock_is_exclusive_in_process(tmp_path):
    a = OutputFolder(tmp_path / "o", "simulator.run")
    with pytest.raises(OutputError, match=rf"pid {os.getpid()}\) is writing it right now"):
        OutputFolder(tmp_path / "o", "simulator.run")
    a.commit()
    a.close()
    OutputFolder(tmp_path / "o", "simulator.run", force=True).close()      # free again once released


def test_a_folder_changed_meanwhile_is_left_alone(tmp_path):
    of = OutputFolder(tmp_path / "o", "simulator.run")
    (of.path / "summary.json").write_text("{}")
    (tmp_path / "o").mkdir()                        # someone else (not a servesim command) wrote it meanwhile
    (tmp_path / "o" / "theirs.txt").write_text("x")
    with pytest.raises(OutputError, match="changed by someone else"):
        of.commit()
    of.close()
    assert os.listdir(tmp_path / "o") == ["theirs.txt"]
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_a_failure_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    with OutputFolder(tmp_path / "a" / "b" / "o", "simulator.run") as of:
        (of.path / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "a" / "b" / "o", "simulator.run", force=True) as of:
            (of.path / "x").write_text("2")
            raise RuntimeError("simulation failed")
    assert (tmp_path / "a" / "b" / "o" / "x").read_text() == "1"
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["o"]
    # parents created for a run that then failed are removed again
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "new" / "deep" / "o", "simulator.run"):
            raise RuntimeError("x")
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- §5: output cases


def test_out_naming_a_file_is_refused_before_simulating(tmp_path):
    (tmp_path / "f").write_text("data")
    t = time.time()
    # a run that would take hours: the refusal must come before it starts
    r = _sim(EXAMPLE, "--out", str(tmp_path / "f"), "--set", "duration_s=100000000", "--no-records", "--quiet", timeout=60)
    assert r.returncode == 2 and "exists and is not a folder" in _one_line(r.stderr)
    assert r.stdout == "" and time.time() - t < 60
    assert (tmp_path / "f").read_text() == "data"


def test_unwritable_out_is_refused_before_simulating(tmp_path):
    (tmp_path / "f").write_text("data")
    r = _sim(EXAMPLE, "--out", str(tmp_path / "f" / "sub"), "--set", "duration_s=100000000", "--no-records", "--quiet",
             timeout=60)
    assert r.returncode == 2 and "cannot create" in _one_line(r.stderr)
    if os.geteuid() == 0:
        place = Path("/sys/servesim-out")            # root writes anywhere else; sysfs refuses even root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        place = ro / "out"
    r = _sim(EXAMPLE, "--out", str(place), "--set", "duration_s=100000000", "--no-records", "--quiet", timeout=60)
    assert r.returncode == 2 and "cannot write in" in _one_line(r.stderr) and r.stdout == ""


def test_no_plots_does_not_claim_pngs(tmp_path):
    r = _sim(EXAMPLE, "--out", str(tmp_path / "o"), *SHORT, "--no-plots")
    assert r.returncode == 0, r.stderr
    wrote = [ln for ln in r.stdout.splitlines() if ln.startswith("wrote ")]
    assert wrote and "png" not in wrote[0] and "summary.json" in wrote[0]
    assert not any(n.endswith(".png") for n in os.listdir(tmp_path / "o"))


def test_run_cli_error_policy(capsys):
    class Degenerate(RuntimeError):
        exit_code = 3
    torn = []

    def boom(exc):
        def f():
            raise exc
        return f
    assert run_cli(boom(OutputError("--out x: refused")), prefix="config error") == 2
    assert capsys.readouterr().err == "error: --out x: refused\n"          # never 'config error' for --out
    assert run_cli(boom(Degenerate("bad")), (Degenerate,)) == 3
    assert run_cli(boom(OSError("port")), runtime_errors=(OSError,), teardown=lambda: torn.append(1)) == 1
    assert run_cli(boom(KeyboardInterrupt()), teardown=lambda: torn.append(2)) == 130
    assert torn[0] == 1 and 2 in torn
    with pytest.raises(ZeroDivisionError):                                  # a bug is not hidden
        run_cli(boom(ZeroDivisionError()))
