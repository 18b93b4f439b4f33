"""Triton python-backend model `<name>_vocab`: point files and class names in, 3-D boxes labelled
by those names out, suppressed.

Copied into the model repository by `export` as model.py, with `points.py`, `sampling.py`,
`postprocess.py` and `vocabulary.py` beside it: the functions tritonforge's client runs, so both
read the same bytes into the same points and refuse the same requests with the same words. It
imports only numpy (and, inside Triton, `triton_python_backend_utils`). Per request:

1. `classes` (strings, the same vocabulary in every row) are checked, prompted with the
   export's template and embedded by the text model served beside it (the bert family's
   MiniLM, `<text model>_text`, through Triton's business-logic scripting); embeddings are
   cached per name, so a vocabulary costs the text model only its new names;
2. each `points` file is read and checked, subsampled to `num_points`, and the farthest-point
   centres, their ball-query groups and the queries are computed;
3. the detector (`<name>`) runs on them with the class embeddings; boxes are suppressed per
   label, and padded to the longest sample's count (labels -1, empty boxes, scores 0).
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections import OrderedDict

import numpy as np

try:  # present only inside Triton's Python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tritonforge's tests
    pb_utils = None

if pb_utils is not None:  # the helper modules lie beside this file; tritonforge is not installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if "tritonforge.errors" not in sys.modules:  # what the helpers raise: a plain error here
        errors = types.ModuleType("tritonforge.errors")
        errors.TritonForgeError = type("TritonForgeError", (ValueError,), {})
        sys.modules.update({"tritonforge": types.ModuleType("tritonforge"), "tritonforge.errors": errors})
    from points import read_points  # noqa: E402
    from postprocess import suppress_each  # noqa: E402
    from sampling import PER_SAMPLE, Sampling, prepare  # noqa: E402
    from vocabulary import check_vocabulary  # noqa: E402

CACHED_NAMES = 4096  # embeddings kept per instance, the least recently used dropped first
TEXT_BATCH = 32  # names per request to the text model (its max_batch_size)


def invalid_argument(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)


def strings(tensor) -> list[str]:
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in tensor]


def padded(found: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Per sample (boxes [K, 7], scores [K], labels [K]) -> [S, K_max, ...] with empty rows."""
    width = max((len(scores) for _b, scores, _l in found), default=0)
    boxes = np.zeros((len(found), width, 7), np.float32)
    scores = np.zeros((len(found), width), np.float32)
    labels = np.full((len(found), width), -1, np.int64)
    for row, (b, s, lab) in enumerate(found):
        boxes[row, :len(s)], scores[row, :len(s)], labels[row, :len(s)] = b, s, lab
    return [boxes, scores, labels]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.detector = parameters["detector"]
        self.text_model, self.template = parameters["text_model"], parameters["template"]
        self.sampling = Sampling(int(parameters["num_points"]), int(parameters["centres"]),
                                 int(parameters["group"]), float(parameters["radius"]),
                                 int(parameters["queries"]))
        self.seed = int(parameters["seed"])
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def execute(self, requests: list) -> list:
        return [self._detect(request) for request in requests]

    def _detect(self, request):
        try:
            rows = pb_utils.get_input_tensor_by_name(request, "classes").as_numpy()
            vocabularies = {tuple(strings(row)) for row in rows.reshape(len(rows), -1)}
            if len(vocabularies) > 1:
                raise ValueError("the rows of 'classes' differ: a request carries one vocabulary, sent "
                                 "whole in every row")
            names = check_vocabulary(vocabularies.pop() if vocabularies else [])
            files = pb_utils.get_input_tensor_by_name(request, "points").as_numpy().reshape(-1)
            ready = [prepare(read_points(bytes(data), f"cloud {i}"), self.sampling, self.seed)
                     for i, data in enumerate(files)]
            if not ready:
                raise ValueError("the request holds no point cloud: send at least one")
            embeddings = self._embed(names)
        except ValueError as exc:  # this request only: the others go on
            return invalid_argument(str(exc))
        except RuntimeError as exc:  # the text model failed or is not served
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        inputs = [pb_utils.Tensor(key, np.stack([getattr(r, key) for r in ready])) for key in PER_SAMPLE]
        inputs.append(pb_utils.Tensor("class_embeddings", embeddings))
        response = pb_utils.InferenceRequest(model_name=self.detector, inputs=inputs,
                                             requested_output_names=["boxes_3d", "scores", "labels"]).exec()
        if response.has_error():
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"the detector '{self.detector}' failed: {response.error().message()}"))
        boxes, scores, labels = (pb_utils.get_output_tensor_by_name(response, name).as_numpy()
                                 for name in ("boxes_3d", "scores", "labels"))
        found = padded(suppress_each(boxes, scores, labels))
        outputs = zip(("boxes_3d", "scores", "labels"), found, strict=True)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs])

    def _embed(self, names: list[str]) -> np.ndarray:
        """[C, D] embeddings of the prompted names, from the cache or the text model."""
        missing = [name for name in dict.fromkeys(names) if name not in self.cache]
        for start in range(0, len(missing), TEXT_BATCH):
            chunk = missing[start:start + TEXT_BATCH]
            text = np.array([[self.template.format(name).encode("utf-8")] for name in chunk], dtype=object)
            response = pb_utils.InferenceRequest(model_name=f"{self.text_model}_text",
                                                 inputs=[pb_utils.Tensor("TEXT", text)],
                                                 requested_output_names=["sentence_embedding"]).exec()
            if response.has_error():
                raise RuntimeError(f"the text model '{self.text_model}_text' could not embed the class names "
                                   f"({response.error().message()}): serve the bert family's MiniLM export "
                                   f"beside this model (`tritonforge export bert --name {self.text_model}`)")
            vectors = pb_utils.get_output_tensor_by_name(response, "sentence_embedding").as_numpy()
            for name, vector in zip(chunk, vectors, strict=True):
                self.cache[name] = np.asarray(vector, np.float32)
        for name in names:
            self.cache.move_to_end(name)
        while len(self.cache) > CACHED_NAMES:
            self.cache.popitem(last=False)
        return np.stack([self.cache[name] for name in names])
