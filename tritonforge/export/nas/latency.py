"""Latency on the runtime that will serve the network: a table of every primitive at every
shape it runs at, measured on the target, calibrated against whole networks.

Each entry is one operation exported alone (the network's own module, BatchNorm folded as in
the exported network) and timed on the target at the table's batch size, less the time of an
Identity graph on the same input (the session's own cost, which a whole network pays once).
A network's latency is predicted as `scale x (sum of its operations' entries) + offset`: the
offset holds what every genotype shares (stem, the cells' 1 x 1 pre-processing, concatenations,
classifier, the session), the scale what timing an operation alone misses (memory traffic
between operations, fusion). Both are fitted by least squares on whole networks exported and
timed on the target: the cheapest and costliest genotypes and random ones between.

During a search the same entries give each edge's expected latency under its softmax weights
(`expected_ms`), which `--latency-weight` adds to the loss.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.export.nas.network import Network, NetworkSize, edge_key, edge_shapes, operation
from tritonforge.export.nas.space import CELL_KINDS, CHOSEN, NODES, PRIMITIVES, Genotype, random_genotype
from tritonforge.files import write_text_atomic

LATENCY_FORMAT = "tritonforge.nas.latency/1"
LATENCY_TARGETS = ("onnxruntime", "openvino")
OPERATION_ITERATIONS = 100  # timed runs per operation graph, in interleaved rounds
NETWORK_ITERATIONS = 300  # timed runs per whole network (about 0.2 s each here), in interleaved rounds
CALIBRATION_RANDOM = 6  # random genotypes the calibration times, beside the cheapest and costliest


@dataclass
class LatencyTable:
    target: str
    threads: int
    batch: int
    cpu: str
    network: dict[str, Any]
    entries: dict[str, float]  # edge_key -> milliseconds
    identity_ms: dict[str, float] = field(default_factory=dict)  # the session's cost per input shape
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> NetworkSize:
        return NetworkSize(**self.network)

    def entry(self, op: str, width: int, resolution: int, stride: int) -> float:
        if op == "none":
            return 0.0
        return self.entries[edge_key(op, width, resolution, stride)]

    def operations_ms(self, genotype: Genotype) -> float:
        """The sum of the table's entries over every operation of the genotype's network."""
        total = 0.0
        for kind, shapes in edge_shapes(self.size):
            for position, (op, index) in enumerate(genotype.cell(kind)):
                node = position // 2
                edge = sum(i + 2 for i in range(node)) + index
                total += self.entry(op, *shapes[edge])
        return total

    def predict(self, genotype: Genotype) -> float:
        """Predicted milliseconds of the whole network at the table's batch size."""
        if not self.calibration:
            raise TritonForgeError("this latency table has no calibration: measure it again with "
                                   "`tritonforge nas latency`")
        return self.calibration["scale"] * self.operations_ms(genotype) + self.calibration["offset_ms"]

    def edge_costs(self) -> dict[str, np.ndarray]:
        """Per cell kind, [14, 8] milliseconds of each primitive on each edge, summed over the
        network's cells of that kind (the search shares one set of weights per kind)."""
        costs = {kind: np.zeros((sum(i + 2 for i in range(NODES)), len(PRIMITIVES))) for kind in CELL_KINDS}
        for kind, shapes in edge_shapes(self.size):
            for edge, shape in enumerate(shapes):
                costs[kind][edge] += [self.entry(op, *shape) for op in PRIMITIVES]
        return costs

    def check(self, target: str, threads: int, batch: int, size: NetworkSize, where: str) -> None:
        """Refuse a table measured for another target, thread count, batch or network."""
        problems = []
        if self.target != target:
            problems.append(f"target {self.target} (this search: {target})")
        if self.threads != threads:
            problems.append(f"{self.threads} threads (this search: {threads})")
        if self.batch != batch:
            problems.append(f"batch {self.batch} (this search: {batch})")
        if self.network != size.to_json():
            problems.append(f"network {self.network} (this search: {size.to_json()})")
        if problems:
            raise TritonForgeError(f"{where} was measured for {'; '.join(problems)}: latencies do not carry "
                                   f"over. Measure one with `tritonforge nas latency --target {target} "
                                   f"--threads {threads}`, or leave --latency-table out to measure it now")

    def to_json(self) -> dict[str, Any]:
        return {"format": LATENCY_FORMAT, **asdict(self)}

    def summary(self) -> dict[str, Any]:
        """What a genotype or manifest records of the table it was searched with."""
        return {"target": self.target, "threads": self.threads, "batch": self.batch, "cpu": self.cpu,
                "calibration": {k: v for k, v in self.calibration.items() if k != "points"}}

    @classmethod
    def read(cls, path: Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise TritonForgeError(f"--latency-table {path} does not exist: measure one with "
                                   "`tritonforge nas latency`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or data.get("format") != LATENCY_FORMAT:
            raise TritonForgeError(f"--latency-table {path} is not a latency table (no {LATENCY_FORMAT!r} "
                                   "mark): measure one with `tritonforge nas latency`")
        return cls(**{k: v for k, v in data.items() if k != "format"})

    def write(self, path: Path) -> Path:
        write_text_atomic(Path(path), json.dumps(self.to_json(), indent=2) + "\n")
        return Path(path)


def shapes_of(size: NetworkSize) -> list[tuple[int, int, int]]:
    """Every distinct (width, resolution, stride) an edge runs at, in network order."""
    seen: list[tuple[int, int, int]] = []
    for _kind, shapes in edge_shapes(size):
        for shape in shapes:
            if shape not in seen:
                seen.append(shape)
    return seen


class Pair(nn.Module):
    """Two copies of one operation (their own weights) reading the same input, summed: how the
    network runs them (each state feeds about two operations and shares its leading ReLU and
    slicing with them; each node adds two). An entry is half its time."""

    def __init__(self, op: str, width: int, stride: int):
        super().__init__()
        self.first, self.second = operation(op, width, stride), operation(op, width, stride)

    def forward(self, x):
        return self.first(x) + self.second(x)


def time_graphs(paths: Mapping[str, Path], feeds: Mapping[str, Mapping[str, np.ndarray]], target: str,
                threads: int, iterations: int = OPERATION_ITERATIONS, tick: Callable[[], None] | None = None,
                precision: str = "fp32") -> dict[str, float]:
    """Median milliseconds of each ONNX graph on `target`, all timed in the same rounds."""
    from tritonforge.runtime import open_session
    from tritonforge.timing import measure_interleaved

    sessions = {name: open_session(path, target, threads, precision) for name, path in paths.items()}
    runners = {name: (lambda s=session, f=dict(feeds[name]): s.run(None, f))
               for name, session in sessions.items()}
    stats = measure_interleaved(runners, iterations, tick=tick)
    return {name: stats[name].percentile(50) for name in paths}


def export_module(module, shape: Sequence[int], path: Path) -> dict[str, np.ndarray]:
    """`module` (eval mode) traced to ONNX with one input `x` of `shape`; returns the feed."""
    import warnings

    import torch

    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False, do_constant_folding=True)
    return {"x": x.numpy()}


def identity_graph(shape: Sequence[int], path: Path) -> dict[str, np.ndarray]:
    """A graph that only copies its input: what a session costs before any operation."""
    import onnx
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", tensor[:1],
                              tensor[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def network_feed(size: NetworkSize, batch: int) -> dict[str, np.ndarray]:
    shape = (batch, size.channels, size.image_size, size.image_size)
    return {"pixel_values": np.random.default_rng(0).random(shape, dtype=np.float32)}


def export_network(genotype: Genotype, size: NetworkSize, batch: int, path: Path, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """A genotype's network (seeded random weights: latency does not depend on them) as ONNX at
    `batch`; returns its feed."""
    import torch

    torch.manual_seed(seed)
    shape = (batch, size.channels, size.image_size, size.image_size)
    return export_module(Network(genotype, size), shape, path)


def measure_networks(genotypes: Mapping[str, Genotype], size: NetworkSize, target: str, threads: int,
                     batch: int, iterations: int = NETWORK_ITERATIONS, tick: Callable[[], None] | None = None
                     ) -> dict[str, float]:
    """Each genotype's whole network exported and timed on `target`, all in the same rounds."""
    with tempfile.TemporaryDirectory(prefix="tritonforge-nas-") as scratch:
        paths = {name: Path(scratch) / f"{i}.onnx" for i, name in enumerate(genotypes)}
        feeds = {name: export_network(genotypes[name], size, batch, paths[name]) for name in paths}
        return time_graphs(paths, feeds, target, threads, iterations, tick)


def uniform_genotype(op: str) -> Genotype:
    """Every edge `op`, each node reading the two cell inputs (the extremes of the calibration)."""
    edges = tuple((op, j) for _node in range(NODES) for j in (0, 1))
    return Genotype(normal=edges, reduce=edges)


def calibration_genotypes(seed: int = 0) -> dict[str, Genotype]:
    rng = np.random.default_rng(seed)
    found = {f"all {op}": uniform_genotype(op) for op in ("skip_connect", "sep_conv_5x5")}
    found.update({f"random {i}": random_genotype(rng) for i in range(CALIBRATION_RANDOM)})
    return found


def measure_table(target: str, threads: int, batch: int, size: NetworkSize,
                  stage: Callable[..., Callable[[], None]] | None = None) -> LatencyTable:
    """Time every primitive at every shape on `target`, then calibrate on whole networks."""
    from tritonforge.report.machine import describe_machine

    if target not in LATENCY_TARGETS:
        raise TritonForgeError(f"--target {target!r}: latency tables are measured on "
                               f"{' or '.join(LATENCY_TARGETS)}")
    if threads < 1 or batch < 1:
        raise TritonForgeError(f"--threads {threads} and --batch {batch} must be at least 1")
    stage = stage or (lambda _description, _total=0: (lambda: None))
    import torch

    torch.manual_seed(0)
    paths, feeds, identities = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="tritonforge-nas-ops-") as scratch:
        folder = Path(scratch)
        shapes = shapes_of(size)
        for width, resolution, stride in shapes:
            input_shape = (batch, width, resolution, resolution)
            identity = f"identity@{width}x{resolution}x{resolution}"
            if identity not in paths:
                paths[identity] = folder / f"{len(paths)}.onnx"
                feeds[identity] = identity_graph(input_shape, paths[identity])
            for op in CHOSEN:
                if op == "skip_connect" and stride == 1:
                    continue  # the identity: nothing runs in the network
                key = edge_key(op, width, resolution, stride)
                paths[key] = folder / f"{len(paths)}.onnx"
                feeds[key] = export_module(Pair(op, width, stride), input_shape, paths[key])
                identities[key] = identity
        medians = time_graphs(paths, feeds, target, threads, tick=stage(f"timing {len(paths)} operations on "
                                                                         f"{target}", OPERATION_ITERATIONS))
    entries = {}
    for width, resolution, stride in shapes:
        for op in CHOSEN:
            key = edge_key(op, width, resolution, stride)
            entries[key] = (0.0 if key not in identities
                            else round(max(medians[key] - medians[identities[key]], 0.0) / 2, 5))
    table = LatencyTable(target, threads, batch, describe_machine().cpu, size.to_json(), entries,
                         {k: round(v, 5) for k, v in medians.items() if k.startswith("identity@")})
    genotypes = calibration_genotypes()
    measured = measure_networks(genotypes, size, target, threads, batch,
                                tick=stage(f"timing {len(genotypes)} whole networks", NETWORK_ITERATIONS))
    table.calibration = calibrate(table, genotypes, measured)
    return table


def calibrate(table: LatencyTable, genotypes: Mapping[str, Genotype], measured: Mapping[str, float]
              ) -> dict[str, Any]:
    """Least-squares scale and offset from the operations' sum to whole-network milliseconds."""
    sums = np.array([table.operations_ms(genotypes[name]) for name in measured])
    times = np.array(list(measured.values()))
    scale, offset = np.polyfit(sums, times, 1)
    if scale <= 0:  # timings too noisy to order the networks: predict the mean
        scale, offset = 0.0, float(times.mean())
    predicted = scale * sums + offset
    errors = np.abs(predicted - times) / times
    return {"scale": round(float(scale), 5), "offset_ms": round(float(offset), 5),
            "max_relative_error": round(float(errors.max()), 4),
            "points": [{"genotype": name, "operations_ms": round(float(s), 5),
                        "measured_ms": round(float(t), 5), "predicted_ms": round(float(p), 5)}
                       for name, s, t, p in zip(measured, sums, times, predicted, strict=True)]}


def obtain_table(path: Path | None, target: str, threads: int, batch: int, size: NetworkSize,
                 stage=None, say: Callable[[str], None] | None = None) -> LatencyTable:
    """The table at `path` when it was measured for this target, threads, batch and network (and
    on this CPU: another CPU's is measured anew, with a message); else measured now."""
    from tritonforge.report.machine import describe_machine

    if path is not None and Path(path).is_file():
        table = LatencyTable.read(path)
        table.check(target, threads, batch, size, f"--latency-table {path}")
        cpu = describe_machine().cpu
        if table.cpu == cpu:
            return table
        if say:
            say(f"--latency-table {path} was measured on {table.cpu}; this is {cpu}: measuring it again here")
    elif path is not None:
        LatencyTable.read(path)  # says it does not exist
    table = measure_table(target, threads, batch, size, stage)
    return table
