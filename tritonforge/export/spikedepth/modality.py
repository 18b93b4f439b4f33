"""SpikeStream: spike-camera `.dat` streams in, one per camera, cut to the model's T-frame window.

Server side, `<name>_window` (python backend, `spike_window.py`) and `<name>_spikes`
(ensemble: the raw streams -> the depth graph's outputs). Client side the same `cut_windows`
runs on the files given to `query --input left=a.dat --input right=b.dat`. The window is the
stream's last T frames, still bit-packed: the graph unpacks them.

A streaming export (`--streaming`) takes one packed frame per camera per request instead
(`streaming` in the record); `query --stream left=a.dat --stream right=b.dat` sends a
recording frame by frame (`recording`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.spikedepth.spike_window import StreamError, cut_windows
from tritonforge.modalities import register_modality
from tritonforge.modalities.base import Modality, RawInput, preprocessing_companions, raw_bytes_array
from tritonforge.modalities.tensors import save_samples
from tritonforge.spec import ModelIO
from tritonforge.triton_config import CompanionModel, ServingOptions

WINDOW_MODEL = Path(__file__).parent / "spike_window.py"
WINDOW_SUFFIX = "_window"
MAX_FRAMES = 65536  # frames per stream and request (a real camera records 20,000 a second)


@register_modality
@dataclass(frozen=True)
class SpikeStream(Modality):
    """`.dat` bytes per camera; packed windows [B, T, H*W/8] uint8 per camera out."""

    kind: ClassVar[str] = "spike_stream"
    suffix: ClassVar[str] = "_spikes"

    height: int = 64
    width: int = 96
    window: int = 32
    cameras: tuple[str, ...] = ("left",)  # raw input names, left first
    tensors: tuple[str, ...] = ("spikes",)  # the graph input each camera's window becomes
    max_frames: int = MAX_FRAMES
    streaming: bool = False  # one frame per request, the window kept by the server

    def __post_init__(self):
        if len(self.cameras) != len(self.tensors) or len(self.cameras) not in (1, 2):
            raise TritonForgeError(f"a spike stream comes from one or two cameras, each feeding one input "
                                   f"(got cameras {list(self.cameras)}, inputs {list(self.tensors)})")
        if (self.height * self.width) % 8 or self.window < 1 or self.max_frames < self.window:
            raise TritonForgeError(f"spike frames of {self.height} x {self.width}, window {self.window}, "
                                   f"max_frames {self.max_frames}: frames must pack into whole bytes and "
                                   "max_frames hold at least one window")

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width // 8

    @property
    def raw_inputs(self) -> tuple[RawInput, ...]:
        if self.streaming:
            return ()
        return tuple(RawInput(name) for name in self.cameras)

    def limits(self) -> dict[str, Any]:
        return {"max_frames": self.max_frames, "window": self.window}

    def write_samples(self, folder: Path, inputs: Mapping[str, np.ndarray]) -> None:
        """The held-out windows (or recordings) parity ran: what `bench` streams to a streaming
        export."""
        save_samples(folder, inputs)

    # -- the server side ----------------------------------------------------------------------

    def companions(self, name: str, io: ModelIO, serving: ServingOptions) -> tuple[CompanionModel, ...]:
        if self.streaming:
            return ()  # frames go to the model itself, under the sequence batcher
        parameters = {"height": str(self.height), "width": str(self.width), "window": str(self.window),
                      "max_frames": str(self.max_frames), "inputs": ",".join(self.cameras),
                      "outputs": ",".join(self.tensors)}
        return preprocessing_companions(name, io, serving, self, WINDOW_SUFFIX, WINDOW_MODEL, parameters, {})

    # -- the client side ----------------------------------------------------------------------

    def read_inputs(self, given: Mapping[str, Sequence[str]]) -> list[dict[str, bytes]]:
        """`--input left=a.dat --input right=b.dat` (repeat for a batch): one item per sample."""
        names = list(self.cameras)
        if set(given) != set(names):
            raise TritonForgeError(f"this model takes {' and '.join(names)} spike streams: send "
                                   + " ".join(f"--input {n}=FILE.dat" for n in names)
                                   + f" (got {', '.join(sorted(given)) or 'nothing'})")
        counts = {len(given[n]) for n in names}
        if len(counts) != 1:
            raise TritonForgeError(f"give as many {' as '.join(names)} streams (got "
                                   f"{', '.join(f'{len(given[n])} {n}' for n in names)})")
        return [{name: read_stream_file(Path(given[name][i]), self) for name in names}
                for i in range(counts.pop())]

    def read_raw(self, values: Sequence[str]) -> list[dict[str, bytes]]:
        if len(self.cameras) != 1:
            return self.read_inputs({})
        return self.read_inputs({self.cameras[0]: list(values)})

    def request(self, raw: Sequence[Mapping[str, bytes]]) -> dict[str, np.ndarray]:
        return {name: raw_bytes_array([bytes(item[name]) for item in raw]) for name in self.cameras}

    def encode(self, raw: Sequence[Mapping[str, bytes]], io: ModelIO | None, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        try:
            windows = cut_windows({name: [item[name] for item in raw] for name in self.cameras},
                                  self.height, self.width, self.window, self.max_frames)
        except StreamError as exc:
            raise TritonForgeError(str(exc)) from None
        return {tensor: windows[name] for name, tensor in zip(self.cameras, self.tensors, strict=True)}

    def recording(self, path: Path) -> np.ndarray:
        """A `.dat` file as packed frames [frames, H*W/8] uint8, for `query --stream`."""
        from tritonforge.export.spikedepth.spikes import frames_in

        return frames_in(read_stream_file(path, self), self.height, self.width, str(path)).copy()

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[dict[str, bytes]]:
        """Held-out procedural scenes as `.dat` bytes, one window per camera."""
        from tritonforge.export.spikedepth.data import scene_set
        from tritonforge.export.spikedepth.scenes import Rig

        scenes = scene_set("test", n or 16, self.window, Rig(height=self.height, width=self.width))
        sides = {"left": scenes.left, "right": scenes.right}
        return [{name: sides[side][i].tobytes() for name, side in zip(self.cameras, ("left", "right"),
                                                                      strict=False)}
                for i in range(len(scenes))]

    def describe_raw(self, item: Any, index: int) -> str:
        frames = ", ".join(f"{name} {len(item[name]) // self.frame_bytes} frames" for name in self.cameras)
        return f"#{index} {frames}"


def read_stream_file(path: Path, modality: SpikeStream) -> bytes:
    """A `.dat` file's bytes; a missing file or one above the model's frame limit is refused
    before it is read."""
    if not path.is_file():
        raise TritonForgeError(f"{path} {'is not a file' if path.exists() else 'does not exist'}: give a "
                               ".dat spike stream (`tritonforge spikedepth simulate` makes one)")
    limit = modality.max_frames * modality.frame_bytes
    if path.stat().st_size > limit:
        raise TritonForgeError(f"{path} is {path.stat().st_size:,} bytes, above this model's limit of "
                               f"{modality.max_frames:,} frames ({limit:,} bytes): send fewer frames")
    return path.read_bytes()
