"""A model's answer read output by output through the kinds its outputs declare: what `query`
prints and writes, and how `soak` judges an answer against the reference's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.outputs.kind import OutputKind, Part, QueryContext, SavePaths, Summary, Tolerances, Written
from tritonforge.outputs.registry import output_kind
from tritonforge.spec import TENSOR, Check, Parity


def parts(kinds: Mapping[str, str], arrays: Mapping[str, np.ndarray]) -> list[tuple[OutputKind, Part]]:
    """The answer as its kinds read it, in output order: each output by itself, except the
    outputs of a group, read together at the place of the group's first output. `kinds` maps
    output names to kind names (an output not in it is a plain tensor)."""
    found: list[tuple[OutputKind, str, dict[str, str], dict[str, np.ndarray]]] = []
    groups: dict[str, int] = {}
    for name, values in arrays.items():
        kind = output_kind(kinds.get(name, TENSOR), name)
        if not kind.group:
            found.append((kind, name, {kind.role: name}, {kind.role: values}))
            continue
        if kind.group not in groups:
            groups[kind.group] = len(found)
            found.append((kind, kind.group, {}, {}))
        _lead, _label, names, group_arrays = found[groups[kind.group]]
        if kind.role in names:
            raise TritonForgeError(f"outputs {names[kind.role]!r} and {name!r} are both the {kind.role} of "
                                   f"the {kind.group} group: declare one output of each of its kinds")
        names[kind.role], group_arrays[kind.role] = name, values
    return [(kind, Part(label, names, group_arrays)) for kind, label, names, group_arrays in found]


def summaries(kinds: Mapping[str, str], arrays: Mapping[str, np.ndarray], context: QueryContext
              ) -> list[Summary]:
    """What `query` shows of each part of the answer."""
    return [summary for kind, part in parts(kinds, arrays)
            if (summary := kind.summarize(part, context)) is not None]


def summary_json(shown: Sequence[Summary], arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The summary `query --json` writes: every output's shape and dtype, then each kind's data
    under its section (embeddings, labels, detections, ...)."""
    summary: dict[str, Any] = {"shapes": {k: list(v.shape) for k, v in arrays.items()},
                               "dtypes": {k: str(v.dtype) for k, v in arrays.items()}}
    for item in shown:
        if item.key is None:
            summary[item.section] = item.data
        else:
            summary.setdefault(item.section, {})[item.key] = item.data
    return summary


def answer_json(kinds: Mapping[str, str], arrays: Mapping[str, np.ndarray], context: QueryContext
                 ) -> dict[str, dict[str, Any]]:
    """Every output with its kind, shape, dtype and the values its kind writes (integers as
    integers; strings left out)."""
    written = {}
    for name, values in arrays.items():
        kind = kinds.get(name, TENSOR)
        entry = output_kind(kind, name).to_json(values, context)
        if entry is not None:
            written[name] = {"kind": kind, "shape": list(values.shape), "dtype": str(values.dtype), **entry}
    return written


def save_outputs(kinds: Mapping[str, str], arrays: Mapping[str, np.ndarray], path: Path | str,
                 context: QueryContext) -> list[Written]:
    """`query --save PATH`: every part whose kind can be written (images as PNGs, depth maps as
    colour PNGs and .npy, detections drawn on the photographs sent); one file goes to PATH
    itself, several to PATH's stem with `_<output>_<index>` added."""
    found = parts(kinds, arrays)
    refusals = {part.label: kind.cannot_save(part, context) for kind, part in found}
    savable = [(kind, part) for kind, part in found if refusals[part.label] is None]
    if not savable:
        reasons = "; ".join(f"{label}: {reason}" for label, reason in refusals.items())
        raise TritonForgeError(f"model {context.model!r} has no image output or other output --save can "
                               f"write ({reasons}): use --json for the values")
    paths = SavePaths(Path(path), single=len(savable) == 1 and savable[0][1].batch == 1)
    return [written for kind, part in savable for written in kind.save(part, paths, context)]


def compare_outputs(kinds: Mapping[str, str], reference: Mapping[str, np.ndarray],
                    candidate: Mapping[str, np.ndarray], tolerances: Tolerances | None = None
                    ) -> dict[str, Parity]:
    """How each part of `candidate` agrees with `reference` (an output, or a group by its
    name), judged by its kind; details name the kind (a group: its name). Outputs of another
    shape, or missing, fail `shapes_match`."""
    tolerances = tolerances or Tolerances()
    judged = {}
    for kind, want in parts(kinds, reference):
        got = {role: candidate.get(name) for role, name in want.names.items()}
        shapes = {role: list(values.shape) for role, values in want.arrays.items()}
        if any(got[role] is None or list(got[role].shape) != shape for role, shape in shapes.items()):
            parity = Parity((Check("shapes_match", 0.0, 1.0, True),), {
                "reference_shapes": shapes,
                "candidate_shapes": {role: None if v is None else list(v.shape) for role, v in got.items()}})
        else:
            parity = kind.agreement(want, Part(want.label, want.names, got), tolerances)
        judged[want.label] = Parity(parity.checks, {"kind": kind.group or kind.name, **parity.details})
    return judged
