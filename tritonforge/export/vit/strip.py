"""The served input screen: STRIP (Gao et al., ACSAC 2019) inside the exported graph.

A trigger keeps working when another image is superimposed on the input: the model stays
sure of the target class. A clean image with another clean image on top becomes ambiguous. So
each of N clean held-out images stored in the graph is superimposed on the input (STRIP's
superimposition: pixels in 0-1 added, the bank image at `weight`, clipped to 0-1), the N
results run through the same weights, and the mean entropy of their predictions is the score;
an input whose score falls below the threshold is flagged.

The threshold is the `frr` quantile of the scores of clean held-out images that are not in
the bank: on clean inputs like them, about `frr` of them are flagged (the false-rejection
rate). `export vit --guard strip:N` records the bank, its weight, the threshold and
the calibration's flag rate in the manifest.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.vit.data import digit_pixels
from tritonforge.export.vit.model import StripGuarded

GUARD = re.compile(r"strip:(-?\d+)")
MIN_CALIBRATION = 50  # clean held-out images left beside the bank to set the threshold on
METHOD = ("STRIP (Gao et al. 2019): N clean held-out images stored in the graph superimposed on the input; "
          "flagged when the mean prediction entropy of the N results is below the threshold")


@dataclass(frozen=True)
class GuardSpec:
    bank: int
    weight: float = 1.0  # the bank image's weight in the superimposition (STRIP adds both at 1)
    frr: float = 0.01  # declared false-rejection rate the threshold is calibrated at

    def __post_init__(self):
        held_out = len(digit_pixels("defence")[1])
        if self.bank < 1:
            raise TritonForgeError(f"--guard strip:{self.bank}: the bank needs at least 1 clean image "
                                   "(strip:16 is a good start)")
        if self.bank > held_out - MIN_CALIBRATION:
            raise TritonForgeError(
                f"--guard strip:{self.bank}: the bank cannot take more than {held_out - MIN_CALIBRATION} of "
                f"the {held_out} clean held-out digits ({MIN_CALIBRATION} stay to calibrate the threshold)")
        if not 0 < self.weight <= 1 or not 0 < self.frr < 0.5:
            raise TritonForgeError(f"--guard-weight {self.weight} must lie in (0, 1] and --guard-frr "
                                   f"{self.frr} in (0, 0.5)")


def parse_guard(text: str | None, weight: float, frr: float) -> GuardSpec | None:
    if text is None:
        return None
    match = GUARD.fullmatch(text.strip())
    if not match:
        raise TritonForgeError(f"--guard {text!r}: write strip:N, N the number of clean images blended "
                               "with each input (e.g. strip:16)")
    return GuardSpec(int(match[1]), weight, frr)


def guarded(model: torch.nn.Module, spec: GuardSpec) -> tuple[StripGuarded, dict[str, Any]]:
    """The classifier with the screen, its threshold calibrated on the held-out digits after
    the bank; returns it and the manifest's record."""
    pixels, _labels = digit_pixels("defence")
    bank, calibration = pixels[:spec.bank], pixels[spec.bank:]
    screen = StripGuarded(model, torch.from_numpy(np.array(bank)), spec.weight, 0.0).eval()
    scores = strip_scores(screen, calibration)
    threshold = float(np.quantile(scores, spec.frr))
    screen.threshold = threshold
    record = {"method": METHOD, **asdict(spec), "threshold": threshold,
              "bank_images": f"the first {spec.bank} clean held-out test digits",
              "calibration_images": int(len(calibration)),
              "calibration_flagged": float((scores < threshold).mean())}
    return screen, record


def strip_scores(screen: StripGuarded, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    """Mean blend entropy per image, from the PyTorch screen."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            chunk = torch.from_numpy(np.array(pixels[start:start + batch]))
            _logits, entropy, _flag = screen(chunk)
            out.append(entropy.numpy()[:, 0])
    return np.concatenate(out)
