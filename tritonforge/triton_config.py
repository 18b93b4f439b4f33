"""How Triton runs an export: serving options, config.pbtxt messages, companion models.

The layer under the model repository, the modalities and the families: it builds
`model_config_pb2.ModelConfig` messages from a `ModelIO` and `ServingOptions`, and names the
files a model folder holds. It imports nothing of tritonforge but the vocabulary (`spec`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype

from tritonforge.errors import TritonForgeError
from tritonforge.spec import ModelIO, TensorSpec

CONFIG_FILE = "config.pbtxt"
MANIFEST_FILE = "tritonforge.json"
MODEL_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"  # a python-backend model's file in its version folder
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_model_name(name: str) -> bool:
    """A model name is one plain folder name: no '/', no '..', no leading dot."""
    return bool(_NAME.match(name)) and ".." not in name


def validate_name(name: str) -> str:
    """`name`, or an error that says what a model name may be."""
    if not is_model_name(name):
        raise TritonForgeError(
            f"model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, without '/' or '..' (at most 128 characters)"
        )
    return name


# -- config.pbtxt -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingOptions:
    """How Triton should run the model; the part of the config that is not the model's I/O."""

    max_batch_size: int = 32
    gpu: bool = False
    fp16: bool = False  # TensorRT precision when gpu
    # Where the graph runs (tritonforge.runtime.TARGETS): onnxruntime and tensorrt through
    # Triton's onnxruntime backend, openvino through Triton's openvino backend on model.onnx.
    target: str = "onnxruntime"
    bf16: bool = False  # OpenVINO computes in bfloat16 (CPUs with AVX512_BF16 or AMX)
    instances: int = 1
    queue_delay_us: int = 500
    warmup_length: int = 16  # stands in for dynamic axes in the warm-up request
    # Streaming (stateful) models: sequences held at once, and how long one may stay silent
    # before Triton frees its slot (Triton's own default is 1 s, too short for a live stream).
    max_sequences: int = 64
    sequence_idle_us: int = 60_000_000
    # Which versions Triton loads (`VERSION_POLICY_HELP`): "latest" (the newest one), "all"
    # (every version stays addressable, as per-chunk models of one video need) or
    # "specific:N,M" (those versions only); written normalised ("specific:1,3")
    version_policy: str = "latest"

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise TritonForgeError(
                f"--max-batch {self.max_batch_size} must be at least 1 (Triton batches along dim 0)")
        if self.instances < 1:
            raise TritonForgeError(f"instance count {self.instances} must be at least 1")
        if self.target not in ("onnxruntime", "openvino", "tensorrt"):
            raise TritonForgeError(f"serving target {self.target!r} is unknown: choose onnxruntime, "
                                   "openvino or tensorrt")
        kind, versions = parse_version_policy(self.version_policy)
        object.__setattr__(self, "version_policy", format_version_policy(kind, versions))
        if self.max_sequences < 1 or self.sequence_idle_us < 1:
            raise TritonForgeError(f"max_sequences {self.max_sequences} and sequence_idle_us "
                                   f"{self.sequence_idle_us} must be positive")


# -- version policies ----------------------------------------------------------------------

VERSION_POLICY_HELP = ("Which versions Triton serves: latest (the newest), all (every version on disk) "
                       "or specific:N,M (those versions; each must exist once this export is written).")


def parse_version_policy(text: str) -> tuple[str, tuple[int, ...]]:
    """("latest" | "all" | "specific", the specific versions, sorted) of a policy as the
    command line writes it: latest, all, or specific:N[,M...]."""
    kind, colon, listed = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind in ("latest", "all") and not colon:
        return kind, ()
    if kind == "specific" and colon:
        items = [item.strip() for item in listed.split(",")]
        if items and all(item.isdigit() and int(item) >= 1 for item in items):
            return kind, tuple(sorted({int(item) for item in items}))
        raise TritonForgeError(f"version policy {text!r} names no valid versions: write specific:N or "
                               "specific:N,M with version numbers from 1, e.g. specific:1,3")
    raise TritonForgeError(f"version policy {text!r} is unknown: choose latest (serve the newest version), "
                           "all (serve every version) or specific:N,M (serve those versions)")


def format_version_policy(kind: str, versions: Sequence[int] = ()) -> str:
    return f"specific:{','.join(map(str, sorted(versions)))}" if kind == "specific" else kind


