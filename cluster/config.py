"""Real-stack measurement configuration (``python -m cluster.measure CONFIG``).

A measurement file has three top-level sections::

    scenario:        # a full simulator scenario (schema: simulator.config), inline ...
    scenario_file:   # ... or a path to a scenario YAML (relative to this file); exactly one of the two
    stack:           # how the real stack runs (backend, ports, threads, timeouts)
    measure:         # what to measure: runs, profiling sweep, start-up samples

The scenario's ``batching:`` block configures Triton's dynamic batcher and
instance group, ``cluster:`` the replica count and load balancer, ``workload:``
the Locust load -- the same file the simulator reads.

``measure.runs`` is a list of load runs; each is the scenario with ``set:``
applied on top (mappings are merged key by key, except a mapping that contains
``kind`` -- e.g. a new ``workload`` -- which replaces the old one whole), so a
run can change the workload, duration, batching or replica count. A run may
also list ``events`` at given times: ``{at_s: 30, scale: 2}`` (ask the backend
for 2 replicas) or ``{at_s: 30, kill: 0}`` (SIGKILL the replica in position 0 of
the ready list: fault injection).

Errors are :class:`simulator.config.ConfigError` naming the file, key path and
allowed values, e.g. ``configs/x.yaml: stack.backend: must be one of local,
kubernetes (got 'docker')``.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from simulator.config import (ConfigError, Scenario, _bool, _check_keys, _choice, _fail, _num, _str,
                              load_raw, scenario_from_dict)

BACKENDS = ("local", "kubernetes")
TOP_KEYS = {"scenario", "scenario_file", "stack", "measure"}


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


@dataclass(frozen=True)
class RunSpec:
    """One load run: the scenario after ``set`` overrides, plus timed events."""

    name: str
    scenario: Scenario
    events: tuple[tuple[float, str, int], ...] = ()      # (at_s, 'scale'|'kill', value)


@dataclass(frozen=True)
class SweepSettings:
    """Profiling sweep (like ``perf_analyzer``) against one replica.

    Compute: for each batch size, ``samples`` (or as many as fit in
    ``max_seconds_per_size``) back-to-back requests of that batch size, one at a
    time; each one's compute time is the change of Triton's per-batch-size
    ``compute_infer`` statistic. Concurrency: closed-loop users with no think
    time, batch-1 requests, ``concurrency_duration_s`` per level, against a
    replica configured with the scenario's batching. Interference: for each count in
    ``interference_replicas``, that many replicas each driven back to back by
    its own client for ``interference_duration_s`` (0 disables): compute time
    vs the number of batches executing at once on the node.
    """

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    samples: int = 200
    max_seconds_per_size: float = 20.0
    warmup: int = 5
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    concurrency_duration_s: float = 6.0
    interference_replicas: tuple[int, ...] = (1, 2, 3)
    interference_duration_s: float = 8.0
    enabled: bool = True


@dataclass(frozen=True)
class StartupSettings:
    samples: int = 5
    enabled: bool = True


@dataclass(frozen=True)
class MeasureConfig:
    scenario: Scenario
    stack: StackSettings
    runs: tuple[RunSpec, ...]
    sweep: SweepSettings
    startup: StartupSettings
    source: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)     # the file as loaded (recorded in the manifest)


def merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge per key; a mapping with ``kind`` replaces."""
    if isinstance(base, Mapping) and isinstance(over, Mapping) and "kind" not in over:
        out = dict(copy.deepcopy(base))
        for k, v in over.items():
            out[k] = merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _int_list(d: Mapping, key: str, path: str, default: tuple[int, ...], lo: int = 1) -> tuple[int, ...]:
    if key not in d or d[key] is None:
        return default
    v = d[key]
    if not isinstance(v, (list, tuple)) or not v:
        _fail(f"{path}.{key}", f"must be a non-empty list of whole numbers >= {lo}")
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, int) or x < lo:
            _fail(f"{path}.{key}[{i}]", f"must be a whole number >= {lo} (got {x!r})")
    return tuple(sorted(set(v)))


