"""Class names as text embeddings: the embedded all-MiniLM-L6-v2, prompted.

Training embeds the names here (sentence-transformers: mean pooling, L2 normalisation); the
served `<name>_vocab` ensemble embeds the request's names with the bert family's export of the
same model, so both sides compare query embeddings with the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from tritonforge.errors import TritonForgeError

TEMPLATES = {"photo": "a photo of a {}", "room": "a {} in a room", "plain": "{}"}
DEFAULT_TEMPLATE = "photo"
MAX_CLASSES = 256  # names a request's vocabulary may hold
MAX_NAME = 64  # characters of one class name


def check_vocabulary(names: Sequence[str]) -> list[str]:
    """The names stripped, or an error that says which one is wrong and how to mend it."""
    cleaned = [str(name).strip() for name in names]
    if not cleaned:
        raise TritonForgeError("the vocabulary is empty: send at least one class name")
    if len(cleaned) > MAX_CLASSES:
        raise TritonForgeError(f"the vocabulary holds {len(cleaned)} names, above the limit of "
                               f"{MAX_CLASSES}: send fewer classes per request")
    for position, name in enumerate(cleaned):
        if not name:
            raise TritonForgeError(f"class name {position} is empty: give every class a name")
        if len(name) > MAX_NAME:
            raise TritonForgeError(f"class name {position} ({name[:20]!r}...) has {len(name)} characters, "
                                   f"above the limit of {MAX_NAME}: shorten it")
    return cleaned


def prompted(names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    if template not in TEMPLATES:
        raise TritonForgeError(f"unknown prompt template {template!r}: choose one of {', '.join(TEMPLATES)}")
    return [TEMPLATES[template].format(name) for name in check_vocabulary(names)]


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
