"""Text: strings -> token arrays through the model's own tokenizer.json (the `tokenizers` package).

Server side, `<name>_tokenizer` (python backend, `modalities/steps/text_tokenizer.py`) and
`<name>_text` (ensemble TEXT -> the model's outputs). Client side, the same `encode` on the
tokenizer saved beside the export. Requests are padded to length buckets (16, 32, 64, ...,
max_length) so Triton's dynamic batcher can merge them; texts are truncated at max_length.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.modalities.base import Modality, ShapeOption, preprocessing_companions, raw_bytes_array
from tritonforge.modalities.steps.text_tokenizer import (
    DEFAULT_BUCKETS,
    MAX_TEXT_BYTES,
    TOKEN_OUTPUTS,
    bucket_lengths,
    empty_text_error,
    encode,
    load_tokenizer,
    text_size_error,
)
from tritonforge.spec import ModelIO
from tritonforge.triton_config import CompanionModel, ServingOptions

TEXT_TOKENIZER_MODEL = Path(__file__).parent / "steps" / "text_tokenizer.py"
TOKENIZER_SUFFIX = "_tokenizer"
TOKENIZER_FILE = "tokenizer.json"
MAX_SEQ_LEN = 4096  # longer than any BERT's position table; the model's own bound is checked later


@functools.lru_cache(maxsize=8)
def cached_tokenizer(path: str, max_length: int):
    """A client encodes one text at a time for `bench`: the tokenizer file is read once."""
    return load_tokenizer(path, max_length)


class RawText:
    """The client side of a modality whose raw input is text (`query --text`, an ensemble
    taking TEXT): shared by `Text` and DASK's `TextKnowledge`."""

    suffix: ClassVar[str] = "_text"
    raw_input: ClassVar[str] = "TEXT"
    query_option: ClassVar[str] = "text"
    max_text_bytes: ClassVar[int] = MAX_TEXT_BYTES  # Text declares its own in the manifest

    def read_raw(self, values: Sequence[str]) -> list[str]:
        problem = (text_size_error([v.encode("utf-8") for v in values], self.max_text_bytes)
                   or empty_text_error(list(values)))
        if problem:
            raise TritonForgeError(problem.replace("TEXT", "--text"))
        return list(values)

    def request(self, raw: Sequence[str]) -> dict[str, np.ndarray]:
        return {self.raw_input: raw_bytes_array([t.encode("utf-8") for t in raw])}

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[Any]:
        from tritonforge.data import sentences

        return sentences(n)

    def describe_raw(self, item: Any, index: int) -> str:
        return f"#{index} {str(item)[:60]}"


@dataclass(frozen=True)
class Text(RawText, Modality):
    """Strings in; token arrays (a subset of input_ids, attention_mask, token_type_ids) out."""

    kind: ClassVar[str] = "text"
    shape_options: ClassVar[tuple[ShapeOption, ...]] = (ShapeOption(
        "seq_len", "Text: sequence length, every input padded to it (default 128 for verify; length "
                   "buckets for bench).", default=128, maximum=MAX_SEQ_LEN,
        too_large="(and no more than the model's max_sequence_length, usually 512)"),)
    serving_request: ClassVar[tuple[int, dict[str, int]] | None] = (1, {"seq_len": 32})  # one short sentence

    max_length: int
    pad_token_id: int
    tokenizer: str = "tokenizer/tokenizer.json"  # relative to the version folder
    lowercase: bool = False
    truncation: bool = True
    inputs: tuple[str, ...] = TOKEN_OUTPUTS
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    vocab_size: int | None = None  # rows of the embedding table: input_ids lie in 0..vocab_size-1
    type_vocab_size: int | None = None  # segments: token_type_ids lie in 0..type_vocab_size-1
    max_text_bytes: int = MAX_TEXT_BYTES  # one text's UTF-8 size; larger texts are refused

    def __post_init__(self):
        if self.max_length < 1:
            raise TritonForgeError(f"text max_length {self.max_length} must be at least 1")
        for name in ("vocab_size", "type_vocab_size", "max_text_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TritonForgeError(f"text {name} {value} must be at least 1")
        unknown = sorted(set(self.inputs) - set(TOKEN_OUTPUTS))
        if unknown:
            raise TritonForgeError(f"text inputs {unknown} are not token arrays the tokenizer makes "
                                   f"({', '.join(TOKEN_OUTPUTS)})")

    def limits(self) -> dict[str, Any]:
        """max_sequence_length; value_ranges {input: [low, high, what]} (integers, inclusive);
        max_text_bytes (the tokenizer's). An all-zero attention mask row is in range: the
        exported graphs answer it with finite values (mean pooling: a zero embedding)."""
        ranges = {"attention_mask": [0, 1, "attention mask values (1: token, 0: padding)"]}
        if self.vocab_size:
            ranges["input_ids"] = [0, self.vocab_size - 1, f"token ids below vocab_size {self.vocab_size}"]
        if self.type_vocab_size:
            ranges["token_type_ids"] = [0, self.type_vocab_size - 1,
                                        f"token type ids below type_vocab_size {self.type_vocab_size}"]
        return {"max_sequence_length": self.max_length,
                "value_ranges": {name: ranges[name] for name in TOKEN_OUTPUTS
                                 if name in self.inputs and name in ranges},
                "max_text_bytes": self.max_text_bytes}

    def lengths(self, seq_len: int | None = None) -> tuple[int, ...]:
        """The padded lengths a request can get; with seq_len, exactly that one."""
        if seq_len:
            return (min(seq_len, self.max_length),)
        return bucket_lengths(self.max_length, self.buckets)

    def companions(self, name: str, io: ModelIO, serving: ServingOptions) -> tuple[CompanionModel, ...]:
        if set(io.input_names) != set(self.inputs):
            raise TritonForgeError(f"a text ensemble feeds {list(self.inputs)}, the model takes "
                                   f"{io.input_names}")
        parameters = {"tokenizer_file": TOKENIZER_FILE, "max_length": str(self.max_length),
                      "buckets": ",".join(map(str, self.lengths())),
                      "pad_token_id": str(self.pad_token_id), "inputs": ",".join(self.inputs),
                      "max_text_bytes": str(self.max_text_bytes)}
        return preprocessing_companions(name, io, serving, self, TOKENIZER_SUFFIX, TEXT_TOKENIZER_MODEL,
                                        parameters, {TOKENIZER_FILE: self.tokenizer})

    def encode(self, raw: Sequence[str], io: ModelIO, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        seq_len = (shape or {}).get("seq_len")
        if folder is None:
            raise TritonForgeError(
                "this model takes token arrays: pass --repo so its tokenizer can be used, or send "
                f"text to its `{self.suffix}` ensemble")
        tokenizer = self.load_tokenizer(folder, seq_len)
        return encode(tokenizer, list(self.read_raw(raw)), self.lengths(seq_len), self.pad_token_id,
                      self.inputs)

    def load_tokenizer(self, folder: Path, seq_len: int | None = None):
        path = Path(folder) / self.tokenizer
        if not path.is_file():
            raise TritonForgeError(f"{path} is missing: the tokenizer was not saved with this version; "
                                   "export the model again")
        return cached_tokenizer(str(path), min(seq_len or self.max_length, self.max_length))
