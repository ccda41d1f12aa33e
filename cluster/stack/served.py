"""The model the replicas serve, whatever it is: a built-in, the user's ONNX file, or a model of the user's
Triton model repository (the ``model:`` block, :class:`cluster.stack.config.ModelSpec`).

:func:`resolve` turns the block into a :class:`ServedModel`, which knows

- its Triton name, inputs and outputs (:class:`Tensor`: name, Triton data type, dims without the batch
  axis, ``-1`` = dynamic), read from the ONNX graph (built-in, ``onnx``) or from the model's configuration
  as a running server reports it (``repository``: ``/v2/models/NAME/config``, complete after Triton's
  auto-completion; :meth:`ServedModel.learn_from_server`);
- how to lay out a model repository for a ``batching:`` block (:meth:`ServedModel.write_repository`):
  ONNX models get a generated ``config.pbtxt`` (Python backend running onnxruntime, or Triton's native
  onnxruntime backend); a repository model keeps its own ``config.pbtxt`` with only the batcher's keys
  overridden (:func:`merge_config`);
- what to send (:meth:`ServedModel.items`): the user's sample file (``inputs: sample.npz``), a built-in's
  own generator, or synthetic data by the rule of :func:`synthesise`.

Errors are :class:`simulator.config.ConfigError` (bad input, one line naming the file and what is wrong).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.config import BatchingSpec, ConfigError

from .config import ModelSpec

# Triton data type <-> numpy (the types the synthesiser can make; BYTES / strings it cannot)
NP_DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
# ONNX TensorProto element types -> Triton data types
ONNX_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "BYTES",
              9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
              16: "BF16"}
REPLICA_OUTPUT = "replica"        # the Python-backend model's extra output: the replica that served the request


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str                 # Triton's name: FP32, INT64, UINT8, BYTES ...
    dims: tuple[int, ...]         # without the batch axis; -1 = dynamic

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "dims": list(self.dims)}


def synthesise(t: Tensor, n: int, rng: np.random.Generator, where: str) -> np.ndarray:
    """``n`` items of input ``t`` (shape ``[n, *dims]``), by a rule valid for any model whose inputs are
    pixels, features, token ids, attention masks or token-type ids:

    - ``UINT8``: uniform 0..255 (pixels);
    - other integers: 0 or 1 (a valid token id in any vocabulary, a valid mask or type id);
    - ``BOOL``: random; floats: standard normal.

    A dynamic dimension besides the batch axis, or a type with no rule (``BYTES``, complex, ``BF16``), is
    bad input naming ``where``: such a model needs ``inputs: sample.npz``."""
    if any(d < 0 for d in t.dims):
        raise ConfigError(f"{where}: input {t.name!r} has a dynamic dimension besides the batch axis "
                          f"(dims {list(t.dims)}): servesim cannot choose its size; give model.inputs: sample.npz "
                          f"with a sample of it")
    if t.datatype not in NP_DTYPES:
        raise ConfigError(f"{where}: input {t.name!r} has data type {t.datatype}, which servesim cannot "
                          f"synthesise (it can: {', '.join(NP_DTYPES)}); give model.inputs: sample.npz")
    shape = (n, *t.dims)
    dt = NP_DTYPES[t.datatype]
    if t.datatype == "UINT8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if t.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.issubdtype(dt, np.integer):
        return rng.integers(0, 2, size=shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


# --------------------------------------------------------------------------- ONNX graphs


def onnx_tensors(path: str | Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(inputs, outputs) of an ONNX graph; the first axis of each must be a dynamic batch axis (named
    ``batch`` or any symbol, or unknown). Initializers listed as inputs are left out."""
    import onnx
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError ...
        raise ConfigError(f"{path}: not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'cannot parse'})") from None
    inits = {i.name for i in m.graph.initializer}

    def tensors(vals, what) -> tuple[Tensor, ...]:
        out = []
        for v in vals:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            dt = ONNX_TYPES.get(tt.elem_type, f"ONNX type {tt.elem_type}")
            dims = [(d.dim_value if d.HasField("dim_value") else -1) for d in tt.shape.dim]
            if not dims or dims[0] != -1:
                raise ConfigError(f"{path}: {what} {v.name!r} has no dynamic batch axis (shape {dims or 'scalar'}); "
                                  f"Triton's dynamic batcher needs the first axis of every input and output to be "
                                  f"a dynamic batch axis (export with dynamic_axes={{'{v.name}': {{0: 'batch'}}}})")
            out.append(Tensor(v.name, dt, tuple(dims[1:])))
        return tuple(out)
    ins, outs = tensors(m.graph.input, "input"), tensors(m.graph.output, "output")
    if not ins or not outs:
        raise ConfigError(f"{path}: the graph has no {'inputs' if not ins else 'outputs'}")
    return ins, outs


