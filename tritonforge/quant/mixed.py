"""Mixed precision within a quality budget (`--bits auto --max-drop X`).

Each quantizer (a Linear's or embedding table's weights, an activation slot) may hold 8, 6 or 4
bits. How much each one costs is measured, not guessed: starting from the model calibrated at 8
bits, one quantizer at a time is put on a coarser grid over the same range (weights requantized
per row, activations re-gridded over their calibrated range) and the drop of the pooled output
(the masked mean of the final hidden states: what a sentence-embedding user consumes) is
measured against full precision on calibration text. Moves are then taken cheapest first (drop
per bit saved) while the summed drops stay within the budget; the plan is calibrated for real
(the whole recipe, LSQ+ included) and its measured drop on held-back calibration text checked.
When it overshoots, the most expensive half of the moves is undone and the plan calibrated again.

"Average bits" is the mean over quantizers, each counted once; the parameter-weighted mean of
the weights' bits (what decides the file size) is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.quant.calibrate import CalibrationResult, pooled
from tritonforge.quant.quantizable import Quantizable
from tritonforge.quant.quantizers import quantize_weight, unsigned_range
from tritonforge.quant.steps import Stage, start_stage, tensor_batches

CANDIDATE_BITS = (6, 4)  # what a quantizer may drop to from 8


@dataclass(frozen=True)
class Move:
    """One quantizer on a coarser grid: what it saves and what it costs."""

    kind: str  # "weight" or "activation"
    name: str  # a weight table's name or an activation slot
    bits: int
    drop: float  # pooled-output cosine drop against the 8-bit model's, measured alone

    @property
    def saved(self) -> int:
        return 8 - self.bits


@dataclass
class BitPlan:
    """The bits of every quantizer; `weights` and `activations` list all of them."""

    weights: dict[str, int]
    activations: dict[str, int]
    predicted_drop: float = 0.0
    measured_drop: float | None = None
    parameters: dict[str, int] = field(default_factory=dict)  # elements per weight table

    @property
    def average_bits(self) -> float:
        bits = [*self.weights.values(), *self.activations.values()]
        return float(np.mean(bits))

    @property
    def weight_bits_by_parameters(self) -> float:
        total = sum(self.parameters.get(name, 1) for name in self.weights)
        return sum(self.parameters.get(name, 1) * b for name, b in self.weights.items()) / total

    def to_json(self) -> dict[str, Any]:
        return {"average_bits": round(self.average_bits, 3),
                "weight_bits_by_parameters": round(self.weight_bits_by_parameters, 3),
                "predicted_drop": round(self.predicted_drop, 6),
                "measured_drop": None if self.measured_drop is None else round(self.measured_drop, 6),
                "weights": dict(self.weights), "activations": dict(self.activations)}


def check_max_drop(max_drop: float | None) -> float:
    if max_drop is None or not 0.0 < max_drop < 1.0:
        raise TritonForgeError(
            f"--max-drop {max_drop} must lie strictly between 0 and 1: it is the embedding cosine "
            "the model may lose against full precision, e.g. 0.005")
    return float(max_drop)


@torch.no_grad()
def pooled_outputs(model: Quantizable, inputs: Mapping[str, np.ndarray], batch_size: int = 32
                   ) -> torch.Tensor:
    """The masked mean of the model's output over real positions, one row per input."""
    return torch.cat([pooled(model.output(batch), model.real_positions(batch))
                      for batch in tensor_batches(inputs, batch_size)])


