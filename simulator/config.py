"""Scenario configuration: typed dataclasses loaded from YAML with validation.

One scenario file describes a serving deployment and a workload; the simulator
(`simulator.run`), the real stack (`cluster.measure`) and calibration all read
the same file, so the same ``batching:`` block configures Triton's dynamic
batcher in simulation and on a real server.

Every loader error is a :class:`ConfigError` whose message names the file, the
dotted key path and the allowed values, e.g.::

    configs/x.yaml: batching.max_queue_delay_us: must be >= 0 (got -5)
    configs/x.yaml: cluster.load_balancer: must be one of round_robin, random,
        least_outstanding (got 'rr')

Units are in the key names: ``*_ms``, ``*_us``, ``*_s``, ``*_rps``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from simulator.policy import REGISTRY as POLICIES
from simulator.policy import AutoscalerSpec  # noqa: F401  (re-exported: part of a Scenario)
from simulator.schema import ConfigError, boolean, check_keys, choice, fail, int_list, number, string


# --------------------------------------------------------------------------- distributions

DIST_KINDS = ("deterministic", "exponential", "gamma", "lognormal", "weibull", "empirical")


@dataclass(frozen=True)
class Dist:
    """A positive random duration in one unit (ms for service, s for start-up / think time).

    ``mean`` is the mean of the whole variable (shift included); ``cv`` is the
    coefficient of variation of the part above ``shift`` (ignored for
    deterministic, 1 for exponential). ``empirical`` uses ``quantiles``: values at
    equally spaced probability levels 0, 1/(n-1), ..., 1 (linear in between).
    """

    kind: str = "deterministic"
    mean: float = 0.0
    cv: float = 1.0
    shift: float = 0.0
    quantiles: tuple[float, ...] = ()

    def to_dict(self, unit: str) -> dict:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "empirical":
            d[f"quantiles_{unit}"] = list(self.quantiles)
        else:
            d[f"mean_{unit}"] = self.mean
            if self.kind in ("gamma", "lognormal", "weibull"):
                d["cv"] = self.cv
            if self.shift:
                d[f"shift_{unit}"] = self.shift
        return d

    def scaled(self, s: float) -> "Dist":
        """The variable ``s * X`` (every quantile times ``s``; the coefficient of variation kept)."""
        if self.kind == "empirical":
            return Dist("empirical", quantiles=tuple(q * s for q in self.quantiles))
        return Dist(self.kind, mean=self.mean * s, cv=self.cv, shift=self.shift * s)

    @property
    def mean_value(self) -> float:
        if self.kind == "empirical":
            q = self.quantiles
            return float(sum((q[i] + q[i + 1]) / 2 for i in range(len(q) - 1)) / (len(q) - 1))
        return self.mean


def parse_dist(d: Any, path: str, unit: str, default_kind: str = "deterministic") -> Dist:
    """Parse ``{kind, mean_<unit>, cv, shift_<unit>, quantiles_<unit>}`` or a bare number."""
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        d = {"kind": "deterministic", f"mean_{unit}": d}
    check_keys(d, {"kind", f"mean_{unit}", "cv", f"shift_{unit}", f"quantiles_{unit}"}, path)
    kind = choice(d, "kind", path, DIST_KINDS, default_kind)
    if kind == "empirical":
        qk = f"quantiles_{unit}"
        q = d.get(qk)
        if not isinstance(q, (list, tuple)) or len(q) < 2:
            fail(f"{path}.{qk}", "empirical needs a list of >= 2 values at equally spaced "
                  "probability levels 0..1")
        for i, v in enumerate(q):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                fail(f"{path}.{qk}[{i}]", f"must be a finite number >= 0 (got {v!r})")
        if any(q[i + 1] < q[i] for i in range(len(q) - 1)):
            fail(f"{path}.{qk}", "quantiles must be non-decreasing")
        return Dist(kind=kind, quantiles=tuple(float(x) for x in q), mean=0.0)
    mean = number(d, f"mean_{unit}", path, required=True, lo=0, lo_open=(kind != "deterministic"))
    shift = number(d, f"shift_{unit}", path, 0.0, lo=0)
    if shift > mean or (kind != "deterministic" and shift >= mean):
        fail(f"{path}.shift_{unit}", f"must be below mean_{unit} ({mean}) (got {shift})")
    cv = 1.0
    if kind in ("gamma", "lognormal", "weibull"):
        cv = number(d, "cv", path, 1.0, lo=0, lo_open=True, hi=20)
    elif kind == "deterministic":
        cv = 0.0
    return Dist(kind=kind, mean=mean, cv=cv, shift=shift)


# --------------------------------------------------------------------------- workload

WORKLOAD_KINDS = ("poisson", "schedule", "trace", "timestamps", "closed_loop")
SEGMENT_KINDS = ("constant", "step", "ramp", "spike", "sinusoid")


@dataclass(frozen=True)
class Segment:
    """One piece of a rate schedule, ``duration_s`` long.

    constant: ``rate_rps``; step: ``rate_rps`` then ``to_rps`` from ``at_s`` into the
    segment; ramp: linear ``rate_rps`` -> ``to_rps``; spike: ``rate_rps`` with
    ``peak_rps`` between ``at_s`` and ``at_s + width_s``; sinusoid:
    ``rate_rps + amplitude_rps * sin(2 pi t / period_s)`` (clipped at 0).
    """

    kind: str
    duration_s: float
    rate_rps: float
    to_rps: float = 0.0
    at_s: float = 0.0
    peak_rps: float = 0.0
    width_s: float = 0.0
    amplitude_rps: float = 0.0
    period_s: float = 60.0


@dataclass(frozen=True)
class WorkloadSpec:
    kind: str = "poisson"
    rate_rps: float = 10.0                      # poisson
    segments: tuple[Segment, ...] = ()          # schedule (repeats if shorter than the run? no: last rate holds)
    path: str = ""                              # trace / timestamps CSV
    times: tuple[float, ...] = ()               # timestamps: in-memory arrival instants (s) instead of a CSV
    column: str = ""                            # trace: 'rps'; timestamps: 'TIMESTAMP'
    speedup: float = 1.0                        # time compression: trace seconds per simulated second
    scale: float = 1.0                          # multiply rates (trace) / thin-or-copy arrivals (timestamps)
    offset_s: float = 0.0                       # window start, in trace time
    length_s: float = 0.0                       # window length in trace time (0 = to the end)
    users: int = 10                             # closed_loop
    think: Dist = Dist("deterministic", 1.0, 0.0)   # closed_loop think time, seconds
    spawn_rate: float = 0.0                     # users started per second (0 = all at t=0)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "poisson":
            d["rate_rps"] = self.rate_rps
        elif self.kind == "schedule":
            d["segments"] = [_seg_to_dict(s) for s in self.segments]
        elif self.kind == "timestamps" and self.times:
            d.update(times_s=list(self.times), speedup=self.speedup, scale=self.scale,
                     offset_s=self.offset_s, length_s=self.length_s)
        elif self.kind in ("trace", "timestamps"):
            d.update(path=self.path, column=self.column, speedup=self.speedup, scale=self.scale,
                     offset_s=self.offset_s, length_s=self.length_s)
        else:
            d.update(users=self.users, think=self.think.to_dict("s"), spawn_rate=self.spawn_rate)
        return d


def _seg_to_dict(s: Segment) -> dict:
    keep = {"constant": ("rate_rps",), "step": ("rate_rps", "to_rps", "at_s"),
            "ramp": ("rate_rps", "to_rps"), "spike": ("rate_rps", "peak_rps", "at_s", "width_s"),
            "sinusoid": ("rate_rps", "amplitude_rps", "period_s")}[s.kind]
    d = {"kind": s.kind, "duration_s": s.duration_s}
    d.update({k: getattr(s, k) for k in keep})
    return d


def parse_workload(d: Any, path: str, base_dir: str) -> WorkloadSpec:
    check_keys(d, {"kind", "rate_rps", "segments", "path", "column", "speedup", "scale",
                    "offset_s", "length_s", "users", "think", "think_s", "spawn_rate", "times_s"}, path)
    kind = choice(d, "kind", path, WORKLOAD_KINDS)
    allowed = {"poisson": {"kind", "rate_rps"},
               "schedule": {"kind", "segments"},
               "trace": {"kind", "path", "column", "speedup", "scale", "offset_s", "length_s"},
               "timestamps": {"kind", "path", "column", "speedup", "scale", "offset_s", "length_s", "times_s"},
               "closed_loop": {"kind", "users", "think", "think_s", "spawn_rate"}}[kind]
    extra = sorted(set(d) - allowed)
    if extra:
        fail(f"{path}.{extra[0]}", f"not used by kind '{kind}'; keys for {kind}: {', '.join(sorted(allowed))}")
    if kind == "poisson":
        return WorkloadSpec(kind=kind, rate_rps=number(d, "rate_rps", path, required=True, lo=0, lo_open=True))
    if kind == "schedule":
        segs = d.get("segments")
        if not isinstance(segs, list) or not segs:
            fail(f"{path}.segments", "must be a non-empty list of segments "
                  f"(kind: {', '.join(SEGMENT_KINDS)}; duration_s; rate_rps; ...)")
        return WorkloadSpec(kind=kind, segments=tuple(_parse_segment(s, f"{path}.segments[{i}]")
                                                      for i, s in enumerate(segs)))
    if kind == "timestamps" and "times_s" in d:
        if "path" in d or "column" in d:
            fail(f"{path}.times_s", "give either times_s (a list of arrival instants) or path (a CSV), not both")
        times = d["times_s"]
        if not isinstance(times, (list, tuple)) or not times:
            fail(f"{path}.times_s", "must be a non-empty list of arrival instants in seconds")
        for i, v in enumerate(times):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                fail(f"{path}.times_s[{i}]", f"must be a finite number >= 0 (got {v!r})")
        return WorkloadSpec(kind=kind, times=tuple(sorted(float(v) for v in times)),
                            speedup=number(d, "speedup", path, 1.0, lo=0, lo_open=True),
                            scale=number(d, "scale", path, 1.0, lo=0, lo_open=True),
                            offset_s=number(d, "offset_s", path, 0.0, lo=0),
                            length_s=number(d, "length_s", path, 0.0, lo=0))
    if kind in ("trace", "timestamps"):
        p = string(d, "path", path, required=True)
        if not os.path.isabs(p) and base_dir:
            cand = os.path.normpath(os.path.join(base_dir, p))
            p = cand if os.path.exists(cand) or not os.path.exists(p) else p
        return WorkloadSpec(kind=kind, path=p,
                            column=string(d, "column", path, "rps" if kind == "trace" else "TIMESTAMP"),
                            speedup=number(d, "speedup", path, 1.0, lo=0, lo_open=True),
                            scale=number(d, "scale", path, 1.0, lo=0, lo_open=True),
                            offset_s=number(d, "offset_s", path, 0.0, lo=0),
                            length_s=number(d, "length_s", path, 0.0, lo=0))
    if "think" in d and "think_s" in d:
        fail(f"{path}.think_s", "give either think (a distribution) or think_s (a number), not both")
    think = parse_dist(d["think"], f"{path}.think", "s") if "think" in d else \
        Dist("deterministic", number(d, "think_s", path, 1.0, lo=0), 0.0)
    return WorkloadSpec(kind=kind, users=number(d, "users", path, 10, lo=1, integer=True), think=think,
                        spawn_rate=number(d, "spawn_rate", path, 0.0, lo=0))


def _parse_segment(s: Any, path: str) -> Segment:
    check_keys(s, {f.name for f in dataclasses.fields(Segment)}, path)
    kind = choice(s, "kind", path, SEGMENT_KINDS, "constant")
    return Segment(kind=kind,
                   duration_s=number(s, "duration_s", path, required=True, lo=0, lo_open=True),
                   rate_rps=number(s, "rate_rps", path, required=True, lo=0),
                   to_rps=number(s, "to_rps", path, 0.0, lo=0, required=kind in ("step", "ramp")),
                   at_s=number(s, "at_s", path, 0.0, lo=0, required=kind in ("step", "spike")),
                   peak_rps=number(s, "peak_rps", path, 0.0, lo=0, required=kind == "spike"),
                   width_s=number(s, "width_s", path, 0.0, lo=0, lo_open=kind == "spike",
                                required=kind == "spike"),
                   amplitude_rps=number(s, "amplitude_rps", path, 0.0, lo=0, required=kind == "sinusoid"),
                   period_s=number(s, "period_s", path, 60.0, lo=0, lo_open=True))


# --------------------------------------------------------------------------- service


@dataclass(frozen=True)
class ServiceSpec:
    """Per-batch compute time (ms) of one model instance, plus per-request overhead.

    ``per_batch`` maps batch sizes to distributions. Sizes not listed are
    interpolated (quantile functions mixed linearly between the nearest listed
    sizes; above the largest listed size, quantiles are scaled by the mean slope
    of the last two sizes, or by ``batch_slope`` when only one size is listed).
    ``overhead`` is time outside Triton per request (client + network + load
    balancer); it adds to client latency but does not occupy the server.
    Node interference (several batches executing at once on one node) is a
    cluster property: see :class:`ClusterSpec` ``node_cores`` / ``interference``.
    """

    per_batch: tuple[tuple[int, Dist], ...] = ((1, Dist("deterministic", 10.0, 0.0)),)
    batch_slope: float = 0.5
    overhead: Dist = Dist("deterministic", 0.0, 0.0)

    def to_dict(self) -> dict:
        return {"per_batch": {b: dd.to_dict("ms") for b, dd in self.per_batch},
                "batch_slope": self.batch_slope, "overhead": self.overhead.to_dict("ms")}


def parse_service(d: Any, path: str) -> ServiceSpec:
    check_keys(d, {"kind", "mean_ms", "cv", "shift_ms", "quantiles_ms", "per_batch", "batch_slope",
                    "overhead", "overhead_ms"}, path)
    kind = choice(d, "kind", path, DIST_KINDS, "deterministic")
    single = {k: d[k] for k in ("mean_ms", "cv", "shift_ms", "quantiles_ms") if k in d}
    if "per_batch" in d and single:
        fail(f"{path}.per_batch", f"give either per_batch or a single batch-1 figure "
              f"({', '.join(sorted(single))}), not both")
    if "per_batch" in d:
        pb = d["per_batch"]
        if not isinstance(pb, Mapping) or not pb:
            fail(f"{path}.per_batch", "must map batch sizes to distributions, e.g. {1: {mean_ms: 5}, 8: {mean_ms: 20}}")
        items = []
        for b, dd in pb.items():
            try:
                bi = int(b)
            except (TypeError, ValueError):
                bi = -1
            if bi < 1 or str(bi) != str(b).strip():
                fail(f"{path}.per_batch.{b}", "batch size keys must be whole numbers >= 1")
            if isinstance(dd, Mapping) and "kind" not in dd:
                dd = {"kind": kind, **dd}
            items.append((bi, parse_dist(dd, f"{path}.per_batch.{b}", "ms", kind)))
        items.sort()
    else:
        if not single:
            fail(path, "needs mean_ms (batch-1 figure), quantiles_ms, or a per_batch table")
        items = [(1, parse_dist({"kind": kind, **single}, path, "ms", kind))]
    if "overhead" in d and "overhead_ms" in d:
        fail(f"{path}.overhead_ms", "give either overhead (a distribution) or overhead_ms, not both")
    overhead = parse_dist(d["overhead"], f"{path}.overhead", "ms") if "overhead" in d else \
        Dist("deterministic", number(d, "overhead_ms", path, 0.0, lo=0), 0.0)
    return ServiceSpec(per_batch=tuple(items), batch_slope=number(d, "batch_slope", path, 0.5, lo=0),
                       overhead=overhead)


# --------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class BatchingSpec:
    """Triton dynamic batcher + instance group of one model on one server.

    ``max_batch_size: 1`` with ``max_queue_delay_us: 0`` is batching off.
    ``max_queue_size: 0`` means unbounded; ``queue_timeout_us: 0`` means no timeout.
    ``device`` (``cpu`` | ``gpu``) and ``gpus`` (GPU ids the instances run on; empty: all visible) only
    configure the real server (``instance_group`` kind ``KIND_CPU`` / ``KIND_GPU``); the simulator reads the
    device's behaviour from the calibrated service times and ignores them beyond validation.
    """

    max_batch_size: int = 1
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    instances: int = 1
    max_queue_size: int = 0
    queue_timeout_us: int = 0
    device: str = "cpu"
    gpus: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        d["gpus"] = list(self.gpus)
        return d


DEVICES = ("cpu", "gpu")


def parse_batching(d: Any, path: str) -> BatchingSpec:
    check_keys(d, {f.name for f in dataclasses.fields(BatchingSpec)}, path)
    mbs = number(d, "max_batch_size", path, 1, lo=1, hi=4096, integer=True)
    pref = d.get("preferred_batch_sizes") or []
    if not isinstance(pref, (list, tuple)):
        fail(f"{path}.preferred_batch_sizes", f"must be a list of batch sizes in 1..{mbs}")
    for i, p in enumerate(pref):
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= mbs:
            fail(f"{path}.preferred_batch_sizes[{i}]", f"must be a whole number in 1..max_batch_size={mbs} (got {p!r})")
    device = choice(d, "device", path, DEVICES, "cpu")
    gpus = int_list(d, "gpus", path, (), lo=0) if d.get("gpus") not in (None, []) else ()
    if gpus and device != "gpu":
        fail(f"{path}.gpus", f"only with device: gpu (device is {device!r})")
    return BatchingSpec(max_batch_size=mbs, preferred_batch_sizes=tuple(sorted(set(int(p) for p in pref))),
                        max_queue_delay_us=number(d, "max_queue_delay_us", path, 0, lo=0, integer=True),
                        instances=number(d, "instances", path, 1, lo=1, hi=64, integer=True),
                        max_queue_size=number(d, "max_queue_size", path, 0, lo=0, integer=True),
                        queue_timeout_us=number(d, "queue_timeout_us", path, 0, lo=0, integer=True),
                        device=device, gpus=gpus)


# --------------------------------------------------------------------------- cluster

LOAD_BALANCERS = ("round_robin", "random", "least_outstanding")


@dataclass(frozen=True)
class ClusterSpec:
    """Replicas (one Triton server each) behind a load balancer.

    Default load balancer is ``round_robin``: a Kubernetes Service in kube-proxy's
    IPVS mode defaults to round-robin (iptables mode picks at random; both spread
    evenly on average), and the local backend's HAProxy/nginx default is
    round-robin, so round-robin is what the real stack does by default.
    ``node_cores`` / ``interference``: replicas share one node; when k batches execute at
    once across the node, compute time is multiplied by
    ``1 + interference * max(0, k - node_cores)`` (0 disables; fitted by calibration).
    ``rate_contention`` / ``rate_window_s``: CPU contention from request handling outside
    the model (load generator, load balancer, HTTP front end on the same cores): compute
    time is also multiplied by ``1 + rate_contention * r``, with ``r`` the node's arrival
    rate (req/s) over the last complete ``rate_window_s`` bin (time cut in fixed bins;
    0 disables; fitted by calibration).
    ``rate_cores``: the same request handling as CPU demand instead: it occupies
    ``rate_cores * r`` cores, which join the executing batches in the interference
    term, ``1 + interference * max(0, k + rate_cores * r - node_cores)``: request
    handling slows the model only when it and the batches together exceed the node's
    cores (a lone replica on a 2-core node has a core to spare; two busy replicas do
    not). Needs ``interference > 0``; 0 disables; fitted by calibration.
    Both engines apply this rule through one function,
    :func:`simulator.contention.contention_factor`.
    """

    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 0          # 0 -> same as replicas... resolved in parse
    startup: Dist = Dist("deterministic", 0.0, 0.0)
    load_balancer: str = "round_robin"
    node_cores: int = 0
    interference: float = 0.0
    rate_contention: float = 0.0
    rate_window_s: float = 1.0
    rate_cores: float = 0.0

    def to_dict(self) -> dict:
        return {"replicas": self.replicas, "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas, "startup_s": self.startup.to_dict("s"),
                "load_balancer": self.load_balancer, "node_cores": self.node_cores,
                "interference": self.interference, "rate_contention": self.rate_contention,
                "rate_window_s": self.rate_window_s, "rate_cores": self.rate_cores}


def parse_cluster(d: Any, path: str) -> ClusterSpec:
    check_keys(d, {"replicas", "min_replicas", "max_replicas", "startup_s", "load_balancer",
                    "node_cores", "interference", "rate_contention", "rate_window_s", "rate_cores"}, path)
    reps = number(d, "replicas", path, 1, lo=0, hi=10000, integer=True)
    mn = number(d, "min_replicas", path, min(1, reps), lo=0, integer=True)
    mx = number(d, "max_replicas", path, max(reps, mn, 1), lo=1, hi=10000, integer=True)
    if mn > mx:
        fail(f"{path}.min_replicas", f"must be <= max_replicas ({mx}) (got {mn})")
    if not mn <= reps <= mx:
        fail(f"{path}.replicas", f"must be within min_replicas..max_replicas = {mn}..{mx} (got {reps})")
    st = d.get("startup_s", 0.0)
    startup = parse_dist(st, f"{path}.startup_s", "s")
    if number(d, "rate_cores", path, 0.0, lo=0) > 0 and number(d, "interference", path, 0.0, lo=0) == 0:
        fail(f"{path}.rate_cores", "acts through the interference term: needs interference > 0 (and node_cores)")
    return ClusterSpec(replicas=reps, min_replicas=mn, max_replicas=mx, startup=startup,
                       load_balancer=choice(d, "load_balancer", path, LOAD_BALANCERS, "round_robin"),
                       node_cores=number(d, "node_cores", path, 0, lo=0, integer=True),
                       interference=number(d, "interference", path, 0.0, lo=0),
                       rate_contention=number(d, "rate_contention", path, 0.0, lo=0),
                       rate_window_s=number(d, "rate_window_s", path, 1.0, lo=0, lo_open=True),
                       rate_cores=number(d, "rate_cores", path, 0.0, lo=0))


# --------------------------------------------------------------------------- autoscaler


def parse_autoscaler(d: Any, path: str, base_dir: str = "") -> AutoscalerSpec:
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        fail(path, f"must be a mapping (got {d!r})")
    kinds = tuple(sorted(POLICIES))
    kind = choice(d, "kind", path, kinds, "static")
    interval = number(d, "interval_s", path, 15.0, lo=0, lo_open=True)
    params = {k: v for k, v in d.items() if k not in ("kind", "interval_s")}
    if kind == "policy" and isinstance(params.get("path"), str) and base_dir and \
            not os.path.isabs(params["path"]) and not os.path.exists(params["path"]):
        params["path"] = os.path.normpath(os.path.join(base_dir, params["path"]))
    # validate now, so errors surface at load time with the right key path
    POLICIES[kind].validate_params(params, path)
    return AutoscalerSpec(kind=kind, interval_s=interval, params=params)


# --------------------------------------------------------------------------- pipeline

ACCURACY_RULES = ("product", "mean")


@dataclass(frozen=True)
class VariantSpec:
    """One model variant a pipeline stage can serve: its per-batch compute (``service``: ``per_batch`` /
    ``batch_slope``, as a single model's; the per-request overhead is the stage's ``hop``, not the
    variant's), its accuracy in [0, 1], and its start-up delay (None: the stage's ``cluster.startup_s``)."""

    name: str
    accuracy: float
    service: ServiceSpec
    startup: Dist | None = None

    def to_dict(self) -> dict:
        sv = self.service.to_dict()
        sv.pop("overhead")
        d = {"name": self.name, "accuracy": self.accuracy, "service": sv}
        if self.startup is not None:
            d["startup_s"] = self.startup.to_dict("s")
        return d


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline: a deployment exactly as a single-model scenario's (``batching``,
    ``cluster``, ``autoscaler``) serving one of its ``variants`` (``variant``: the one replicas start
    with). ``hop``: time outside Triton per request after this stage's response (client / router -> load
    balancer -> Triton -> back; a single model's ``service.overhead``): the request reaches the next
    stage, or the client after the last stage, ``hop`` after the batch holding it completes."""

    name: str
    variants: tuple[VariantSpec, ...]
    variant: str
    hop: Dist = Dist("deterministic", 0.0, 0.0)
    batching: BatchingSpec = BatchingSpec()
    cluster: ClusterSpec = ClusterSpec()
    autoscaler: AutoscalerSpec = AutoscalerSpec()

    def variant_index(self, name: str) -> int:
        return [v.name for v in self.variants].index(name)

    def to_dict(self) -> dict:
        return {"name": self.name, "variants": [v.to_dict() for v in self.variants], "variant": self.variant,
                "hop": self.hop.to_dict("ms"), "batching": self.batching.to_dict(),
                "cluster": self.cluster.to_dict(), "autoscaler": self.autoscaler.to_dict()}


