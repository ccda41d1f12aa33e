"""Locust load generator speaking the simulator's workload language (headless, from Python).

Runs in its own process (``python -m cluster.stack.loadgen PLAN.json``, started by
:func:`run_load`): Locust monkey-patches the standard library with gevent at
import, which must not leak into the measuring process. Requests go to
Triton's HTTP/KServe-v2 endpoint with ``tritonclient.http`` (itself gevent
based), binary tensors: the payloads of ``plan["inputs_file"]`` (an ``.npz`` written by
:meth:`cluster.stack.served.ServedModel.request_file`: per input, ``[requests, batch, *dims]``; request
``k`` sends payload ``k mod requests``), asking for ``plan["outputs"]``; without an inputs file, the
built-in MobileNetV4's synthetic images.

Two load shapes, both :class:`locust.LoadTestShape` s built from a
:class:`~simulator.config.WorkloadSpec`:

- **closed loop** (``closed_loop``): ``users`` Locust users, each sending one
  request, waiting for the answer, then thinking for a time drawn from
  ``think`` (per-user seeded RNG); users start at ``spawn_rate`` per second
  (0 = all at once). :class:`ClosedLoopShape` holds the user count for
  ``duration_s`` then stops; users finish the request they are in.
- **open loop** (``poisson``, ``schedule``, ``trace``, ``timestamps``): the
  arrival times are precomputed from the spec (:func:`cluster.stack.arrivals.arrival_times`)
  and a single dispatcher user fires every request at its time in its own
  greenlet, whatever the server's state -- offered load does not drop when the
  server slows down. Requests beyond ``max_inflight`` concurrent ones are not
  sent and logged as ``client_overload``. :class:`OpenLoopShape` keeps the
  dispatcher alive until every request has finished or timed out.

Pipelines (``plan["stages"]``, :mod:`cluster.stack.chain`): every request goes through the stages by
**chained client calls**: the client sends the payload to stage 1's load balancer, takes the response's
``forward`` output and sends it as the next stage's ``input`` to that stage's load balancer, and so on; a
request that fails at a stage goes no further. The request log then holds the end-to-end figures (send to
stage 1 -> the last stage's response; ``status`` and ``http_status`` of the stage that ended it, ``replica``
= the serving replicas joined by ``/``, ``end_stage`` = that stage's index), and a second log
(``plan["stages_out"]``) one row per stage visit: ``seq, stage, t_send, latency_ms, status, http_status,
replica, error, gap_ms`` -- the visit's own client latency (send to the stage's load balancer -> its
response) and ``gap_ms``, the client's time between the previous stage's response and this send (taking
the output, building the next request: the chaining overhead; empty for the first stage).

Live feed (``plan["stream"]: true``, used by the live controller of
:mod:`cluster.validate`): every ``stream_interval_s`` (0.25 s) the child prints
one JSON line ``{"sends": [[seq, t_send], ...], "done": [[seq, t_send,
latency_ms, status], ...]}`` with the requests sent and finished since the last
line (epoch seconds); a pipeline's line also carries every stage's visits since the last line:
``"stage_sends": [[seq, stage, t_send], ...]`` and ``"stage_done": [[seq, stage, t_send, latency_ms,
status], ...]`` (the visit's own client latency, as in the stage-visit log); :func:`run_load` hands each
line to ``on_records``.

Per-request log (CSV, epoch seconds; :func:`run_load` converts to run time):
``seq, user, t_sched, t_send, latency_ms, status, http_status, replica, error``
with ``status`` one of ``ok``, ``rejected`` (Triton queue full), ``timeout``
(Triton queue timeout), ``unavailable`` (no replica / connection refused or
reset / 503), ``client_timeout``, ``client_overload``, ``error``.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LoadGenError

STATUSES = ("ok", "rejected", "timeout", "unavailable", "client_timeout", "client_overload", "error")
REQUEST_COLUMNS = ("seq", "user", "t_sched", "t_send", "latency_ms", "status", "http_status", "replica", "error")
PIPELINE_COLUMNS = REQUEST_COLUMNS + ("end_stage",)
VISIT_COLUMNS = ("seq", "stage", "t_send", "latency_ms", "status", "http_status", "replica", "error", "gap_ms")


def classify(exc: BaseException | None) -> tuple[str, str, str]:
    """(status, http_status, short message) for a request outcome."""
    if exc is None:
        return "ok", "200", ""
    msg = str(exc).strip().replace("\n", " ")[:200]
    low = msg.lower()
    http = ""
    st = getattr(exc, "status", None)
    if callable(st):
        try:
            http = str(st() or "")
        except Exception:
            http = ""
    if "maximum queue size" in low or "exceeds maximum queue" in low:
        return "rejected", http, msg
    if "request timeout expired" in low or ("timeout" in low and "queue" in low):
        return "timeout", http, msg
    name = type(exc).__name__.lower()
    if "timeout" in name or "timed out" in low:
        return "client_timeout", http, msg
    if http in ("502", "503", "504") or isinstance(exc, (ConnectionError, OSError)) or \
            "connection" in low or "closed" in name or "503" in low:
        return "unavailable", http, msg
    return "error", http, msg


# --------------------------------------------------------------------------- parent side


@dataclass
class LoadResult:
    requests_path: str
    meta: dict = field(default_factory=dict)
    visits_path: str = ""             # a pipeline's per-stage-visit log


def run_load(plan: dict, workdir: str | Path, progress=None, timeout_margin_s: float = 60.0,
             on_records=None) -> LoadResult:
    """Run the load generator subprocess for ``plan``; returns the request log path and metadata.

    ``plan`` keys: url, model, mode ('closed'|'open'), duration_s, seed, users, think (Dist
    dict, seconds), spawn_rate, arrivals (list of run-time seconds, open loop), batch_size,
    timeout_s, max_inflight, n_images, start_at_epoch (begin the load at this wall-clock time, if
    still ahead), stream (live feed, see module docstring), stages (a pipeline: per stage ``url``,
    ``model``, ``outputs``, ``input`` (stages after the first), ``forward`` (stages before the last)).
    ``progress(elapsed_s, counts)`` is called
    about once a second; ``on_records(message)`` for every live-feed line (``plan["stream"]``).
    """
    from . import procs
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    plan = dict(plan)
    plan.setdefault("out", str(workdir / "requests_raw.csv"))
    plan.setdefault("meta_out", str(workdir / "loadgen.json"))
    if plan.get("stages"):
        plan.setdefault("stages_out", str(workdir / "stages_raw.csv"))
    plan_path = workdir / "loadgen_plan.json"
    arrivals = plan.pop("arrivals", None)
    if arrivals is not None:
        import numpy as np
        ap = workdir / "arrivals.npy"
        np.save(ap, np.asarray(arrivals, dtype=float))
        plan["arrivals_file"] = str(ap)
    plan_path.write_text(json.dumps(plan, indent=1))
    log_path = workdir / "loadgen.log"
    env = dict(os.environ)
    from .model import repo_root
    root = str(repo_root())
    env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "wb") as log:
        p = procs.spawn([sys.executable, "-m", "cluster.stack.loadgen", str(plan_path)], env=env, cwd=root,
                        stdout=subprocess_PIPE(), stderr=log)
    last: dict = {}

    def _reader():
        for line in p.stdout:
            line = line.decode("utf-8", "replace").strip()
            if line.startswith("{"):
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "sends" in msg or "done" in msg:
                    if on_records is not None:
                        try:
                            on_records(msg)
                        except Exception:  # a consumer bug must not stop the reader (progress would hang)
                            pass
                    continue
                last.update(msg)
                if progress:
                    progress(last.get("elapsed_s", 0.0), last)
    rt = threading.Thread(target=_reader, daemon=True)
    rt.start()
    limit = plan["duration_s"] + plan.get("timeout_s", 30) + timeout_margin_s
    try:
        p.wait(limit)
    except Exception:
        procs.stop(p, 5)
        raise LoadGenError(f"load generator did not finish within {limit:.0f} s; killed. "
                           f"Log {log_path}:\n{procs.tail(str(log_path), 15)}") from None
    finally:
        if p.poll() is None:
            procs.stop(p, 5)
        procs.forget(p)
    rt.join(2)
    if p.returncode != 0:
        raise LoadGenError(f"load generator (Locust) failed with exit code {p.returncode}; "
                           f"log {log_path}:\n{procs.tail(str(log_path), 20)}")
    try:
        meta = json.loads(Path(plan["meta_out"]).read_text())
    except (OSError, ValueError) as e:
        raise LoadGenError(f"load generator wrote no metadata ({e}); log {log_path}") from None
    for key in ("out", "stages_out"):
        if key in plan and not Path(plan[key]).exists():
            raise LoadGenError(f"load generator wrote no request log ({plan[key]}); log {log_path}")
    return LoadResult(plan["out"], meta, plan.get("stages_out", ""))


def subprocess_PIPE():
    import subprocess
    return subprocess.PIPE


# --------------------------------------------------------------------------- child side (gevent world)


@dataclass
class LocustLoad:
    """What :func:`build_load` makes from a plan: Locust user classes, a shape, and the shared request log."""

    user_classes: list
    shape: object
    records: list
    counts: dict
    state: dict
    mode: str
    sends: list = field(default_factory=list)
    visits: list = field(default_factory=list)      # a pipeline's stage visits (VISIT_COLUMNS)
    live_visits: list = field(default_factory=list)  # stream only: (seq, stage, t_send[, latency_ms, status])


def request_inputs(plan: dict) -> list[list]:
    """The plan's request payloads as ``tritonclient.http.InferInput`` lists (one list per payload)."""
    import numpy as np
    import tritonclient.http as th
    from tritonclient.utils import np_to_triton_dtype
    if plan.get("inputs_file"):
        with np.load(plan["inputs_file"]) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        from .model import INPUT_NAME, synthetic_images
        n, b = int(plan.get("n_images", 8)), int(plan.get("batch_size", 1))
        arrays = {INPUT_NAME: synthetic_images(n * b, int(plan.get("seed", 0))).reshape(n, b, 224, 224, 3)}
    n = next(iter(arrays.values())).shape[0]
    out = []
    for k in range(n):
        req = []
        for name, a in arrays.items():
            inp = th.InferInput(name, list(a[k].shape), np_to_triton_dtype(a.dtype))
            inp.set_data_from_numpy(a[k], binary_data=True)
            req.append(inp)
        out.append(req)
    return out


