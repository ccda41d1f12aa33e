"""Locust file for distributed / in-cluster load: ``locust -f cluster/stack/locustfile.py [--master|--worker] --headless``.

Builds the same users and load shape as ``python -m cluster.stack.loadgen`` (:func:`cluster.stack.loadgen.build_load`)
from the plan JSON named by ``$SERVESIM_PLAN`` (see ``configs/k8s/locust.yaml``; keys as in
:func:`cluster.stack.loadgen.run_load`, with ``arrivals_file`` for open-loop plans). Each process that runs
users writes its per-request log to ``$SERVESIM_OUT/requests-<host>-<pid>.csv`` when the test stops
(columns: :data:`cluster.stack.loadgen.REQUEST_COLUMNS`, epoch seconds), and for a pipeline plan its stage
visits to ``stages-<host>-<pid>.csv`` (:data:`cluster.stack.loadgen.VISIT_COLUMNS`).
"""
import json
import os
import socket

from locust import events

from cluster.stack.loadgen import build_load, write_records, write_visits

_plan_path = os.environ.get("SERVESIM_PLAN", "plan.json")
with open(_plan_path) as _f:
    _plan = json.load(_f)
_load = build_load(_plan)

for _cls in _load.user_classes:
    globals()[_cls.__name__] = _cls
ServesimShape = type(_load.shape)


@events.test_stop.add_listener
def _write_log(environment, **kw):
    if not _load.records:
        return
    out = os.environ.get("SERVESIM_OUT", ".")
    os.makedirs(out, exist_ok=True)
    tag = f"{socket.gethostname()}-{os.getpid()}"
    write_records(_load.records, os.path.join(out, f"requests-{tag}.csv"), bool(_plan.get("stages")))
    if _plan.get("stages"):
        write_visits(_load.visits, os.path.join(out, f"stages-{tag}.csv"))
