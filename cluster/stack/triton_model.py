"""Triton Python-backend model: onnxruntime runs an ONNX model (a built-in or the user's) inside Triton.

This file is copied verbatim into the model repository as ``<model>/1/model.py``
(see :meth:`cluster.stack.served.ServedModel.write_repository`); it is never imported by
servesim itself. The bundled ``tritonserver`` of ``nvidia-pytriton`` has no
onnxruntime backend, so the Python backend hosts onnxruntime; Triton's dynamic
batcher, instance group and queue policy still sit in front of it: every
``execute`` call receives the batch of requests the dynamic batcher formed,
whose inputs are concatenated (per input) and run through onnxruntime once.

Parameters (``config.pbtxt`` ``parameters``):
  onnx_file         model file name inside the version directory
  intra_op_threads  onnxruntime intra-op threads per instance (default 1)

Outputs per request: every output of the graph, sliced to the request's items, and ``replica`` BYTES
[n, 1] -- the name of the replica that served it (``$SERVESIM_REPLICA``, else the host
name, which is the pod name on Kubernetes), so clients can log who served
each request whatever load balancer sits in between.
"""
import json
import os
import socket

import numpy as np
import triton_python_backend_utils as pb_utils

ORT_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(uint16)": np.uint16,
             "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
             "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_}


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"],
                            params.get("onnx_file", "model.onnx"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.replica = (os.environ.get("SERVESIM_REPLICA") or socket.gethostname()).encode()
        # one warm-up run so the first real request does not pay for lazy initialisation
        feed = {}
        for i in self.session.get_inputs():
            shape = [1] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
            feed[i.name] = np.zeros(shape, dtype=ORT_NUMPY.get(i.type, np.float32))
        self.session.run(self.outputs, feed)

    def execute(self, requests):
        feed = {}
        sizes = None
        for name in self.inputs:
            arrays = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            sizes = sizes or [a.shape[0] for a in arrays]
            feed[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        outs = self.session.run(self.outputs, feed)
        responses = []
        start = 0
        for n in sizes:
            tensors = [pb_utils.Tensor(name, out[start:start + n]) for name, out in zip(self.outputs, outs)]
            tensors.append(pb_utils.Tensor("replica", np.full((n, 1), self.replica, dtype=object)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.session = None
