"""The `snn` family: spiking classifiers trained with TET, exported with T fixed.

The embedded default is a spiking VGG trained here on scikit-learn's digits (`tritonforge snn
train`, seconds; `export snn` trains it when no `--checkpoint` is given). The exported graph
folds time into the batch for stateless layers, folds each BatchNorm into its conv, runs the
first conv once for a static image, and computes LIF spikes as Greater + Cast with an
arithmetic reset. Its outputs: the logits averaged over T, and each LIF layer's spike rate,
which parity compares layer by layer (a threshold flips on tiny numeric differences, so spike
rates and top-1 agreement are the measures, not only max-abs-diff).

`--streaming` exports one time step instead (`streaming.py`): a frame and the membrane
potentials in, the running prediction and the new potentials out, served under Triton's
sequence batcher so a stream is sent frame by frame.
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
from tritonforge.export.base import ExportInfo, Family, Shape, option, register
from tritonforge.export.onnx import MIN_OPSET, check_onnx, torch_to_onnx
from tritonforge.export.snn.model import ExportGraph, fold_batchnorm
from tritonforge.export.snn.streaming import STATE_INPUT, STATE_OUTPUT, StepGraph
from tritonforge.export.snn.train import DIGITS_SIZE, TrainRecipe, digits, load_checkpoint, train
from tritonforge.modalities import Image, Tensors
from tritonforge.quant.static import static_qdq
from tritonforge.spec import CLASS_SCORES, Check, ModelIO, Parity, TensorSpec
from tritonforge.verify.metrics import max_abs_diff, top1_agreement

TOP1_FLOOR = 0.995
SPIKE_RATE_ABS = 0.001  # 0.1 percentage point, per layer
INT8_TOP1_FLOOR = 0.97  # INT8 against the FP32 model: top-1 agreement; spike rates reported
CALIBRATION_DIGITS = 64  # training digits the INT8 ranges are calibrated on
FRAME_SHAPE = (1, DIGITS_SIZE, DIGITS_SIZE)


@dataclass(frozen=True)
class SnnOptions:
    """The export recipe; written verbatim into the manifest."""

    checkpoint: str | None = option(None, help="A checkpoint from `tritonforge snn train`. Default: "
                                               "train the embedded digits model now (seconds).")
    timesteps: int = option(4, help="Time steps T of the default model (a checkpoint brings its own).")
    seed: int = option(0, help="Seed of the default model's training.")
    bits: int = option(32, help="32 (FP32) or 8 (INT8 QDQ: per-channel int8 weights; spikes are exact "
                                "in 8 bits, the first conv's analog input is calibrated).")
    streaming: bool = option(False, help="Export one time step, the membrane potentials as state, "
                                         "for frame-by-frame streams (Triton's sequence batcher).")
    threads: int = option(2, cli=False)

    def __post_init__(self):
        if self.timesteps < 1:
            raise TritonForgeError(f"--timesteps {self.timesteps} must be at least 1")
        if self.bits not in (32, 8):
            raise TritonForgeError(f"--bits {self.bits} is not offered for spiking models: choose 32 or 8")
        if self.streaming and self.bits != 32:
            raise TritonForgeError("--streaming exports FP32 steps only: leave out --bits, or export "
                                   "the full-sequence graph with --bits 8")


@register
class SnnFamily(Family):
    """A spiking classifier (LIF neurons, TET) on 8 x 8 digit images, T time steps."""

    name = "snn"
    options_type = SnnOptions

    def default_name(self, options: SnnOptions) -> str:
        suffix = ("_int8" if options.bits == 8 else "") + ("_stream" if options.streaming else "")
        return "snn_digits" + suffix

    def load(self, options: SnnOptions, stage=None) -> ExportGraph | StepGraph:
        import torch

        torch.set_num_threads(options.threads)
        if options.checkpoint:
            model, recipe = load_checkpoint(Path(options.checkpoint))
        else:
            recipe = TrainRecipe(timesteps=options.timesteps, seed=options.seed)
            tick = stage("training the digits model with TET", recipe.epochs) if stage else None
            model = train(recipe, (lambda *_: tick()) if callable(tick) else None)
        graph = StepGraph(model, FRAME_SHAPE) if options.streaming else ExportGraph(model)
        graph.remember = options.streaming  # the reference keeps its own membranes between steps
        graph.recipe = recipe
        return graph.eval()

    def source(self, model: ExportGraph) -> dict[str, Any]:
        images, labels = digits("test")
        from tritonforge.export.snn.train import accuracy

        return {"architecture": "SpikingVGG", "widths": list(model.recipe.widths),
                "timesteps": model.recipe.timesteps, "training": "TET on scikit-learn's digits",
                "pytorch_test_accuracy": accuracy(model.model, images, labels)}

    def io(self, model: ExportGraph | StepGraph, options: SnnOptions) -> ModelIO:
        layers = len(model.model.lif_layers())
        if options.streaming:
            steps = model.recipe.timesteps
            state = model.state_size
            return ModelIO((TensorSpec("frame", "float32", FRAME_SHAPE),
                            TensorSpec(STATE_INPUT, "float32", (state,))),
                           (TensorSpec("logits", "float32", (10,), CLASS_SCORES),
                            TensorSpec("step_logits", "float32", (10,)),
                            TensorSpec("spike_rates", "float32", (layers,)),
                            TensorSpec(STATE_OUTPUT, "float32", (state,))),
                           Tensors(layout=f"[frames, 1, {DIGITS_SIZE}, {DIGITS_SIZE}]: a stream, one frame "
                                          f"per request (a digit image repeated over T = {steps})",
                                   timesteps=steps),
                           labels=tuple(str(d) for d in range(10)), state=((STATE_INPUT, STATE_OUTPUT),))
        image = Image(height=DIGITS_SIZE, width=DIGITS_SIZE, channels=1, mean=(0.0,), std=(1.0,),
                      resize="stretch")
        return ModelIO((TensorSpec("pixel_values", "float32", (1, DIGITS_SIZE, DIGITS_SIZE)),),
                       (TensorSpec("logits", "float32", (10,), CLASS_SCORES),
                        TensorSpec("spike_rates", "float32", (layers,))),
                       image, labels=tuple(str(d) for d in range(10)))

    def sample_inputs(self, model: ExportGraph, options: SnnOptions, n: int | None,
                      shape: Shape | None = None) -> dict[str, np.ndarray]:
        """The digits test split (never trained on), as the Image modality scales them; for a
        streaming export, each digit repeated over T frames [N, T, 1, 8, 8]."""
        size = (shape or {}).get("image_size")
        if size not in (None, DIGITS_SIZE):
            raise TritonForgeError(
                f"--image-size {size}: this model takes {DIGITS_SIZE}x{DIGITS_SIZE} digit images")
        images, _labels = digits("test")
        images = images if n is None else images[np.arange(n) % len(images)]
        if not options.streaming:
            return {"pixel_values": images}
        steps = (shape or {}).get("timesteps") or model.recipe.timesteps
        if steps < 1:
            raise TritonForgeError(f"--timesteps {steps} must be at least 1 (frames per stream)")
        return {"frame": np.repeat(images[:, None], steps, axis=1)}

    def steps(self, inputs: Mapping[str, np.ndarray], io: ModelIO) -> list[dict[str, np.ndarray]]:
        if not io.state:
            return [dict(inputs)]
        frames = inputs["frame"]
        return [{"frame": np.ascontiguousarray(frames[:, t])} for t in range(frames.shape[1])]

    def reset_state(self, model: ExportGraph | StepGraph) -> None:
        model.memory = None

    def export(self, model: ExportGraph, path: Path, options: SnnOptions) -> ExportInfo:
        io = self.io(model, options)
        axes = {name: {0: "batch"} for name in (*io.input_names, *io.output_names)}
        details = {"timesteps": model.recipe.timesteps, "batchnorm": "folded into the convs",
                   "lif": "Greater + Cast, reset by multiplication"}
        if options.streaming:
            return self._export_step(model, path, io, axes, details)
        folded = ExportGraph(fold_batchnorm(copy.deepcopy(model.model))).eval()
        if options.bits == 32:
            torch_to_onnx(folded, self.sample_inputs(model, options, 2), path, io, axes, MIN_OPSET)
            return ExportInfo(opset=check_onnx(path), precision="fp32", details=details)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fp32-") as scratch:
            fp32 = Path(scratch) / "fp32.onnx"
            torch_to_onnx(folded, self.sample_inputs(model, options, 2), fp32, io, axes, MIN_OPSET)
            train_images, _labels = digits("train")
            feeds = [{"pixel_values": train_images[i:i + 8]} for i in range(0, CALIBRATION_DIGITS, 8)]
            quantize_linear_nodes = static_qdq(fp32, path, feeds)
        quantization = {"method": "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 "
                                  "weights, per-tensor uint8 activations, MinMax calibration)",
                        "calibration_digits": CALIBRATION_DIGITS,
                        "quantize_linear_nodes": quantize_linear_nodes,
                        "spikes": "0/1 activations land exactly on the uint8 grid (scale 1/255, "
                                  "zero point 0)",
                        "float": "the LIF arithmetic (Mul, Add, Greater, Cast) and the spike-rate outputs"}
        return ExportInfo(opset=check_onnx(path), precision="int8", details=details,
                          sections={"quantization": quantization})

    def _export_step(self, model: StepGraph, path: Path, io: ModelIO, axes, details) -> ExportInfo:
        """The one-step graph; checked here against the full-sequence PyTorch model: the
        running mean after T frames must be its logits."""
        import torch

        from tritonforge.runtime import ort_session
        from tritonforge.verify.parity import session_steps

        step = StepGraph(fold_batchnorm(copy.deepcopy(model.model)), FRAME_SHAPE).eval()
        feed = {"frame": np.zeros((2, *FRAME_SHAPE), np.float32),
                STATE_INPUT: np.zeros((2, step.state_size), np.float32)}
        torch_to_onnx(step, feed, path, io, axes, MIN_OPSET)
        images, _labels = digits("test")
        frames = np.repeat(images[:64, None], model.recipe.timesteps, axis=1)
        streamed = session_steps(ort_session(path), self.steps({"frame": frames}, io), io)["logits"][:, -1]
        with torch.inference_mode():
            full = model.model(torch.from_numpy(images[:64])).numpy()
        details = {**details, "streaming": "one step per request; state = every LIF layer's membrane "
                                           "potential, the running sum of the logits, the step count",
                   "state_size": step.state_size,
                   "stream_vs_full_sequence_max_abs_diff": max_abs_diff(full, streamed)}
        return ExportInfo(opset=check_onnx(path), precision="fp32", details=details)

    def quality(self, model: ExportGraph | StepGraph, options: SnnOptions, run) -> dict[str, Any] | None:
        """Digit accuracy of the exported graph on the whole test split (a streaming graph:
        its running prediction after the last frame)."""
        from tritonforge.verify.parity import run_steps

        inputs = self.sample_inputs(model, options, None)
        _images, labels = digits("test")
        if options.streaming:
            io = self.io(model, options)
            logits = run_steps(run, self.steps(inputs, io), io)["logits"][:, -1]
        else:
            logits = run(inputs)["logits"]
        predicted = logits.argmax(1)
        return {"accuracy": float((predicted == labels).mean()), "samples": int(len(labels))}

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: SnnOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        if options.streaming:  # [B, frames, ...]: the prediction after the last frame; rates per layer
            reference, candidate = ({"logits": outputs["logits"][:, -1],
                                     "spike_rates": outputs["spike_rates"].mean(1)}
                                    for outputs in (reference, candidate))
        rates = np.abs(reference["spike_rates"].mean(0) - candidate["spike_rates"].mean(0))
        agreement = top1_agreement(reference["logits"], candidate["logits"])
        if options.bits == 8:  # against the FP32 model: rounding moves some neurons across V_th
            return Parity((Check("top1_agreement", agreement, INT8_TOP1_FLOOR, True),),
                          {"samples": int(len(reference["logits"])),
                           "spike_rate_diff_per_layer": [round(float(r), 6) for r in rates]})
        return Parity((Check("top1_agreement", agreement, TOP1_FLOOR, True),
                       Check("spike_rate_max_abs_diff", float(rates.max()), SPIKE_RATE_ABS, False)),
                      {"samples": int(len(reference["logits"])),
                       "logits_max_abs_diff": max_abs_diff(reference["logits"], candidate["logits"]),
                       "spike_rate_diff_per_layer": [round(float(r), 6) for r in rates]})

    def summary(self, manifest) -> list[str]:
        parity, quality = manifest["parity"], manifest["quality"]
        rates = parity["details"]["spike_rate_diff_per_layer"]
        return [f"T = {manifest['onnx']['timesteps']}, {len(rates)} LIF layers, "
                f"{manifest['onnx']['bytes'] / 1e3:.0f} kB",
                *super().summary(manifest)[:1],
                f"spike rates per layer within {max(rates):.6f} of PyTorch's",
                f"digit accuracy of the ONNX graph on {quality['samples']} test digits: "
                f"{quality['accuracy']:.4f} (PyTorch {manifest['source']['pytorch_test_accuracy']:.4f})"]

    def commands(self):
        from tritonforge.export.snn.commands import snn_commands

        return snn_commands()
