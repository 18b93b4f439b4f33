"""Class names as text embeddings: the embedded all-MiniLM-L6-v2, prompted (`vocabulary.prompted`).

Training and the client embed the names here (sentence-transformers: mean pooling, L2
normalisation); the served `<name>_vocab` model embeds the request's names with the bert
family's export of the same model, so both sides compare query embeddings with the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from tritonforge.export.ov3d.vocabulary import DEFAULT_TEMPLATE, prompted


def embed_names(names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> np.ndarray:
    """[C, 384] float32 unit vectors, one per class name."""
    return np.stack([_embedding(text) for text in prompted(names, template)])


@lru_cache(maxsize=4096)
def _embedding(text: str) -> np.ndarray:
    vector = _encoder().encode([text], convert_to_numpy=True, normalize_embeddings=True)[0]
    vector = vector.astype(np.float32)
    vector.setflags(write=False)
    return vector


@lru_cache(maxsize=1)
def _encoder():
    from sentence_transformers import SentenceTransformer

    from tritonforge.encoders.bert_checkpoint import embedded_model_dir

    return SentenceTransformer(str(embedded_model_dir()), device="cpu")
