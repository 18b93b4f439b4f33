"""`toy_image`: the smallest complete image family, the worked example of adding one.

Importing this package registers it; no shared module names it. The model is a ~5k-parameter
CNN (`model.py`) with random weights drawn from `seed`: there is nothing to download, and its
class scores mean nothing. Its inputs are real photographs, decoded by the Image modality,
so `export`, `verify`, `query` and `bench` all see real images, and the `toy_image_image`
ensemble takes image bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.onnx import MIN_OPSET, check_onnx, torch_to_onnx
from tritonforge.family import ExportInfo, Family, Shape, option, register
from tritonforge.modalities import Image
from tritonforge.outputs.metrics import max_abs_diff, top1_agreement
from tritonforge.spec import CLASS_SCORES, MEAN, Check, ModelIO, Parity, TensorSpec

from .model import ToyCNN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_ABS_DIFF = 1e-4  # FP32 summed in another order: 2e-8 measured on the photographs


@dataclass(frozen=True)
class ToyImageOptions:
    """The export recipe; written verbatim into the manifest."""

    image_size: int = option(32, help="Input height and width in pixels.")
    classes: int = option(3, help="Number of output classes.")
    resize: str = option("letterbox", help="stretch, or letterbox (keep the aspect ratio, pad).")
    seed: int = option(0, help="Seed of the random weights.")


@register
class ToyImageFamily(Family):
    """A random-weight CNN classifier on S x S RGB images, fed through the Image modality."""

    name = "toy_image"
    options_type = ToyImageOptions

    def default_name(self, options: ToyImageOptions) -> str:
        return "toy_image"

    def load(self, options: ToyImageOptions, stage=None) -> ToyCNN:
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
            torch.manual_seed(options.seed)
            model = ToyCNN(options.classes)
        return model.eval()

    def source(self, model: ToyCNN) -> dict:
        return {"architecture": "ToyCNN", "parameters": sum(p.numel() for p in model.parameters()),
                "weights": "random (seeded), untrained: the class scores mean nothing"}

    def io(self, model: ToyCNN, options: ToyImageOptions) -> ModelIO:
        size = options.image_size
        image = Image(height=size, width=size, resize=options.resize, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return ModelIO(inputs=(TensorSpec("pixel_values", "float32", (3, size, size)),),
                       outputs=(TensorSpec("logits", "float32", (options.classes,), CLASS_SCORES),),
                       preprocessing=image, labels=tuple(f"class_{i}" for i in range(options.classes)))

    def sample_inputs(self, model: ToyCNN, options: ToyImageOptions, n: int | None,
                      shape: Shape | None = None) -> dict[str, np.ndarray]:
        """The bundled photographs (in turn, to give n), decoded as a client would."""
        size = (shape or {}).get("image_size") or options.image_size
        if size != options.image_size:  # the graph's input dims are fixed at export
            raise TritonForgeError(f"--image-size {size}: this export takes {options.image_size}x"
                                   f"{options.image_size} images; export it with --image-size {size}")
        io = self.io(model, options)
        return io.preprocessing.encode(io.preprocessing.sample_raw(n), io, None)

    def export(self, model: ToyCNN, path: Path, options: ToyImageOptions) -> ExportInfo:
        io = self.io(model, options)
        torch_to_onnx(model, self.sample_inputs(model, options, 2), path, io,
                      {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, MIN_OPSET)
        return ExportInfo(opset=check_onnx(path), precision="fp32")

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: ToyImageOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        ref, cand = reference["logits"], candidate["logits"]
        return Parity((Check("max_abs_diff", max_abs_diff(ref, cand), MAX_ABS_DIFF, higher_is_better=False),
                       Check("top1_agreement", top1_agreement(ref, cand), 1.0, higher_is_better=True,
                             merge=MEAN)))

    def commands(self):
        """`tritonforge toy_image predict FILE`: a family's own command, beside the generated ones."""
        import typer

        commands = typer.Typer(help="The toy image family's own commands.")

        @commands.command()
        def predict(image: Path, seed: int = 0) -> None:
            """Classify one image with the PyTorch model (random weights: a demonstration)."""
            options = ToyImageOptions(seed=seed)
            model = self.load(options)
            io = self.io(model, options)
            pixels = io.preprocessing.encode(io.preprocessing.read_raw([str(image)]), io, None)
            with torch.inference_mode():
                logits = model(torch.from_numpy(pixels["pixel_values"]))[0]
            typer.echo(f"{image.name}: {io.labels[int(logits.argmax())]}")

        return commands
