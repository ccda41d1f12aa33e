"""Kubernetes backend against a small in-test HTTP double of the API server, and manifest validation."""
from __future__ import annotations

import glob
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from cluster.stack.config import KubernetesSettings, StackSettings
from simulator.config import scenario_from_dict

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "configs" / "k8s"

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
        dep = self.objects.get(("deployments", ns, "servesim-triton"))
        want = dep["spec"]["replicas"] if dep else 0
        live = [p for p in self.pods.values() if p["metadata"].get("deletionTimestamp") is None]
        for _ in range(want - len(live)):
            name = f"servesim-triton-{self.n:04d}"
            self.n += 1
            self.pods[name] = {"metadata": {"name": name, "namespace": ns, "labels": {"app": "servesim-triton"},
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
                items = [{k: v for k, v in p.items() if not k.startswith("_")} for p in self.pods.values()]
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


@pytest.fixture
def fake_api():
    cluster = FakeCluster()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _do(self):
            u = urlparse(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            status, out = cluster.handle(self.command, unquote(u.path), parse_qs(u.query), body)
            data = out.encode() if isinstance(out, str) else json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(out, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _do

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    cluster.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield cluster
    srv.shutdown()
    srv.server_close()


def _scenario(replicas=1):
    return scenario_from_dict({"workload": {"kind": "closed_loop", "users": 2}, "service": {"mean_ms": 8},
                               "batching": {"max_batch_size": 4, "max_queue_delay_us": 500, "instances": 2},
                               "cluster": {"replicas": replicas, "max_replicas": 3}})


def _stack(url, **kw):
    return StackSettings(backend="kubernetes", ready_timeout_s=10,
                         kubernetes=KubernetesSettings(api_url=url, namespace="ssim-test", request_timeout_s=3, **kw))


def test_kubernetes_backend_lifecycle(fake_api, tmp_path):
    from cluster.stack.kubernetes import KubernetesBackend
    be = KubernetesBackend(_scenario(1), _stack(fake_api.url, hpa=True), tmp_path)
    try:
        be.deploy()
        assert be.ready_replicas == 1
        # namespace created, config map holds the generated config.pbtxt, HPA bounds from the scenario
        assert "ssim-test" in fake_api.namespaces
        cm = fake_api.objects[("configmaps", "ssim-test", "servesim-model-config")]
        pb = cm["data"]["config.pbtxt"]
        assert "max_batch_size: 4" in pb and "count: 2" in pb and "max_queue_delay_microseconds: 500" in pb
        hpa = fake_api.objects[("horizontalpodautoscalers", "ssim-test", "servesim-triton")]
        assert hpa["spec"]["maxReplicas"] == 3
        dep = fake_api.objects[("deployments", "ssim-test", "servesim-triton")]
        probe = dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        assert probe["httpGet"]["path"] == "/v2/health/ready"
        # scale through the scale subresource; readiness from pod conditions (ready after a delay)
        be.scale(3)
        assert ("PATCH", "/apis/apps/v1/namespaces/ssim-test/deployments/servesim-triton/scale") in fake_api.calls
        time.sleep(0.1)
        assert be.ready_replicas < 3
        be.wait_ready(3, 5)
        assert set(be.endpoints["replicas"]) == set(fake_api.pods)
        assert be.endpoints["lb"] == "http://127.0.0.1:30800"
        # metrics through the API server's pod proxy
        m = be.metrics()
        assert len(m) == 3 and all("nv_inference_request_success" in t for t in m.values())
        # kill one: recorded as crashed, replaced
        victim = be.kill(0)
        be.scale(2)
        deadline = time.time() + 5
        while time.time() < deadline:
            log = {r.name: r for r in be.replica_log()}
            if log[victim].t_gone is not None and be.ready_replicas == 2:
                break
            time.sleep(0.1)
        assert log[victim].end_reason == "crashed" and log[victim].t_gone is not None
        assert be.ready_replicas == 2
        # re-deploying over existing objects patches them (409 -> PATCH)
        be2 = KubernetesBackend(_scenario(2), _stack(fake_api.url), tmp_path)
        be2._ensure_namespace()
        for r in be2.rendered():
            be2._apply(r)
        assert any(c[0] == "PATCH" and c[1].endswith("/deployments/servesim-triton") for c in fake_api.calls)
    finally:
        be.teardown()
    assert ("deployments", "ssim-test", "servesim-triton") not in fake_api.objects
    assert ("configmaps", "ssim-test", "servesim-model-config") not in fake_api.objects
    assert all(r.t_gone is not None for r in be.replica_log())


def test_kubernetes_observation_from_fake_metrics(fake_api, tmp_path):
    from cluster.stack.kubernetes import KubernetesBackend
    from cluster.stack.scrape import Scraper
    be = KubernetesBackend(_scenario(2), _stack(fake_api.url), tmp_path)
    try:
        be.deploy()
        sc = Scraper(be, "mobilenetv4_conv_small", 0.2)
        sc.scrape_once()
        assert len(sc.snapshots[-1][1]) == 2
        assert sc.snapshots[-1][1][next(iter(sc.snapshots[-1][1]))]["nv_inference_exec_count"] == 10
        assert sc.states[-1][2] == 2
    finally:
        be.teardown()


def test_no_cluster_reachable_is_a_clear_error(tmp_path, monkeypatch):
    from cluster.stack.kubernetes import KubernetesBackend, KubernetesError
    # no kubeconfig, not in a pod
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    st = StackSettings(backend="kubernetes", kubernetes=KubernetesSettings(request_timeout_s=2))
    with pytest.raises(KubernetesError, match="no Kubernetes cluster reachable.*microk8s config"):
        KubernetesBackend(_scenario(), st, tmp_path)
    # an API server address where nothing listens
    from cluster.stack.procs import free_port
    with pytest.raises(KubernetesError, match=r"no Kubernetes cluster reachable at http://127\.0\.0\.1"):
        KubernetesBackend(_scenario(), _stack(f"http://127.0.0.1:{free_port()}"), tmp_path)


def test_measure_cli_reports_missing_cluster(tmp_path, monkeypatch, capsys):
    from cluster import measure
    from cluster.stack.procs import free_port
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"""
scenario:
  duration_s: 5
  workload: {{kind: closed_loop, users: 1}}
  service: {{mean_ms: 5}}
stack:
  backend: kubernetes
  kubernetes: {{api_url: "http://127.0.0.1:{free_port()}", request_timeout_s: 1}}
measure: {{sweep: {{enabled: false}}, startup: {{enabled: false}}}}
""")
    monkeypatch.setattr(measure, "preflight", lambda cfg, quiet: None)
    rc = measure.main([str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 1
    assert "no Kubernetes cluster reachable" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_manifests_validate_against_official_schemas():
    import kubernetes_validate as kv
    files = sorted(glob.glob(str(K8S / "*.yaml")))
    kinds = set()
    assert files
    for f in files:
        for res in kv.utils.resources_from_file(f):
            kv.validate(res, "1.30.0", strict=True)
            kinds.add(res["kind"])
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "Namespace"} <= kinds


def test_rendered_resources_validate(tmp_path, fake_api):
    import kubernetes_validate as kv
    from cluster.stack.kubernetes import KubernetesBackend
    be = KubernetesBackend(_scenario(2), _stack(fake_api.url, hpa=True, image="example/triton:1"), tmp_path)
    res = be.rendered()
    assert [r["kind"] for r in res] == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"]
    for r in res:
        kv.validate(r, "1.30.0", strict=True)
    dep = res[1]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "example/triton:1"


def test_kubernetes_startup_samples(fake_api, tmp_path):
    from cluster.stack.kubernetes import startup_samples_k8s
    rows = startup_samples_k8s(_scenario(1), _stack(fake_api.url), tmp_path, 2)
    assert [r[0] for r in rows] == [0, 1]
    assert all(r[4] >= 0 for r in rows)
    assert ("deployments", "ssim-test", "servesim-triton") not in fake_api.objects
