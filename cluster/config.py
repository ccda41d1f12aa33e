"""Real-stack measurement configuration (``python -m cluster.measure CONFIG``).

A measurement file has three top-level sections::

    scenario:        # a full simulator scenario (schema: simulator.config), inline ...
    scenario_file:   # ... or a path to a scenario YAML (relative to this file); exactly one of the two
    model:           # what the replicas serve (optional; default the built-in MobileNetV4)
    stack:           # how the real stack runs (backend, server binary, ports, threads, timeouts)
    measure:         # what to measure: runs, profiling sweep, start-up samples

``model:`` (:class:`cluster.stack.config.ModelSpec`), one of::

    model: {builtin: mobilenetv4_conv_small}      # the default (also when absent); or text_encoder_small
    model: {onnx: path/to/model.onnx}             # your ONNX file: inputs/outputs read from the graph
    model: {repository: path/to/repo, name: NAME} # your Triton model repository: your config.pbtxt is kept,
                                                  # the batcher keys of batching: overridden (below)
    # any of them + inputs: sample.npz            # request payloads to send (one array per input name,
                                                  # first axis = items) instead of generated ones

A repository model's ``config.pbtxt`` is kept except for the keys the scenario's ``batching:`` block
owns: ``max_batch_size``, ``instance_group`` (replaced: ``count`` = ``instances``, ``kind`` =
``KIND_CPU`` / ``KIND_GPU`` from ``device``, ``gpus``) and in ``dynamic_batching``:
``preferred_batch_size``, ``max_queue_delay_microseconds`` and ``default_queue_policy``
(``max_queue_size``, ``timeout_action``, ``default_timeout_microseconds``, ``allow_timeout_override``).
The merged file is recorded in the results folder (``model/config.pbtxt``). Inputs are generated from the
model's configuration as the server reports it (``/v2/models/NAME/config``: names, data types, dims) by the
rule of :func:`cluster.stack.served.synthesise` unless ``inputs:`` is given.

``stack.tritonserver: PATH`` runs that server binary (e.g. the one of NVIDIA's container, with native
onnxruntime / TensorRT / PyTorch backends) instead of the one bundled in nvidia-pytriton; a binary that does
not start is reported in one line before any run. ``batching.device: gpu`` (with ``gpus: [ids]``) makes
the instance group ``KIND_GPU``; a GPU must be visible (``nvidia-smi -L``) and the server a GPU build.

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

A pipeline scenario (``pipeline:``, simulator schema: stages with their own ``batching`` / ``cluster`` and
``variants``) is measured stage by stage (``configs/pipeline.yaml``, :func:`cluster.measure.run_pipeline`):
``model: {stages: {STAGE: MODEL | {variants: {VARIANT: MODEL}}}}`` names what each stage's variants serve
(:func:`cluster.stack.config.parse_stage_models`); a run may override keys of named stages with ``stages:``
(``{image: {variant: medium, cluster: {replicas: 2}}}``, merged like ``set:``), and each event names its
stage (``{at_s: 20, scale: 2, stage: image}``).

Errors are :class:`simulator.config.ConfigError` naming the file, key path and
allowed values, e.g. ``configs/x.yaml: stack.backend: must be one of local,
kubernetes (got 'docker')``.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from simulator.config import ConfigError, Scenario, load_raw, scenario_from_dict
from simulator.schema import boolean, check_keys, fail, int_list, number, string

from .stack.config import StackSettings, parse_model, parse_stack, parse_stage_models

TOP_KEYS = {"scenario", "scenario_file", "model", "stack", "measure"}


@dataclass(frozen=True)
class RunSpec:
    """One load run: the scenario after ``set`` overrides, plus timed events."""

    name: str
    scenario: Scenario
    events: tuple[tuple, ...] = ()      # (at_s, 'scale'|'kill', value); a pipeline's: (at_s, kind, value, stage)


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


def parse_sweep(d: Any, path: str) -> SweepSettings:
    if d is None:
        return SweepSettings()
    check_keys(d, {"batch_sizes", "samples", "max_seconds_per_size", "warmup", "concurrency",
                    "concurrency_duration_s", "interference_replicas", "interference_duration_s",
                    "enabled"}, path)
    return SweepSettings(
        batch_sizes=int_list(d, "batch_sizes", path, SweepSettings.batch_sizes),
        samples=number(d, "samples", path, 200, lo=1, integer=True),
        max_seconds_per_size=number(d, "max_seconds_per_size", path, 20.0, lo=0, lo_open=True),
        warmup=number(d, "warmup", path, 5, lo=0, integer=True),
        concurrency=int_list(d, "concurrency", path, SweepSettings.concurrency),
        concurrency_duration_s=number(d, "concurrency_duration_s", path, 6.0, lo=0, lo_open=True),
        interference_replicas=int_list(d, "interference_replicas", path, SweepSettings.interference_replicas),
        interference_duration_s=number(d, "interference_duration_s", path, 8.0, lo=0),
        enabled=boolean(d, "enabled", path, True))


def merge_stages(raw: Mapping, over: Any, path: str) -> dict:
    """A pipeline scenario ``raw`` with ``over`` = ``{STAGE: {key: value}}`` merged into the named stages (as
    :func:`merge` does; e.g. ``{image: {variant: medium, cluster: {replicas: 2}}}``)."""
    if not isinstance(over, Mapping):
        fail(path, "must map stage names to the keys to override, e.g. {image: {variant: medium}}")
    out = copy.deepcopy(dict(raw))
    stages = (out.get("pipeline") or {}).get("stages") or []
    names = [st.get("name") if isinstance(st, Mapping) else None for st in stages]
    for name, o in over.items():
        if name not in names:
            fail(f"{path}.{name}", f"no stage {name!r} in the pipeline (its stages: {', '.join(map(str, names))})")
        if not isinstance(o, Mapping):
            fail(f"{path}.{name}", "must be a mapping of the stage's keys to override")
        i = names.index(name)
        stages[i] = merge(stages[i], o)
    return out


def parse_run(d: Any, path: str, base_raw: Mapping, source: str, base_dir: str,
              stack: StackSettings | None = None) -> RunSpec:
    check_keys(d, {"name", "set", "stages", "events"}, path)
    name = string(d, "name", path, required=True)
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        fail(f"{path}.name", f"must be letters, digits, '-' or '_' (got {name!r})")
    over = d.get("set") or {}
    if not isinstance(over, Mapping):
        fail(f"{path}.set", "must be a mapping of scenario keys to override")
    raw = merge(base_raw, over)
    if d.get("stages") is not None:
        if "pipeline" not in raw:
            fail(f"{path}.stages", "only for a pipeline scenario (overrides per stage; use set: here)")
        raw = merge_stages(raw, d["stages"], f"{path}.stages")
    try:
        sc = scenario_from_dict(raw, base_dir=base_dir)
    except ConfigError as e:
        raise ConfigError(f"{path}.set (scenario after overrides): {e}") from None
    pipe = sc.pipeline
    if pipe is not None and stack is not None and stack.stage_models is not None:
        for st in pipe.stages:
            known = dict(stack.stage_models.stages)
            if st.name not in known or st.variant not in dict(known[st.name]):
                fail(f"{path}.stages.{st.name}", f"serves variant {st.variant!r}, but model.stages.{st.name} "
                                                 f"names no model for it")
    events = []
    evs = d.get("events") or []
    if not isinstance(evs, list):
        fail(f"{path}.events", "must be a list of {at_s, scale: n} or {at_s, kill: i}"
                               + (" with stage: NAME" if pipe else ""))
    for i, ev in enumerate(evs):
        p = f"{path}.events[{i}]"
        check_keys(ev, {"at_s", "scale", "kill"} | ({"stage"} if pipe else set()), p)
        at = number(ev, "at_s", p, required=True, lo=0)
        if at >= sc.duration_s:
            fail(f"{p}.at_s", f"must be < the run's duration_s ({sc.duration_s}) (got {at})")
        kinds = [k for k in ("scale", "kill") if k in ev]
        if len(kinds) != 1:
            fail(p, "needs exactly one of scale (replica count) or kill (index into the ready replicas)")
        k = kinds[0]
        cluster = sc.cluster
        if pipe is not None:
            names = [st.name for st in pipe.stages]
            stage = string(ev, "stage", p, required=True)
            if stage not in names:
                fail(f"{p}.stage", f"must be one of the pipeline's stages: {', '.join(names)} (got {stage!r})")
            cluster = pipe.stages[names.index(stage)].cluster
        if k == "scale":
            v = number(ev, "scale", p, lo=cluster.min_replicas, hi=cluster.max_replicas, integer=True)
        else:
            v = number(ev, "kill", p, lo=0, integer=True)
        events.append((at, k, v) if pipe is None else (at, k, v, stage))
    return RunSpec(name=name, scenario=sc, events=tuple(sorted(events)))


def measure_config_from_dict(d: Any, source: str = "", base_dir: str = "") -> MeasureConfig:
    try:
        if not isinstance(d, Mapping):
            fail("", f"top level must be a mapping with keys {', '.join(sorted(TOP_KEYS))}")
        check_keys(d, TOP_KEYS, "")
        if ("scenario" in d) == ("scenario_file" in d):
            fail("scenario", "give exactly one of scenario (inline) or scenario_file (a path)")
        if "scenario_file" in d:
            sf = string(d, "scenario_file", "", required=True)
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
                fail("scenario", "must be a mapping (a simulator scenario)")
        try:
            scenario = scenario_from_dict(raw_sc, base_dir=sc_dir)
        except ConfigError as e:
            raise ConfigError(f"scenario.{e}" if "scenario" in d else f"scenario_file: {e}") from None
        stack = parse_stack(d.get("stack"), base_dir=base_dir)
        if scenario.pipeline is not None:
            stack = dataclasses.replace(stack, stage_models=parse_stage_models(d.get("model"), scenario.pipeline,
                                                                               "model", base_dir))
        elif isinstance(d.get("model"), Mapping) and "stages" in d["model"]:
            fail("model.stages", "only with a pipeline scenario (a scenario with a pipeline: block); give one "
                                 "model block here, e.g. model: {builtin: mobilenetv4_conv_small}")
        else:
            stack = dataclasses.replace(stack, model=parse_model(d.get("model"), "model", base_dir))
        batchings = [("", scenario.batching)] if scenario.pipeline is None else \
            [(f"pipeline.stages[{i}].", st.batching) for i, st in enumerate(scenario.pipeline.stages)]
        for where, b in batchings:
            if b.device == "gpu" and not stack.tritonserver and stack.backend == "local":
                fail(f"{where}batching.device", "gpu needs a GPU build of tritonserver: the bundled one is CPU "
                     "only (set stack.tritonserver: PATH, e.g. the binary of NVIDIA's Triton container)")
        m = d.get("measure") or {}
        check_keys(m, {"runs", "sweep", "startup"}, "measure")
        runs_raw = m.get("runs")
        if runs_raw is None:
            runs_raw = [{"name": "baseline"}]
        if not isinstance(runs_raw, list) or not runs_raw:
            fail("measure.runs", "must be a non-empty list of {name, set, events}")
        runs = tuple(parse_run(r, f"measure.runs[{i}]", raw_sc, source, sc_dir, stack) for i, r in enumerate(runs_raw))
        names = [r.name for r in runs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            fail("measure.runs", f"run names must be unique (repeated: {', '.join(dup)})")
        su = m.get("startup") or {}
        check_keys(su, {"samples", "enabled"}, "measure.startup")
        startup = StartupSettings(samples=number(su, "samples", "measure.startup", 5, lo=1, hi=100, integer=True),
                                  enabled=boolean(su, "enabled", "measure.startup", True))
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
