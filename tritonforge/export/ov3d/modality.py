"""The `point_cloud` modality: a point file per sample and the class names for the whole request.

Raw inputs: `points` (a `.ply`, `.pcd` or `.npy` file's bytes, one per sample) and `classes`
(the request's vocabulary, strings; `--input classes=chair,table,lamp` or one name per
`--input`). On the client, `encode` reads each cloud, keeps `num_points` of it and computes the
sampler's indices (`sampling.prepare`, the function the server's step runs), and embeds the
names with the embedded MiniLM (`vocabulary.embed_names`), giving the graph's inputs:
points, centres, groups, queries per sample and `class_embeddings` [C, D] for the request.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d.points import MAX_POINTS, read_points
from tritonforge.export.ov3d.sampling import PER_SAMPLE, Sampling, prepare
from tritonforge.export.ov3d.text import embed_names
from tritonforge.export.ov3d.vocabulary import DEFAULT_TEMPLATE, TEMPLATES, check_vocabulary
from tritonforge.modalities import Modality, register_modality
from tritonforge.modalities.base import RawInput, ShapeOption, raw_bytes_array
from tritonforge.spec import ModelIO
from tritonforge.triton_config import (
    PYTHON_MODEL_FILE,
    CompanionModel,
    ServingOptions,
    add_tensors,
    batched,
    describe_model,
    validate_name,
)

POINTS, CLASSES = "points", "classes"
MAX_FILE_BYTES = 64 << 20  # a point file above this is refused before it is read
SAMPLING_SEED = 0  # the subsample every side draws: the same cloud gives the same inputs anywhere
STEP_MODULES = ("points", "sampling", "postprocess", "vocabulary")  # copied beside the server's step


@dataclass(frozen=True)
class CloudItem:
    """One sample of a request: a point file's bytes and the request's vocabulary."""

    data: bytes
    vocabulary: tuple[str, ...]
    name: str = ""


@register_modality
@dataclass(frozen=True)
class PointCloud(Modality):
    kind: ClassVar[str] = "point_cloud"
    suffix: ClassVar[str] = "_vocab"
    shape_options: ClassVar[tuple[ShapeOption, ...]] = (ShapeOption(
        "num_points", "Point clouds: points the detector keeps of each cloud.", maximum=MAX_POINTS),)

    num_points: int = 2048
    centres: int = 256
    group: int = 32
    radius: float = 0.4
    queries: int = 64
    template: str = DEFAULT_TEMPLATE
    text_model: str = "bert_fp32"  # the bert family's MiniLM export that `<name>_vocab` embeds names with

    @property
    def raw_inputs(self) -> tuple[RawInput, ...]:
        return (RawInput(POINTS), RawInput(CLASSES, per_request=True))

    @property
    def shape_defaults(self) -> dict[str, int | None]:
        return {"num_points": self.num_points}

    def sampling(self, shape: Mapping[str, int | None] | None = None) -> Sampling:
        """The sampler for `--num-points` (any number from the detector's centres up: the graph
        takes as many points as it is given, but as many centres and queries as it was trained on)."""
        points = int(self.resolve_shape(shape)["num_points"] or self.num_points)
        if points < self.centres:
            raise TritonForgeError(f"--num-points {points} is below the detector's {self.centres} centres: "
                                   f"keep at least {self.centres} points")
        return Sampling(points, self.centres, self.group, self.radius, self.queries)

    def limits(self) -> dict[str, Any]:
        return {"max_points": MAX_POINTS, "max_file_bytes": MAX_FILE_BYTES}

    # -- the server side ----------------------------------------------------------------------

    def companions(self, name: str, io: ModelIO, serving: ServingOptions) -> tuple[CompanionModel, ...]:
        """`<name>_vocab` (python backend): point files and class names in, suppressed boxes out;
        it embeds the names with `<text_model>_text` and runs `<name>`, both served beside it.
        Like the detector it takes whole requests (no batcher): the vocabulary is the request's."""
        step = mc.ModelConfig(name=validate_name(name + self.suffix), backend="python", max_batch_size=0)
        step.input.add(name=POINTS, data_type=mc.TYPE_STRING, dims=[-1, 1])
        step.input.add(name=CLASSES, data_type=mc.TYPE_STRING, dims=[-1, -1])
        add_tensors(step.output, [batched(spec) for spec in io.outputs if spec.name != "embeddings"])
        step.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
        parameters = {"detector": name, "text_model": self.text_model, "template": TEMPLATES[self.template],
                      "num_points": self.num_points, "centres": self.centres, "group": self.group,
                      "radius": self.radius, "queries": self.queries, "seed": SAMPLING_SEED}
        for key, value in parameters.items():
            step.parameters[key].string_value = str(value)
        describe_model(step, io)
        step.parameters["output_kinds"].string_value = json.dumps(
            {spec.name: spec.kind for spec in io.outputs if spec.name != "embeddings"})
        here = Path(__file__).parent
        files = {PYTHON_MODEL_FILE: here / "cloud_step.py",
                 **{f"{module}.py": here / f"{module}.py" for module in STEP_MODULES}}
        return (CompanionModel(step, files),)

    # -- the client side ----------------------------------------------------------------------

    def read_inputs(self, given: Mapping[str, Sequence[str]]) -> list[CloudItem]:
        unknown = sorted(set(given) - {POINTS, CLASSES})
        if unknown or not given.get(POINTS) or not given.get(CLASSES):
            raise TritonForgeError(f"a point-cloud detector takes {POINTS} (--input {POINTS}=room.ply, one "
                                   f"per cloud) and {CLASSES} (--input {CLASSES}=chair,table,lamp); got "
                                   f"{', '.join(sorted(given)) or 'nothing'}")
        names = tuple(check_vocabulary([n for value in given[CLASSES] for n in value.split(",")]))
        return [CloudItem(read_point_file(Path(path)), names, Path(path).name) for path in given[POINTS]]

    def request(self, raw: Sequence[CloudItem]) -> dict[str, np.ndarray]:
        vocabulary = shared_vocabulary(raw)
        return {POINTS: raw_bytes_array([item.data for item in raw]),
                CLASSES: np.array([[name.encode("utf-8") for name in vocabulary]] * len(raw), dtype=object)}

    def encode(self, raw: Sequence[CloudItem], io: ModelIO | None, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        vocabulary = shared_vocabulary(raw)
        sampling = self.sampling(shape)
        ready = [prepare(read_points(item.data, item.name or f"cloud {i}"), sampling, SAMPLING_SEED)
                 for i, item in enumerate(raw)]
        inputs = {key: np.stack([getattr(r, key) for r in ready]) for key in PER_SAMPLE}
        return {**inputs, "class_embeddings": embed_names(vocabulary, self.template)}

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[CloudItem]:
        """Held-out procedural rooms as `.npy` bytes, with every class name as the vocabulary."""
        from tritonforge.export.ov3d.scenes import CLASSES as NAMES
        from tritonforge.export.ov3d.scenes import room

        return [CloudItem(npy_bytes(room("test", i).points), NAMES, f"test room {i}") for i in range(n or 8)]

    def describe_raw(self, item: Any, index: int) -> str:
        return item.name or f"#{index}"


def npy_bytes(points: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(points, np.float32))
    return buffer.getvalue()


def shared_vocabulary(raw: Sequence[CloudItem]) -> tuple[str, ...]:
    """The vocabulary every sample of a request carries (it belongs to the request)."""
    if not raw:
        raise TritonForgeError("the request holds no point cloud: send at least one")
    vocabularies = {item.vocabulary for item in raw}
    if len(vocabularies) != 1:
        raise TritonForgeError("the clouds of one request carry different vocabularies: the class names "
                               "belong to the request, so send each vocabulary in its own request")
    return vocabularies.pop()


def read_point_file(path: Path) -> bytes:
    if not path.is_file():
        raise TritonForgeError(f"{path} {'is not a file' if path.exists() else 'does not exist'}: give a "
                               ".ply, .pcd or .npy point file (`tritonforge ov3d rooms` writes some)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TritonForgeError(f"{path} is {path.stat().st_size:,} bytes, above the limit of "
                               f"{MAX_FILE_BYTES:,}: subsample the cloud first")
    return path.read_bytes()