@dataclass(frozen=True)
class PipelineSpec:
    """A chain of stages (``stages`` in the order a request visits them). A request's accuracy combines the
    accuracies of the variants that served it by ``accuracy``: ``product`` (the default: the chance that
    every stage is right, assuming independent errors) or ``mean``."""

    stages: tuple[StageSpec, ...]
    accuracy: str = "product"

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "stages": [st.to_dict() for st in self.stages]}


STAGE_KEYS = {"name", "variants", "variant", "service", "accuracy", "startup_s", "hop", "hop_ms", "batching",
              "cluster", "autoscaler", "next"}
VARIANT_KEYS = {"name", "accuracy", "service", "startup_s"}


def _parse_variant(v: Any, path: str) -> VariantSpec:
    check_keys(v, VARIANT_KEYS, path)
    name = string(v, "name", path, required=True)
    if "service" not in v or not v["service"]:
        fail(f"{path}.service", "is required: the variant's per-batch compute (per_batch: {1: {mean_ms: ...}, ...})")
    if isinstance(v["service"], Mapping) and ("overhead" in v["service"] or "overhead_ms" in v["service"]):
        fail(f"{path}.service.overhead", "a variant has no overhead of its own: give the stage's hop (hop_ms or hop)")
    return VariantSpec(name=name, accuracy=number(v, "accuracy", path, 1.0, lo=0, hi=1),
                       service=parse_service(v["service"], f"{path}.service"),
                       startup=parse_dist(v["startup_s"], f"{path}.startup_s", "s") if "startup_s" in v else None)


