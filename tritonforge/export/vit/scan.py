"""The pre-publish backdoor scan: trigger reverse-engineering per class in the manner of Neural
Cleanse (Wang et al., IEEE S&P 2019).

For every class k it searches the smallest trigger that sends clean images to k: a mask m
(H x W, in 0-1) and a pattern p (C x H x W, in 0-1) stamped as x' = (1 - m) x + m p, found by
Adam on cross-entropy towards k plus lambda_k |m|_1, with lambda_k raised while the trigger
works (success >= `success` on the held-out images) and lowered while it does not, as the
paper's cost schedule does. A class that a backdoor sends inputs to needs a far smaller mask
than the others. The anomaly index of each class is its distance below the median mask norm in
units of the median absolute deviation (scaled by 1.4826, the normal consistency constant); a
model whose smallest-norm class has an index above `threshold` (2, as published) is refused.

All classes are searched at once (one batch of classes x images per step). The data is the
defender's small clean held-out set (`data.py`'s defence split); the method, data and threshold
go into the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.vit.data import stamp

FORMS = ("mask", "blend")  # a per-pixel mask (Neural Cleanse's), or one blend weight per class
STATISTICS = ("log", "l1")
CONSISTENCY = 1.4826  # MAD -> standard deviation for normally distributed norms
METHOD = ("Neural Cleanse (Wang et al. 2019): per-class smallest mask + pattern that sends clean "
          "held-out images to the class; anomaly index of the mask L1 norms by median absolute deviation")


@dataclass(frozen=True)
class ScanRecipe:
    steps: int = 200  # Adam steps per form (all classes together)
    batch: int = 16  # held-out images per class and step
    lr: float = 0.1
    cost: float = 1e-3  # initial lambda
    success: float = 0.99  # a trigger "works" when it sends this share of the images to its class
    check_every: int = 10  # steps between success checks (and lambda updates)
    threshold: float = 2.0  # anomaly index above which a model is refused
    min_images: int = 20
    seed: int = 0
    forms: tuple[str, ...] = FORMS  # trigger shapes searched; the model's index is the largest
    statistic: str = "log"  # the norms the anomaly index is computed on: "log" or "l1" (the paper's)
    # The suspect must also stand apart from the next class: its norm at most 1/gap of the second
    # smallest (a single-target backdoor makes one class stand out; two classes that are both easy
    # to reach are the digits' geometry). 0: the anomaly index alone, as the paper decides.
    gap: float = 1.3

    def __post_init__(self):
        unknown = [form for form in self.forms if form not in FORMS]
        if unknown or not self.forms:
            raise TritonForgeError(f"scan forms {list(self.forms)}: choose among {', '.join(FORMS)}")
        if self.statistic not in STATISTICS:
            raise TritonForgeError(f"--scan-statistic {self.statistic!r}: choose one of "
                                   f"{', '.join(STATISTICS)}")
        if self.steps < self.check_every or self.batch < 1 or self.lr <= 0 or self.cost <= 0:
            raise TritonForgeError(f"scan recipe {asdict(self)}: steps must be at least check_every, "
                                   "batch, lr and cost positive")
        if self.gap < 0 or self.gap and self.gap < 1:
            raise TritonForgeError(f"--scan-gap {self.gap} must be 0 (off) or at least 1")
        if not 0 < self.success <= 1 or self.threshold <= 0:
            raise TritonForgeError(f"scan success {self.success} must lie in (0, 1] and threshold "
                                   f"{self.threshold} be positive")


@dataclass
class Triggers:
    """One form's search: per class the smallest working trigger found."""

    form: str
    norms: np.ndarray  # [K] mask L1 norm (in pixels) of the smallest working trigger per class
    reached: np.ndarray  # [K] whether the class's trigger reached the recipe's success
    masks: np.ndarray  # [K, 1, H, W]
    patterns: np.ndarray  # [K, C, H, W] in 0-1

    def indices(self, statistic: str) -> np.ndarray:
        return anomaly_indices(np.log(self.norms) if statistic == "log" else self.norms)

    def stamp(self, pixels: np.ndarray, k: int) -> np.ndarray:
        """Class k's reversed trigger stamped on normalised pixels."""
        return stamp(pixels, self.masks[k], self.patterns[k]).astype(np.float32)


