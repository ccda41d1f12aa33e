"""Probe the real dynamic batcher with a scripted arrival pattern: which requests share a batch?

    python -m cluster.probe [--delay-us 5000] [--pattern 0,12,40] [--reps 20] [--first-batch 12] [--preferred 4,8]

Starts one local Triton server (the bundled one) serving the built-in text encoder with one instance and
the given ``max_queue_delay_us``, then repeats ``reps`` times: request ``j`` is sent ``pattern[j]`` ms after
the first, each from its own connected client thread (the first carries ``first-batch`` items, so it keeps
the instance busy ~50 ms), and reads Triton's per-batch-size statistics (``/v2/models/<m>/stats``) before and
after. The executed batch sizes, the send instants actually achieved and the instants the responses came
back are printed. An offset written ``+x`` (only the last ones) is counted from the first request's response,
not from its send: ``0,12,25,+1`` sends D 1 ms after A is answered, i.e. while B runs, however long A took on
a machine of the day's speed.

This is the experiment behind rule 2 of :mod:`simulator.batching`. With the defaults (5 ms delay), B (12 ms)
waits its delay while the instance is busy with A and is *sealed*; C (40 ms) does not join it: the batches
are 12, 1, 1. With ``--delay-us 0`` B and C run together: 12, 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter

MODEL = "text_encoder_small"


def probe(delay_us: int, pattern_ms: list[float], reps: int = 20, first_batch: int = 12, gap_s: float = 0.15,
          quiet: bool = True, preferred: tuple[int, ...] = (), after_first: tuple[int, ...] = ()) -> dict:
    """Run the probe (module doc); returns ``{"batches": {size: count}, "per_rep": ..., "send_ms": [...],
    "reps_detail": [{"batches", "sent_ms", "back_ms"}, ...]}``: per repetition, each request's send instant
    and the instant its response came back, in ms from the first send. Requests whose index is in
    ``after_first`` are sent ``pattern_ms[j]`` ms after the first request's response instead of after its send.
    The server is stopped on every exit path."""
    import numpy as np
    import tritonclient.http as th

    from cluster.stack.config import ModelSpec
    from cluster.stack.served import resolve
    from cluster.stack.triton import TritonServer, http_get
    from simulator.config import BatchingSpec

    after_first = {int(j) for j in after_first}
    if any(not 1 <= j < len(pattern_ms) for j in after_first):
        raise ValueError(f"--pattern: a '+' offset may not be the first request's (got positions {sorted(after_first)})")
    absolute = [x for j, x in enumerate(pattern_ms) if j not in after_first]
    relative = [x for j, x in enumerate(pattern_ms) if j in after_first]
    if (not pattern_ms or pattern_ms[0] != 0 or any(b < a for a, b in zip(absolute, absolute[1:]))
            or any(b < a for a, b in zip(relative, relative[1:])) or min(relative, default=0) < 0
            or (after_first and min(after_first) != len(pattern_ms) - len(after_first))):
        raise ValueError(f"--pattern must start at 0, not decrease, and put '+' offsets (after the first "
                         f"response) last (got {pattern_ms}, '+' at {sorted(after_first)})")
    m = resolve(ModelSpec(builtin=MODEL))
    n = len(pattern_ms)
    with tempfile.TemporaryDirectory(prefix="ss-probe-") as d:
        m.write_repository(d, BatchingSpec(max_batch_size=16, max_queue_delay_us=int(delay_us),
                                                   preferred_batch_sizes=tuple(preferred)), 1)
        srv = TritonServer(d, "probe", f"{d}/server.log", model=m.name)
        try:
            srv.start()
            srv.wait_ready(120)
            url = srv.url.replace("http://", "")

            def inputs(k: int):
                it = m.items(k)
                out = []
                for t in m.inputs:
                    i = th.InferInput(t.name, list(it[t.name].shape), t.datatype)
                    i.set_data_from_numpy(it[t.name], binary_data=True)
                    out.append(i)
                return out
            ins = [inputs(first_batch if j == 0 else 1) for j in range(n)]
            go = [threading.Event() for _ in range(n)]
            ready, done = threading.Barrier(n + 1), threading.Barrier(n + 1)
            sent: list[list[float]] = [[] for _ in range(n)]
            finished: list[list[float]] = [[] for _ in range(n)]
            first_back = threading.Event()
            errors: list[str] = []
            stop = threading.Event()

            def worker(j: int) -> None:
                # a client per thread, created in it (tritonclient.http's gevent client is bound to its thread)
                c = th.InferenceServerClient(url)
                try:
                    c.infer(m.name, ins[j])
                finally:
                    ready.wait()
                while True:
                    go[j].wait()
                    go[j].clear()
                    if stop.is_set():
                        return
                    sent[j].append(time.perf_counter())
                    try:
                        c.infer(m.name, ins[j])
                    except Exception as e:          # noqa: BLE001 - reported, and the barrier must be reached
                        errors.append(str(e))
                    finished[j].append(time.perf_counter())
                    if j == 0:
                        first_back.set()
                    done.wait()

            def stats() -> Counter:
                st, body = http_get(f"{srv.url}/v2/models/{m.name}/stats", 5.0)
                s = json.loads(body)["model_stats"][0]
                return Counter({int(x["batch_size"]): int(x["compute_infer"]["count"]) for x in s["batch_stats"]})
            threads = [threading.Thread(target=worker, args=(j,), daemon=True) for j in range(n)]
            for t in threads:
                t.start()
            ready.wait(timeout=60)
            per_rep, offsets, backs, reps_detail = [], [], [], []
            for r in range(reps):
                s0 = stats()
                first_back.clear()
                t0 = time.perf_counter()
                for j, off in enumerate(pattern_ms):
                    base = t0
                    if j in after_first:
                        # this offset counts from the first request's response (module doc)
                        first_back.wait(timeout=60)
                        base = finished[0][-1]
                    # sleep (releasing the GIL, so the threads already released can send) until 1 ms before,
                    # then spin
                    while (left := base + off / 1000 - time.perf_counter()) > 0.001:
                        time.sleep(left - 0.001)
                    while time.perf_counter() - base < off / 1000:
                        pass
                    go[j].set()
                done.wait(timeout=60)
                offsets.append([1000 * (sent[j][-1] - t0) for j in range(n)])
                backs.append([1000 * (finished[j][-1] - t0) for j in range(n)])
                time.sleep(gap_s)
                got = stats() - s0
                per_rep.append(tuple(sorted(got.elements(), reverse=True)))
                reps_detail.append({"batches": list(per_rep[-1]), "sent_ms": [round(x, 2) for x in offsets[-1]],
                                    "back_ms": [round(x, 2) for x in backs[-1]]})
                if not quiet:
                    print(f"[probe] rep {r + 1}/{reps}: batches {per_rep[-1]}", file=sys.stderr)
            stop.set()
            for e in go:
                e.set()
        finally:
            srv.stop(5)
    if errors:
        raise RuntimeError(f"{len(errors)} probe requests failed, first: {errors[0]}")
    total = Counter()
    for p in per_rep:
        total.update(p)
    o, b = np.array(offsets), np.array(backs)
    return {"delay_us": int(delay_us), "preferred": list(preferred), "pattern_ms": list(pattern_ms), "first_batch": first_batch, "reps": reps,
            "batches": dict(sorted(total.items())), "per_rep": Counter(per_rep).most_common(),
            "send_ms_mean": [round(float(x), 2) for x in o.mean(0)],
            "send_ms_max": [round(float(x), 2) for x in o.max(0)],
            "back_ms_mean": [round(float(x), 2) for x in b.mean(0)], "after_first": sorted(after_first),
            "reps_detail": reps_detail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-us", type=int, default=5000)
    ap.add_argument("--pattern", default="0,12,40",
                    help="send instants in ms, the first 0 (default 0,12,40); '+x' (last ones only): x ms after "
                         "the first request's response")
    ap.add_argument("--preferred", default="", help="preferred_batch_sizes, comma-separated (default none)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--first-batch", type=int, default=12, help="items in the first request (1..16)")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    try:
        tokens = [x.strip() for x in a.pattern.split(",")]
        pattern = [float(x.lstrip("+")) for x in tokens]
        after_first = tuple(j for j, x in enumerate(tokens) if x.startswith("+"))
        preferred = tuple(sorted(int(x) for x in a.preferred.split(",") if x.strip()))
    except ValueError:
        print(f"error: --pattern {a.pattern!r} / --preferred {a.preferred!r}: comma-separated numbers expected",
              file=sys.stderr)
        return 2
    if not 1 <= a.first_batch <= 16 or a.reps < 1 or a.delay_us < 0:
        print("error: --first-batch must be 1..16, --reps >= 1, --delay-us >= 0", file=sys.stderr)
        return 2
    try:
        res = probe(a.delay_us, pattern, a.reps, a.first_batch, quiet=True, preferred=preferred,
                    after_first=after_first)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"delay {res['delay_us']} us, preferred {res['preferred'] or 'none'}, pattern {res['pattern_ms']} ms (first request {res['first_batch']} items), "
          f"{res['reps']} repetitions")
    print(f"  sent at (ms, mean / max): {res['send_ms_mean']} / {res['send_ms_max']}")
    print(f"  responses back at (ms, mean): {res['back_ms_mean']}")
    print(f"  executed batches by size: {res['batches']}")
    for combo, k in res["per_rep"]:
        print(f"  {k:3d} x batches {list(combo)}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**res, "per_rep": [[list(c), k] for c, k in res["per_rep"]]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