def set_version_policy(config: mc.ModelConfig, policy: str) -> mc.ModelConfig:
    """Write `policy` (latest, all, specific:N,M) into `config`'s version_policy; returns it."""
    kind, versions = parse_version_policy(policy)
    config.ClearField("version_policy")
    if kind == "latest":
        config.version_policy.latest.num_versions = 1
    elif kind == "all":
        config.version_policy.all.SetInParent()
    else:
        config.version_policy.specific.versions.extend(versions)
    return config


def version_policy_text(config: mc.ModelConfig) -> str:
    """A config's policy as the command line writes it (latest:N when it keeps the newest N);
    no policy is Triton's default, latest."""
    choice = config.version_policy.WhichOneof("policy_choice")
    if choice == "specific":
        return format_version_policy("specific", config.version_policy.specific.versions)
    if choice == "latest" and config.version_policy.latest.num_versions > 1:
        return f"latest:{config.version_policy.latest.num_versions}"
    return choice or "latest"


def policy_versions(config: mc.ModelConfig, available: Sequence[int]) -> list[int]:
    """The versions among `available` (those on disk) that Triton serves under `config`'s
    policy: the newest N for latest (N = 1 unless it says), every one for all, the listed
    ones that exist for specific."""
    available = sorted(available)
    choice = config.version_policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        return [v for v in available if v in set(config.version_policy.specific.versions)]
    newest = max(config.version_policy.latest.num_versions, 1) if choice == "latest" else 1
    return available[-newest:]


def follow_policy(companion: mc.ModelConfig, model: mc.ModelConfig,
                  versions: Sequence[int]) -> mc.ModelConfig:
    """`companion`'s config (a step or ensemble of the export `model`) as it follows the
    export's version policy: a specific policy for the listed versions it has (`versions`: its
    versions on disk), so the raw-input path serves the same versions as the model; a
    specific policy of its own dropped (back to Triton's default) when the model's is not
    specific. A copy when it changes; `companion` itself otherwise."""
    wanted = (model.version_policy.specific.versions
              if model.version_policy.WhichOneof("policy_choice") == "specific" else ())
    listed = [v for v in wanted if v in set(versions)]
    own = (list(companion.version_policy.specific.versions)
           if companion.version_policy.WhichOneof("policy_choice") == "specific" else None)
    if own == (listed or None):  # already so: no policy of its own to drop, or the same versions
        return companion
    followed = mc.ModelConfig()
    followed.CopyFrom(companion)
    followed.ClearField("version_policy")
    if listed:
        followed.version_policy.specific.versions.extend(listed)
    return followed


def triton_dtype(dtype: str) -> int:
    """numpy dtype name -> ModelConfig DataType (strings travel as TYPE_STRING)."""
    name = np_to_triton_dtype(np.dtype(dtype))
    return mc.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    return [size for size in (4, 8, 16, 32) if size <= max_batch_size] or [max_batch_size]


def add_tensors(field, specs: Sequence[TensorSpec]) -> None:
    """Declare `specs` in a config's `input` or `output` field."""
    for spec in specs:
        field.add(name=spec.name, data_type=triton_dtype(spec.dtype), dims=list(spec.dims))


def describe_model(config: mc.ModelConfig, io: ModelIO) -> None:
    """What clients read from the served config (`query` prints labels, not indices, and each
    output in its natural form): the labels, each output's kind, the pre-processing record."""
    if io.labels:
        config.parameters["labels"].string_value = json.dumps(list(io.labels))
    state = {name for _in, name in io.state}  # kept by the server, never returned
    config.parameters["output_kinds"].string_value = json.dumps(
        {t.name: t.kind for t in io.outputs if t.name not in state})
    config.parameters["preprocessing"].string_value = json.dumps(io.preprocessing.to_json())


