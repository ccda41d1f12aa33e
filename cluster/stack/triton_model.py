"""Triton Python-backend model: onnxruntime runs MobileNetV4-Conv-Small inside Triton.

This file is copied verbatim into the model repository as ``<model>/1/model.py``
(see :func:`cluster.stack.triton.write_model_repository`); it is never imported by
servesim itself. The bundled ``tritonserver`` of ``nvidia-pytriton`` has no
onnxruntime backend, so the Python backend hosts onnxruntime; Triton's dynamic
batcher, instance group and queue policy still sit in front of it: every
``execute`` call receives the batch of requests the dynamic batcher formed,
which is concatenated and run through onnxruntime once.

Parameters (``config.pbtxt`` ``parameters``):
  onnx_file         model file name inside the version directory
  intra_op_threads  onnxruntime intra-op threads per instance (default 1)

Outputs per request: ``logits`` FP32 [n, 1000] and ``replica`` BYTES [n, 1] --
the name of the replica that served it (``$SERVESIM_REPLICA``, else the host
name, which is the pod name on Kubernetes), so clients can log who served
each request whatever load balancer sits in between.
"""
import json
import os
import socket

import numpy as np
import triton_python_backend_utils as pb_utils


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
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.replica = (os.environ.get("SERVESIM_REPLICA") or socket.gethostname()).encode()
        # one warm-up run so the first real request does not pay for lazy initialisation
        shape = [1] + [d if isinstance(d, int) else 1 for d in self.session.get_inputs()[0].shape[1:]]
        self.session.run([self.output_name], {self.input_name: np.zeros(shape, dtype=np.uint8)})

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        responses = []
        start = 0
        for n in sizes:
            rep = np.full((n, 1), self.replica, dtype=object)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(self.output_name, out[start:start + n]),
                pb_utils.Tensor("replica", rep)]))
            start += n
        return responses

    def finalize(self):
        self.session = None