def _parse_stage(st: Any, path: str, base_dir: str) -> tuple[StageSpec, Any]:
    check_keys(st, STAGE_KEYS, path)
    name = string(st, "name", path, required=True)
    if "variants" in st:
        for k in ("service", "accuracy", "startup_s"):
            if k in st:
                fail(f"{path}.{k}", "give it per variant (variants[i]." + k + ") when the stage lists variants")
        vs = st["variants"]
        if not isinstance(vs, list) or not vs:
            fail(f"{path}.variants", "must be a non-empty list of {name, accuracy, service}")
        variants = tuple(_parse_variant(v, f"{path}.variants[{i}]") for i, v in enumerate(vs))
    else:
        if "service" not in st:
            fail(f"{path}.service", "is required (or list variants: [{name, accuracy, service}, ...])")
        variants = (_parse_variant({"name": "default", "service": st["service"],
                                    **{k: st[k] for k in ("accuracy", "startup_s") if k in st}}, path),)
    names = [v.name for v in variants]
    for i, n in enumerate(names):
        if names.index(n) != i:
            fail(f"{path}.variants[{i}].name", f"duplicate variant name {n!r}")
    variant = string(st, "variant", path, names[0])
    if variant not in names:
        fail(f"{path}.variant", f"must be one of the stage's variants: {', '.join(names)} (got {variant!r})")
    if "hop" in st and "hop_ms" in st:
        fail(f"{path}.hop_ms", "give either hop (a distribution) or hop_ms, not both")
    hop = parse_dist(st["hop"], f"{path}.hop", "ms") if "hop" in st else \
        Dist("deterministic", number(st, "hop_ms", path, 0.0, lo=0), 0.0)
    return StageSpec(name=name, variants=variants, variant=variant, hop=hop,
                     batching=parse_batching(st.get("batching") or {}, f"{path}.batching"),
                     cluster=parse_cluster(st.get("cluster") or {}, f"{path}.cluster"),
                     autoscaler=parse_autoscaler(st.get("autoscaler"), f"{path}.autoscaler", base_dir)), \
        st.get("next", "__default__")