@dataclass
class ScanResult:
    """Every form's triggers; the model's anomaly index is the largest over the forms of the
    smallest-norm class's index."""

    searches: dict[str, Triggers]
    recipe: ScanRecipe
    images: int
    labels: tuple[str, ...]

    def index_of(self, form: str, statistic: str | None = None) -> float:
        search = self.searches[form]
        return float(search.indices(statistic or self.recipe.statistic)[int(np.argmin(search.norms))])

    def suspicion(self, form: str) -> float:
        """How far `form`'s smallest trigger stands out, as one number refused above 1: the smaller
        of its anomaly index over the threshold and its separation from the next class over the
        gap (gap 0: the index alone)."""
        index = self.index_of(form) / self.recipe.threshold
        return min(index, self.separation(form) / self.recipe.gap) if self.recipe.gap else index

    def refuses(self, form: str) -> bool:
        return self.suspicion(form) > 1.0

    @property
    def form(self) -> str:
        """The form the verdict rests on: the most suspicious."""
        return max(self.searches, key=lambda form: (self.suspicion(form), self.index_of(form)))

    @property
    def anomaly_index(self) -> float:
        return self.index_of(self.form)

    @property
    def suspect(self) -> int:
        return int(np.argmin(self.searches[self.form].norms))

    def separation(self, form: str) -> float:
        """The second smallest norm over the smallest, in `form`."""
        low, second = np.sort(self.searches[form].norms)[:2]
        return float(second / low) if low > 0 else float("inf")

    @property
    def flagged(self) -> bool:
        return self.refuses(self.form)

    def stamp(self, pixels: np.ndarray, k: int) -> np.ndarray:
        return self.searches[self.form].stamp(pixels, k)

    def to_json(self) -> dict[str, Any]:
        def per_class(values) -> dict[str, float]:
            return {label: round(float(v), 3) for label, v in zip(self.labels, values, strict=True)}

        return {"method": METHOD, "statistic": self.recipe.statistic, "threshold": self.recipe.threshold,
                "images": self.images, "recipe": asdict(self.recipe),
                "anomaly_index": round(self.anomaly_index, 4), "form": self.form,
                "suspected_class": self.labels[self.suspect], "refused": self.flagged,
                "gap": self.recipe.gap, "separation": round(self.separation(self.form), 3),
                "suspicion": round(self.suspicion(self.form), 4),
                "forms": {form: {"anomaly_index": {statistic: round(self.index_of(form, statistic), 4)
                                                   for statistic in STATISTICS},
                                 "separation": round(self.separation(form), 3),
                                 "mask_l1_norms": per_class(search.norms),
                                 "anomaly_indices": per_class(search.indices(self.recipe.statistic)),
                                 "reached_success": {label: bool(r) for label, r in
                                                     zip(self.labels, search.reached, strict=True)}}
                          for form, search in self.searches.items()}}

    def save_images(self, folder: Path) -> dict[str, str]:
        """The suspected class's reversed trigger (mask x pattern, 8x nearest) as a PNG, and a
        figure of every form's and class's trigger with its norm and index; returns the files."""
        from PIL import Image as PILImage

        from tritonforge.figures import save_figure

        folder.mkdir(parents=True, exist_ok=True)
        search, k = self.searches[self.form], self.suspect
        trigger = np.clip(search.masks[k] * search.patterns[k], 0, 1).transpose(1, 2, 0)
        trigger = (trigger * 255).round().astype(np.uint8)
        trigger = trigger[..., 0] if trigger.shape[-1] == 1 else trigger
        single = folder / f"reversed_trigger_class_{self.labels[k]}.png"
        PILImage.fromarray(trigger).resize((trigger.shape[1] * 8, trigger.shape[0] * 8),
                                           PILImage.Resampling.NEAREST).save(single)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        count = len(self.labels)
        rows = len(self.searches)
        figure, axes = plt.subplots(rows, count, figsize=(1.3 * count, 1.6 * rows), squeeze=False)
        for row, (form, found) in enumerate(self.searches.items()):
            indices = found.indices(self.recipe.statistic)
            for index, axis in enumerate(axes[row]):
                axis.axis("off")
                image = np.clip(found.masks[index] * found.patterns[index], 0, 1).transpose(1, 2, 0)
                axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, vmin=0, vmax=1,
                            interpolation="nearest", cmap="gray")
                suspected = form == self.form and index == k and self.flagged
                axis.set_title(f"{form} {self.labels[index]}\n|m| {found.norms[index]:.0f} idx "
                               f"{indices[index]:.1f}", fontsize=6, color="red" if suspected else "black")
        figure.suptitle(f"reversed triggers: anomaly index {self.anomaly_index:.2f} "
                        f"({self.recipe.statistic}, threshold {self.recipe.threshold:g})", fontsize=8)
        grid = save_figure(figure, folder / "reversed_triggers.png")
        return {"suspected_trigger": str(single), "all_triggers": str(grid)}


