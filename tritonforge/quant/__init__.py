"""The quantization core, model-agnostic: fake quantizers and observers (`quantizers`),
Outlier Suppression transforms (`migration`), calibration and LSQ+ (`calibrate`), block
reconstruction (`reconstruct`), mixed precision (`mixed`), k-bit QDQ ONNX (`qdq`) and ONNX
Runtime's static INT8 with float exclusions (`static`). Models plug in through
`quantizable.Quantizable`; the quantizable BERT encoder shared by the bert and dask families
is `encoders/slotted_bert.py`, and each family's recipe lives in its own package."""
