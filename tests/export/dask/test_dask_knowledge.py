"""DASK's knowledge side: graph filtering and indexing, the injection table, pivot words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.export.dask.knowledge import (
    WORDNET_GRAPH,
    KnowledgeGraph,
    Triple,
    compute_pivots,
    injection_table,
    load_graph,
    load_pivots,
    read_labeled,
    read_texts,
    relation_name,
    write_pivots,
)


def graph_file(tmp_path: Path, text: str, name: str = "kg.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def triples_of(graph: KnowledgeGraph) -> list[tuple[str, str, str, float]]:
    return [tuple(t) for t in graph.triples]


# --- loading and filtering -------------------------------------------------------------------

def test_graph_is_lower_cased_and_triples_below_the_threshold_are_dropped(tmp_path):
    graph = load_graph(graph_file(tmp_path, "Good\tAntonym\tBAD\t0.9\n"
                                            "good\tsynonym\tfine\t0.2\n"
                                            "good\tsynonym\tsound\t0.19\n"), min_confidence=0.2)
    assert triples_of(graph) == [("good", "antonym", "bad", 0.9), ("good", "synonym", "fine", 0.2)]


def test_confidence_is_optional_and_defaults_to_one(tmp_path):
    graph = load_graph(graph_file(tmp_path, "happy\tsynonym\tglad\n"))
    assert triples_of(graph) == [("happy", "synonym", "glad", 1.0)]


def test_multi_word_elements_and_self_loops_are_dropped(tmp_path):
    graph = load_graph(graph_file(tmp_path, "ice cream\tis_a\tdessert\n"
                                            "ice_cream\tis_a\tdessert\n"
                                            "well-known\tsynonym\tfamous\n"
                                            "mp3\tis_a\tformat\n"
                                            "good\tsynonym\tgood\n"
                                            "cake\tis_a\tdessert\n"))
    assert triples_of(graph) == [("cake", "is_a", "dessert", 1.0)]


def test_duplicates_are_merged_keeping_the_highest_confidence(tmp_path):
    graph = load_graph(graph_file(tmp_path, "good\tantonym\tbad\t0.5\n"
                                            "GOOD\tAntonym\tbad\t0.9\n"
                                            "good\tantonym\tbad\t0.7\n"))
    assert triples_of(graph) == [("good", "antonym", "bad", 0.9)]


def test_blank_and_comment_lines_are_skipped(tmp_path):
    graph = load_graph(graph_file(tmp_path, "# head\trelation\ttail\n\n   \nhappy\tsynonym\tglad\n"))
    assert len(graph) == 1


@pytest.mark.parametrize("raw, name", [("/r/RelatedTo", "related_to"), ("RelatedTo", "related_to"),
                                       ("IsA", "is_a"), ("similar_to", "similar_to"),
                                       ("Synonym", "synonym"), ("related to", "related_to")])
def test_relation_names_are_normalised(raw, name):
    assert relation_name(raw) == name


def test_conceptnet_uris_keep_the_english_term_and_drop_other_languages(tmp_path):
    graph = load_graph(graph_file(tmp_path, "/c/en/good/a\t/r/Antonym\t/c/en/bad/a\t2.0\n"
                                            "/c/fr/bon\t/r/Synonym\t/c/en/good\t1.0\n"
                                            "/c/en/good\t/r/Synonym\t/c/de/gut\t1.0\n"))
    assert triples_of(graph) == [("good", "antonym", "bad", 2.0)]


def test_conceptnet_assertion_dump_reads_the_weight_from_its_json(tmp_path):
    rows = [("/a/[/r/Antonym/,/c/en/good/,/c/en/bad/]", "/r/Antonym", "/c/en/good", "/c/en/bad",
             {"dataset": "/d/wiktionary/en", "weight": 2.5}),
            ("/a/[/r/RelatedTo/,/c/en/good/,/c/en/nice/]", "/r/RelatedTo", "/c/en/good", "/c/en/nice",
             {"weight": 0.1})]
    text = "".join("\t".join([*row[:4], json.dumps(row[4])]) + "\n" for row in rows)
    graph = load_graph(graph_file(tmp_path, text, "assertions.csv"))
    assert triples_of(graph) == [("good", "antonym", "bad", 2.5)]


def test_crlf_line_endings_and_a_utf8_bom_are_read(tmp_path):
    path = tmp_path / "windows.tsv"
    path.write_bytes("\ufeffGood\tAntonym\tBad\t0.9\r\nhappy\tsynonym\tglad\r\n".encode())
    assert triples_of(load_graph(path)) == [("good", "antonym", "bad", 0.9),
                                            ("happy", "synonym", "glad", 1.0)]


@pytest.mark.parametrize("bad_line, problem", [
    ("good\tantonym", "2 tab-separated fields"),
    ("good\tantonym\tbad\thigh", "confidence 'high' is not a number"),
    ("good\tantonym\tbad\tnan", "confidence 'nan' is not a number"),
    ("\tantonym\tbad", "the head is empty"),
    ("good\t\tbad", "the relation is empty"),
    ("a\tb\tc\td\te\tf", "6 tab-separated fields"),
])
def test_a_malformed_line_names_the_file_the_line_and_the_format(tmp_path, bad_line, problem):
    path = graph_file(tmp_path, f"# comment\nhappy\tsynonym\tglad\n{bad_line}\n")
    with pytest.raises(TritonForgeError) as error:
        load_graph(path)
    message = str(error.value)
    assert f"{path}, line 3: {problem}" in message
    assert repr(bad_line) in message
    assert "head<TAB>relation<TAB>tail" in message


def test_a_long_malformed_line_is_shown_truncated(tmp_path):
    path = graph_file(tmp_path, "word " * 100 + "\n")
    with pytest.raises(TritonForgeError, match=r"line 1: 1 tab-separated fields in 'word word .*\.\.\.;"):
        load_graph(path)


def test_a_missing_graph_file_is_named(tmp_path):
    with pytest.raises(TritonForgeError, match=r"nowhere\.tsv does not exist"):
        load_graph(tmp_path / "nowhere.tsv")


def test_a_graph_with_nothing_left_after_filtering_is_refused(tmp_path):
    path = graph_file(tmp_path, "good\tantonym\tbad\t0.1\n")
    with pytest.raises(TritonForgeError, match=r"no triple .* passes the filter \(1 read.*--min-confidence"):
        load_graph(path)


# --- branches --------------------------------------------------------------------------------

def test_a_triple_is_indexed_under_its_head_its_tail_and_its_relation():
    graph = KnowledgeGraph((Triple("good", "related_to", "nice", 1.0),))
    assert graph.entries("good") == ["related to nice"]
    assert graph.entries("nice") == ["good related to"]
    assert graph.entries("related_to") == ["good nice"]
    assert graph.entries("GOOD") == ["related to nice"]
    assert graph.entries("unknown") == []


def test_entries_come_by_confidence_then_head_before_tail_indexing_then_alphabetically():
    graph = KnowledgeGraph((Triple("adept", "synonym", "good", 1.0),
                            Triple("good", "antonym", "evil", 1.0),
                            Triple("good", "antonym", "bad", 1.0),
                            Triple("good", "is_a", "quality", 0.6),
                            Triple("good", "similar_to", "nice", 0.8)))
    assert graph.entries("good") == ["antonym bad", "antonym evil", "adept synonym",
                                     "similar to nice", "is a quality"]


def test_injection_table_keeps_the_first_branches_of_each_known_pivot_in_pivot_order():
    graph = KnowledgeGraph((Triple("good", "antonym", "bad", 1.0),
                            Triple("good", "synonym", "fine", 0.9),
                            Triple("good", "synonym", "nice", 0.9),
                            Triple("boring", "synonym", "dull", 1.0)))
    table = injection_table(graph, ["good", "refund", "boring", "Good"], max_triples=2)
    assert table == {"good": ["antonym bad", "synonym fine"], "boring": ["synonym dull"]}
    assert list(table) == ["good", "boring"]
    assert injection_table(graph, ["good"], max_triples=1) == {"good": ["antonym bad"]}


def test_injection_table_refuses_no_triples_and_scored_pivots():
    graph = KnowledgeGraph((Triple("good", "antonym", "bad", 1.0),))
    with pytest.raises(TritonForgeError, match="at least 1 triple"):
        injection_table(graph, ["good"], max_triples=0)
    with pytest.raises(TritonForgeError, match=r"\('good', 0\.5\) is not a word"):
        injection_table(graph, [("good", 0.5)])


# --- pivots ----------------------------------------------------------------------------------

# Source documents (label, text); document frequencies and polarities worked out by hand:
#   great: positive docs 1, 2; negative doc 4; neutral doc 5 -> s = (2 - 1) / 4 = 0.25
#   boring: negative docs 3, 4                               -> s = (0 - 2) / 2 = -1.0
#   movie: docs 1, 3, 5 (one of each label)                  -> s = 0, but absent from the target
SOURCE = [(1, "Great movie!"), ("positive", "great plot, GREAT cast"), (0, "boring movie"),
          ("negative", "boring plot but great cast"), ("neutral", "the great movie")]
TARGET = ["a great phone", "great battery", "boring phone", "Boring screen", "the phone"]


def source_corpus():
    return [text for _label, text in SOURCE], [label for label, _text in SOURCE]


def test_pivots_occur_in_both_domains_and_are_ranked_by_absolute_polarity():
    texts, labels = source_corpus()
    pivots = compute_pivots(texts, labels, TARGET, min_occur=2)
    assert pivots == [("boring", -1.0), ("great", 0.25)]
    assert compute_pivots(texts, labels, TARGET, min_occur=2, num_pivots=1) == [("boring", -1.0)]


def test_equal_polarity_goes_to_the_more_frequent_word_then_alphabetically():
    # |s| = 1 for all four; documents (source + target): love 4, hate 3, adore 2, zest 2.
    pivots = compute_pivots(["love adore", "love zest", "hate"], [1, 1, 0],
                            ["love", "hate", "adore", "zest", "hate love"], min_occur=1)
    assert pivots == [("love", 1.0), ("hate", -1.0), ("adore", 1.0), ("zest", 1.0)]


def test_too_high_min_occur_says_how_far_the_corpus_reaches():
    texts, labels = source_corpus()
    with pytest.raises(TritonForgeError, match=r"at least 3 source .* best any word reaches in both is 2\)"
                                               r": lower --min-occur to 2"):
        compute_pivots(texts, labels, TARGET, min_occur=3)


@pytest.mark.parametrize("texts, labels, target, match", [
    ([], [], ["x"], "list of source texts: got \\[\\]"),
    (["good"], [1], [], "list of target texts: got \\[\\]"),
    (["good", "bad"], [1], ["good"], "1 labels for 2 source texts"),
    (["good"], ["great"], ["good"], "source label 0 is 'great': use 0/1"),
    (["good"], [2], ["good"], "source label 0 is 2"),
])
def test_pivot_inputs_are_checked(texts, labels, target, match):
    with pytest.raises(TritonForgeError, match=match):
        compute_pivots(texts, labels, target, min_occur=1)


def test_pivots_round_trip_through_a_pivot_file(tmp_path):
    path = write_pivots([("boring", -1.0), ("great", 0.25)], tmp_path / "out" / "pivots.tsv")
    assert path.read_text(encoding="utf-8").splitlines()[1:] == ["boring\t-1.000000", "great\t0.250000"]
    assert load_pivots(path) == ["boring", "great"]


def test_pivot_file_is_lower_cased_deduplicated_and_scores_are_optional(tmp_path):
    path = graph_file(tmp_path, "\ufeffGood\r\n# comment\r\n\r\nbad\t-0.5\r\ngood\t1\r\n", "pivots.tsv")
    assert load_pivots(path) == ["good", "bad"]


@pytest.mark.parametrize("bad_line, problem", [("ice cream", "'ice cream' is not one word"),
                                               ("good\tvery", "score 'very' is not a number"),
                                               ("good\t1\textra", "3 tab-separated fields")])
def test_pivot_file_errors_name_the_file_and_line(tmp_path, bad_line, problem):
    path = graph_file(tmp_path, f"bad\n{bad_line}\n", "pivots.tsv")
    with pytest.raises(TritonForgeError, match=rf"pivots\.tsv, line 2: {problem}"):
        load_pivots(path)


def test_missing_and_empty_pivot_files_are_refused(tmp_path):
    with pytest.raises(TritonForgeError, match=r"nope\.tsv does not exist: expected a file with one pivot"):
        load_pivots(tmp_path / "nope.tsv")
    with pytest.raises(TritonForgeError, match="holds no pivot word"):
        load_pivots(graph_file(tmp_path, "# only a comment\n", "empty.tsv"))


# --- text files for `dask pivots` --------------------------------------------------------------

def test_labelled_file_gives_texts_and_label_names(tmp_path):
    path = graph_file(tmp_path, "1\tGreat flight\r\nnegative\tlate again\ttwice\n\nNeutral\t#delta\n",
                      "source.tsv")
    assert read_labeled(path) == (["Great flight", "late again\ttwice", "#delta"],
                                  ["positive", "negative", "neutral"])


@pytest.mark.parametrize("bad_line, problem", [("great flight", "no text after the label"),
                                               ("1\t  ", "no text after the label"),
                                               ("5\tgreat", "label '5' is not 0/1")])
def test_labelled_file_errors_name_the_file_and_line(tmp_path, bad_line, problem):
    path = graph_file(tmp_path, f"0\tlate\n{bad_line}\n", "source.tsv")
    with pytest.raises(TritonForgeError, match=rf"source\.tsv, line 2: {problem}.*label<TAB>text"):
        read_labeled(path)


def test_target_file_is_its_non_blank_lines(tmp_path):
    path = graph_file(tmp_path, "\ufeffnew phone\r\n\r\n#apple rocks\r\n", "target.txt")
    assert read_texts(path) == ["new phone", "#apple rocks"]
    with pytest.raises(TritonForgeError, match=r"empty\.txt holds no text"):
        read_texts(graph_file(tmp_path, "\n\n", "empty.txt"))


def test_text_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(TritonForgeError, match=r"latin1\.txt, line 2: bytes that are not UTF-8"):
        read_texts(path)


# --- the shipped WordNet graph -----------------------------------------------------------------

def test_shipped_wordnet_graph_has_sentiment_antonyms_and_a_sensible_first_branch():
    graph = load_graph(WORDNET_GRAPH)
    triples = {t[:3] for t in graph.triples}
    assert ("good", "antonym", "bad") in triples and ("bad", "antonym", "good") in triples
    assert ("love", "antonym", "hate") in triples
    assert graph.entries("good")[0] == "antonym bad"
    assert 20_000 <= len(graph) <= 60_000
    assert {t.relation for t in graph.triples} == {"synonym", "antonym", "similar_to", "is_a"}
    assert WORDNET_GRAPH.stat().st_size < 2_000_000
    assert (WORDNET_GRAPH.parent / "WORDNET_LICENSE.txt").is_file()