def build_load(plan: dict) -> LocustLoad:
    """Locust users + :class:`LoadTestShape` for ``plan`` (imports Locust: gevent world only).

    Used by the load generator process and by ``cluster/stack/locustfile.py`` (distributed Locust).
    """
    import gevent
    import gevent.pool
    import numpy as np
    import tritonclient.http as th
    from locust import LoadTestShape, User, task
    from locust.exception import StopUser

    from simulator.config import parse_dist

    from .arrivals import sample_dist

    mode = plan["mode"]
    if mode not in ("closed", "open"):
        raise ValueError(f"unknown load mode {mode!r} (closed or open)")
    url = plan["url"].replace("http://", "").rstrip("/")
    model = plan["model"]
    duration = float(plan["duration_s"])
    seed = int(plan.get("seed", 0))
    timeout_s = float(plan.get("timeout_s", 30.0))
    inputs = request_inputs(plan)
    n_img = len(inputs)
    outputs = [th.InferRequestedOutput(o, binary_data=True) for o in plan.get("outputs", ["logits", "replica"])]
    chain = plan.get("stages") or []
    chain_outputs = [[th.InferRequestedOutput(o, binary_data=True) for o in st["outputs"]] for st in chain]
    visits: list[tuple] = []
    records: list[tuple] = []
    sends: list[tuple] = []                 # (seq, t_send) in send order; only with plan["stream"]
    live_visits: list[tuple] = []           # a pipeline's stage sends and visits as they happen; only streamed
    stream = bool(plan.get("stream", False))
    counts = {"sent": 0, "ok": 0, "failed": 0, "inflight": 0}
    state = {"t0": None, "done": False}

    def one_client(u: str, concurrency: int):
        return th.InferenceServerClient(u, concurrency=concurrency, connection_timeout=min(timeout_s, 10.0),
                                        network_timeout=timeout_s)

    def client(concurrency: int = 1):
        """A client of the load balancer, or of every stage's (a pipeline)."""
        if chain:
            return [one_client(st["url"].replace("http://", "").rstrip("/"), concurrency) for st in chain]
        return one_client(url, concurrency)

    def served_by(r) -> str:
        rep = r.as_numpy("replica")
        return rep.reshape(-1)[0].decode() if rep is not None and rep.size else ""

    def send(cl, seq: int, user: int, t_sched: float, env) -> bool:
        if chain:
            return send_chain(cl, seq, user, t_sched, env)
        t_send = time.time()
        t0 = time.perf_counter()
        if stream:
            sends.append((seq, t_send))
        counts["sent"] += 1
        counts["inflight"] += 1
        exc = None
        replica = ""
        try:
            r = cl.infer(model, inputs[seq % n_img], outputs=outputs)
            replica = served_by(r)
        except gevent.GreenletExit:
            counts["inflight"] -= 1
            raise
        except Exception as e:  # noqa: BLE001 - every failure is a data point
            exc = e
        lat = (time.perf_counter() - t0) * 1000.0
        counts["inflight"] -= 1
        status, http, msg = classify(exc)
        counts["ok" if status == "ok" else "failed"] += 1
        records.append((seq, user, t_sched, t_send, lat, status, http, replica, msg))
        env.events.request.fire(request_type="infer", name=model, response_time=lat, response_length=0,
                                exception=exc, context={"replica": replica})
        return exc is None or status not in ("unavailable", "client_timeout")

    def send_chain(cls, seq: int, user: int, t_sched: float, env) -> bool:
        """One request through every stage by chained calls (module docstring); False if a connection broke."""
        from tritonclient.utils import np_to_triton_dtype
        t_send = time.time()
        if stream:
            sends.append((seq, t_send))
        counts["sent"] += 1
        counts["inflight"] += 1
        inp = inputs[seq % n_img]
        reps: list[str] = []
        mine: list[tuple] = []                 # this request's visits, logged with it (a killed one: neither)
        p0 = p_end = time.perf_counter()
        status, http, msg, end, exc = "ok", "200", "", len(chain) - 1, None
        try:
            for k, st in enumerate(chain):
                gap = (time.perf_counter() - p_end) * 1000.0 if k else float("nan")
                ts, pk = time.time(), time.perf_counter()
                if stream:
                    live_visits.append((seq, k, ts))
                exc, rep = None, ""
                try:
                    r = cls[k].infer(st["model"], inp, outputs=chain_outputs[k])
                    rep = served_by(r)
                except gevent.GreenletExit:
                    raise
                except Exception as e:  # noqa: BLE001 - every failure is a data point
                    exc = e
                p_end = time.perf_counter()
                status, http, msg = classify(exc)
                mine.append((seq, k, ts, (p_end - pk) * 1000.0, status, http, rep, msg, gap))
                if stream:
                    live_visits.append((seq, k, ts, (p_end - pk) * 1000.0, status))
                reps.append(rep)
                if exc is not None:
                    end = k
                    break
                if k + 1 < len(chain):
                    a = r.as_numpy(st["forward"])
                    nxt = th.InferInput(chain[k + 1]["input"], list(a.shape), np_to_triton_dtype(a.dtype))
                    nxt.set_data_from_numpy(a, binary_data=True)
                    inp = [nxt]
        finally:
            counts["inflight"] -= 1
        lat = (p_end - p0) * 1000.0
        counts["ok" if status == "ok" else "failed"] += 1
        records.append((seq, user, t_sched, t_send, lat, status, http, "/".join(reps), msg, end))
        visits.extend(mine)
        env.events.request.fire(request_type="infer", name="+".join(st["model"] for st in chain), response_time=lat,
                                response_length=0, exception=exc, context={"replica": "/".join(reps)})
        return exc is None or status not in ("unavailable", "client_timeout")

    user_ids = iter(range(10 ** 9))
    seq_counter = iter(range(10 ** 12))

    if mode == "closed":
        think = parse_dist(plan.get("think", 0.0), "workload.think", "s")

        class TritonUser(User):
            def on_start(self):
                self.uid = next(user_ids)
                self.rng = np.random.default_rng([seed, 4, self.uid])
                self.cl = client()
                if state["t0"] is None:
                    state["t0"] = time.time()

            def wait_time(self):
                return max(0.0, sample_dist(think, self.rng))

            @task
            def infer(self):
                now = time.time()
                if now - state["t0"] >= duration:
                    state["done"] = True
                    raise StopUser()
                if not send(self.cl, next(seq_counter), self.uid, now, self.environment):
                    self.cl = client()      # a broken connection: reconnect for the next request

        users = int(plan["users"])
        spawn_rate = float(plan.get("spawn_rate") or 0.0) or 100.0   # 0: all at once (Locust warns above 100/s)

        class ClosedLoopShape(LoadTestShape):
            """``users`` users for ``duration_s`` (from the first spawn), then stop."""

            def tick(self):
                # t0 is set by the first user in this process; a distributed master has no users: run time
                el = time.time() - state["t0"] if state["t0"] is not None else self.get_run_time()
                if state["done"] or el >= duration:
                    return None
                return users, spawn_rate

        user_classes, shape = [TritonUser], ClosedLoopShape()
    elif mode == "open":
        arrivals = np.load(plan["arrivals_file"]) if plan.get("arrivals_file") else np.zeros(0)
        max_inflight = int(plan.get("max_inflight", 512))

        class Dispatcher(User):
            fixed_count = 1

            def wait_time(self):
                return 0.0

            @task
            def dispatch(self):
                cl = client(max_inflight)
                pool = gevent.pool.Pool(max_inflight)
                t0 = state["t0"] = max(time.time() + 0.05, float(plan.get("start_at_epoch") or 0.0))
                for k, a in enumerate(arrivals):
                    delay = t0 + float(a) - time.time()
                    if delay > 0:
                        gevent.sleep(delay)
                    if pool.full():
                        counts["sent"] += 1
                        counts["failed"] += 1
                        records.append((k, -1, t0 + float(a), time.time(), float("nan"), "client_overload", "",
                                        "", f"more than {max_inflight} requests in flight"))
                        continue
                    pool.spawn(send, cl, k, -1, t0 + float(a), self.environment)
                pool.join(timeout=timeout_s + 5)
                pool.kill()
                state["done"] = True
                raise StopUser()

        class OpenLoopShape(LoadTestShape):
            """One dispatcher user until all precomputed arrivals are sent and answered."""

            def tick(self):
                if state["done"] or self.get_run_time() > duration + timeout_s + 10:
                    return None
                return 1, 100.0

        user_classes, shape = [Dispatcher], OpenLoopShape()
    else:
        raise ValueError(f"unknown load mode {mode!r} (closed or open)")
    return LocustLoad(user_classes, shape, records, counts, state, mode, sends, visits, live_visits)


