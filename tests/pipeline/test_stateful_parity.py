"""Stateful references: parity runs a streaming model step by step, carrying its state, and
resets the reference's own state between sequences (the hooks the SNN family builds on)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from tritonforge.export.onnx import check_onnx, torch_to_onnx
from tritonforge.family import ExportInfo, Family
from tritonforge.modalities import Tensors
from tritonforge.outputs.metrics import max_abs_diff
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.runtime import ort_session
from tritonforge.spec import CLASS_SCORES, Check, ModelIO, Parity, TensorSpec
from tritonforge.verify.parity import parity_check

ROWS, WIDTH, HIDDEN, CLASSES = 8, 8, 16, 10  # a digit arrives one 8-pixel row per step


class LeakyCell(nn.Module):
    """h_t = 0.5 h_{t-1} + tanh(W x_t); logits_t = V h_t. The exported graph takes h_{t-1} and
    returns h_t; the PyTorch reference keeps h itself, as a spiking network keeps its
    membrane potentials, and ignores the state input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.out = nn.Linear(WIDTH, HIDDEN), nn.Linear(HIDDEN, CLASSES)
        self.memory: torch.Tensor | None = None
        self.exporting = False

    def forward(self, frame: torch.Tensor, state_in: torch.Tensor):
        previous = state_in if self.exporting or self.memory is None else self.memory
        state = 0.5 * previous + torch.tanh(self.inp(frame))
        if not self.exporting:
            self.memory = state
        return self.out(state), state


@dataclass(frozen=True)
class StreamOptions:
    samples: int = 64


class StreamFamily(Family):
    """Not registered: used through the API only."""

    name = "toy_stream"
    options_type = StreamOptions

    def load(self, options, stage=None):
        return LeakyCell().eval()

    def io(self, model, options) -> ModelIO:
        inputs = (TensorSpec("frame", "float32", (WIDTH,)), TensorSpec("state_in", "float32", (HIDDEN,)))
        outputs = (TensorSpec("logits", "float32", (CLASSES,), CLASS_SCORES),
                   TensorSpec("state_out", "float32", (HIDDEN,)))
        return ModelIO(inputs, outputs, Tensors(layout="[T, 8] rows of a digit", timesteps=ROWS),
                       state=(("state_in", "state_out"),))

    def sample_inputs(self, model, options, n, shape=None):
        digits = load_digits().images.astype(np.float32) / 16.0  # [1797, 8, 8]
        return {"frame": digits[: n or options.samples]}

    def steps(self, inputs, io):
        return [{"frame": np.ascontiguousarray(inputs["frame"][:, t])} for t in range(ROWS)]

    def reset_state(self, model) -> None:
        model.memory = None

    def export(self, model, path, options) -> ExportInfo:
        feed = {"frame": np.zeros((2, WIDTH), np.float32), "state_in": np.zeros((2, HIDDEN), np.float32)}
        model.exporting = True
        try:
            io = self.io(model, options)
            axes = {n: {0: "batch"} for n in (*io.input_names, *io.output_names)}
            torch_to_onnx(model, feed, path, io, axes)
        finally:
            model.exporting = False
        return ExportInfo(opset=check_onnx(path), precision="fp32")

    def compare(self, reference, candidate, options, inputs=None) -> Parity:
        diff = max_abs_diff(reference["logits"], candidate["logits"])
        steps = int(reference["logits"].shape[1])
        return Parity((Check("max_abs_diff", diff, 1e-5, False),), {"steps": steps})

    def default_name(self, options) -> str:
        return "toy_stream"


def test_parity_runs_a_streaming_model_step_by_step_with_its_state(tmp_path):
    family = StreamFamily()
    result = export_model(family, StreamOptions(), tmp_path)
    assert result.manifest["parity"]["passed"] and result.manifest["parity"]["details"]["steps"] == ROWS
    assert result.manifest["io"]["state"] == [["state_in", "state_out"]]
    assert (result.folder / "samples.npz").is_file()


def test_the_reference_state_is_reset_between_sequences(tmp_path, monkeypatch):
    family, options = StreamFamily(), StreamOptions()
    model = family.load(options)
    path = tmp_path / "m.onnx"
    family.export(model, path, options)
    session, io = ort_session(path), family.io(model, options)
    inputs = family.sample_inputs(model, options, 32)
    assert parity_check(family, model, options, io, session, inputs, batch_size=8).passed
    # Without the reset, every batch after the first starts from the previous batch's memory.
    monkeypatch.setattr(StreamFamily, "reset_state", lambda self, model: None)
    parity = parity_check(family, model, options, io, session, inputs, batch_size=8)
    assert not parity.passed and parity.primary.value > 1e-3


def test_verify_reruns_the_stepwise_parity_from_the_manifest(tmp_path, monkeypatch):
    from tritonforge import family as base

    monkeypatch.setattr(base, "_REGISTRY", {**base._REGISTRY, "toy_stream": StreamFamily()})
    export_model("toy_stream", StreamOptions(), tmp_path)
    report = verify_model(tmp_path, "toy_stream", samples=16, iterations=2, shape={"timesteps": ROWS})
    assert report.parity.passed and report.shape == {"timesteps": ROWS}
