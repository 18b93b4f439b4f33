"""Loading Hugging Face BERT checkpoints and the modules whose outputs the ONNX graph carries."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from tritonforge.encoders.bert_checkpoint import (  # noqa: F401  (the bert family's public names)
    EMBEDDED_NAME,
    ENCODER_ARCHITECTURES,
    SUPPORTED,
    WEIGHT_FILES,
    embedded_model_dir,
    resolve_model_dir,
)
from tritonforge.errors import TritonForgeError


def is_classifier(model_dir: Path) -> bool:
    config = json.loads((model_dir / "config.json").read_text())
    return "BertForSequenceClassification" in (config.get("architectures") or [])


def sentence_pooling(model_dir: Path) -> tuple[str, bool]:
    """How sentence-transformers pools this checkpoint: ("mean" | "cls", normalize)."""
    pooling, normalize = "mean", False
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            kind = module.get("type", "")
            if kind.endswith("Normalize"):
                normalize = True
            if kind.endswith("Pooling"):
                pool_config = model_dir / module.get("path", "") / "config.json"
                if pool_config.is_file() and json.loads(pool_config.read_text()).get(
                        "pooling_mode_cls_token"):
                    pooling = "cls"
    return pooling, normalize


def max_sequence_length(model_dir: Path, config) -> int:
    """The longest input the checkpoint was trained for (sentence-transformers may say less)."""
    limit = int(config.max_position_embeddings)
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        limit = min(limit, int(json.loads(st_config.read_text()).get("max_seq_length", limit)))
    return limit


class SentenceEncoder(nn.Module):
    """BERT encoder + sentence-transformers pooling: (last_hidden_state, sentence_embedding)."""

    def __init__(self, bert: nn.Module, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        self.bert, self.pooling, self.normalize = bert, pooling, normalize

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        if self.pooling == "cls":
            embedding = hidden[:, 0]
        else:
            # Masked mean over real tokens; the clamp keeps an all-padding row finite.
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            embedding = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            embedding = nn.functional.normalize(embedding, p=2.0, dim=1)
        return hidden, embedding


class SequenceClassifier(nn.Module):
    """BertForSequenceClassification with plain tensor inputs and a single `logits` output."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    @property
    def bert(self) -> nn.Module:
        return self.classifier.bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.classifier(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).logits


def load_bert(model_dir: Path) -> nn.Module:
    """The checkpoint wrapped for export, in eval mode, with its tokenizer attached."""
    from transformers import AutoModel, AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display owns the terminal

    try:
        if is_classifier(model_dir):
            module: nn.Module = SequenceClassifier(
                BertForSequenceClassification.from_pretrained(str(model_dir)))
        else:
            pooling, normalize = sentence_pooling(model_dir)
            module = SentenceEncoder(AutoModel.from_pretrained(str(model_dir)), pooling, normalize)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, RuntimeError) as exc:
        raise TritonForgeError(f"cannot load the BERT checkpoint in {model_dir}: {exc}") from exc
    module.tokenizer = tokenizer
    module.model_dir = model_dir
    return module.eval()


def hf_config(module: nn.Module):
    return module.bert.config


def output_width(module: nn.Module) -> int:
    config = hf_config(module)
    return int(config.num_labels) if isinstance(module, SequenceClassifier) else int(config.hidden_size)


class eager_attention:
    """Context: trace with the explicit softmax attention, whose ONNX pattern ONNX Runtime fuses
    (SDPA's export adds Where/IsNaN guards that are slower and block the Attention fusion)."""

    def __init__(self, module: nn.Module):
        self.bert = module.bert
        self.previous = self.bert.config._attn_implementation

    def __enter__(self):
        self.bert.set_attn_implementation("eager")

    def __exit__(self, *exc):
        self.bert.set_attn_implementation(self.previous)

