"""`toy_grey`: a family that brings its own modality and its own output kind, defined here in
the tests and named by no shared module (the contract's worked example of items 1, 2 and 4).

- `GreyGrid` (modality `grey_grid`): an encoded image in, a [1, S, S] grey grid out, encoded on
  the client (no companion); S is the family's own shape option `--grid-size`, which `verify`,
  `query` and `bench` read from the command line once they know the model.
- `Brightness` (kind `toy_brightness`): one number per sample in [0, 1], printed as a word
  ("dark", "mid", "bright"), judged by absolute difference.

The model is the mean brightness of the grid and of its four quadrants: real torch code,
exported with a dynamic grid size, whose answer is known without a reference.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.export.onnx import MIN_OPSET, check_onnx, torch_to_onnx
from tritonforge.family import ExportInfo, Family, Shape, register
from tritonforge.modalities import Modality, ShapeOption, register_modality
from tritonforge.modalities.image import ImageBytes, photographs, read_image_files
from tritonforge.outputs import OutputKind, Part, QueryContext, Summary, Tolerances, register_kind
from tritonforge.outputs.metrics import max_abs_diff
from tritonforge.spec import Check, ModelIO, Parity, TensorSpec

BRIGHTNESS = "toy_brightness"
MAX_DIFF = 1e-5


@register_kind
class Brightness(OutputKind):
    """[B, 1] brightness in [0, 1]."""

    name = BRIGHTNESS

    def summarize(self, part: Part, context: QueryContext) -> Summary:
        values = part.value.reshape(part.batch, -1)[:, 0]
        words = [("dark" if v < 1 / 3 else "mid" if v < 2 / 3 else "bright", float(v)) for v in values]
        lines = tuple(f"{row}: {word} ({value:.3f})"
                      for row, (word, value) in zip(context.row_names(len(words)), words, strict=True))
        return Summary("brightness", part.label, [word for word, _ in words], lines=lines)

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        diff = max_abs_diff(reference.value, candidate.value) if reference.value.size else 0.0
        return Parity((Check("brightness_max_diff", diff, MAX_DIFF, higher_is_better=False),))


@register_modality
@dataclass(frozen=True)
class GreyGrid(Modality):
    """Encoded images in; `grid` float32 [N, 1, S, S] in [0, 1] out (S: --grid-size)."""

    kind: ClassVar[str] = "grey_grid"
    query_option: ClassVar[str] = "image"
    shape_options: ClassVar[tuple[ShapeOption, ...]] = (
        ShapeOption("grid_size", "toy_grey: grid height and width.", default=8, maximum=256),)

    grid_size: int = 8

    @property
    def shape_defaults(self) -> dict[str, int | None]:
        return {"grid_size": self.grid_size}

    def read_raw(self, values: Sequence[str]) -> list[ImageBytes]:
        return read_image_files(values, 20 * 1024 * 1024)

    def encode(self, raw: Sequence[bytes], io_: ModelIO, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        size = int(self.resolve_shape(shape)["grid_size"])
        grids = [np.asarray(PILImage.open(io.BytesIO(bytes(item))).convert("L").resize((size, size)),
                            dtype=np.float32)[None] / 255.0 for item in raw]
        if not grids:
            raise TritonForgeError("send at least one image")
        return {"grid": np.stack(grids)}

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[ImageBytes]:
        items = [ImageBytes.named(path.read_bytes(), path.name) for path in photographs()]
        return items if n is None else [items[i % len(items)] for i in range(n)]

    def describe_raw(self, item: Any, index: int) -> str:
        return getattr(item, "name", "") or f"#{index}"


class QuadrantBrightness(nn.Module):
    """[N, 1, S, S] -> brightness [N, 1] and quadrant brightness [N, 4]."""

    def forward(self, grid: torch.Tensor):
        top, bottom = grid.chunk(2, dim=2)
        quads = [part.mean(dim=(1, 2, 3)) for half in (top, bottom) for part in half.chunk(2, dim=3)]
        return grid.mean(dim=(1, 2, 3)).unsqueeze(1), torch.stack(quads, dim=1)


@dataclass(frozen=True)
class ToyGreyOptions:
    grid_size: int = 8


@register
class ToyGreyFamily(Family):
    name = "toy_grey"
    options_type = ToyGreyOptions

    def default_name(self, options: ToyGreyOptions) -> str:
        return "toy_grey"

    def load(self, options: ToyGreyOptions, stage=None) -> QuadrantBrightness:
        return QuadrantBrightness().eval()

    def io(self, model, options: ToyGreyOptions) -> ModelIO:
        return ModelIO(inputs=(TensorSpec("grid", "float32", (1, -1, -1)),),
                       outputs=(TensorSpec("brightness", "float32", (1,), BRIGHTNESS),
                                TensorSpec("quadrants", "float32", (4,))),
                       preprocessing=GreyGrid(grid_size=options.grid_size))

    def sample_inputs(self, model, options: ToyGreyOptions, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        record = self.io(model, options).preprocessing
        return record.encode(record.sample_raw(n), self.io(model, options), None, shape)

    def export(self, model, path: Path, options: ToyGreyOptions) -> ExportInfo:
        io_ = self.io(model, options)
        torch_to_onnx(model, self.sample_inputs(model, options, 2), path, io_,
                      {"grid": {0: "batch", 2: "size", 3: "size"}, "brightness": {0: "batch"},
                       "quadrants": {0: "batch"}}, MIN_OPSET)
        return ExportInfo(opset=check_onnx(path), precision="fp32")

    def compare(self, reference, candidate, options, inputs=None) -> Parity:
        diff = max(max_abs_diff(reference[k], candidate[k]) for k in ("brightness", "quadrants"))
        return Parity((Check("max_abs_diff", diff, MAX_DIFF, higher_is_better=False),))
