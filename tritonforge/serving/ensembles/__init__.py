"""Python-backend models served beside the ONNX models. Each file here runs inside Triton's
python stub and imports only numpy and the library it wraps, never tritonforge, so it can be
copied into any Triton with the python backend (the NGC image included).

`onnx_runtime.py`   runs an ONNX model with ONNX Runtime (the local server's stand-in for
                    Triton's onnxruntime backend; see tritonforge.serving.local)
`text_tokenizer.py` raw strings -> token arrays, the step of a `<name>_text` ensemble
`image_decode.py`   encoded image bytes -> a normalised tensor, the step of `<name>_image`

The ensembles that chain them are built by the modalities (`tritonforge.modalities`).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
ONNX_RUNTIME_MODEL = HERE / "onnx_runtime.py"
PYTHON_MODEL_FILE = "model.py"
