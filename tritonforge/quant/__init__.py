"""The quantization core, model-agnostic: fake quantizers and observers, Outlier Suppression
transforms, calibration and LSQ+, QDQ ONNX. Models plug in through `quantizable.Quantizable`;
each family's wiring lives in its own folder (BERT's: `encoders/slotted_bert.py`)."""
