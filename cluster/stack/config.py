"""How the real stack runs: the ``stack:`` block of a measurement file (backend, server binary, ports,
threads, timeouts, the Kubernetes settings) and the ``model:`` block (what is served). Parsed with
:mod:`simulator.schema`; errors name the key path and the allowed values, e.g. ``stack.backend: must be
one of local, kubernetes (got 'docker')``.

``model:`` (:class:`ModelSpec`), exactly one of:

- ``{builtin: NAME}`` (default ``mobilenetv4_conv_small``; also ``text_encoder_small``,
  ``mobilenetv4_conv_medium``, ``label_encoder_small``: :mod:`cluster.stack.builtins`): a model of servesim's,
  exported to ONNX once into the cache;
- ``{onnx: path/to/model.onnx}``: the user's ONNX file, served like the built-ins (inputs and outputs read
  from the graph; the first axis of every input and output must be a dynamic batch axis);
- ``{repository: DIR, name: NAME}``: model ``NAME`` of the user's Triton model repository ``DIR``, served
  with its own ``config.pbtxt``, only the batcher keys of the scenario's ``batching:`` block overridden
  (see :mod:`cluster.stack.served`).

A pipeline scenario (``pipeline:``) names a model per stage and variant instead (:class:`StageModels`,
:func:`parse_stage_models`)::

    model:
      stages:
        image:                       # a stage with variants: one model block per variant
          variants:
            small: {builtin: mobilenetv4_conv_small}
            medium: {builtin: mobilenetv4_conv_medium}
        labels: {builtin: label_encoder_small}   # a stage with one variant: its model block

Every stage and every variant needs one; a name that is not a stage or a variant of the pipeline is bad
input. The client sends stage k's first output as stage k+1's only input (checked before anything runs).

plus, for any of them, ``inputs: sample.npz`` (request payloads to send instead of generated ones: one array
per input name, first axis = items) and, for ``onnx`` / ``builtin``, ``name`` (the Triton model name) and
``backend`` (``auto`` | ``python`` | ``onnxruntime``: the Python backend running onnxruntime, which the
bundled server has, or Triton's native onnxruntime backend, which the official server images have; ``auto``
picks ``python`` on the bundled server and ``onnxruntime`` on any other). Relative paths are relative to the
measurement file.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from simulator.schema import boolean, check_keys, choice, fail, number, string

BACKENDS = ("local", "kubernetes")
BUILTIN_MODELS = ("mobilenetv4_conv_small", "text_encoder_small", "mobilenetv4_conv_medium", "label_encoder_small")
MODEL_BACKENDS = ("auto", "python", "onnxruntime")
K8S_IMAGE_KINDS = ("official", "pytriton")
# NVIDIA's Triton container release whose server matches the bundled one (tritonserver 2.51.0 = 24.10)
OFFICIAL_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
PYTRITON_IMAGE = "localhost:32000/servesim-triton:0.1"
MODELS_IMAGE = "localhost:32000/servesim-models:0.1"


@dataclass(frozen=True)
class ModelSpec:
    """What the replicas serve (the ``model:`` block; see the module docstring)."""

    builtin: str = "mobilenetv4_conv_small"
    onnx: str = ""
    repository: str = ""
    name: str = ""
    inputs: str = ""
    backend: str = "auto"

    @property
    def kind(self) -> str:
        return "onnx" if self.onnx else "repository" if self.repository else "builtin"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {self.kind: {"builtin": self.builtin, "onnx": self.onnx,
                                         "repository": self.repository}[self.kind]}
        if self.name:
            d["name"] = self.name
        if self.inputs:
            d["inputs"] = self.inputs
        if self.backend != "auto":
            d["backend"] = self.backend
        return d


def _existing(d: dict, key: str, path: str, base_dir: str, what: str, is_dir: bool = False) -> str:
    """The path of ``d[key]`` (relative to ``base_dir``), which must exist (a file, or a folder)."""
    v = string(d, key, path, required=True)
    p = v if os.path.isabs(v) or not base_dir else os.path.normpath(os.path.join(base_dir, v))
    if not os.path.exists(p):
        fail(f"{path}.{key}", f"{what} not found: {p}")
    if is_dir and not os.path.isdir(p):
        fail(f"{path}.{key}", f"must be a folder (a Triton model repository), got the file {p}")
    if not is_dir and os.path.isdir(p):
        fail(f"{path}.{key}", f"must be a file ({what}), got the folder {p}")
    return p


def parse_model(d: Any, path: str = "model", base_dir: str = "") -> ModelSpec:
    if d is None:
        return ModelSpec()
    check_keys(d, {"builtin", "onnx", "repository", "name", "inputs", "backend"}, path)
    kinds = [k for k in ("builtin", "onnx", "repository") if k in d]
    if len(kinds) > 1:
        fail(path, f"give one of builtin, onnx or repository (got {', '.join(kinds)})")
    kind = kinds[0] if kinds else "builtin"
    inputs = _existing(d, "inputs", path, base_dir, "sample input file (.npz)") if "inputs" in d else ""
    if inputs and not inputs.endswith(".npz"):
        fail(f"{path}.inputs", f"must be a .npz file (numpy.savez: one array per input name), got {inputs}")
    name = string(d, "name", path, "") or ""
    if name and not all(c.isalnum() or c in "-_." for c in name):
        fail(f"{path}.name", f"must be letters, digits, '-', '_' or '.' (got {name!r})")
    backend = choice(d, "backend", path, MODEL_BACKENDS, "auto")
    if kind == "builtin":
        return ModelSpec(builtin=choice(d, "builtin", path, BUILTIN_MODELS, "mobilenetv4_conv_small"), name=name,
                         inputs=inputs, backend=backend)
    if kind == "onnx":
        return ModelSpec(onnx=_existing(d, "onnx", path, base_dir, "ONNX model file"), name=name, inputs=inputs,
                         backend=backend)
    if "backend" in d:
        fail(f"{path}.backend", "not used with repository (the repository's config.pbtxt names its backend)")
    repo = _existing(d, "repository", path, base_dir, "model repository", is_dir=True)
    if not name:
        fail(f"{path}.name", f"is required with repository: the model to serve from {repo}")
    if not os.path.isdir(os.path.join(repo, name)):
        held = sorted(e for e in os.listdir(repo) if os.path.isdir(os.path.join(repo, e)))
        fail(f"{path}.name", f"no model {name!r} in repository {repo} (it holds: {', '.join(held) or 'nothing'})")
    return ModelSpec(builtin="", repository=repo, name=name, inputs=inputs)


@dataclass(frozen=True)
class StageModels:
    """What each stage of a pipeline serves: ``stages`` = ((stage, ((variant, ModelSpec), ...)), ...) in the
    pipeline's order (the ``model: {stages: ...}`` block of a pipeline measurement)."""

    stages: tuple[tuple[str, tuple[tuple[str, ModelSpec], ...]], ...]

    def spec(self, stage: str, variant: str) -> ModelSpec:
        return dict(dict(self.stages)[stage])[variant]

    def variants(self, stage: str) -> tuple[str, ...]:
        return tuple(v for v, _ in dict(self.stages)[stage])

    def to_dict(self) -> dict:
        return {"stages": {st: {"variants": {v: m.to_dict() for v, m in vs}} for st, vs in self.stages}}


