"""Inference sessions on an exported graph, created one way for export checks, verify and the
local server: ONNX Runtime, or OpenVINO behind the same small interface (`get_inputs`,
`get_outputs`, `run`), so everything written against an ONNX Runtime session runs both.

A *target* is where an artifact is meant to run, recorded in its manifest and its Triton
config: `onnxruntime` (ONNX Runtime on the CPU), `openvino` (OpenVINO's CPU plugin: Triton's
openvino backend reads the same model.onnx) or `tensorrt` (ONNX Runtime's TensorRT provider on a
GPU host). `default_target` picks what this machine runs best; `check_target` says what is
missing for a target that cannot run here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tritonforge.errors import TritonForgeError

# What `--provider` accepts, and the ONNX Runtime execution providers each one asks for.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def ort_session(path: Path, threads: int = 2, provider: str = "cpu"):
    """An InferenceSession on `path` with `threads` intra-op threads.

    Raises TritonForgeError when the file is not a loadable ONNX model, or when a GPU
    provider was asked for but ONNX Runtime fell back to the CPU (no GPU, no CUDA libs).
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise TritonForgeError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=PROVIDERS[provider])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise TritonForgeError(
            f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}. "
            "The file is missing or damaged: export the model again."
        ) from exc
    wanted = PROVIDERS[provider][0]
    if wanted not in session.get_providers():
        raise TritonForgeError(
            f"execution provider {wanted} is not usable here (ONNX Runtime fell back to "
            f"{session.get_providers()}): run on a host with a CUDA GPU, or use --provider cpu"
        )
    return session