def parse_kubernetes(d: Any, path: str) -> KubernetesSettings:
    d = d or {}
    _check_keys(d, {"namespace", "manifests", "kubeconfig", "context", "api_url", "service_url", "image",
                    "hpa", "request_timeout_s"}, path)
    return KubernetesSettings(
        namespace=_str(d, "namespace", path, "servesim"), manifests=_str(d, "manifests", path, ""),
        kubeconfig=_str(d, "kubeconfig", path, ""), context=_str(d, "context", path, ""),
        api_url=_str(d, "api_url", path, ""),
        service_url=_str(d, "service_url", path, "http://127.0.0.1:30800"),
        image=_str(d, "image", path, ""), hpa=_bool(d, "hpa", path, False),
        request_timeout_s=_num(d, "request_timeout_s", path, 5.0, lo=0, lo_open=True))


def parse_stack(d: Any, path: str = "stack") -> StackSettings:
    d = d or {}
    _check_keys(d, {"backend", "onnx_threads", "lb_port", "base_port", "ready_timeout_s", "drain_timeout_s",
                    "scrape_interval_s", "health_check_ms", "request_timeout_s", "max_inflight",
                    "kubernetes"}, path)
    return StackSettings(
        backend=_choice(d, "backend", path, BACKENDS, "local"),
        onnx_threads=_num(d, "onnx_threads", path, 1, lo=1, hi=64, integer=True),
        lb_port=_num(d, "lb_port", path, 0, lo=0, hi=65535, integer=True),
        base_port=_num(d, "base_port", path, 0, lo=0, hi=65000, integer=True),
        ready_timeout_s=_num(d, "ready_timeout_s", path, 120.0, lo=0, lo_open=True),
        drain_timeout_s=_num(d, "drain_timeout_s", path, 10.0, lo=0),
        scrape_interval_s=_num(d, "scrape_interval_s", path, 1.0, lo=0.1),
        health_check_ms=_num(d, "health_check_ms", path, 500, lo=100, hi=60000, integer=True),
        request_timeout_s=_num(d, "request_timeout_s", path, 30.0, lo=0, lo_open=True),
        max_inflight=_num(d, "max_inflight", path, 512, lo=1, hi=100000, integer=True),
        kubernetes=parse_kubernetes(d.get("kubernetes"), f"{path}.kubernetes"))


def parse_sweep(d: Any, path: str) -> SweepSettings:
    if d is None:
        return SweepSettings()
    _check_keys(d, {"batch_sizes", "samples", "max_seconds_per_size", "warmup", "concurrency",
                    "concurrency_duration_s", "interference_replicas", "interference_duration_s",
                    "enabled"}, path)
    return SweepSettings(
        batch_sizes=_int_list(d, "batch_sizes", path, SweepSettings.batch_sizes),
        samples=_num(d, "samples", path, 200, lo=1, integer=True),
        max_seconds_per_size=_num(d, "max_seconds_per_size", path, 20.0, lo=0, lo_open=True),
        warmup=_num(d, "warmup", path, 5, lo=0, integer=True),
        concurrency=_int_list(d, "concurrency", path, SweepSettings.concurrency),
        concurrency_duration_s=_num(d, "concurrency_duration_s", path, 6.0, lo=0, lo_open=True),
        interference_replicas=_int_list(d, "interference_replicas", path, SweepSettings.interference_replicas),
        interference_duration_s=_num(d, "interference_duration_s", path, 8.0, lo=0),
        enabled=_bool(d, "enabled", path, True))


