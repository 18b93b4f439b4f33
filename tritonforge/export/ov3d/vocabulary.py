"""A request's vocabulary: the limits on its class names, and the prompt each name is embedded in.

Copied beside the server's python step (`cloud_step.py`), which imports it without
tritonforge: both sides refuse the same vocabularies with the same words. The embedding itself
is `text.embed_names` on the client and the bert family's MiniLM export on the server.
"""

from __future__ import annotations

from collections.abc import Sequence

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