def run_session(session, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run with the inputs the graph declares; outputs keyed by name, as float32 where floating."""
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, feed)
    return {
        name: out.astype(np.float32, copy=False) if np.issubdtype(out.dtype, np.floating) else out
        for name, out in zip(names, outputs, strict=True)
    }


# -- targets ---------------------------------------------------------------------------------

TARGETS = ("onnxruntime", "openvino", "tensorrt")
# What computes for each target, as people call it (a tensorrt artifact is checked here with ONNX
# Runtime); also names the runtime a report was measured with.
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "tensorrt": "ONNX Runtime", "openvino": "OpenVINO"}
# Precisions each target computes in: what `--bits 16` means there.
HALF_PRECISION = {"onnxruntime": "fp16", "tensorrt": "fp16", "openvino": "bf16"}
OPENVINO_PIN = "openvino==2026.4.1"
# Set to 1 to run as on a CPU without native bfloat16 (the test suite's "no BF16" run).
NO_BF16_ENV = "TRITONFORGE_NO_BF16"


def openvino_core():
    """OpenVINO's Core, or an error that says how to install it."""
    try:
        import openvino
    except ImportError:
        raise TritonForgeError(
            f"target openvino needs the openvino package, which is not installed: pip install "
            f"{OPENVINO_PIN} (make setup installs it), or choose --target onnxruntime") from None
    return openvino.Core()


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 natively here (AVX512_BF16 or AMX);
    False whatever the CPU when TRITONFORGE_NO_BF16 is set to 1, yes or true."""
    if os.environ.get(NO_BF16_ENV, "").strip().lower() in ("1", "yes", "true"):
        return False
    try:
        return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except TritonForgeError:
        return False


def default_target(gpu: bool = False) -> str:
    """The target this machine runs best: TensorRT for a GPU export, OpenVINO on a CPU where
    it is installed (faster than ONNX Runtime on BERT: see `tritonforge quality bert`), else
    ONNX Runtime."""
    if gpu:
        return "tensorrt"
    try:
        openvino_core()
    except TritonForgeError:
        return "onnxruntime"
    return "openvino"


def check_target(target: str, precision: str) -> str | None:
    """Why `target` cannot compute in `precision` on this machine, or None when it can.
    TensorRT artifacts are built for a GPU host and checked here with ONNX Runtime's CPU
    provider, so only OpenVINO's package and BF16 hardware are checked."""
    if target not in TARGETS:
        return f"--target {target!r} is unknown: choose one of {', '.join(TARGETS)} or auto"
    if target != "openvino":
        return None
    try:
        openvino_core()
    except TritonForgeError as exc:
        return str(exc)
    if precision == "bf16" and not cpu_has_bf16():
        return ("this CPU has no native bfloat16 (AVX512_BF16 or AMX), so OpenVINO cannot run a "
                "BF16 artifact here: export --bits 32, or run on a CPU with BF16")
    return None


def meaningful_line(exc: Exception) -> str:
    """OpenVINO's message without the "Exception from <source file>" line it adds per frame."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.startswith("Exception from ")]
    return (lines[0] if lines else str(exc).strip())[:300]


class _Port:
    """What `get_inputs()` / `get_outputs()` items offer: a name (as ONNX Runtime's NodeArg)."""

    def __init__(self, name: str):
        self.name = name


class OpenVINOSession:
    """An OpenVINO CPU compiled model with ONNX Runtime's session interface.

    `precision` is the inference precision: "fp32" computes in float32 (the exact artifact),
    "bf16" in bfloat16 where the CPU has it; int8 QDQ graphs run OpenVINO's integer kernels
    either way. One infer request, latency hint, `threads` inference threads.
    """

    def __init__(self, path: Path, threads: int = 2, precision: str = "fp32"):
        core = openvino_core()
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        self.compile = lambda: core.compile_model(str(path), "CPU", config)
        try:
            self.compiled = self.compile()
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
            raise TritonForgeError(
                f"OpenVINO cannot load {path}: {meaningful_line(exc)} The file is missing or "
                "damaged: export the model again.") from exc
        self.request = self.compiled.create_infer_request()
        declared = graph_io_names(path)
        self._inputs = [_Port(port_name(port, declared)) for port in self.compiled.inputs]
        self._outputs = [_Port(port_name(port, declared)) for port in self.compiled.outputs]

    def get_inputs(self) -> list[_Port]:
        return self._inputs

    def get_outputs(self) -> list[_Port]:
        return self._outputs

    def run(self, names, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            results = self.request.infer(dict(feed), share_inputs=False, share_outputs=False)
        except Exception as exc:
            # A failed shape inference stays in OpenVINO 2026.4's compiled model and fails every
            # later call: compile afresh, then report this call's problem.
            self.compiled = self.compile()
            self.request = self.compiled.create_infer_request()
            raise TritonForgeError(f"OpenVINO could not run the model on inputs "
                                   f"{ {k: list(v.shape) for k, v in feed.items()} }: "
                                   f"{meaningful_line(exc)}") from exc
        by_name = {name: value for port, value in results.items() for name in port.get_names()}
        return [np.asarray(by_name[name]) for name in (names or [o.name for o in self._outputs])]


def openvino_executed_ops(path: Path, threads: int = 2, precision: str = "fp32") -> dict[str, int]:
    """The operations OpenVINO's CPU plugin executes for `path` after its own fusions, counted by
    type and the precision each ran in ("FullyConnected u8": an integer GEMM reading unsigned
    8-bit activations; "Subgraph f32": a fused snippet, attention's among them): the evidence
    of which MatMuls run integer kernels and whether attention stayed one kernel."""
    compiled = OpenVINOSession(path, threads, precision).compiled
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Const", "Input", "Output", "Parameter", "Result"):
            continue
        key = f"{kind} {info['runtimePrecision'].astype(str)}" if "runtimePrecision" in info else kind
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def graph_io_names(path: Path) -> set[str]:
    """The input and output names an ONNX file declares."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # OpenVINO read it; fall back on the names OpenVINO gives
        return set()
    return {value.name for value in (*graph.input, *graph.output)}


def port_name(port, declared: set[str]) -> str:
    """The graph's own name of an OpenVINO port. A port carries every name its tensor has:
    where a graph input or output is also an inner tensor (DETR's boxes are `/Min_1_output_0`
    too, a streaming SNN's state is a Reshape's output), `get_any_name` may return the inner one."""
    return next((name for name in sorted(port.get_names()) if name in declared), port.get_any_name())


def open_session(path: Path, target: str = "onnxruntime", threads: int = 2, precision: str = "fp32",
                 provider: str | None = None):
    """A session on `path` for `target`: OpenVINO for openvino, else ONNX Runtime with
    `provider` (default: the CPU; a tensorrt artifact is checked on the CPU unless asked)."""
    if target == "openvino":
        problem = check_target(target, precision)
        if problem:
            raise TritonForgeError(problem)
        return OpenVINOSession(path, threads, precision)
    return ort_session(path, threads, provider or "cpu")
