"""`export`: reference -> ONNX -> parity -> gates -> a new version in the model repository.

The steps, in order (`export_pipeline`): load the reference, declare its io and Triton models,
then build the version in a staging folder (export the graph, check it against the config,
write the modality's input limits into it as guards, open the target's runtime on it, parity,
the publish gates, quality, the manifest) and publish it with its companions
(`ModelRepository.write_version`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tritonforge import __version__
from tritonforge.errors import TritonForgeError
from tritonforge.export.input_guards import InputGuard, declared_guards, guard_onnx_file
from tritonforge.family import ExportInfo, Family, get_family
from tritonforge.pipeline.steps import (
    CheckParity,
    Context,
    MeasureQuality,
    Pipeline,
    RunGates,
    Step,
    artifact_session,
    as_tick,
)
from tritonforge.runtime import RUNTIME_NAMES
from tritonforge.serving.repository import MANIFEST_VERSION, ModelRepository, sha256_file, write_manifest
from tritonforge.triton_config import (
    MODEL_FILE,
    ServingOptions,
    TritonModels,
    name_family,
    onnx_io_matches_config,
    onnx_io_signature,
    validate_name,
)

EXPORT_PARITY_SAMPLES = 32

Stage = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    folder: Path
    manifest: dict[str, Any]


@dataclass
class ExportContext(Context):
    """What export's steps share beyond the common context."""

    stage: Stage | None = None  # the caller's, handed to `Family.load`
    name: str = ""
    serving: ServingOptions = dataclasses.field(default_factory=ServingOptions)
    repository: ModelRepository | None = None
    version: int | None = None  # the number asked for; once published, the number written
    force: bool = False
    triton: TritonModels | None = None
    info: ExportInfo | None = None
    guards: tuple[InputGuard, ...] = ()  # the checks written into the graph
    manifest: dict[str, Any] | None = None


@dataclass
class LoadReference(Step):
    name: ClassVar[str] = "load"

    def run(self, context: ExportContext) -> None:
        context.progress("loading the PyTorch reference", 0)
        context.model = context.family.load(context.options, context.stage)


@dataclass
class DeclareIO(Step):
    """The graph's inputs and outputs, and the Triton config and companions built from them."""

    name: ClassVar[str] = "io"

    def run(self, context: ExportContext) -> None:
        context.io = context.family.io(context.model, context.options)
        context.triton = context.family.triton(context.name, context.io, context.serving)
        name_family(context.triton, context.family.name)


@dataclass
class ExportGraph(Step):
    name: ClassVar[str] = "export"

    def run(self, context: ExportContext) -> None:
        context.progress("exporting to ONNX", 0)
        context.info = context.family.export(context.model, context.folder / MODEL_FILE, context.options)
        context.family.write_side_files(context.model, context.folder)


@dataclass
class CheckGraph(Step):
    """The exported graph's inputs and outputs against the config (names, dtypes, dims)."""

    name: ClassVar[str] = "graph"

    def run(self, context: ExportContext) -> None:
        mismatch = onnx_io_matches_config(*onnx_io_signature(context.folder / MODEL_FILE),
                                          context.triton.config)
        if mismatch:
            raise TritonForgeError(
                f"the exported graph's inputs/outputs differ from the {context.family.name} family's "
                f"declaration ({'; '.join(mismatch)}); nothing was written. Report the model")


@dataclass
class GuardInputs(Step):
    """The limits the modality declares (`Modality.limits`: value ranges of integer inputs,
    max_sequence_length), written into the final graph (`tritonforge.export.input_guards`), so
    Triton's onnxruntime and openvino backends fail on what `tritonforge serve`'s wrapper
    refuses. After the family's export (quantization, the transformer optimizer, FP16), before
    parity: every check runs on the guarded graph."""

    name: ClassVar[str] = "guards"

    def skip(self, context: ExportContext) -> bool:
        return not declared_guards(context.io, context.io.preprocessing.limits())

    def run(self, context: ExportContext) -> None:
        context.guards = declared_guards(context.io, context.io.preprocessing.limits())
        guard_onnx_file(context.folder / MODEL_FILE, context.guards)


@dataclass
class OpenRuntime(Step):
    """The target's runtime on the graph, and the real inputs parity runs (kept as samples.npz)."""

    name: ClassVar[str] = "runtime"

    def run(self, context: ExportContext) -> None:
        serving = context.serving
        context.progress(f"checking {RUNTIME_NAMES[serving.target]} against PyTorch", 0)
        context.session = artifact_session(context.folder / MODEL_FILE, serving.target, serving.bf16,
                                           getattr(context.options, "threads", 2))
        context.inputs = context.family.sample_inputs(context.model, context.options, EXPORT_PARITY_SAMPLES)
        context.io.preprocessing.write_samples(context.folder, context.inputs)