def chain_order(names: list[str], nexts: list[Any], path: str) -> list[int]:
    """The order a request visits the stages: from the first stage listed, each stage's ``next`` (default:
    the stage listed after it; ``null`` or ``[]``: the last stage). One successor per stage (a chain:
    fan-out is not supported); every stage must be visited exactly once (no cycle, none unreachable)."""
    succ = []
    for i, nx in enumerate(nexts):
        p = f"{path}.stages[{i}].next"
        if isinstance(nx, str) and nx == "__default__":
            succ.append(i + 1 if i + 1 < len(names) else None)
            continue
        if nx in (None, []):
            succ.append(None)
            continue
        if isinstance(nx, list):
            if len(nx) > 1:
                fail(p, f"names {len(nx)} stages: fan-out is not supported (a chain: one next stage)")
            nx = nx[0]
        if not isinstance(nx, str) or nx not in names:
            fail(p, f"must name a stage: one of {', '.join(names)} (got {nx!r})")
        succ.append(names.index(nx))
    order, seen, cur = [], set(), 0
    while cur is not None:
        if cur in seen:
            fail(f"{path}.stages[{order[-1]}].next",
                 f"makes a cycle: {' -> '.join(names[k] for k in order)} -> {names[cur]}")
        seen.add(cur)
        order.append(cur)
        cur = succ[cur]
    missing = [names[k] for k in range(len(names)) if k not in seen]
    if missing:
        fail(f"{path}.stages", f"stage(s) {', '.join(missing)} never reached from the first stage "
                               f"({names[0]}) by following next")
    return order


