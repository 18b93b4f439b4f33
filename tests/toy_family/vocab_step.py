"""The python-backend step of `<name>_vocab` (toy_vocab): IMAGE bytes and the VOCABULARY
strings of the request -> `grid` [1, S, S] and `label_vectors` [V, D] per row. Imports numpy
and Pillow only, like every step; the client encodes with the same functions."""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
from PIL import Image


def grid_from_image(data: bytes, size: int) -> np.ndarray:
    """An encoded image as a [1, size, size] grey grid in [0, 1]."""
    grey = Image.open(io.BytesIO(data)).convert("L").resize((size, size))
    return (np.asarray(grey, dtype=np.float32) / 255.0)[None]


def label_vectors(labels, width: int) -> np.ndarray:
    """Each label's character trigrams hashed into `width` signed buckets, L2-normalised: the
    same name always gives the same vector, and names that share trigrams point alike."""
    vectors = np.zeros((len(labels), width), dtype=np.float32)
    for row, label in enumerate(labels):
        text = f"  {label.lower()} "
        for start in range(len(text) - 2):
            code = zlib.crc32(text[start:start + 3].encode("utf-8"))
            vectors[row, code % width] += 1.0 if (code >> 16) & 1 else -1.0
        norm = np.linalg.norm(vectors[row])
        vectors[row] /= norm if norm > 0 else 1.0
    return vectors


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.size = int(parameters["grid_size"]["string_value"])
        self.width = int(parameters["width"]["string_value"])

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            vocabularies = pb_utils.get_input_tensor_by_name(request, "VOCABULARY").as_numpy()
            grids = np.stack([grid_from_image(bytes(row[0]), self.size) for row in images])
            vectors = np.stack([label_vectors([bytes(v).decode("utf-8") for v in row], self.width)
                                for row in vocabularies])
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("grid", grids), pb_utils.Tensor("label_vectors", vectors)]))
        return responses
