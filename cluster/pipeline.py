"""The whole job in one command: ``python -m cluster.pipeline [--config FILE] [--out DIR] [--quick]``.

On the deployment of the measurement file ``--config`` (default ``configs/baseline.yaml``: the built-in
MobileNetV4 on local Triton replicas; any ``model:`` block -- a built-in, your ONNX file, your Triton model
repository -- any ``stack.tritonserver``, either backend), with ``NAME`` the file's name without
``.yaml``, in order:

1. ``setup``     ``python -m cluster.setup`` (HAProxy, ONNX model, a Triton check; idempotent)
2. ``measure``   ``python -m cluster.measure FILE --out DIR/results/NAME``
3. ``fit``       ``python -m calibration.fit DIR/results/NAME --config-out DIR/calibrated/NAME.yaml
                 --report DIR/report/NAME``
4. ``study``     the study design, derived from the calibration by the rules of :mod:`rl.study`: SLO (2 x
                 the calibrated unloaded p99), replica range (what the node holds), control interval,
                 trace scale and validation load, each printed with its rule and inputs; ``--slo-ms``,
                 ``--interval``, ``--min-replicas``, ``--max-replicas``, ``--scale``, ``--target-util``
                 override (checked the same way) -> ``DIR/study/deployment.yaml`` (the calibrated scenario
                 at the study's SLO, interval and range; the study in its ``provenance.study``),
                 ``DIR/study/rl.yaml`` (the RL config: that scenario and the trace scale) and
                 ``DIR/study/study.json`` (``python -m cluster.pipeline --only study``)
5. ``train``     ``python -m rl.train --config DIR/study/rl.yaml --iterations N --out DIR/train [--seeds K]``
                 (a population of training seeds on Ray Tune, the best on the tuning days exported as
                 ``DIR/train/policy.pt``; ``--quick``: 2 seeds)
6. ``tune``      ``python -m rl.baselines --config DIR/study/rl.yaml --out DIR/tuned.json``
7. ``evaluate``  ``python -m rl.evaluate DIR/train/policy.pt --config DIR/study/rl.yaml --tuned DIR/tuned.json
                 --out DIR/eval``
8. ``validate``  ``python -m cluster.validate DIR/train/policy.pt --scenario DIR/study/deployment.yaml
                 --stack FILE --tuned DIR/tuned.json --out DIR/validate`` (the policy, the tuned HPA and the best static
                 count on the real stack, each replayed in the calibrated simulator)

and prints the real-vs-simulated table, a "sanity" section (:mod:`rl.sanity`: the evaluation's and the
validation's checks, and whether the learned policy and the tuned HPA differ) and the paths of the
reports and plots. ``evaluate`` and ``validate`` refuse a degenerate result (exit 3, one line naming the
check), which stops the pipeline, unless ``--allow-degenerate`` (passed on to them).
Each step is the standalone command shown (printed before it runs; its output
goes to the console and ``DIR/logs/<step>.log``). A step is skipped when its
output exists and is newer than its inputs (re-running after an interruption
resumes at the first missing step); ``--force`` re-runs everything, ``--from
STEP`` re-runs from a step, ``--only STEP[,STEP]`` runs just those. Every step
writes its output atomically. ``--out`` is the pipeline's own folder: a new one gets
its marker (``.servesim-output.json``) and an existing one is resumed only if it
carries it (or, from an earlier version, ``pipeline.json``); any other non-empty
folder is refused, and a second pipeline on the same folder stops at once. Nothing of the study is fixed in advance: a machine
40 % slower, or a user's GPU deployment, gets its own SLO, range, interval and load.

Bad input is one line ``error: ...`` and exit code 2; a failing step stops the
pipeline with exit code 1 naming its log; Ctrl-C stops the running step (which
tears its servers down) and exits 130.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rl import sanity
from rl.sanity import EXIT_DEGENERATE
from simulator.config import ConfigError
from simulator.io import OutputFolder, run_cli

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("setup", "measure", "fit", "study", "train", "tune", "evaluate", "validate")
NOISE = re.compile(r"(Warning:|warnings\.warn|monkey\.patch_all\(\)|if isinstance\(o, |elif isinstance\(o, |"
                   r"DeprecationWarning|FutureWarning|UserWarning|RuntimeWarning)")


class PipelineError(RuntimeError):
    """A step failed (exit 1) or refused a degenerate result (its ``exit_code``, 3)."""

    def __init__(self, msg: str, exit_code: int = 1):
        super().__init__(msg)
        self.exit_code = exit_code


class BadInput(ConfigError):
    pass


@dataclass
class Step:
    name: str
    what: str
    cmd: list[str] | None                 # None: done in-process
    output: Path                          # the file whose existence (and mtime) means "done"
    inputs: list[Path] = field(default_factory=list)
    clean: Path | None = None             # folder removed before the step runs (non-atomic writers)


def plan(out: Path, a) -> list[Step]:
    py = sys.executable
    res = out / "results" / a.name
    cal = out / "calibrated" / f"{a.name}.yaml"
    dep = out / "study" / "deployment.yaml"
    rlc = out / "study" / "rl.yaml"
    pol = out / "train" / "policy.pt"
    tuned = out / "tuned.json"
    rel = (lambda p: os.path.relpath(p, ROOT) if str(p).startswith(str(ROOT)) else str(p))
    cfg = Path(a.config).resolve()
    steps = [
        Step("setup", "check / install HAProxy, export the model, start one Triton server",
             [py, "-m", "cluster.setup"], out / "logs" / "setup.ok"),
        Step("measure", "measure the real stack (runs, sweep, start-ups)",
             [py, "-m", "cluster.measure", rel(cfg), "--out", rel(res), "--force"], res / "manifest.json", [cfg]),
        Step("fit", "calibrate the simulator to the measurements",
             [py, "-m", "calibration.fit", rel(res), "--name", a.name, "--config-out", rel(cal),
              "--report", rel(out / "report" / a.name), "--force"], cal, [res / "manifest.json"]),
        Step("study", "the study design: SLO, replica range, control interval, trace scale, validation load",
             None, out / "study" / "study.json", [cal]),
        Step("train", f"train a PPO population in the calibrated simulator ({a.iterations} iterations"
                      f"{f', {a.seeds} seeds' if a.seeds else ''})",
             [py, "-m", "rl.train", "--config", rel(rlc), "--iterations", str(a.iterations), "--out",
              rel(out / "train"), "--checkpoint-every", "0", "--seed", str(a.seed)]
             + (["--seeds", str(a.seeds)] if a.seeds else []), pol, [rlc, dep],
             clean=out / "train"),
        Step("tune", "tune the baselines (HPA grid, KPA, predictive, static) on the tuning days",
             [py, "-m", "rl.baselines", "--config", rel(rlc), "--out", rel(tuned)], tuned, [rlc, dep]),
        Step("evaluate", "policy vs baselines on the held-out trace windows (simulation)",
             [py, "-m", "rl.evaluate", rel(pol), "--config", rel(rlc), "--tuned", rel(tuned), "--baselines",
              a.eval_baselines, "--seeds", str(a.eval_seeds), "--out", rel(out / "eval"), "--force"]
             + (["--allow-degenerate"] if a.allow_degenerate else []),
             out / "eval" / "results.json", [pol, tuned, rlc]),
        Step("validate", "the policy, tuned HPA and static on the real stack vs the simulator",
             [py, "-m", "cluster.validate", rel(pol), "--scenario", rel(dep), "--stack", rel(cfg), "--tuned",
              rel(tuned), "--compare",
              a.compare, "--duration", f"{a.duration:g}", "--out", rel(out / "validate"), "--force"]
             + (["--backend", a.backend] if a.backend else []) + (["--allow-degenerate"] if a.allow_degenerate else []),
             out / "validate" / "summary.json", [pol, tuned, dep]),
    ]
    return steps


def write_study(cal: Path, study_dir: Path, a, log=print):
    """Design the study from the calibrated scenario (:func:`rl.study.design_study`, the user's values from
    the command line) and write ``study_dir/{deployment.yaml, rl.yaml, study.json}``. Returns the study."""
    from rl.common import DEFAULT_CONFIG, load_trace, resolve_path
    from rl.study import design_study, write_study_files
    from simulator.config import load_raw, load_scenario
    sc = load_scenario(str(cal))
    base_raw = load_raw(DEFAULT_CONFIG)
    tr = dict(base_raw.get("trace") or {})
    rates = load_trace(resolve_path(tr["path"]))
    util = float(a.target_util if a.target_util is not None else tr.get("target_util", 0.8))
    given = {"slo_ms": a.slo_ms, "interval_s": a.interval, "min_replicas": a.min_replicas,
             "max_replicas": a.max_replicas, "trace_scale": a.scale}
    st = design_study(sc, rates, tr["eval_days"], slo_target=float(base_raw.get("slo_target", 0.01)),
                      target_util=util, given=given, log=log)
    src = os.path.relpath(cal, ROOT) if str(cal).startswith(str(ROOT)) else str(cal)
    write_study_files(st, sc, base_raw, study_dir, source=src)
    return st


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return -1.0


def is_done(s: Step, allow_degenerate: bool = False) -> bool:
    """Output present, newer than its inputs, and (evaluate, validate) not refused as degenerate."""
    if not s.output.exists():
        return False
    m = _mtime(s.output)
    if not all(_mtime(i) <= m for i in s.inputs):
        return False
    if s.name in ("evaluate", "validate") and not allow_degenerate:
        try:
            rec = json.loads(s.output.read_text()).get("sanity") or {}
        except (OSError, ValueError):
            return False
        return bool(rec.get("ok", True))
    return True


def run_cmd(cmd: list[str], log: Path, verbose: bool) -> int:
    """Run one step as a child in its own session; stream its output to the console and ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "wb") as lf:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        buf = b""
        try:
            while True:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                lf.write(chunk)
                lf.flush()
                buf += chunk
                # console: whole lines (and \r progress updates), minus library warning noise
                parts = re.split(rb"(\r|\n)", buf)
                buf = parts.pop() if parts and parts[-1] not in (b"\r", b"\n") else b""
                out = []
                for i in range(0, len(parts) - 1, 2):
                    text, sep = parts[i], parts[i + 1]
                    if not verbose and NOISE.search(text.decode("utf-8", "replace")):
                        continue
                    out.append(text + sep)
                if out:
                    sys.stderr.buffer.write(b"".join(out))
                    sys.stderr.flush()
            return p.wait()
        except KeyboardInterrupt:
            # one SIGINT to the step (it tears its servers down), then wait; SIGKILL its group as a last resort
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
            raise
        finally:
            if buf:
                sys.stderr.buffer.write(buf)
                sys.stderr.flush()