def anomaly_indices(norms: np.ndarray) -> np.ndarray:
    """Each class's distance below the median norm in robust standard deviations (0 above it)."""
    norms = np.asarray(norms, np.float64)
    median = np.median(norms)
    mad = CONSISTENCY * np.median(np.abs(norms - median))
    below = np.maximum(median - norms, 0.0)
    return below / mad if mad > 0 else np.where(below > 0, np.inf, 0.0)


def scan(model: torch.nn.Module, pixels: np.ndarray, labels: tuple[str, ...],
         recipe: ScanRecipe = ScanRecipe(), tick: Callable[[], None] | None = None) -> ScanResult:
    """Search every class's smallest trigger in each of the recipe's forms, on the clean
    normalised `pixels` [N, C, H, W]; `tick` after each step (steps x forms in all)."""
    if len(pixels) < recipe.min_images:
        raise TritonForgeError(f"the backdoor scan needs at least {recipe.min_images} clean held-out "
                               f"images; it was given {len(pixels)}")
    searches = {form: reverse_triggers(model, pixels, len(labels), recipe, form, tick)
                for form in recipe.forms}
    return ScanResult(searches, recipe, len(pixels), tuple(labels))


def reverse_triggers(model: torch.nn.Module, pixels: np.ndarray, classes: int, recipe: ScanRecipe,
                     form: str, tick: Callable[[], None] | None = None) -> Triggers:
    """Every class's smallest trigger of `form` on the clean normalised `pixels` [N, C, H, W]."""
    _, channels, height, width = pixels.shape
    images = torch.from_numpy(np.ascontiguousarray(pixels)) * 0.5 + 0.5  # 0-1
    targets = torch.arange(classes)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(recipe.seed)
        generator = torch.Generator().manual_seed(recipe.seed)
        mask_shape = (classes, 1, height, width) if form == "mask" else (classes, 1, 1, 1)
        mask_logits = torch.full(mask_shape, -2.0, requires_grad=True)
        pattern_logits = torch.zeros((classes, channels, height, width), requires_grad=True)
        optimizer = torch.optim.Adam([mask_logits, pattern_logits], lr=recipe.lr, betas=(0.5, 0.9))
        cost = torch.full((classes,), recipe.cost)
        best_norm = torch.full((classes,), float("inf"))
        best_mask = torch.sigmoid(mask_logits.detach()).clone()
        best_pattern = torch.sigmoid(pattern_logits.detach()).clone()
        final_norm = best_norm.clone()

        def stamped(batch: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
            mixed = (1 - mask[:, None]) * batch[None] + (mask * pattern)[:, None]  # [K, B, C, H, W]
            return ((mixed - 0.5) / 0.5).flatten(0, 1)

        for step in range(recipe.steps):
            batch = images[torch.randint(len(images), (recipe.batch,), generator=generator)]
            mask, pattern = torch.sigmoid(mask_logits), torch.sigmoid(pattern_logits)
            logits = model(pixel_values=stamped(batch, mask, pattern)).logits.view(classes, recipe.batch, -1)
            wanted = targets.repeat_interleave(recipe.batch)
            ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), wanted,
                                                   reduction="none").view(classes, -1).mean(1)
            norms = mask.flatten(1).sum(1) * (height * width / mask[0].numel())
            loss = (ce + cost * norms).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if tick:
                tick()
            if (step + 1) % recipe.check_every:
                continue
            with torch.no_grad():
                mask, pattern = torch.sigmoid(mask_logits), torch.sigmoid(pattern_logits)
                success = torch.zeros(classes)
                for start in range(0, len(images), 64):
                    chunk = images[start:start + 64]
                    hits = model(pixel_values=stamped(chunk, mask, pattern)).logits.argmax(-1)
                    success += (hits.view(classes, -1) == targets[:, None]).float().sum(1)
                success /= len(images)
                norms = mask.flatten(1).sum(1) * (height * width / mask[0].numel())
                works = success >= recipe.success
                better = works & (norms < best_norm)
                best_norm = torch.where(better, norms, best_norm)
                best_mask[better], best_pattern[better] = mask[better], pattern[better]
                final_norm = norms
                cost = torch.where(works, cost * 1.5, cost / 1.5 ** 1.5)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    reached = torch.isfinite(best_norm)
    unreached = ~reached  # never worked: its last mask (large) stands for it
    best_norm[unreached] = final_norm[unreached]
    best_mask = best_mask.expand(classes, 1, height, width)
    return Triggers(form, best_norm.numpy(), reached.numpy(), best_mask.numpy(), best_pattern.numpy())