# --------------------------------------------------------------------------- config.pbtxt


def _tensor_lines(kind: str, ts) -> list[str]:
    lines = [f"{kind} ["]
    for i, t in enumerate(ts):
        lines += ["  {", f'    name: "{t.name}"', f"    data_type: TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                  f"    dims: [ {', '.join(str(d) for d in t.dims) or '1'} ]", "  }" + ("," if i < len(ts) - 1 else "")]
    return lines + ["]"]


def instance_group_lines(b: BatchingSpec) -> list[str]:
    kind = "KIND_GPU" if b.device == "gpu" else "KIND_CPU"
    gpus = [f"    gpus: [ {', '.join(str(g) for g in b.gpus)} ]"] if b.gpus else []
    return ["instance_group [", "  {", f"    count: {b.instances}", f"    kind: {kind}", *gpus, "  }", "]"]


def dynamic_batching_lines(b: BatchingSpec) -> list[str]:
    lines = ["dynamic_batching {"]
    if b.preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(p) for p in b.preferred_batch_sizes)} ]")
    lines.append(f"  max_queue_delay_microseconds: {b.max_queue_delay_us}")
    if b.max_queue_size or b.queue_timeout_us:
        lines.append("  default_queue_policy {")
        if b.queue_timeout_us:
            lines += ["    timeout_action: REJECT", f"    default_timeout_microseconds: {b.queue_timeout_us}",
                      "    allow_timeout_override: false"]
        if b.max_queue_size:
            lines.append(f"    max_queue_size: {b.max_queue_size}")
        lines.append("  }")
    return lines + ["}"]


def onnx_config_pbtxt(name: str, inputs, outputs, b: BatchingSpec, backend: str, onnx_threads: int = 1) -> str:
    """``config.pbtxt`` of an ONNX model with the batcher of ``b``: ``backend`` ``python`` (onnxruntime inside
    :mod:`cluster.stack.triton_model`, which adds the ``replica`` output) or ``onnxruntime`` (native)."""
    outs = list(outputs) + ([Tensor(REPLICA_OUTPUT, "BYTES", (1,))] if backend == "python" else [])
    lines = [f'name: "{name}"', f'backend: "{backend}"', f"max_batch_size: {b.max_batch_size}"]
    if backend == "onnxruntime":
        lines.append('default_model_filename: "model.onnx"')
    lines += _tensor_lines("input", inputs) + _tensor_lines("output", outs)
    lines += instance_group_lines(b) + dynamic_batching_lines(b)
    if backend == "python":
        lines += ["parameters [", '  { key: "onnx_file", value: { string_value: "model.onnx" } },',
                  f'  {{ key: "intra_op_threads", value: {{ string_value: "{int(onnx_threads)}" }} }}', "]"]
    else:
        lines += ["parameters [",
                  f'  {{ key: "intra_op_thread_count", value: {{ string_value: "{int(onnx_threads)}" }} }},',
                  '  { key: "inter_op_thread_count", value: { string_value: "1" } }', "]"]
    return "\n".join(lines) + "\n"


# the keys of a user's config.pbtxt that the batching: block owns (README and cluster.config say the same)
OVERRIDDEN_KEYS = ("max_batch_size", "instance_group", "dynamic_batching.preferred_batch_size",
                   "dynamic_batching.max_queue_delay_microseconds", "dynamic_batching.default_queue_policy")


