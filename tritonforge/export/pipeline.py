"""`export`: reference -> ONNX -> parity check -> a new version in the model repository."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonforge import __version__
from tritonforge.errors import TritonForgeError
from tritonforge.export.onnx import onnx_io_signature
from tritonforge.family import Family, get_family
from tritonforge.runtime import open_session, run_session
from tritonforge.serving.repository import MANIFEST_VERSION, ModelRepository, sha256_file, write_manifest
from tritonforge.triton_config import (
    MODEL_FILE,
    ServingOptions,
    name_family,
    onnx_io_matches_config,
    validate_name,
)
from tritonforge.verify.parity import parity_check

EXPORT_PARITY_SAMPLES = 32

Stage = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    folder: Path
    manifest: dict[str, Any]


def export_model(family: str | Family, options: Any, repo: Path | str = "model_repo",
                 name: str | None = None, serving: ServingOptions | None = None,
                 version: int | None = None, force: bool = False,
                 stage: Stage | None = None) -> ExportResult:
    """Export `options` of `family` as a new version of `name` in `repo` and return it.

    The version is published only if the ONNX graph passes the family's parity check on
    real inputs; otherwise nothing is written. The model and its companions are built
    together outside the repository and published by renames (`ModelRepository.write_version`),
    so a kill, a full disk or a racing export never leaves a half-written model visible.
    """
    family = get_family(family) if isinstance(family, str) else family
    name = validate_name(name or family.default_name(options))
    serving = family.serving(options, serving or ServingOptions())
    stage = stage or (lambda _message: None)
    repository = ModelRepository(repo)

    stage("loading the PyTorch reference")
    model = family.load(options, stage)
    io = family.io(model, options)
    triton = family.triton(name, io, serving)
    name_family(triton, family.name)
    config = triton.config
    result: dict[str, Any] = {}

    def populate(folder: Path, number: int) -> None:
        stage("exporting to ONNX")
        info = family.export(model, folder / MODEL_FILE, options)
        family.write_side_files(model, folder)
        mismatch = onnx_io_matches_config(*onnx_io_signature(folder / MODEL_FILE), config)
        if mismatch:
            raise TritonForgeError(
                f"the exported graph's inputs/outputs differ from the {family.name} family's "
                f"declaration ({'; '.join(mismatch)}); nothing was written. Report the model")
        stage(f"checking {RUNTIME_NAMES[serving.target]} against PyTorch")
        session = serving_session(folder / MODEL_FILE, serving, getattr(options, "threads", 2))
        inputs = family.sample_inputs(model, options, EXPORT_PARITY_SAMPLES)
        io.preprocessing.write_samples(folder, inputs)
        parity = parity_check(family, model, options, io, session, inputs)
        if not parity.passed:
            raise TritonForgeError(
                f"the exported graph does not match PyTorch ({parity.describe()}); "
                f"nothing was written. {family.parity_advice(options)}")
        stage("measuring quality against full precision")
        quality = family.quality(model, options, lambda batch: run_session(session, batch))
        stage("writing the version")
        result["manifest"] = manifest = {
            "manifest_version": MANIFEST_VERSION,
            "tritonforge_version": __version__,
            "name": name,
            "version": number,
            "family": family.name,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": family.source(model),
            "recipe": dataclasses.asdict(options),
            "precision": info.precision,
            "io": io.to_json(),
            "onnx": {"file": MODEL_FILE, "sha256": sha256_file(folder / MODEL_FILE),
                     "bytes": (folder / MODEL_FILE).stat().st_size, "opset": info.opset,
                     **dict(info.details)},
            "serving": dataclasses.asdict(serving),
            "parity": {"reference": "pytorch", "samples": EXPORT_PARITY_SAMPLES, **parity.to_json()},
            **({"quality": quality} if quality is not None else {}),
            **dict(info.sections),
            "environment": environment(),
        }
        write_manifest(folder, manifest)
        for companion in triton.companions:  # built by write_version once this returns
            stage(f"writing {companion.name}")

    number = repository.write_version(name, config, populate, version=version, force=force,
                                      companions=triton.companions,
                                      companion_fields={"family": family.name})
    return ExportResult(name, number, repository.root / name / str(number), result["manifest"])


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "tensorrt": "ONNX Runtime", "openvino": "OpenVINO"}


def serving_session(path: Path, serving: ServingOptions, threads: int = 2):
    """A session that computes as the served model will: OpenVINO for an openvino target (in
    BF16 when it serves in BF16), ONNX Runtime's CPU provider otherwise."""
    return open_session(path, serving.target, threads, "bf16" if serving.bf16 else "fp32")


def environment() -> dict[str, str]:
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

