"""ViT and BEiT classifiers (transformers' own models): built small for the digits, loaded from
a directory `save_pretrained` wrote, and wrapped for export.

`Classifier` is the exported graph of a plain export: pixels in, logits out. `StripGuarded` is
the same weights with the STRIP input screen around them (`strip.py`): one batch through the
network holds the input and its blends with the clean bank stored in the graph, so the screen
adds no second copy of the network to the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tritonforge.errors import TritonForgeError

ARCHITECTURES = ("vit", "beit")
SHOWN = 6  # key names an error lists


@dataclass(frozen=True)
class Size:
    """A small ViT/BEiT: 4 x 4 patches of a 32 x 32 image give 64 tokens (+ [CLS])."""

    image_size: int = 32
    patch_size: int = 4
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp: int = 128
    channels: int = 3
    classes: int = 10

    def __post_init__(self):
        if min(self.image_size, self.patch_size, self.width, self.depth, self.heads, self.mlp,
               self.channels, self.classes) < 1:
            raise TritonForgeError(f"model size {asdict(self)}: every value must be at least 1")
        if self.image_size % self.patch_size:
            raise TritonForgeError(f"image size {self.image_size} is not a multiple of the patch size "
                                   f"{self.patch_size}")
        if self.width % self.heads:
            raise TritonForgeError(f"width {self.width} is not a multiple of the heads {self.heads}")


def config_for(arch: str, size: Size, labels: tuple[str, ...] | None = None) -> Any:
    """The transformers config of a small `arch` model (no dropout: the exported graph and the
    reference compute the same; BEiT with its relative position bias and mean pooling, plus absolute
    position embeddings: on the digits they take BEiT from 0.93 to 0.97 at 40 epochs)."""
    from transformers import BeitConfig, ViTConfig

    labels = labels or tuple(str(i) for i in range(size.classes))
    common = dict(image_size=size.image_size, patch_size=size.patch_size, num_channels=size.channels,
                  hidden_size=size.width, num_hidden_layers=size.depth, num_attention_heads=size.heads,
                  intermediate_size=size.mlp, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)})
    if arch == "vit":
        return ViTConfig(**common)
    if arch == "beit":
        return BeitConfig(**common, use_relative_position_bias=True, use_absolute_position_embeddings=True,
                          use_mean_pooling=True,
                          drop_path_rate=0.0, layer_scale_init_value=1.0)
    raise TritonForgeError(f"--arch {arch!r} is unknown: choose one of {', '.join(ARCHITECTURES)}")


def build(arch: str, size: Size, seed: int) -> nn.Module:
    """A seeded, randomly initialised classifier of `arch` (eager attention, so it traces)."""
    from transformers import BeitForImageClassification, ViTForImageClassification

    config = config_for(arch, size)
    config._attn_implementation = "eager"
    kind = ViTForImageClassification if arch == "vit" else BeitForImageClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return kind(config).eval()


def load_directory(folder: Path) -> nn.Module:
    """A ViT or BEiT classifier from a directory with config.json and its weights
    (model.safetensors, or pytorch_model.bin read weights-only); every weight key must fit."""
    from transformers import AutoConfig, BeitForImageClassification, ViTForImageClassification

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TritonForgeError(f"--model {folder} is not a directory: give a folder written by "
                               "`tritonforge vit train` or save_pretrained (config.json + weights)")
    if not (folder / "config.json").is_file():
        raise TritonForgeError(f"--model {folder} has no config.json: give a folder written by "
                               "`tritonforge vit train` or save_pretrained")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:  # a config transformers cannot read: say which file and why
        raise TritonForgeError(f"--model {folder}/config.json cannot be read ({exc}); give a ViT or "
                               "BEiT config") from None
    if config.model_type not in ARCHITECTURES:
        raise TritonForgeError(f"--model {folder} holds a {config.model_type!r} model, not ViT or BEiT: "
                               f"the vit family exports {', '.join(ARCHITECTURES)} image classifiers")
    kind = ViTForImageClassification if config.model_type == "vit" else BeitForImageClassification
    weights = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise TritonForgeError(f"--model {folder} has no weights ({' or '.join(WEIGHT_FILES)}): save the "
                               "model with save_pretrained")
    if weights[0].endswith(".bin"):  # transformers reads it weights-only; check first for a clear message
        from tritonforge.safe_load import load_weights

        load_weights(folder / weights[0], f"--model {folder / weights[0]}")
    try:
        model, info = kind.from_pretrained(folder, output_loading_info=True, attn_implementation="eager")
    except Exception as exc:  # shapes that do not fit the config, unreadable files
        raise TritonForgeError(f"--model {folder}: its weights do not load into a {kind.__name__} with its "
                               f"config.json ({str(exc).strip().splitlines()[0][:300]})") from None
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = [str(item[0]) if isinstance(item, tuple) else str(item)
                  for item in info.get("mismatched_keys", [])]
    if missing or unexpected or mismatched:
        raise TritonForgeError(
            f"--model {folder}: its weights are not those of a {kind.__name__} with this config: "
            f"missing {describe_keys(missing)}; unexpected {describe_keys(unexpected)}"
            + (f"; wrong shape {describe_keys(mismatched)}" if mismatched else "")
            + ". Give the directory the weights were saved in, with their own config.json")
    return model.eval()


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def describe_keys(keys: list[str]) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


TRAINING_FILE = "tritonforge_training.json"  # what `vit train` / `vit poison` record beside the weights


def save_directory(model: nn.Module, folder: Path, record: dict[str, Any]) -> Path:
    """The model as save_pretrained writes it, and how it was made (`TRAINING_FILE`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    (folder / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def training_record(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / TRAINING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class Classifier(nn.Module):
    """pixel_values [B, C, H, W] (normalised) -> logits [B, classes]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class StripGuarded(nn.Module):
    """The classifier and the STRIP screen in one graph: pixel_values -> (logits, the mean
    prediction entropy of the input superimposed with each of the bank's N clean images, and
    the flag `entropy < threshold`). Superimposition is STRIP's: the images added in 0-1 pixels
    (the bank's at `weight`) and clipped to 0-1, so a trigger on a dark background survives it.
    The input and its N superimpositions go through the network as one batch of B·(N + 1)."""

    def __init__(self, model: nn.Module, bank: torch.Tensor, weight: float, threshold: float):
        super().__init__()
        self.model = model
        self.register_buffer("bank", bank.clone() * 0.5 + 0.5)  # normalised -> 0-1 pixels
        self.weight = float(weight)
        self.threshold = float(threshold)

    def forward(self, pixel_values: torch.Tensor):
        count = self.bank.shape[0]
        unit = pixel_values * 0.5 + 0.5
        mixed = torch.clamp(unit[:, None] + self.weight * self.bank[None], 0.0, 1.0)
        batch = torch.cat((pixel_values, (mixed.flatten(0, 1) - 0.5) / 0.5), 0)
        logits = self.model(pixel_values=batch).logits
        rows = pixel_values.shape[0]
        probabilities = torch.softmax(logits[rows:], -1)
        entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(-1)
        entropy = entropy.reshape(-1, count).mean(1, keepdim=True)
        return logits[:rows], entropy, entropy < self.threshold
