"""The `spikedepth` family: depth from spike cameras, monocular, stereo and UGDF's fusion of both.

No spike-camera data installs offline, so the family makes its own (`spikes.py`: an
integrate-and-fire simulator and SpikeCV's `.dat` format; `scenes.py`: procedural stereo
scenes with exact depth). The embedded default is a UGDF network trained here on them
(`tritonforge spikedepth train`; `export spikedepth` trains it when no `--checkpoint` is given).

The exported graph takes each camera's T-frame window bit-packed exactly as the `.dat` file
stores it and unpacks it itself (`model.PackedInput`); it returns `depth` and `uncertainty`
(depth maps, metres and the Laplace scale of the log depth), and for `ugdf` each branch's too.
Clients send `.dat` bytes to `<name>_spikes` (`modality.SpikeStream`), or, with
`--streaming`, one packed frame per camera per request under Triton's sequence batcher, the
window kept as implicit state (`model.StreamStep`).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.onnx import MIN_OPSET, check_onnx, to_float16, torch_to_onnx
from tritonforge.export.spikedepth.data import SceneSet, depth_metrics, rig_of, scene_set
from tritonforge.export.spikedepth.modality import SpikeStream
from tritonforge.export.spikedepth.model import (
    ARCHITECTURES,
    PackedInput,
    StreamStep,
    input_names,
    output_names,
)
from tritonforge.family import ExportInfo, Family, Shape, VerifyDefaults, option, register
from tritonforge.spec import DEPTH_MAP, MEAN, Check, ModelIO, Parity, TensorSpec
from tritonforge.targets import TargetOptions

DEPTH_REL = 1e-4  # FP32: max relative difference of every output against PyTorch
HALF_REL = 0.02  # FP16 / BF16 against the FP32 model: mean relative difference of the depth
INT8_REL = 0.05  # INT8 against the FP32 model, mean; its bar is the abs-rel increase below
INT8_ABS_REL_INCREASE = 0.005  # on the held-out scenes: a publish gate
STREAM_ABS = 1e-5  # streaming output after frame T against the windowed graph on the same frames (ORT)
STREAM_EXTRA = 3  # frames a parity stream runs past its first full window
WEIGHTS_FILE = "pytorch/model.pt"  # the reference's weights, saved with a version trained here


@dataclass(frozen=True)
class SpikeDepthOptions(TargetOptions):
    """The export recipe; written verbatim into the manifest."""

    arch: str = option("ugdf", help="mono (left camera), stereo (cost volume), or ugdf (both, fused by "
                                    "their uncertainty in the graph).")
    checkpoint: str | None = option(None, help="A checkpoint of `tritonforge spikedepth train` (default: "
                                               "train the network now on procedural scenes, minutes).")
    seed: int = option(0, help="Seed of the default network's training.")
    bits: int = option(32, help="32 (FP32), 16 (FP16; BF16 on --target openvino) or 8 (INT8 QDQ: the "
                                "convolutions; the unpacking, cost volume and fusion stay float).")
    streaming: bool = option(False, help="Export one frame per camera per request, the T-frame window "
                                         "kept as state (Triton's sequence batcher).")
    eval_scenes: int = option(100, help="Held-out scenes the quality (and INT8's gate) is measured on.")
    # MinMax ranges need the scenes' extremes: calibrated on 32 training scenes the UGDF network
    # lost 0.016 abs rel in INT8, on 128 0.006, on 256 0.003, on 512 0.0007 (ONNX Runtime).
    calibration_scenes: int = option(512, help="--bits 8: training scenes the activation ranges are "
                                               "calibrated on.")

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise TritonForgeError(f"--arch {self.arch!r} is unknown: choose one of "
                                   f"{', '.join(ARCHITECTURES)}")
        if self.bits not in (32, 16, 8):
            raise TritonForgeError(f"--bits {self.bits} is not offered: choose 32, 16 or 8")
        if self.eval_scenes < 1 or self.calibration_scenes < 1:
            raise TritonForgeError(f"--eval-scenes {self.eval_scenes} and --calibration-scenes "
                                   f"{self.calibration_scenes} must be at least 1")
        if self.streaming and self.bits != 32:
            raise TritonForgeError("--streaming exports FP32 steps only: leave out --bits, or export the "
                                   f"windowed graph with --bits {self.bits}")
        super().__post_init__()


@register
class SpikeDepthFamily(Family):
    """Spike-camera depth: T binary frames per camera in, depth and uncertainty out."""

    name = "spikedepth"
    options_type = SpikeDepthOptions
    verify_defaults = VerifyDefaults(batch_size=4, iterations=10, samples=16)

    def default_name(self, options: SpikeDepthOptions) -> str:
        suffix = ("" if options.precision == "fp32" else f"_{options.precision}") + \
            ("_stream" if options.streaming else "")
        return f"spikedepth_{options.arch}{suffix}"

    def serving(self, options: SpikeDepthOptions, base):
        return options.serving(base)

    # -- the reference ---------------------------------------------------------------------------

    def load(self, options: SpikeDepthOptions, stage=None):
        import torch

        from tritonforge.export.spikedepth.train import TrainRecipe, load_checkpoint, recipe_json, train

        torch.set_num_threads(options.threads)
        if options.checkpoint:
            net, recipe = load_checkpoint(Path(options.checkpoint))
            return self._wrap(net, options, f"from --checkpoint {options.checkpoint}", recipe)
        recipe = TrainRecipe(arch=options.arch, seed=options.seed)
        tick = stage(f"training the {options.arch} network on {recipe.scenes} procedural scenes",
                     recipe.epochs) if stage else None
        net = train(recipe, (lambda *_: tick()) if callable(tick) else None)
        return self._wrap(net, options, f"trained here on procedural scenes (seed {options.seed})",
                          recipe_json(recipe))

    def load_version(self, options: SpikeDepthOptions, folder: Path, stage=None):
        from tritonforge.export.spikedepth.train import load_checkpoint

        saved = folder / WEIGHTS_FILE
        if not saved.is_file():
            return self.load(options, stage)
        net, recipe = load_checkpoint(saved)
        return self._wrap(net, options, f"saved with the version ({WEIGHTS_FILE})", recipe)

    def _wrap(self, net, options: SpikeDepthOptions, weights: str, recipe):
        if net.config.arch != options.arch:
            raise TritonForgeError(f"--checkpoint holds a {net.config.arch} network, not --arch "
                                   f"{options.arch}: pass --arch {net.config.arch}")
        graph = StreamStep(net) if options.streaming else PackedInput(net)
        graph.weights, graph.recipe = weights, recipe
        graph.checked = {}  # quality measured once per export: the gate and the manifest share it
        return graph.eval()

    def source(self, model) -> dict[str, Any]:
        config = network(model).config
        return {"architecture": config.arch, "window": config.window, "height": config.height,
                "width": config.width, "focal_px": config.focal, "baseline_m": config.baseline,
                "weights": model.weights, **({"training": model.recipe} if model.recipe else {})}

    def write_side_files(self, model, version_dir: Path) -> None:
        """The network travels with its version (a few hundred kB), so `verify` rebuilds the same
        reference without training again, and a version adapted from a checkpoint file stays
        verifiable when that file is gone."""
        from tritonforge.export.spikedepth.train import save_checkpoint

        save_checkpoint(version_dir / WEIGHTS_FILE, network(model), model.recipe or {}, {})

    # -- inputs and outputs ----------------------------------------------------------------------

    def io(self, model, options: SpikeDepthOptions) -> ModelIO:
        config = network(model).config
        cameras = ("left", "right") if config.stereo else ("left",)
        tensors = input_names(config.arch)
        frame = config.height * config.width // 8
        plane = (1, config.height, config.width)
        outputs = tuple(TensorSpec(name, "float32", plane, DEPTH_MAP) for name in output_names(config.arch))
        modality = SpikeStream(height=config.height, width=config.width, window=config.window,
                               cameras=cameras, tensors=tensors, streaming=options.streaming)
        if not options.streaming:
            return ModelIO(tuple(TensorSpec(t, "uint8", (config.window, frame)) for t in tensors), outputs,
                           modality)
        windows = tuple((f"window_{camera}_in", f"window_{camera}_out") for camera in cameras)
        state = (*windows, ("frames_in", "frames_out"))
        inputs = (*(TensorSpec(t, "uint8", (frame,)) for t in tensors),
                  *(TensorSpec(pair[0], "uint8", (config.window, frame)) for pair in windows),
                  TensorSpec("frames_in", "float32", (1,)))
        state_outputs = (*(TensorSpec(pair[1], "uint8", (config.window, frame)) for pair in windows),
                         TensorSpec("frames_out", "float32", (1,)))
        return ModelIO(inputs, (*outputs, *state_outputs), modality, state=state)

    def sample_inputs(self, model, options: SpikeDepthOptions, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        """Held-out procedural scenes (never trained on): each camera's packed window; a
        streaming export gets recordings [N, T + 3, H*W/8] (the window, then 3 frames more)."""
        config = network(model).config
        count = n or options.eval_scenes
        if not options.streaming:
            return packed_inputs(held_out(config, count), config.arch)
        recordings = scene_set("test", count, config.window + STREAM_EXTRA, rig_of(config))
        return packed_inputs(recordings, config.arch)

    def steps(self, inputs: Mapping[str, np.ndarray], io: ModelIO) -> list[dict[str, np.ndarray]]:
        if not io.state:
            return [dict(inputs)]
        frames = next(iter(inputs.values())).shape[1]
        return [{name: np.ascontiguousarray(array[:, t]) for name, array in inputs.items()}
                for t in range(frames)]

    # -- the graph -------------------------------------------------------------------------------

    def export(self, model, path: Path, options: SpikeDepthOptions) -> ExportInfo:
        io = self.io(model, options)
        axes = {name: {0: "batch"} for name in (*io.input_names, *io.output_names)}
        details: dict[str, Any] = {"unpacking": "in the graph: floor(x / 2^k) arithmetic on the .dat bytes",
                                   "window": network(model).config.window}
        if options.streaming:
            return self._export_step(model, path, io, axes, details)
        feed = self.sample_inputs(model, options, 2)
        if options.precision != "int8":
            torch_to_onnx(model, feed, path, io, axes, MIN_OPSET)
            if options.precision == "fp16":
                to_float16(path)
            return ExportInfo(opset=check_onnx(path), precision=options.precision, details=details)
        from tritonforge.quant.static import (
            QUANTIZED_OP_TYPES,
            STATIC_QDQ_METHOD,
            openvino_float_nodes,
            static_qdq,
        )

        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fp32-") as scratch:
            fp32 = Path(scratch) / "fp32.onnx"
            torch_to_onnx(model, feed, fp32, io, axes, MIN_OPSET)
            config = network(model).config
            count = options.calibration_scenes
            scenes = scene_set("train", count, config.window, rig_of(config))
            calibration = packed_inputs(scenes, config.arch)
            feeds = [{k: v[i:i + 4] for k, v in calibration.items()} for i in range(0, count, 4)]
            kept = openvino_float_nodes(fp32) if options.target == "openvino" else {}
            nodes = static_qdq(fp32, path, feeds, kept)
        quantization = {"method": STATIC_QDQ_METHOD,
                        "calibration_scenes": options.calibration_scenes,
                        "quantized_op_types": list(QUANTIZED_OP_TYPES),
                        "quantize_linear_nodes": nodes,
                        "float": "the unpacking of the spikes, the cost volume (Mul, ReduceMean), "
                                 "soft-argmin, the depth and uncertainty heads' activations and the fusion",
                        **({"openvino_float_nodes": kept} if kept else {})}
        return ExportInfo(opset=check_onnx(path), precision="int8", details=details,
                          sections={"quantization": quantization})

    def _export_step(self, model, path: Path, io: ModelIO, axes, details) -> ExportInfo:
        """The one-frame graph, checked here against the windowed graph on the same runtime (ONNX
        Runtime, same kernels): after each frame from the T-th on, its outputs must be the
        windowed graph's on the last T frames, and 0 before. (Parity against PyTorch follows, as
        for every export.)"""
        from tritonforge.runtime import ort_session, run_session
        from tritonforge.verify.parity import session_steps

        step = StreamStep(copy.deepcopy(network(model))).eval()
        config = network(model).config
        frame = config.height * config.width // 8
        feed = {spec.name: np.zeros((2, *spec.dims), np.dtype(spec.dtype)) for spec in io.inputs}
        torch_to_onnx(step, feed, path, io, axes, MIN_OPSET)
        recordings = self.sample_inputs(model, SpikeDepthOptions(arch=config.arch, streaming=True), 4)
        streamed = session_steps(ort_session(path), self.steps(recordings, io), io)
        windowed_options = SpikeDepthOptions(arch=config.arch)
        windowed = PackedInput(network(model)).eval()
        windowed_io = self.io(windowed, windowed_options)
        worst = 0.0
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".windowed-") as scratch:
            graph = Path(scratch) / "windowed.onnx"
            cut = {name: r[:, :config.window] for name, r in recordings.items()}
            names = (*windowed_io.input_names, *windowed_io.output_names)
            torch_to_onnx(windowed, cut, graph, windowed_io, {name: {0: "batch"} for name in names})
            session = ort_session(graph)
            for last in range(config.window - 1, config.window + STREAM_EXTRA):
                cut = {name: np.ascontiguousarray(r[:, last - config.window + 1:last + 1])
                       for name, r in recordings.items()}
                outputs = run_session(session, cut)
                for name in output_names(config.arch):
                    worst = max(worst, float(np.abs(streamed[name][:, last] - outputs[name]).max()))
        early = max(float(np.abs(streamed[name][:, :config.window - 1]).max())
                    for name in output_names(config.arch))
        if worst > STREAM_ABS or early != 0.0:
            raise TritonForgeError(f"the streaming graph differs from the windowed one by {worst:.3g} after "
                                   f"the window filled (bar {STREAM_ABS}) and gives {early:.3g} before it: "
                                   "nothing was written. Report the model")
        details = {**details, "streaming": "one packed frame per camera per request; state = each camera's "
                                           "last T packed frames and the frame count; outputs are 0 (no "
                                           "depth) until T frames have arrived",
                   "state_bytes": sum(config.window * frame for _ in range(2 if config.stereo else 1)) + 4,
                   "stream_vs_window_max_abs_diff": worst}
        return ExportInfo(opset=check_onnx(path), precision="fp32", details=details)

    # -- judging --------------------------------------------------------------------------------

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: SpikeDepthOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        names = [name for name in reference if name.startswith(("depth", "uncertainty"))]
        worst = {name: relative_difference(reference[name], candidate[name]) for name in names}
        details: dict[str, Any] = {"samples": int(len(reference["depth"])),
                                   **{f"{name}_max_rel_diff": w[0] for name, w in worst.items()},
                                   **{f"{name}_mean_rel_diff": w[1] for name, w in worst.items()}}
        if options.precision == "fp32":
            return Parity(tuple(Check(f"{name}_max_rel_diff", w[0], DEPTH_REL, False)
                                for name, w in worst.items()), details)
        bar = INT8_REL if options.precision == "int8" else HALF_REL
        return Parity((Check("depth_mean_rel_diff", worst["depth"][1], bar, False, MEAN),), details)

    def gates(self, model, options: SpikeDepthOptions, io: ModelIO, run, folder: Path) -> list[Check]:
        """INT8: the abs-rel increase on the held-out scenes against the FP32 PyTorch model."""
        if options.precision != "int8":
            return []
        measured = self._quality(model, options, run)
        return [Check("abs_rel_increase", measured["abs_rel_increase"], INT8_ABS_REL_INCREASE, False)]

    def gate_advice(self, options, failed) -> str:
        return ("INT8 loses too much depth accuracy on this network: publish FP32 or --bits 16, or "
                "retrain with more scenes")

    def quality(self, model, options: SpikeDepthOptions, run) -> dict[str, Any] | None:
        """Depth metrics of the exported graph on the held-out scenes, beside PyTorch's."""
        if options.streaming:
            return None
        return self._quality(model, options, run)

    def _quality(self, model, options, run) -> dict[str, Any]:
        if "quality" in model.checked:
            return model.checked["quality"]
        config = network(model).config
        count = options.eval_scenes
        scenes = held_out(config, count)
        feeds = packed_inputs(scenes, config.arch)
        exported = depth_metrics(depth_of(run, feeds), scenes.depth)
        reference = depth_metrics(depth_of(pytorch_run(model), feeds), scenes.depth)
        measured = {"samples": count, "abs_rel": exported["abs_rel"], "rmse": exported["rmse"],
                    "delta_1.25": exported["delta_1.25"], "pytorch_abs_rel": reference["abs_rel"],
                    "abs_rel_increase": exported["abs_rel"] - reference["abs_rel"]}
        model.checked["quality"] = measured
        return measured

    def summary(self, manifest) -> list[str]:
        source, quality = manifest["source"], manifest.get("quality")
        lines = [f"{source['architecture']} spike-depth network, window T = {source['window']}, "
                 f"{source['height']} x {source['width']}, {manifest['onnx']['bytes'] / 1e6:.1f} MB; weights "
                 f"{source['weights']}", *super().summary(manifest)[:1]]
        if quality:
            lines.append(f"held-out scenes ({quality['samples']}): abs rel {quality['abs_rel']:.4f} (PyTorch "
                         f"{quality['pytorch_abs_rel']:.4f}), RMSE {quality['rmse']:.3f} m, "
                         f"delta<1.25 {quality['delta_1.25']:.3f}")
        return lines + super().summary(manifest)[2 if quality else 1:]

    def quality_options(self) -> type:
        from tritonforge.export.spikedepth.compare_recipes import SpikeDepthQualityOptions

        return SpikeDepthQualityOptions

    def quality_table(self, options, stage) -> list:
        """PyTorch, ONNX Runtime and OpenVINO in every precision on held-out scenes, scored against
        their true depth and timed interleaved in one run."""
        from tritonforge.export.spikedepth.compare_recipes import quality_table

        return quality_table(options, stage)

    def commands(self):
        from tritonforge.export.spikedepth.commands import spikedepth_commands

        return spikedepth_commands()


