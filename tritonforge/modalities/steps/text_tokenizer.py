"""Triton python-backend model: raw strings -> BERT token arrays, the first step of `<name>_text`.

Copied into the model repository by `export` (it runs in any Triton with the python backend,
the NGC image included), with the artifact's tokenizer.json beside it. It imports only numpy,
`tokenizers` and, inside Triton, `triton_python_backend_utils`; `encode` is also what
tritonforge's own client uses to tokenize, so both produce the same arrays.

Length buckets: Triton's dynamic batcher merges only requests whose shapes are equal (and only
neighbours in its queue), so a request is not padded to its own length but to the smallest
bucket (16, 32, 64, ... up to max_length) that holds its longest text. Requests are padded
each on its own, not to the longest of all requests that reach one `execute` call: that lines
them up for the batcher, but on a CPU the padding cost more than batching gained (measured on
MiniLM at concurrency 16: 79 req/s padded together vs 131 req/s padded each). Texts longer
than max_length are truncated, as sentence-transformers does. Refused, each with
INVALID_ARGUMENT and a message naming TEXT[i] and the limit, before anything is tokenized: a
text above max_text_bytes (a tokenizer reads all of a text before truncating it), bytes that are
not UTF-8, an empty (or whitespace-only) string. The number of texts is Triton's to check
(max_batch_size, one text per row).

Config parameters: tokenizer_file, max_length, buckets (comma-separated), pad_token_id, inputs
(the token arrays the model takes, comma-separated: a subset of TOKEN_OUTPUTS), max_text_bytes.
"""

from __future__ import annotations

import json
import os

import numpy as np

try:  # present only inside Triton's Python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tritonforge's client for `encode`
    pb_utils = None

TEXT_INPUT = "TEXT"
TOKEN_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)
# 64 KiB of UTF-8 is some 10,000 words, far beyond 512 tokens: a client sending more is sending
# a document whole, and the tokenizer would read all of it to keep its first max_length tokens.
MAX_TEXT_BYTES = 64 * 1024


def bucket_lengths(max_length: int, buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The padded lengths a request can get: the buckets below max_length, then max_length."""
    return tuple(b for b in buckets if b < max_length) + (max_length,)


def load_tokenizer(path: str, max_length: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def empty_text_error(texts: list[str]) -> str | None:
    for index, text in enumerate(texts):
        if not text.strip():
            return (f"TEXT[{index}] is an empty string ({text!r}): send at least one non-space "
                    "character per text")
    return None


def text_size_error(items: list[bytes], max_bytes: int) -> str | None:
    for index, item in enumerate(items):
        if len(item) > max_bytes:
            return (f"TEXT[{index}] is {len(item):,} bytes, above this model's limit of {max_bytes:,} "
                    "(max_text_bytes): send a shorter text (only its first tokens are read anyway)")
    return None


def utf8_texts(items: list[bytes]) -> tuple[list[str], str | None]:
    """The texts, or the problem with the first one that is not UTF-8."""
    texts = []
    for index, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return [], (f"TEXT[{index}] is not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
                        f"{exc.start}: {exc.reason}): send text encoded as UTF-8")
    return texts, None


def bucket_for(longest: int, lengths: tuple[int, ...]) -> int:
    """The smallest bucket that holds `longest` tokens (texts are truncated to the last one)."""
    return next((b for b in lengths if b >= longest), lengths[-1])


def padded_arrays(encodings: list, length: int, pad_token_id: int,
                  names: tuple[str, ...] = TOKEN_OUTPUTS) -> dict[str, np.ndarray]:
    """Token arrays [len(encodings), length]: those of TOKEN_OUTPUTS named in `names`."""
    arrays = {"input_ids": np.full((len(encodings), length), pad_token_id, dtype=np.int64),
              "attention_mask": np.zeros((len(encodings), length), dtype=np.int64),
              "token_type_ids": np.zeros((len(encodings), length), dtype=np.int64)}
    for row, encoding in enumerate(encodings):
        count = len(encoding.ids)
        arrays["input_ids"][row, :count] = encoding.ids
        arrays["attention_mask"][row, :count] = encoding.attention_mask
        arrays["token_type_ids"][row, :count] = encoding.type_ids
    return {name: arrays[name] for name in names}


def encode(tokenizer, texts: list[str], lengths: tuple[int, ...], pad_token_id: int,
           names: tuple[str, ...] = TOKEN_OUTPUTS) -> dict[str, np.ndarray]:
    """One request's texts, padded to the smallest bucket that holds the longest of them."""
    encodings = tokenizer.encode_batch(texts)
    length = bucket_for(max(len(e.ids) for e in encodings), lengths)
    return padded_arrays(encodings, length, pad_token_id, names)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        max_length = int(parameters["max_length"])
        self.tokenizer = load_tokenizer(os.path.join(folder, parameters["tokenizer_file"]), max_length)
        buckets = tuple(int(b) for b in parameters.get("buckets", "").split(",") if b)
        self.lengths = bucket_lengths(max_length, buckets or DEFAULT_BUCKETS)
        self.pad_token_id = int(parameters["pad_token_id"])
        self.names = tuple(parameters.get("inputs", ",".join(TOKEN_OUTPUTS)).split(","))
        self.max_text_bytes = int(parameters.get("max_text_bytes", MAX_TEXT_BYTES))

    def execute(self, requests: list) -> list:
        return [self._tokenize(request) for request in requests]

    def _tokenize(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT).as_numpy().reshape(-1)
        items = [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in raw]
        texts, problem = [], text_size_error(items, self.max_text_bytes)
        if not problem:
            texts, problem = utf8_texts(items)
        problem = problem or empty_text_error(texts)
        if problem:
            return invalid_argument(problem)
        arrays = encode(self.tokenizer, texts, self.lengths, self.pad_token_id, self.names)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, arrays[name]) for name in self.names])


def invalid_argument(message: str):
    """An error response that tells the client the request was wrong (gRPC INVALID_ARGUMENT)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)