MODEL_KEYS = {"builtin", "onnx", "repository", "name", "inputs", "backend"}


def parse_stage_models(d: Any, pipeline, path: str = "model", base_dir: str = "") -> StageModels:
    """The ``model:`` block of a pipeline measurement against ``pipeline`` (a
    :class:`simulator.config.PipelineSpec`): ``{stages: {STAGE: MODEL | {variants: {VARIANT: MODEL}}}}``."""
    names = [st.name for st in pipeline.stages]
    example = f"{path}: {{stages: {{{names[0]}: {{builtin: ...}}, ...}}}}"
    if d is None:
        fail(path, f"a pipeline scenario needs a model per stage ({', '.join(names)}): {example}")
    if isinstance(d, Mapping) and set(d) & MODEL_KEYS:
        fail(path, f"a pipeline scenario gives one model per stage, not one for all: {example}")
    check_keys(d, {"stages"}, path)
    sd = d.get("stages")
    if not isinstance(sd, Mapping) or not sd:
        fail(f"{path}.stages", f"must map each stage ({', '.join(names)}) to its model")
    for name in sd:
        if name not in names:
            fail(f"{path}.stages.{name}", f"no stage {name!r} in the pipeline (its stages: {', '.join(names)})")
    out = []
    for st in pipeline.stages:
        p = f"{path}.stages.{st.name}"
        if st.name not in sd:
            fail(f"{path}.stages", f"no model for stage {st.name!r}: give {p}: {{builtin: ...}}")
        e = sd[st.name]
        vnames = [v.name for v in st.variants]
        if isinstance(e, Mapping) and "variants" in e:
            check_keys(e, {"variants"}, p)
            vd = e["variants"]
            if not isinstance(vd, Mapping):
                fail(f"{p}.variants", f"must map each variant ({', '.join(vnames)}) to its model")
            for v in vd:
                if v not in vnames:
                    fail(f"{p}.variants.{v}",
                         f"no variant {v!r} in stage {st.name} (its variants: {', '.join(vnames)})")
            for v in vnames:
                if v not in vd:
                    fail(f"{p}.variants", f"no model for variant {v!r} of stage {st.name}: give {p}.variants.{v}: "
                                          f"{{builtin: ...}}")
            out.append((st.name, tuple((v, parse_model(vd[v], f"{p}.variants.{v}", base_dir)) for v in vnames)))
        else:
            if len(vnames) > 1:
                fail(p, f"stage {st.name} has variants {', '.join(vnames)}: give one model per variant "
                        f"({p}: {{variants: {{{vnames[0]}: {{builtin: ...}}, ...}}}})")
            if e is None:
                fail(p, "needs a model block, e.g. {builtin: label_encoder_small}")
            out.append((st.name, ((vnames[0], parse_model(e, p, base_dir)),)))
    return StageModels(tuple(out))


