"""Triton Python-backend model `decoder`: an ONNX decoder graph run with
onnxruntime, with the same tensors (names, types, shapes) the onnxruntime
backend would give it.

Written by the LLM Development Platform into a deployment's model repository as
`decoder/1/model.py` when the Triton server at hand has no onnxruntime backend
(the one `nvidia-pytriton` bundles has only the Python backend). The
`text_generation` model calls it through BLS exactly as it calls the
onnxruntime-backend `decoder` of the exported repository. The graph file is the
config's `graph` parameter, beside this file. It needs numpy and onnxruntime in
the Python backend's environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        folder = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        threads = int(parameters.get("threads", {}).get("string_value", "0") or 0)
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / parameters["graph"]["string_value"]), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {}
                for name in self.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise ValueError(f"input {name} is missing")
                    feed[name] = tensor.as_numpy()
                wanted = list(request.requested_output_names()) or self.outputs
                values = self.session.run(wanted, feed)
                tensors = [pb_utils.Tensor(name, value) for name, value in zip(wanted, values)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # this request's failure, told to its caller
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
