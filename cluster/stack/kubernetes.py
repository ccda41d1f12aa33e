"""Kubernetes backend: the Triton Deployment + Service of ``configs/k8s/`` on a real cluster (e.g. MicroK8s).

Uses the official ``kubernetes`` client only:

- ``deploy()`` ensures the namespace, writes the model configuration ConfigMap
  (the served model's ``config.pbtxt`` with the scenario's ``batching:`` block,
  :mod:`cluster.stack.served`), applies the Deployment (replicas, images, model
  name, onnxruntime threads, an ``nvidia.com/gpu`` limit for ``device: gpu``;
  :meth:`KubernetesBackend.rendered`), the Service and, if
  ``stack.kubernetes.hpa``, the HorizontalPodAutoscaler (create, or patch when it
  exists), then waits for ``cluster.replicas`` ready pods;
- ``scale(n)`` patches the Deployment's **scale subresource**;
- readiness comes from pod conditions (``Ready`` = the readiness probe on
  ``/v2/health/ready`` passes), counting pods that are not being deleted;
- ``metrics()`` reads each ready pod's Triton metrics port through the API
  server's pod proxy (``/api/v1/namespaces/<ns>/pods/<pod>:8002/proxy/metrics``),
  so it works from anywhere the kubeconfig works; ``model_stats()`` the model's
  statistics the same way (``<pod>:8000/proxy/v2/models/<m>/stats``);
- a poller thread (every 0.25 s) records each pod's lifecycle: ``t_start`` =
  creation, ``t_ready`` = first seen Ready, ``t_drain`` = deletion requested,
  ``t_gone`` = no longer listed; a container restart is recorded as ``crashed``;
- ``teardown()`` deletes what ``deploy()`` created (not the namespace).

A pipeline (:mod:`cluster.stack.chain`) runs one backend per stage: stage ``S`` (number ``k``, its settings'
``kubernetes.stage`` / ``stage_index``) renders its own ConfigMap, Deployment, Service and HPA, named
``servesim-model-config-S`` / ``servesim-triton-S`` with pod label ``app=servesim-triton-S`` (the Service
and the HPA select only that stage's pods), its Service on NodePort ``30800 + k`` and reached at
``service_url``'s port ``+ k`` (:meth:`KubernetesBackend.rendered`).

If no cluster is reachable (no kubeconfig and not in a pod, or the API server
does not answer) a :class:`KubernetesError` says so and how to fix it.
"""
from __future__ import annotations

import copy
import datetime as dt
import glob
import os
import threading
import time
from pathlib import Path

import yaml

from simulator.config import ConfigError

from .backends import Backend, ReplicaRecord
from .errors import KubernetesError
from .model import repo_root
from .served import served_for

APP = "servesim-triton"
CONFIGMAP = "servesim-model-config"
LABEL = f"app={APP}"


def stage_slug(stage: str) -> str:
    """A stage name as a Kubernetes name part (lower-case letters, digits and '-', DNS-1123)."""
    out = "".join(c if c.isalnum() else "-" for c in stage.lower()).strip("-")
    return out or "stage"


def stage_url(url: str, k: int) -> str:
    """``url`` with its port moved by ``k`` (stage ``k``'s Service NodePort)."""
    from urllib.parse import urlsplit, urlunsplit
    u = urlsplit(url)
    if not k or u.port is None:
        return url
    return urlunsplit(u._replace(netloc=f"{u.hostname}:{u.port + k}"))


def manifests_dir(k) -> Path:
    return Path(k.manifests) if k.manifests else repo_root() / "configs" / "k8s"


def load_manifests(path: str | Path) -> dict[str, dict]:
    """``{kind/name: resource}`` from every YAML file of ``path`` (Locust manifests excluded)."""
    out: dict[str, dict] = {}
    files = sorted(glob.glob(os.path.join(str(path), "*.yaml")))
    if not files:
        raise KubernetesError(f"no manifests (*.yaml) in {path}")
    for f in files:
        with open(f) as fh:
            for doc in yaml.safe_load_all(fh):
                if doc:
                    out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def _ts(x) -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        x = dt.datetime.fromisoformat(x.replace("Z", "+00:00"))
    return x.timestamp()


