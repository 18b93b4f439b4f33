"""ONNX Runtime sessions, created one way for export checks, verify and the local server."""

from __future__ import annotations

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
