"""Shared quantization: fake quantizers, observers, Outlier Suppression transforms, QDQ ONNX."""
