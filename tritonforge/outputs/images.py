"""Built-in kinds of pictures: images (pixels) and depth maps, both written by `query --save`."""

from __future__ import annotations

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.outputs.kind import (
    OutputKind,
    Part,
    QueryContext,
    SavePaths,
    Summary,
    Table,
    Tolerances,
    Written,
)
from tritonforge.outputs.metrics import PSNR_CEILING_DB, abs_rel, per_sample, psnr_db
from tritonforge.outputs.registry import register_kind
from tritonforge.spec import DEPTH_MAP, IMAGE, Check, Parity

DEPTH_COLORMAP = "magma"  # dark for the nearest depth, light for the farthest


@register_kind
class Image(OutputKind):
    """[batch, 1 or 3, height, width] uint8 pixels: printed as sizes, written as PNGs, judged
    by PSNR."""

    name = IMAGE

    def summarize(self, part: Part, context: QueryContext) -> Summary:
        return Summary("images", part.label, [list(image.shape) for image in part.value])

    def cannot_save(self, part: Part, context: QueryContext) -> str | None:
        pixels = part.value
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
            return (f"output {part.label!r} is {pixels.dtype} {list(pixels.shape)}, not uint8 "
                    "[N, 1 or 3, H, W] pixels: it cannot be saved as an image")
        return None

    def save(self, part: Part, paths: SavePaths, context: QueryContext) -> list[Written]:
        from PIL import Image as PILImage

        written = []
        for index, pixels in enumerate(part.value):
            target = paths.for_sample(part.label, index)
            array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
            PILImage.fromarray(np.ascontiguousarray(array)).save(target, "PNG")
            written.append(Written(target, f"image written to {target}"))
        return written

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        psnr = psnr_db(reference.value, candidate.value)
        return Parity((Check("psnr_db_min", float(psnr.min()) if psnr.size else PSNR_CEILING_DB,
                             tolerances.min_psnr_db, True),))


def depth_planes(values: np.ndarray, label: str) -> np.ndarray:
    """A depth output as [batch, height, width]."""
    if values.ndim == 4 and values.shape[1] == 1:
        return values[:, 0]
    if values.ndim == 3:
        return values
    raise TritonForgeError(f"depth map {label!r} is {values.dtype} {list(values.shape)}, not [N, 1, H, W] "
                           "or [N, H, W]: declare it as a tensor")


def valid_depth(depth: np.ndarray) -> np.ndarray:
    """Pixels that hold a depth: finite and above zero."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > 0)


def depth_colours(depth: np.ndarray, colormap: str = DEPTH_COLORMAP) -> np.ndarray:
    """A [height, width] depth map as RGB uint8: the colormap's first colour at the smallest
    valid depth, its last at the largest, black where there is no depth."""
    import matplotlib

    valid = valid_depth(depth)
    scaled = np.zeros(depth.shape)
    if valid.any():
        low, high = float(depth[valid].min()), float(depth[valid].max())
        scaled[valid] = (depth[valid] - low) / (high - low) if high > low else 0.0
    rgb = matplotlib.colormaps[colormap](scaled, bytes=True)[..., :3]
    rgb[~valid] = 0
    return rgb


@register_kind
class DepthMap(OutputKind):
    """[batch, 1, height, width] or [batch, height, width] depth (<= 0 or non-finite: no depth):
    the smallest, median and largest depth; `--save` writes a colour PNG and the raw values as
    .npy per sample; judged by the mean relative depth error (abs-rel)."""

    name = DEPTH_MAP

    def summarize(self, part: Part, context: QueryContext) -> Summary:
        planes = depth_planes(part.value, part.label)
        stats = []
        for plane in planes:
            valid = plane[valid_depth(plane)].astype(np.float64)
            found = valid.size > 0
            stats.append({"min": float(valid.min()) if found else None,
                          "median": float(np.median(valid)) if found else None,
                          "max": float(valid.max()) if found else None,
                          "invalid_pixels": int(plane.size - valid.size)})
        shown = ("min", "median", "max")
        rows = tuple((label, *("-" if item[k] is None else f"{item[k]:.4g}" for k in shown),
                      str(item["invalid_pixels"]))
                     for label, item in zip(context.row_names(len(stats)), stats, strict=True))
        columns = ("input", "min", "median", "max", "pixels without depth")
        return Summary("depth", part.label, stats, (Table(f"{part.label}: depth", columns, rows),))

    def cannot_save(self, part: Part, context: QueryContext) -> str | None:
        return None

    def save(self, part: Part, paths: SavePaths, context: QueryContext) -> list[Written]:
        from PIL import Image as PILImage

        written = []
        for index, plane in enumerate(depth_planes(part.value, part.label)):
            picture = paths.for_sample(part.label, index)
            PILImage.fromarray(depth_colours(plane)).save(picture, "PNG")
            raw = picture.with_suffix(".npy")
            np.save(raw, plane)
            written += [Written(picture, f"depth map written to {picture}"),
                        Written(raw, f"raw depth written to {raw}")]
        return written

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        want, got = reference.value, candidate.value
        valid = valid_depth(want)
        errors = abs_rel(want, got, valid)
        differ = int(np.sum(per_sample(valid) != per_sample(valid_depth(got))))
        return Parity((Check("depth_abs_rel_max", float(errors.max()) if errors.size else 0.0,
                             tolerances.max_abs_rel, False),),
                      {"depth_abs_rel_mean": float(errors.mean()) if errors.size else 0.0,
                       "pixels_whose_validity_differs": differ})
