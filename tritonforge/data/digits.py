"""scikit-learn's handwritten digits, split once for every family that learns them.

1,797 real 8 x 8 digits bundled with scikit-learn, divided by a fixed permutation into 1,437
training and 360 test digits; pixel values 0-16 scaled to 0-1 (what a PNG's 0-255 becomes
through the Image modality).
"""

from __future__ import annotations

import numpy as np

DIGITS_SIZE, DIGITS_CLASSES, TEST_SHARE = 8, 10, 0.2


def digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits as ([N, 1, 8, 8] float32 in 0-1, [N] int64), `train` or `test`."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    cut = int(len(order) * (1 - TEST_SHARE))
    chosen = order[:cut] if split == "train" else order[cut:]
    images = (data.images[chosen] / 16.0).astype(np.float32)[:, None]
    return images, data.target[chosen].astype(np.int64)