def connect(k):
    """An ``ApiClient`` for the cluster of ``k`` (KubernetesSettings); raises KubernetesError if unreachable."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException
    cfg = client.Configuration()
    where = ""
    if k.api_url:
        cfg.host = k.api_url.rstrip("/")
        where = cfg.host
    else:
        kc = k.kubeconfig or os.environ.get("KUBECONFIG", "") or os.path.expanduser("~/.kube/config")
        try:
            config.load_kube_config(config_file=kc, context=k.context or None, client_configuration=cfg)
            where = f"{cfg.host} (kubeconfig {kc}{', context ' + k.context if k.context else ''})"
        except (ConfigException, FileNotFoundError, OSError, TypeError) as e_kc:
            try:
                config.load_incluster_config(client_configuration=cfg)
                where = f"{cfg.host} (in-cluster)"
            except ConfigException:
                raise KubernetesError(
                    f"no Kubernetes cluster reachable: cannot load kubeconfig {kc} ({e_kc}) and not running "
                    f"inside a pod. For MicroK8s: `microk8s config > ~/.kube/config` (or set "
                    f"stack.kubernetes.kubeconfig / $KUBECONFIG).") from None
    cfg.retries = 0
    api = client.ApiClient(cfg)
    try:
        r = client.VersionApi(api).get_code(_request_timeout=k.request_timeout_s, _preload_content=False)
        r.release_conn()
    except Exception as e:  # urllib3 MaxRetryError, ApiException, timeouts ...
        reason = getattr(e, "reason", None) or e
        raise KubernetesError(f"no Kubernetes cluster reachable at {where}: {reason}. Is the cluster running "
                              f"(`microk8s status --wait-ready`)?") from None
    return api


class KubernetesBackend(Backend):
    name = "kubernetes"

    def __init__(self, scenario, stack, workdir, api=None):
        self.scenario, self.stack, self.k = scenario, stack, stack.kubernetes
        self.ns = self.k.namespace
        suffix = f"-{stage_slug(self.k.stage)}" if self.k.stage else ""
        self.app, self.configmap = APP + suffix, CONFIGMAP + suffix      # a pipeline stage's own names
        self.label = f"app={self.app}"
        self.workdir = Path(workdir)
        self.manifests = load_manifests(manifests_dir(self.k))
        self.served = served_for(stack)
        if self.k.image_kind == "pytriton" and self.served.kind != "builtin":
            raise ConfigError(f"stack.kubernetes.image_kind: pytriton serves servesim's built-in models only (model: "
                              f"{self.served.spec.to_dict()}); use image_kind: official with a models image holding "
                              f"your repository (stack.kubernetes.models_image)")
        self.api = api or connect(self.k)
        from kubernetes import client
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.autoscaling = client.AutoscalingV2Api(self.api)
        self._lock = threading.RLock()
        self._records: dict[str, ReplicaRecord] = {}
        self._restarts: dict[str, int] = {}
        self._desired = 0
        self._last_scale = time.time()
        self._created: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pods_cache: list = []
        self._torn_down = False
        self.t = self.k.request_timeout_s

    # ------------------------------------------------------------------ rendering
    def rendered(self) -> list[dict]:
        """The resources deploy() applies, with the scenario's settings filled in (a pipeline stage's with
        its own names, pod label and NodePort: module docstring)."""
        out = []
        sc, b = self.scenario, self.scenario.batching
        for key, res in self.manifests.items():
            kind, name = key.split("/", 1)
            if kind in ("Namespace",) or name.startswith("servesim-locust"):
                continue
            if kind == "HorizontalPodAutoscaler" and not self.k.hpa:
                continue
            r = copy.deepcopy(res)
            r["metadata"]["namespace"] = self.ns
            if self.k.stage:
                self._rename(r)
            if kind == "ConfigMap" and name == CONFIGMAP:
                r["data"] = {"config.pbtxt": self.served.config_pbtxt(b, self.stack.onnx_threads)}
            if kind == "Deployment" and name == APP:
                r["spec"]["replicas"] = sc.cluster.replicas
                self._render_pod(r["spec"]["template"]["spec"], b)
                # the config checksum forces a rollout when batching changes
                r["spec"]["template"]["metadata"].setdefault("annotations", {})["servesim/batching"] = \
                    yaml.safe_dump(b.to_dict(), default_flow_style=True).strip()
            if kind == "HorizontalPodAutoscaler":
                r["spec"]["minReplicas"] = max(1, sc.cluster.min_replicas)
                r["spec"]["maxReplicas"] = sc.cluster.max_replicas
            out.append(r)
        order = {"ConfigMap": 0, "Deployment": 1, "Service": 2, "HorizontalPodAutoscaler": 3}
        return sorted(out, key=lambda r: order.get(r["kind"], 9))

    def _rename(self, r: dict) -> None:
        """Point resource ``r`` of the manifests at this stage: its names, the pod label and selectors, the
        ConfigMap volume, the HPA's target and the Service's NodePort."""
        names = {APP: self.app, CONFIGMAP: self.configmap}
        md, spec = r["metadata"], r.get("spec") or {}
        md["name"] = names.get(md["name"], md["name"])
        if md.get("labels", {}).get("app") == APP:
            md["labels"]["app"] = self.app
        if r["kind"] == "Deployment":
            spec["selector"]["matchLabels"]["app"] = self.app
            spec["template"]["metadata"]["labels"]["app"] = self.app
            for v in spec["template"]["spec"].get("volumes", []):
                if "configMap" in v:
                    v["configMap"]["name"] = names.get(v["configMap"]["name"], v["configMap"]["name"])
        elif r["kind"] == "Service":
            spec["selector"]["app"] = self.app
            for port in spec.get("ports", []):
                if "nodePort" in port:
                    port["nodePort"] += self.k.stage_index
        elif r["kind"] == "HorizontalPodAutoscaler":
            spec["scaleTargetRef"]["name"] = names.get(spec["scaleTargetRef"]["name"], spec["scaleTargetRef"]["name"])

    def _render_pod(self, pod: dict, b) -> None:
        """The pod template for the served model: the server image and command (official: ``tritonserver``
        on the repository the init container lays out; pytriton: servesim's image, no init container),
        threads, and for ``device: gpu`` an ``nvidia.com/gpu`` limit (one per listed GPU, at least one) and
        GPU metrics."""
        c = pod["containers"][0]
        c["image"] = self.k.server_image
        for e in c.get("env", []):
            if e["name"] == "SERVESIM_ONNX_THREADS":
                e["value"] = str(self.stack.onnx_threads)
        gpu = b.device == "gpu"
        if self.k.image_kind == "pytriton":
            pod.pop("initContainers", None)
            pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] != "repository"]
            c["command"] = ["python", "-m", "cluster.stack.triton", "serve", "--builtin", self.served.spec.builtin,
                            "--config-pbtxt", "/config/config.pbtxt", "--host", "0.0.0.0", "--http-port", "8000",
                            "--metrics-port", "8002"]
            c["volumeMounts"] = [{"name": "model-config", "mountPath": "/config", "readOnly": True}]
        else:
            init = pod["initContainers"][0]
            init["image"] = self.k.models_image
            for e in init.get("env", []):
                if e["name"] == "SERVESIM_MODEL":
                    e["value"] = self.served.name
            c["command"] = [a if not a.startswith("--allow-gpu-metrics=") else
                            f"--allow-gpu-metrics={'true' if gpu else 'false'}" for a in c["command"]]
        if gpu:
            n = str(max(1, len(b.gpus)))
            res = c.setdefault("resources", {})
            res.setdefault("limits", {})["nvidia.com/gpu"] = n
            res.setdefault("requests", {})["nvidia.com/gpu"] = n

    def model_stats(self) -> dict[str, str]:
        with self._lock:
            names = [r.name for r in self._records.values() if r.state in ("ready", "draining")]
        out = {}
        for n in names:
            try:
                txt = self.core.connect_get_namespaced_pod_proxy_with_path(
                    f"{n}:8000", self.ns, f"v2/models/{self.served.name}/stats", _request_timeout=self.t)
                out[n] = txt if isinstance(txt, str) else str(txt)
            except Exception:
                continue
        return out

    # ------------------------------------------------------------------ apply helpers
    def _ops(self, kind: str):
        return {"ConfigMap": (self.core.create_namespaced_config_map, self.core.patch_namespaced_config_map,
                              self.core.delete_namespaced_config_map),
                "Deployment": (self.apps.create_namespaced_deployment, self.apps.patch_namespaced_deployment,
                               self.apps.delete_namespaced_deployment),
                "Service": (self.core.create_namespaced_service, self.core.patch_namespaced_service,
                            self.core.delete_namespaced_service),
                "HorizontalPodAutoscaler": (
                    self.autoscaling.create_namespaced_horizontal_pod_autoscaler,
                    self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,
                    self.autoscaling.delete_namespaced_horizontal_pod_autoscaler)}[kind]

    def _apply(self, r: dict) -> None:
        from kubernetes.client.exceptions import ApiException
        create, patch, _ = self._ops(r["kind"])
        name = r["metadata"]["name"]
        try:
            create(self.ns, r, _request_timeout=self.t)
        except ApiException as e:
            if e.status != 409:
                raise KubernetesError(f"creating {r['kind']} {self.ns}/{name}: HTTP {e.status} {e.reason}: "
                                      f"{(e.body or '')[:300]}") from None
            patch(name, self.ns, r, _request_timeout=self.t)
        self._created.append((r["kind"], name))

    def _ensure_namespace(self) -> None:
        from kubernetes.client.exceptions import ApiException
        try:
            self.core.read_namespace(self.ns, _request_timeout=self.t)
        except ApiException as e:
            if e.status != 404:
                raise KubernetesError(f"reading namespace {self.ns}: HTTP {e.status} {e.reason}") from None
            self.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}},
                                       _request_timeout=self.t)

    # ------------------------------------------------------------------ interface
    def deploy(self, wait: bool = True) -> None:
        self._ensure_namespace()
        self._desired = self.scenario.cluster.replicas
        self._last_scale = time.time()
        for r in self.rendered():
            self._apply(r)
        self._poll()
        self._thread = threading.Thread(target=self._loop, name="k8s-poller", daemon=True)
        self._thread.start()
        if wait:
            self.wait_ready(self.scenario.cluster.replicas, self.stack.ready_timeout_s)

    def scale(self, n: int) -> None:
        from kubernetes.client.exceptions import ApiException
        n = max(0, int(n))
        try:
            self.apps.patch_namespaced_deployment_scale(self.app, self.ns, {"spec": {"replicas": n}},
                                                        _request_timeout=self.t)
        except ApiException as e:
            raise KubernetesError(f"scaling deployment {self.ns}/{self.app} to {n}: HTTP {e.status} "
                                  f"{e.reason}") from None
        with self._lock:
            self._desired = n
            self._last_scale = time.time()

    def _pods(self) -> list:
        ret = self.core.list_namespaced_pod(self.ns, label_selector=self.label, _request_timeout=self.t)
        return list(ret.items or [])

    @staticmethod
    def _is_ready(p) -> bool:
        if p.metadata.deletion_timestamp is not None:
            return False
        for c in (p.status.conditions or []) if p.status else []:
            if c.type == "Ready":
                return c.status == "True"
        return False

    @property
    def ready_replicas(self) -> int:
        """Pods whose Ready condition is True and that are not being deleted (last poll)."""
        with self._lock:
            return sum(1 for p in self._pods_cache if self._is_ready(p))

    @property
    def pending_replicas(self) -> int:
        with self._lock:
            return sum(1 for p in self._pods_cache
                       if not self._is_ready(p) and p.metadata.deletion_timestamp is None)

    @property
    def desired(self) -> int:
        return self._desired

    @property
    def endpoints(self) -> dict:
        with self._lock:
            pods = list(self._pods_cache)
        return {"lb": stage_url(self.k.service_url, self.k.stage_index),
                "replicas": {p.metadata.name: f"http://{p.status.pod_ip}:8000" for p in pods
                             if self._is_ready(p) and p.status.pod_ip}}

    def metrics(self) -> dict[str, str]:
        with self._lock:
            names = [r.name for r in self._records.values() if r.state in ("ready", "draining")]
        out = {}
        for n in names:
            try:
                txt = self.core.connect_get_namespaced_pod_proxy_with_path(f"{n}:8002", self.ns, "metrics",
                                                                           _request_timeout=self.t)
                out[n] = txt if isinstance(txt, str) else str(txt)
            except Exception:
                continue
        return out

    def replica_log(self) -> list[ReplicaRecord]:
        with self._lock:
            return [ReplicaRecord(**vars(r)) for r in self._records.values()]

    def kill(self, index: int = 0) -> str:
        with self._lock:
            ready = sorted((r for r in self._records.values() if r.state == "ready"), key=lambda r: r.t_ready)
        if not ready:
            raise KubernetesError("kill: no ready pod")
        name = ready[min(index, len(ready) - 1)].name
        self.core.delete_namespaced_pod(name, self.ns, grace_period_seconds=0, _request_timeout=self.t)
        with self._lock:
            self._records[name].end_reason = "crashed"
        return name

    def _not_ready(self, n: int, timeout: float) -> Exception:
        gpu = (" (device: gpu: does a node offer free nvidia.com/gpu? the NVIDIA device plugin must run)"
               if self.scenario.batching.device == "gpu" else "")
        return KubernetesError(f"{self.ready_replicas}/{n} pods of {self.ns}/{self.app} ready after "
                               f"{timeout:.0f} s{gpu} (kubectl -n {self.ns} describe pods -l {self.label})")

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for kind, name in reversed(self._created):
            try:          # best effort: gone already (404), API down or anything else, the next one is tried
                self._ops(kind)[2](name, self.ns, _request_timeout=self.t)
            except Exception:
                pass
        now = time.time()
        with self._lock:
            for r in self._records.values():
                if r.t_gone is None:
                    r.t_drain = r.t_drain or now
                    r.t_gone = now
                    r.end_reason = r.end_reason or "teardown"

    # ------------------------------------------------------------------ poller
    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self._poll()
            except Exception:
                continue

    def _poll(self) -> None:
        pods = self._pods()
        now = time.time()
        seen = set()
        with self._lock:
            self._pods_cache = pods
            for p in pods:
                name = p.metadata.name
                seen.add(name)
                r = self._records.get(name)
                if r is None:
                    created = _ts(p.metadata.creation_timestamp) or now
                    r = ReplicaRecord(name=name, t_request=min(self._last_scale, created), t_start=created)
                    self._records[name] = r
                if p.status and p.status.pod_ip and not r.endpoint:
                    r.endpoint = f"http://{p.status.pod_ip}:8000"
                    r.metrics_endpoint = f"http://{p.status.pod_ip}:8002/metrics"
                if r.t_ready is None and self._is_ready(p):
                    r.t_ready = r.t_live = now
                if p.metadata.deletion_timestamp is not None and r.t_drain is None:
                    r.t_drain = now
                    r.end_reason = r.end_reason or "scale_down"
                restarts = sum(cs.restart_count or 0 for cs in (p.status.container_statuses or [])) \
                    if p.status else 0
                if restarts > self._restarts.get(name, 0):
                    r.end_reason = r.end_reason or "crashed"
                self._restarts[name] = restarts
            for name, r in self._records.items():
                if name not in seen and r.t_gone is None:
                    r.t_gone = now
                    r.t_drain = r.t_drain or now
                    r.end_reason = r.end_reason or "scale_down"


def startup_samples_k8s(scenario, stack, workdir, n: int, progress=None) -> list[tuple]:
    """Pod start-up samples: scale 1 -> 2, pod created -> Ready; scale back; ``n`` times."""
    import dataclasses
    sc = scenario.replace(cluster=dataclasses.replace(scenario.cluster, replicas=1, min_replicas=1,
                                                      max_replicas=max(2, scenario.cluster.max_replicas)))
    be = KubernetesBackend(sc, stack, workdir)
    rows = []
    try:
        be.deploy()
        for k in range(n):
            before = {r.name for r in be.replica_log()}
            be.scale(2)
            be.wait_ready(2, stack.ready_timeout_s)
            new = [r for r in be.replica_log() if r.name not in before and r.t_ready]
            if new:
                r = new[0]
                rows.append((k, r.t_start, r.t_ready - r.t_start, 0.0, r.t_ready - r.t_start))
            be.scale(1)
            deadline = time.monotonic() + stack.ready_timeout_s
            while sum(1 for r in be.replica_log() if r.state != "gone") > 1 and time.monotonic() < deadline:
                time.sleep(0.25)
            if progress:
                progress(1)
    finally:
        be.teardown()
    return rows
