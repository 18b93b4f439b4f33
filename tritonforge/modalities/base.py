"""A modality: how a client's raw input (text, image bytes, arrays) becomes a model's tensors.

One small frozen dataclass per modality owns both sides of the wire:

- its fields are the manifest's pre-processing record (`io.preprocessing`), serialised with
  a version and validated when read back;
- `raw_inputs` name what a client sends (TEXT; IMAGE; an image and a VOCABULARY for the whole
  request; a left and a right stream), and `companions` are the Triton models that do the
  pre-processing on the server (a python-backend step and an ensemble `<name><suffix>` taking
  those raw inputs);
- `read_inputs` reads them from the command line (`query --input NAME=VALUE`), `request`
  builds what a client sends to the ensemble, `encode` what it sends to the tensor model
  itself (the same code the python step runs);
- `sample_raw` gives real payloads for `bench` and `soak`, `shape_options` declares the shape
  options that `verify`, `query` and `bench` take (`--seq-len`, `--image-size`, a family's
  own `--num-points`), and `limits` the bounds enforced alike by the client, the companion
  and the config.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
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
class ShapeOption:
    """A shape option that `verify` and `bench` take for models of a modality (or a family),
    declared where it means something: `--seq-len` by Text, `--num-points` by a point-cloud
    modality. `name` is the key in the shape mapping (`seq_len` -> `--seq-len`); an option
    with `parse` takes text (`--frame-size 640x360`) and fills the keys it returns."""

    name: str
    help: str
    default: int | None = None
    minimum: int = 1
    maximum: int | None = None
    too_large: str = ""  # what to do above `maximum`, ends the message
    parse: Callable[[str], dict[str, int]] | None = None
    keys: tuple[str, ...] = ()  # the keys `parse` fills (unset by default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def values(self, given: Any) -> dict[str, int]:
        """The shape keys for the value given on the command line, checked against the bounds."""
        if self.parse is not None:
            return self.parse(str(given))
        try:
            value = int(given)
        except (TypeError, ValueError):
            raise TritonForgeError(f"{self.flag} {given!r} is not a whole number") from None
        if value < self.minimum:
            raise TritonForgeError(f"{self.flag} {value} must be at least {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise TritonForgeError(f"{self.flag} {value} is too large: give at most {self.maximum}"
                                   + (f" {self.too_large}" if self.too_large else ""))
        return {self.name: value}


def parse_shape_arguments(arguments: Sequence[str], options: Sequence[ShapeOption]) -> dict[str, int]:
    """`--name value` / `--name=value` pairs left over on a command line, read against the
    shape options a model's modality and family declare; anything else is refused by name."""
    by_flag = {option.flag: option for option in options}
    shape: dict[str, int] = {}
    rest = list(arguments)
    while rest:
        token = rest.pop(0)
        flag, equals, value = token.partition("=")
        option = by_flag.get(flag)
        if option is None:
            takes = ", ".join(by_flag) or "none"
            raise TritonForgeError(f"no such option {flag!r} for this model (its shape options: {takes})")
        if not equals:
            if not rest:
                raise TritonForgeError(f"{flag} needs a value")
            value = rest.pop(0)
        shape.update(option.values(value))
    return shape


@dataclasses.dataclass(frozen=True)
class RawInput:
    """One raw input a modality takes, by name: what the companion ensemble takes (TEXT, IMAGE,
    LEFT and RIGHT streams, LABELS) and what `query --input NAME=VALUE` sets; how a value is
    read (a file, or the text itself) is the modality's `read_inputs`. `option` is the short
    `query` option that also carries it (text, image, npy). `per_request`: one value list for
    the whole request (a vocabulary), not one per sample; it travels as a [V] string tensor in
    every row."""

    name: str
    option: str = ""
    per_request: bool = False

    @property
    def dims(self) -> list[int]:
        return [-1] if self.per_request else [1]


