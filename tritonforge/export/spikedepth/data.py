"""Spike-depth data sets: procedural stereo scenes seen by a simulated spike camera.

A `SceneSet` holds, per scene, both cameras' spike windows bit-packed as `.dat` stores them
([N, T, H * W / 8] uint8), the left camera's depth at the last frame [N, H, W] (metres) and
its luminance there [N, H, W] (what BiCross' RGB teacher sees). Scene i of a split is drawn
from its own seed, so a set is the same on every machine and a larger set extends a smaller
one. The splits never share a scene.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.spikedepth.scenes import (
    SOURCE_TEXTURES,
    TARGET_TEXTURES,
    Rig,
    random_scene,
    render_window,
)
from tritonforge.export.spikedepth.spikes import Camera, pack, simulate, unpack

SPLITS = {"train": 0, "test": 1_000_000, "target": 2_000_000}  # seed offsets: disjoint scene streams
TEXTURE_SETS = {"source": SOURCE_TEXTURES, "target": TARGET_TEXTURES}
NEAR_BAND, FAR_BAND = 3.0, 8.0  # metres: near < 3 <= middle < 8 <= far


@dataclass(frozen=True)
class SceneSet:
    left: np.ndarray  # [N, T, H*W/8] uint8
    right: np.ndarray
    depth: np.ndarray  # [N, H, W] float32 metres
    image: np.ndarray  # [N, H, W] float32 0-1
    rig: Rig
    camera: Camera

    def __len__(self) -> int:
        return len(self.depth)

    def windows(self, index, side: str = "left") -> np.ndarray:
        """Unpacked windows [n, T, H, W] float32 0/1 of the scenes at `index`."""
        packed = (self.left if side == "left" else self.right)[index]
        return unpack(packed, self.rig.height, self.rig.width).astype(np.float32)

    def subset(self, index) -> SceneSet:
        return SceneSet(self.left[index], self.right[index], self.depth[index], self.image[index],
                        self.rig, self.camera)


def scene_set(split: str, count: int, window: int, rig: Rig | None = None, camera: Camera | None = None,
              textures: str = "source", seed: int = 0,
              progress: Callable[[], None] | None = None) -> SceneSet:
    """`count` scenes of `split` ("train", "test" or "target") seen through `camera` (default:
    `Camera()`) on `rig` (default: `Rig()`)."""
    rig, camera = rig or Rig(), camera or Camera()
    if split not in SPLITS:
        raise TritonForgeError(f"unknown scene split {split!r}: choose one of {', '.join(SPLITS)}")
    if textures not in TEXTURE_SETS:
        raise TritonForgeError(f"unknown texture set {textures!r}: choose one of {', '.join(TEXTURE_SETS)}")
    if count < 1 or window < 1:
        raise TritonForgeError(f"give at least one scene and one frame (got {count} scenes, window {window})")
    scenes = []
    for index in range(count):
        scenes.append(_scene(split, index, window, rig, camera, textures, seed))
        if progress is not None:
            progress()
    return SceneSet(*(np.stack([s[k] for s in scenes]) for k in range(4)), rig, camera)


@lru_cache(maxsize=4096)
def _scene(split: str, index: int, window: int, rig: Rig, camera: Camera, textures: str, seed: int):
    rng = np.random.default_rng([seed, SPLITS[split] + index])
    views = render_window(random_scene(rng, TEXTURE_SETS[textures]), rig, window)
    spike_seed = int(rng.integers(2 ** 31))
    left = pack(simulate(views.left, camera, spike_seed))
    right = pack(simulate(views.right, camera, spike_seed + 1))
    for array in (left, right, views.depth, views.image):
        array.setflags(write=False)
    return left, right, views.depth, views.image


# -- metrics -------------------------------------------------------------------------------


def depth_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """abs rel, RMSE (m), delta < 1.25 over the valid pixels, overall and per distance band
    (near < 3 m, middle, far >= 8 m, by the true depth)."""
    predicted = np.asarray(predicted, np.float64).reshape(truth.shape)
    truth = np.asarray(truth, np.float64)
    if not np.isfinite(predicted).all():
        raise TritonForgeError("the predicted depth holds NaN or infinity")
    valid = np.isfinite(truth) & (truth > 0)
    out: dict[str, float] = {}
    bands = {"": valid, "near_": valid & (truth < NEAR_BAND),
             "middle_": valid & (truth >= NEAR_BAND) & (truth < FAR_BAND),
             "far_": valid & (truth >= FAR_BAND)}
    for prefix, mask in bands.items():
        if not mask.any():
            continue
        p, t = np.maximum(predicted[mask], 1e-6), truth[mask]
        out[prefix + "abs_rel"] = float(np.mean(np.abs(p - t) / t))
        out[prefix + "rmse"] = float(np.sqrt(np.mean((p - t) ** 2)))
        out[prefix + "delta_1.25"] = float(np.mean(np.maximum(p / t, t / p) < 1.25))
        out[prefix + "pixels"] = int(mask.sum())
    return out
