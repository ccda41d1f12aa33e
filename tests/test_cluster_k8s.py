"""Kubernetes backend against a small in-test HTTP double of the API server, and manifest validation."""
from __future__ import annotations

import glob
import time
from pathlib import Path

import pytest

from cluster.stack.config import KubernetesSettings, StackSettings
from helpers import k8s_scenario, k8s_stack

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "configs" / "k8s"


def test_kubernetes_backend_lifecycle(fake_api, tmp_path):
    from cluster.stack.kubernetes import KubernetesBackend
    be = KubernetesBackend(k8s_scenario(1), k8s_stack(fake_api.url, hpa=True), tmp_path)
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
        be2 = KubernetesBackend(k8s_scenario(2), k8s_stack(fake_api.url), tmp_path)
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
    be = KubernetesBackend(k8s_scenario(2), k8s_stack(fake_api.url), tmp_path)
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
        KubernetesBackend(k8s_scenario(), st, tmp_path)
    # an API server address where nothing listens
    from cluster.stack.procs import free_port
    with pytest.raises(KubernetesError, match=r"no Kubernetes cluster reachable at http://127\.0\.0\.1"):
        KubernetesBackend(k8s_scenario(), k8s_stack(f"http://127.0.0.1:{free_port()}"), tmp_path)


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
    monkeypatch.setattr(measure, "preflight", lambda cfg, quiet, phases, work: {})
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
    be = KubernetesBackend(k8s_scenario(2), k8s_stack(fake_api.url, hpa=True, image="example/triton:1"), tmp_path)
    res = be.rendered()
    assert [r["kind"] for r in res] == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"]
    for r in res:
        kv.validate(r, "1.30.0", strict=True)
    dep = res[1]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "example/triton:1"


def test_kubernetes_startup_samples(fake_api, tmp_path):
    from cluster.stack.kubernetes import startup_samples_k8s
    rows = startup_samples_k8s(k8s_scenario(1), k8s_stack(fake_api.url), tmp_path, 2)
    assert [r[0] for r in rows] == [0, 1]
    assert all(r[4] >= 0 for r in rows)
    assert ("deployments", "ssim-test", "servesim-triton") not in fake_api.objects