def fastest_path_ms(p: PipelineSpec) -> float:
    """The lower bound an end-to-end SLO must exceed: the sum over stages of the fastest variant's mean
    batch-1 compute (its smallest listed batch size: below it the service model does not shrink) plus the
    stage's mean hop (no queueing, no batching delay)."""
    tot = 0.0
    for st in p.stages:
        tot += min(v.service.per_batch[0][1].mean_value for v in st.variants)   # the smallest listed batch size
        tot += st.hop.mean_value
    return tot


def parse_pipeline(d: Any, path: str, base_dir: str, joint: bool = False) -> PipelineSpec:
    """``joint``: the scenario has a top-level (joint) pipeline policy, so the stages' own intervals are unused."""
    check_keys(d, {"stages", "accuracy"}, path)
    sts = d.get("stages")
    if not isinstance(sts, list) or not sts:
        fail(f"{path}.stages", "must be a non-empty list of stages ({name, service | variants, batching, ...})")
    parsed = [_parse_stage(st, f"{path}.stages[{i}]", base_dir) for i, st in enumerate(sts)]
    names = [s.name for s, _ in parsed]
    for i, n in enumerate(names):
        if names.index(n) != i:
            fail(f"{path}.stages[{i}].name", f"duplicate stage name {n!r}")
    order = chain_order(names, [nx for _, nx in parsed], path)
    stages = tuple(parsed[k][0] for k in order)
    ivs = {st.autoscaler.interval_s for st in stages}
    if len(ivs) > 1 and not joint:
        k = next(i for i, st in enumerate(stages) if st.autoscaler.interval_s != stages[0].autoscaler.interval_s)
        fail(f"{path}.stages[{order[k]}].autoscaler.interval_s",
             f"must equal the first stage's ({stages[0].autoscaler.interval_s:g} s): one control interval per "
             f"pipeline (got {stages[k].autoscaler.interval_s:g})")
    return PipelineSpec(stages=stages, accuracy=choice(d, "accuracy", path, ACCURACY_RULES, "product"))