def _write_atomic(path: str | Path, header, rows) -> None:
    """A CSV written to a temporary file and renamed: nothing half-written."""
    import csv
    out = Path(path)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, out)


def write_records(records: list, path: str | Path, pipeline: bool = False) -> None:
    """The request log as CSV; a pipeline's carries ``end_stage`` (:data:`PIPELINE_COLUMNS`; empty for a
    request never sent)."""
    cols = PIPELINE_COLUMNS if pipeline else REQUEST_COLUMNS
    _write_atomic(path, cols, ((r[0], r[1], f"{r[2]:.6f}", f"{r[3]:.6f}", f"{r[4]:.3f}", *r[5:],
                                *[""] * (len(cols) - len(r))) for r in sorted(records, key=lambda r: r[3])))


def write_visits(visits: list, path: str | Path) -> None:
    """A pipeline's stage-visit log as CSV (:data:`VISIT_COLUMNS`, epoch seconds)."""
    _write_atomic(path, VISIT_COLUMNS, ((r[0], r[1], f"{r[2]:.6f}", f"{r[3]:.3f}", *r[4:8],
                                         "" if r[8] != r[8] else f"{r[8]:.3f}")
                                        for r in sorted(visits, key=lambda r: (r[0], r[1]))))


def _child_main(plan_path: str) -> int:
    import gevent
    import locust
    from locust import events
    from locust.env import Environment

    plan = json.loads(Path(plan_path).read_text())
    try:
        load = build_load(plan)
    except ValueError as e:
        print(f"load generator: {e}", file=sys.stderr)
        return 2
    user_classes, shape, records, counts, state, mode = (load.user_classes, load.shape, load.records, load.counts,
                                                         load.state, load.mode)
    duration = float(plan["duration_s"])
    seed = int(plan.get("seed", 0))
    timeout_s = float(plan.get("timeout_s", 30.0))
    env = Environment(user_classes=user_classes, shape_class=shape, stop_timeout=timeout_s + 1.0,
                      events=events, host=plan["url"])
    runner = env.create_local_runner()
    shape.runner = runner
    start_at = float(plan.get("start_at_epoch") or 0.0)
    if mode == "closed" and start_at > time.time():
        gevent.sleep(start_at - time.time())     # the parent schedules events relative to this instant
    t_start = time.time()
    runner.start_shape()

    def _progress():
        while True:
            gevent.sleep(1.0)
            el = time.time() - (state["t0"] or t_start)
            print(json.dumps({"elapsed_s": round(el, 2), **counts}), flush=True)
    pg = gevent.spawn(_progress)
    sg = None
    if plan.get("stream"):
        fed = {"sends": 0, "done": 0, "visits": 0}

        def _flush():
            ns, nd = len(load.sends), len(records)
            snd = [[k, round(t, 6)] for k, t in load.sends[fed["sends"]:ns]]
            done = [[r[0], round(r[3], 6), None if r[4] != r[4] else round(r[4], 3), r[5]]
                    for r in records[fed["done"]:nd]]
            fed["sends"], fed["done"] = ns, nd
            msg = {"sends": snd, "done": done, "t": round(time.time(), 3)}
            if plan.get("stages"):        # a pipeline: every stage's sends and finished visits too
                nv = len(load.live_visits)
                vis = load.live_visits[fed["visits"]:nv]
                fed["visits"] = nv
                msg["stage_sends"] = [[v[0], v[1], round(v[2], 6)] for v in vis if len(v) == 3]
                msg["stage_done"] = [[v[0], v[1], round(v[2], 6), None if v[3] != v[3] else round(v[3], 3), v[4]]
                                     for v in vis if len(v) == 5]
            # printed even when empty: a heartbeat (the controller treats a silent feed as missing metrics)
            print(json.dumps(msg), flush=True)

        def _stream():
            every = float(plan.get("stream_interval_s", 0.25))
            while True:
                gevent.sleep(every)
                _flush()
        sg = gevent.spawn(_stream)
    hard_limit = duration + timeout_s + 30.0
    while runner.state not in ("stopped",) or runner.shape_greenlet is not None:
        gevent.sleep(0.2)
        if time.time() - t_start > hard_limit:
            print("load generator: hard time limit reached, stopping users", file=sys.stderr)
            runner.stop()
            break
        if runner.state == "stopped" and runner.shape_greenlet is None:
            break
    runner.quit()
    pg.kill()
    if sg is not None:
        sg.kill()
        _flush()
    t_end = time.time()
    write_records(records, plan["out"], bool(plan.get("stages")))
    if plan.get("stages"):
        write_visits(load.visits, plan["stages_out"])
    st = env.stats.total
    exceptions = [{"count": v["count"], "msg": v["msg"]} for v in runner.exceptions.values()]
    meta = {"t0_epoch": state["t0"] or t_start, "t_start_epoch": t_start, "t_end_epoch": t_end,
            "mode": mode, "duration_s": duration, "seed": seed, "locust_version": locust.__version__,
            "n_requests": len(records), "counts": counts,
            "locust_stats": {"num_requests": st.num_requests, "num_failures": st.num_failures,
                             "avg_response_time_ms": st.avg_response_time,
                             "p95_ms": st.get_response_time_percentile(0.95),
                             "p99_ms": st.get_response_time_percentile(0.99)},
            "user_exceptions": exceptions}
    mt = Path(plan["meta_out"]).with_suffix(".tmp")
    mt.write_text(json.dumps(meta, indent=1))
    os.replace(mt, plan["meta_out"])
    if exceptions:
        print(f"load generator: {sum(e['count'] for e in exceptions)} exceptions in user code: "
              f"{exceptions[0]['msg']}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m cluster.stack.loadgen PLAN.json", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(_child_main(sys.argv[1]))
    except KeyboardInterrupt:
        sys.exit(130)
