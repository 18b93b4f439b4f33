"""Modalities by kind, and reading a manifest's I/O back into typed records.

Built-in: `text`, `image`, `image_pixels` (any size, no resize) and `tensors`. A family with
another raw input (DASK's `text_knowledge`) defines it in its own package and registers it with
`register_modality`, touching none of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tritonforge.errors import TritonForgeError
from tritonforge.family import load_family_package
from tritonforge.modalities.base import Modality, ShapeOption, parse_shape_arguments
from tritonforge.modalities.image import Image, ImagePixels
from tritonforge.modalities.tensors import Tensors
from tritonforge.modalities.text import Text
from tritonforge.spec import CLASS_SCORES, EMBEDDING, ModelIO, TensorSpec

__all__ = ["Image", "ImagePixels", "Modality", "ShapeOption", "Tensors", "Text", "manifest_io",
           "modality_from_json", "parse_shape_arguments", "read_io", "register_modality", "shape_options"]

_MODALITIES: dict[str, type[Modality]] = {}


def register_modality(cls: type[Modality]) -> type[Modality]:
    """Class decorator: make a modality readable from manifests by its `kind`."""
    _MODALITIES[cls.kind] = cls
    return cls


for _builtin in (Text, Image, ImagePixels, Tensors):
    register_modality(_builtin)


def shape_options() -> list[ShapeOption]:
    """The shape options of every modality known here, once each by flag: the typed options of
    `verify` and `bench`. A family's own modality adds its options when its package is imported;
    the commands read those from the command line once the model (and so its family) is known."""
    found: dict[str, ShapeOption] = {}
    for cls in _MODALITIES.values():
        for option in cls.shape_options:
            found.setdefault(option.flag, option)
    return list(found.values())


def modality_from_json(data: Mapping[str, Any], family: str | None = None) -> Modality:
    """The typed record of a manifest's or a config's `preprocessing`. A kind defined inside a
    family's package is found by importing that `family` (the manifest and config name it)."""
    kind = data.get("kind")
    if kind not in _MODALITIES and family:
        load_family_package(family)
    if kind not in _MODALITIES:
        raise TritonForgeError(
            f"pre-processing kind {kind!r} is unknown to this tritonforge (it knows "
            f"{', '.join(sorted(_MODALITIES))}): install the package of the family that wrote it"
            + (f" ({family!r})" if family else ""))
    return _MODALITIES[kind].from_json(data)


def read_io(data: Mapping[str, Any], manifest_version: int = 2, family: str | None = None) -> ModelIO:
    """A manifest's `io` section as a ModelIO; manifests of version 1 are converted."""
    if manifest_version < 2:
        return _read_io_v1(data)
    return ModelIO(tuple(TensorSpec.from_json(t) for t in data["inputs"]),
                   tuple(TensorSpec.from_json(t) for t in data["outputs"]),
                   modality_from_json(data["preprocessing"], family),
                   tuple(data["labels"]) if data.get("labels") is not None else None,
                   tuple(tuple(pair) for pair in data.get("state", ())),
                   tuple(data.get("request_inputs", ())))


def manifest_io(manifest: Mapping[str, Any]) -> ModelIO:
    """The typed I/O of a manifest of any version this tritonforge reads."""
    return read_io(manifest["io"], manifest.get("manifest_version", 1), manifest.get("family"))


def _read_io_v1(data: Mapping[str, Any]) -> ModelIO:
    """Version 1 (only the bert family wrote it): an untyped pre-processing dict holding the
    tokenizer settings, and labels or pooling beside them; outputs had no kinds. The bert
    outputs were `sentence_embedding` (an embedding) and `logits` (class scores)."""
    pre = dict(data.get("preprocessing", {}))
    labels = pre.get("labels")
    if pre.get("kind") == "text":
        record: Modality = Text(max_length=int(pre["max_length"]), pad_token_id=int(pre["pad_token_id"]),
                                tokenizer=pre.get("tokenizer", "tokenizer/tokenizer.json"),
                                lowercase=bool(pre.get("lowercase", False)),
                                truncation=bool(pre.get("truncation", True)),
                                inputs=tuple(t["name"] for t in data["inputs"]))
    else:
        record = Tensors()
    kinds = {"sentence_embedding": EMBEDDING, "logits": CLASS_SCORES}
    outputs = tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"]), kinds.get(t["name"], "tensor"))
                    for t in data["outputs"])
    return ModelIO(tuple(TensorSpec.from_json(t) for t in data["inputs"]), outputs, record,
                   tuple(labels) if labels else None)