@dataclasses.dataclass(frozen=True)
class Modality:
    """Base of the modality records. Subclasses are frozen dataclasses."""

    kind: ClassVar[str]
    version: ClassVar[int] = 1
    suffix: ClassVar[str] = ""  # the companion ensemble is `<name><suffix>`; "" when none
    raw_input: ClassVar[str] = ""  # the ensemble's input name (TEXT, IMAGE)
    query_option: ClassVar[str] = ""  # the `query` option that carries this raw input
    shape_options: ClassVar[tuple[ShapeOption, ...]] = ()  # what `verify` and `bench` take

    @property
    def raw_inputs(self) -> tuple[RawInput, ...]:
        """The raw inputs by name; a modality with one declares `raw_input` and `query_option`,
        one with several overrides this."""
        if not self.raw_input:
            return ()
        return (RawInput(self.raw_input, self.query_option),)

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

    @property
    def shape_defaults(self) -> dict[str, int | None]:
        """The shape keys this record takes, with their defaults."""
        keys: dict[str, int | None] = {}
        for option in self.shape_options:
            if option.parse is None:
                keys[option.name] = option.default
            else:  # a compound option (--frame-size) fills keys of its own, unset by default
                keys.update(dict.fromkeys(option.keys))
        return keys

    def resolve_shape(self, given: Mapping[str, int | None] | None = None) -> dict[str, int | None]:
        """The shape options of this modality, defaults filled in; an option of another
        modality (e.g. --image-size for a text model) is refused."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        foreign = sorted(set(given) - set(self.shape_defaults))
        if foreign:
            takes = ", ".join(option.flag for option in self.shape_options
                              if {option.name, *option.keys} & set(self.shape_defaults)) or "none"
            raise TritonForgeError(
                f"{', '.join('--' + k.replace('_', '-') for k in foreign)} does not apply to a "
                f"model that takes {self.kind} input (its shape options: {takes})")
        declared = {option.name: option for option in self.shape_options if option.parse is None}
        for key, value in given.items():
            if key in declared:
                declared[key].values(value)
            elif value < 1:
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

    def read_inputs(self, given: Mapping[str, Sequence[str]]) -> list[Any]:
        """The raw items of one request from the command line, keyed by raw input name
        (`query --input NAME=VALUE`, or the short option of that input). One raw input: its
        `read_raw`; a modality with several overrides this."""
        names = [raw.name for raw in self.raw_inputs] or ["(none)"]
        unknown = sorted(set(given) - set(names))
        if unknown or len(given) != 1:
            raise TritonForgeError(f"a {self.kind} model takes {', '.join(names)}; got "
                                   f"{', '.join(sorted(given)) or 'nothing'}: send --input "
                                   f"{names[0]}=VALUE")
        return self.read_raw(next(iter(given.values())))

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

    def recording(self, path: Path) -> np.ndarray | None:
        """A streaming model's recording in the modality's own file format (a spike camera's
        `.dat`) as frames [frames, ...], for `query --stream`; None: the file is a .npy array."""
        return None


def raw_bytes_array(items: Sequence[bytes]) -> np.ndarray:
    """Raw payloads as a batch for a TYPE_STRING input declared with dims [1]."""
    return np.array([[item] for item in items], dtype=object)


def preprocessing_companions(name: str, io: ModelIO, serving: ServingOptions, modality: Modality,
                             step_suffix: str, model_py: Path, parameters: Mapping[str, str],
                             files: Mapping[str, Path | str]) -> tuple[CompanionModel, CompanionModel]:
    """`<name><step_suffix>` (python backend: the raw inputs -> the model's inputs) and
    `<name><suffix>` (ensemble: the raw inputs -> the model's outputs), one input per
    `modality.raw_inputs`.

    `files` go beside the step's model.py (relative paths are relative to the exported
    model's version folder); `parameters` reach it through its config.
    """
    step_name = validate_name(name + step_suffix)
    ensemble_name = validate_name(name + modality.suffix)
    step = mc.ModelConfig(name=step_name, backend="python", max_batch_size=serving.max_batch_size)
    for raw in modality.raw_inputs:
        step.input.add(name=raw.name, data_type=mc.TYPE_STRING, dims=raw.dims)
    add_tensors(step.output, io.inputs)
    step.dynamic_batching.SetInParent()  # takes what is queued, never waits for more
    step.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    for key, value in parameters.items():
        step.parameters[key].string_value = value

    ensemble = mc.ModelConfig(name=ensemble_name, platform="ensemble", max_batch_size=serving.max_batch_size)
    for raw in modality.raw_inputs:
        ensemble.input.add(name=raw.name, data_type=mc.TYPE_STRING, dims=raw.dims)
    add_tensors(ensemble.output, io.outputs)
    describe_model(ensemble, io)
    steps = ensemble.ensemble_scheduling
    first = steps.step.add(model_name=step_name, model_version=-1)
    for raw in modality.raw_inputs:
        first.input_map[raw.name] = raw.name
    run = steps.step.add(model_name=name, model_version=-1)
    for spec in io.inputs:
        first.output_map[spec.name] = spec.name
        run.input_map[spec.name] = spec.name
    for spec in io.outputs:
        run.output_map[spec.name] = spec.name
    return (CompanionModel(step, {PYTHON_MODEL_FILE: model_py, **files}), CompanionModel(ensemble, {}))

