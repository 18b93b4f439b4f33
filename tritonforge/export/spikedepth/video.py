"""What `spikedepth simulate` records: images or a video as grey luminance frames in 0-1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from tritonforge.data.video import FRAME_SUFFIXES, VIDEO_SUFFIXES, read_video, same_size
from tritonforge.errors import TritonForgeError


def read_luminance(sources: Sequence[Path], height: int | None = None, width: int | None = None
                   ) -> np.ndarray:
    """[frames, H, W] float 0-1 (ITU-R 601 luma) from image files in order, a folder of frames or
    one video file; resized to height x width when given (bilinear)."""
    sources = [Path(source) for source in sources]
    if len(sources) == 1 and (sources[0].is_dir() or sources[0].suffix.lower() in VIDEO_SUFFIXES):
        frames = read_video(sources[0]).frames
        names = [f"frame {i}" for i in range(len(frames))]
    else:
        frames, names = [], []
        for path in sources:
            if not path.is_file() or path.suffix.lower() not in FRAME_SUFFIXES:
                raise TritonForgeError(f"{path} is not an image file ({', '.join(FRAME_SUFFIXES)}), a folder "
                                       f"of frames or a video ({', '.join(VIDEO_SUFFIXES)})")
            with PILImage.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
            names.append(path.name)
    same_size(frames, "the images to record", names)
    size = (width or frames[0].shape[1], height or frames[0].shape[0])
    if (size[0] * size[1]) % 8:
        raise TritonForgeError(f"{size[0]} x {size[1]} pixels do not pack into whole bytes in a .dat file: "
                               "pass --height and --width whose product is a multiple of 8")
    grey = [np.asarray(PILImage.fromarray(frame).convert("L").resize(size, PILImage.BILINEAR), np.float64)
            for frame in frames]
    return np.stack(grey) / 255.0
