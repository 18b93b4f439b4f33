"""Python-backend models served beside the ONNX models, and the ensembles that chain them.

`onnx_runtime.py`   runs an ONNX model with ONNX Runtime (the local server's stand-in for
                    Triton's onnxruntime backend; see tritonforge.serving.local)
`text_tokenizer.py` raw strings -> token arrays, first step of a `<name>_text` ensemble
"""

from __future__ import annotations

import json
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.export.base import ModelIO
from tritonforge.serving.ensembles.text_tokenizer import (
    DEFAULT_BUCKETS,
    TEXT_INPUT,
    TOKEN_OUTPUTS,
    bucket_lengths,
)
from tritonforge.serving.repository import (
    CompanionModel,
    ServingOptions,
    triton_dtype,
    validate_name,
)

HERE = Path(__file__).parent
ONNX_RUNTIME_MODEL = HERE / "onnx_runtime.py"
TEXT_TOKENIZER_MODEL = HERE / "text_tokenizer.py"
PYTHON_MODEL_FILE = "model.py"
TEXT_SUFFIX = "_text"
TOKENIZER_SUFFIX = "_tokenizer"
TOKENIZER_FILE = "tokenizer.json"


def text_ensemble(name: str, io: ModelIO, serving: ServingOptions,
                  tokenizer_json: str = "tokenizer/tokenizer.json") -> tuple[CompanionModel, ...]:
    """`<name>_tokenizer` (python backend) and `<name>_text` (ensemble: TEXT -> the model's outputs).

    `tokenizer_json` is relative to the exported model's version folder; `io.preprocessing`
    gives max_length and pad_token_id.
    """
    if set(io.input_names) != set(TOKEN_OUTPUTS):
        raise ValueError(f"a text ensemble feeds {TOKEN_OUTPUTS}, the model takes {io.input_names}")
    tokenizer_name = validate_name(name + TOKENIZER_SUFFIX)
    ensemble_name = validate_name(name + TEXT_SUFFIX)
    max_length = int(io.preprocessing["max_length"])

    tokenizer = mc.ModelConfig(name=tokenizer_name, backend="python",
                               max_batch_size=serving.max_batch_size)
    tokenizer.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for output in TOKEN_OUTPUTS:
        tokenizer.output.add(name=output, data_type=mc.TYPE_INT64, dims=[-1])
    tokenizer.dynamic_batching.SetInParent()  # takes what is queued, never waits for more
    tokenizer.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    parameters = {"tokenizer_file": TOKENIZER_FILE, "max_length": str(max_length),
                  "buckets": ",".join(map(str, bucket_lengths(max_length, DEFAULT_BUCKETS))),
                  "pad_token_id": str(int(io.preprocessing["pad_token_id"]))}
    for key, value in parameters.items():
        tokenizer.parameters[key].string_value = value

    ensemble = mc.ModelConfig(name=ensemble_name, platform="ensemble",
                              max_batch_size=serving.max_batch_size)
    ensemble.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for spec in io.outputs:
        ensemble.output.add(name=spec.name, data_type=triton_dtype(spec.dtype), dims=list(spec.dims))
    if io.preprocessing.get("labels"):
        ensemble.parameters["labels"].string_value = json.dumps(list(io.preprocessing["labels"]))
    steps = ensemble.ensemble_scheduling
    tokenize = steps.step.add(model_name=tokenizer_name, model_version=-1)
    tokenize.input_map[TEXT_INPUT] = TEXT_INPUT
    run = steps.step.add(model_name=name, model_version=-1)
    for tensor in TOKEN_OUTPUTS:
        tokenize.output_map[tensor] = tensor
        run.input_map[tensor] = tensor
    for spec in io.outputs:
        run.output_map[spec.name] = spec.name
    return (CompanionModel(tokenizer, {PYTHON_MODEL_FILE: TEXT_TOKENIZER_MODEL,
                                       TOKENIZER_FILE: tokenizer_json}),
            CompanionModel(ensemble, {}))