def parse_pipeline_autoscaler(d: Mapping, base_dir: str) -> AutoscalerSpec:
    """A pipeline scenario's top-level ``autoscaler:``: a joint pipeline policy (:mod:`simulator.pipeline_policy`)
    whose interval is the pipeline's; then no stage may have its own. Without one: ``per_stage``, each stage's
    own policy at the stages' common interval."""
    from simulator.pipeline_policy import PIPELINE_REGISTRY
    a = d.get("autoscaler")
    stages = (d.get("pipeline") or {}).get("stages") or []
    if a is None:
        first = stages[0].get("autoscaler") if stages and isinstance(stages[0], Mapping) else None
        iv = number(first or {}, "interval_s", "pipeline.stages[0].autoscaler", 15.0, lo=0, lo_open=True)
        return AutoscalerSpec(kind="per_stage", interval_s=iv, params={})
    if not isinstance(a, Mapping):
        fail("autoscaler", f"must be a mapping (got {a!r})")
    for i, st in enumerate(stages):
        if isinstance(st, Mapping) and st.get("autoscaler") is not None:
            fail(f"pipeline.stages[{i}].autoscaler", "not with a joint pipeline policy (the top-level autoscaler: "
                                                     "decides for every stage); remove one of them")
    kind = choice(a, "kind", "autoscaler", tuple(sorted(PIPELINE_REGISTRY)), None)
    params = {k: v for k, v in a.items() if k not in ("kind", "interval_s")}
    PIPELINE_REGISTRY[kind].validate_params(params, "autoscaler")
    return AutoscalerSpec(kind=kind, interval_s=number(a, "interval_s", "autoscaler", 10.0, lo=0, lo_open=True),
                          params=params)


