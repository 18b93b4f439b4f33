"""gRPC client helpers (tritonclient.grpc): the same code talks to `tritonforge serve` and to
the NGC Triton of docker-compose.yml.

The model's inputs, outputs, labels, output kinds and pre-processing record are read from the
server (metadata and config); only a model whose raw input is encoded on the client (a token
model, without its `_text` ensemble) needs the repository, for its tokenizer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import ServerUnavailable, TritonForgeError
from tritonforge.family import load_family_package
from tritonforge.modalities import Modality, manifest_io, modality_from_json
from tritonforge.outputs import QueryContext, Written, answer_json, save_outputs, summaries, summary_json
from tritonforge.serving.endpoint import Endpoint
from tritonforge.spec import TENSOR, ModelIO, TensorSpec

DEFAULT_URL = "127.0.0.1:8001"
BYTES_DATATYPE = "BYTES"


RESTRICTED = re.compile(r"protocol is restricted, expecting header '([^']+)'")
TLS_OPTIONS = "--root-certs (the CA that signed the server's certificate)"
MUTUAL_TLS_OPTIONS = "--client-cert and --client-key (signed by a CA the server trusts)"


def server_error(exc: Exception, url: Endpoint | str, name: str | None = None) -> TritonForgeError:
    """A tritonclient exception as a message that says what to do: no server, a failed TLS
    handshake, a missing header or credential, or the server's own refusal."""
    message = getattr(exc, "message", lambda: str(exc))() or str(exc)
    status = str(getattr(exc, "status", lambda: "")() or "")
    lowered = message.lower()
    tls = url.ssl if isinstance(url, Endpoint) else str(url).lower().startswith("grpcs://")
    first = message.splitlines()[0][:300]
    restricted = RESTRICTED.search(message)
    if restricted:  # Triton's --grpc-restricted-protocol: the header is missing or its value wrong
        return TritonForgeError(
            f"Triton at {url} restricts this API to callers sending header {restricted.group(1)!r}, "
            f"and the request had it missing or with another value: pass --header "
            f"'{restricted.group(1)}: VALUE' with the value the server was given")
    if "handshake failed" in lowered or "ssl_error" in lowered:
        if "wrong_version_number" in lowered:
            advice = f"the server at {url} does not speak TLS on this port: drop --tls and grpcs://"
        elif "certificate_verify_failed" in lowered or "certificate" in lowered:
            advice = (f"the server's certificate could not be verified: pass {TLS_OPTIONS}, and "
                      "connect by a name or address the certificate lists")
        else:
            advice = f"check {TLS_OPTIONS} and, for mutual TLS, {MUTUAL_TLS_OPTIONS}"
        return TritonForgeError(f"the TLS handshake with {url} failed ({first}): {advice}")
    if "UNAUTHENTICATED" in status:
        return TritonForgeError(f"Triton at {url} (or a gateway in front of it) did not accept the "
                                f"request's credentials ({first}): pass the token with "
                                "--bearer-token-env VAR or the header it expects with --header 'Name: value'")
    if "PERMISSION_DENIED" in status:
        return TritonForgeError(f"Triton at {url} (or a gateway in front of it) denied the request "
                                f"({first}): the credentials were read but do not allow this call; "
                                "ask for a token or key with access to this model")
    if "UNAVAILABLE" in status or "failed to connect" in lowered or "connection refused" in lowered:
        if "socket closed" in lowered:  # a TLS server hangs up on plain text, and mutual TLS on no cert
            hint = (f"; if the server asks for mutual TLS, pass {MUTUAL_TLS_OPTIONS}" if tls else
                    f"; if the server speaks TLS, connect with grpcs:// (or --tls) and {TLS_OPTIONS}")
            return ServerUnavailable(f"the server at {url} closed the connection ({first}){hint}")
        return ServerUnavailable(
            f"no Triton server answers at {url} ({first[:200]}): start one with "
            "`tritonforge serve` (or `docker compose up`), or pass --url / --triton")
    what = f"model {name!r}: " if name else ""
    return TritonForgeError(f"Triton at {url} refused the request: {what}{message}")


