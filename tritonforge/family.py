"""The Family contract: one small declarative object per model family, registered by name.

`export`, `verify`, `quality`, `serve`, `query` and `bench` are written once against this
contract and the modalities (`tritonforge.modalities`); the CLI never branches on the family.
A family's options dataclass generates its `export <family>` command (`option(help=...)`
gives each field its help text). Families come built in (the packages under
`tritonforge/export/`, imported when first named), from a class decorated with `register`, or
from other packages through the `tritonforge.families` entry-point group. Importing a family's
package also registers what it defines for clients (its own modalities and output kinds).
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.spec import Check, ModelIO, Parity
from tritonforge.triton_config import ServingOptions, TritonModels, model_config

ENTRY_POINT_GROUP = "tritonforge.families"
Shape = Mapping[str, int | None]  # shape options: {"seq_len": 128}, {"image_size": 224}, ...


def option(default: Any = dataclasses.MISSING, help: str = "", cli: bool = True, cli_type: Any = None,
           **kwargs) -> Any:
    """A field of a family's options dataclass, with the help text of its CLI option.
    `cli=False` keeps a recipe field out of the generated `export` command; `cli_type` types the
    option on the command line when the field takes several kinds (the dataclass parses it)."""
    metadata = {"help": help, "cli": cli, **({"cli_type": cli_type} if cli_type is not None else {})}
    return field(default=default, metadata=metadata, **kwargs)


# -- export result -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportInfo:
    """What `Family.export` reports about the file it wrote; goes into the manifest."""

    opset: int
    precision: str  # "fp32", "fp16", "w6a6", ...
    details: Mapping[str, Any] = field(default_factory=dict)  # goes under the manifest's "onnx"
    sections: Mapping[str, Any] = field(default_factory=dict)  # extra top-level manifest sections


@dataclass(frozen=True)
class CommandServices:
    """What a family's own commands may call of the layers above the families (which import
    the families, so a family cannot import them): `export_model` is
    `tritonforge.pipeline.export.export_model`. The CLI gives it to every family command as
    the click context's `obj`."""

    export_model: Callable[..., Any]


@dataclass(frozen=True)
class VerifyDefaults:
    """What `verify` measures when not told: sized so that its first answer comes within about
    two minutes on 2 cores for the family's default export. `verify --precise` measures
    `PRECISE_VERIFY` instead."""

    batch_size: int = 8
    iterations: int = 10  # timed runs per runtime
    samples: int | None = None  # parity samples; None: the whole evaluation set


PRECISE_VERIFY = VerifyDefaults(batch_size=8, iterations=30, samples=None)


# -- the contract --------------------------------------------------------------------------


class Family(ABC):
    """A model family: how to load its PyTorch reference, export it, feed it and judge it.

    Options are a frozen dataclass (the *recipe*): it is what `export` is called with and
    exactly what the manifest records, so `verify` can rebuild the reference from it.
    """

    name: ClassVar[str]
    options_type: ClassVar[type]
    verify_defaults: ClassVar[VerifyDefaults] = VerifyDefaults()

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
    def sample_inputs(self, model: Any, options: Any, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        """n real inputs (sentences, digits, images) as the graph's input arrays; None: the
        family's whole evaluation set. `shape` holds the modality's shape options with its
        defaults filled in (`io.preprocessing.resolve_shape`); None: the family's own choice."""

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

    def parity_advice(self, options: Any) -> str:
        """What to try when the export misses its parity bar (ends the error message)."""
        return "Report the model"

    def gates(self, model: Any, options: Any, io: ModelIO,
              run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], folder: Path) -> list[Check]:
        """Checks the exported artifact must pass to be published, run after parity (a backdoor
        scan, a calibration bound): `run` runs the exported graph, `folder` holds it and its side
        files. A failed gate publishes nothing; every result goes into the manifest's `gates`,
        and `verify` runs them again. Default: none."""
        return []

    def gate_sections(self, model: Any, options: Any) -> Mapping[str, Any]:
        """Manifest sections that describe how the gates ran (which method, data and threshold
        a scan used, or that it was skipped); read after `gates`. Default: none."""
        return {}

    def gate_advice(self, options: Any, failed: Sequence[Check]) -> str:
        """What to do when `failed` gates stop a publish (ends the error message)."""
        return "Check the model and where its weights came from before publishing it"

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

    def serving(self, options: Any, base: ServingOptions) -> ServingOptions:
        """How Triton runs this recipe, from the command's serving options (e.g. a GPU
        accelerator block, FP16 TensorRT for an FP16 export)."""
        return base

    def triton(self, name: str, io: ModelIO, serving: ServingOptions) -> TritonModels:
        """The Triton model config for `name`, and the modality's companion models (the
        python-backend pre-processing step and the ensemble that takes raw input)."""
        return TritonModels(model_config(name, io, serving), io.preprocessing.companions(name, io, serving))

    def reset_state(self, model: Any) -> None:
        """Forget any state the reference keeps between calls (membrane potentials of spiking
        neurons); parity calls it before each batch's first step. Stateless families need nothing."""
        return None

    def steps(self, inputs: Mapping[str, np.ndarray], io: ModelIO) -> list[dict[str, np.ndarray]]:
        """A streaming model's inputs as the requests it takes one step at a time (frames);
        parity runs both runtimes step by step, carrying `io.state`. Default: one step."""
        return [dict(inputs)]

    def reference_outputs(self, model: Any, inputs: Mapping[str, np.ndarray], io: ModelIO
                          ) -> dict[str, np.ndarray]:
        """Run the PyTorch reference on numpy inputs; outputs come back keyed by io names,
        floating outputs as float32, integer outputs (labels, counts) as they are."""
        import torch

        with torch.inference_mode():
            outputs = model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if isinstance(outputs, Mapping):  # matched by name: a dict or a ModelOutput
            missing = [n for n in io.output_names if n not in outputs]
            if missing:
                raise TritonForgeError(f"the PyTorch reference returned {sorted(outputs)}, not the "
                                       f"declared outputs {missing}")
            outputs = tuple(outputs[n] for n in io.output_names)
        if len(outputs) != len(io.outputs):
            raise TritonForgeError(f"the PyTorch reference returned {len(outputs)} outputs; the family "
                                   f"declares {len(io.outputs)} ({', '.join(io.output_names)})")
        return {spec.name: as_numpy(out) for spec, out in zip(io.outputs, outputs, strict=True)}

    def summary(self, manifest: Mapping[str, Any]) -> list[str]:
        """Lines the CLI prints after an export or a verify (rich markup allowed): by default
        the parity, any quality figures and any publish gates of the manifest."""
        parity = manifest["parity"]
        lines = [f"parity vs PyTorch on {parity['samples']} samples: {parity['metric']} "
                 f"{parity['value']:.6f} (tolerance {parity['tolerance']})"]
        quality = manifest.get("quality")
        if quality:
            lines.append(f"quality vs full precision on {quality.get('samples', '?')} samples: " + ", ".join(
                f"{k} {v:.4f}" for k, v in quality.items() if k != "samples" and isinstance(v, float)))
        if manifest.get("gates"):
            lines.append("publish gates: " + ", ".join(
                f"{g['metric']} {g['value']:.6g} (tolerance {g['tolerance']:g}) "
                f"{'ok' if g['passed'] else 'FAILED'}" for g in manifest["gates"]))
        return lines

    def commands(self) -> Any:
        """The family's own commands (a `typer.Typer`), run as `tritonforge <family> ...`
        (e.g. `snn train`); None when it has none. The CLI hands them `CommandServices` as the
        click context's `obj` (a command that publishes versions exports through it)."""
        return None

    def quality_options(self) -> type | None:
        """The options dataclass of `tritonforge quality <family>` (None: no quality command)."""
        return None

    def quality_table(self, options: Any, stage: Callable[..., Any]) -> list[Any]:
        """Rows (`tritonforge.verify.recipe_table.QualityRow`) of quality and latency per recipe."""
        raise TritonForgeError(f"the {self.name} family has no quality table")

    def options_from_json(self, data: Mapping[str, Any]) -> Any:
        """Rebuild the recipe written into a manifest."""
        known = {f.name for f in dataclasses.fields(self.options_type)}
        return self.options_type(**{k: v for k, v in data.items() if k in known})