def parse_run(d: Any, path: str, base_raw: Mapping, source: str, base_dir: str) -> RunSpec:
    _check_keys(d, {"name", "set", "events"}, path)
    name = _str(d, "name", path, required=True)
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        _fail(f"{path}.name", f"must be letters, digits, '-' or '_' (got {name!r})")
    over = d.get("set") or {}
    if not isinstance(over, Mapping):
        _fail(f"{path}.set", "must be a mapping of scenario keys to override")
    try:
        sc = scenario_from_dict(merge(base_raw, over), base_dir=base_dir)
    except ConfigError as e:
        raise ConfigError(f"{path}.set (scenario after overrides): {e}") from None
    events = []
    evs = d.get("events") or []
    if not isinstance(evs, list):
        _fail(f"{path}.events", "must be a list of {at_s, scale: n} or {at_s, kill: i}")
    for i, ev in enumerate(evs):
        p = f"{path}.events[{i}]"
        _check_keys(ev, {"at_s", "scale", "kill"}, p)
        at = _num(ev, "at_s", p, required=True, lo=0)
        if at >= sc.duration_s:
            _fail(f"{p}.at_s", f"must be < the run's duration_s ({sc.duration_s}) (got {at})")
        kinds = [k for k in ("scale", "kill") if k in ev]
        if len(kinds) != 1:
            _fail(p, "needs exactly one of scale (replica count) or kill (index into the ready replicas)")
        k = kinds[0]
        if k == "scale":
            v = _num(ev, "scale", p, lo=sc.cluster.min_replicas, hi=sc.cluster.max_replicas, integer=True)
        else:
            v = _num(ev, "kill", p, lo=0, integer=True)
        events.append((at, k, v))
    return RunSpec(name=name, scenario=sc, events=tuple(sorted(events)))


def measure_config_from_dict(d: Any, source: str = "", base_dir: str = "") -> MeasureConfig:
    try:
        if not isinstance(d, Mapping):
            _fail("", f"top level must be a mapping with keys {', '.join(sorted(TOP_KEYS))}")
        _check_keys(d, TOP_KEYS, "")
        if ("scenario" in d) == ("scenario_file" in d):
            _fail("scenario", "give exactly one of scenario (inline) or scenario_file (a path)")
        if "scenario_file" in d:
            sf = _str(d, "scenario_file", "", required=True)
            sp = sf if os.path.isabs(sf) or not base_dir else os.path.join(base_dir, sf)
            try:
                raw_sc = load_raw(sp)
            except ConfigError as e:
                raise ConfigError(f"scenario_file: {e}") from None
            sc_dir = os.path.dirname(os.path.abspath(sp))
        else:
            raw_sc = d["scenario"]
            sc_dir = base_dir
            if not isinstance(raw_sc, Mapping):
                _fail("scenario", "must be a mapping (a simulator scenario)")
        try:
            scenario = scenario_from_dict(raw_sc, base_dir=sc_dir)
        except ConfigError as e:
            raise ConfigError(f"scenario.{e}" if "scenario" in d else f"scenario_file: {e}") from None
        stack = parse_stack(d.get("stack"))
        m = d.get("measure") or {}
        _check_keys(m, {"runs", "sweep", "startup"}, "measure")
        runs_raw = m.get("runs")
        if runs_raw is None:
            runs_raw = [{"name": "baseline"}]
        if not isinstance(runs_raw, list) or not runs_raw:
            _fail("measure.runs", "must be a non-empty list of {name, set, events}")
        runs = tuple(parse_run(r, f"measure.runs[{i}]", raw_sc, source, sc_dir) for i, r in enumerate(runs_raw))
        names = [r.name for r in runs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            _fail("measure.runs", f"run names must be unique (repeated: {', '.join(dup)})")
        su = m.get("startup") or {}
        _check_keys(su, {"samples", "enabled"}, "measure.startup")
        startup = StartupSettings(samples=_num(su, "samples", "measure.startup", 5, lo=1, hi=100, integer=True),
                                  enabled=_bool(su, "enabled", "measure.startup", True))
        sweep = parse_sweep(m.get("sweep"), "measure.sweep")
        return MeasureConfig(scenario=scenario, stack=stack, runs=runs, sweep=sweep, startup=startup,
                             source=source, raw=copy.deepcopy(dict(d)))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None


def load_measure_config(path: str, overrides: list[str] | None = None) -> MeasureConfig:
    """Load a measurement file. ``overrides`` are ``dotted.key=yaml`` applied to the raw file first."""
    from simulator.config import set_override
    d = load_raw(path)
    for o in overrides or []:
        if "=" not in o:
            raise ConfigError(f"--set {o}: expected key=value, e.g. --set stack.onnx_threads=2")
        k, v = o.split("=", 1)
        set_override(d, k.strip(), v)
    return measure_config_from_dict(d, source=path, base_dir=os.path.dirname(os.path.abspath(path)))