def connect(url: Endpoint | str = DEFAULT_URL):
    """A gRPC client for a server that answers; raises TritonForgeError otherwise."""
    from tritonclient.utils import InferenceServerException

    endpoint = Endpoint.of(url)
    try:
        client = endpoint.client()
        if not client.is_server_live(headers=endpoint.call_headers):
            raise ServerUnavailable(f"the Triton server at {endpoint} is not live: see its log")
    except InferenceServerException as exc:
        raise server_error(exc, endpoint) from exc
    return client


def model_ready(client, name: str, url: Endpoint | str = DEFAULT_URL, version: int | str = "") -> bool:
    """Whether the server has `name` (that version; default: the policy's) loaded and ready.
    Asks the health API (model readiness), never the repository index: Compose's restricted
    model-repository API guards the index."""
    from tritonclient.utils import InferenceServerException

    endpoint = Endpoint.of(url)
    try:
        return bool(client.is_model_ready(name, str(version), headers=endpoint.call_headers))
    except InferenceServerException as exc:
        error = server_error(exc, endpoint, name)
        if isinstance(error, ServerUnavailable) or RESTRICTED.search(str(exc)):
            raise error from exc
        return False  # an unknown model is not ready


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # Triton's name: INT64, FP32, BYTES, ...
    shape: tuple[int, ...]  # with the batch axis (-1) first when the model batches


