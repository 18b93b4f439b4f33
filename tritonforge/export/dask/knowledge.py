"""DASK's knowledge side: a filtered knowledge graph, the branch texts it offers a word, and
the pivot words whose knowledge is injected (Yu et al., IJCAI-ECAI 2022; hikaru-nara/DASK).

Graph. A TSV of triples `head<TAB>relation<TAB>tail[<TAB>confidence]` (confidence 1.0 when
absent), or ConceptNet's assertion dump (`uri<TAB>/r/Rel<TAB>/c/en/head<TAB>/c/en/tail<TAB>{json}`,
the confidence is the JSON's "weight"). Elements may be ConceptNet URIs: `/c/en/good/a` is
"good"; terms of other languages (`/c/fr/bon`) are dropped. The filter is DASK's
`conf_uncased` one: everything lower-cased, confidence below `min_confidence` dropped, head and
tail must each be one word, duplicates merged. Where we differ from the reference, and why:

- "one word" is one run of letters (`WORD`), the same rule that tokenises text for pivots, so
  every kept head can match a pivot; the reference's `\\W` test also keeps digits and `_`;
- a triple at exactly the threshold is kept (the reference keeps only confidence > threshold);
- the reference drops a triple when any element is a substring of another; we drop only a
  triple whose head is its tail;
- a duplicated triple keeps its highest confidence.

Relation names are normalised: `/r/` removed, CamelCase split, lower-cased, words joined by
`_` (`/r/RelatedTo`, `RelatedTo` and `related_to` are all `related_to`); in branch texts they
read as words ("related to"). CamelCase can only be split before lower-casing, so a file that
writes `relatedto` keeps it as one word.

Branches. Like the reference's `_create_lookup_table`, a triple (h, r, t) is indexed under its
head as "r t", under its tail as "h r" and under its relation as "h t". The reference samples
the branches it injects at random; serving must be deterministic, so `entries` orders them by
highest confidence, then head indexing before tail before relation, then by the branch text.
The middle rule matters for symmetric relations stored both ways (as ConceptNet and our
WordNet graph do): "good" gets "antonym bad" before "adept synonym", which reads backwards
as a branch after "good" and would otherwise win alphabetically.

Pivots. Words that occur in at least `min_occur` documents of both domains, ranked by the
absolute source polarity s(w) = (#positive − #negative source docs with w) / #source docs
with w. The reference also counts unlabelled source text towards the frequency and removes
stopwords; stopwords have |s| near 0 and rank low anyway.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from tritonforge.errors import TritonForgeError

# One word: a run of letters (Unicode-aware, no digits or `_`). Tokenises text for pivots and
# decides which graph elements are single words.
WORD = re.compile(r"[^\W\d_]+")
# The shipped English sentiment graph (WordNet 3.0; built by scripts/build_wordnet_graph.py).
WORDNET_GRAPH = Path(__file__).resolve().parents[2] / "data" / "knowledge" / "wordnet_sentiment.tsv"
LABEL_NAMES = {"0": "negative", "1": "positive",
               "negative": "negative", "neutral": "neutral", "positive": "positive"}
POLARITY = {"negative": -1, "neutral": 0, "positive": 1}
SHOWN_CHARS = 80

GRAPH_FORMAT = ("head<TAB>relation<TAB>tail[<TAB>confidence] per line, or a ConceptNet assertion "
                "line uri<TAB>/r/Relation<TAB>/c/en/head<TAB>/c/en/tail<TAB>{\"weight\": ...}")
PIVOT_FORMAT = "one pivot word per line, optionally followed by <TAB>score"
LABELED_FORMAT = "label<TAB>text per line, the label 0/1 or negative/neutral/positive"
TEXT_FORMAT = "one text per line"


class Triple(NamedTuple):
    head: str
    relation: str
    tail: str
    confidence: float


@dataclass(frozen=True)
class KnowledgeGraph:
    """Filtered triples, sorted by (head, relation, tail)."""

    triples: tuple[Triple, ...]

    def __len__(self) -> int:
        return len(self.triples)

    @cached_property
    def _branches(self) -> dict[str, tuple[str, ...]]:
        # key -> branch text -> its sort key (-confidence, indexing: 0 head, 1 tail, 2 relation)
        ranks: dict[str, dict[str, tuple[float, int]]] = defaultdict(dict)
        for head, relation, tail, confidence in self.triples:
            words = relation_words(relation)
            for indexing, (key, text) in enumerate(((head, f"{words} {tail}"), (tail, f"{head} {words}"),
                                                   (relation, f"{head} {tail}"))):
                rank = (-confidence, indexing)
                ranks[key][text] = min(rank, ranks[key].get(text, rank))
        return {key: tuple(sorted(texts, key=lambda text: (*texts[text], text)))
                for key, texts in ranks.items()}

    def entries(self, word: str) -> list[str]:
        """The branch texts the graph offers `word`: highest confidence first; at equal
        confidence the head indexing ("antonym bad" for good) before the tail indexing ("bad
        antonym"), then the relation indexing; then A-Z."""
        return list(self._branches.get(word.lower(), ()))


def relation_name(raw: str) -> str:
    """`/r/RelatedTo`, `RelatedTo`, `related to` -> `related_to`; `IsA` -> `is_a`."""
    name = raw.strip().removeprefix("/r/")
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"[\s/_-]+", "_", name).strip("_").lower()


