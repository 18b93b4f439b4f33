"""The model families, one package each (bert, dask, snn, detr, sr), and the ONNX steps they
share (`onnx.py`). The contract they implement is `tritonforge.family`."""
