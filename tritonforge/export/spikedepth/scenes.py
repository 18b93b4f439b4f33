"""Procedural stereo scenes with exact depth, rendered in numpy by ray casting.

No spike-camera data set installs offline, so the family makes its own: a ground plane, a far
wall, and boxes, spheres and slanted panels standing on the ground, each textured with one of
the photographs and textures scikit-image bundles and lit by one light. Two pinhole cameras
look down +z (x right, y down), the right one `baseline` metres to the right of the left one,
so a point at depth Z appears `focal * baseline / Z` pixels further left in the right view: the
stereo pair is calibrated by construction, and the depth of every pixel is the ray's hit
distance (rays are cast with z = 1, so the hit parameter *is* the depth). The cameras move
forward and sideways during the window, so the spike streams carry motion; the depth label is
the left camera's at the window's last frame (what a stream's depth map after that frame means).

Texture sets: the source camera's scenes use `SOURCE_TEXTURES`, a "new camera" for adaptation
can use `TARGET_TEXTURES` (photographs never seen in training).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tritonforge.errors import TritonForgeError

SOURCE_TEXTURES = ("brick", "grass", "gravel", "camera", "astronaut", "chelsea")
TARGET_TEXTURES = ("coins", "coffee", "rocket", "moon", "text")
TEXTURE_SIZE = 256
FAR_WALL = (14.0, 30.0)  # metres: the wall closing every scene
NEAR_LIMIT = 1.2  # no object closer than this


@dataclass(frozen=True)
class Rig:
    """The stereo rig: image size, focal length in pixels, baseline in metres."""

    height: int = 64
    width: int = 96
    focal: float = 80.0
    baseline: float = 0.3

    def __post_init__(self):
        if self.height < 8 or self.width < 8 or self.height % 8 or self.width % 8:
            raise TritonForgeError(f"scene images of {self.height} x {self.width}: give a height and width "
                                   "that are multiples of 8 (at least 8)")
        if not self.focal > 0 or not self.baseline > 0:
            raise TritonForgeError(f"focal length {self.focal} and baseline {self.baseline} must be positive")

    def disparity(self, depth: np.ndarray) -> np.ndarray:
        return self.focal * self.baseline / depth

    def to_json(self) -> dict[str, float]:
        return {"height": self.height, "width": self.width, "focal_px": self.focal,
                "baseline_m": self.baseline}


@lru_cache(maxsize=16)
def texture(name: str) -> np.ndarray:
    """A bundled scikit-image picture as grey 0-1, TEXTURE_SIZE square (read-only)."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    try:
        picture = getattr(skimage.data, name)()
    except AttributeError:
        raise TritonForgeError(f"texture {name!r} is not one of scikit-image's bundled pictures") from None
    grey = rgb2gray(picture[..., :3]) if picture.ndim == 3 else picture / 255.0
    side = min(grey.shape)
    square = grey[:side, :side]
    out = resize(square, (TEXTURE_SIZE, TEXTURE_SIZE), anti_aliasing=True).astype(np.float32)
    out.setflags(write=False)
    return out


