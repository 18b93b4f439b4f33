"""tritonforge: research models to verified ONNX artifacts, served by NVIDIA Triton."""

__version__ = "0.1.0"
