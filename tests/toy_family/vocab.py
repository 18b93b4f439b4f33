"""`toy_vocab`: a two-input request, an image and the class names that choose its classes.

The modality `image_vocabulary` takes two named raw inputs: IMAGE (a file per sample) and
VOCABULARY (strings for the whole request). Its companion step (`vocab_step.py`) turns them
into a grey grid and one hashed vector per name; the ONNX model embeds the grid and scores it
against every name, so the classes are whatever the request sends, and `label` indexes into
that vocabulary (the built-in `vocabulary_labels` kind prints the sent names). Nothing here is
named by a shared module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.export.onnx import MIN_OPSET, check_onnx, torch_to_onnx
from tritonforge.family import ExportInfo, Family, Shape, register
from tritonforge.modalities import Modality, register_modality
from tritonforge.modalities.base import RawInput, preprocessing_companions, raw_bytes_array
from tritonforge.modalities.image import ImageBytes, photographs, read_image_files
from tritonforge.outputs.metrics import max_abs_diff
from tritonforge.spec import VOCABULARY_LABELS, Check, ModelIO, Parity, TensorSpec
from tritonforge.triton_config import CompanionModel, ServingOptions

from .vocab_step import grid_from_image, label_vectors

STEP_FILE = Path(__file__).with_name("vocab_step.py")
SAMPLE_VOCABULARY = ("sky", "sea", "cat", "rocket", "flower", "coffee")


@dataclass(frozen=True)
class VocabularyItem:
    """One sample of a request: an image, and the request's vocabulary."""

    image: ImageBytes
    vocabulary: tuple[str, ...]


@register_modality
@dataclass(frozen=True)
class ImageVocabulary(Modality):
    kind: ClassVar[str] = "image_vocabulary"
    suffix: ClassVar[str] = "_vocab"

    grid_size: int = 8
    width: int = 32

    @property
    def raw_inputs(self) -> tuple[RawInput, ...]:
        return (RawInput("IMAGE", "image"), RawInput("VOCABULARY", per_request=True))

    def read_inputs(self, given: Mapping[str, Sequence[str]]) -> list[VocabularyItem]:
        unknown = sorted(set(given) - {"IMAGE", "VOCABULARY"})
        if unknown or not given.get("IMAGE") or not given.get("VOCABULARY"):
            raise TritonForgeError("a toy_vocab model takes IMAGE (--image FILE) and VOCABULARY (--input "
                                   f"VOCABULARY=NAME, one per class); got {sorted(given)}")
        vocabulary = tuple(given["VOCABULARY"])
        return [VocabularyItem(image, vocabulary) for image in read_image_files(given["IMAGE"], 1 << 24)]

    def companions(self, name: str, io: ModelIO, serving: ServingOptions) -> tuple[CompanionModel, ...]:
        return preprocessing_companions(name, io, serving, self, "_vocab_step", STEP_FILE,
                                        {"grid_size": str(self.grid_size), "width": str(self.width)}, {})

    def request(self, raw: Sequence[VocabularyItem]) -> dict[str, np.ndarray]:
        return {"IMAGE": raw_bytes_array([bytes(item.image) for item in raw]),
                "VOCABULARY": np.array([[v.encode("utf-8") for v in item.vocabulary] for item in raw],
                                       dtype=object)}

    def encode(self, raw: Sequence[VocabularyItem], io: ModelIO | None, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        return {"grid": np.stack([grid_from_image(bytes(item.image), self.grid_size) for item in raw]),
                "label_vectors": np.stack([label_vectors(item.vocabulary, self.width) for item in raw])}

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[VocabularyItem]:
        images = [ImageBytes.named(path.read_bytes(), path.name) for path in photographs()]
        items = [VocabularyItem(image, SAMPLE_VOCABULARY) for image in images]
        return items if n is None else [items[i % len(items)] for i in range(n)]

    def describe_raw(self, item: Any, index: int) -> str:
        return getattr(item.image, "name", "") or f"#{index}"


class GridScorer(nn.Module):
    """grid [N, 1, S, S] and label_vectors [N, V, D] -> cosine scores [N, V], label [N, 1]."""

    def __init__(self, grid_size: int, width: int):
        super().__init__()
        self.embed = nn.Linear(grid_size * grid_size, width)

    def forward(self, grid: torch.Tensor, label_vectors: torch.Tensor):
        image = nn.functional.normalize(self.embed(grid.flatten(1)), dim=1)
        scores = torch.einsum("nd,nvd->nv", image, label_vectors)
        return scores, scores.argmax(dim=1, keepdim=True)


@dataclass(frozen=True)
class ToyVocabOptions:
    grid_size: int = 8
    width: int = 32
    seed: int = 0


@register
class ToyVocabFamily(Family):
    name = "toy_vocab"
    options_type = ToyVocabOptions

    def default_name(self, options: ToyVocabOptions) -> str:
        return "toy_vocab"

    def load(self, options: ToyVocabOptions, stage=None) -> GridScorer:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            return GridScorer(options.grid_size, options.width).eval()

    def io(self, model, options: ToyVocabOptions) -> ModelIO:
        size = options.grid_size
        return ModelIO(inputs=(TensorSpec("grid", "float32", (1, size, size)),
                               TensorSpec("label_vectors", "float32", (-1, options.width))),
                       outputs=(TensorSpec("scores", "float32", (-1,)),
                                TensorSpec("label", "int64", (1,), VOCABULARY_LABELS)),
                       preprocessing=ImageVocabulary(options.grid_size, options.width))

    def sample_inputs(self, model, options: ToyVocabOptions, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        record = self.io(model, options).preprocessing
        return record.encode(record.sample_raw(n), None, None)

    def export(self, model, path: Path, options: ToyVocabOptions) -> ExportInfo:
        io_ = self.io(model, options)
        torch_to_onnx(model, self.sample_inputs(model, options, 2), path, io_,
                      {"grid": {0: "batch"}, "label_vectors": {0: "batch", 1: "classes"},
                       "scores": {0: "batch", 1: "classes"}, "label": {0: "batch"}}, MIN_OPSET)
        return ExportInfo(opset=check_onnx(path), precision="fp32")

    def compare(self, reference, candidate, options, inputs=None) -> Parity:
        diff = max_abs_diff(reference["scores"], candidate["scores"])
        same = float((reference["label"] == candidate["label"]).mean())
        return Parity((Check("max_abs_diff", diff, 1e-5, higher_is_better=False),
                       Check("label_agreement", same, 1.0, higher_is_better=True)))