def relation_words(relation: str) -> str:
    """How a relation reads in a branch: `related_to` -> "related to"."""
    return relation.replace("_", " ")


def word_tokens(text: str) -> list[str]:
    """The lower-cased words of a text: runs of letters ("Don't" -> "don", "t")."""
    return WORD.findall(text.lower())


def load_graph(path: str | Path, min_confidence: float = 0.2) -> KnowledgeGraph:
    """Read and filter a knowledge-graph TSV (see the module docstring for the rules)."""
    best: dict[tuple[str, str, str], float] = {}
    read = 0
    for number, line in _lines(path, GRAPH_FORMAT):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        read += 1
        triple = _graph_triple(line.split("\t"), _failure(path, number, line, GRAPH_FORMAT))
        if triple is None or triple.confidence < min_confidence:
            continue
        key = triple[:3]
        best[key] = max(triple.confidence, best.get(key, triple.confidence))
    if not best:
        raise TritonForgeError(
            f"no triple of {path} passes the filter ({read} read; kept are English triples with "
            f"one-word head and tail and confidence >= {min_confidence}): lower --min-confidence "
            f"or check the file is {GRAPH_FORMAT}")
    return KnowledgeGraph(tuple(Triple(*key, confidence) for key, confidence in sorted(best.items())))


def injection_table(graph: KnowledgeGraph, pivots: Iterable[str],
                    max_triples: int = 2) -> dict[str, list[str]]:
    """For each pivot the graph knows, its first `max_triples` branch texts, in pivot order:
    the table an exported model ships so that pre-processing never loads the graph."""
    if max_triples < 1:
        raise TritonForgeError(f"max_triples is {max_triples}: inject at least 1 triple per pivot")
    table: dict[str, list[str]] = {}
    for pivot in pivots:
        if not isinstance(pivot, str):
            raise TritonForgeError(f"pivot {pivot!r} is not a word: pass words, e.g. "
                                   f"[word for word, _score in compute_pivots(...)]")
        word = pivot.lower()
        branches = graph.entries(word)[:max_triples]
        if branches and word not in table:
            table[word] = branches
    return table


def compute_pivots(source_texts: Sequence[str], source_labels: Sequence[int | str],
                   target_texts: Sequence[str], min_occur: int = 10,
                   num_pivots: int = 500) -> list[tuple[str, float]]:
    """DASK's pivots: (word, s(w)) for words in >= `min_occur` documents of the labelled source
    and of the target, the `num_pivots` largest |s(w)| first; ties go to the word in more
    documents (source + target), then A-Z. Labels are 0/1 or negative/neutral/positive; a
    neutral document counts in the denominator of s(w) only. Words are `word_tokens`."""
    for name, texts in (("source texts", source_texts), ("target texts", target_texts)):
        if isinstance(texts, str) or len(texts) == 0:
            raise TritonForgeError(f"pivots need a list of {name}: got {_preview(texts)}")
    if len(source_labels) != len(source_texts):
        raise TritonForgeError(f"{len(source_labels)} labels for {len(source_texts)} source texts: "
                               f"give one label per text")
    if min_occur < 1 or num_pivots < 1:
        raise TritonForgeError(f"min_occur {min_occur} and num_pivots {num_pivots} must both be >= 1")

    source_df, positive_df, negative_df, target_df = Counter(), Counter(), Counter(), Counter()
    for index, (text, label) in enumerate(zip(source_texts, source_labels, strict=True)):
        name = label_name(label)
        if name is None:
            raise TritonForgeError(f"source label {index} is {label!r}: use 0/1 or "
                                   f"negative/neutral/positive")
        words = set(word_tokens(text))
        source_df.update(words)
        if POLARITY[name] > 0:
            positive_df.update(words)
        elif POLARITY[name] < 0:
            negative_df.update(words)
    for text in target_texts:
        target_df.update(set(word_tokens(text)))

    shared = [w for w, df in source_df.items() if df >= min_occur and target_df[w] >= min_occur]
    if not shared:
        reach = max((min(df, target_df[w]) for w, df in source_df.items() if w in target_df), default=0)
        raise TritonForgeError(
            f"no word occurs in at least {min_occur} source and {min_occur} target documents "
            f"(the best any word reaches in both is {reach}): "
            + (f"lower --min-occur to {reach} or give more text" if reach else
               "the two domains share no word; check the files"))
    polarity = {w: (positive_df[w] - negative_df[w]) / source_df[w] for w in shared}
    shared.sort(key=lambda w: (-abs(polarity[w]), -(source_df[w] + target_df[w]), w))
    return [(w, polarity[w]) for w in shared[:num_pivots]]


