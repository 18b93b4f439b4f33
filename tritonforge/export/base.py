"""The Family contract: one small declarative object per model family, registered by name.

`export`, `verify`, `ls` (and later `serve`, `query`, `bench`) are written once against
this contract; the CLI never branches on the family.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tritonforge.errors import TritonForgeError

# -- I/O declaration -----------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dims` excludes the batch dimension; -1 marks a dynamic axis."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32", "float16", "object" (strings)
    dims: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["dims"]))


@dataclass(frozen=True)
class ModelIO:
    """What goes in and out of the exported graph, and what a client must do to its raw input."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "preprocessing": dict(self.preprocessing),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelIO:
        return cls(
            tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            dict(data.get("preprocessing", {})),
        )


# -- parity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One metric against its declared tolerance (a floor when higher is better, else a ceiling)."""

    metric: str
    value: float
    tolerance: float
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.value):
            return False
        return self.value >= self.tolerance if self.higher_is_better else self.value <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": float(self.value),
            "tolerance": float(self.tolerance),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Parity:
    """The family's verdict on candidate vs reference. The first check is the headline metric."""

    checks: tuple[Check, ...]
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def primary(self) -> Check:
        return self.checks[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.primary.metric,
            "value": float(self.primary.value),
            "tolerance": float(self.primary.tolerance),
            "passed": self.passed,
            "details": {"checks": [c.to_json() for c in self.checks], **dict(self.details)},
        }


# -- export result -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportInfo:
    """What `Family.export` reports about the file it wrote; goes into the manifest."""

    opset: int
    precision: str  # "fp32", "fp16", "w6a6", ...
    details: Mapping[str, Any] = field(default_factory=dict)  # goes under the manifest's "onnx"
    sections: Mapping[str, Any] = field(default_factory=dict)  # extra top-level manifest sections


# -- the contract --------------------------------------------------------------------------


class Family(ABC):
    """A model family: how to load its PyTorch reference, export it, feed it and judge it.

    Options are a frozen dataclass (the *recipe*): it is what `export` is called with and
    exactly what the manifest records, so `verify` can rebuild the reference from it.
    """

    name: ClassVar[str]
    options_type: ClassVar[type]

    @abstractmethod
    def load(self, options: Any, stage: Callable[[str], None] | None = None) -> Any:
        """The PyTorch reference, in eval mode (for a quantized recipe: calibrated here).
        `stage(description)` is told about each long step."""

    def load_version(self, options: Any, folder: Path, stage: Callable[[str], None] | None = None) -> Any:
        """The reference of an exported version in `folder` (by default: load it again)."""
        return self.load(options, stage)

    @abstractmethod
    def io(self, model: Any, options: Any) -> ModelIO:
        """Input/output names, dtypes and dims, and the client-side pre-processing."""

    @abstractmethod
    def sample_inputs(self, model: Any, options: Any, n: int | None, seq_len: int | None = None
                      ) -> dict[str, np.ndarray]:
        """n real inputs (sentences, digits, images) as the graph's input arrays; None: the
        family's whole evaluation set. `seq_len` pads sequences (None: to the longest)."""

    @abstractmethod
    def export(self, model: Any, path: Path, options: Any) -> ExportInfo:
        """Write the ONNX graph to `path` (and any side files beside it)."""

    @abstractmethod
    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: Any, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        """The family's own parity metrics and tolerances (`inputs`: what both were fed, e.g.
        to leave padding out of the comparison)."""

    @abstractmethod
    def default_name(self, options: Any) -> str:
        """The repository name used when the user gives none, e.g. `bert_w6a6`."""

    def quality(self, model: Any, options: Any,
                run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]) -> dict[str, Any] | None:
        """For lossy recipes (quantization): the task quality of `run` (the exported graph) on
        the family's evaluation set against the full-precision model. None when lossless."""
        return None

    def latency_baseline(self, model: Any) -> Any:
        """The PyTorch model an export's speed is compared with: the reference itself, except
        where the reference only simulates the export (fake quantization): then the FP model."""
        return model

    def source(self, model: Any) -> dict[str, Any]:
        """Where the reference came from (paths, architecture), for the manifest."""
        return {}

    def write_side_files(self, model: Any, version_dir: Path) -> None:
        """Files a client or an ensemble needs beside model.onnx (a tokenizer, labels)."""
        return None

    def triton(self, name: str, io: ModelIO, serving: Any) -> Any:
        """The Triton model config for `name`, and the companion models (ensembles and their
        python-backend steps) of families whose clients send raw text or images. Returns a
        `tritonforge.serving.repository.TritonModels`; `serving` is its `ServingOptions`."""
        from tritonforge.serving.repository import TritonModels, model_config

        return TritonModels(model_config(name, io, serving))

    def reference_outputs(self, model: Any, inputs: Mapping[str, np.ndarray], io: ModelIO
                          ) -> dict[str, np.ndarray]:
        """Run the PyTorch reference on numpy inputs; outputs come back keyed by io names."""
        import torch

        with torch.inference_mode():
            outputs = model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {spec.name: out.float().numpy() for spec, out in zip(io.outputs, outputs, strict=True)}

    def options_from_json(self, data: Mapping[str, Any]) -> Any:
        """Rebuild the recipe written into a manifest."""
        known = {f.name for f in dataclasses.fields(self.options_type)}
        return self.options_type(**{k: v for k, v in data.items() if k in known})


# -- registry ------------------------------------------------------------------------------

_REGISTRY: dict[str, Family] = {}
# Families live in their own packages; importing one registers it. Listed here so that a
# family can be found by name without importing every family's heavy dependencies.
_BUILTIN_MODULES = {"bert": "tritonforge.export.bert"}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family available by its `name`."""
    _REGISTRY[cls.name] = cls()
    return cls


def family_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def get_family(name: str) -> Family:
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        raise TritonForgeError(
            f"unknown model family {name!r}: known families are {', '.join(family_names())}"
        )
    return _REGISTRY[name]

