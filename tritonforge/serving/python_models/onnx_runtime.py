"""Triton python-backend model that runs an ONNX model with ONNX Runtime or OpenVINO (CPU).

Used only by `tritonforge serve`: the tritonserver in the nvidia-pytriton wheel has no
onnxruntime backend, so each ONNX model of the repository is served by this file, with the
model's own config (inputs, outputs, max_batch_size, dynamic batching) and its own model.onnx.

This file runs inside Triton's Python stub: it imports only numpy, onnxruntime (or openvino)
and Triton's `triton_python_backend_utils`, never tritonforge. Parameters come from the config:
  onnx_file            the graph beside this file in the version folder (default model.onnx)
  runtime              onnxruntime, or openvino for a model whose config names Triton's
                       openvino backend (its HINT_BF16 parameter selects bfloat16, as there)
  intra_op_threads     ONNX Runtime intra-op threads, OpenVINO inference threads (0: default)
  max_sequence_length  longest dynamic axis accepted (0: no limit); longer inputs, and empty
                       ones (0 positions), are refused instead of failing inside the graph
  value_ranges         JSON {input: [low, high, what]}: an integer input's values must lie in
                       low..high (token ids below the vocabulary size, token types, mask values);
                       outside it ONNX Runtime would fail in a Gather or compute on nonsense
  sequence_state       a streaming model's implicit state, as JSON [{input, output, dims, dtype}]
                       (`tritonforge serve` moves it here from `sequence_batching`)
  sequence_idle_us     how long a silent sequence's state is kept

A streaming model runs under Triton's sequence batcher. The production onnxruntime backend keeps
its implicit state; the python backend does not, so this wrapper keeps it per correlation ID:
zeros at START, the state output fed back as the next frame's state input, dropped at END or
after `sequence_idle_us` without a frame. Frames of different sequences that Triton merges into
one call run as one batch, their states stacked in the same order.

Every refusal is INVALID_ARGUMENT and names the input, the offending value or row and the limit,
and is checked before anything runs: non-finite floats, too long or empty, values out of range.
The last two are also written into model.onnx by the export (tritonforge/export/input_guards.py):
in production, without this wrapper, the graph itself fails on them, with the runtime's error.
Triton itself refuses wrong dtypes, ranks, dims and batches above
max_batch_size before this model sees the request.
"""

from __future__ import annotations

import json
import os
import time

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


