"""Helpers shared by several test modules (one home; test modules import them from here, never from
each other): engine comparison, tiny policy files, generated traces and RL configs, a double of the
Kubernetes API server, a fake backend for the live controller."""
from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from cluster.stack.config import KubernetesSettings, StackSettings
from simulator.config import scenario_from_dict

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mobilenetv4_conv_small"
VOLATILE = {"wall_s", "sim_requests_per_wall_s", "engine", "memory"}     # summary keys that differ between engines


# --------------------------------------------------------------------------- the two engines agree


def _close(a, b, rel=1e-9, abs_=1e-12):
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
    return a == b


def _compare_dicts(a, b, where):
    assert set(a) == set(b), f"{where}: keys differ {set(a) ^ set(b)}"
    for k in a:
        if k in VOLATILE:
            continue
        if isinstance(a[k], dict):
            _compare_dicts(a[k], b[k], f"{where}.{k}")
        else:
            assert _close(a[k], b[k]), f"{where}.{k}: fast {a[k]!r} != reference {b[k]!r}"


def assert_same(fast, ref):
    sc = fast.scenario
    if sc.record_requests:
        rf, rr = fast.records, ref.records
        n = len(rf["arrival_s"])
        assert len(rr["arrival_s"]) == n, f"request counts differ: fast {n}, reference {len(rr['arrival_s'])}"
        for k in ("arrival_s", "dispatch_s", "completion_s"):
            a, b = rf[k], rr[k]
            assert not np.isnan(a).any() and not np.isnan(b).any(), f"{k}: unfinished requests"
            bad = np.flatnonzero(np.abs(a - b) > 1e-9)
            assert len(bad) == 0, (f"{k} differs for {len(bad)} of {n} requests; first rid {bad[0]}: "
                                   f"fast {a[bad[0]]!r} reference {b[bad[0]]!r}")
        for k in ("replica", "batch_size", "status"):
            bad = np.flatnonzero(rf[k] != rr[k])
            assert len(bad) == 0, (f"{k} differs for {len(bad)} of {n} requests; first rid {bad[0]}: "
                                   f"fast {rf[k][bad[0]]} reference {rr[k][bad[0]]}")
    _compare_dicts(fast.summary, ref.summary, "summary")
    assert len(fast.timeline) == len(ref.timeline)
    for i, (a, b) in enumerate(zip(fast.timeline, ref.timeline)):
        _compare_dicts(a, b, f"timeline[{i}]")
    assert len(fast.replicas) == len(ref.replicas)
    for a, b in zip(fast.replicas, ref.replicas):
        for f in ("uid", "requested_s", "drain_s", "gone_s"):
            assert _close(getattr(a, f), getattr(b, f)), f"replica {a.uid}.{f}: {a} vs {b}"
        # A start-up that completes after duration_s, while in-flight requests drain out,
        # is only seen by the reference engine (the fast plane's final drain does not step
        # the control plane); it cannot affect any request.
        if not (a.ready_s > sc.duration_s or b.ready_s > sc.duration_s):
            assert _close(a.ready_s, b.ready_s), f"replica {a.uid}.ready_s: {a} vs {b}"


# --------------------------------------------------------------------------- policy files


def tiny_policy_file(path, weights=None, history=1, action=None, interval=5.0, out_dim=None):
    import torch
    from simulator.learned import default_obs_spec, save_policy_file
    spec = default_obs_spec(slo_ms=150, max_replicas=12, max_batch_size=8, interval_s=interval,
                            capacity_rps_per_replica=50.0, history=history)
    dim = len(spec["features"]) * history
    action = action or {"kind": "delta", "values": [-1, 0, 1]}
    n = out_dim or len(action["values"])
    lin = torch.nn.Linear(dim, n)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([0.0, 0.1, 0.0][:n] + [0.0] * max(0, n - 3)))
        # score of "+1" grows with load_per_replica (feature index 14 in the last frame)
        lpr = spec["features"].index("load_per_replica") + (history - 1) * len(spec["features"])
        if n >= 3:
            lin.weight[2, lpr] = 1.0
            lin.weight[0, lpr] = -1.0
    module = torch.jit.trace(lin, torch.zeros(1, dim))
    meta = {"obs": spec, "action": action, "interval_s": interval,
            "scenario": {"name": "test"}, "training": {"algo": "hand-made"}}
    if out_dim is not None:  # bypass the shape check of save_policy_file: write directly
        from simulator.learned import META_NAME, FORMAT
        meta["format"] = FORMAT
        torch.jit.save(module, str(path), _extra_files={META_NAME: json.dumps(meta)})
    else:
        save_policy_file(module, meta, str(path))
    return str(path)


