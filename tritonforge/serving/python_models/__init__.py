"""Python-backend models that only `tritonforge serve` runs.

`onnx_runtime.py` runs an ONNX model with ONNX Runtime: the local server's stand-in for Triton's
onnxruntime and openvino backends (see tritonforge.serving.local). Like every python-backend
model of the project it imports only numpy and the library it wraps, never tritonforge.
"""

from __future__ import annotations

from pathlib import Path

ONNX_RUNTIME_MODEL = Path(__file__).parent / "onnx_runtime.py"