@dataclass
class WriteManifest(Step):
    name: ClassVar[str] = "manifest"

    def run(self, context: ExportContext) -> None:
        context.progress("writing the version", 0)
        family, options, folder, info = context.family, context.options, context.folder, context.info
        context.manifest = manifest = {
            "manifest_version": MANIFEST_VERSION,
            "tritonforge_version": __version__,
            "name": context.name,
            "version": context.version,
            "family": family.name,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": family.source(context.model),
            "recipe": dataclasses.asdict(options),
            "precision": info.precision,
            "io": context.io.to_json(),
            "onnx": {"file": MODEL_FILE, "sha256": sha256_file(folder / MODEL_FILE),
                     "bytes": (folder / MODEL_FILE).stat().st_size, "opset": info.opset,
                     **dict(info.details),
                     **({"input_guards": [guard.to_json() for guard in context.guards]}
                        if context.guards else {})},
            "serving": dataclasses.asdict(context.serving),
            "parity": {"reference": "pytorch", "samples": EXPORT_PARITY_SAMPLES, **context.parity.to_json()},
            "gates": [gate.to_json() for gate in context.gates],
            **({"quality": context.quality} if context.quality is not None else {}),
            **dict(info.sections),
            **dict(family.gate_sections(context.model, options)),
            "environment": environment(),
        }
        write_manifest(folder, manifest)


@dataclass
class Publish(Step):
    """Build the version with `build` in a staging folder, then publish it and its companions
    atomically (`ModelRepository.write_version`): a failed step leaves the repository as it was."""

    name: ClassVar[str] = "publish"
    build: Pipeline = dataclasses.field(default_factory=lambda: Pipeline([]))

    def inner(self) -> list[Step]:
        return self.build.steps

    def run(self, context: ExportContext) -> None:
        companions = context.triton.companions

        def populate(folder: Path, number: int) -> None:
            context.folder, context.version = folder, number
            self.build.run(context)
            for companion in companions:  # built by write_version once this returns
                context.progress(f"writing {companion.name}", 0)

        number = context.repository.write_version(
            context.name, context.triton.config, populate, version=context.version, force=context.force,
            companions=companions, companion_fields={"family": context.family.name})
        context.version, context.folder = number, context.repository.root / context.name / str(number)


def export_pipeline() -> Pipeline:
    """export's steps; the version is built by the publish step's own."""
    build = Pipeline([ExportGraph(), CheckGraph(), GuardInputs(), OpenRuntime(), CheckParity(required=True),
                      RunGates(required=True),
                      MeasureQuality(label="measuring quality against full precision"), WriteManifest()])
    return Pipeline([LoadReference(), DeclareIO(), Publish(build=build)])


def export_model(family: str | Family, options: Any, repo: Path | str = "model_repo",
                 name: str | None = None, serving: ServingOptions | None = None,
                 version: int | None = None, force: bool = False,
                 stage: Stage | None = None) -> ExportResult:
    """Export `options` of `family` as a new version of `name` in `repo` and return it.

    The version is published only if the ONNX graph passes the family's parity check on
    real inputs and every publish gate; otherwise nothing is written. The model and its
    companions are built together outside the repository and published by renames
    (`ModelRepository.write_version`), so a kill, a full disk or a racing export never leaves a
    half-written model visible. `stage(description)` is told about each step.
    """
    family = get_family(family) if isinstance(family, str) else family
    name = validate_name(name or family.default_name(options))
    serving = family.serving(options, serving or ServingOptions())
    repository = ModelRepository(repo)
    repository.check_version_policy(name, serving.version_policy, version)  # before the model loads
    stage = stage or (lambda _message: None)
    context = ExportContext(family, options, lambda description, _total=0: as_tick(stage(description)),
                            stage=stage, name=name, serving=serving, repository=repository,
                            version=version, force=force)
    export_pipeline().run(context)
    return ExportResult(context.name, context.version, context.folder, context.manifest)


def environment() -> dict[str, str]:
    """Versions of the libraries that made the artifact, for the manifest."""
    import onnx
    import onnxruntime
    import torch

    versions = {"torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__}
    for package in ("transformers", "openvino"):
        try:
            versions[package] = importlib.import_module(package).__version__
        except ImportError:
            pass
    return versions