def first_line(exc: Exception) -> str:
    """The first line of a runtime's error that says something (OpenVINO prefixes one
    "Exception from <source file>" line per frame)."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.startswith("Exception from ")]
    return lines[0] if lines else str(exc).strip()


def onnxruntime_session(path: str, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle intra-op threads sleep instead of spinning: this server shares the CPU with the
    # tokenizer's stub, Triton's own threads and often its clients, and spinning threads
    # take cores from them (measured here: batch 1 at 2 threads, 3.9 ms vs 9.3 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class OpenVINOModel:
    """OpenVINO's CPU plugin on the ONNX file, run like an ONNX Runtime session: what Triton's
    openvino backend does with the same config. One infer request per call, since Triton may
    run this model's executions from several threads."""

    def __init__(self, path: str, threads: int, bf16: bool):
        import openvino

        # Each instance of this model is a process of its own: OpenVINO's default pinning puts
        # every process's threads on the same first cores, so two 1-thread instances would
        # share one core. Unpinned, the OS spreads them.
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compile = lambda: openvino.Core().compile_model(path, "CPU", config)
        self.compiled = self.compile()

    def run(self, names: list, feed: dict) -> list:
        try:
            results = self.compiled.create_infer_request().infer(feed, share_outputs=False)
        except Exception:
            # OpenVINO 2026.4's CPU plugin keeps a failed shape inference (inputs of different
            # lengths) and fails every later request: compile afresh so one bad request
            # cannot poison the model for everyone after it.
            self.compiled = self.compile()
            raise
        # A port carries every name of its tensor (DETR's `boxes` is also `/Min_1_output_0`):
        # look the config's names up among all of them.
        by_name = {name: value for port, value in results.items() for name in port.get_names()}
        return [np.asarray(by_name[name]) for name in names]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.model_name = args["model_name"]
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, parameters.get("onnx_file", "model.onnx"))
        threads = int(parameters.get("intra_op_threads", "0"))
        if parameters.get("runtime") == "openvino":
            self.session = OpenVINOModel(path, threads, parameters.get("HINT_BF16", "NO").upper() == "YES")
            self.session_name = "OpenVINO"
        else:
            self.session = onnxruntime_session(path, threads)
            self.session_name = "ONNX Runtime"
        self.inputs = [(spec["name"], [int(d) for d in spec["dims"]]) for spec in config["input"]]
        self.outputs = [spec["name"] for spec in config["output"]]
        # Without Triton's batcher (a request input: a vocabulary the whole request shares), a
        # request's first axis is not one the wrapper may stack other requests along.
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.max_length = int(parameters.get("max_sequence_length", "0"))
        self.value_ranges = json.loads(parameters.get("value_ranges", "{}"))
        self.state = json.loads(parameters.get("sequence_state", "[]"))
        self.idle_s = int(parameters.get("sequence_idle_us", "0")) / 1e6
        self.sequences: dict = {}  # correlation ID -> ({state input: [1, ...] array}, last frame time)

    def execute(self, requests: list) -> list:
        """Requests with equal shapes (what the dynamic batcher merges) run as one batch; a model
        without batching runs each alone."""
        if self.state:
            return self._execute_sequences(requests)
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name, _dims in self.inputs}
            problem = self._problem(feed)
            if problem:
                responses[index] = invalid_argument(problem)
                continue
            shapes = tuple(feed[name].shape[1:] for name, _dims in self.inputs) if self.batching else index
            groups.setdefault(shapes, []).append((index, feed))
        for members in groups.values():
            for index, response, _state in self._run_group(members):
                responses[index] = response
        return responses

    def _problem(self, feed: dict[str, np.ndarray]) -> str | None:
        """What is wrong with a request's inputs (non-finite values, too long or empty, values
        out of range), or None."""
        for name, value in feed.items():  # ONNX Runtime itself would compute on a NaN
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return self._first_bad(name, value, ~np.isfinite(value),
                                       "finite values only; replace NaN and infinity")
        return self._length_problem(feed) or self._value_problem(feed)

    def _first_bad(self, name: str, value: np.ndarray, bad: np.ndarray, takes: str) -> str:
        """The refusal naming the first value of input `name` where `bad` holds, and the rule."""
        position = [int(i) for i in np.argwhere(bad)[0]]
        return (f"input '{name}' holds {value[tuple(position)]} at index {position}: model "
                f"'{self.model_name}' takes {takes}")

    def _length_problem(self, feed: dict[str, np.ndarray]) -> str | None:
        if not self.max_length:
            return None
        for name, dims in self.inputs:
            shape = feed[name].shape
            for axis, declared in enumerate(dims, start=1):
                if declared == -1 and shape[axis] > self.max_length:
                    return (f"input '{name}' has {shape[axis]} positions on axis {axis} (shape "
                            f"{list(shape)}); model '{self.model_name}' accepts at most "
                            f"{self.max_length} (max_sequence_length): truncate the input to "
                            f"{self.max_length} tokens")
                if declared == -1 and shape[axis] == 0:
                    return (f"input '{name}' has 0 positions on axis {axis} (shape {list(shape)}); "
                            f"model '{self.model_name}' takes 1 to {self.max_length} "
                            "(max_sequence_length): send at least one token")
        return None

    def _value_problem(self, feed: dict[str, np.ndarray]) -> str | None:
        for name, (low, high, what) in self.value_ranges.items():
            value = feed.get(name)
            if value is None or value.size == 0:
                continue
            outside = (value < low) | (value > high)
            if outside.any():
                return self._first_bad(name, value, outside, f"{what}, {low} to {high}; "
                                                             f"{int(outside.sum())} value(s) are outside")
        return None

    def _run_group(self, members: list) -> list:
        """(index, response, state) per member: `state` maps each state input to this member's
        state output (None on an error, or when the model keeps no state)."""
        sizes = [len(next(iter(feed.values()))) for _index, feed in members]
        names = list(members[0][1])
        batch = {name: np.concatenate([feed[name] for _index, feed in members]) if len(members) > 1
                 else members[0][1][name] for name in names}
        state_outputs = [entry["output"] for entry in self.state]
        try:
            outputs = self.session.run(self.outputs + state_outputs, batch)
        except Exception as exc:  # the runtime's own error types; its message names the node
            shapes = ", ".join(f"{name} {list(members[0][1][name].shape)}" for name, _dims in self.inputs)
            message = (f"{self.session_name} could not run model '{self.model_name}' on inputs {shapes}: "
                       f"{first_line(exc)[:400]}")
            return [(index, invalid_argument(message), None) for index, _feed in members]
        results, start = [], 0
        for (index, _feed), size in zip(members, sizes, strict=True):
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + size]))
                       for name, out in zip(self.outputs, outputs, strict=False)]
            state = {entry["input"]: out[start:start + size]
                     for entry, out in zip(self.state, outputs[len(self.outputs):], strict=True)}
            results.append((index, pb_utils.InferenceResponse(output_tensors=tensors),
                            state if self.state else None))
            start += size
        return results

    # -- streaming models ------------------------------------------------------------------

    def _execute_sequences(self, requests: list) -> list:
        """One frame per request. A sequence appears at most once per batch run (rounds keep
        two frames of one sequence, should Triton hand both over in one call, in order)."""
        now = time.monotonic()
        self._evict_idle(now)
        responses: list = [None] * len(requests)
        rounds: list[list] = []  # [(index, request, sequence id)]
        for index, request in enumerate(requests):
            sequence = request.correlation_id()
            slot = next((r for r in rounds if all(s != sequence for _i, _r, s in r)), None)
            if slot is None:
                slot = []
                rounds.append(slot)
            slot.append((index, request, sequence))
        for members in rounds:
            groups: dict[tuple, list] = {}
            ends = {}
            for index, request, sequence in members:
                end = bool(request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
                feed, problem = self._sequence_feed(request, sequence)
                if problem:  # the sequence keeps its state: the client may resend the frame
                    responses[index] = invalid_argument(problem)
                    if end:
                        self.sequences.pop(sequence, None)
                    continue
                ends[index] = (sequence, end)
                shapes = tuple(value.shape for value in feed.values())
                groups.setdefault(shapes, []).append((index, feed))
            for group in groups.values():
                for index, response, state in self._run_group(group):
                    responses[index] = response
                    sequence, end = ends[index]
                    if end or state is None:
                        self.sequences.pop(sequence, None)  # END, or a failed frame: forget it
                    else:
                        self.sequences[sequence] = (state, now)
        return responses

    def _sequence_feed(self, request, sequence) -> tuple[dict | None, str | None]:
        feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name, _dims in self.inputs}
        frames = {len(value) for value in feed.values()}
        if frames != {1}:
            return None, (f"model '{self.model_name}' takes one frame per request of a sequence, "
                          f"got a batch of {sorted(frames)}: send the frames one by one")
        problem = self._problem(feed)
        if problem:
            return None, problem
        if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
            state = {entry["input"]: np.zeros([1, *entry["dims"]], dtype=entry["dtype"])
                     for entry in self.state}
        elif sequence in self.sequences:
            state = self.sequences[sequence][0]
        else:
            return None, (f"sequence {sequence} has no state in model '{self.model_name}' (silent for "
                          f"over {self.idle_s:g} s, or the server restarted): send its first frame "
                          "again with sequence_start")
        return {**feed, **state}, None

    def _evict_idle(self, now: float) -> None:
        """Triton frees an idle sequence's slot without telling the model: forget its state too."""
        if self.idle_s > 0:
            stale = [s for s, (_state, seen) in self.sequences.items() if now - seen > self.idle_s]
            for sequence in stale:
                del self.sequences[sequence]
