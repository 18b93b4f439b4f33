"""One time step of a spiking network, for streams: the membrane potentials travel as state.

The full-sequence graph takes all T frames at once. A live event camera delivers one frame at a
time, so `export snn --streaming` exports a step instead:

    (frame [B, C, H, W], state_in [B, S]) -> (logits, step_logits, spike_rates, state_out [B, S])

The state is one flat vector per sample: every LIF layer's membrane potential (after its reset),
then the running sum of the per-step logits and the number of steps taken. `logits` is that sum
divided by the count, the mean over the frames seen so far, so after the T-th frame it equals
the full-sequence graph's output (TET infers with the mean over t). Triton keeps the state per
sequence (implicit state, zero at START); the python backend's wrapper does the same locally.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STATE_INPUT, STATE_OUTPUT = "state_in", "state_out"


class StepGraph(nn.Module):
    """One step of `model` (any of the family's networks: its LIF layers take an initial
    membrane and report their last one). As the PyTorch reference it keeps its own state
    between calls (`remember`), like the stream Triton keeps; exported, it uses `state_in`."""

    def __init__(self, model: nn.Module, frame_shape: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.layers = model.lif_layers()
        with torch.no_grad():
            step = model.per_step_logits(torch.zeros(1, 1, *frame_shape))
        self.shapes = [tuple(layer.final.shape[1:]) for layer in self.layers]
        self.classes = int(step.shape[-1])
        self.sizes = [math.prod(shape) for shape in self.shapes] + [self.classes, 1]
        self.remember = False
        self.memory: torch.Tensor | None = None

    @property
    def state_size(self) -> int:
        return sum(self.sizes)

    def forward(self, frame: torch.Tensor, state_in: torch.Tensor):
        if self.remember and self.memory is not None:
            state_in = self.memory
        parts = torch.split(state_in, self.sizes, dim=1)
        for layer, part, shape in zip(self.layers, parts, self.shapes, strict=False):
            layer.initial = part.reshape(-1, *shape)
        try:
            step_logits = self.model.per_step_logits(frame.unsqueeze(1))[:, 0]
        finally:
            for layer in self.layers:
                layer.initial = None
        total, count = parts[-2] + step_logits, parts[-1] + 1.0
        state_out = torch.cat([layer.final.flatten(1) for layer in self.layers] + [total, count], dim=1)
        if self.remember:
            self.memory = state_out
        return total / count, step_logits, self.model.spike_rates(), state_out
