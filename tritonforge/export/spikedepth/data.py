"""Spike-depth data sets: procedural stereo scenes seen by a simulated spike camera.

A `SceneSet` holds, per scene, both cameras' spike windows bit-packed as `.dat` stores them
([N, T, H * W / 8] uint8), the left camera's depth at the last frame [N, H, W] (metres) and
its luminance there [N, H, W] (what BiCross' RGB teacher sees). Scene i of a split is drawn
from its own seed, so a set is the same on every machine and a larger set extends a smaller
one. The splits never share a scene.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.spikedepth.scenes import (
    SOURCE_TEXTURES,
    TARGET_TEXTURES,
    Rig,
    random_scene,
    render_window,
)
from tritonforge.export.spikedepth.spikes import Camera, frames_in, pack, simulate, unpack

# Seed offsets: disjoint scene streams. "target" is the adaptation domain's unlabelled training
# windows, "target_test" its held-out scenes.
SPLITS = {"train": 0, "test": 1_000_000, "target": 2_000_000, "target_test": 3_000_000}
TEXTURE_SETS = {"source": SOURCE_TEXTURES, "target": TARGET_TEXTURES}
NEAR_BAND, FAR_BAND = 3.0, 8.0  # metres: near < 3 <= middle < 8 <= far
# The adaptation's "new camera": a dimmer, noisier sensor (a quarter of the light per step, three
# times the dark current and noise) filming scenes textured with photographs training never saw.
TARGET_CAMERA = Camera(gain=0.25, threshold=1.0, dark=0.03, noise=0.06)
DOMAINS = ("source", "camera", "motorcycle")


@dataclass(frozen=True)
class SceneSet:
    left: np.ndarray  # [N, T, H*W/8] uint8
    right: np.ndarray
    depth: np.ndarray  # [N, H, W] float32 metres (inf or NaN: no depth)
    image: np.ndarray  # [N, H, W] float32 0-1
    rig: Rig
    camera: Camera
    # Procedural scenes also keep what re-records and mirrors them in training: the right
    # camera's depth, each camera's keyframe luminance (uint8 [N, 2, K, H, W]) and which
    # keyframe each frame shows ([T]). None for a recorded scene.
    depth_right: np.ndarray | None = None
    keys: np.ndarray | None = None
    held: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.depth)

    def windows(self, index, side: str = "left") -> np.ndarray:
        """Unpacked windows [n, T, H, W] float32 0/1 of the scenes at `index`."""
        packed = (self.left if side == "left" else self.right)[index]
        return unpack(packed, self.rig.height, self.rig.width).astype(np.float32)

    def subset(self, index) -> SceneSet:
        def part(array):
            return None if array is None else array[index]

        return dataclasses.replace(self, left=self.left[index], right=self.right[index],
                                   depth=self.depth[index], image=self.image[index],
                                   depth_right=part(self.depth_right), keys=part(self.keys))

    def respiked(self, seed: int) -> SceneSet:
        """The same scenes recorded again by the same camera with other random phases and noise
        (a training augmentation: the network cannot learn one recording's spikes by heart)."""
        if self.keys is None:
            return self
        rng = np.random.default_rng(seed)
        sides = []
        for side in range(2):
            sides.append(np.stack([pack(simulate(self.keys[i, side][self.held] / 255.0, self.camera,
                                                 int(rng.integers(2 ** 31))))
                                   for i in range(len(self))]))
        return dataclasses.replace(self, left=sides[0], right=sides[1])


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
    fields = {key: np.stack([scene[key] for scene in scenes]) for key in scenes[0] if key != "held"}
    return SceneSet(rig=rig, camera=camera, held=scenes[0]["held"], **fields)


@lru_cache(maxsize=4096)
def _scene(split: str, index: int, window: int, rig: Rig, camera: Camera, textures: str, seed: int):
    rng = np.random.default_rng([seed, SPLITS[split] + index])
    views = render_window(random_scene(rng, TEXTURE_SETS[textures]), rig, window)
    spike_seed = int(rng.integers(2 ** 31))
    scene = {"left": pack(simulate(views.left, camera, spike_seed)),
             "right": pack(simulate(views.right, camera, spike_seed + 1)),
             "depth": views.depth, "image": views.image, "depth_right": views.depth_right,
             "keys": np.round(np.stack([views.left_keys, views.right_keys]) * 255).astype(np.uint8),
             "held": views.held}
    for array in scene.values():
        array.setflags(write=False)
    return scene


def rig_of(config) -> Rig:
    """The rig a network was trained for (its NetConfig's size, focal length and baseline)."""
    return Rig(height=config.height, width=config.width, focal=config.focal, baseline=config.baseline)


# -- the real scene ------------------------------------------------------------------------

# Middlebury 2014 Motorcycle as scikit-image ships it (500 x 741, a quarter of the full size):
# focal length and disparity offset in its pixels, baseline in metres; inf disparity = unknown.
MOTORCYCLE_FOCAL, MOTORCYCLE_BASELINE, MOTORCYCLE_DOFFS = 994.978, 0.193001, 31.086


def motorcycle(window: int, camera: Camera | None = None, copies: int = 1, seed: int = 0,
               rig: Rig | None = None) -> SceneSet:
    """The one real stereo scene offline, recorded `copies` times by a simulated spike camera
    (other random phases and noise each time) at the rig's size: the images are resized (the
    focal length with them) and the right one shifted by the disparity offset, so disparity is
    focal x baseline / depth as in the procedural scenes. Its depth is the ground truth's
    (baseline x focal / (disparity + offset)); pixels without a disparity have none (inf)."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    rig = rig or Rig()
    camera = camera or Camera()
    left, right, disparity = skimage.data.stereo_motorcycle()
    scale = rig.width / left.shape[1]
    size = (rig.height, rig.width)
    with np.errstate(divide="ignore"):
        depth = MOTORCYCLE_BASELINE * MOTORCYCLE_FOCAL / (disparity + MOTORCYCLE_DOFFS)
    depth = resize(np.where(np.isfinite(disparity), depth, np.inf), size, order=0,
                   anti_aliasing=False).astype(np.float32)
    grey_left = resize(rgb2gray(left), size, anti_aliasing=True)
    shift = MOTORCYCLE_DOFFS * scale  # the right camera's principal point sits this far over
    columns = np.clip(np.arange(rig.width) + shift, 0, rig.width - 1)
    grey_right = np.stack([np.interp(columns, np.arange(rig.width), row)
                           for row in resize(rgb2gray(right), size, anti_aliasing=True)])
    rng = np.random.default_rng(seed)
    lefts, rights = [], []
    for _copy in range(copies):
        seeds = rng.integers(2 ** 31, size=2)
        lefts.append(pack(simulate(np.repeat(grey_left[None], window, 0), camera, int(seeds[0]))))
        rights.append(pack(simulate(np.repeat(grey_right[None], window, 0), camera, int(seeds[1]))))
    focal = MOTORCYCLE_FOCAL * scale
    return SceneSet(np.stack(lefts), np.stack(rights), np.repeat(depth[None], copies, 0),
                    np.repeat(grey_left[None].astype(np.float32), copies, 0),
                    Rig(rig.height, rig.width, focal, MOTORCYCLE_BASELINE), camera)


def domain_scenes(domain: str, count: int, window: int, rig: Rig | None = None, held_out: bool = True,
                  seed: int = 0) -> SceneSet:
    """`count` scenes of a domain: source (the training camera's held-out scenes), camera (the
    target camera; `held_out` False: its unlabelled training windows) or motorcycle (the real
    scene, recorded `count` times; one scene, so adaptation and evaluation share it)."""
    if domain == "source":
        return scene_set("test", count, window, rig)
    if domain == "camera":
        return scene_set("target_test" if held_out else "target", count, window, rig, TARGET_CAMERA, "target",
                         seed)
    if domain == "motorcycle":
        return motorcycle(window, copies=count, seed=seed, rig=rig)
    raise TritonForgeError(f"--domain {domain!r} is unknown: choose one of {', '.join(DOMAINS)}")


# -- recordings on disk ---------------------------------------------------------------------


def read_recordings(folder: Path, window: int) -> SceneSet:
    """Recorded scenes with their depth, in the layout `spikedepth scenes` writes: `rig.json`
    (height, width, focal_px, baseline_m) and one folder per scene holding left.dat, right.dat
    and depth.npy (metres, [H, W]; inf or 0 where there is none). The last `window` frames of
    each stream are used."""
    import json

    folder = Path(folder)
    if not (folder / "rig.json").is_file():
        raise TritonForgeError(f"{folder} has no rig.json: give a folder written by `tritonforge spikedepth "
                               "scenes`, or add rig.json with height, width, focal_px and baseline_m")
    described = json.loads((folder / "rig.json").read_text())
    try:
        rig = Rig(int(described["height"]), int(described["width"]), float(described["focal_px"]),
                  float(described["baseline_m"]))
    except KeyError as missing:
        raise TritonForgeError(f"{folder / 'rig.json'} has no {missing}: it needs height, width, focal_px "
                               "and baseline_m") from None
    scenes = sorted(path for path in folder.iterdir() if (path / "depth.npy").is_file())
    if not scenes:
        raise TritonForgeError(f"{folder} holds no scene folders (each with left.dat, right.dat and "
                               "depth.npy)")
    lefts, rights, depths = [], [], []
    for scene in scenes:
        streams = []
        for side in ("left", "right"):
            path = scene / f"{side}.dat"
            if not path.is_file():
                raise TritonForgeError(f"{path} does not exist: every scene needs left.dat and right.dat")
            frames = frames_in(path.read_bytes(), rig.height, rig.width, str(path))
            if len(frames) < window:
                raise TritonForgeError(f"{path} holds {len(frames)} frames; the network takes a window of "
                                       f"{window}: record at least {window} frames")
            streams.append(frames)
        if len(streams[0]) != len(streams[1]):
            raise TritonForgeError(f"{scene}: left.dat holds {len(streams[0])} frames, right.dat "
                                   f"{len(streams[1])}: record both cameras together, frame for frame")
        depth = np.load(scene / "depth.npy", allow_pickle=False)
        if depth.shape != (rig.height, rig.width):
            raise TritonForgeError(f"{scene / 'depth.npy'} is {list(depth.shape)}, not the rig's "
                                   f"[{rig.height}, {rig.width}]")
        if np.isnan(depth).any():
            where = [int(i) for i in np.argwhere(np.isnan(depth))[0]]
            count = int(np.isnan(depth).sum())
            raise TritonForgeError(f"{scene / 'depth.npy'} holds NaN at {where} ({count} pixels): mark "
                                   "pixels without depth with inf or 0, not NaN")
        lefts.append(streams[0][-window:])
        rights.append(streams[1][-window:])
        depths.append(np.where(depth > 0, depth, np.inf).astype(np.float32))
    depth = np.stack(depths)
    return SceneSet(np.stack(lefts), np.stack(rights), depth, np.zeros_like(depth), rig, Camera())


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