def tiny_rate_policy(path, nan=False, interval=5.0, bias=(0.0, 1.0)):
    import torch

    from simulator.learned import default_obs_spec, save_policy_file
    spec = default_obs_spec(slo_ms=30.0, max_replicas=3, max_batch_size=8, interval_s=interval,
                            capacity_rps_per_replica=40.0, history=2)
    dim = len(spec["features"]) * spec["history"]

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(dim, 2)
            self.scale = 0.0 if not nan else 1.0       # TorchScript: a module attribute, not a closure
            with torch.no_grad():
                self.lin.weight.zero_()
                self.lin.bias.copy_(torch.tensor(list(bias)))

        def forward(self, x):
            y = self.lin(x)
            if self.scale > 0.5:
                y = y * float("nan")
            return y
    meta = {"obs": spec, "action": {"kind": "rate", "values": [0.6, 1.0], "capacity_rps_per_replica": 40.0},
            "interval_s": interval, "scenario": {"name": "test", "slo_ms": 30.0, "min_replicas": 1, "max_replicas": 3},
            "training": {"algo": "hand-made"}}
    save_policy_file(M(), meta, str(path))
    return str(path)


# --------------------------------------------------------------------------- traces and RL configs


def make_trace(path, days=2, seed=0):
    """A Twitter-like per-second trace: daily cycle, noise and a few 10-minute bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * 86400)
    rate = 60 + 25 * np.sin(2 * np.pi * t / 86400)
    for s in rng.integers(0, len(t) - 600, size=6 * days):
        rate[s:s + 600] *= 3
    r = rng.poisson(rate)
    with open(path, "w") as f:
        f.write("rps\n")
        f.write("\n".join(map(str, r.tolist())))
        f.write("\n")
    return str(path)


def make_config(tmp_path, trace, **env):
    cfg = {"scenario": "configs/rl_default.yaml",
           "trace": {"path": str(trace), "train_days": [1, 1], "tune_days": [2, 2], "eval_days": [2, 2]},
           "env": {"episode_s": 120, **env},
           "curriculum": {"levels": [{"episodes": 0, "speedups": [1, 4]}]}}
    p = tmp_path / "rl_test.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def make_pipeline_config(tmp_path, trace, scenario="configs/pipeline_example.yaml", capacities=None,
                         pipeline=None, **env):
    """An RL config for a pipeline scenario on a 2-day trace (train day 1, tune and evaluate on day 2), with the
    per-stage per-variant capacities given (no capacity simulation): ``capacities`` or pipeline_example's."""
    caps = capacities or {"detect": {"small": 50.0, "large": 20.0}, "classify": 90.0}
    cfg = {"scenario": str(scenario),
           "trace": {"path": str(trace), "train_days": [1, 1], "tune_days": [2, 2], "eval_days": [2, 2]},
           "env": {"episode_s": 120, **env},
           "curriculum": {"levels": [{"episodes": 0, "speedups": [1, 4]}]},
           "pipeline": {"capacity_rps_per_replica": caps, **(pipeline or {})}}
    p = tmp_path / "rl_pipeline_test.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


# --------------------------------------------------------------------------- Kubernetes API double