def merge_config(text: str, b: BatchingSpec, where: str) -> str:
    """The user's ``config.pbtxt`` with the keys of :data:`OVERRIDDEN_KEYS` set from ``b``; every other key
    (name, backend/platform, inputs, outputs, parameters, optimization, version policy, the rest of
    ``dynamic_batching``) kept as written. A model that does not batch (``max_batch_size: 0``) is refused:
    its dims include the batch axis, and servesim measures the dynamic batcher."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise ConfigError(f"{where}: not a valid Triton model configuration: {e}") from None
    if cfg.max_batch_size == 0 and "max_batch_size" in text:
        raise ConfigError(f"{where}: max_batch_size is 0 (the model does not batch); servesim measures Triton's "
                          f"dynamic batcher: use a model configured with max_batch_size >= 1")
    cfg.max_batch_size = b.max_batch_size
    del cfg.instance_group[:]
    cfg.instance_group.add(count=b.instances, gpus=list(b.gpus),
                           kind=mc.ModelInstanceGroup.KIND_GPU if b.device == "gpu" else mc.ModelInstanceGroup.KIND_CPU)
    db = cfg.dynamic_batching
    del db.preferred_batch_size[:]
    db.preferred_batch_size.extend(b.preferred_batch_sizes)
    db.max_queue_delay_microseconds = b.max_queue_delay_us
    db.ClearField("default_queue_policy")
    if b.max_queue_size:
        db.default_queue_policy.max_queue_size = b.max_queue_size
    if b.queue_timeout_us:
        db.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT
        db.default_queue_policy.default_timeout_microseconds = b.queue_timeout_us
        db.default_queue_policy.allow_timeout_override = False
    if not db.ListFields():
        db.SetInParent()          # an empty dynamic_batching {} still turns the batcher on
    return text_format.MessageToString(cfg)


# --------------------------------------------------------------------------- the served model


@dataclass
class ServedModel:
    spec: ModelSpec
    name: str
    backend: str                               # python | onnxruntime | the repository's own ("repository")
    inputs: tuple[Tensor, ...] = ()
    outputs: tuple[Tensor, ...] = ()
    onnx_file: Path | None = None
    source_dir: Path | None = None             # repository: <repo>/<name>
    info: dict = field(default_factory=dict)   # for the manifest
    _sample: dict | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def where(self) -> str:
        """The file the user named (for error messages)."""
        return str(self.onnx_file if self.kind == "onnx" else self.source_dir if self.source_dir else
                   f"model.builtin {self.name}")

    @property
    def client_outputs(self) -> list[str]:
        """The outputs a client asks for: the first output, and ``replica`` when the model has it."""
        names = [self.outputs[0].name] if self.outputs else []
        return names + ([REPLICA_OUTPUT] if self.backend == "python" else [])

    # ---------------------------------------------------------------- repository
    def config_pbtxt(self, b: BatchingSpec, onnx_threads: int = 1) -> str:
        if self.kind == "repository":
            src = self.source_dir / "config.pbtxt"
            text = src.read_text() if src.exists() else f'name: "{self.name}"\n'
            return merge_config(text, b, str(src))
        return onnx_config_pbtxt(self.name, self.inputs, self.outputs, b, self.backend, onnx_threads)

    def write_repository(self, repo: str | Path, b: BatchingSpec, onnx_threads: int = 1) -> Path:
        """``repo/<name>/`` laid out for ``b``; returns ``repo``. ONNX models: ``config.pbtxt``, ``1/model.onnx``
        (a symlink to the file) and, for the Python backend, ``1/model.py``. Repository models: every entry
        of the user's model folder symlinked, ``config.pbtxt`` merged (:func:`merge_config`)."""
        repo = Path(repo)
        mdir = repo / self.name
        mdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "repository":
            for e in self.source_dir.iterdir():
                if e.name != "config.pbtxt":
                    _link(e.resolve(), mdir / e.name)
        else:
            vdir = mdir / "1"
            vdir.mkdir(exist_ok=True)
            if self.backend == "python":
                shutil.copyfile(Path(__file__).with_name("triton_model.py"), vdir / "model.py")
            _link(Path(self.onnx_file).resolve(), vdir / "model.onnx")
        (mdir / "config.pbtxt").write_text(self.config_pbtxt(b, onnx_threads))
        return repo

    # ---------------------------------------------------------------- inputs
    def learn_from_server(self, config: dict) -> None:
        """Inputs and outputs from the model's configuration as a server reports it
        (``GET /v2/models/<name>/config``, JSON); used for repository models."""
        def ts(key):
            out = []
            for t in config.get(key) or []:
                dt = str(t.get("data_type", "")).replace("TYPE_", "")
                out.append(Tensor(t["name"], "BYTES" if dt == "STRING" else dt,
                                  tuple(int(d) for d in t.get("dims") or [])))
            return tuple(out)
        if int(config.get("max_batch_size") or 0) < 1:
            raise ConfigError(f"{self.where}: the server reports max_batch_size {config.get('max_batch_size')} for "
                              f"model {self.name!r}; servesim measures Triton's dynamic batcher: use a model "
                              f"configured with max_batch_size >= 1")
        self.inputs, self.outputs = ts("input"), ts("output")
        if not self.inputs:
            raise ConfigError(f"{self.where}: the server reports no inputs for model {self.name!r}")
        self.info.update(inputs=[t.to_dict() for t in self.inputs], outputs=[t.to_dict() for t in self.outputs],
                         server_config=config)
        self.check_inputs()

    def check_inputs(self) -> None:
        """Every input can be sent: from the sample file (names and dims checked) or synthesised."""
        if self.spec.inputs:
            self._sample = load_sample(self.spec.inputs, self.inputs)
        else:
            rng = np.random.default_rng(0)
            for t in self.inputs:
                synthesise(t, 1, rng, self.where)

    def items(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` items of every input (``{name: [n, *dims]}``): the sample file's (cycled), a built-in's own
        generator, or :func:`synthesise`."""
        if self.spec.inputs:
            if self._sample is None:
                self._sample = load_sample(self.spec.inputs, self.inputs)
            k = next(iter(self._sample.values())).shape[0]
            idx = (np.arange(n) + seed) % k
            return {name: a[idx] for name, a in self._sample.items()}
        if self.kind == "builtin":
            from .builtins import builtin_items
            got = builtin_items(self.spec.builtin, n, seed)
            if got is not None:
                return got
        rng = np.random.default_rng([seed, 7])
        return {t.name: synthesise(t, n, rng, self.where) for t in self.inputs}

    def request_file(self, path: str | Path, n_requests: int, batch: int = 1, seed: int = 0) -> str:
        """An ``.npz`` of ``n_requests`` request payloads of ``batch`` items each (``{name: [n_requests, batch,
        *dims]}``), for the load generator (which must not import the model)."""
        it = self.items(n_requests * batch, seed)
        np.savez(path, **{k: v.reshape(n_requests, batch, *v.shape[1:]) for k, v in it.items()})
        return str(path)

    def load_plan(self, workdir: str | Path, seed: int = 0, n_requests: int = 8, batch: int = 1) -> dict:
        """The load generator's plan keys for this model: ``model``, ``inputs_file`` (written into
        ``workdir``), ``outputs`` (:func:`cluster.stack.loadgen.run_load`)."""
        Path(workdir).mkdir(parents=True, exist_ok=True)
        f = self.request_file(Path(workdir) / f"inputs-b{batch}.npz", n_requests, batch, seed)
        return {"model": self.name, "inputs_file": f, "outputs": self.client_outputs}

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "backend": self.backend, "spec": self.spec.to_dict(),
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                **{k: v for k, v in self.info.items() if k not in ("inputs", "outputs")}}


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        else:
            dst.unlink()
    os.symlink(src, dst)


def load_sample(path: str, inputs) -> dict[str, np.ndarray]:
    """The user's sample file: one array per input name, first axis = items, the rest = the input's dims
    (dynamic dims: any size); a missing or extra name, or a dims mismatch, is bad input naming the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
    except Exception as e:
        raise ConfigError(f"{path}: cannot read the sample inputs ({type(e).__name__}: {e})") from None
    want = {t.name: t for t in inputs}
    missing = sorted(set(want) - set(arrs))
    if missing:
        raise ConfigError(f"{path}: no array for input {missing[0]!r} (the model's inputs: {', '.join(want)}; "
                          f"the file has: {', '.join(arrs) or 'nothing'})")
    n = {k: arrs[k].shape[0] if arrs[k].ndim else 0 for k in want}
    if len(set(n.values())) != 1 or 0 in n.values():
        raise ConfigError(f"{path}: every input needs the same number (>= 1) of items on the first axis (got "
                          f"{', '.join(f'{k}: {v}' for k, v in n.items())})")
    for k, t in want.items():
        a = arrs[k]
        ok = a.ndim == len(t.dims) + 1 and all(d < 0 or d == s for d, s in zip(t.dims, a.shape[1:]))
        if not ok:
            raise ConfigError(f"{path}: array {k!r} has shape {list(a.shape)}; the model wants [items, "
                              f"{', '.join(str(d) for d in t.dims)}]")
        if t.datatype in NP_DTYPES and a.dtype != NP_DTYPES[t.datatype]:
            arrs[k] = a.astype(NP_DTYPES[t.datatype])
    return {k: arrs[k] for k in want}


def resolve(spec: ModelSpec, bundled_server: bool = True, seed: int = 0) -> ServedModel:
    """The :class:`ServedModel` of a ``model:`` block. Built-ins are exported to ONNX now if not cached;
    ONNX graphs are read (batch axis, input types checked); a repository model's inputs come later, from the
    server (:meth:`ServedModel.learn_from_server`). ``bundled_server``: the server is nvidia-pytriton's
    (only the Python backend), which decides ``backend: auto``."""
    backend = spec.backend if spec.backend != "auto" else ("python" if bundled_server else "onnxruntime")
    if spec.kind == "repository":
        src = Path(spec.repository) / spec.name
        return ServedModel(spec, spec.name, "repository", source_dir=src,
                           info={"repository": str(spec.repository), "config_pbtxt": str(src / "config.pbtxt")})
    if spec.kind == "builtin":
        from .builtins import builtin_export
        path, info = builtin_export(spec.builtin, seed)
        name = spec.name or spec.builtin
    else:
        path, info = Path(spec.onnx), {"architecture": "user's ONNX file"}
        name = spec.name or _model_name(Path(spec.onnx).stem)
    ins, outs = onnx_tensors(path)
    import hashlib
    h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    m = ServedModel(spec, name, backend, ins, outs, onnx_file=Path(path),
                    info={**info, "onnx_file": str(path), "onnx_sha256": h,
                          "serving": "Triton Python backend running onnxruntime" if backend == "python"
                          else "Triton's onnxruntime backend"})
    m.check_inputs()
    return m


def _model_name(stem: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    return s or "model"


_RESOLVED: dict = {}


def bundled_server(stack, local: bool = False) -> bool:
    """Whether ``stack``'s replicas run nvidia-pytriton's bundled server (Python backend only): locally
    unless ``stack.tritonserver`` names another; on Kubernetes with ``image_kind: pytriton``. ``local``: the
    server this machine runs (the sweep's), whatever the backend."""
    if stack.backend == "kubernetes" and not local:
        return stack.kubernetes.image_kind == "pytriton"
    return not stack.tritonserver


def served_for(stack, local: bool = False) -> ServedModel:
    """The :class:`ServedModel` of ``stack.model`` on ``stack``'s server (:func:`bundled_server`), resolved
    once per process (built-ins exported, graphs read; a repository model's inputs, once learned, stay
    learned and are shared by both servers)."""
    key = (stack.model, bundled_server(stack, local))
    if key not in _RESOLVED:
        m = resolve(stack.model, bundled_server=key[1])
        twin = next((v for (spec, _), v in _RESOLVED.items() if spec == stack.model and v.inputs), None)
        if twin is not None and not m.inputs:
            m.inputs, m.outputs, m.info = twin.inputs, twin.outputs, dict(twin.info)
        _RESOLVED[key] = m
    return _RESOLVED[key]
