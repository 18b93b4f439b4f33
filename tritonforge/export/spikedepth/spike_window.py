"""Triton python-backend model: `.dat` spike streams (one or two cameras) -> the T-frame window
each camera's depth graph takes, the first step of `<name>_spikes`.

Copied into the model repository by `export`; it imports only numpy (and, inside Triton,
`triton_python_backend_utils`). `cut_windows` is also what tritonforge's client runs
(`SpikeStream.encode`), so both cut the same bytes and refuse the same streams with the same
message.

A `.dat` payload is frames of height x width bits, packed least significant bit first, rows
flipped (SpikeCV's layout), with no header. Per request item, in order:
1. refused above `max_frames` frames, or when its size is not a whole number of frames;
2. refused with fewer than `window` frames;
3. with two cameras: refused when left and right hold different numbers of frames;
4. the last `window` frames (the most recent) go on, still packed: the graph unpacks them.

Config parameters: height, width, window, max_frames, inputs (the raw input names, comma-
separated, left first) and outputs (the tensor each becomes, in the same order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

try:  # present only inside Triton's Python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tritonforge's client for `cut_windows`
    pb_utils = None


class StreamError(ValueError):
    """A stream this model cannot take; the message says which and what to do."""


def cut_windows(items: Mapping[str, Sequence[bytes]], height: int, width: int, window: int,
                max_frames: int) -> dict[str, np.ndarray]:
    """{raw input: [payload per sample]} -> {raw input: [samples, window, H*W/8] uint8}."""
    size = height * width // 8
    names = list(items)
    counts = {len(payloads) for payloads in items.values()}
    if len(counts) != 1:
        raise StreamError(f"the request holds {', '.join(f'{len(v)} {k}' for k, v in items.items())} "
                          "streams: send one of each per sample")
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for sample in range(counts.pop()):
        frames, lengths = {}, {}
        for name in names:
            payload = bytes(items[name][sample])
            if len(payload) > max_frames * size:
                raise StreamError(f"{name} stream of sample {sample} holds {len(payload):,} bytes, above "
                                  f"this model's limit of {max_frames:,} frames ({max_frames * size:,} "
                                  f"bytes): send the last {window} frames or fewer than {max_frames:,}")
            if len(payload) == 0 or len(payload) % size:
                raise StreamError(
                    f"{name} stream of sample {sample} holds {len(payload):,} bytes, not a whole number of "
                    f"{height} x {width} frames ({size} bytes each: {len(payload) // size} frames and "
                    f"{len(payload) % size} bytes over): check the resolution it was recorded at")
            count = len(payload) // size
            if count < window:
                raise StreamError(f"{name} stream of sample {sample} holds {count} frames; this model "
                                  f"takes a window of {window}: record at least {window} frames")
            frames[name] = np.frombuffer(payload, np.uint8, count=window * size,
                                         offset=(count - window) * size).reshape(window, size)
            lengths[name] = count
        if len(set(lengths.values())) > 1:
            held = ", ".join(f"{name} {count}" for name, count in lengths.items())
            raise StreamError(f"sample {sample}: the cameras' streams hold different numbers of frames "
                              f"({held}): send left and right recorded together, frame for frame")
        for name in names:
            out[name].append(frames[name])
    return {name: np.stack(arrays) for name, arrays in out.items()}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.height, self.width = int(parameters["height"]), int(parameters["width"])
        self.window, self.max_frames = int(parameters["window"]), int(parameters["max_frames"])
        self.inputs = parameters["inputs"].split(",")
        self.outputs = parameters["outputs"].split(",")

    def execute(self, requests: list) -> list:
        return [self._cut(request) for request in requests]

    def _cut(self, request):
        items = {name: list(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1))
                 for name in self.inputs}
        try:
            windows = cut_windows(items, self.height, self.width, self.window, self.max_frames)
        except StreamError as exc:  # this request only: the others of the batch go on
            code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
            message = str(exc)
            error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
            return pb_utils.InferenceResponse(error=error)
        pairs = zip(self.inputs, self.outputs, strict=True)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(output, windows[name])
                                                          for name, output in pairs])
