"""A modality: how a client's raw input (text, image bytes, arrays) becomes a model's tensors.

One small frozen dataclass per modality owns both sides of the wire:

- its fields are the manifest's pre-processing record (`io.preprocessing`), serialised with
  a version and validated when read back;
- `companions` are the Triton models that do the pre-processing on the server (a
  python-backend step and an ensemble `<name><suffix>` taking the raw input);
- `request` builds what a client sends to that ensemble, `encode` what it sends to the
  tensor model itself (the same code the python step runs);
- `sample_raw` gives real payloads for `bench`, `shape_defaults` the shape options that
  `verify`/`bench` take (`--seq-len`, `--image-size`, `--timesteps`), and `limits` the
  bounds enforced alike by the client, the companion and the config.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import TritonForgeError
from tritonforge.spec import ModelIO
from tritonforge.triton_config import (
    PYTHON_MODEL_FILE,
    CompanionModel,
    ServingOptions,
    add_tensors,
    describe_model,
    validate_name,
)


@dataclasses.dataclass(frozen=True)
class Modality:
    """Base of the modality records. Subclasses are frozen dataclasses."""

    kind: ClassVar[str]
    version: ClassVar[int] = 1
    suffix: ClassVar[str] = ""  # the companion ensemble is `<name><suffix>`; "" when none
    raw_input: ClassVar[str] = ""  # the ensemble's input name (TEXT, IMAGE)
    query_option: ClassVar[str] = ""  # the `query` option that carries this raw input
    shape_defaults: ClassVar[Mapping[str, int | None]] = {}

    # -- the manifest record ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = {"kind": self.kind, "version": self.version}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            data[item.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Modality:
        version = int(data.get("version", 1))
        if version > cls.version:
            raise TritonForgeError(
                f"the {cls.kind!r} pre-processing record has version {version}, newer than this "
                f"tritonforge reads ({cls.version}): upgrade tritonforge to use this model")
        known = {item.name: item for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known) - {"kind", "version"})
        if unknown:
            raise TritonForgeError(
                f"the {cls.kind!r} pre-processing record has unknown fields {unknown}: it was "
                "written by another tritonforge; export the model again")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in data.items():
            if name in known:
                values[name] = tuple(value) if "tuple" in str(hints[name]) and value is not None else value
        return cls(**values)

    # -- shapes and limits ------------------------------------------------------------------

    # The common serving request, timed beside the batch shape: (batch size, shape options),
    # or None when the modality has no smaller typical request.
    serving_request: ClassVar[tuple[int, dict[str, int]] | None] = None

    def resolve_shape(self, given: Mapping[str, int | None] | None = None) -> dict[str, int | None]:
        """The shape options of this modality, defaults filled in; an option of another
        modality (e.g. --image-size for a text model) is refused."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        foreign = sorted(set(given) - set(self.shape_defaults))
        if foreign:
            takes = ", ".join(f"--{k.replace('_', '-')}" for k in self.shape_defaults) or "none"
            raise TritonForgeError(
                f"{', '.join('--' + k.replace('_', '-') for k in foreign)} does not apply to a "
                f"model that takes {self.kind} input (its shape options: {takes})")
        for key, value in given.items():
            if value < 1:
                raise TritonForgeError(f"--{key.replace('_', '-')} {value} must be at least 1")
        return {**self.shape_defaults, **given}

    def limits(self) -> dict[str, Any]:
        """Bounds on one request, enforced by the client, the companion and the config. Values
        are JSON: `tritonforge serve` passes each to the ONNX Runtime wrapper as a config
        parameter (see serving/python_models/onnx_runtime.py for the ones it enforces)."""
        return {}

    def write_samples(self, folder: Path, inputs: Mapping[str, np.ndarray]) -> None:
        """Keep real inputs beside an export when the modality has no samples of its own."""
        return None

    # -- the server side ----------------------------------------------------------------------

    def companions(self, name: str, io: ModelIO, serving: ServingOptions) -> tuple[CompanionModel, ...]:
        """The Triton models that take the raw input (none: clients send the tensors)."""
        return ()

    # -- the client side ----------------------------------------------------------------------

    def read_raw(self, values: Sequence[str]) -> list[Any]:
        """The `query` option's values (texts, file paths) as raw inputs."""
        raise TritonForgeError(f"a {self.kind} model takes no raw input: send its tensors with --input-json")

    def request(self, raw: Sequence[Any]) -> dict[str, np.ndarray]:
        """What a client sends to the companion ensemble for these raw inputs."""
        raise TritonForgeError(f"a {self.kind} model has no companion ensemble")

    def encode(self, raw: Sequence[Any], io: ModelIO, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        """The tensor model's inputs for these raw inputs, computed on the client; `folder` is
        the exported version (side files such as a tokenizer), `shape` the shape options
        (e.g. seq_len: pad every request to one length instead of to buckets)."""
        raise TritonForgeError(f"a {self.kind} model cannot encode raw input on the client")

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[Any]:
        """Real raw inputs (sentences, photographs, arrays) for `bench`; None: all of them."""
        raise TritonForgeError(f"the {self.kind} modality has no sample inputs")

    def describe_raw(self, item: Any, index: int) -> str:
        """A short label for one raw input in `query`'s tables."""
        return f"#{index}"


def raw_bytes_array(items: Sequence[bytes]) -> np.ndarray:
    """Raw payloads as a batch for a TYPE_STRING input declared with dims [1]."""
    return np.array([[item] for item in items], dtype=object)


def preprocessing_companions(name: str, io: ModelIO, serving: ServingOptions, modality: Modality,
                             step_suffix: str, model_py: Path, parameters: Mapping[str, str],
                             files: Mapping[str, Path | str]) -> tuple[CompanionModel, CompanionModel]:
    """`<name><step_suffix>` (python backend: the raw input -> the model's inputs) and
    `<name><suffix>` (ensemble: the raw input -> the model's outputs).

    `files` go beside the step's model.py (relative paths are relative to the exported
    model's version folder); `parameters` reach it through its config.
    """
    step_name = validate_name(name + step_suffix)
    ensemble_name = validate_name(name + modality.suffix)
    step = mc.ModelConfig(name=step_name, backend="python", max_batch_size=serving.max_batch_size)
    step.input.add(name=modality.raw_input, data_type=mc.TYPE_STRING, dims=[1])
    add_tensors(step.output, io.inputs)
    step.dynamic_batching.SetInParent()  # takes what is queued, never waits for more
    step.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    for key, value in parameters.items():
        step.parameters[key].string_value = value

    ensemble = mc.ModelConfig(name=ensemble_name, platform="ensemble", max_batch_size=serving.max_batch_size)
    ensemble.input.add(name=modality.raw_input, data_type=mc.TYPE_STRING, dims=[1])
    add_tensors(ensemble.output, io.outputs)
    describe_model(ensemble, io)
    steps = ensemble.ensemble_scheduling
    first = steps.step.add(model_name=step_name, model_version=-1)
    first.input_map[modality.raw_input] = modality.raw_input
    run = steps.step.add(model_name=name, model_version=-1)
    for spec in io.inputs:
        first.output_map[spec.name] = spec.name
        run.input_map[spec.name] = spec.name
    for spec in io.outputs:
        run.output_map[spec.name] = spec.name
    return (CompanionModel(step, {PYTHON_MODEL_FILE: model_py, **files}), CompanionModel(ensemble, {}))

