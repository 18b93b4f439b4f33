"""The per-instance thread count a config sets for its backend: what `tune` starts from and what
`serve`'s wrapper runs."""

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import TritonForgeError
from tritonforge.triton_config import config_threads


def config(backend: str, **parameters: str) -> mc.ModelConfig:
    made = mc.ModelConfig(name="m", backend=backend)
    for key, value in parameters.items():
        made.parameters[key].string_value = value
    return made


def test_each_backend_reads_its_own_parameter_and_none_means_the_default():
    assert config_threads(config("onnxruntime", intra_op_thread_count="3")) == 3
    assert config_threads(config("openvino", INFERENCE_NUM_THREADS="1")) == 1
    assert config_threads(config("openvino", intra_op_thread_count="3")) == 0  # another backend's
    assert config_threads(config("onnxruntime")) == 0


def test_a_value_that_is_not_a_thread_count_is_refused_naming_it():
    with pytest.raises(TritonForgeError, match="sets INFERENCE_NUM_THREADS to 'two'"):
        config_threads(config("openvino", INFERENCE_NUM_THREADS="two"))
