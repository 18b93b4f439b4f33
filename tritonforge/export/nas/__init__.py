"""The `nas` family: image classifiers whose cells were searched with DARTS on unreal data
(Gaussian noise, random labels, generated shapes), with the serving runtime's measured latency
in the search's objective ("Does NAS need real data?", arXiv 2205.02162).

`tritonforge nas search` writes a genotype (a small JSON file), `nas train` trains its network on
real labelled images, `export nas` publishes it like any classifier (FP32, FP16/BF16, INT8), and
`nas compare` runs the paper's comparison. The embedded default is `default_genotype.json`,
searched on noise here, trained on scikit-learn's digits at export (about a minute).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.family import ExportInfo, Family, Shape, option, register
from tritonforge.outputs.metrics import max_abs_diff, top1_agreement
from tritonforge.spec import CLASS_SCORES, MEAN, Check, ModelIO, Parity, TensorSpec
from tritonforge.targets import TargetOptions

DEFAULT_GENOTYPE = Path(__file__).with_name("default_genotype.json")
LOGITS_ABS = 1e-4  # FP32: the same arithmetic in another order
REDUCED_TOP1 = 0.95  # reduced precision: top-1 agreement with FP32 on the parity digits
INT8_DROP = 0.01  # INT8's publish gate: at most 1 point of test accuracy lost
CALIBRATION_DIGITS = 128
WEIGHTS_FILE = "nas.pt"  # a version's PyTorch weights, so verify rebuilds it without training


@dataclass(frozen=True)
class NasOptions(TargetOptions):
    """The export recipe; written verbatim into the manifest."""

    checkpoint: str | None = option(None, help="A network `nas train` wrote. Default: train --genotype on "
                                               "the digits now.")
    genotype: str | None = option(None, help="A genotype file (`nas search`) to train on the digits now. "
                                             "Default: the bundled one, searched on noise.")
    epochs: int = option(30, help="Training epochs when no --checkpoint is given.")
    seed: int = option(0, help="Seed of that training.")
    bits: int = option(32, help="32 (FP32), 16 (FP16; BF16 on --target openvino) or 8 (INT8 QDQ: "
                                "convolutions per channel, calibrated on training digits).")

    def __post_init__(self):
        if self.bits not in (32, 16, 8):
            raise TritonForgeError(f"--bits {self.bits} is not offered for nas: choose 32, 16 or 8")
        if self.checkpoint and self.genotype:
            raise TritonForgeError("--checkpoint already holds its genotype: leave --genotype out")
        if self.epochs < 1:
            raise TritonForgeError(f"--epochs {self.epochs} must be at least 1")
        super().__post_init__()


@register
class NasFamily(Family):
    """A DARTS-cell image classifier searched on unreal data."""

    name = "nas"
    options_type = NasOptions

    def default_name(self, options: NasOptions) -> str:
        return f"nas_{options.precision}" if options.checkpoint else f"nas_digits_{options.precision}"

    def serving(self, options: NasOptions, base):
        return options.serving(base)

    # -- the reference --------------------------------------------------------------------------

    def load(self, options: NasOptions, stage=None):
        import torch

        from tritonforge.export.nas.train import load_network

        torch.set_num_threads(options.threads)
        if options.checkpoint:
            network, config = load_network(Path(options.checkpoint))
            network.record = {"weights": f"from --checkpoint {options.checkpoint}",
                              "searched": config.get("searched") or {}, "training": config.get("recipe")}
            network.save_weights = False
            return network
        return self._train(options, Path(options.genotype) if options.genotype else DEFAULT_GENOTYPE, stage)

    def _train(self, options: NasOptions, path: Path, stage):
        from tritonforge.export.nas.data import DIGIT_CLASSES, real_digits
        from tritonforge.export.nas.space import read_genotype, search_record
        from tritonforge.export.nas.train import TrainRecipe, train

        genotype, record = read_genotype(path)
        recipe = TrainRecipe(epochs=options.epochs, seed=options.seed)
        tick = stage("training the genotype's network on the digits", recipe.epochs) if stage else None
        network = train(genotype, real_digits("train"), real_digits("test"), recipe,
                        (lambda *_: tick()) if callable(tick) else None)
        network.classes = DIGIT_CLASSES
        network.record = {"weights": f"trained here on the digits (seed {options.seed})",
                          "searched": search_record(record, path), "training": recipe.to_json()}
        network.save_weights = True
        return network

    def load_version(self, options: NasOptions, folder: Path, stage=None):
        from tritonforge.export.nas.train import load_network

        saved = folder / WEIGHTS_FILE
        if not saved.is_file():
            return self.load(options, stage)
        network, config = load_network(saved)
        network.record = {"weights": f"saved with the version ({WEIGHTS_FILE})",
                          "searched": config.get("searched") or {}, "training": config.get("recipe")}
        network.save_weights = False
        return network

    def write_side_files(self, model, version_dir: Path) -> None:
        if model.save_weights:
            from tritonforge.export.nas.train import TrainRecipe, save_network

            save_network(version_dir / WEIGHTS_FILE, model, TrainRecipe(**model.record["training"]),
                         model.classes, model.record["searched"], {})
            (version_dir / WEIGHTS_FILE).with_suffix(".json").unlink(missing_ok=True)

    def source(self, model) -> dict[str, Any]:
        found = {"architecture": "DARTS cells (first-order search)", "genotype": model.genotype.to_json(),
                 "network": model.size.to_json(), "weights": model.record["weights"],
                 "parameters": sum(p.numel() for p in model.parameters()),
                 "searched": model.record["searched"]}
        if model.record.get("training"):
            found["training"] = model.record["training"]
        if self._digits(model):
            from tritonforge.export.nas.data import real_digits
            from tritonforge.export.nas.train import accuracy

            found["pytorch_test_accuracy"] = accuracy(model, real_digits("test"))
        return found

    @staticmethod
    def _digits(model) -> bool:
        size = model.size
        return (size.channels, size.image_size, size.classes) == (1, 8, 10)

    def io(self, model, options: NasOptions) -> ModelIO:
        from tritonforge.modalities import Image

        size = model.size
        pixels = (size.channels, size.image_size, size.image_size)
        return ModelIO((TensorSpec("pixel_values", "float32", pixels),),
                       (TensorSpec("logits", "float32", (size.classes,), CLASS_SCORES),),
                       Image(height=size.image_size, width=size.image_size, channels=size.channels,
                             mean=(0.0,) * size.channels, std=(1.0,) * size.channels),
                       labels=tuple(model.classes))

    def sample_inputs(self, model, options: NasOptions, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        """The test digits (never searched or trained on); a network of another input size gets
        the bundled photographs as its Image modality decodes them."""
        size = model.size
        asked = (shape or {}).get("image_size")
        if asked not in (None, size.image_size):
            raise TritonForgeError(f"--image-size {asked}: this network takes {size.image_size} x "
                                   f"{size.image_size} images")
        if self._digits(model):
            from tritonforge.export.nas.data import real_digits

            images = real_digits("test").images
            return {"pixel_values": images if n is None else images[np.arange(n) % len(images)]}
        modality = self.io(model, options).preprocessing
        return modality.encode(modality.sample_raw(n or 8), None, None)

    # -- the graph ------------------------------------------------------------------------------

    def export(self, model, path: Path, options: NasOptions) -> ExportInfo:
        import shutil
        import tempfile

        from tritonforge.export.onnx import check_onnx, to_float16, torch_to_onnx

        io = self.io(model, options)
        axes = {name: {0: "batch"} for name in (*io.input_names, *io.output_names)}
        sections: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".graphs-") as scratch:
            fp32 = Path(scratch) / "fp32.onnx"
            torch_to_onnx(model, self.sample_inputs(model, options, 8), fp32, io, axes)
            if options.precision == "int8":
                sections["quantization"] = self._quantize(model, fp32, path, options)
            else:
                if options.precision == "fp16":
                    to_float16(fp32)
                shutil.move(str(fp32), str(path))
        sections["latency"] = self._latency(model, path, options)
        return ExportInfo(opset=check_onnx(path), precision=options.precision, sections=sections)

    def _quantize(self, model, fp32: Path, path: Path, options: NasOptions) -> dict[str, Any]:
        from tritonforge.quant.static import (
            QUANTIZED_OP_TYPES,
            STATIC_QDQ_METHOD,
            openvino_float_nodes,
            static_qdq,
        )

        if self._digits(model):
            from tritonforge.export.nas.data import real_digits

            images = real_digits("train").images[:CALIBRATION_DIGITS]
            what = f"{CALIBRATION_DIGITS} training digits"
        else:
            images = self.sample_inputs(model, options, 32)["pixel_values"]
            what = "32 bundled photographs"
        feeds = [{"pixel_values": images[i:i + 16]} for i in range(0, len(images), 16)]
        kept = openvino_float_nodes(fp32) if options.target == "openvino" else {}
        nodes = static_qdq(fp32, path, feeds, kept)
        return {"method": STATIC_QDQ_METHOD,
                "calibration": what, "quantized_op_types": list(QUANTIZED_OP_TYPES),
                "quantize_linear_nodes": nodes,
                "float": "pooling, BatchNorm folded into the convolutions, the adds and concatenations",
                **({"openvino_float_nodes": kept} if kept else {})}

    def _latency(self, model, path: Path, options: NasOptions) -> dict[str, Any]:
        """The search's predicted and measured latency, and this graph timed now on the recipe's
        target at the search's batch size (comparable when the target and precision are the
        search's: FP32 on the table's runtime)."""
        from tritonforge.export.nas.latency import LATENCY_TARGETS, network_feed, time_graphs

        searched = dict(model.record["searched"].get("latency") or {})
        found: dict[str, Any] = {"search": searched} if searched else {}
        if options.target in LATENCY_TARGETS:
            batch = int(searched.get("batch", 8))
            precision = "bf16" if options.precision == "bf16" else "fp32"
            feed = {"graph": network_feed(model.size, batch)}
            measured = time_graphs({"graph": path}, feed, options.target, options.threads,
                                   precision=precision)["graph"]
            found["exported"] = {"target": options.target, "precision": options.precision, "batch": batch,
                                 "measured_ms": round(measured, 4)}
            if searched.get("predicted_ms") and searched.get("target") == options.target \
                    and options.precision == "fp32":
                found["exported"]["predicted_vs_measured"] = round(
                    (searched["predicted_ms"] - measured) / measured, 4)
        return found

    # -- judging --------------------------------------------------------------------------------

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: NasOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        agreement = top1_agreement(reference["logits"], candidate["logits"])
        logits = max_abs_diff(reference["logits"], candidate["logits"])
        details = {"samples": int(len(reference["logits"])), "logits_max_abs_diff": logits}
        if options.precision != "fp32":
            return Parity((Check("top1_agreement", agreement, REDUCED_TOP1, True, MEAN),), details)
        return Parity((Check("logits_max_abs_diff", logits, LOGITS_ABS, False),
                       Check("top1_agreement", agreement, 1.0, True, MEAN)), details)

    def quality(self, model, options: NasOptions, run) -> dict[str, Any] | None:
        """Reduced precision: accuracy of the exported graph on the test digits beside PyTorch's."""
        if options.precision == "fp32" or not self._digits(model):
            return None
        kept = getattr(model, "measured_quality", None)
        if kept is not None and kept[0] == run:  # the gate measured this graph already (a bound method)
            return kept[1]
        from tritonforge.export.nas.data import real_digits
        from tritonforge.export.nas.train import predict

        test = real_digits("test")
        exported = np.concatenate([run({"pixel_values": test.images[i:i + 64]})["logits"].argmax(1)
                                   for i in range(0, len(test.labels), 64)])
        reference = float((predict(model, test.images) == test.labels).mean())
        accuracy = float((exported == test.labels).mean())
        measured = {"accuracy": accuracy, "pytorch_fp32_accuracy": reference,
                    "accuracy_drop": reference - accuracy, "samples": int(len(test.labels))}
        model.measured_quality = (run, measured)
        return measured

    def gates(self, model, options: NasOptions, io: ModelIO, run, folder: Path) -> list[Check]:
        """INT8: at most one point of test accuracy lost against the FP32 PyTorch network."""
        if options.precision != "int8" or not self._digits(model):
            return []
        return [Check("accuracy_drop", self.quality(model, options, run)["accuracy_drop"], INT8_DROP, False)]

    def gate_advice(self, options, failed) -> str:
        return "INT8 loses too much accuracy on this network: publish FP32 or --bits 16"

    def parity_advice(self, options: NasOptions) -> str:
        return "Report the genotype file with the error"

    def summary(self, manifest) -> list[str]:
        source, quality = manifest["source"], manifest.get("quality")
        searched = source.get("searched") or {}
        lines = [f"DARTS network, {source['parameters']:,} parameters, weights {source['weights']}; genotype "
                 f"searched on {searched.get('data') or 'unknown data'}", *super().summary(manifest)]
        if "pytorch_test_accuracy" in source:
            lines.append(f"PyTorch accuracy on the test digits: {source['pytorch_test_accuracy']:.4f}")
        if quality:
            lines.append(f"exported graph's accuracy: {quality['accuracy']:.4f} (drop "
                         f"{100 * quality['accuracy_drop']:.2f} points)")
        latency = manifest.get("latency") or {}
        search, exported = latency.get("search") or {}, latency.get("exported") or {}
        if search:
            lines.append(f"search: predicted {search['predicted_ms']:.3f} ms, measured "
                         f"{search['measured_ms']:.3f} ms on {search['target']} at batch {search['batch']} "
                         f"({search['cpu']})")
        if exported:
            lines.append(f"this graph on {exported['target']} ({exported['precision']}, batch "
                         f"{exported['batch']}): {exported['measured_ms']:.3f} ms")
        return lines

    def commands(self):
        from tritonforge.export.nas.commands import nas_commands

        return nas_commands()
