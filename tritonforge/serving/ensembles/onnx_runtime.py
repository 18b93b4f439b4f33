"""Triton python-backend model that runs an ONNX model with ONNX Runtime (CPU).

Used only by `tritonforge serve`: the tritonserver in the nvidia-pytriton wheel has no
onnxruntime backend, so each ONNX model of the repository is served by this file, with the
model's own config (inputs, outputs, max_batch_size, dynamic batching) and its own model.onnx.

This file runs inside Triton's Python stub: it imports only numpy, onnxruntime and Triton's
`triton_python_backend_utils`, never tritonforge. Parameters come from the config:
  onnx_file            the graph beside this file in the version folder (default model.onnx)
  intra_op_threads     ONNX Runtime intra-op threads (0: ONNX Runtime's default)
  max_sequence_length  longest dynamic axis accepted (0: no limit); longer inputs are refused
                       with an error that says so, instead of failing inside the graph
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def invalid_argument(message: str):
    """An error response that tells the client the request was wrong (gRPC INVALID_ARGUMENT)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)


def _parameters(config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.model_name = args["model_name"]
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: this server shares the CPU with the
        # tokenizer's stub, Triton's own threads and often its clients, and spinning threads
        # take cores from them (measured here: batch 1 at 2 threads, 3.9 ms vs 9.3 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(folder, parameters.get("onnx_file", "model.onnx"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [(spec["name"], [int(d) for d in spec["dims"]]) for spec in config["input"]]
        self.outputs = [spec["name"] for spec in config["output"]]
        self.max_length = int(parameters.get("max_sequence_length", "0"))

    def execute(self, requests: list) -> list:
        """Requests with equal shapes (what the dynamic batcher merges) run as one batch."""
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name, _dims in self.inputs}
            problem = self._too_long(feed)
            if problem:
                responses[index] = invalid_argument(problem)
                continue
            shapes = tuple(feed[name].shape[1:] for name, _dims in self.inputs)
            groups.setdefault(shapes, []).append((index, feed))
        for members in groups.values():
            for index, response in self._run_group(members):
                responses[index] = response
        return responses

    def _too_long(self, feed: dict[str, np.ndarray]) -> str | None:
        if not self.max_length:
            return None
        for name, dims in self.inputs:
            shape = feed[name].shape
            for axis, declared in enumerate(dims, start=1):
                if declared == -1 and shape[axis] > self.max_length:
                    return (f"input '{name}' has {shape[axis]} positions on axis {axis} (shape "
                            f"{list(shape)}); model '{self.model_name}' accepts at most "
                            f"{self.max_length}: truncate the input to {self.max_length} tokens")
        return None

    def _run_group(self, members: list) -> list:
        sizes = [len(next(iter(feed.values()))) for _index, feed in members]
        batch = {name: np.concatenate([feed[name] for _index, feed in members]) if len(members) > 1
                 else members[0][1][name] for name, _dims in self.inputs}
        try:
            outputs = self.session.run(self.outputs, batch)
        except Exception as exc:  # ONNX Runtime's own error types; its message names the node
            shapes = ", ".join(f"{name} {list(members[0][1][name].shape)}" for name, _dims in self.inputs)
            message = (f"ONNX Runtime could not run model '{self.model_name}' on inputs {shapes}: "
                       f"{str(exc).splitlines()[0][:400]}")
            return [(index, invalid_argument(message)) for index, _feed in members]
        results, start = [], 0
        for (index, _feed), size in zip(members, sizes, strict=True):
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + size]))
                       for name, out in zip(self.outputs, outputs, strict=True)]
            results.append((index, pb_utils.InferenceResponse(output_tensors=tensors)))
            start += size
        return results
