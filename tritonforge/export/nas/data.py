"""What a search or a training run learns from: the four kinds of data the paper compares, and
a user's own labelled images.

- `real`: scikit-learn's digits with their labels (the task every genotype is judged on);
- `random-labels`: the same digit images, each with a label drawn at random;
- `generated`: shapes drawn here (discs, rings, squares, bars, crosses, ...), labelled by what was drawn;
- `noise`: Gaussian noise images (the digits' pixel mean and spread) with random labels.

Searches use the training digits' count (1,437) for every kind, so the kinds differ only in
what the images and labels are. The test digits (360) are never searched or trained on.
`load_labelled` reads a folder of class subfolders or an `.npz` of images and labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonforge.data.digits import DIGITS_CLASSES, DIGITS_SIZE, digits
from tritonforge.errors import TritonForgeError

DATA_KINDS = ("real", "random-labels", "generated", "noise")
SHAPES = ("disc", "ring", "square", "frame", "horizontal bar", "vertical bar", "diagonal", "antidiagonal",
          "plus", "cross")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
HELD_OUT = 0.2  # share of a user's images kept out of training, to measure accuracy on


@dataclass(frozen=True)
class Labelled:
    """Images [N, C, H, W] float32 in 0-1 and labels [N] int64 in 0 .. len(classes) - 1."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str

    def __post_init__(self):
        if len(self.images) == 0:
            raise TritonForgeError(f"{self.name} holds no images")
        if len(self.images) != len(self.labels):
            raise TritonForgeError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        bad = (self.labels < 0) | (self.labels >= len(self.classes))
        if bad.any():
            raise TritonForgeError(f"{self.name}: label {int(self.labels[bad][0])} (sample "
                                   f"{int(np.flatnonzero(bad)[0])}) is out of range: labels run 0 .. "
                                   f"{len(self.classes) - 1} for its {len(self.classes)} classes")

    def subset(self, index: np.ndarray, name: str) -> Labelled:
        return Labelled(self.images[index], self.labels[index], self.classes, name)


DIGIT_CLASSES = tuple(str(d) for d in range(DIGITS_CLASSES))


def real_digits(split: str) -> Labelled:
    images, labels = digits(split)
    return Labelled(images, labels, DIGIT_CLASSES, f"the {split} digits")


def search_data(kind: str, seed: int) -> Labelled:
    """The search's data of `kind`, as many images as the training digits, deterministic for `seed`."""
    if kind not in DATA_KINDS:
        raise TritonForgeError(f"--data {kind!r} is unknown: choose one of {', '.join(DATA_KINDS)}")
    real = real_digits("train")
    rng = np.random.default_rng([seed, DATA_KINDS.index(kind)])
    count = len(real.labels)
    random_labels = rng.integers(0, len(DIGIT_CLASSES), count).astype(np.int64)
    if kind == "real":
        return real
    if kind == "random-labels":
        return Labelled(real.images, random_labels, DIGIT_CLASSES, "the training digits with random labels")
    if kind == "noise":
        mean, spread = float(real.images.mean()), float(real.images.std())
        noise = rng.normal(mean, spread, real.images.shape).astype(np.float32)
        return Labelled(noise, random_labels, DIGIT_CLASSES, "Gaussian noise with random labels")
    labels = rng.integers(0, len(SHAPES), count).astype(np.int64)
    images = np.stack([draw_shape(int(label), rng) for label in labels])[:, None]
    return Labelled(images, labels, SHAPES, "generated shapes")