def last_error(log: Path) -> str:
    """The last ``error: ...`` line a step printed (its one-line reason), without the prefix."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("error: ")]
    except OSError:
        return "see its log"
    return lines[-1][len("error: "):] if lines else "see its log"


def pipeline_checks(out: Path) -> list:
    """The pipeline's sanity section: the evaluation's and the validation's own checks (as they recorded
    them), and whether the learned policy and the tuned HPA differ in cost in the evaluation."""
    checks = []
    for step, path in (("evaluate", out / "eval" / "results.json"), ("validate", out / "validate" / "summary.json")):
        if not path.exists():
            continue
        rec = json.loads(path.read_text()).get("sanity") or {}
        for c in rec.get("checks", []):
            checks.append(sanity.Check(f"{step}: {c['name']}", bool(c["ok"]), c["detail"], c.get("severity", "fail"),
                                       c.get("values") or {}))
    return checks


def final_table(out: Path, name: str = "baseline") -> list[str]:
    from .validate.report import table_lines
    lines = []
    vs = out / "validate" / "summary.json"
    if vs.exists():
        s = json.loads(vs.read_text())
        w = s["workload"]
        lines += ["", f"Real vs simulated ({s['backend']} backend, {s['duration_s']:g} s of real load per policy"
                      + (f", trace slice x{w['speedup']:g} faster, scale {w['scale']:g}, mean {w['mean_rps']:g} rps, "
                         f"p99 {w['p99_rps']:g} rps" if w.get("kind") == "trace" else "") + "):", ""]
        lines += table_lines(s, markdown=False)
        t, rk = s["targets"], s["ranking"]
        lines += ["", f"targets: replica-seconds within 10 %: {'met' if t['cost'] else 'NOT met'}; p95 within 15 %: "
                      f"{'met' if t['p95'] else 'NOT met'}; same ranking: {'yes' if rk['agrees'] else 'NO'} "
                      f"(cost order real {' < '.join(rk['cost_order_real'])}, sim {' < '.join(rk['cost_order_sim'])})"]
    ev = out / "eval" / "summary.csv"
    if ev.exists():
        import csv
        with open(ev) as f:
            rows = list(csv.DictReader(f))
        lines += ["", "Simulation, held-out trace windows (rl.evaluate):",
                  f"{'policy':<16} {'replica-s':>10} {'vs oracle':>9} {'SLO-viol':>9} {'p99 ms':>8}"]
        for r in rows:
            vo = r.get("cost_vs_oracle") or ""
            lines.append(f"{r['policy'][:16]:<16} {float(r['replica_seconds']):10.0f} "
                         f"{(f'{float(vo):.3f}' if vo else ''):>9} {float(r['slo_violation_rate']) * 100:8.2f}% "
                         f"{float(r['p99_ms_mean']):8.1f}")
    rel = (lambda p: os.path.relpath(p))
    paths = [("validation report", out / "validate" / "report.md"), ("real vs simulated plot", out / "validate" / "overlay.png"),
             ("validation data", out / "validate" / "summary.json"),
             ("calibration fidelity", out / "report" / name / "fidelity.md"),
             ("calibrated scenario", out / "calibrated" / f"{name}.yaml"),
             ("study (rules, values)", out / "study" / "study.json"),
             ("deployment scenario", out / "study" / "deployment.yaml"),
             ("policy", out / "train" / "policy.pt"), ("simulated evaluation", out / "eval" / "summary.csv"),
             ("evaluation plot", out / "eval" / "cost_violation.png"), ("measurements", out / "results" / name)]
    lines += ["", "Reports and plots:"] + [f"  {k:<24} {rel(p)}" for k, p in paths if p.exists()]
    return lines


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m cluster.pipeline", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "baseline.yaml"),
                    help="measurement file of the deployment (scenario, model, stack, runs; default "
                         "configs/baseline.yaml)")
    ap.add_argument("--out", default="pipeline", help="output folder (default pipeline/)")
    ap.add_argument("--quick", action="store_true",
                    help="shorter: 6 training iterations x 2 seeds (default 20 x 3), 60 s of real load per policy, HPA only")
    ap.add_argument("--force", action="store_true", help="re-run every step")
    ap.add_argument("--from", dest="from_step", default=None, choices=STEPS, help="re-run from this step on")
    ap.add_argument("--only", default=None, help=f"comma list of steps to run ({', '.join(STEPS)})")
    ap.add_argument("--slo-ms", type=float, default=None,
                    help="SLO of the study (default: derived, 2 x the calibrated unloaded p99; see rl.study)")
    ap.add_argument("--interval", type=float, default=None, help="control interval, s (default: derived)")
    ap.add_argument("--min-replicas", type=int, default=None, help="replica range floor (default: the scenario's)")
    ap.add_argument("--max-replicas", type=int, default=None, help="replica range top (default: what the node holds)")
    ap.add_argument("--scale", type=float, default=None, help="trace rate factor (default: derived)")
    ap.add_argument("--target-util", type=float, default=None,
                    help="share of max_replicas' capacity the busiest window's p99 load asks for (default: "
                         "configs/rl.yaml's trace.target_util)")
    ap.add_argument("--allow-degenerate", action="store_true",
                    help="go on (exit 0) when a sanity check fails; the sections still print and record it")
    ap.add_argument("--iterations", type=int, default=None, help="PPO iterations (default 20; --quick 6)")
    ap.add_argument("--seed", type=int, default=0, help="first training seed")
    ap.add_argument("--seeds", type=int, default=None,
                    help="training seeds of the population (default 3, a budget for a 2-core machine: ~5 min per seed here; rl.train alone defaults to configs/rl.yaml population.seeds; --quick 2)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of real load per policy (default 120; --quick 60)")
    ap.add_argument("--compare", default=None, help="validate --compare (default hpa,static; --quick hpa)")
    ap.add_argument("--backend", choices=("local", "kubernetes"), default=None, help="validate --backend")
    ap.add_argument("--verbose", action="store_true", help="show library warnings on the console too")
    a = ap.parse_args(argv)
    a.iterations = a.iterations if a.iterations is not None else (6 if a.quick else 20)
    a.seeds = a.seeds if a.seeds is not None else (2 if a.quick else 3)
    a.duration = a.duration if a.duration is not None else (60.0 if a.quick else 120.0)
    a.compare = a.compare or ("hpa" if a.quick else "hpa,static")
    a.eval_seeds = 1
    a.eval_baselines = "hpa_default,hpa_tuned,static_tuned,oracle" if a.quick else "all"
    a.name = Path(a.config).name.removesuffix(".yaml").removesuffix(".yml")
    return a


def check_args(a) -> tuple[Path, list[str]]:
    import math

    from .config import load_measure_config
    load_measure_config(a.config)          # bad input (a missing model file ...) stops here, before any step
    for flag, v in (("--slo-ms", a.slo_ms), ("--interval", a.interval), ("--scale", a.scale)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise BadInput(f"{flag}: must be > 0 (got {v:g})")
    if a.target_util is not None and not (0 < a.target_util <= 1):
        raise BadInput(f"--target-util: must be in (0, 1] (got {a.target_util:g})")
    if a.min_replicas is not None and a.min_replicas < 1:
        raise BadInput(f"--min-replicas: must be >= 1 (got {a.min_replicas})")
    if a.max_replicas is not None and a.max_replicas < max(2, (a.min_replicas or 1) + 1):
        raise BadInput(f"--max-replicas: must be above --min-replicas ({a.min_replicas or 1}) (got {a.max_replicas})")
    if a.iterations < 1:
        raise BadInput(f"--iterations: must be >= 1 (got {a.iterations})")
    if a.seeds is not None and a.seeds < 1:
        raise BadInput(f"--seeds: must be >= 1 (got {a.seeds})")
    if not (math.isfinite(a.duration) and a.duration >= 4 * (a.interval or 2.0)):
        raise BadInput(f"--duration: must be at least 4 control intervals ({4 * (a.interval or 2.0):g} s) "
                       f"(got {a.duration:g})")
    from .validate.contenders import COMPARE
    comp = [x.strip() for x in a.compare.split(",") if x.strip()]
    bad = [x for x in comp if x not in COMPARE and x != "none"]
    if bad:
        raise BadInput(f"--compare: unknown {bad[0]!r}; choose from {', '.join(COMPARE)} or none")
    out = Path(a.out)
    if a.only:
        only = [x.strip() for x in a.only.split(",") if x.strip()]
        badst = [x for x in only if x not in STEPS]
        if badst or not only:
            raise BadInput(f"--only: unknown step {badst[0] if badst else a.only!r}; steps: {', '.join(STEPS)}")
    else:
        only = list(STEPS)
    if a.only and a.from_step:
        raise BadInput("--only and --from: give one of them")
    return out, only


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started from a background shell
    a = parse_args(argv)
    return run_cli(lambda: run(a), runtime_errors=(PipelineError,), interrupted="interrupted: the running step was stopped (servers torn down); "
                                               "re-run to resume")


def run(a) -> int:
    out, only = check_args(a)
    # the pipeline's own folder: resumed when it is one (marker, or pipeline.json of an earlier version),
    # refused when it holds anything else; locked against a second pipeline in it
    folder = OutputFolder(out, "cluster.pipeline", in_place=True, reuse=True,
                          legacy=lambda d: (d / "pipeline.json").is_file())
    try:
        return _run_steps(a, folder.out, only)
    finally:
        folder.close()


def _run_steps(a, out: Path, only: list[str]) -> int:
    steps = plan(out, a)
    forced_from = STEPS.index(a.from_step) if a.from_step else (0 if a.force else None)
    t_all = time.time()
    record = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv,
              "settings": {k: getattr(a, k) for k in ("slo_ms", "interval", "min_replicas", "max_replicas", "scale",
                                                         "target_util", "iterations", "seed", "duration", "compare",
                                                         "quick", "backend", "allow_degenerate")}, "steps": {}}
    n = len([s for s in steps if s.name in only])
    k = 0

    def save_record():
        tmp = out / ".pipeline.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, out / "pipeline.json")

    try:
        for i, s in enumerate(steps):
            if s.name not in only:
                continue
            k += 1
            forced = forced_from is not None and i >= forced_from
            if s.name == "study":
                flags = "".join(f" {f} {v:g}" for f, v in (("--slo-ms", a.slo_ms), ("--interval", a.interval),
                                                           ("--min-replicas", a.min_replicas),
                                                           ("--max-replicas", a.max_replicas), ("--scale", a.scale),
                                                           ("--target-util", a.target_util)) if v is not None)
                print(f"\n[{k}/{n}] {s.name}: {s.what}\n    (python -m cluster.pipeline --out {os.path.relpath(out)} "
                      f"--only study{flags})", file=sys.stderr, flush=True)
                cal = out / "calibrated" / f"{a.name}.yaml"
                if not cal.exists():
                    raise PipelineError(f"step study: {os.path.relpath(cal)} missing (run the fit step first)")
                t = time.time()
                st = write_study(cal, s.output.parent, a, log=lambda m: print(m, file=sys.stderr, flush=True))
                print("\n".join("    " + ln for ln in st.lines()), file=sys.stderr, flush=True)
                record["study"] = st.to_dict()
                record["steps"][s.name] = {"status": "ran", "wall_s": round(time.time() - t, 2)}
                save_record()
                continue
            if not forced and is_done(s, a.allow_degenerate) and s.name != "setup":
                print(f"\n[{k}/{n}] {s.name}: done already ({os.path.relpath(s.output)}); skipping "
                      f"(--from {s.name} re-runs it)", file=sys.stderr, flush=True)
                record["steps"][s.name] = {"status": "skipped"}
                continue
            if s.name == "setup" and not forced and is_done(s) and \
                    time.time() - _mtime(s.output) < 24 * 3600:
                print(f"\n[{k}/{n}] setup: checked {((time.time() - _mtime(s.output)) / 60):.0f} min ago; skipping",
                      file=sys.stderr, flush=True)
                record["steps"][s.name] = {"status": "skipped"}
                continue
            shown = " ".join(["python"] + s.cmd[1:])
            print(f"\n[{k}/{n}] {s.name}: {s.what}\n    $ {shown}", file=sys.stderr, flush=True)
            if s.clean is not None and s.clean.exists():
                import shutil
                shutil.rmtree(s.clean)
            log = out / "logs" / f"{s.name}.log"
            t = time.time()
            rc = run_cmd(s.cmd, log, a.verbose)
            wall = round(time.time() - t, 1)
            record["steps"][s.name] = {"status": "ran" if rc == 0 else f"failed ({rc})", "wall_s": wall,
                                       "command": shown, "log": os.path.relpath(log)}
            save_record()
            if rc == EXIT_DEGENERATE:
                raise PipelineError(f"step {s.name} refused a degenerate result ({last_error(log)}); log: "
                                    f"{os.path.relpath(log)}; --allow-degenerate goes on", EXIT_DEGENERATE)
            if rc != 0:
                raise PipelineError(f"step {s.name} failed (exit code {rc}); log: {os.path.relpath(log)}")
            if s.name == "setup":
                s.output.write_text(dt.datetime.now().isoformat())
            print(f"[{k}/{n}] {s.name}: done in {wall:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        record["interrupted"] = True
        save_record()
        raise
    except PipelineError:
        save_record()
        raise
    except ConfigError as e:
        save_record()
        raise ConfigError(f"step study: {e}") from None
    record["wall_s"] = round(time.time() - t_all, 1)
    checks = pipeline_checks(out)
    record["sanity"] = sanity.record(checks, a.allow_degenerate)
    save_record()
    ran = ", ".join(f"{n_} {v['wall_s']:.0f} s" for n_, v in record["steps"].items() if "wall_s" in v)
    print("\n".join(final_table(out, a.name)))
    print("\n" + "\n".join(sanity.section(checks) if checks else ["sanity: nothing to check (no evaluation or "
                                                                    "validation in this run)"]))
    print(f"\npipeline finished in {record['wall_s'] / 60:.1f} min ({ran}); record: {os.path.relpath(out / 'pipeline.json')}")
    bad = sanity.failure(checks)
    if bad and not a.allow_degenerate:
        print(f"error: {bad} (--allow-degenerate accepts it)", file=sys.stderr)
        return EXIT_DEGENERATE
    return 0


if __name__ == "__main__":
    sys.exit(main())
