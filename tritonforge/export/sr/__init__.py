"""Super-resolution family (ESPCN, SRCNN, FSRCNN, EDSR): uint8 image in, uint8 image out.

The networks of EMT (ECCV 2022) at x2/x3/x4, exported fully convolutional: input `lr` uint8
[N, 3, H, W] with H and W dynamic, output `sr` uint8 [N, 3, sH, sW], the float cast, clamp,
rounding and uint8 cast inside the graph. FP32, FP16 (the arithmetic in half, pixels uint8),
BF16 (`--bits 16 --target openvino`: OpenVINO computes the FP32 graph in bfloat16) and INT8
(static QDQ per channel, calibrated on real LR patches; `static_int8.py`), on ONNX Runtime or
OpenVINO (`--target`). Parity is judged in grey levels and in PSNR against the HR photographs
the LR inputs were made from, with bars per precision (`FLOAT_BARS`, `INT8_PSNR_DROP`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.onnx import MIN_OPSET, check_onnx, torch_to_onnx
from tritonforge.export.sr.data import HR_CROP, lr_hr_pairs, psnr
from tritonforge.export.sr.model import (
    ARCHS,
    SRGraph,
    architecture,
    build_network,
    check_architecture,
    load_checkpoint,
    save_checkpoint,
)
from tritonforge.export.sr.static_int8 import KEEP_FLOAT, ROUNDINGS, gptq_round, quantize_int8
from tritonforge.family import ExportInfo, Family, Shape, option, register
from tritonforge.modalities.image import ImagePixels
from tritonforge.spec import IMAGE, MEAN, Check, ModelIO, Parity, TensorSpec
from tritonforge.targets import TargetOptions
from tritonforge.triton_config import ServingOptions

BITS = (32, 16, 8)
WEIGHTS_FILE = "weights.pt"  # beside model.onnx: the FP32 weights it was exported from
PRECISIONS = {32: "fp32", 16: "fp16", 8: "int8"}
# FP32: the same arithmetic summed in another order can move a value across a .5 boundary.
FP32_MAX_ABS_DIFF = 1.0  # grey levels
FP32_PSNR_DIFF = 0.01  # dB
# FP16: half floats carry 11 significant bits, steps of 0.125 between 128 and 255, so an output
# near a .5 boundary rounds to the neighbouring grey level (5% of pixels on the bilinear-started
# ESPCN of tests/export/sr/test_sr.py). Measured on the 32 photograph crops at x2: max abs diff 1 level for
# every arch; PSNR difference 0.0018 dB (ESPCN), 0.0007 dB (EDSR-1). The bars leave room for
# deeper nets compounding one more level: 2 levels, and 10x the largest PSNR difference seen.
FP16_MAX_ABS_DIFF = 2.0
FP16_PSNR_DIFF = 0.02
# BF16 (OpenVINO computing the FP32 graph in bfloat16): 8 significant bits, steps of 1 grey level
# between 128 and 255, in every activation. Measured on the 32 crops at x2 (docs/targets.md): the
# bilinear-started ESPCN of tests/export/sr/test_sr.py 2 levels, 15% of pixels moved, PSNR difference
# 0.0049 dB; random ESPCN, SRCNN, FSRCNN, EDSR-1 and EDSR-16 1 level, at most 0.0020 dB. Bars:
# twice the levels and 10x the largest PSNR difference seen, as for FP16.
BF16_MAX_ABS_DIFF = 4.0
BF16_PSNR_DIFF = 0.05
# (max abs diff in grey levels, |PSNR difference| in dB) per float precision
FLOAT_BARS = {"fp32": (FP32_MAX_ABS_DIFF, FP32_PSNR_DIFF), "fp16": (FP16_MAX_ABS_DIFF, FP16_PSNR_DIFF),
              "bf16": (BF16_MAX_ABS_DIFF, BF16_PSNR_DIFF)}
# dB below the FP32 PyTorch model, both against HR; OpenVINO's INT8 kernels measured within
# 0.001 dB of ONNX Runtime's on the same graphs.
INT8_PSNR_DROP = 0.2


@dataclass(frozen=True)
class SROptions(TargetOptions):
    """The export recipe; written verbatim into the manifest."""

    arch: str = option("espcn", help=f"Network: {', '.join(ARCHS)}.")
    scale: int = option(2, help="Upscaling factor: 2, 3 or 4.")
    blocks: int | None = option(None, help="EDSR only: residual blocks (default 16; EDSR-1 is 1).")
    checkpoint: str | None = option(None, help="State dict of the network (save_checkpoint); "
                                               "without it the weights are random.")
    bits: int = option(32, help="32 (FP32), 16 (FP16 arithmetic, uint8 pixels; BF16 on --target "
                                "openvino) or 8 (INT8 QDQ).")
    keep_float: str = option("ends", help="INT8: convolutions kept in float: none, first, last or "
                                          "ends (first and last).")
    calibration: int = option(32, help="INT8: LR calibration patches from the bundled photographs.")
    rounding: str = option("gptq", help="INT8 weight rounding: gptq (each conv's rounding error made up "
                                        "for by the weights not yet rounded, on the calibration patches) "
                                        "or nearest (ONNX Runtime's own).")
    seed: int = option(0, help="Seed of the random weights (without --checkpoint).")
    width: int | None = option(None, cli=False)  # a narrower network (tests)

    def __post_init__(self):
        check_architecture(self.arch, self.scale, self.blocks)
        if self.bits not in BITS:
            raise TritonForgeError(f"--bits {self.bits} is not offered: choose 32, 16 or 8")
        if self.keep_float not in KEEP_FLOAT:
            raise TritonForgeError(f"unknown --keep-float {self.keep_float!r}: choose one of "
                                   f"{', '.join(KEEP_FLOAT)}")
        if self.rounding not in ROUNDINGS:
            raise TritonForgeError(f"unknown --rounding {self.rounding!r}: choose one of "
                                   f"{', '.join(ROUNDINGS)}")
        if self.calibration < 1:
            raise TritonForgeError(f"--calibration {self.calibration} must be at least 1")
        super().__post_init__()  # resolves the target


class SRReference(SRGraph):
    """The PyTorch reference: the FP32 graph (also for FP16 and INT8 exports, whose cost is
    measured against it), with where its weights came from."""

    weights: str  # where the weights came from, said plainly (random, or the checkpoint)
    meta: dict[str, Any]  # what the checkpoint recorded (arch, scale, blocks, width, extra)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


@functools.cache
def _hr_by_lr(scale: int) -> dict[str, np.ndarray]:
    """The HR crop of every LR image `sample_inputs` gives out at `scale`, by the LR image's
    digest: `compare` gets only the inputs, and judges PSNR against the HR each came from."""
    lr, hr = lr_hr_pairs(scale)
    return {_digest(low): high for low, high in zip(lr, hr, strict=True)}


@register
class SRFamily(Family):
    """Super-resolution (ESPCN, SRCNN, FSRCNN, EDSR x2/x3/x4): uint8 image in, uint8 image out."""

    name = "sr"
    options_type = SROptions

    def parity_advice(self, options: SROptions) -> str:
        if options.bits != 8:
            return "Report the model"
        steps = []
        if options.keep_float != "ends":
            steps.append("keep the first and last convolutions in float (--keep-float ends)")
        if options.rounding != "gptq":
            steps.append("round with GPTQ (--rounding gptq)")
        return f"Try: {', or '.join([*steps, 'export FP16 (--bits 16)'])}"

    def default_name(self, options: SROptions) -> str:
        blocks = f"{options.blocks}" if options.blocks is not None else ""
        return f"sr_{options.arch}{blocks}_x{options.scale}_{options.precision}"

    def serving(self, options: SROptions, base: ServingOptions) -> ServingOptions:
        return options.serving(base)

    def load(self, options: SROptions, stage=None) -> SRReference:
        if options.checkpoint:
            return self.reference(*load_checkpoint(options.checkpoint, options.arch, options.scale,
                                                   options.blocks), options.scale,
                                  f"checkpoint {options.checkpoint}")
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
            torch.manual_seed(options.seed)
            network = build_network(options.arch, options.scale, options.blocks, options.width)
        return self.reference(network, {}, options.scale,
                              f"random (seed {options.seed}), untrained: the output is not a "
                              "super-resolved image; pass --checkpoint for trained weights")

    @staticmethod
    def reference(network: torch.nn.Module, meta: dict[str, Any], scale: int, weights: str) -> SRReference:
        """The FP32 reference of `network`; `weights` says where its weights came from."""
        model = SRReference(network.eval(), scale).eval()
        model.weights, model.meta = weights, meta
        return model

    def load_version(self, options: SROptions, folder: Path, stage=None) -> SRReference:
        """The version's own weights (`weights.pt`, written at export), so a version stays
        verifiable when the checkpoint it was exported from has moved or changed."""
        path = folder / WEIGHTS_FILE
        if not path.is_file():
            return self.load(options, stage)
        network, meta = load_checkpoint(path, options.arch, options.scale, options.blocks)
        return self.reference(network, meta, options.scale, f"{WEIGHTS_FILE} of version {folder.name}")

    def write_side_files(self, model: SRReference, version_dir: Path) -> None:
        meta = model.meta or {}
        arch, blocks = architecture(model.network)
        save_checkpoint(model.network, version_dir / WEIGHTS_FILE, arch, model.scale, blocks,
                        **meta.get("extra", {}))

    def source(self, model: SRReference) -> dict[str, Any]:
        return {"architecture": type(model.network).__name__, "scale": model.scale,
                "parameters": sum(p.numel() for p in model.network.parameters()), "weights": model.weights}

    def io(self, model: SRReference, options: SROptions) -> ModelIO:
        return ModelIO(inputs=(TensorSpec("lr", "uint8", (3, -1, -1)),),
                       outputs=(TensorSpec("sr", "uint8", (3, -1, -1), IMAGE),),
                       preprocessing=ImagePixels(input="lr"))

    def sample_inputs(self, model: SRReference, options: SROptions, n: int | None,
                      shape: Shape | None = None) -> dict[str, np.ndarray]:
        """LR images: bicubic downscales of 144x144 crops of the bundled photographs (None: all
        32 crops, four per photograph)."""
        return {"lr": lr_hr_pairs(options.scale, n)[0]}

    def export(self, model: SRReference, path: Path, options: SROptions) -> ExportInfo:
        io = self.io(model, options)
        sample = self.sample_inputs(model, options, 2)
        axes = {"lr": {0: "batch", 2: "height", 3: "width"},
                "sr": {0: "batch", 2: "out_height", 3: "out_width"}}
        details: dict[str, Any] = {"weights": model.weights}
        if options.precision == "fp16":  # BF16 is how OpenVINO computes the FP32 graph
            half = SRGraph(_half_copy(model.network), options.scale, torch.float16).eval()
            torch_to_onnx(half, sample, path, io, axes, MIN_OPSET)
            details["float"] = "float16 arithmetic; uint8 pixels in and out"
        elif options.bits == 8:
            calibration = lr_hr_pairs(options.scale, options.calibration)[0]
            graph, scales = model, None
            if options.rounding == "gptq":
                network, scales = gptq_round(model.network, calibration, options.keep_float)
                graph = SRGraph(network, options.scale).eval()
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = Path(tmp) / "fp32.onnx"
                torch_to_onnx(graph, sample, fp32, io, axes, MIN_OPSET)
                details["quantization"] = quantize_int8(fp32, path, "lr", calibration, options.keep_float,
                                                        scales)
        else:
            torch_to_onnx(model, sample, path, io, axes, MIN_OPSET)
        return ExportInfo(opset=check_onnx(path), precision=options.precision, details=details)

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: SROptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        ref, cand = reference["sr"], candidate["sr"]
        if ref.shape != cand.shape:
            return Parity((Check("max_abs_diff", float("inf"), 0.0, higher_is_better=False),),
                          {"shapes": [list(ref.shape), list(cand.shape)]})
        max_diff = float(np.abs(ref.astype(np.int16) - cand.astype(np.int16)).max())
        hr = _hr_of(inputs, options.scale)
        details: dict[str, Any] = {"max_abs_diff_grey_levels": max_diff,
                                   "pixels_differing": float(np.mean(ref != cand))}
        if hr is None:  # inputs from elsewhere: judged in grey levels only
            if options.bits == 8:
                raise TritonForgeError("INT8 parity is judged against the HR photographs: use the "
                                       "family's own sample inputs")
            return Parity((Check("max_abs_diff", max_diff, _max_diff(options), higher_is_better=False),),
                          details)
        psnr_ref, psnr_cand = psnr(ref, hr, options.scale), psnr(cand, hr, options.scale)
        details.update({"psnr_pytorch_db": psnr_ref, "psnr_onnx_db": psnr_cand,
                        "psnr": f"RGB vs the HR crops ({HR_CROP}x{HR_CROP}), border {options.scale + 6} "
                                "cropped, rounded output"})
        if options.bits == 8:
            # PSNR is a batch's mean figure: the batches' drops are averaged, not the worst taken.
            drop = Check("psnr_drop_db", psnr_ref - psnr_cand, INT8_PSNR_DROP, higher_is_better=False,
                         merge=MEAN)
            return Parity((drop,), details)
        psnr_diff = abs(psnr_ref - psnr_cand)
        psnr_tolerance = FLOAT_BARS[options.precision][1]
        return Parity((Check("max_abs_diff", max_diff, _max_diff(options), higher_is_better=False),
                       Check("psnr_diff_db", psnr_diff, psnr_tolerance, higher_is_better=False, merge=MEAN)),
                      details)

    def summary(self, manifest: Mapping[str, Any]) -> list[str]:
        lines = super().summary(manifest)
        weights = manifest.get("source", {}).get("weights", "")
        if weights.startswith("random"):  # said where it is seen, not only in the manifest
            lines.append(f"[yellow]weights: {weights}[/yellow]")
        return lines

    def commands(self):
        from tritonforge.export.sr.commands import emt_commands

        return emt_commands()

    def quality(self, model: SRReference, options: SROptions, run) -> dict[str, Any] | None:
        """Reduced precision: PSNR against HR of the export and of the FP32 PyTorch model."""
        if options.precision == "fp32":
            return None
        lr, hr = lr_hr_pairs(options.scale)
        exported = np.concatenate([run({"lr": lr[i:i + 8]})["sr"] for i in range(0, len(lr), 8)])
        with torch.inference_mode():
            reference = model(torch.from_numpy(lr)).numpy()
        psnr_fp32, psnr_export = psnr(reference, hr, options.scale), psnr(exported, hr, options.scale)
        return {"samples": len(lr), "psnr_fp32_db": psnr_fp32,
                f"psnr_{options.precision}_db": psnr_export, "psnr_drop_db": psnr_fp32 - psnr_export}


def _max_diff(options: SROptions) -> float:
    return FLOAT_BARS[options.precision][0] if options.precision in FLOAT_BARS else 255.0


def _hr_of(inputs: Mapping[str, np.ndarray] | None, scale: int) -> np.ndarray | None:
    """The HR crops of `inputs` when they are the family's sample inputs, else None."""
    if inputs is None:
        return None
    known = _hr_by_lr(scale)
    found = [known.get(_digest(image)) for image in inputs["lr"]]
    return None if any(h is None for h in found) else np.stack(found)


def _half_copy(network: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(network).half().eval()