def cosine_drop(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """1 - the mean row cosine between two sets of pooled outputs."""
    cosines = torch.nn.functional.cosine_similarity(reference.double(), candidate.double(), dim=1)
    return float(1.0 - cosines.mean())


@torch.no_grad()
def measure_moves(result: CalibrationResult, inputs: Mapping[str, np.ndarray], fp_pooled: torch.Tensor,
                  bits: tuple[int, ...] = CANDIDATE_BITS, stage: Stage | None = None,
                  prune_above: float = float("inf")) -> list[Move]:
    """The drop of every single move from `result` (calibrated at 8 bits), measured alone;
    a quantizer whose move already costs more than `prune_above` is not tried lower."""
    model = result.model
    model.set_exact(False)  # float sums of the same grids: close enough to rank, much faster
    base = cosine_drop(fp_pooled, pooled_outputs(model, inputs))
    linears = model.linears()
    units = len(result.weights) + len(result.quantizers)
    advance = start_stage(stage, "sensitivity of each quantizer", units)
    moves = []

    def drop() -> float:
        return cosine_drop(fp_pooled, pooled_outputs(model, inputs)) - base

    for name, weight in result.weights.items():
        table = model.weight_tables()[name]
        original, original_scale = table.detach().clone(), getattr(linears.get(name), "weight_scale", None)
        for b in bits:
            coarse = quantize_weight(weight.dequantize(), b, "mse")
            table.copy_(coarse.dequantize())
            if name in linears:
                linears[name].weight_scale = coarse.scale
            moves.append(Move("weight", name, b, drop()))
            if moves[-1].drop > prune_above:
                break
        table.copy_(original)
        if name in linears:
            linears[name].weight_scale = original_scale
        advance()
    for slot, quantizer in result.quantizers.items():
        low, high = quantizer.range()
        saved = (quantizer.bits, quantizer.qmin, quantizer.qmax, quantizer.scale.detach().clone(),
                 quantizer.zero_point.detach().clone())
        for b in bits:
            quantizer.bits = b
            quantizer.qmin, quantizer.qmax = unsigned_range(b)
            quantizer.set_range(low, high)
            moves.append(Move("activation", slot, b, drop()))
            if moves[-1].drop > prune_above:
                break
        quantizer.bits, quantizer.qmin, quantizer.qmax = saved[:3]
        quantizer.scale.copy_(saved[3])
        quantizer.zero_point.copy_(saved[4])
        advance()
    model.set_exact(True)
    return moves


def plan_bits(moves: list[Move], weights: list[str], activations: list[str], budget: float,
              parameters: Mapping[str, int] | None = None) -> BitPlan:
    """The lowest average bits whose summed drops stay within `budget`: the cheapest moves per
    bit saved first, each quantizer taking its lowest affordable width."""
    plan = BitPlan({name: 8 for name in weights}, {slot: 8 for slot in activations},
                   parameters=dict(parameters or {}))
    spent: dict[tuple[str, str], float] = {}
    for move in sorted(moves, key=lambda m: (max(m.drop, 0.0) / m.saved, -m.saved)):
        key = (move.kind, move.name)
        current = (plan.weights if move.kind == "weight" else plan.activations)[move.name]
        if move.bits >= current:
            continue
        extra = max(move.drop, 0.0) - spent.get(key, 0.0)
        if plan.predicted_drop + extra > budget:
            continue
        (plan.weights if move.kind == "weight" else plan.activations)[move.name] = move.bits
        spent[key] = max(move.drop, 0.0)
        plan.predicted_drop += extra
    return plan


def lowered(plan: BitPlan) -> list[tuple[str, str, int]]:
    """The plan's moves below 8 bits: (kind, name, bits)."""
    return [("weight", n, b) for n, b in plan.weights.items() if b < 8] + \
           [("activation", s, b) for s, b in plan.activations.items() if b < 8]


def search_bits(calibrate_with: Callable[[BitPlan | None], CalibrationResult],
                inputs: Mapping[str, np.ndarray], held_back: Mapping[str, np.ndarray],
                fp_pooled: Callable[[Mapping[str, np.ndarray]], torch.Tensor], max_drop: float,
                stage: Stage | None = None, attempts: int = 3) -> tuple[CalibrationResult, BitPlan]:
    """Measure, plan and calibrate (see the module doc). `calibrate_with(None)` is the coarse
    8-bit model the moves are measured on; `calibrate_with(plan)` the final recipe at `plan`."""
    max_drop = check_max_drop(max_drop)
    base = calibrate_with(None)
    reference = fp_pooled(inputs)
    moves = measure_moves(base, inputs, reference, stage=stage, prune_above=max_drop)
    parameters = {name: int(w.values.numel()) for name, w in base.weights.items()}
    weights, activations = list(base.weights), list(base.quantizers)
    held_reference = fp_pooled(held_back)
    budget = max_drop - cosine_drop(held_reference, pooled_outputs(base.model, held_back))
    plan = plan_bits(moves, weights, activations, max(budget, 0.0), parameters)
    for attempt in range(attempts):
        start_stage(stage, f"calibrating the plan: {plan.average_bits:.2f} bits on average")
        result = calibrate_with(plan)
        plan.measured_drop = cosine_drop(held_reference, pooled_outputs(result.model, held_back))
        if plan.measured_drop <= max_drop or not lowered(plan) or attempt == attempts - 1:
            return result, plan
        # Overshot: the drops do not simply add up. Undo the costlier half of the moves.
        cost = {(m.kind, m.name, m.bits): m.drop for m in moves}
        chosen = sorted(lowered(plan), key=cost.__getitem__)
        for kind, name, _bits in chosen[len(chosen) // 2:]:
            (plan.weights if kind == "weight" else plan.activations)[name] = 8
        plan.predicted_drop = sum(max(cost[m], 0.0) for m in lowered(plan))
    raise AssertionError("unreachable: the last attempt returns")
