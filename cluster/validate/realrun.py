"""What a real validation run shares between one model (:mod:`cluster.validate.run`) and a pipeline
(:mod:`cluster.validate.pipeline`): the controller's log, the load with the controller ticking alongside, and
writing the summary, report and plots into the output folder."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from simulator.io import jsonable

from . import say


class ControllerLog:
    """A controller's log file (``controller.log``: one line per message, epoch-stamped, thread-safe); the
    lines holding one of ``echo`` (holds, failures, ...) also go to the console (unless ``quiet``)."""

    def __init__(self, path: Path, quiet: bool, echo=("holding", "failed", "stopped", "clamped")):
        self.f = open(path, "w")
        self.lock = threading.Lock()
        self.quiet, self.echo = quiet, echo

    def __call__(self, m: str) -> None:
        with self.lock:
            self.f.write(f"{time.time():.3f} {m}\n")
            self.f.flush()
        if any(w in m for w in self.echo):
            say(self.quiet, m)

    def close(self) -> None:
        self.f.close()


def controlled_load(ctl, plan: dict, wdir: Path, t0: float, duration: float, name: str, quiet: bool, feed,
                    ready, want):
    """The load of ``plan`` with controller ``ctl`` ticking alongside (its own thread from ``t0``; the live feed
    to ``feed``), a progress bar (``ready()`` / ``want()``: what it shows); the controller is stopped when the
    load ends or fails. Returns the load generator's result."""
    from ..stack.loadgen import run_load
    stop = threading.Event()
    bar = None
    th = threading.Thread(target=ctl.run, args=(t0, duration, stop), name=f"controller-{name}", daemon=True)
    th.start()
    try:
        if not quiet:
            from tqdm import tqdm
            bar = tqdm(total=round(duration), desc=f"[{name}] real run", unit="s", file=sys.stderr,
                       dynamic_ncols=True)

        def _progress(el, cnt):
            if bar is not None:
                bar.n = max(0, min(round(el), bar.total))
                bar.set_postfix(sent=cnt.get("sent"), ok=cnt.get("ok"), failed=cnt.get("failed"), ready=ready(),
                                want=want(), refresh=False)
                bar.refresh()
        res = run_load(plan, wdir / "loadgen", progress=_progress, on_records=feed)
        stop.set()
        th.join(ctl.interval_s + 10)
        return res
    finally:
        stop.set()
        if bar is not None:
            bar.close()


def write_validation(tmp: Path, summary: dict, report, plot) -> None:
    """``summary.json``, ``report.md`` (``report(summary)``) and the plots (``plot()``) into the folder being
    written."""
    (tmp / "summary.json").write_text(json.dumps(jsonable(summary), indent=1, default=str))
    (tmp / "report.md").write_text(report(summary))
    plot()