@dataclass(frozen=True)
class ModelInfo:
    """What the server says about a model: its I/O, batching and parameters (labels, output
    kinds and the pre-processing record, written into every config by tritonforge)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int
    parameters: Mapping[str, str] = field(default_factory=dict)
    sequence: bool = False  # under the sequence batcher: a stream, one frame per request

    def frame_inputs(self) -> tuple[TensorInfo, ...]:
        """A streaming model's per-frame inputs (one, or several such as a left and a right
        stream; its state is kept by the server)."""
        if not self.sequence or not self.inputs:
            raise TritonForgeError(
                f"model {self.name!r} is not a streaming model (no sequence batcher): send it whole "
                "inputs with --npy or --image, or export with --streaming")
        return self.inputs

    @property
    def family(self) -> str | None:
        """The family that exported the model (its package defines the model's own modalities
        and output kinds); None for a config written by an older tritonforge."""
        return self.parameters.get("family") or None

    @property
    def labels(self) -> list[str] | None:
        return json.loads(self.parameters["labels"]) if "labels" in self.parameters else None

    @property
    def output_kinds(self) -> dict[str, str]:
        """Each output's kind; a kind defined in the exporting family's own package is made
        known by importing that package (the config names it)."""
        from tritonforge.outputs import known_kinds

        kinds = json.loads(self.parameters.get("output_kinds", "{}"))
        if self.family and not set(kinds.values()) <= set(known_kinds()):
            load_family_package(self.family)
        return {o.name: kinds.get(o.name, TENSOR) for o in self.outputs}

    def modality(self, repo: Path | str | None = None) -> Modality:
        """The pre-processing record the server publishes, else the one in the repository."""
        if "preprocessing" in self.parameters:
            return modality_from_json(json.loads(self.parameters["preprocessing"]), self.family)
        if repo is not None:
            return exported_version(repo, self.name)[1].preprocessing
        raise TritonForgeError(
            f"model {self.name!r} does not say what input it takes (its config has no "
            "pre-processing record): pass --repo with its export, or send --input-json")

    def declared_io(self) -> ModelIO:
        """The inputs and outputs as the server declares them (batch axis dropped)."""
        from tritonclient.utils import triton_to_np_dtype

        def specs(tensors: Sequence[TensorInfo]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, np.dtype(triton_to_np_dtype(t.datatype)).name
                                    if t.datatype != BYTES_DATATYPE else "object",
                                    t.shape[1:] if self.max_batch_size else t.shape) for t in tensors)

        return ModelIO(specs(self.inputs), specs(self.outputs), self.modality())

    def takes_raw(self, modality: Modality) -> bool:
        """Whether the model takes the raw input itself (an ensemble such as `<name>_text`)."""
        names = {raw.name for raw in modality.raw_inputs}
        return (bool(names) and {i.name for i in self.inputs} == names
                and all(i.datatype == BYTES_DATATYPE for i in self.inputs))


def model_info(client, name: str, url: Endpoint | str = DEFAULT_URL) -> ModelInfo:
    """`client`'s server's metadata and config of `name` (`url`: its endpoint, whose headers
    go with the calls)."""
    from tritonclient.utils import InferenceServerException

    headers = Endpoint.of(url).call_headers
    try:
        metadata = client.get_model_metadata(name, headers=headers, as_json=True)
        config = client.get_model_config(name, headers=headers, as_json=True)["config"]
    except InferenceServerException as exc:
        raise server_error(exc, url, name) from exc

    def tensors(rows) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(r["name"], r["datatype"], tuple(int(d) for d in r["shape"])) for r in rows)

    return ModelInfo(name, tuple(metadata.get("versions", [])), metadata.get("platform", ""),
                     tensors(metadata["inputs"]), tensors(metadata["outputs"]),
                     int(config.get("max_batch_size", 0)),
                     {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()},
                     "sequence_batching" in config)


# -- building requests ---------------------------------------------------------------------


def exported_version(repo: Path | str, name: str) -> tuple[Path, ModelIO]:
    """The latest version folder of `name` in `repo` and its declared I/O."""
    from tritonforge.serving.repository import ModelRepository

    repository = ModelRepository(repo)
    manifest = repository.read_manifest(name)
    _version, folder = repository.resolve(name)
    if "io" not in manifest:
        raise TritonForgeError(f"{name!r} in {repository.root} is a companion model, not an export: "
                               "query it directly, without --repo")
    return folder, manifest_io(manifest)


def raw_request(info: ModelInfo, modality: Modality, raw: Sequence[Any], repo: Path | str | None,
                shape: Mapping[str, int | None] | None = None,
                export: tuple[Path, ModelIO] | None = None) -> dict[str, np.ndarray]:
    """The request for raw inputs: sent as they are to a model that takes them (an ensemble),
    else encoded here into the model's tensors, with the side files of its export in `repo`
    (`export`: that export's folder and I/O, when the caller has read them already)."""
    if not raw:
        raise TritonForgeError(f"give at least one --{modality.query_option}")
    if info.takes_raw(modality):
        return modality.request(raw)
    if modality.kind == "tensors":  # arrays as they are: the server's config says what it takes
        return modality.encode(raw, info.declared_io(), None, shape)
    if repo is None and modality.suffix:
        raise TritonForgeError(
            f"model {info.name!r} takes {[i.name for i in info.inputs]}, not raw {modality.kind}: "
            f"query its `{info.name}{modality.suffix}` ensemble, or pass --repo so its export can "
            "encode the input here")
    if export is None and repo is not None:
        export = exported_version(repo, info.name)
    folder, io = export or (None, None)
    return modality.encode(raw, io, folder, shape)


def query_request(info: ModelInfo, option: str | None, values: Sequence[str], repo: Path | str | None,
                  shape: Mapping[str, int | None] | None = None,
                  named: Mapping[str, Sequence[str]] | None = None
                  ) -> tuple[dict[str, np.ndarray], list[str]]:
    """`query --<option> VALUE...` and `--input NAME=VALUE...` (`named`): the request, and a
    label per input for the printed rows. The short option carries the raw input declared
    with it (`--image` the IMAGE of an image model); `--input` names any raw input."""
    modality = info.modality(repo)
    declared = {raw.option: raw.name for raw in modality.raw_inputs if raw.option}
    if option is not None and option != modality.query_option and option not in declared:
        takes = ", ".join(f"--{o}" for o in declared) or (
            f"--{modality.query_option}" if modality.query_option else "--input-json")
        raise TritonForgeError(f"model {info.name!r} takes {modality.kind} input ({takes}), not --{option}")
    if named or len(modality.raw_inputs) > 1:
        given = {name: list(items) for name, items in (named or {}).items()}
        if option is not None and option not in declared:
            raise TritonForgeError(f"model {info.name!r} takes no raw inputs by name: send --{option} alone")
        if option is not None:
            given.setdefault(declared[option], []).extend(values)
        raw = modality.read_inputs(given)
    else:
        raw = modality.read_raw(values)
    labels = [modality.describe_raw(item, index) for index, item in enumerate(raw)]
    return raw_request(info, modality, raw, repo, shape), labels


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
        if expected[name].datatype == BYTES_DATATYPE:  # strings travel as UTF-8 bytes
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
          url: Endpoint | str = DEFAULT_URL, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """One request; outputs keyed by name (all of the model's outputs unless named)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    try:
        result = client.infer(name, infer_inputs(arrays), model_version=version, outputs=requested,
                              headers=Endpoint.of(url).call_headers)
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

    def __init__(self, url: Endpoint | str, name: str, version: int | str = ""):
        self.endpoint, self.name, self.version = Endpoint.of(url), name, str(version)
        self.client = connect(self.endpoint)
        self.info = model_info(self.client, name, self.endpoint)
        if self.version and self.version not in self.info.versions:
            raise TritonForgeError(
                f"the server at {self.endpoint} serves {name!r} versions {list(self.info.versions)}, not "
                f"{self.version}: restart `tritonforge serve` after the export, or pass --version")

    def get_inputs(self) -> list:
        return [self._Arg(i.name) for i in self.info.inputs]

    def get_outputs(self) -> list:
        return [self._Arg(o.name) for o in self.info.outputs]

    def run(self, names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs = infer(self.client, self.name, feed, self.version, self.endpoint, names)
        return [outputs[n] for n in (names or [o.name for o in self.info.outputs])]

    def run_sequence(self, steps: Sequence[Mapping[str, np.ndarray]], io: ModelIO) -> dict[str, np.ndarray]:
        """A streaming model over `steps` (one request per step, as `run_steps` feeds ONNX
        Runtime): each batch row streams as its own sequence; the server keeps the state.
        Outputs stacked [batch, step, ...], as `run_steps` returns them."""
        names = [frame.name for frame in self.info.frame_inputs()]
        frames = {name: np.stack([step[name] for step in steps], axis=1)  # [batch, steps, ...]
                  for name in names}
        ids = new_sequence_ids(len(frames[names[0]]))
        sequences = {sequence: {name: frames[name][row] for name in names}
                     for row, sequence in enumerate(ids)}
        result = stream_sequences(self.client, self.name, sequences, self.endpoint, self.version)
        return {name: np.stack([result.outputs[i][name] for i in ids])
                for name in io.output_names if name in result.outputs[ids[0]]}


@dataclass
class StreamResult:
    """What `stream_sequences` got back: per sequence, each output stacked over its frames
    ([frames, ...]), and each frame's round-trip latency in seconds."""

    outputs: dict[int, dict[str, np.ndarray]]
    latencies_s: list[float]
    wall_s: float


def new_sequence_ids(count: int) -> list[int]:
    """Correlation IDs unlikely to collide with another client's sequences (Triton wants them
    non-zero and unique among the sequences in flight)."""
    import secrets

    base = secrets.randbits(40) << 16 | 1
    return [base + index for index in range(count)]


def stream_sequences(client, name: str, frames: Mapping[int, Mapping[str, np.ndarray]],
                     url: Endpoint | str = DEFAULT_URL, version: str = "", timeout_s: float = 120.0
                     ) -> StreamResult:
    """Send each sequence ({correlation ID: {input name: frames [T, ...]}}, one array per
    per-frame input) frame by frame over one gRPC stream: the first frame with START, the last
    with END, and a sequence's next frame as soon as its previous one is answered, so all
    sequences are in flight at once, interleaved. A refused frame stops the stream with an
    error naming sequence and frame."""
    import threading

    lengths = {sequence: {len(array) for array in inputs.values()} for sequence, inputs in frames.items()}
    uneven = sorted(sequence for sequence, counts in lengths.items() if len(counts) > 1)
    if uneven:
        raise TritonForgeError(f"the inputs of sequence {uneven[0]} hold different numbers of frames "
                               f"({sorted(lengths[uneven[0]])}): give each input the same frames")
    lengths = {sequence: next(iter(counts), 0) for sequence, counts in lengths.items()}
    if not frames or min(lengths.values()) < 1:
        raise TritonForgeError("give at least one frame per sequence (an array [frames, ...])")
    collected: dict[int, dict[str, list[np.ndarray]]] = {s: {} for s in frames}
    latencies: list[float] = []
    sent_at: dict[str, float] = {}
    done = threading.Event()
    failure: list[str] = []
    pending = [len(frames)]

    def send(sequence: int, step: int) -> None:
        frame = {input_name: np.ascontiguousarray(array[step:step + 1])
                 for input_name, array in frames[sequence].items()}
        request_id = f"{sequence}:{step}"
        sent_at[request_id] = time.perf_counter()
        client.async_stream_infer(
            name, infer_inputs(frame), model_version=version, request_id=request_id,
            sequence_id=sequence, sequence_start=step == 0, sequence_end=step == lengths[sequence] - 1)

    def on_response(result, error) -> None:
        if error is not None:  # the stream's error does not carry the request ID: name those in flight
            in_flight = ", ".join(f"sequence {r.replace(':', ' frame ')}" for r in list(sent_at)[:4])
            failure.append(f"{getattr(error, 'message', lambda: error)()} (in flight: {in_flight})")
            done.set()
            return
        response = result.get_response()
        sequence, step = (int(part) for part in response.id.split(":"))
        latencies.append(time.perf_counter() - sent_at.pop(response.id))
        for output in response.outputs:
            collected[sequence].setdefault(output.name, []).append(result.as_numpy(output.name)[0])
        if step + 1 < lengths[sequence]:
            send(sequence, step + 1)
            return
        pending[0] -= 1
        if pending[0] == 0:
            done.set()

    start = time.perf_counter()
    client.start_stream(callback=on_response, headers=Endpoint.of(url).call_headers)
    try:
        for sequence in frames:
            send(sequence, 0)
        if not done.wait(timeout_s):
            failure.append(f"no answer within {timeout_s:g} s ({pending[0]} sequences unfinished)")
    finally:
        client.stop_stream(cancel_requests=bool(failure))
    if failure:
        raise TritonForgeError(f"Triton at {url} refused a frame of model {name!r}: {failure[0]}")
    outputs = {sequence: {k: np.stack(v) for k, v in by_name.items()}
               for sequence, by_name in collected.items()}
    return StreamResult(outputs, latencies, time.perf_counter() - start)


def stream_files(info: ModelInfo, values: Sequence[str]) -> dict[str, np.ndarray]:
    """`query --stream FILE.npy` (a model with one per-frame input) or `--stream NAME=FILE.npy`
    per input: the recordings of one sequence, each checked against its input."""
    from tritonforge.modalities.tensors import Tensors

    inputs = {frame.name: frame for frame in info.frame_inputs()}
    (given,) = Tensors().read_raw(values)  # [NAME=]FILE, read as `--npy` reads it
    if set(given) == {""} and len(inputs) == 1:  # one file for the model's one input
        given = {next(iter(inputs)): given[""]}
    if set(given) != set(inputs) or len(given) != len(values):
        raise TritonForgeError(f"model {info.name!r} streams {', '.join(inputs)} per frame: give "
                               f"--stream NAME=FILE.npy once for each")
    return {name: stream_file(info, inputs[name], path) for name, path in given.items()}


def stream_file(info: ModelInfo, frame: TensorInfo, path: Path) -> np.ndarray:
    """A recording [frames, ...one frame...] for one input of a streaming model (a .npy array,
    or a file in the model's own format such as a spike camera's .dat), checked against the
    frame the server declares (dtype, shape, finite values)."""
    from tritonclient.utils import triton_to_np_dtype

    from tritonforge.modalities.tensors import load_array, refuse_non_finite

    dims = list(frame.shape[1:] if info.max_batch_size else frame.shape)
    recorded = info.modality().recording(Path(path)) if "preprocessing" in info.parameters else None
    frames = load_array(path) if recorded is None else recorded
    dtype = np.dtype(triton_to_np_dtype(frame.datatype))
    fits = frames.ndim == len(dims) + 1 and all(d < 0 or d == n for d, n in zip(dims, frames.shape[1:],
                                                                             strict=True))
    if not fits or frames.dtype != dtype or len(frames) == 0:
        raise TritonForgeError(
            f"--stream {path} holds {frames.dtype} {list(frames.shape)}, but model {info.name!r} takes "
            f"a recording of frames [frames, {', '.join(map(str, dims))}] of {dtype.name}: save one "
            f"with numpy.save (at least one frame)")
    refuse_non_finite(frames, f"--stream {path}")
    return frames


# -- reading results -----------------------------------------------------------------------


def query_context(info: ModelInfo, min_score: float = 0.5, inputs: Mapping[str, np.ndarray] | None = None,
                  raw: Sequence[bytes] = (), rows: Sequence[str] = ()) -> QueryContext:
    """What the output kinds read beside the answer: the model's labels and output kinds, the
    request (`inputs`; `raw`: the raw items sent, such as image files) and its rows' names."""
    vocabulary = ""
    if "preprocessing" in info.parameters:  # the raw input a vocabulary comes in (`classes`)
        shared = [r.name for r in info.modality().raw_inputs if r.per_request]
        vocabulary = shared[0] if len(shared) == 1 else ""
    return QueryContext(info.name, info.labels, info.output_kinds, dict(inputs or {}), tuple(raw),
                        tuple(rows), min_score, vocabulary)


def summarize(info: ModelInfo, outputs: Mapping[str, np.ndarray], min_score: float = 0.5,
              inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """What `query` prints, by each output's declared kind (`tritonforge.outputs`), as data:
    embeddings as norms and cosine similarities, class scores as top labels, detections as
    boxes, other tensors as shape and statistics (integers stay integers)."""
    context = query_context(info, min_score, inputs)
    return summary_json(summaries(info.output_kinds, outputs, context), outputs)


def outputs_json(info: ModelInfo, outputs: Mapping[str, np.ndarray], summary: Mapping[str, Any],
                 context: QueryContext) -> dict[str, Any]:
    """`query --json`: every output with its kind, shape, dtype and values (integers as
    integers), and the summary `query` printed (`summarize`)."""
    return {"model": info.name, "inputs": list(context.rows),
            "outputs": answer_json(info.output_kinds, outputs, context), "summary": dict(summary)}


def bench_payloads(info: ModelInfo, repo: Path | str | None, shape: Mapping[str, int | None] | None = None
                   ) -> tuple[str, list[dict[str, np.ndarray]]]:
    """One request per real raw input of the model's modality (sentences, photographs, the
    samples saved with a tensor export), and the modality's kind."""
    modality = info.modality(repo)
    export = None  # read once, not once per payload
    if repo is not None and not info.takes_raw(modality):
        export = exported_version(repo, info.name)
    return modality.kind, [raw_request(info, modality, [item], repo, shape, export)
                           for item in modality.sample_raw(None, export[0] if export else None)]


def stream_samples(info: ModelInfo, repo: Path | str | None) -> list[dict[str, np.ndarray]]:
    """A streaming model's saved sample sequences ({input: [frames, ...]} each), from its export."""
    from tritonforge.modalities.tensors import SAMPLES_FILE

    if repo is None:
        raise TritonForgeError(f"streaming model {info.name!r} is benched with the sequences saved "
                               f"beside its export ({SAMPLES_FILE}): pass --repo")
    folder, _io = exported_version(repo, info.name)
    names = [frame.name for frame in info.frame_inputs()]
    with np.load(folder / SAMPLES_FILE) as saved:
        missing = [name for name in names if name not in saved.files]
        if missing:
            raise TritonForgeError(f"{folder / SAMPLES_FILE} holds {saved.files}, not {missing}: "
                                   "export the model again")
        arrays = {name: saved[name] for name in names}
    return [{name: arrays[name][row] for name in names} for row in range(len(arrays[names[0]]))]


def save_query_outputs(info: ModelInfo, outputs: Mapping[str, np.ndarray], path: Path,
                       context: QueryContext | None = None) -> list[Written]:
    """`query --save PATH`: each output whose kind has a file form (images as PNGs, depth maps,
    detections drawn on the photographs sent); one file goes to PATH itself, several to PATH's
    stem with `_<output>_<index>` added."""
    return save_outputs(info.output_kinds, outputs, path, context or query_context(info))