# --------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Scenario:
    seed: int = 0
    duration_s: float = 60.0
    warmup_s: float = 0.0
    slo_ms: float = 100.0
    record_requests: bool = True
    workload: WorkloadSpec = WorkloadSpec()
    service: ServiceSpec = ServiceSpec()
    batching: BatchingSpec = BatchingSpec()
    cluster: ClusterSpec = ClusterSpec()
    autoscaler: AutoscalerSpec = AutoscalerSpec()
    name: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    pipeline: PipelineSpec | None = None        # a pipeline scenario: service / batching / cluster per stage

    def to_dict(self) -> dict:
        d = {"name": self.name, "seed": self.seed, "duration_s": self.duration_s, "warmup_s": self.warmup_s,
             "slo_ms": self.slo_ms, "record_requests": self.record_requests,
             "workload": self.workload.to_dict()}
        if self.pipeline is not None:
            d["pipeline"] = self.pipeline.to_dict()
            if self.autoscaler.kind != "per_stage":
                d["autoscaler"] = self.autoscaler.to_dict()
        else:
            d.update({"service": self.service.to_dict(), "batching": self.batching.to_dict(),
                      "cluster": self.cluster.to_dict(), "autoscaler": self.autoscaler.to_dict()})
        if self.provenance:
            d["provenance"] = copy.deepcopy(dict(self.provenance))
        return d

    def replace(self, **kw) -> "Scenario":
        return dataclasses.replace(self, **kw)