def as_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as numpy: floating point as float32, integers and booleans unchanged."""
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


# -- registry ------------------------------------------------------------------------------

_REGISTRY: dict[str, Family] = {}
# Families live in their own packages; importing one registers it. Listed by module so that a
# family can be found by name without importing every family's heavy dependencies.
_BUILTIN_MODULES = {"bert": "tritonforge.export.bert", "dask": "tritonforge.export.dask",
                    "detr": "tritonforge.export.detr", "nas": "tritonforge.export.nas",
                    "ov3d": "tritonforge.export.ov3d",
                    "snn": "tritonforge.export.snn", "spikedepth": "tritonforge.export.spikedepth",
                    "sr": "tritonforge.export.sr", "vit": "tritonforge.export.vit"}


# The built-in families' own command groups (`tritonforge snn train`): command -> (family, one
# line), so that `tritonforge --help` names them without importing a family. A plugin family's
# commands answer to its name (`tritonforge <family> --help`).
BUILTIN_COMMANDS = {
    "dask": ("dask", "DASK: train knowledge-injected sentiment classifiers, list pivot words."),
    "emt": ("sr", "EMT video delivery: meta-train, tune each chunk into a version, play, compare."),
    "nas": ("nas", "Architecture search on unreal data with measured latency: search, train, compare."),
    "ov3d": ("ov3d", "Open-vocabulary 3-D detection: write rooms, train, evaluate with any vocabulary."),
    "snn": ("snn", "TET: train spiking classifiers on scikit-learn's digits."),
    "spikedepth": ("spikedepth", "Spike-camera depth: simulate .dat streams, make scenes, train, evaluate."),
    "vit": ("vit", "ViT/BEiT: train on the digits, make backdoored controls, scan for backdoors."),
}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family available by its `name`."""
    _REGISTRY[cls.name] = cls()
    return cls


def _plugins() -> dict[str, Any]:
    """Families other packages declare: `[project.entry-points."tritonforge.families"]`,
    `name = "package.module:FamilyClass"` (or a module that registers on import)."""
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def family_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES) | set(_plugins()))


def load_family_package(name: str) -> None:
    """Import the package of family `name` so that what it registers (its modalities, output
    kinds) is known; a name no package provides is left for the caller to report."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        plugin = _plugins().get(name)
        if plugin is not None:
            loaded = plugin.load()
            if isinstance(loaded, type) and issubclass(loaded, Family) and name not in _REGISTRY:
                register(loaded)


def get_family(name: str) -> Family:
    load_family_package(name)
    if name not in _REGISTRY:
        raise TritonForgeError(
            f"unknown model family {name!r}: known families are {', '.join(family_names())}"
        )
    return _REGISTRY[name]

