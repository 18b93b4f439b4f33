"""gRPC client helpers (tritonclient.grpc): the same code talks to `tritonforge serve` and to
the NGC Triton of docker-compose.yml.

The model's inputs, outputs and labels are read from the server (metadata and config); only
a model that takes token arrays needs the repository, for its tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError

DEFAULT_URL = "127.0.0.1:8001"
TEXT_DATATYPE = "BYTES"


def server_error(exc: Exception, url: str, name: str | None = None) -> TritonForgeError:
    """A tritonclient exception as a message that says what to do."""
    message = getattr(exc, "message", lambda: str(exc))() or str(exc)
    status = str(getattr(exc, "status", lambda: "")() or "")
    if "UNAVAILABLE" in status or "failed to connect" in message.lower() \
            or "connection refused" in message.lower():
        return TritonForgeError(
            f"no Triton server answers at {url} ({message.splitlines()[0][:200]}): start one with "
            "`tritonforge serve` (or `docker compose up`), or pass --url / --triton")
    what = f"model {name!r}: " if name else ""
    return TritonForgeError(f"Triton at {url} refused the request: {what}{message}")


def connect(url: str = DEFAULT_URL):
    """A gRPC client for a server that answers; raises TritonForgeError otherwise."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(url)
        if not client.is_server_live():
            raise TritonForgeError(f"the Triton server at {url} is not live: see its log")
    except InferenceServerException as exc:
        raise server_error(exc, url) from exc
    return client


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # Triton's name: INT64, FP32, BYTES, ...
    shape: tuple[int, ...]  # with the batch axis (-1) first when the model batches


@dataclass(frozen=True)
class ModelInfo:
    """What the server says about a model: its I/O, batching and parameters (e.g. labels)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int
    parameters: Mapping[str, str] = field(default_factory=dict)

    @property
    def takes_text(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].datatype == TEXT_DATATYPE

    @property
    def labels(self) -> list[str] | None:
        return json.loads(self.parameters["labels"]) if "labels" in self.parameters else None


def model_info(client, name: str, url: str = DEFAULT_URL) -> ModelInfo:
    from tritonclient.utils import InferenceServerException

    try:
        metadata = client.get_model_metadata(name, as_json=True)
        config = client.get_model_config(name, as_json=True)["config"]
    except InferenceServerException as exc:
        raise server_error(exc, url, name) from exc

    def tensors(rows) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(r["name"], r["datatype"], tuple(int(d) for d in r["shape"])) for r in rows)

    return ModelInfo(name, tuple(metadata.get("versions", [])), metadata.get("platform", ""),
                     tensors(metadata["inputs"]), tensors(metadata["outputs"]),
                     int(config.get("max_batch_size", 0)),
                     {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()})


# -- building requests ---------------------------------------------------------------------


def text_array(texts: Sequence[str]) -> np.ndarray:
    """Raw strings as a batch for a TEXT input declared with dims [1]: shape [len(texts), 1]."""
    return np.array([[t.encode("utf-8")] for t in texts], dtype=object)


class RepositoryTokenizer:
    """Tokenizes like the model's `<name>_text` ensemble, with the tokenizer saved in the repo."""

    def __init__(self, repo: Path | str, name: str, seq_len: int | None = None):
        from tritonforge.serving.ensembles.text_tokenizer import bucket_lengths, load_tokenizer
        from tritonforge.serving.repository import ModelRepository

        repository = ModelRepository(repo)
        manifest = repository.read_manifest(name)
        _version, folder = repository.resolve(name)
        pre = manifest.get("io", {}).get("preprocessing", {})
        if pre.get("kind") != "text":
            raise TritonForgeError(
                f"model {name!r} does not take text (its manifest has no text pre-processing): "
                "send its inputs with --input-json")
        self.max_length = min(int(pre["max_length"]), seq_len or int(pre["max_length"]))
        # seq_len: every request padded (and truncated) to one length, like verify --seq-len
        self.lengths = (self.max_length,) if seq_len else bucket_lengths(self.max_length)
        self.pad_token_id = int(pre["pad_token_id"])
        self.tokenizer = load_tokenizer(str(folder / pre["tokenizer"]), self.max_length)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        from tritonforge.serving.ensembles.text_tokenizer import empty_text_error, encode

        problem = empty_text_error(list(texts))
        if problem:
            raise TritonForgeError(problem.replace("TEXT", "--text"))
        return encode(self.tokenizer, list(texts), self.lengths, self.pad_token_id)


