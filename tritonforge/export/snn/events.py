"""Event frames from real photographs, as a DVS camera records a moving picture.

CIFAR10-DVS (the event data VGGSNN is trained on) was recorded by a DVS camera watching CIFAR
images move on a monitor. No event recording installs offline, so the presets' sample inputs
are made the same way from the bundled photographs: the picture shifts by a pixel or two per
step, and each pixel whose log intensity rose (fell) by more than a contrast threshold since
it last fired counts an ON (OFF) event. Frames are [T, 2, size, size] event counts (ON, OFF),
float32, the layout of the reference's CIFAR10-DVS loader after binning into T frames.
"""

from __future__ import annotations

import numpy as np

CONTRAST = 0.15  # log-intensity change that fires an event (DVS cameras: about 0.1-0.3)
SUBSTEPS = 4  # sensor samples per frame: a frame counts the events of several small moves


def photograph_events(count: int, timesteps: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """`count` recordings [count, T, 2, size, size] from the bundled photographs (in turn), each
    moving along its own small random walk."""
    from PIL import Image

    from tritonforge.modalities.image import photographs

    paths = photographs()
    rng = np.random.default_rng(seed)
    margin = 4
    recordings = []
    for index in range(count):
        with Image.open(paths[index % len(paths)]) as opened:
            gray = opened.convert("L").resize((size + 2 * margin,) * 2, Image.Resampling.BILINEAR)
        log = np.log1p(np.asarray(gray, dtype=np.float32))
        recordings.append(events_of_motion(log, timesteps, size, margin, rng))
    return np.stack(recordings)


def events_of_motion(log: np.ndarray, timesteps: int, size: int, margin: int,
                     rng: np.random.Generator) -> np.ndarray:
    """[T, 2, size, size] event counts of a `size` window moving over `log` (log intensities)."""
    position = np.array([margin, margin])
    reference = log[margin:margin + size, margin:margin + size].copy()  # level at the last event
    frames = np.zeros((timesteps, 2, size, size), dtype=np.float32)
    for step in range(timesteps * SUBSTEPS):
        position = np.clip(position + rng.integers(-1, 2, size=2), 0, 2 * margin)
        view = log[position[0]:position[0] + size, position[1]:position[1] + size]
        change = view - reference
        on, off = change > CONTRAST, change < -CONTRAST
        frames[step // SUBSTEPS, 0] += on
        frames[step // SUBSTEPS, 1] += off
        reference = np.where(on | off, view, reference)
    return frames