def draw_shape(label: int, rng: np.random.Generator, size: int = DIGITS_SIZE, scale: int = 4) -> np.ndarray:
    """One shape of class `label` at a random place, size, stroke and brightness, drawn at
    `scale` x the resolution and averaged down (soft edges, like the digits'), plus faint noise."""
    side = size * scale
    y, x = (np.mgrid[0:side, 0:side] + 0.5) / scale
    radius = rng.uniform(2.2, 3.6)
    cy, cx = rng.uniform(radius, size - radius, 2)
    stroke = rng.uniform(0.7, 1.3)
    dy, dx = y - cy, x - cx
    distance, box = np.hypot(dy, dx), np.maximum(abs(dy), abs(dx))
    name = SHAPES[label]
    if name == "disc":
        mask = distance <= radius
    elif name == "ring":
        mask = abs(distance - radius + stroke / 2) <= stroke / 2
    elif name == "square":
        mask = box <= radius * 0.85
    elif name == "frame":
        mask = abs(box - radius * 0.85 + stroke / 2) <= stroke / 2
    elif name == "horizontal bar":
        mask = (abs(dy) <= stroke / 2 + 0.2) & (abs(dx) <= radius)
    elif name == "vertical bar":
        mask = (abs(dx) <= stroke / 2 + 0.2) & (abs(dy) <= radius)
    elif name in ("diagonal", "antidiagonal"):
        across = dy - dx if name == "diagonal" else dy + dx
        mask = (abs(across) <= stroke * 0.7) & (box <= radius)
    elif name == "plus":
        mask = ((abs(dy) <= stroke / 2) | (abs(dx) <= stroke / 2)) & (box <= radius)
    else:  # cross
        mask = ((abs(dy - dx) <= stroke * 0.7) | (abs(dy + dx) <= stroke * 0.7)) & (box <= radius)
    image = mask.astype(np.float32).reshape(size, scale, size, scale).mean(axis=(1, 3))
    image = image * rng.uniform(0.6, 1.0) + rng.normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def load_labelled(path: Path, channels: int, size: int) -> Labelled:
    """A user's labelled images: a folder with one subfolder of images per class (the class is
    the subfolder's name), or an `.npz` with `images` ([N, H, W] or [N, C, H, W], 0-1 floats or
    0-255 integers), `labels` ([N] integers) and optionally `classes` (names)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _folder(path, channels, size)
    if path.suffix == ".npz" and path.is_file():
        return _npz(path, channels, size)
    raise TritonForgeError(f"--data {path}: not a folder of class subfolders nor an .npz file; pass "
                           "digits, a folder, or an .npz with images and labels")


def _folder(path: Path, channels: int, size: int) -> Labelled:
    from PIL import Image as PILImage

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(label, f) for label, name in enumerate(classes) for f in sorted((path / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise TritonForgeError(f"--data {path} holds no images: put one subfolder per class, each with "
                               f"images ({', '.join(IMAGE_SUFFIXES)})")
    if len(classes) < 2:
        raise TritonForgeError(f"--data {path} has {len(classes)} class subfolder(s): a classifier needs "
                               "at least two, one subfolder per class")
    images = []
    for _label, file in files:
        try:
            with PILImage.open(file) as opened:
                picture = opened.convert("L" if channels == 1 else "RGB").resize((size, size),
                                                                                  PILImage.BILINEAR)
        except Exception as exc:  # Pillow raises several types for a broken file
            raise TritonForgeError(f"--data {path}: cannot read {file} ({exc}); remove or replace "
                                   "it") from None
        array = np.asarray(picture, dtype=np.float32) / 255.0
        images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return Labelled(np.stack(images), np.array([label for label, _f in files], dtype=np.int64),
                    tuple(classes), f"--data {path}")


def _npz(path: Path, channels: int, size: int) -> Labelled:
    with np.load(path, allow_pickle=False) as saved:
        missing = {"images", "labels"} - set(saved.files)
        if missing:
            raise TritonForgeError(f"--data {path} has no {', '.join(sorted(missing))} array: save "
                                   "images ([N, H, W] or [N, C, H, W]) and labels ([N]) with np.savez")
        images, labels = saved["images"], saved["labels"]
        names = [str(n) for n in saved["classes"]] if "classes" in saved.files else None
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != channels or images.shape[2:] != (size, size):
        raise TritonForgeError(f"--data {path}: images of shape {list(images.shape)}; this network takes "
                               f"[N, {channels}, {size}, {size}] (or [N, {size}, {size}] when grayscale)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise TritonForgeError(f"--data {path}: labels must be a 1-D integer array, not {labels.dtype} "
                               f"{list(labels.shape)}")
    scaled = images.astype(np.float32) / (255.0 if np.issubdtype(images.dtype, np.integer) else 1.0)
    count = len(names) if names is not None else int(labels.max(initial=-1)) + 1
    classes = tuple(names) if names is not None else tuple(str(c) for c in range(max(count, 0)))
    return Labelled(scaled, labels.astype(np.int64), classes, f"--data {path}")


def split_held_out(data: Labelled, seed: int = 0) -> tuple[Labelled, Labelled]:
    """A user's data divided once by a fixed permutation: training and held-out images."""
    order = np.random.default_rng(seed).permutation(len(data.labels))
    cut = max(1, int(round(len(order) * (1 - HELD_OUT))))
    if cut >= len(order):
        raise TritonForgeError(f"{data.name} holds {len(order)} image(s): too few to hold some out for "
                               "measuring accuracy; add images")
    return (data.subset(order[:cut], f"{data.name} (training)"),
            data.subset(order[cut:], f"{data.name} (held out)"))
