"""How the real stack runs: the ``stack:`` block of a measurement file (backend, ports, threads, timeouts,
the Kubernetes settings). Parsed with :mod:`simulator.schema`; errors name the key path and the allowed
values, e.g. ``stack.backend: must be one of local, kubernetes (got 'docker')``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.schema import boolean, check_keys, choice, number, string

BACKENDS = ("local", "kubernetes")


@dataclass(frozen=True)
class KubernetesSettings:
    """Kubernetes backend settings (see ``configs/k8s/`` and the README's MicroK8s section)."""

    namespace: str = "servesim"
    manifests: str = ""                 # directory with the manifests; default <repo>/configs/k8s
    kubeconfig: str = ""                # default: $KUBECONFIG or ~/.kube/config, else in-cluster
    context: str = ""
    api_url: str = ""                   # talk to this API server directly (tests, kubectl proxy)
    service_url: str = "http://127.0.0.1:30800"   # where the load generator reaches the Service (NodePort)
    image: str = ""                     # override the Triton image of the Deployment
    hpa: bool = False                   # also apply the HorizontalPodAutoscaler manifest
    request_timeout_s: float = 5.0


@dataclass(frozen=True)
class StackSettings:
    backend: str = "local"
    onnx_threads: int = 1               # onnxruntime intra-op threads per model instance
    lb_port: int = 0                    # 0: pick a free port
    base_port: int = 0                  # replica i uses base_port + 2i (HTTP) and +2i+1 (metrics); 0: free ports
    ready_timeout_s: float = 120.0      # replica start -> model ready limit
    drain_timeout_s: float = 10.0       # scale-down: wait this long for in-flight requests
    scrape_interval_s: float = 1.0
    health_check_ms: int = 500          # load balancer health-check interval
    request_timeout_s: float = 30.0     # client-side timeout per request
    max_inflight: int = 512             # open-loop: concurrent requests the load generator can hold
    kubernetes: KubernetesSettings = KubernetesSettings()


def parse_kubernetes(d: Any, path: str) -> KubernetesSettings:
    d = d or {}
    check_keys(d, {"namespace", "manifests", "kubeconfig", "context", "api_url", "service_url", "image",
                    "hpa", "request_timeout_s"}, path)
    return KubernetesSettings(
        namespace=string(d, "namespace", path, "servesim"), manifests=string(d, "manifests", path, ""),
        kubeconfig=string(d, "kubeconfig", path, ""), context=string(d, "context", path, ""),
        api_url=string(d, "api_url", path, ""),
        service_url=string(d, "service_url", path, "http://127.0.0.1:30800"),
        image=string(d, "image", path, ""), hpa=boolean(d, "hpa", path, False),
        request_timeout_s=number(d, "request_timeout_s", path, 5.0, lo=0, lo_open=True))


def parse_stack(d: Any, path: str = "stack") -> StackSettings:
    d = d or {}
    check_keys(d, {"backend", "onnx_threads", "lb_port", "base_port", "ready_timeout_s", "drain_timeout_s",
                    "scrape_interval_s", "health_check_ms", "request_timeout_s", "max_inflight",
                    "kubernetes"}, path)
    return StackSettings(
        backend=choice(d, "backend", path, BACKENDS, "local"),
        onnx_threads=number(d, "onnx_threads", path, 1, lo=1, hi=64, integer=True),
        lb_port=number(d, "lb_port", path, 0, lo=0, hi=65535, integer=True),
        base_port=number(d, "base_port", path, 0, lo=0, hi=65000, integer=True),
        ready_timeout_s=number(d, "ready_timeout_s", path, 120.0, lo=0, lo_open=True),
        drain_timeout_s=number(d, "drain_timeout_s", path, 10.0, lo=0),
        scrape_interval_s=number(d, "scrape_interval_s", path, 1.0, lo=0.1),
        health_check_ms=number(d, "health_check_ms", path, 500, lo=100, hi=60000, integer=True),
        request_timeout_s=number(d, "request_timeout_s", path, 30.0, lo=0, lo_open=True),
        max_inflight=number(d, "max_inflight", path, 512, lo=1, hi=100000, integer=True),
        kubernetes=parse_kubernetes(d.get("kubernetes"), f"{path}.kubernetes"))