def _sample(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of texture `name` at texture coordinates in texels."""
    tex = texture(name)
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    u0, v0 = u0.astype(np.int64) % TEXTURE_SIZE, v0.astype(np.int64) % TEXTURE_SIZE
    u1, v1 = (u0 + 1) % TEXTURE_SIZE, (v0 + 1) % TEXTURE_SIZE
    return ((1 - fu) * (1 - fv) * tex[v0, u0] + fu * (1 - fv) * tex[v0, u1]
            + (1 - fu) * fv * tex[v1, u0] + fu * fv * tex[v1, u1])


@dataclass(frozen=True)
class Surface:
    """One textured thing in a scene. kind: plane (y = a), wall (z = a), box (centre, half
    sizes), sphere (centre, radius) or panel (centre, half width/height, yaw)."""

    kind: str
    params: tuple[float, ...]
    texture: str
    scale: float  # texels per metre
    gain: float  # brightness: luminance = offset + gain * texture * shading
    offset: float


@dataclass(frozen=True)
class Scene:
    surfaces: tuple[Surface, ...]
    camera_height: float
    light: tuple[float, float, float]
    velocity: tuple[float, float, float]  # metres per frame of the window


def random_scene(rng: np.random.Generator, textures: tuple[str, ...] = SOURCE_TEXTURES) -> Scene:
    """A ground, a far wall and 3-7 objects at 1.5-12 m, textures and brightness drawn at random."""
    def dressing(kind: str, params: tuple[float, ...]) -> Surface:
        return Surface(kind, params, str(rng.choice(textures)), float(rng.uniform(15, 60)),
                       float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.02, 0.15)))

    height = float(rng.uniform(1.0, 1.8))
    surfaces = [dressing("plane", (height,)), dressing("wall", (float(rng.uniform(*FAR_WALL)),))]
    for _ in range(int(rng.integers(3, 8))):
        z = float(np.exp(rng.uniform(np.log(1.8), np.log(12.0))))
        x = float(rng.uniform(-0.6, 0.6) * z)
        kind = str(rng.choice(["box", "sphere", "panel"]))
        if kind == "box":
            half = rng.uniform(0.2, 0.8, 3)
            surfaces.append(dressing("box", (x, height - half[1], z, *map(float, half))))
        elif kind == "sphere":
            radius = float(rng.uniform(0.2, 0.8))
            surfaces.append(dressing("sphere", (x, height - radius, z, radius)))
        else:
            half_w, half_h = float(rng.uniform(0.3, 1.2)), float(rng.uniform(0.3, 1.0))
            surfaces.append(dressing("panel", (x, height - half_h, z, half_w, half_h,
                                               float(rng.uniform(-1.0, 1.0)))))
    light = rng.normal(size=3) * np.array([1.0, 0.5, 1.0]) + np.array([0.0, -1.5, -0.5])
    light /= np.linalg.norm(light)
    # Metres per frame: at 20,000 frames a second, up to 40 m/s forward and 10 m/s sideways, so
    # a 32-frame window moves the rig up to 6.4 cm (a few pixels for the nearest objects).
    velocity = (float(rng.uniform(-0.0005, 0.0005)), 0.0, float(rng.uniform(0.0, 0.002)))
    return Scene(tuple(surfaces), height, tuple(float(c) for c in light), velocity)


def render(scene: Scene, rig: Rig, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luminance [H, W] in 0-1 and depth [H, W] in metres seen from a camera at `origin`
    (looking down +z)."""
    v, u = np.mgrid[0:rig.height, 0:rig.width].astype(np.float64)
    dx, dy = (u + 0.5 - rig.width / 2) / rig.focal, (v + 0.5 - rig.height / 2) / rig.focal
    ox, oy, oz = (float(c) for c in origin)
    best = np.full(dx.shape, np.inf)
    owner = np.full(dx.shape, -1)
    normals = np.zeros((*dx.shape, 3))
    coords = np.zeros((*dx.shape, 2))
    for index, surface in enumerate(scene.surfaces):
        t, normal, uv = _intersect(surface, ox, oy, oz, dx, dy)
        closer = (t > 1e-6) & (t < best)
        best = np.where(closer, t, best)
        owner = np.where(closer, index, owner)
        normals = np.where(closer[..., None], normal, normals)
        coords = np.where(closer[..., None], uv, coords)
    if (owner < 0).any():  # the wall closes every scene: only a bad scene leaves a ray unstopped
        raise TritonForgeError("a scene ray hit nothing: every scene needs its far wall")
    light = np.asarray(scene.light)
    shading = 0.35 + 0.65 * np.clip(-(normals @ light), 0.0, 1.0)
    luminance = np.zeros(dx.shape)
    for index, surface in enumerate(scene.surfaces):
        mine = owner == index
        if mine.any():
            texels = _sample(surface.texture, coords[mine, 0] * surface.scale,
                             coords[mine, 1] * surface.scale)
            luminance[mine] = surface.offset + surface.gain * texels * shading[mine]
    return np.clip(luminance, 0.0, 1.0), best


def _intersect(surface: Surface, ox, oy, oz, dx, dy):
    """Hit depth (inf: none), normal and texture coordinates in metres of rays o + t (dx, dy, 1)."""
    shape = dx.shape
    t = np.full(shape, np.inf)
    normal = np.zeros((*shape, 3))
    p = surface.params
    with np.errstate(divide="ignore", invalid="ignore"):
        if surface.kind == "plane":
            hit = (p[0] - oy) / dy
            t = np.where((dy > 0) & (hit > 0), hit, np.inf)
            normal[...] = (0.0, -1.0, 0.0)
            return t, normal, np.stack([ox + t * dx, oz + t], -1)
        if surface.kind == "wall":
            t = np.full(shape, p[0] - oz)
            normal[...] = (0.0, 0.0, -1.0)
            return t, normal, np.stack([ox + t * dx, oy + t * dy], -1)
        if surface.kind == "sphere":
            cx, cy, cz, r = p
            lx, ly, lz = ox - cx, oy - cy, oz - cz
            a = dx * dx + dy * dy + 1.0
            b = 2 * (lx * dx + ly * dy + lz)
            c = lx * lx + ly * ly + lz * lz - r * r
            disc = b * b - 4 * a * c
            hit = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
            t = np.where((disc >= 0) & (hit > 0), hit, np.inf)
            px, py, pz = ox + t * dx - cx, oy + t * dy - cy, oz + t - cz
            normal = np.stack([px, py, pz], -1) / r
            angle = np.arctan2(px, pz) * r
            return t, np.nan_to_num(normal), np.nan_to_num(np.stack([angle, py], -1))
        if surface.kind == "box":
            cx, cy, cz, hx, hy, hz = p
            low, high = np.full(shape, -np.inf), np.full(shape, np.inf)
            axis_of_low = np.zeros(shape, np.int64)
            for axis, (o, d, c, h) in enumerate(((ox, dx, cx, hx), (oy, dy, cy, hy),
                                                 (oz, np.ones(shape), cz, hz))):
                t1, t2 = (c - h - o) / d, (c + h - o) / d
                near, far = np.minimum(t1, t2), np.maximum(t1, t2)
                near = np.where(d == 0, np.where(abs(o - c) <= h, -np.inf, np.inf), near)
                far = np.where(d == 0, np.where(abs(o - c) <= h, np.inf, -np.inf), far)
                axis_of_low = np.where(near > low, axis, axis_of_low)
                low, high = np.maximum(low, near), np.minimum(high, far)
            t = np.where((low <= high) & (low > 0), low, np.inf)
            direction = np.stack([dx, dy, np.ones(shape)], -1)
            normal = np.zeros((*shape, 3))
            for axis in range(3):
                sign = -np.sign(direction[..., axis])
                normal[..., axis] = np.where(axis_of_low == axis, sign, 0.0)
            px, py, pz = ox + t * dx, oy + t * dy, oz + t
            uv = np.where((axis_of_low == 2)[..., None], np.stack([px, py], -1),
                          np.where((axis_of_low == 0)[..., None], np.stack([pz, py], -1),
                                   np.stack([px, pz], -1)))
            return t, normal, np.nan_to_num(uv)
        if surface.kind == "panel":
            cx, cy, cz, half_w, half_h, yaw = p
            n = np.array([np.sin(yaw), 0.0, -np.cos(yaw)])  # faces the camera when yaw = 0
            along = np.array([np.cos(yaw), 0.0, np.sin(yaw)])
            denom = dx * n[0] + n[2]
            hit = ((cx - ox) * n[0] + (cz - oz) * n[2]) / denom
            px, py, pz = ox + hit * dx - cx, oy + hit * dy - cy, oz + hit - cz
            s = px * along[0] + pz * along[2]
            inside = (np.abs(s) <= half_w) & (np.abs(py) <= half_h) & (hit > 0) & (denom != 0)
            t = np.where(inside, hit, np.inf)
            facing = np.where(denom[..., None] < 0, n, -n)
            return t, np.broadcast_to(facing, (*shape, 3)), np.nan_to_num(np.stack([s, py], -1))
    raise TritonForgeError(f"unknown surface kind {surface.kind!r}")


@dataclass(frozen=True)
class Views:
    """A rendered window: both cameras' images at the keyframes [K, H, W] and which keyframe
    each frame of the window shows (`held`, [T]), the left camera's depth and luminance at the
    last frame, and the right camera's depth there (for flipped training pairs)."""

    left_keys: np.ndarray
    right_keys: np.ndarray
    held: np.ndarray
    depth: np.ndarray
    image: np.ndarray
    depth_right: np.ndarray

    @property
    def left(self) -> np.ndarray:
        """Luminance per frame [T, H, W]."""
        return self.left_keys[self.held]

    @property
    def right(self) -> np.ndarray:
        return self.right_keys[self.held]


def render_window(scene: Scene, rig: Rig, frames: int, keyframes: int = 2) -> Views:
    """The scene seen by both cameras over `frames` steps, the rig moving by the scene's
    velocity each step. The images are rendered at `keyframes` moments and each held for its
    share of the window (a spike camera at 20 kHz sees little change within a few frames)."""
    keyframes = max(1, min(keyframes, frames))
    held = np.minimum(np.arange(frames) * keyframes // frames, keyframes - 1)
    left, right = [], []
    velocity = np.asarray(scene.velocity)
    offset = np.array([rig.baseline, 0.0, 0.0])
    for moment in (int(np.max(np.nonzero(held == k))) for k in range(keyframes)):
        left.append(render(scene, rig, velocity * moment)[0])
        right.append(render(scene, rig, velocity * moment + offset)[0])
    last = velocity * (frames - 1)
    image, depth = render(scene, rig, last)
    depth_right = render(scene, rig, last + offset)[1]
    return Views(np.stack(left).astype(np.float32), np.stack(right).astype(np.float32), held,
                 depth.astype(np.float32), image.astype(np.float32), depth_right.astype(np.float32))