def model_config(name: str, io: ModelIO, serving: ServingOptions,
                 backend: str = "onnxruntime") -> mc.ModelConfig:
    """A ModelConfig message for one model; serialize with `config_text`.

    A model with `io.request_inputs` (a vocabulary for the whole request) gets no batcher: Triton
    would give every input a batch axis and merge requests that carry different vocabularies, so
    it takes whole requests (max_batch_size 0, every tensor's full shape declared; a request may
    still hold several samples). A model with `io.state` (one step of a stream) gets the
    sequence batcher instead of the dynamic batcher: its state tensors leave the declared I/O
    and become implicit state that Triton keeps per sequence, zero at START; it gets no warm-up
    (a warm-up request carries no sequence)."""
    state = {name for pair in io.state for name in pair}
    if serving.target == "openvino" and backend == "onnxruntime":
        backend = "openvino"
    whole = set(io.request_inputs)
    config = mc.ModelConfig(name=name, backend=backend, max_batch_size=0 if whole else serving.max_batch_size)
    set_version_policy(config, serving.version_policy)
    inputs = [t for t in io.inputs if t.name not in state]
    outputs = [t for t in io.outputs if t.name not in state]
    if whole:  # no batcher: each tensor's whole shape, the batch axis first where there is one
        inputs = [t if t.name in whole else batched(t) for t in inputs]
        outputs = [batched(t) for t in outputs]
    add_tensors(config.input, inputs)
    add_tensors(config.output, outputs)
    kind = mc.ModelInstanceGroup.KIND_GPU if serving.gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=serving.instances, kind=kind)
    if io.state:
        sequence_batching(config, io, serving)
    else:
        if not whole:
            config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(serving.max_batch_size))
            config.dynamic_batching.max_queue_delay_microseconds = serving.queue_delay_us
        warmup = config.model_warmup.add(name="warmup", batch_size=1)
        for spec in inputs:  # one sample: a batch axis of 1, other free axes warmup_length long
            dims = [1 if whole and spec.name not in whole and axis == 0 else serving.warmup_length if d < 0
                    else d for axis, d in enumerate(spec.dims)]
            warmup.inputs[spec.name].CopyFrom(mc.ModelWarmup.Input(
                data_type=triton_dtype(spec.dtype), dims=dims, zero_data=True))
    describe_model(config, io)
    if backend == "openvino":
        openvino_parameters(config, serving)
    if serving.gpu:
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        accelerators.add(name="tensorrt", parameters={
            "precision_mode": "FP16" if serving.fp16 else "FP32",
            "max_workspace_size_bytes": str(1 << 30),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": "/tmp/triton_trt_cache",
        })
    return config


def batched(spec: TensorSpec) -> TensorSpec:
    """`spec` with its batch axis written out, for a model without Triton's batcher."""
    return replace(spec, dims=(-1, *spec.dims))


# The config parameter each backend reads its per-instance thread count from (`tritonforge tune`
# writes it; `serve`'s wrapper reads it, see `tritonforge.serving.local.shadow_config`).
THREAD_PARAMETERS = {"onnxruntime": "intra_op_thread_count", "openvino": "INFERENCE_NUM_THREADS"}


def thread_parameter(config: mc.ModelConfig) -> str:
    """The name of the thread-count parameter of `config`'s backend."""
    return THREAD_PARAMETERS["openvino" if config.backend == "openvino" else "onnxruntime"]


def config_threads(config: mc.ModelConfig) -> int:
    """The per-instance thread count `config` sets for its backend; 0 when it sets none."""
    name = thread_parameter(config)
    parameter = config.parameters.get(name)
    text = parameter.string_value.strip() if parameter is not None else ""
    if text and not text.isdigit():
        raise TritonForgeError(f"{config.name}'s config sets {name} to {text!r}, which is not a thread "
                               "count: give a whole number (or remove it for the backend's default)")
    return int(text) if text else 0


def openvino_parameters(config: mc.ModelConfig, serving: ServingOptions) -> None:
    """Triton's openvino backend on the version's model.onnx (OpenVINO reads ONNX itself, so
    the artifact is the same file the other targets serve): latency hint, one stream per
    instance, bfloat16 when the export was checked in it."""
    config.default_model_filename = MODEL_FILE
    parameters = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if serving.bf16:
        parameters["HINT_BF16"] = "YES"
    for key, value in parameters.items():
        config.parameters[key].string_value = value


def sequence_batching(config: mc.ModelConfig, io: ModelIO, serving: ServingOptions) -> None:
    """The sequence batcher with the `oldest` strategy (frames of different sequences share a
    batch) and one implicit state per `io.state` pair, zero at each sequence's START."""
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = serving.sequence_idle_us
    batching.oldest.max_candidate_sequences = serving.max_sequences
    batching.oldest.preferred_batch_size.extend(preferred_batch_sizes(serving.max_batch_size))
    batching.oldest.max_queue_delay_microseconds = serving.queue_delay_us
    specs = {spec.name: spec for spec in (*io.inputs, *io.outputs)}
    for state_in, state_out in io.state:
        spec = specs[state_in]
        if spec.dims != specs[state_out].dims or any(d < 0 for d in spec.dims):
            raise TritonForgeError(f"state {state_in} -> {state_out} must keep one fixed shape "
                                   f"({list(spec.dims)} -> {list(specs[state_out].dims)})")
        batching.state.add(
            input_name=state_in, output_name=state_out, data_type=triton_dtype(spec.dtype),
            dims=list(spec.dims),
            initial_state=[mc.ModelSequenceBatching.InitialState(
                name="zeros", data_type=triton_dtype(spec.dtype), dims=list(spec.dims), zero_data=True)])