METRICS = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="mobilenetv4_conv_small",version="1"} 12
nv_inference_count{model="mobilenetv4_conv_small",version="1"} 12
nv_inference_exec_count{model="mobilenetv4_conv_small",version="1"} 10
nv_inference_queue_duration_us{model="mobilenetv4_conv_small",version="1"} 2400
"""


class FakeCluster:
    """Answers the handful of REST calls the backend makes; pods follow the Deployment's replicas."""

    def __init__(self, ready_delay_s: float = 0.3):
        self.objects: dict[tuple[str, str, str], dict] = {}   # (kind, ns, name) -> body
        self.namespaces = {"default"}
        self.pods: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.ready_delay_s = ready_delay_s
        self.n = 0
        self.lock = threading.Lock()

    def now(self):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def sync_pods(self, ns: str):
        """Each Deployment's pods (labelled ``app`` = its name, as the manifests' pods are) follow its replicas."""
        deps = {name: d for (kind, n_s, name), d in self.objects.items() if kind == "deployments" and n_s == ns}
        for app in sorted(set(deps) | {p["metadata"]["labels"]["app"] for p in self.pods.values()}):
            want = deps[app]["spec"]["replicas"] if app in deps else 0
            live = [p for p in self.pods.values() if p["metadata"]["labels"]["app"] == app and
                    p["metadata"].get("deletionTimestamp") is None]
            for _ in range(want - len(live)):
                name = f"{app}-{self.n:04d}"
                self.n += 1
                self.pods[name] = {"metadata": {"name": name, "namespace": ns, "labels": {"app": app},
                                                "creationTimestamp": self.now()},
                                   "status": {"podIP": f"10.1.0.{self.n}", "conditions": [
                                       {"type": "Ready", "status": "False"}]},
                                   "_born": time.time()}
            for p in sorted(live, key=lambda p: -p["_born"])[:max(0, len(live) - want)]:
                del self.pods[p["metadata"]["name"]]          # terminated at once
        for p in self.pods.values():
            if time.time() - p["_born"] >= self.ready_delay_s:
                p["status"]["conditions"] = [{"type": "Ready", "status": "True",
                                              "lastTransitionTime": self.now()}]

    def handle(self, method: str, path: str, query: dict, body):
        self.calls.append((method, path))
        if path.rstrip("/") == "/version":
            return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake", "gitCommit": "0",
                         "gitTreeState": "clean", "buildDate": "2024-01-01T00:00:00Z", "goVersion": "go1.22",
                         "compiler": "gc", "platform": "linux/amd64"}
        m = re.fullmatch(r"/api/v1/namespaces(?:/([^/]+))?", path)
        if m:
            if method == "POST":
                self.namespaces.add(body["metadata"]["name"])
                return 201, body
            if m.group(1) in self.namespaces:
                return 200, {"metadata": {"name": m.group(1)}}
            return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/:]+):8002/proxy/metrics", path)
        if m:
            return 200, METRICS
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?", path)
        if m:
            ns, name = m.groups()
            with self.lock:
                self.sync_pods(ns)
                if method == "DELETE":
                    gone = self.pods.pop(name, None) or {"metadata": {"name": name}}
                    self.sync_pods(ns)       # the ReplicaSet replaces it
                    return 200, {k: v for k, v in gone.items() if not k.startswith("_")}
                sel = dict(x.split("=", 1) for x in (query.get("labelSelector") or [""])[0].split(",") if "=" in x)
                items = [{k: v for k, v in p.items() if not k.startswith("_")} for p in self.pods.values()
                         if all(p["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        m = re.fullmatch(r"/(?:api/v1|apis/apps/v1|apis/autoscaling/v2)/namespaces/([^/]+)/([a-z]+)(?:/([^/]+))?"
                         r"(/scale)?", path)
        if m:
            ns, kind, name, scale = m.groups()
            if ns not in self.namespaces:
                return 404, {"kind": "Status", "code": 404}
            key = (kind, ns, name or (body or {}).get("metadata", {}).get("name"))
            with self.lock:
                if scale:
                    obj = self.objects.get(key)
                    if obj is None:
                        return 404, {"kind": "Status", "code": 404}
                    if method == "PATCH":
                        obj["spec"]["replicas"] = body["spec"]["replicas"]
                    self.sync_pods(ns)
                    n = obj["spec"]["replicas"]
                    return 200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                                 "metadata": {"name": name, "namespace": ns},
                                 "spec": {"replicas": n}, "status": {"replicas": n}}
                if method == "POST":
                    if key in self.objects:
                        return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
                    self.objects[key] = body
                    self.sync_pods(ns)
                    return 201, body
                if method == "PATCH":
                    if key not in self.objects:
                        return 404, {"kind": "Status", "code": 404}
                    self.objects[key] = body
                    self.sync_pods(ns)
                    return 200, body
                if method == "DELETE":
                    self.objects.pop(key, None)
                    self.sync_pods(ns)
                    return 200, {"kind": "Status", "status": "Success"}
                if key in self.objects:
                    return 200, self.objects[key]
                return 404, {"kind": "Status", "code": 404}
        return 404, {"kind": "Status", "code": 404, "message": f"fake: no route {method} {path}"}


def k8s_scenario(replicas=1):
    return scenario_from_dict({"workload": {"kind": "closed_loop", "users": 2}, "service": {"mean_ms": 8},
                               "batching": {"max_batch_size": 4, "max_queue_delay_us": 500, "instances": 2},
                               "cluster": {"replicas": replicas, "max_replicas": 3}})


def k8s_stack(url, **kw):
    return StackSettings(backend="kubernetes", ready_timeout_s=10,
                         kubernetes=KubernetesSettings(api_url=url, namespace="ssim-test", request_timeout_s=3, **kw))


# --------------------------------------------------------------------------- a backend for the live controller


def prom_text(success, count, execs, queue_us, infer_us):
    m = f'{{model="{MODEL}",version="1"}}'
    return (f"nv_inference_request_success{m} {success}\nnv_inference_count{m} {count}\n"
            f"nv_inference_exec_count{m} {execs}\nnv_inference_queue_duration_us{m} {queue_us}\n"
            f"nv_inference_compute_infer_duration_us{m} {infer_us}\n")


class FakeBackend:
    """Replicas become ready at once; metrics are canned counters; every scale() is recorded."""

    def __init__(self, n=1):
        self.n = n
        self.desired = n
        self.scaled: list[int] = []
        self.counters = {f"r{i}": [0, 0, 0, 0, 0] for i in range(n)}
        self.fail_scrape = False
        self.drop_replica: str | None = None

    @property
    def ready_replicas(self):
        return self.n

    @property
    def pending_replicas(self):
        return 0

    @property
    def endpoints(self):
        return {"lb": "http://127.0.0.1:1", "replicas": {r: "" for r in self.counters}}

    def metrics(self):
        if self.fail_scrape:
            raise OSError("connection refused")
        return {r: prom_text(*c) for r, c in self.counters.items() if r != self.drop_replica}

    def scale(self, n):
        self.scaled.append(n)
        self.desired = n


# --------------------------------------------------------------------------- a user's models (made in the test)


def tiny_onnx(path, batch=None, in_dims=(3,), out_dims=None, elem="float"):
    """A tiny ONNX model ``y = x * 2`` (or ``x @ W`` when ``out_dims`` differs, or ``Identity`` for strings)
    with input ``x`` ``[batch, *in_dims]``; ``batch=None``: a dynamic batch axis; a str dim is symbolic."""
    import onnx
    from onnx import TensorProto, helper
    et = {"float": TensorProto.FLOAT, "string": TensorProto.STRING}[elem]
    b = "batch" if batch is None else batch
    x = helper.make_tensor_value_info("x", et, [b, *in_dims])
    inits = []
    if elem == "string":
        node = helper.make_node("Identity", ["x"], ["y"])
        y = helper.make_tensor_value_info("y", et, [b, *in_dims])
    elif out_dims is not None and tuple(out_dims) != tuple(in_dims):
        w = np.arange(in_dims[0] * out_dims[0], dtype=np.float32).reshape(in_dims[0], out_dims[0]) / 10
        inits.append(helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten().tolist()))
        node = helper.make_node("MatMul", ["x", "W"], ["y"])
        y = helper.make_tensor_value_info("y", et, [b, *out_dims])
    else:
        inits.append(helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]))
        node = helper.make_node("Mul", ["x", "two"], ["y"])
        y = helper.make_tensor_value_info("y", et, [b, *in_dims])
    g = helper.make_graph([node], "tiny", [x], [y], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return Path(path)


TINY_MODEL_PY = '''
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """y = 2 x, taking 2 ms + 0.5 ms per item of the batch (a model where batching pays)."""

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        time.sleep(0.002 + 0.0005 * sum(len(x) for x in xs))
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", (2 * x).astype(np.float32))])
                for x in xs]
'''


def tiny_repository(root, name="tiny", max_batch_size=4):
    """A Triton model repository holding one Python-backend model ``name`` (``y = 2 x``, x FP32 [3])."""
    root = Path(root)
    v = root / name / "1"
    v.mkdir(parents=True, exist_ok=True)
    (v / "model.py").write_text(TINY_MODEL_PY)
    (root / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'instance_group [ { count: 1 kind: KIND_CPU } ]\ndynamic_batching { }\n')
    return root


# --------------------------------------------------------------------------- real-server tests


def real_stack_prerequisites(export_builtin: bool = True) -> None:
    """Skip a real-server test module when HAProxy is missing (``python -m cluster.setup`` installs it);
    otherwise resolve the bundled ``tritonserver`` and its Python backend, and export the built-in model to
    ONNX once (``export_builtin``), so that no test pays the export inside its own time bound."""
    import os
    import shutil

    import pytest
    if shutil.which("haproxy") is None and not os.path.exists("/usr/sbin/haproxy"):
        pytest.skip("haproxy not installed (python -m cluster.setup)")
    from cluster.stack.triton import backend_dir, tritonserver_bin
    tritonserver_bin()
    backend_dir()
    if export_builtin:
        from cluster.stack.model import export_onnx
        export_onnx(0)
