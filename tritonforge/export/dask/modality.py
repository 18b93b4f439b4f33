"""TextKnowledge: strings -> K-BERT sentence trees (DASK): token ids, soft positions, visible matrix.

Server side, `<name>_inject` (python backend, `export/dask/knowledge_injection.py`, with
the model's tokenizer.json and knowledge.json beside it) and `<name>_text` (ensemble TEXT ->
the model's outputs plus `truncated`, True where words or knowledge were cut at max_length).
Client side, the same `KnowledgeInjector` on the files saved beside the export. Lengths go to
buckets so the dynamic batcher can merge requests.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import TritonForgeError
from tritonforge.export.dask.knowledge_injection import (
    DEFAULT_BUCKETS,
    KNOWLEDGE_FILE,
    TOKENIZER_FILE,
    InjectionError,
    KnowledgeInjector,
)
from tritonforge.modalities import register_modality
from tritonforge.modalities.base import Modality, preprocessing_companions
from tritonforge.modalities.text import RawText
from tritonforge.spec import ModelIO
from tritonforge.triton_config import CompanionModel, ServingOptions

INJECTION_MODEL = Path(__file__).parent / "knowledge_injection.py"
INJECT_SUFFIX = "_inject"
TRUNCATED = "truncated"


@functools.lru_cache(maxsize=8)
def cached_injector(folder: str, max_length: int) -> KnowledgeInjector:
    """One injector per export folder: `bench` encodes one text at a time."""
    try:
        return KnowledgeInjector.from_folder(folder, max_length)
    except InjectionError as exc:
        raise TritonForgeError(f"{exc}: export the model again") from None


@register_modality
@dataclass(frozen=True)
class TextKnowledge(RawText, Modality):
    """Strings in; input_ids, position_ids (int64 [B, L]) and visible_matrix (uint8 [B, L, L])."""

    kind: ClassVar[str] = "text_knowledge"

    max_length: int = 256
    max_triples: int = 2
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    tokenizer: str = TOKENIZER_FILE  # relative to the version folder
    knowledge: str = KNOWLEDGE_FILE
    vocab_size: int | None = None  # rows of the embedding table: input_ids lie in 0..vocab_size-1
    max_position_embeddings: int | None = None  # rows of the position table: soft positions below it

    def __post_init__(self):
        if not 8 <= self.max_length <= 512:
            raise TritonForgeError(f"max_length {self.max_length} must be from 8 to 512 tokens")
        for name in ("vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TritonForgeError(f"text knowledge {name} {value} must be at least 1")

    def limits(self) -> dict[str, Any]:
        """max_sequence_length; value_ranges {input: [low, high, what]} (integers, inclusive):
        what the local wrapper refuses and the exported graph's guards fail on
        (`tritonforge.export.input_guards`)."""
        ranges: dict[str, list] = {}
        if self.vocab_size:
            ranges["input_ids"] = [0, self.vocab_size - 1, f"token ids below vocab_size {self.vocab_size}"]
        if self.max_position_embeddings:
            ranges["position_ids"] = [0, self.max_position_embeddings - 1, "soft positions below "
                                      f"max_position_embeddings {self.max_position_embeddings}"]
        ranges["visible_matrix"] = [0, 1, "visible matrix values (1: may attend, 0: may not)"]
        return {"max_sequence_length": self.max_length, "value_ranges": ranges}

    def companions(self, name: str, io: ModelIO, serving: ServingOptions) -> tuple[CompanionModel, ...]:
        parameters = {"max_length": str(self.max_length),
                      "outputs": ",".join([*io.input_names, TRUNCATED])}
        step, ensemble = preprocessing_companions(
            name, io, serving, self, INJECT_SUFFIX, INJECTION_MODEL, parameters,
            {TOKENIZER_FILE: self.tokenizer, KNOWLEDGE_FILE: self.knowledge})
        # `truncated`, one per text, also leaves the ensemble: the client learns what was cut.
        for config in (step.config, ensemble.config):
            config.output.add(name=TRUNCATED, data_type=mc.TYPE_BOOL, dims=[1],
                              reshape=mc.ModelTensorReshape(shape=[]) if config is step.config else None)
        ensemble.config.ensemble_scheduling.step[0].output_map[TRUNCATED] = TRUNCATED
        return step, ensemble

    def encode(self, raw: Sequence[str], io: ModelIO, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        if folder is None:
            raise TritonForgeError("this model takes sentence trees: pass --repo so its tokenizer and "
                                   f"knowledge can be used, or send text to its `{self.suffix}` ensemble")
        injector = cached_injector(str(folder), self.max_length)
        try:
            injected = injector.inject(list(self.read_raw(raw)))
        except InjectionError as exc:
            raise TritonForgeError(str(exc)) from None
        return injected.arrays(io.input_names)
