"""The `ov3d` family: open-vocabulary 3-D detection in point clouds (OV-3DETIC), the vocabulary
sent with the request.

No point-cloud data set or CLIP weights install offline, so the family makes its own rooms
(`scenes.py`: furniture from primitives, sensor occlusion, exact boxes, a seen/unseen class
split) and names classes with the embedded all-MiniLM-L6-v2 (`vocabulary.py`). The detector
(`model.py`) is 3DETR-style; `train.py` teaches seen classes from boxes and unseen ones from
room tags through pseudo boxes (`pseudo.py`), debiased; `tritonforge ov3d train` trains one
and `export ov3d --checkpoint` exports it (without one, it trains the default recipe now).

The exported graph takes a cloud's points and the sampler's indices (`sampling.py`, numpy:
farthest points and ball query do not export) per sample, and `class_embeddings` [C, D] for the
whole request (`ModelIO.request_inputs`): the classes are whatever names the request embeds. It
returns each query's box (`boxes_3d`), score, label (an index into the request's names) and
embedding; 3-D suppression (`postprocess.py`) runs after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.onnx import MIN_OPSET, check_onnx, to_float16, torch_to_onnx
from tritonforge.export.ov3d.modality import PointCloud
from tritonforge.export.ov3d.model import traceable
from tritonforge.export.ov3d.scenes import CLASSES, SEEN
from tritonforge.family import ExportInfo, Family, Shape, VerifyDefaults, option, register
from tritonforge.outputs.metrics import box3d_iou
from tritonforge.spec import (
    BOXES_3D,
    DETECTION_SCORES,
    MEAN,
    TENSOR,
    VOCABULARY_LABELS,
    Check,
    ModelIO,
    Parity,
    TensorSpec,
)
from tritonforge.targets import TargetOptions
from tritonforge.triton_config import validate_name

SCORE_ABS = 1e-4  # FP32: max |score difference| against PyTorch
BOX_IOU = 0.999  # FP32: min 3-D IoU of a query's box with PyTorch's, over queries scored >= MIN_SCORE
HALF_SCORE = 0.02  # FP16 / BF16 / INT8: mean |score difference| of the scored queries
INT8_SEEN_DROP = 0.01  # INT8 publish gate: seen-class mAP@0.25 on held-out rooms, at most 1 point lower
WEIGHTS_FILE = "pytorch/detector.pt"


def names_option(text: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip())


@dataclass(frozen=True)
class Ov3dOptions(TargetOptions):
    """The export recipe; written verbatim into the manifest."""

    checkpoint: str | None = option(None, help="A checkpoint of `tritonforge ov3d train` (default: train the "
                                               "default recipe now, about 10 minutes on 2 cores).")
    seed: int = option(0, help="Seed of the default detector's training.")
    bits: int = option(32, help="32 (FP32), 16 (FP16; BF16 on --target openvino) or 8 (INT8 QDQ: encoder "
                                "and decoder; the box heads and the class head stay float).")
    vocabulary: str = option(",".join(CLASSES), help="Comma-separated class names the quality (and INT8's "
                                                     "gate) is measured with; each must be a room class.")
    text_model: str = option("bert_fp32", help="The bert family's MiniLM export served beside this model: "
                                               "`<name>_vocab` embeds the request's class names with its "
                                               "`_text` ensemble.")
    eval_rooms: int = option(50, help="Held-out rooms the quality is measured on.")
    calibration_rooms: int = option(64, help="--bits 8: training rooms the activation ranges are "
                                             "calibrated on.")

    def __post_init__(self):
        if self.bits not in (32, 16, 8):
            raise TritonForgeError(f"--bits {self.bits} is not offered: choose 32, 16 or 8")
        names = names_option(self.vocabulary)
        unknown = [n for n in names if n not in CLASSES]
        if not names or unknown:
            raise TritonForgeError(f"--vocabulary {self.vocabulary!r} names {unknown or 'nothing'}: the "
                                   f"rooms hold {', '.join(CLASSES)}")
        validate_name(self.text_model + "_text")
        if self.eval_rooms < 1 or self.calibration_rooms < 1:
            raise TritonForgeError(f"--eval-rooms {self.eval_rooms} and --calibration-rooms "
                                   f"{self.calibration_rooms} must be at least 1")
        super().__post_init__()

    @property
    def names(self) -> tuple[str, ...]:
        return names_option(self.vocabulary)


@register
class Ov3dFamily(Family):
    """Point clouds and class names in, 3-D boxes labelled by those names out."""

    name = "ov3d"
    options_type = Ov3dOptions
    verify_defaults = VerifyDefaults(batch_size=4, iterations=10, samples=16)

    def default_name(self, options: Ov3dOptions) -> str:
        return "ov3d" + ("" if options.precision == "fp32" else f"_{options.precision}")

    def serving(self, options: Ov3dOptions, base):
        return options.serving(base)

    # -- the reference ---------------------------------------------------------------------------

    def load(self, options: Ov3dOptions, stage=None):
        import torch

        from tritonforge.export.ov3d.train import TrainRecipe, load_detector, train

        torch.set_num_threads(options.threads)
        if options.checkpoint:
            detector, recipe = load_detector(Path(options.checkpoint))
            return self._wrap(detector, recipe, f"from --checkpoint {options.checkpoint}")
        recipe = TrainRecipe(seed=options.seed)
        tick = stage(f"training the detector on {recipe.rooms} procedural rooms", recipe.epochs) \
            if stage else None
        detector = train(recipe, (lambda *_: tick()) if callable(tick) else None)
        return self._wrap(detector, recipe, f"trained here on procedural rooms (seed {options.seed})")

    def load_version(self, options: Ov3dOptions, folder: Path, stage=None):
        from tritonforge.export.ov3d.train import load_detector

        saved = folder / WEIGHTS_FILE
        if not saved.is_file():
            return self.load(options, stage)
        detector, recipe = load_detector(saved)
        return self._wrap(detector, recipe, f"saved with the version ({WEIGHTS_FILE})")

    def _wrap(self, detector, recipe, weights: str):
        detector.weights, detector.recipe = weights, recipe
        detector.checked = {}  # quality measured once per export: the gate and the manifest share it
        return detector.eval()

    def source(self, model) -> dict[str, Any]:
        from dataclasses import asdict

        return {"detector": model.config.to_json(), "weights": model.weights,
                "training": asdict(model.recipe), "seen_classes": list(SEEN),
                "unseen_classes": [c for c in CLASSES if c not in SEEN]}

    def write_side_files(self, model, version_dir: Path) -> None:
        """The detector travels with its version (about 2 MB), so `verify` rebuilds the same
        reference without training again."""
        from tritonforge.export.ov3d.train import save_detector

        save_detector(version_dir / WEIGHTS_FILE, model, model.recipe, {})

    # -- inputs and outputs ----------------------------------------------------------------------

    def io(self, model, options: Ov3dOptions) -> ModelIO:
        config = model.config
        modality = PointCloud(num_points=config.num_points, centres=config.centres, group=config.group,
                              radius=config.radius, queries=config.queries, template=model.recipe.template,
                              text_model=options.text_model)
        # Any number of points and classes; centres and queries as trained (the traced attention
        # reshapes by them).
        inputs = (TensorSpec("points", "float32", (-1, 3)), TensorSpec("centres", "int64", (config.centres,)),
                  TensorSpec("groups", "int64", (config.centres, config.group)),
                  TensorSpec("queries", "int64", (config.queries,)),
                  TensorSpec("class_embeddings", "float32", (-1, config.embedding)))
        outputs = (TensorSpec("boxes_3d", "float32", (config.queries, 7), BOXES_3D),
                   TensorSpec("scores", "float32", (config.queries,), DETECTION_SCORES),
                   TensorSpec("labels", "int64", (config.queries,), VOCABULARY_LABELS),
                   TensorSpec("embeddings", "float32", (config.queries, config.embedding), TENSOR))
        return ModelIO(inputs, outputs, modality, request_inputs=("class_embeddings",))

    def sample_inputs(self, model, options: Ov3dOptions, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        """Held-out procedural rooms (never trained on), with the recipe's vocabulary."""
        from tritonforge.export.ov3d.data import room_set
        from tritonforge.export.ov3d.evaluation import room_inputs
        from tritonforge.export.ov3d.text import embed_names

        config = model.config
        if shape and shape.get("num_points") not in (None, config.num_points):
            modality = self.io(model, options).preprocessing
            return modality.encode(modality.sample_raw(n or options.eval_rooms), None, None, shape)
        rooms = room_set("test", n or options.eval_rooms, config)
        return room_inputs(rooms, embed_names(options.names, model.recipe.template))

    # -- the graph -------------------------------------------------------------------------------

    def export(self, model, path: Path, options: Ov3dOptions) -> ExportInfo:
        io = self.io(model, options)
        axes = {"points": {0: "batch", 1: "points"}, "class_embeddings": {0: "classes"},
                **{name: {0: "batch"} for name in (*io.output_names, "centres", "groups", "queries")}}
        details = {"sampling": "farthest points and ball query outside the graph (sampling.py, numpy)",
                   "vocabulary": "class_embeddings [C, D] per request; labels index it"}
        feed = self.sample_inputs(model, options, 2)
        if options.precision != "int8":
            with traceable():
                torch_to_onnx(model, feed, path, io, axes, MIN_OPSET)
            if options.precision == "fp16":
                to_float16(path)
            return ExportInfo(opset=check_onnx(path), precision=options.precision, details=details)
        return self._export_int8(model, path, options, io, axes, feed, details)

    def _export_int8(self, model, path: Path, options: Ov3dOptions, io: ModelIO, axes, feed, details):
        import tempfile

        from tritonforge.batching import batches
        from tritonforge.export.ov3d.data import room_set
        from tritonforge.export.ov3d.evaluation import room_inputs
        from tritonforge.export.ov3d.text import embed_names
        from tritonforge.quant.static import (
            QUANTIZED_OP_TYPES,
            STATIC_QDQ_METHOD,
            float_outside,
            openvino_float_nodes,
            static_qdq,
        )

        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fp32-") as scratch:
            fp32 = Path(scratch) / "fp32.onnx"
            with traceable():
                torch_to_onnx(model, feed, fp32, io, axes, MIN_OPSET)
            rooms = room_set("train", options.calibration_rooms, model.config)
            calibration = room_inputs(rooms, embed_names(options.names, model.recipe.template))
            kept = float_outside(fp32, QUANTIZED_MODULES, "outside the encoder and decoder")
            if options.target == "openvino":
                kept.update(openvino_float_nodes(fp32))
            nodes = static_qdq(fp32, path, batches(calibration, 8, io.request_inputs), kept)
        quantization = {"method": STATIC_QDQ_METHOD,
                        "calibration_rooms": options.calibration_rooms,
                        "quantized_op_types": list(QUANTIZED_OP_TYPES), "quantize_linear_nodes": nodes,
                        "float": "the Fourier position embedding, the box heads, the embedding head and "
                                 f"the similarity with the class names ({len(kept)} nodes)"}
        return ExportInfo(opset=check_onnx(path), precision="int8", details=details,
                          sections={"quantization": quantization})

    # -- judging --------------------------------------------------------------------------------

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: Ov3dOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        from tritonforge.export.ov3d.postprocess import MIN_SCORE

        scored = reference["scores"] >= MIN_SCORE
        score_diff = np.abs(reference["scores"] - candidate["scores"])
        ious = np.array([box3d_iou(a[None], b[None])[0, 0] for a, b in
                         zip(reference["boxes_3d"][scored], candidate["boxes_3d"][scored], strict=True)])
        same = reference["labels"][scored] == candidate["labels"][scored]
        labels = float(same.mean()) if scored.any() else 1.0
        details = {"samples": int(len(reference["scores"])), "scored_queries": int(scored.sum()),
                   "score_max_abs_diff": float(score_diff.max()),
                   "score_mean_abs_diff": float(score_diff[scored].mean()) if scored.any() else 0.0,
                   "box_iou_min": float(ious.min()) if ious.size else 1.0, "label_agreement": labels}
        if options.precision == "fp32":
            return Parity((Check("score_max_abs_diff", details["score_max_abs_diff"], SCORE_ABS, False),
                           Check("box_iou_min", details["box_iou_min"], BOX_IOU, True)), details)
        mean = details["score_mean_abs_diff"]
        return Parity((Check("score_mean_abs_diff", mean, HALF_SCORE, False, MEAN),), details)

    def gates(self, model, options: Ov3dOptions, io: ModelIO, run, folder: Path) -> list[Check]:
        """INT8: seen-class mAP@0.25 on the held-out rooms, against the FP32 PyTorch model."""
        if options.precision != "int8":
            return []
        measured = self._quality(model, options, run)
        return [Check("seen_map25_drop", measured["seen_map25_drop"], INT8_SEEN_DROP, False)]

    def gate_advice(self, options, failed) -> str:
        return ("INT8 loses too much detection accuracy on this detector: publish FP32 or --bits 16, or "
                "calibrate on more rooms (--calibration-rooms)")

    def quality(self, model, options: Ov3dOptions, run) -> dict[str, Any] | None:
        """mAP on the held-out rooms with the recipe's vocabulary, beside PyTorch's."""
        return self._quality(model, options, run)

    def _quality(self, model, options: Ov3dOptions, run) -> dict[str, Any]:
        if "quality" in model.checked:
            return model.checked["quality"]
        from tritonforge.export.ov3d.data import room_set
        from tritonforge.export.ov3d.evaluation import detect, pytorch_run, room_ap
        from tritonforge.export.ov3d.text import embed_names

        rooms = room_set("test", options.eval_rooms, model.config)
        vocabulary = embed_names(options.names, model.recipe.template)
        exported = room_ap(detect(run, rooms, vocabulary), rooms, options.names)
        reference = room_ap(detect(pytorch_run(model), rooms, vocabulary), rooms, options.names)
        measured: dict[str, Any] = {"samples": options.eval_rooms}
        for split in ("seen", "unseen"):
            for threshold, key in ((0.25, "map25"), (0.5, "map50")):
                measured[f"{split}_{key}"] = exported[split][threshold]
                measured[f"pytorch_{split}_{key}"] = reference[split][threshold]
        measured["seen_map25_drop"] = reference["seen"][0.25] - exported["seen"][0.25]
        model.checked["quality"] = measured
        return measured

    def summary(self, manifest) -> list[str]:
        source, quality = manifest["source"], manifest.get("quality")
        detector = source["detector"]
        lines = [f"3DETR-style open-vocabulary detector: {detector['num_points']} points, "
                 f"{detector['queries']} queries, width {detector['width']}, "
                 f"{manifest['onnx']['bytes'] / 1e6:.1f} MB; weights {source['weights']}",
                 *super().summary(manifest)[:1]]
        if quality:
            lines.append(f"held-out rooms ({quality['samples']}): mAP@0.25 seen {quality['seen_map25']:.3f} "
                         f"(PyTorch {quality['pytorch_seen_map25']:.3f}), unseen "
                         f"{quality['unseen_map25']:.3f} (PyTorch {quality['pytorch_unseen_map25']:.3f})")
        return lines + super().summary(manifest)[2 if quality else 1:]

    def commands(self):
        from tritonforge.export.ov3d.commands import ov3d_commands

        return ov3d_commands()


# What INT8 quantizes (ONNX node-name prefixes); the position embedding and every head stay float.
QUANTIZED_MODULES = ("/pre_encoder/", "/encoder/", "/query_position/", "/decoder.")