TOP_KEYS = {"name", "seed", "duration_s", "warmup_s", "slo_ms", "record_requests", "workload", "service",
            "batching", "cluster", "autoscaler", "provenance", "pipeline"}
PER_STAGE_KEYS = ("service", "batching", "cluster")


def scenario_from_dict(d: Any, source: str = "", base_dir: str = "") -> Scenario:
    """Validate a plain dict (as loaded from YAML) into a :class:`Scenario`."""
    try:
        if not isinstance(d, Mapping):
            fail("", f"top level must be a mapping of {', '.join(sorted(TOP_KEYS))}")
        check_keys(d, TOP_KEYS, "")
        if "pipeline" in d:
            for k in PER_STAGE_KEYS:
                if k in d:
                    fail(k, f"in a pipeline scenario, give it per stage: pipeline.stages[i].{k}")
        for req in ("workload",) + (() if "pipeline" in d else ("service",)):
            if req not in d:
                fail(req, "is required")
        dur = number(d, "duration_s", "", 60.0, lo=0, lo_open=True)
        warm = number(d, "warmup_s", "", 0.0, lo=0)
        if warm >= dur:
            fail("warmup_s", f"must be < duration_s ({dur}) (got {warm})")
        sc = Scenario(
            name=string(d, "name", "", "") or "",
            seed=number(d, "seed", "", 0, lo=0, hi=2**63 - 1, integer=True),
            duration_s=dur, warmup_s=warm,
            slo_ms=number(d, "slo_ms", "", 100.0, lo=0, lo_open=True),
            record_requests=boolean(d, "record_requests", "", True),
            workload=parse_workload(d["workload"], "workload", base_dir),
            service=parse_service(d["service"], "service") if "pipeline" not in d else ServiceSpec(),
            batching=parse_batching(d.get("batching") or {}, "batching"),
            cluster=parse_cluster(d.get("cluster") or {}, "cluster"),
            autoscaler=parse_autoscaler(d.get("autoscaler"), "autoscaler", base_dir) if "pipeline" not in d else
            parse_pipeline_autoscaler(d, base_dir),
            provenance=dict(d.get("provenance") or {}),
            pipeline=parse_pipeline(d["pipeline"], "pipeline", base_dir, joint="autoscaler" in d)
            if "pipeline" in d else None,
        )
        if sc.pipeline is not None:
            if sc.workload.kind == "closed_loop":
                fail("workload.kind", "a pipeline takes open-loop arrivals: poisson, trace, schedule or timestamps "
                                      "(closed_loop users are not supported with pipeline:)")
            lo = fastest_path_ms(sc.pipeline)
            if sc.slo_ms <= lo:
                fail("slo_ms", f"must exceed the fastest possible path through the pipeline, {lo:.3g} ms (the sum "
                               f"over stages of the fastest variant's mean batch-1 compute + the mean hop) "
                               f"(got {sc.slo_ms:g})")
        if sc.workload.kind == "closed_loop" and sc.cluster.max_replicas > 0 and sc.workload.users < 1:
            fail("workload.users", "must be >= 1")
        return sc
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None


def set_override(d: dict, dotted: str, value_text: str) -> None:
    """Apply ``--set key.sub=value`` (value parsed as YAML) to a raw scenario dict."""
    if "=" in dotted and value_text is None:
        dotted, value_text = dotted.split("=", 1)
    keys = dotted.split(".")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {dotted}: value {value_text!r} is not valid YAML ({e})") from None
    cur = d
    for k in keys[:-1]:
        if not isinstance(cur.get(k), dict):
            cur[k] = {} if cur.get(k) is None else cur[k]
            if not isinstance(cur[k], dict):
                raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        cur = cur[k]
    cur[keys[-1]] = value


def load_raw(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"{path}: file not found")
    try:
        with open(path) as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if d is None:
        raise ConfigError(f"{path}: file is empty")
    return d


def load_scenario(path: str, overrides: list[str] | None = None, seed: int | None = None) -> Scenario:
    """Load and validate a scenario YAML file (``--set`` overrides and ``--seed`` applied first)."""
    d = load_raw(path)
    for o in overrides or []:
        if "=" not in o:
            raise ConfigError(f"--set {o}: expected key=value, e.g. --set workload.rate_rps=50")
        k, v = o.split("=", 1)
        set_override(d, k.strip(), v)
    if seed is not None:
        d["seed"] = seed
    return scenario_from_dict(d, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def dump_scenario(sc: Scenario, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(sc.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)