def text_inputs(info: ModelInfo, texts: Sequence[str], repo: Path | str | None,
                seq_len: int | None = None) -> dict[str, np.ndarray]:
    """The request for `texts`: raw strings for a text model, else tokens from the repository
    (padded to length buckets, or to `seq_len`)."""
    if not texts:
        raise TritonForgeError("give at least one --text")
    if info.takes_text:
        return {info.inputs[0].name: text_array(texts)}
    if repo is None:
        raise TritonForgeError(
            f"model {info.name!r} takes {[i.name for i in info.inputs]}, not text: query its "
            f"`{info.name}_text` ensemble, or pass --repo so its tokenizer can be used")
    return RepositoryTokenizer(repo, info.name, seq_len)(texts)


def json_inputs(info: ModelInfo, path: Path) -> dict[str, np.ndarray]:
    """{"input name": nested list, ...} with each array cast to the dtype the server declares."""
    from tritonclient.utils import triton_to_np_dtype

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise TritonForgeError(f"--input-json {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise TritonForgeError(f"--input-json {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TritonForgeError(f"--input-json {path} must hold an object {{input name: array}}")
    expected = {i.name: i for i in info.inputs}
    unknown = sorted(set(data) - set(expected))
    if unknown:
        raise TritonForgeError(f"--input-json names inputs {unknown} that model {info.name!r} does "
                               f"not have; its inputs are {sorted(expected)}")
    arrays = {}
    for name, values in data.items():
        if expected[name].datatype == TEXT_DATATYPE:  # strings travel as UTF-8 bytes
            encode = np.vectorize(lambda v: str(v).encode("utf-8"), otypes=[object])
            arrays[name] = encode(np.array(values, dtype=object))
        else:
            arrays[name] = np.asarray(values, dtype=triton_to_np_dtype(expected[name].datatype))
    return arrays


# -- inference -----------------------------------------------------------------------------


def infer_inputs(arrays: Mapping[str, np.ndarray], module=None) -> list:
    """InferInput objects for tritonclient.grpc (or tritonclient.grpc.aio: same classes)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    module = module or grpcclient
    inputs = []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def infer(client, name: str, arrays: Mapping[str, np.ndarray], version: str = "",
          url: str = DEFAULT_URL, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """One request; outputs keyed by name (all of the model's outputs unless named)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    try:
        result = client.infer(name, infer_inputs(arrays), model_version=version, outputs=requested)
    except InferenceServerException as exc:
        raise server_error(exc, url, name) from exc
    response = result.get_response(as_json=True)
    return {o["name"]: result.as_numpy(o["name"]) for o in response["outputs"]}


class TritonSession:
    """A served model that quacks like an ONNX Runtime InferenceSession (get_inputs,
    get_outputs, run), so `verify`'s parity and latency code runs on it unchanged."""

    @dataclass(frozen=True)
    class _Arg:
        name: str

    def __init__(self, url: str, name: str, version: int | str = ""):
        self.url, self.name, self.version = url, name, str(version)
        self.client = connect(url)
        self.info = model_info(self.client, name, url)
        if self.version and self.version not in self.info.versions:
            raise TritonForgeError(
                f"the server at {url} serves {name!r} versions {list(self.info.versions)}, not "
                f"{self.version}: restart `tritonforge serve` after the export, or pass --version")

    def get_inputs(self) -> list:
        return [self._Arg(i.name) for i in self.info.inputs]

    def get_outputs(self) -> list:
        return [self._Arg(o.name) for o in self.info.outputs]

    def run(self, names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs = infer(self.client, self.name, feed, self.version, self.url, names)
        return [outputs[n] for n in (names or [o.name for o in self.info.outputs])]


# -- reading results -----------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def embedding_outputs(info: ModelInfo) -> list[str]:
    """Float outputs of shape [batch, width]: sentence embeddings (or logits, when labelled)."""
    return [o.name for o in info.outputs
            if o.datatype.startswith("FP") and len(o.shape) == (2 if info.max_batch_size else 1)]


def top_labels(info: ModelInfo, logits: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
    """For each row: the k most probable classes as (label, probability)."""
    labels = info.labels or [f"class {i}" for i in range(logits.shape[-1])]
    probabilities = softmax(logits.astype(np.float64))
    return [[(labels[j], float(row[j])) for j in np.argsort(-row)[:k]] for row in probabilities]


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return unit @ unit.T


def summarize(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What `query` prints: shapes, and per vector output norms and similarities or labels."""
    summary: dict[str, Any] = {"shapes": {k: list(v.shape) for k, v in outputs.items()}}
    for name in embedding_outputs(info):
        values = outputs[name].astype(np.float64)
        if info.labels is not None or name == "logits":
            summary.setdefault("labels", {})[name] = top_labels(info, values)
        else:
            summary.setdefault("embeddings", {})[name] = {
                "norms": np.linalg.norm(values, axis=-1).tolist(),
                "cosine": cosine_matrix(values).tolist()}
    return summary
