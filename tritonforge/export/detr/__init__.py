"""The `detr` family: DETR, Deformable DETR and MTTrans detectors, image bytes in, boxes out.

MTTrans (arXiv 2205.01643) is Deformable DETR with two learned domain tokens kept at inference
(`mttrans.py`: an extra one-token encoder feature level and an extra decoder query); its
checkpoints, like the original Deformable DETR's, use the original key names, mapped onto
transformers' model with every key accounted for (`checkpoints.py`).

`--bits 16` writes an FP16 graph (float32 inputs and outputs kept) for GPU serving, or on
`--target openvino` the FP32 graph that OpenVINO computes in BF16; `--bits 8` an INT8 QDQ graph
(see `static_int8.py` for what stays in float); all three are judged against the FP32 PyTorch
model, each with its own floors (`REDUCED`).

The exported graph holds normalisation and post-processing (`model.DetectionGraph`): clients
send a photograph to `<name>_image` (decode and letterbox in a python-backend step) and get
boxes in the photograph's own pixels, scores and integer labels at a fixed top-k.
No detector weights install offline: without `--model`, the detector has seeded random
weights (its detections mean nothing; the manifest and the export say so) at the papers' size
(`--size r50`) or a test size (`--size tiny`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.detr.model import ARCHITECTURES, SIZES, DetectionGraph, random_detector
from tritonforge.export.detr.static_int8 import quantize_detector
from tritonforge.export.onnx import MIN_OPSET, check_onnx, to_float16, torch_to_onnx
from tritonforge.family import ExportInfo, Family, Shape, VerifyDefaults, option, register
from tritonforge.modalities import Image
from tritonforge.outputs.metrics import match_detections, max_abs_diff, row_cosines
from tritonforge.spec import (
    DETECTION_BOXES,
    DETECTION_LABELS,
    DETECTION_SCORES,
    MEAN,
    Check,
    ModelIO,
    Parity,
    TensorSpec,
)
from tritonforge.targets import TargetOptions
from tritonforge.triton_config import ServingOptions

# Declared FP32 tolerances: the same arithmetic in another order.
LOGITS_ABS = 1e-4  # raw logits and boxes, before the top-k
MATCHED_IOU = 0.99  # each detection's box against its matched reference box
SCORE_ABS = 1e-3
TIE = 1e-3  # a pair whose scores sit this close to the k-th score may have swapped at the cut
# Reduced precision against FP32: (logits cosine floor, box recall at IoU 0.5 floor). OpenVINO
# computes the FP32 graph to the FP32 bars; its BF16 and INT8 are measured in docs/targets.md.
REDUCED = {"fp16": (0.999, 0.95), "bf16": (0.999, 0.95), "int8": (0.99, 0.9)}
PRECISIONS = {32: "fp32", 16: "fp16", 8: "int8"}
CALIBRATION_IMAGES = 8  # every bundled photograph once


@dataclass(frozen=True)
class DetrOptions(TargetOptions):
    """The export recipe; written verbatim into the manifest."""

    arch: str = option("detr", help="detr, deformable or mttrans (Deformable DETR with MTTrans's "
                                    "domain tokens).")
    model: str | None = option(None, help="A transformers detector directory (config.json and weights), "
                                          "or an original Deformable DETR / MTTrans checkpoint (.pth, "
                                          ".safetensors; loaded weights-only). Default: seeded random "
                                          "weights at --size.")
    size: str = option("r50", help="Random weights: r50 (ResNet-50, the papers' size) or tiny (tests).")
    image_size: int = option(640, help="Export size: photographs are letterboxed to S x S; the graph's "
                                       "shapes are fixed to it.")
    top_k: int = option(100, help="Detections per image (fixed, so Triton can batch requests).")
    num_labels: int = option(91, help="Classes of a random detector (COCO's 91 ids).")
    seed: int = option(0, help="Seed of the random weights.")
    bits: int = option(32, help="32 (FP32), 16 (FP16 for GPU serving; BF16 on --target openvino) or 8 "
                                "(INT8 QDQ, calibrated on photographs).")
    gpu: bool = option(False, help="Serve on GPU with the TensorRT accelerator (same as --target tensorrt).")

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise TritonForgeError(
                f"--arch {self.arch!r} is unknown: choose one of {', '.join(ARCHITECTURES)}")
        if self.size not in SIZES:
            raise TritonForgeError(f"--size {self.size!r} is unknown: choose one of {', '.join(SIZES)}")
        if self.bits not in PRECISIONS:
            raise TritonForgeError(f"--bits {self.bits} is not offered for detectors: choose 32, 16 or 8")
        if self.image_size < 32 or self.top_k < 1 or self.num_labels < 1:
            raise TritonForgeError(f"--image-size {self.image_size} (at least 32), --top-k {self.top_k} and "
                                   f"--num-labels {self.num_labels} (at least 1) are out of range")
        super().__post_init__()  # resolves the target


def load_detector(options: DetrOptions) -> tuple[Any, list[str] | None]:
    """The transformers detector, from `--model` or seeded random weights, and for an original
    checkpoint the report of what each of its keys became."""
    if options.model is None:
        return random_detector(options.arch, options.size, options.num_labels, options.seed), None
    from transformers import AutoConfig, DeformableDetrForObjectDetection, DetrForObjectDetection

    from tritonforge.export.detr.checkpoints import detector_from_checkpoint

    folder = Path(options.model).expanduser()
    if folder.is_file():
        if options.arch == "detr":
            raise TritonForgeError(f"--model {folder}: original DETR checkpoints are not mapped (only "
                                   "Deformable DETR and MTTrans ones): convert it with transformers and "
                                   "pass the folder")
        detector, report = detector_from_checkpoint(folder)
        has_tokens = hasattr(detector.model, "domain_enc") or hasattr(detector.model, "domain_dec")
        if has_tokens != (options.arch == "mttrans"):
            found = "has MTTrans domain tokens" if has_tokens else "has no domain tokens"
            arch = "mttrans" if has_tokens else "deformable"
            raise TritonForgeError(f"--model {folder} {found}: pass --arch {arch}")
        return detector, report.summary().splitlines()
    if not (folder / "config.json").is_file():
        raise TritonForgeError(f"--model {folder} is not a transformers detector directory (no config.json): "
                               "give a folder saved with save_pretrained")
    config = AutoConfig.from_pretrained(folder)
    wanted = {"detr": "detr", "deformable": "deformable_detr"}[options.arch]
    if config.model_type != wanted:
        raise TritonForgeError(f"--model {folder} holds a {config.model_type!r} model, not {wanted!r}: "
                               f"pass the matching --arch")
    if options.arch == "mttrans":
        raise TritonForgeError(f"--model {folder}: MTTrans loads from its training checkpoint (.pth), "
                               "whose domain tokens a transformers folder cannot hold")
    model_type = DeformableDetrForObjectDetection if options.arch == "deformable" else DetrForObjectDetection
    return model_type.from_pretrained(folder).eval(), None


@register
class DetrFamily(Family):
    """A detection transformer (DETR, Deformable DETR or MTTrans), pre- and post-processing in the graph."""

    name = "detr"
    options_type = DetrOptions
    # ResNet-50 at 640 x 640 takes about a second an image in PyTorch on 2 cores: batch 8, the
    # whole evaluation set and 30 runs took 14 minutes (`verify --precise` still runs that).
    verify_defaults = VerifyDefaults(batch_size=2, iterations=3, samples=8)

    def default_name(self, options: DetrOptions) -> str:
        return f"{options.arch}_{options.precision}"

    def serving(self, options: DetrOptions, base: ServingOptions) -> ServingOptions:
        return options.serving(base)

    def load(self, options: DetrOptions, stage=None) -> DetectionGraph:
        import torch

        torch.set_num_threads(options.threads)
        detector, report = load_detector(options)
        config = detector.config
        # DETR ranks queries; Deformable DETR ranks queries x classes.
        available = config.num_queries * (config.num_labels if options.arch == "deformable" else 1)
        graph = DetectionGraph(detector, options.arch, options.image_size, options.image_size,
                               min(options.top_k, available))
        graph.checkpoint_report = report
        return graph.eval()

    def source(self, model: DetectionGraph) -> dict[str, Any]:
        config = model.detector.config
        name_or_path = getattr(config, "_name_or_path", "") or None
        tokens = [name for name in ("domain_enc", "domain_dec") if hasattr(model.detector.model, name)]
        architecture = type(model.detector).__name__ + (" + MTTrans domain tokens" if tokens else "")
        return {"architecture": architecture,
                "model_dir": name_or_path, "domain_tokens": tokens,
                **({"checkpoint": model.checkpoint_report} if model.checkpoint_report else {}),
                "parameters": sum(p.numel() for p in model.parameters()),
                "num_queries": int(config.num_queries), "num_labels": int(config.num_labels),
                "weights": "from --model" if name_or_path or model.checkpoint_report else
                           "random (seeded), untrained: the detections mean nothing"}

    def io(self, model: DetectionGraph, options: DetrOptions) -> ModelIO:
        size, k = options.image_size, model.top_k
        config = model.detector.config
        classes = int(config.num_labels) + (1 if options.arch == "detr" else 0)  # DETR's "no object"
        image = Image(height=size, width=size, input="image", resize="letterbox", dtype="uint8",
                      size_input="orig_size")
        labels = tuple(str(config.id2label.get(i, f"class_{i}")) for i in range(int(config.num_labels)))
        return ModelIO(
            inputs=(TensorSpec("image", "uint8", (3, size, size)), TensorSpec("orig_size", "int64", (2,))),
            outputs=(TensorSpec("boxes", "float32", (k, 4), DETECTION_BOXES),
                     TensorSpec("scores", "float32", (k,), DETECTION_SCORES),
                     TensorSpec("labels", "int64", (k,), DETECTION_LABELS),
                     TensorSpec("logits", "float32", (int(config.num_queries), classes)),
                     TensorSpec("pred_boxes", "float32", (int(config.num_queries), 4))),
            preprocessing=image, labels=labels)

    def sample_inputs(self, model: DetectionGraph, options: DetrOptions, n: int | None,
                      shape: Shape | None = None) -> dict[str, np.ndarray]:
        """The bundled photographs (in turn, to give n), decoded and letterboxed as a client would."""
        size = (shape or {}).get("image_size") or options.image_size
        if size != options.image_size:  # spatial shapes are constants of the traced graph
            raise TritonForgeError(f"--image-size {size}: this export takes {options.image_size}x"
                                   f"{options.image_size} images; export again with --image-size {size}")
        record = self.io(model, options).preprocessing
        return record.encode(record.sample_raw(n or 8), None, None)

    def export(self, model: DetectionGraph, path: Path, options: DetrOptions) -> ExportInfo:
        io = self.io(model, options)
        axes = {name: {0: "batch"} for name in (*io.input_names, *io.output_names)}
        details = {"image_size": options.image_size, "top_k": model.top_k,
                   "in_graph": "uint8 -> ImageNet mean/std; top-k; boxes mapped back through the letterbox"}
        sections = {}
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fp32-") as scratch:
            # BF16 is how OpenVINO computes the FP32 file, not the file's type
            fp32 = path if options.precision in ("fp32", "bf16") else Path(scratch) / "fp32.onnx"
            torch_to_onnx(model, self.sample_inputs(model, options, 2), fp32, io, axes, MIN_OPSET)
            if options.precision == "fp16":
                to_float16(fp32).replace(path)
            elif options.precision == "int8":
                photographs = self.sample_inputs(model, options, CALIBRATION_IMAGES)
                feeds = [{k: v[i:i + 1] for k, v in photographs.items()} for i in range(CALIBRATION_IMAGES)]
                sections["quantization"] = quantize_detector(fp32, path, feeds,
                                                             openvino=options.target == "openvino")
        return ExportInfo(opset=check_onnx(path), precision=options.precision, details=details,
                          sections=sections)

    def quality_options(self) -> type:
        from tritonforge.export.detr.compare_recipes import DetrQualityOptions

        return DetrQualityOptions

    def quality_table(self, options, stage) -> list:
        """Each architecture's PyTorch FP32, ONNX Runtime FP32 and INT8 on the photographs,
        against FP32, timed interleaved in one run."""
        from tritonforge.export.detr.compare_recipes import quality_table

        return quality_table(options, stage)

    def quality(self, model: DetectionGraph, options: DetrOptions, run) -> dict[str, Any] | None:
        """Reduced precision against FP32 PyTorch on every bundled photograph."""
        if options.precision == "fp32":
            return None
        inputs = self.sample_inputs(model, options, None)
        io = self.io(model, options)
        reference = self.reference_outputs(model, inputs, io)
        parity = self.compare(reference, run(inputs), options, inputs)
        return {**{c.metric: c.value for c in parity.checks}, "samples": int(len(inputs["image"]))}

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: DetrOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        if options.precision != "fp32":
            return reduced_precision_parity(reference, candidate, *REDUCED[options.precision])
        return fp32_parity(reference, candidate)


def fp32_parity(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> Parity:
    """Raw logits and boxes element-wise; the top-k detections after matching each image's
    boxes to the reference's (near-tied scores may leave top-k in another order; a pair
    at the cut, both scores within TIE of the k-th, is counted as a swap, not a mismatch)."""
    ious, diffs, same, swaps = [], [], [], 0
    for image in range(len(reference["scores"])):
        match = match_detections(*(reference[k][image] for k in ("boxes", "scores", "labels")),
                                 *(candidate[k][image] for k in ("boxes", "scores", "labels")))
        cut = reference["scores"][image].min()
        near_cut = reference["scores"][image][match["reference"]] - cut <= TIE
        at_cut = near_cut & (match["iou"] < MATCHED_IOU)
        swaps += int(at_cut.sum())
        ious.append(match["iou"][~at_cut])
        diffs.append(match["score_diff"][~at_cut])
        same.append(match["same_label"][~at_cut])
    iou, diff, agree = np.concatenate(ious), np.concatenate(diffs), np.concatenate(same)
    raw = {name: max_abs_diff(reference[name], candidate[name]) for name in ("logits", "pred_boxes")}
    checks = (
        Check("logits_max_abs_diff", raw["logits"], LOGITS_ABS, False),
        Check("pred_boxes_max_abs_diff", raw["pred_boxes"], LOGITS_ABS, False),
        Check("matched_box_iou_min", float(iou.min()) if iou.size else 1.0, MATCHED_IOU, True),
        Check("score_max_abs_diff", float(diff.max()) if diff.size else 0.0, SCORE_ABS, False),
        Check("label_agreement", float(agree.mean()) if agree.size else 1.0, 1.0, True, MEAN),
    )
    return Parity(checks, {"samples": int(len(reference["scores"])),
                           "top_k": int(reference["scores"].shape[1]), "swaps_at_the_cut": swaps},
                  totals=("samples", "swaps_at_the_cut"))


def reduced_precision_parity(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                             cosine_floor: float, recall_floor: float) -> Parity:
    """An FP16 or INT8 graph against the FP32 model: the cosine of each image's raw logits, and
    the share of the reference's top-k boxes found again at IoU 0.5 (class-agnostic: a random
    detector's class scores are near ties that any rounding reorders; label agreement is
    reported beside it)."""
    cosine = row_cosines(reference["logits"].reshape(len(reference["logits"]), -1),
                         candidate["logits"].reshape(len(candidate["logits"]), -1))
    found, same = [], []
    for image in range(len(reference["scores"])):
        match = match_detections(*(reference[k][image] for k in ("boxes", "scores", "labels")),
                                 *(candidate[k][image] for k in ("boxes", "scores", "labels")))
        found.append(match["iou"] >= 0.5)
        same.append(match["same_label"])
    recall = float(np.concatenate(found).mean())
    checks = (Check("logits_cosine_min", float(cosine.min()), cosine_floor, True),
              Check("box_recall_at_iou_0.5", recall, recall_floor, True, MEAN))
    return Parity(checks, {"samples": int(len(reference["scores"])),
                           "logits_cosine_mean": float(cosine.mean()),
                           "label_agreement": float(np.concatenate(same).mean()),
                           "score_max_abs_diff": max_abs_diff(reference["scores"], candidate["scores"])})