def network(model):
    """The DepthNet inside an export graph (windowed or streaming)."""
    return model.graph.net if isinstance(model, StreamStep) else model.net


def held_out(config, count: int) -> SceneSet:
    return scene_set("test", count, config.window, rig_of(config))


def packed_inputs(scenes: SceneSet, arch: str) -> dict[str, np.ndarray]:
    """The graph's inputs for `scenes`: each camera's packed windows (or recordings), by name."""
    sides = (scenes.left, scenes.right)
    return {name: np.ascontiguousarray(side) for name, side in zip(input_names(arch), sides, strict=False)}


def pytorch_run(model):
    """The PyTorch graph as a `run` over feeds, returning its depth."""
    import torch

    def run(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"depth": model(*(torch.from_numpy(v) for v in feed.values()))[0].numpy()}
    return run


def depth_of(run, feeds: Mapping[str, np.ndarray], batch: int = 8) -> np.ndarray:
    """`run`'s depth [N, H, W] on every window of `feeds`, `batch` windows a call."""
    count = len(next(iter(feeds.values())))
    return np.concatenate([run({k: v[i:i + batch] for k, v in feeds.items()})["depth"][:, 0]
                           for i in range(0, count, batch)])


def relative_difference(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max, mean) of |candidate - reference| / |reference| over the pixels where the reference
    holds a value (a stream's outputs before its window fills are 0 in both)."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    held = reference != 0
    if (candidate[~held] != 0).any():
        return float("inf"), float("inf")
    if not held.any():
        return 0.0, 0.0
    relative = np.abs(candidate[held] - reference[held]) / np.abs(reference[held])
    return float(relative.max()), float(relative.mean())
