"""Input guards inside the exported graph: out-of-range integers and lengths fail at inference.

`tritonforge serve` runs each ONNX model through a python-backend wrapper that refuses bad
integer inputs before the graph runs (serving/python_models/onnx_runtime.py reads the
modality's `limits`: max_sequence_length and value_ranges). In production Triton's onnxruntime
and openvino backends run model.onnx directly and nothing there refuses: ONNX Runtime's Gather
wraps a negative token id onto another row, OpenVINO answers -5 and 10,000,000 alike.

This pass writes the same limits into the graph, generated from the same declaration
(`declared_guards(io, io.preprocessing.limits())`), so both paths refuse the same inputs:

* values: every value of an integer input with a declared range lies in low..high;
* lengths: every dynamic axis of an input (dims -1; the batch axis is Triton's) is 1 to
  max_sequence_length long (longer than the position table, or empty, is refused).

Each check computes a boolean `ok` from the input (ReduceMin / ReduceMax over its values, a
valid value appended so that an empty tensor reduces too; Shape / Gather for its lengths) and
has one ScatterElements node named after it (`input_ids_out_of_range_0_30521`,
`input_ids_length_out_of_range_1_512`) that writes into a small vector of such values at index
0 when ok, and past its end when not. Both runtimes check scatter indices at every run: ONNX
Runtime fails with INVALID_ARGUMENT "... ScatterElements node. Name:'<name>' ... indices element
out of data bounds", OpenVINO with "Node <name> of type ScatterElementsUpdate ...". (A shape
error, e.g. a Reshape to a wrong element count, is not enough: OpenVINO 2026.4's CPU plugin
skips a Reshape's shape inference when its target equals the previous run's, even when that run
failed, so the same bad request sent twice went through the second time.)

The scattered vector minus the vector, reduced to a scalar zero, is added to the input, and
every node that read the input reads the sum: the same values and the same static shape, so
in-range inputs compute exactly as before; and no optimizer can drop the check, since the
outputs depend on a value it cannot know before the run (OpenVINO folds away a chain whose
values it can bound, e.g. one that starts from a constant zero). How the layers are ordered so
that a failed request leaves OpenVINO able to serve the next one: `add_input_guards`.

Not caught: OpenVINO's CPU plugin runs int64 inputs as int32, converting them before any node
runs, so an id that wraps into range modulo 2**32 (e.g. 2**32 + 5) is read as that id; ONNX
Runtime and the local wrapper refuse it.

Nothing here imports a family: only `onnx` and the spec types.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tritonforge.errors import TritonForgeError
from tritonforge.spec import ModelIO

VALUES = "values"
LENGTH = "length"
# The input types a guard takes: those whose Reshape, Concat, ReduceMin/Max and Add both runtimes
# run (ONNX Runtime has no ReduceMin for uint32, no Concat for int16 or uint16).
INTEGER_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
                 onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8}
MIN_GUARD_OPSET = 13


@dataclass(frozen=True)
class InputGuard:
    """One check on one graph input: its values lie in low..high (VALUES), or the lengths of
    its `axes` (0 is the batch axis) lie in low..high (LENGTH). `what` says what the values are."""

    input: str
    check: str
    low: int
    high: int
    axes: tuple[int, ...] = ()
    what: str = ""

    def __post_init__(self):
        if self.check not in (VALUES, LENGTH):
            raise TritonForgeError(f"an input guard checks {VALUES} or {LENGTH}, not {self.check!r}")
        if self.low > self.high:
            raise TritonForgeError(f"input {self.input!r}: the range {self.low}..{self.high} is empty")
        if self.check == LENGTH and not self.axes:
            raise TritonForgeError(f"input {self.input!r}: a length guard needs the axes it checks")

    @property
    def node_name(self) -> str:
        """The failing node's name, which the runtime's error names."""
        kind = "out_of_range" if self.check == VALUES else "length_out_of_range"
        return f"{self.input}_{kind}_{self.low}_{self.high}"

    def describe(self) -> str:
        if self.check == VALUES:
            return f"{self.input}: {self.what or 'values'}, {self.low} to {self.high}"
        axes = ", ".join(map(str, self.axes))
        return f"{self.input}: axis {axes} {self.low} to {self.high} long (max_sequence_length)"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"input": self.input, "check": self.check, "low": self.low,
                                "high": self.high, "node": self.node_name}
        if self.axes:
            data["axes"] = list(self.axes)
        if self.what:
            data["what"] = self.what
        return data


def declared_guards(io: ModelIO, limits: Mapping[str, Any]) -> tuple[InputGuard, ...]:
    """The guards for the limits a modality declares (`Modality.limits`), read as the local
    wrapper reads them: `value_ranges` {input: [low, high, what]} on integer inputs, and
    `max_sequence_length` on every dynamic axis of every input."""
    specs = {spec.name: spec for spec in io.inputs}
    guards = []
    for name, (low, high, *what) in dict(limits.get("value_ranges") or {}).items():
        spec = specs.get(name)
        if spec is None:
            continue
        if np.dtype(spec.dtype).kind not in "iu":
            raise TritonForgeError(f"input {name!r} ({spec.dtype}) has a value range: only integer "
                                   "inputs take one")
        guards.append(InputGuard(name, VALUES, int(low), int(high), what=str(what[0]) if what else ""))
    maximum = int(limits.get("max_sequence_length") or 0)
    if maximum > 0:
        for spec in io.inputs:
            axes = tuple(axis for axis, dim in enumerate(spec.dims, start=1) if dim == -1)
            if axes:
                guards.append(InputGuard(spec.name, LENGTH, 1, maximum, axes))
    return tuple(guards)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _all_nodes(sub)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every node that reads `old` at `new`, in subgraphs too (unless they define it)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for sub in _subgraphs(node):
            if old not in {v.name for v in sub.input} | {t.name for t in sub.initializer}:
                _rename_uses(sub, old, new)


class _Builder:
    """Nodes and constants under names the graph does not use yet."""

    def __init__(self, graph: onnx.GraphProto):
        self.taken = {t.name for t in graph.initializer}
        self.taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in _all_nodes(graph):
            self.taken.update([*node.input, *node.output, node.name])
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []

    def fresh(self, base: str) -> str:
        name, count = base, 0
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name

    def constant(self, base: str, value: Any, dtype: Any = np.int64) -> str:
        name = self.fresh(base)
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def __call__(self, op: str, inputs: Sequence[str], base: str, name: str = "", **attributes) -> str:
        """A node computing `op` into a fresh tensor named after `base`; only the failing nodes
        are named (a name is optional in ONNX, and each costs bytes in the file)."""
        output = self.fresh(base)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attributes))
        return output


def _extremes(node: _Builder, input_name: str, dtype: Any, pad: int) -> tuple[str, str]:
    """The input's smallest and largest value, each as int64 [1]; `pad`, a value in range, is
    appended so that an empty tensor reduces too."""
    prefix = f"{input_name}_guard"
    flat = node("Reshape", [input_name, node.constant(f"{prefix}_flat_shape", [-1])], f"{prefix}_flat")
    padded = node("Concat", [flat, node.constant(f"{prefix}_pad", [pad], dtype)], f"{prefix}_padded", axis=0)
    extremes = []
    for op, label in (("ReduceMin", "min"), ("ReduceMax", "max")):
        value = node(op, [padded], f"{prefix}_{label}", keepdims=1)
        if np.dtype(dtype) != np.int64:
            value = node("Cast", [value], f"{prefix}_{label}64", to=onnx.TensorProto.INT64)
        extremes.append(value)
    return extremes[0], extremes[1]


def _compare(node: _Builder, op: str, value: str, bound: int, base: str) -> str:
    return node(op, [value, node.constant(f"{base}_bound", [bound])], base)


def _input_type(inputs: Mapping[str, onnx.ValueInfoProto], name: str) -> int:
    value = inputs.get(name)
    if value is None:
        raise TritonForgeError(f"the graph has no input {name!r} to guard")
    elem = value.type.tensor_type.elem_type
    if elem not in INTEGER_TYPES:
        raise TritonForgeError(f"input {name!r} is {onnx.TensorProto.DataType.Name(elem)}: only int64, "
                               "int32, int8 and uint8 inputs are guarded")
    return elem


def _pad_value(guards: Sequence[InputGuard], name: str, dtype: Any) -> int:
    """A value of `dtype` inside every value range declared for input `name`."""
    info = np.iinfo(dtype)
    low = max([int(info.min), *(g.low for g in guards if g.input == name and g.check == VALUES)])
    high = min([int(info.max), *(g.high for g in guards if g.input == name and g.check == VALUES)])
    if low > high:
        raise TritonForgeError(f"no {np.dtype(dtype).name} value of input {name!r} lies in its ranges")
    return min(max(0, low), high)


def add_input_guards(model: onnx.ModelProto, guards: Sequence[InputGuard]) -> list[str]:
    """Insert `guards` at the graph's inputs, in place; returns the failing nodes' names.

    Three layers, so that OpenVINO's CPU plugin stays sound when a check fails (it infers the
    shapes of a run of nodes before it executes them, up to the next node whose output shape
    depends on values; a node whose shape was updated for the failed request but that never
    ran then fails the next request of the earlier shape, for every client):

    1. what follows the request's shape: each input's minimum and maximum and its checked
       lengths, each int64 [1], concatenated into one witness vector W;
    2. per check, `ok` from those values and the failing ScatterElements on W (index 0 when ok,
       len(W) when not). Every node of layer 1 feeds W, so all of them ran before a check fails,
       and the nodes between the checks and the barrier have fixed shapes;
    3. the zero (each check's scattered W minus W, reduced, summed) passed through a Range of
       length 1 (a barrier: its output shape depends on its values, so the shapes of the nodes
       after it are inferred only after every check passed) and added to every guarded input
       that some node reads.
    """
    if not guards:
        return []
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_GUARD_OPSET:
        raise TritonForgeError(f"input guards need opset {MIN_GUARD_OPSET} or newer; the graph has {opset}")
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in initializers}
    types = {name: _input_type(inputs, name) for name in dict.fromkeys(g.input for g in guards)}
    node = _Builder(graph)
    # 1. The witnesses.
    extremes: dict[str, tuple[str, str]] = {}
    lengths: dict[tuple[str, int], str] = {}
    for name, elem in types.items():
        dtype = INTEGER_TYPES[elem]
        extremes[name] = _extremes(node, name, dtype, _pad_value(guards, name, dtype))
        axes = sorted({axis for g in guards if g.input == name and g.check == LENGTH for axis in g.axes})
        if axes:
            shape = node("Shape", [name], f"{name}_guard_shape")
            for axis in axes:
                index = node.constant(f"{name}_guard_axis{axis}", [axis])
                lengths[name, axis] = node("Gather", [shape, index], f"{name}_guard_length{axis}", axis=0)
    witnesses = [w for pair in extremes.values() for w in pair] + list(lengths.values())
    vector = node("Concat", witnesses, "input_guards_witness", axis=0)
    # 2. The checks, each failing on a node of its own.
    names: list[str] = []
    total = None
    for guard in guards:
        prefix = f"{guard.input}_guard_{guard.check}"
        if guard.check == VALUES:
            lowest, highest = extremes[guard.input]
            conditions = [_compare(node, "GreaterOrEqual", lowest, guard.low, f"{prefix}_min_ok"),
                          _compare(node, "LessOrEqual", highest, guard.high, f"{prefix}_max_ok")]
        else:
            conditions = [_compare(node, op, lengths[guard.input, axis], bound, f"{prefix}{axis}_{label}_ok")
                          for axis in guard.axes
                          for op, bound, label in (("GreaterOrEqual", guard.low, "min"),
                                                   ("LessOrEqual", guard.high, "max"))]
        ok = conditions[0]
        for condition in conditions[1:]:
            ok = node("And", [ok, condition], f"{prefix}_ok")
        index = node("Where", [ok, node.constant(f"{prefix}_index_ok", [0]),
                               node.constant(f"{prefix}_index_failed", [len(witnesses)])], f"{prefix}_index")
        name = node.fresh(guard.node_name)
        names.append(name)
        checked = node("ScatterElements", [vector, index, witnesses[0]], f"{name}_passed", name=name, axis=0)
        node.nodes[-1].doc_string = f"fails when the input is outside {guard.describe()}"
        zero = node("ReduceMax", [node("Sub", [checked, vector], f"{prefix}_difference")], f"{prefix}_zero",
                    keepdims=0)
        total = zero if total is None else node("Add", [total, zero], "input_guards_zero")
    # 3. The barrier, and the zero added to every guarded input that a node reads.
    stop = node("Add", [total, node.constant("input_guards_one", 1)], "input_guards_barrier_stop")
    barrier = node("Range", [total, stop, node.constant("input_guards_step", 1)], "input_guards_barrier")
    total = node("ReduceMax", [barrier], "input_guards_zero", keepdims=0)
    read = {name for n in _all_nodes(graph) for name in n.input}
    targets = [name for name in types if name in read]
    if not targets:
        raise TritonForgeError(f"no node reads the guarded inputs {list(types)}")
    for name in targets:  # an input no node reads is still checked: its check feeds the others
        zero = total if types[name] == onnx.TensorProto.INT64 else node(
            "Cast", [total], f"{name}_guard_zero_cast", to=types[name])
        guarded = node.fresh(f"{name}_guarded")
        _rename_uses(graph, name, guarded)
        node.nodes.append(helper.make_node("Add", [name, zero], [guarded],
                                           name=node.fresh(f"{name}_guard_add")))
        typed = onnx.ValueInfoProto()
        typed.CopyFrom(inputs[name])
        typed.name = guarded
        graph.value_info.append(typed)
    graph.initializer.extend(node.constants)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*node.nodes, *existing])
    return names


def guard_onnx_file(path: Path, guards: Sequence[InputGuard]) -> list[str]:
    """`add_input_guards` on the ONNX file at `path`, in place, checked by onnx.checker."""
    if not guards:
        return []
    model = onnx.load(str(path))
    names = add_input_guards(model, guards)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return names