def state_specs(config: mc.ModelConfig) -> list[tuple[str, str, list[int], str]]:
    """(input name, output name, dims, numpy dtype) of each implicit state of a config."""
    from tritonclient.utils import triton_to_np_dtype

    return [(s.input_name, s.output_name, list(s.dims),
             np.dtype(triton_to_np_dtype(mc.DataType.Name(s.data_type)[len("TYPE_"):])).name)
            for s in config.sequence_batching.state]


@dataclass(frozen=True)
class CompanionModel:
    """A model served beside an exported one: an ensemble, or a python-backend step of one.

    `files` maps a file name in the companion's version folder to its source: an absolute
    path, or a path relative to the exported model's version folder (e.g. its tokenizer).
    """

    config: mc.ModelConfig
    files: Mapping[str, Path | str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class TritonModels:
    """What a family serves for one export: the ONNX model's config and its companions."""

    config: mc.ModelConfig
    companions: tuple[CompanionModel, ...] = ()


def name_family(models: TritonModels, family: str) -> None:
    """Write the family into the config of the model and of each companion, so that a client
    that meets a modality or output kind of that family's own knows which package defines it."""
    for config in (models.config, *(companion.config for companion in models.companions)):
        config.parameters["family"].string_value = family


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def io_signature(config: mc.ModelConfig) -> list[tuple]:
    """What clients depend on: each input/output's name, dtype and dims, and batching."""
    rows = [("max_batch_size", config.max_batch_size > 0)]
    for group, tensors in (("input", config.input), ("output", config.output)):
        rows += [(group, t.name, t.data_type, tuple(t.dims)) for t in tensors]
    return rows


def onnx_io_signature(path: Path) -> tuple[list[tuple[str, int, list]], list[tuple[str, int, list]]]:
    """(name, ONNX elem type, dims) for each graph input and output; dims are ints or names."""
    import onnx

    def describe(values: Sequence) -> list[tuple[str, int, list]]:
        rows = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
            rows.append((value.name, tensor.elem_type, dims))
        return rows

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return describe([i for i in graph.input if i.name not in initializers]), describe(graph.output)


def onnx_io_matches_config(onnx_inputs: Sequence, onnx_outputs: Sequence,
                           config: mc.ModelConfig) -> list[str]:
    """Differences between an ONNX file's graph I/O and the config (empty when they agree).

    ONNX rows are (name, elem_type, dims) with the batch axis first; dims that are names
    (dynamic) must be -1 in the config.
    """
    import onnx
    from onnx import helper

    problems = []
    state = config.sequence_batching.state
    for kind, rows, tensors in (("input", onnx_inputs, config.input),
                                ("output", onnx_outputs, config.output)):
        by_name = {t.name: t for t in tensors}
        for entry in state:  # implicit state: a graph input/output the config keeps apart
            name = entry.input_name if kind == "input" else entry.output_name
            by_name[name] = mc.ModelInput(name=name, data_type=entry.data_type, dims=entry.dims)
        if {r[0] for r in rows} != set(by_name):
            problems.append(f"{kind} names: onnx {sorted(r[0] for r in rows)} vs config "
                            f"{sorted(by_name)}")
            continue
        for name, elem_type, dims in rows:
            tensor = by_name[name]
            want = mc.DataType.Name(tensor.data_type)
            have = triton_dtype(helper.tensor_dtype_to_np_dtype(elem_type).name) \
                if elem_type != onnx.TensorProto.STRING else mc.TYPE_STRING
            if have != tensor.data_type:
                problems.append(f"{kind} {name}: onnx {mc.DataType.Name(have)} vs config {want}")
            shape = dims[1:] if config.max_batch_size > 0 else dims  # without batching: the whole shape
            onnx_dims = [-1 if isinstance(d, str) or d == 0 else d for d in shape]
            if onnx_dims != list(tensor.dims):
                problems.append(f"{kind} {name}: onnx dims {onnx_dims} vs config {list(tensor.dims)}")
    return problems