@dataclass(frozen=True)
class KubernetesSettings:
    """Kubernetes backend settings (see ``configs/k8s/`` and the README's MicroK8s section)."""

    namespace: str = "servesim"
    manifests: str = ""                 # directory with the manifests; default <repo>/configs/k8s
    kubeconfig: str = ""                # default: $KUBECONFIG or ~/.kube/config, else in-cluster
    context: str = ""
    api_url: str = ""                   # talk to this API server directly (tests, kubectl proxy)
    service_url: str = "http://127.0.0.1:30800"   # where the load generator reaches the Service (NodePort)
    image: str = ""                     # the Triton server image (default: OFFICIAL_IMAGE or PYTRITON_IMAGE)
    image_kind: str = "official"        # official: NVIDIA's tritonserver image serving the model repository
    #                                     that the init container lays out; pytriton: servesim's own image
    #                                     (configs/k8s/Dockerfile: bundled CPU server, built-in models only)
    models_image: str = MODELS_IMAGE    # the init container's image: holds the model repository in /models
    hpa: bool = False                   # also apply the HorizontalPodAutoscaler manifest
    request_timeout_s: float = 5.0
    stage: str = ""                     # a pipeline stage's deployment (its own names; set by for_stage)
    stage_index: int = 0                # ... its position (its Service's NodePort and URL port: + index)

    @property
    def server_image(self) -> str:
        return self.image or (OFFICIAL_IMAGE if self.image_kind == "official" else PYTRITON_IMAGE)


@dataclass(frozen=True)
class StackSettings:
    backend: str = "local"
    tritonserver: str = ""              # a tritonserver binary to run (default: the one bundled in nvidia-pytriton)
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
    model: ModelSpec = field(default_factory=ModelSpec)   # the measurement file's top-level model: block
    stage_models: StageModels | None = None               # a pipeline's: the model of each stage and variant

    def for_stage(self, k: int, stage: str, variant: str) -> "StackSettings":
        """The settings of stage ``k`` (named ``stage``) of a pipeline serving ``variant``: its model, and
        fixed ports moved out of the other stages' way (load balancer ``lb_port + k``, replicas from
        ``base_port + 200 k``; on Kubernetes the stage's own resource names and NodePort ``+ k``:
        :mod:`cluster.stack.kubernetes`)."""
        return dataclasses.replace(self, model=self.stage_models.spec(stage, variant), stage_models=None,
                                   lb_port=self.lb_port + k if self.lb_port else 0,
                                   base_port=self.base_port + 200 * k if self.base_port else 0,
                                   kubernetes=dataclasses.replace(self.kubernetes, stage=stage, stage_index=k))


def parse_kubernetes(d: Any, path: str) -> KubernetesSettings:
    d = d or {}
    check_keys(d, {"namespace", "manifests", "kubeconfig", "context", "api_url", "service_url", "image",
                    "image_kind", "models_image", "hpa", "request_timeout_s"}, path)
    return KubernetesSettings(
        namespace=string(d, "namespace", path, "servesim"), manifests=string(d, "manifests", path, ""),
        kubeconfig=string(d, "kubeconfig", path, ""), context=string(d, "context", path, ""),
        api_url=string(d, "api_url", path, ""),
        service_url=string(d, "service_url", path, "http://127.0.0.1:30800"),
        image=string(d, "image", path, ""), image_kind=choice(d, "image_kind", path, K8S_IMAGE_KINDS, "official"),
        models_image=string(d, "models_image", path, MODELS_IMAGE), hpa=boolean(d, "hpa", path, False),
        request_timeout_s=number(d, "request_timeout_s", path, 5.0, lo=0, lo_open=True))


def parse_stack(d: Any, path: str = "stack", base_dir: str = "") -> StackSettings:
    d = d or {}
    check_keys(d, {"backend", "tritonserver", "onnx_threads", "lb_port", "base_port", "ready_timeout_s", "drain_timeout_s",
                    "scrape_interval_s", "health_check_ms", "request_timeout_s", "max_inflight",
                    "kubernetes"}, path)
    return StackSettings(
        backend=choice(d, "backend", path, BACKENDS, "local"),
        tritonserver=_existing(d, "tritonserver", path, base_dir, "tritonserver binary")
        if d.get("tritonserver") else "",
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
