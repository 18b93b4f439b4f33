"""DASK's classifier (Yu et al., IJCAI-ECAI 2022): BERT reading a K-BERT sentence tree.

The sentence tree (`export/dask/knowledge_injection.py`) places knowledge tokens after the
words they explain and says who may attend to whom in a visible matrix [B, L, L]. The encoder
takes it as the additive attention bias of every layer, (1 - visible) x -1e4 (not -1e10: that
stays finite in fp16), and the tree's soft positions as `position_ids`. The head reads one
pooled vector: Linear -> Dropout -> ReLU -> Linear, the layout of the reference `BertClassifier`
(hikaru-nara/DASK), whose checkpoints load as they are: transformers key names under `bert.`
(no pooler) and `classifier.0` / `classifier.3`.
"""

from __future__ import annotations

import torch
from torch import nn

POOLING_MODES = ("first", "mean", "max", "last")
INPUTS = ("input_ids", "position_ids", "visible_matrix")
MASK_BIAS = -1e4


class KnowledgeClassifier(nn.Module):
    """`bert`: a transformers BertModel without pooler. `pooling`: first ([CLS]), mean, max or
    last over all L positions; mean and max include padding, as the reference computes them."""

    def __init__(self, bert: nn.Module, classes: int = 2, pooling: str = "first", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling {pooling!r}: choose one of {', '.join(POOLING_MODES)}")
        hidden = int(bert.config.hidden_size)
        self.bert = bert
        self.pooling = pooling
        self.classifier = nn.Sequential(nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ReLU(),
                                        nn.Linear(hidden, classes))

    def encode(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
               visible_matrix: torch.Tensor) -> torch.Tensor:
        """The last hidden states [B, L, H]."""
        bias = (1.0 - visible_matrix.to(torch.float32)).unsqueeze(1) * MASK_BIAS  # [B, 1, L, L]
        embeddings = self.bert.embeddings(input_ids=input_ids, position_ids=position_ids,
                                          token_type_ids=torch.zeros_like(input_ids))
        return self.bert.encoder(embeddings, attention_mask=bias.to(embeddings.dtype)).last_hidden_state

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            return hidden.mean(1)
        if self.pooling == "max":
            return hidden.max(1).values
        return hidden[:, -1] if self.pooling == "last" else hidden[:, 0]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, visible_matrix: torch.Tensor):
        logits = self.classifier(self.pool(self.encode(input_ids, position_ids, visible_matrix)))
        return logits, logits.softmax(-1)


def inject_inputs(injector, texts) -> dict:
    """The classifier's input arrays for `texts`, injected as served."""
    return injector.inject(list(texts)).arrays(INPUTS)


def new_classifier(model_dir, classes: int = 2, pooling: str = "first") -> KnowledgeClassifier:
    """A classifier on the BERT weights in `model_dir` (a Hugging Face directory), head random."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pooler's "unexpected keys" report is expected
    try:
        bert = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False, attn_implementation="eager")
    finally:
        hf_logging.set_verbosity(verbosity)
    return KnowledgeClassifier(bert, classes, pooling).eval()


def empty_classifier(model_dir, classes: int = 2, pooling: str = "first") -> KnowledgeClassifier:
    """The architecture of `model_dir`'s config with uninitialised weights, for a checkpoint."""
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(model_dir))
    config._attn_implementation = "eager"
    return KnowledgeClassifier(BertModel(config, add_pooling_layer=False), classes, pooling).eval()


def load_classifier_state(model: KnowledgeClassifier, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict in the reference's `BertClassifier` layout, strictly; a mismatch names
    the tensors (missing, unexpected, or of another shape, with both shapes)."""
    from tritonforge.errors import TritonForgeError

    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("bert.pooler.")}  # unused here
    expected = model.state_dict()
    ignorable = {k for k in expected if k.endswith("position_ids") or k.endswith("token_type_ids")}
    missing = sorted(set(expected) - set(state) - ignorable)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TritonForgeError(
            f"{source} does not fit this encoder and head: missing {missing[:5]}"
            f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{f' and {len(unexpected) - 5} more' if len(unexpected) > 5 else ''}; give the BERT "
            "directory (--model) the checkpoint was trained from")
    wrong = [f"{k} {tuple(state[k].shape)} (this encoder: {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        raise TritonForgeError(f"{source} does not fit this encoder: {'; '.join(wrong[:4])}"
                               f"{f' and {len(wrong) - 4} more' if len(wrong) > 4 else ''}: give the "
                               "BERT directory (--model) whose config.json it was trained with")
    model.load_state_dict(state, strict=False)
