"""`toy_stereo`: a streaming model with two per-frame inputs, a left and a right row of a
digit per step, and a state carried between frames, served under Triton's sequence batcher
(the shape the spike-camera stereo streams take). Registered on import; no shared module
names it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from tritonforge.export.onnx import check_onnx, torch_to_onnx
from tritonforge.family import ExportInfo, Family, register
from tritonforge.modalities import Tensors
from tritonforge.outputs.metrics import max_abs_diff
from tritonforge.spec import CLASS_SCORES, Check, ModelIO, Parity, TensorSpec

ROWS, WIDTH, HIDDEN, CLASSES = 8, 8, 12, 10


class StereoCell(nn.Module):
    """h_t = 0.5 h_{t-1} + tanh(A l_t + B r_t); logits_t = V h_t. The graph takes h_{t-1} and
    returns h_t; the PyTorch reference keeps h itself between calls."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.left, self.right = nn.Linear(WIDTH, HIDDEN), nn.Linear(WIDTH, HIDDEN, bias=False)
            self.out = nn.Linear(HIDDEN, CLASSES)
        self.memory: torch.Tensor | None = None
        self.exporting = False

    def forward(self, left: torch.Tensor, right: torch.Tensor, state_in: torch.Tensor):
        previous = state_in if self.exporting or self.memory is None else self.memory
        state = 0.5 * previous + torch.tanh(self.left(left) + self.right(right))
        if not self.exporting:
            self.memory = state
        return self.out(state), state


@dataclass(frozen=True)
class StereoOptions:
    samples: int = 32


def stereo_digits(count: int) -> dict[str, np.ndarray]:
    """Digit rows as the left stream and the same rows mirrored as the right: [N, T, 8] each."""
    digits = load_digits().images.astype(np.float32)[:count] / 16.0
    return {"left": digits, "right": np.ascontiguousarray(digits[:, :, ::-1])}


@register
class StereoFamily(Family):
    name = "toy_stereo"
    options_type = StereoOptions

    def default_name(self, options) -> str:
        return "toy_stereo"

    def load(self, options, stage=None):
        return StereoCell().eval()

    def io(self, model, options) -> ModelIO:
        inputs = (TensorSpec("left", "float32", (WIDTH,)), TensorSpec("right", "float32", (WIDTH,)),
                  TensorSpec("state_in", "float32", (HIDDEN,)))
        outputs = (TensorSpec("logits", "float32", (CLASSES,), CLASS_SCORES),
                   TensorSpec("state_out", "float32", (HIDDEN,)))
        return ModelIO(inputs, outputs, Tensors(layout="[T, 8] left and right rows", timesteps=ROWS),
                       labels=tuple(str(d) for d in range(CLASSES)), state=(("state_in", "state_out"),))

    def sample_inputs(self, model, options, n, shape=None):
        return stereo_digits(n or options.samples)

    def steps(self, inputs, io):
        return [{side: np.ascontiguousarray(inputs[side][:, t]) for side in ("left", "right")}
                for t in range(ROWS)]

    def reset_state(self, model) -> None:
        model.memory = None

    def export(self, model, path, options) -> ExportInfo:
        feed = {"left": np.zeros((2, WIDTH), np.float32), "right": np.zeros((2, WIDTH), np.float32),
                "state_in": np.zeros((2, HIDDEN), np.float32)}
        model.exporting = True
        try:
            io = self.io(model, options)
            axes = {name: {0: "batch"} for name in (*io.input_names, *io.output_names)}
            torch_to_onnx(model, feed, path, io, axes)
        finally:
            model.exporting = False
        return ExportInfo(opset=check_onnx(path), precision="fp32")

    def compare(self, reference, candidate, options, inputs=None) -> Parity:
        diff = max_abs_diff(reference["logits"], candidate["logits"])
        return Parity((Check("max_abs_diff", diff, 1e-5, higher_is_better=False),))
