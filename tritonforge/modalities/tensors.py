"""Tensors: raw arrays (`.npy` files, event frames [T, C, H, W], feature vectors) sent as they are.

There is no companion: Triton itself checks each request's dtype and shape against the
config. The client checks them first, with the file's name in the message, and batches one
file per sample (an array of the declared dims) or a whole batch (one more leading axis).
`samples.npz` beside the export holds real inputs for `bench`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.modalities.base import Modality, ShapeOption
from tritonforge.spec import ModelIO, TensorSpec

SAMPLES_FILE = "samples.npz"


@dataclass(frozen=True)
class Tensors(Modality):
    """Arrays in, as the graph declares them. `timesteps`: the fixed T of a model over time
    (the `--timesteps` shape option), None when the model has no time axis."""

    kind: ClassVar[str] = "tensors"
    query_option: ClassVar[str] = "npy"

    layout: str = ""  # what the axes mean, for people: "[T, C, H, W] event frames"
    timesteps: int | None = None

    shape_options: ClassVar[tuple[ShapeOption, ...]] = (
        ShapeOption("timesteps", "Streams: time steps per sample."),)

    @property
    def shape_defaults(self) -> dict[str, int | None]:
        """--timesteps only for a model over time, defaulting to its own T."""
        return {"timesteps": self.timesteps} if self.timesteps else {}

    def write_samples(self, folder: Path, inputs: Mapping[str, np.ndarray]) -> None:
        save_samples(folder, inputs)

    def read_raw(self, values: Sequence[str]) -> list[dict[str, Any]]:
        """`--npy FILE` (a model with one input) or `--npy NAME=FILE` per input: one raw item,
        a mapping of input name to the file's path."""
        item: dict[str, Any] = {}
        for value in values:
            name, _, path = value.rpartition("=")
            item[name] = Path(path)
        return [item]

    def encode(self, raw: Sequence[Mapping[str, Any]], io: ModelIO, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        arrays: dict[str, list[np.ndarray]] = {spec.name: [] for spec in io.inputs}
        for item in raw:
            if "" in item:  # `--npy FILE` without a name
                if len(io.inputs) != 1:
                    raise TritonForgeError(
                        f"the model takes {io.input_names}: name each file, --npy NAME=FILE")
                item = {io.inputs[0].name: item[""]}
            missing = sorted(set(io.input_names) - set(item))
            unknown = sorted(set(item) - set(io.input_names))
            if missing or unknown:
                raise TritonForgeError(f"--npy names {sorted(item)}; the model takes {io.input_names} "
                                       f"(missing {missing}, unknown {unknown})")
            for spec in io.inputs:
                arrays[spec.name].append(batched(load_array(item[spec.name]), spec, str(item[spec.name])))
        return {name: np.concatenate(parts) for name, parts in arrays.items()}

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[dict[str, Any]]:
        """The real inputs saved with the export (`samples.npz`), one raw item per sample."""
        if folder is None or not (Path(folder) / SAMPLES_FILE).is_file():
            raise TritonForgeError(f"tensor models are benched with the inputs saved beside the export "
                                   f"({SAMPLES_FILE}): pass --repo with the exported model")
        with np.load(Path(folder) / SAMPLES_FILE) as saved:
            arrays = {name: saved[name] for name in saved.files}
        count = len(next(iter(arrays.values())))
        return [{name: a[i:i + 1] for name, a in arrays.items()} for i in range(count)][:n]

    def describe_raw(self, item: Any, index: int) -> str:
        names = [Path(v).name for v in item.values() if isinstance(v, (str, Path))]
        return f"#{index} {', '.join(names)}" if names else f"#{index}"


def save_samples(folder: Path, inputs: Mapping[str, np.ndarray]) -> None:
    """Keep the graph's real inputs beside an export (`samples.npz`): what `bench` sends to a
    model whose clients send tensors, and the sequences it streams to a streaming one."""
    np.savez(Path(folder) / SAMPLES_FILE, **{k: np.ascontiguousarray(v) for k, v in inputs.items()})


def load_array(source: Any) -> np.ndarray:
    """An array, or a `.npy` file read without pickles."""
    if isinstance(source, np.ndarray):
        return source
    path = Path(source)
    if not path.is_file():
        raise TritonForgeError(f"--npy {path} does not exist: give a .npy file saved with numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise TritonForgeError(f"--npy {path} is not a .npy array file ({exc}): save it with "
                               "numpy.save") from exc


def refuse_non_finite(array: np.ndarray, source: str) -> None:
    """Refuse NaN or infinity in a floating-point input, naming the first position. Triton's
    onnxruntime backend does not look at values: a NaN would flow through the graph (in a
    spiking network it silently stops the neurons it reaches from ever firing again), so the
    client refuses it before sending (the local server's wrapper checks again)."""
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return
    position = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
    raise TritonForgeError(
        f"{source} holds {array[position]} at index {list(position)} ({int((~np.isfinite(array)).sum())} "
        "non-finite values in all): replace NaN and infinity before sending (the server's ONNX "
        "Runtime does not check)")


def batched(array: np.ndarray, spec: TensorSpec, source: str = "the array") -> np.ndarray:
    """`array` as a batch for `spec`: one sample (the declared dims) gets a batch axis; a
    wrong dtype or shape is refused with what was expected."""
    if array.dtype != np.dtype(spec.dtype):
        raise TritonForgeError(
            f"{source} holds {array.dtype}, but input {spec.name!r} takes {spec.dtype}: save it "
            f"with array.astype('{spec.dtype}')")
    dims = list(spec.dims)
    batch = array[None] if array.ndim == len(dims) else array
    fits = batch.ndim == len(dims) + 1 and all(
        d < 0 or d == n for d, n in zip(dims, batch.shape[1:], strict=True))
    if not fits:
        expected = "[" + ", ".join("any" if d < 0 else str(d) for d in dims) + "]"
        raise TritonForgeError(
            f"{source} has shape {list(array.shape)}, but input {spec.name!r} takes one sample of "
            f"shape {expected} (or a batch of them, with a leading batch axis)")
    refuse_non_finite(batch, source)
    return batch
