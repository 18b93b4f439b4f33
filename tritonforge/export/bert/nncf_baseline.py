"""Intel's own INT8 for a BERT encoder, as a baseline row of `tritonforge quality bert`.

NNCF's post-training quantization with the recipe Intel documents for transformers (and that
optimum-intel runs): `ModelType.TRANSFORMER` (SmoothQuant, attention's MatMuls kept where
OpenVINO fuses them), the mixed preset (symmetric weights, asymmetric activations) and 300
calibration texts. It quantizes the OpenVINO model read from the same FP32 ONNX graph our rows
start from, calibrated on the same shipped corpus, and runs on OpenVINO only. NNCF is optional
(`pip install 'tritonforge[nncf]'`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.runtime import openvino_core

NNCF_PIN = "nncf==3.4.0"
NNCF_TEXTS = 300  # the calibration subset of Intel's transformer recipe


def nncf_missing() -> str | None:
    """Why NNCF's row cannot be made here, or None when it can."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        return (f"NNCF is not installed, so its INT8 row is left out: pip install "
                f"'tritonforge[nncf]' (or {NNCF_PIN}) to add it")
    return None


def nncf_int8(fp_onnx: Path, calibration: Mapping[str, np.ndarray], target: Path) -> Path:
    """NNCF's INT8 (transformer recipe) of the FP32 graph `fp_onnx`, calibrated on the token
    arrays `calibration` one text at a time, saved as OpenVINO IR at `target` (.xml)."""
    problem = nncf_missing()
    if problem:
        raise TritonForgeError(problem)
    import nncf
    import openvino

    model = openvino_core().read_model(str(fp_onnx))
    count = len(next(iter(calibration.values())))
    items = [{name: values[i:i + 1] for name, values in calibration.items()} for i in range(count)]
    quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.MIXED, subset_size=count)
    openvino.save_model(quantized, str(target), compress_to_fp16=False)
    return target