def label_name(label: int | str) -> str | None:
    """negative/neutral/positive for an accepted label (0, 1, "0", "1" or a name), else None."""
    if isinstance(label, numbers.Integral):
        label = str(int(label))
    return LABEL_NAMES.get(label.strip().lower()) if isinstance(label, str) else None


def load_pivots(path: str | Path) -> list[str]:
    """Pivot words, lower-cased, in file order, each once."""
    words: list[str] = []
    for number, line in _lines(path, PIVOT_FORMAT):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fail = _failure(path, number, line, PIVOT_FORMAT)
        fields = line.split("\t")
        word = fields[0].strip().lower()
        if len(fields) > 2:
            raise fail(f"{len(fields)} tab-separated fields")
        if not WORD.fullmatch(word):
            raise fail(f"{word!r} is not one word (letters only)")
        if len(fields) == 2 and not _is_number(fields[1]):
            raise fail(f"score {fields[1].strip()!r} is not a number")
        if word not in words:
            words.append(word)
    if not words:
        raise TritonForgeError(f"{path} holds no pivot word: expected {PIVOT_FORMAT}")
    return words


def write_pivots(pivots: Iterable[tuple[str, float]], path: str | Path) -> Path:
    """Write `word<TAB>score` lines (what `compute_pivots` returns), readable by `load_pivots`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# word\tpolarity s(w) = (positive - negative) / source documents with w\n"]
    lines += [f"{word}\t{score:.6f}\n" for word, score in pivots]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_labeled(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, label names) of a `label<TAB>text` file; labels become negative/neutral/positive."""
    texts: list[str] = []
    labels: list[str] = []
    for number, line in _lines(path, LABELED_FORMAT):
        if not line.strip():
            continue
        fail = _failure(path, number, line, LABELED_FORMAT)
        label, tab, text = line.partition("\t")
        if not tab or not text.strip():
            raise fail("no text after the label")
        name = label_name(label)
        if name is None:
            raise fail(f"label {label.strip()!r} is not 0/1 or negative/neutral/positive")
        texts.append(text.strip())
        labels.append(name)
    if not texts:
        raise TritonForgeError(f"{path} holds no labelled text: expected {LABELED_FORMAT}")
    return texts, labels


def read_texts(path: str | Path) -> list[str]:
    """The non-blank lines of a text file, stripped (a `#` line is text: tweets start so)."""
    texts = [line.strip() for _number, line in _lines(path, TEXT_FORMAT) if line.strip()]
    if not texts:
        raise TritonForgeError(f"{path} holds no text: expected {TEXT_FORMAT}")
    return texts


def _graph_triple(fields: list[str], fail: Callable[[str], TritonForgeError]) -> Triple | None:
    """The normalised triple of one line's fields; None when the filter drops it."""
    if len(fields) == 5 and fields[1].startswith("/r/"):  # ConceptNet assertion
        _uri, relation, head, tail, extra = fields
        try:
            weight = json.loads(extra).get("weight", 1.0)
        except (ValueError, AttributeError):
            raise fail("the fifth field is not a JSON object") from None
    elif len(fields) in (3, 4):
        head, relation, tail = fields[:3]
        weight = fields[3] if len(fields) == 4 and fields[3].strip() else 1.0
    else:
        raise fail(f"{len(fields)} tab-separated fields")
    if not _is_number(weight):
        raise fail(f"confidence {weight!r} is not a number")
    head, tail, relation = _term(head), _term(tail), relation_name(relation)
    for role, value in (("head", head), ("relation", relation), ("tail", tail)):
        if value == "":
            raise fail(f"the {role} is empty")
    if head is None or tail is None:  # another language
        return None
    if head == tail or not (WORD.fullmatch(head) and WORD.fullmatch(tail)):
        return None
    return Triple(head, relation, tail, float(weight))


def _term(raw: str) -> str | None:
    """A graph element, lower-cased: the English term of a ConceptNet URI (`/c/en/good/a` ->
    "good"), None for another language, the text itself otherwise."""
    raw = raw.strip()
    if raw.startswith("/c/"):
        parts = raw.split("/")  # ['', 'c', language, term, ...]
        if len(parts) > 2 and parts[2] != "en":
            return None
        raw = parts[3] if len(parts) > 3 else ""
    return raw.lower()


def _is_number(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _preview(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS - 3] + "..."


def _failure(path: str | Path, number: int, line: str, expected: str) -> Callable[[str], TritonForgeError]:
    """An error factory for one line: file, line number, the line itself and the format."""
    def fail(problem: str) -> TritonForgeError:
        return TritonForgeError(f"{path}, line {number}: {problem} in {_preview(line)}; expected {expected}")
    return fail


def _lines(path: str | Path, expected: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) of a UTF-8 file; a BOM and CRLF endings are fine."""
    path = Path(path)
    if not path.is_file():
        raise TritonForgeError(f"{path} does not exist: expected a file with {expected}")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                raise _failure(path, number, line, expected)("bytes that are not UTF-8") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            yield number, line.rstrip("\r\n")
