"""The K-BERT sentence tree of DASK (export/dask/knowledge_injection.py): hand-worked trees on
a tiny WordPiece vocabulary, truncation, buckets, errors, knowledge.json, and MiniLM's tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from tritonforge.export.dask.knowledge_injection import (
    Injection,
    InjectionError,
    KnowledgeInjector,
    TritonPythonModel,
    inject_requests,
    write_knowledge,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "movie", "was", "good", "!", "antonym", "bad",
         "similar", "to", "great", "un", "##believ", "##able", "a", "##a", "plot"]
ID = {token: index for index, token in enumerate(VOCAB)}
GOOD = {"good": ["antonym bad", "similar to great"]}


def tiny_tokenizer(vocab: list[str] = VOCAB) -> Tokenizer:
    """BERT's pipeline (lower-casing normaliser, whitespace+punctuation split, WordPiece) on VOCAB."""
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def injector(knowledge=GOOD, **options) -> KnowledgeInjector:
    return KnowledgeInjector(tiny_tokenizer(), knowledge, **options)


def ids(*tokens: str) -> list[int]:
    return [ID[token] for token in tokens]


def row(result: Injection, index: int = 0) -> dict:
    """One text's arrays without padding."""
    n = int(result.lengths[index])
    return {"input_ids": result.input_ids[index, :n].tolist(),
            "position_ids": result.position_ids[index, :n].tolist(),
            "visible_matrix": result.visible_matrix[index, :n, :n].tolist()}


def assert_same(a: Injection, b: Injection) -> None:
    for name in ("input_ids", "position_ids", "visible_matrix", "attention_mask", "truncated",
                 "lengths", "injected"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name


# ---------------------------------------------------------------- the tree, worked by hand

def test_worked_example_places_both_branches_after_their_word():
    result = injector().inject(["The movie was good !"])
    # [CLS] the movie was good | antonym bad | similar to great | ! [SEP]
    assert result.input_ids[0, :12].tolist() == ids(
        "[CLS]", "the", "movie", "was", "good", "antonym", "bad", "similar", "to", "great", "!", "[SEP]")
    assert result.input_ids[0, :12].tolist() == [2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 8, 3]
    # trunk 0..4, both branches restart after good (4), the trunk goes on at 5
    assert result.position_ids[0, :12].tolist() == [0, 1, 2, 3, 4, 5, 6, 5, 6, 7, 5, 6]
    assert result.visible_matrix[0, :12, :12].tolist() == [
        # CLS the mov was good ant bad sim to grt  !  SEP
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1],  # [CLS]
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1],  # the
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1],  # movie
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1],  # was
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # good: the trunk and its own branches
        [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],  # antonym: its root and its branch
        [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],  # bad
        [0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0],  # similar
        [0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0],  # to
        [0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0],  # great
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1],  # !
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1],  # [SEP]
    ]
    assert result.attention_mask[0].tolist() == [1] * 12 + [0] * 4
    assert result.input_ids.shape == (1, 16)  # the smallest default bucket
    assert result.input_ids[0, 12:].tolist() == [ID["[PAD]"]] * 4
    assert result.position_ids[0, 12:].tolist() == [0] * 4
    assert not result.visible_matrix[0, 12:, :].any() and not result.visible_matrix[0, :, 12:].any()
    assert result.injected.tolist() == [2] and result.lengths.tolist() == [12]
    assert result.truncated.tolist() == [False]
    assert (result.input_ids.dtype, result.position_ids.dtype, result.visible_matrix.dtype,
            result.attention_mask.dtype, result.truncated.dtype) == (
        np.int64, np.int64, np.uint8, np.int64, np.bool_)


def test_branches_of_a_split_word_continue_from_its_last_wordpiece():
    result = injector({"unbelievable": ["similar to great"]}).inject(["Unbelievable plot"])
    assert row(result) == {
        "input_ids": ids("[CLS]", "un", "##believ", "##able", "similar", "to", "great", "plot", "[SEP]"),
        "position_ids": [0, 1, 2, 3, 4, 5, 6, 4, 5],
        "visible_matrix": [
            [1, 1, 1, 1, 0, 0, 0, 1, 1],  # [CLS]
            [1, 1, 1, 1, 1, 1, 1, 1, 1],  # un       every piece of the word sees its branch
            [1, 1, 1, 1, 1, 1, 1, 1, 1],  # ##believ
            [1, 1, 1, 1, 1, 1, 1, 1, 1],  # ##able
            [0, 1, 1, 1, 1, 1, 1, 0, 0],  # similar  the branch sees all three pieces
            [0, 1, 1, 1, 1, 1, 1, 0, 0],  # to
            [0, 1, 1, 1, 1, 1, 1, 0, 0],  # great
            [1, 1, 1, 1, 0, 0, 0, 1, 1],  # plot
            [1, 1, 1, 1, 0, 0, 0, 1, 1],  # [SEP]
        ]}
    assert result.injected.tolist() == [1]


def test_words_are_looked_up_lower_cased_and_split_from_punctuation():
    result = injector().inject(["GOOD!", "Good movie", "goodness"])
    assert result.injected.tolist() == [2, 2, 0]  # "goodness" is another word ([UNK] here)
    assert row(result, 0)["input_ids"] == ids(
        "[CLS]", "good", "antonym", "bad", "similar", "to", "great", "!", "[SEP]")


def test_max_triples_takes_the_first_branches_in_table_order():
    one = injector(max_triples=1).inject(["good movie"])
    assert row(one)["input_ids"] == ids("[CLS]", "good", "antonym", "bad", "movie", "[SEP]")
    assert row(one)["position_ids"] == [0, 1, 2, 3, 2, 3]
    assert one.injected.tolist() == [1]


def test_without_knowledge_the_tree_is_plain_bert():
    result = injector(max_triples=0).inject(["The movie was good !"])
    assert row(result)["input_ids"] == ids("[CLS]", "the", "movie", "was", "good", "!", "[SEP]")
    assert row(result)["position_ids"] == list(range(7))
    assert np.all(result.visible_matrix[0, :7, :7] == 1)
    assert result.injected.tolist() == [0]


# ---------------------------------------------------------------- truncation and buckets

def test_a_group_that_does_not_fit_is_dropped_with_the_rest():
    # [CLS] the movie was = 4 tokens; good + its 5 branch tokens = 6 more; + [SEP] = 11 > 10
    result = injector(max_length=10).inject(["the movie was good !"])
    assert row(result)["input_ids"] == ids("[CLS]", "the", "movie", "was", "[SEP]")
    assert row(result)["position_ids"] == [0, 1, 2, 3, 4]
    assert result.truncated.tolist() == [True] and result.injected.tolist() == [0]
    assert result.input_ids.shape == (1, 10)  # every default bucket is above max_length: max_length


def test_groups_that_fit_are_kept_whole_and_sep_stays_last():
    result = injector(max_length=11).inject(["the movie was good !"])
    assert row(result)["input_ids"] == ids(
        "[CLS]", "the", "movie", "was", "good", "antonym", "bad", "similar", "to", "great", "[SEP]")
    assert row(result)["position_ids"] == [0, 1, 2, 3, 4, 5, 6, 5, 6, 7, 5]
    assert result.truncated.tolist() == [True] and result.injected.tolist() == [2]
    exact = injector(max_length=12).inject(["the movie was good !"])
    assert exact.lengths.tolist() == [12] and exact.truncated.tolist() == [False]


def test_a_single_word_longer_than_max_length_is_cut():
    result = injector(max_length=8).inject(["aaaaaaaaaa good"])
    assert row(result)["input_ids"] == ids("[CLS]", "a", "##a", "##a", "##a", "##a", "##a", "[SEP]")
    assert row(result)["position_ids"] == list(range(8))
    assert result.truncated.tolist() == [True]


def test_a_first_word_whose_knowledge_does_not_fit_is_kept_without_it():
    # good's group is 1 + 5 + 3 = 9 tokens, more than the 6 between [CLS] and [SEP]
    long_branches = {"good": ["antonym bad similar to great", "similar to great"]}
    result = injector(long_branches, max_length=8).inject(["good movie"])
    assert row(result)["input_ids"] == ids("[CLS]", "good", "[SEP]")  # and the rest is dropped
    assert result.truncated.tolist() == [True] and result.injected.tolist() == [0]


def test_lengths_are_rounded_up_to_buckets_and_a_batch_takes_the_largest():
    tree = injector(max_length=16, buckets=(8, 16))
    assert tree.inject(["good"]).input_ids.shape == (1, 8)  # exactly 8 tokens
    assert tree.inject(["the movie"]).input_ids.shape == (1, 8)  # 4 tokens
    both = tree.inject(["good", "the movie was good !"])
    assert both.input_ids.shape == (2, 16) and both.visible_matrix.shape == (2, 16, 16)
    assert both.lengths.tolist() == [8, 12]
    assert both.input_ids[0, 8:].tolist() == [ID["[PAD]"]] * 8
    assert both.position_ids[0, 8:].tolist() == [0] * 8
    assert both.attention_mask.sum(axis=1).tolist() == [8, 12]
    assert not both.visible_matrix[0, 8:, :].any() and not both.visible_matrix[0, :, 8:].any()
    assert row(both, 0) == row(tree.inject(["good"]))  # padding changes nothing else


def test_buckets_above_max_length_are_dropped_and_max_length_is_always_one():
    assert injector(max_length=12, buckets=(8, 16, 32)).lengths == (8, 12)
    assert injector(max_length=256).lengths == (16, 32, 64, 128, 256)
    assert injector(max_length=100, buckets=()).lengths == (100,)


# ---------------------------------------------------------------- inputs and errors

def test_the_same_input_gives_identical_arrays():
    texts = ["The movie was good !", "Unbelievable plot", "good"]
    assert_same(injector().inject(texts), injector().inject(texts))


def test_bytes_are_read_as_utf8():
    tree = injector()
    assert_same(tree.inject([b"the movie was good !"]), tree.inject(["the movie was good !"]))
    assert_same(tree.inject(np.array([b"good"], dtype=object)), tree.inject(["good"]))


@pytest.mark.parametrize("texts, message", [
    (["good", "  \t"], r"TEXT\[1\] is empty"),
    ([b"good", b"\xffgood"], r"TEXT\[1\] is not valid UTF-8"),
    ([3], r"TEXT\[0\] is a int"),
    (["good", "\x00"], r"TEXT\[1\] .* has no tokens"),
    ("good", r"wrap it in a list"),
])
def test_bad_texts_are_refused_naming_which(texts, message):
    with pytest.raises(InjectionError, match=message):
        injector().inject(texts)


@pytest.mark.parametrize("options, message", [
    ({"max_length": 4}, r"max_length is 4: .* from 8 to 512"),
    ({"max_length": 1024}, r"max_length is 1024"),
    ({"max_triples": -1}, r"max_triples is -1"),
    ({"buckets": (32, 16)}, r"buckets are \[32, 16\]: .* increasing"),
    ({"buckets": (0, 16)}, r"buckets are \[0, 16\]"),
    ({"knowledge": {"new york": ["is a city"]}}, r"not one word .* 'new york' \(2 words\)"),
    ({"knowledge": {"good": "antonym bad"}}, r"knowledge for 'good' .* give a list"),
    ({"knowledge": {"good": [""]}}, r"knowledge for 'good' has branch ''"),
    ({"knowledge": {"good": ["\x00"]}}, r"knowledge for 'good': branch .* has no tokens"),
    ({"knowledge": {"Good": ["antonym bad"], "good": ["similar to great"]}}, r"differing only in case"),
])
def test_construction_refuses_bad_settings(options, message):
    knowledge = options.pop("knowledge", GOOD)
    with pytest.raises(InjectionError, match=message):
        KnowledgeInjector(tiny_tokenizer(), knowledge, **options)


def test_a_tokenizer_without_bert_special_tokens_is_refused_naming_them():
    no_cls = tiny_tokenizer([t for t in VOCAB if t not in ("[CLS]", "[PAD]")])
    with pytest.raises(InjectionError, match=r"no \[CLS\], \[PAD\] token"):
        KnowledgeInjector(no_cls, GOOD)


# ---------------------------------------------------------------- knowledge.json

def model_folder(tmp_path, **settings):
    tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    options = {"max_length": 64, "max_triples": 2, "buckets": (16, 32)} | settings
    write_knowledge(tmp_path, {"Good": ["antonym bad", "similar to great", "related to nice"]}, **options)
    return tmp_path


def test_knowledge_json_round_trip(tmp_path):
    folder = model_folder(tmp_path)
    assert json.loads((folder / "knowledge.json").read_text()) == {
        "version": 1, "max_triples": 2, "max_length": 64, "buckets": [16, 32],
        "words": {"good": ["antonym bad", "similar to great"]}}  # lower-cased, first max_triples
    assert sorted(p.name for p in folder.iterdir()) == ["knowledge.json", "tokenizer.json"]
    loaded = KnowledgeInjector.from_folder(folder)
    assert (loaded.max_length, loaded.max_triples, loaded.lengths) == (64, 2, (16, 32, 64))
    texts = ["The movie was good !", "good"]
    assert_same(loaded.inject(texts), injector(max_length=64, buckets=(16, 32)).inject(texts))
    assert KnowledgeInjector.from_folder(folder, max_length=10).max_length == 10


@pytest.mark.parametrize("content, message", [
    ("{not json", r"is not valid JSON"),
    ("[]", r"holds a list"),
    ('{"version": 1, "words": {}}', r"has no max_triples, max_length, buckets"),
    ('{"version": 2, "max_triples": 2, "max_length": 64, "buckets": [], "words": {}}', r"is version 2"),
    ('{"version": 1, "max_triples": 2, "max_length": "64", "buckets": [], "words": {}}',
     r"max_length is '64'"),
    ('{"version": 1, "max_triples": 2, "max_length": 64, "buckets": [], "words": []}', r"words is a list"),
    ('{"version": 1, "max_triples": 2, "max_length": 64, "buckets": [], "words": {"good": "bad"}}',
     r"knowledge for 'good' is 'bad'"),
    ('{"version": 1, "max_triples": 2, "max_length": 4, "buckets": [], "words": {}}', r"max_length is 4"),
])
def test_a_malformed_knowledge_json_names_the_file_and_the_fault(tmp_path, content, message):
    folder = model_folder(tmp_path)
    (folder / "knowledge.json").write_text(content)
    with pytest.raises(InjectionError, match=r"knowledge\.json.*" + message):
        KnowledgeInjector.from_folder(folder)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(InjectionError, match=r"knowledge\.json is missing"):
        KnowledgeInjector.from_folder(tmp_path)
    folder = model_folder(tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InjectionError, match=r"tokenizer\.json is missing"):
        KnowledgeInjector.from_folder(folder)


# ---------------------------------------------------------------- the Triton model's batching

def test_requests_are_injected_together_and_split_back_each_to_its_own_bucket():
    tree = injector(max_length=16, buckets=(8, 16))
    requests = [["good"], [b"the movie", "  "], [b"the movie was good !", "movie"], ["plot", "\x00"]]
    results = inject_requests(tree, requests)
    assert_same(results[0], tree.inject(["good"]))  # width 8, though a later request needs 16
    assert isinstance(results[1], InjectionError) and "TEXT[1] is empty" in str(results[1])
    assert_same(results[2], tree.inject(["the movie was good !", "movie"]))
    assert isinstance(results[3], InjectionError) and "TEXT[1]" in str(results[3])


def test_the_triton_model_loads_its_version_folder(tmp_path):
    (tmp_path / "1").mkdir()
    model_folder(tmp_path / "1")
    args = {"model_repository": str(tmp_path), "model_version": "1",
            "model_config": json.dumps({"parameters": {"max_length": {"string_value": "32"},
                                                       "outputs": {"string_value": "input_ids,bogus"}}})}
    with pytest.raises(InjectionError, match=r"outputs names bogus"):
        TritonPythonModel().initialize(args)
    args["model_config"] = json.dumps({"parameters": {"max_length": {"string_value": "32"}}})
    model = TritonPythonModel()
    model.initialize(args)
    assert model.injector.max_length == 32
    assert model.names == ("input_ids", "position_ids", "visible_matrix", "attention_mask", "truncated")


# ---------------------------------------------------------------- MiniLM's real tokenizer

def test_minilm_trunk_is_the_plain_bert_encoding():
    from tritonforge.encoders.bert_checkpoint import embedded_model_dir

    tokenizer = Tokenizer.from_file(str(embedded_model_dir() / "tokenizer.json"))
    padding = tokenizer.padding
    tree = KnowledgeInjector(tokenizer, {"good": ["antonym bad"], "cafe": ["is a place"]})
    assert tokenizer.padding == padding  # the caller's tokenizer is left as it was
    text = "The movie at the Café was GOOD!"
    result = tree.inject([text])
    n = int(result.lengths[0])
    trunk = result.visible_matrix[0, 0, :n].astype(bool)  # [CLS] sees exactly the trunk
    tokenizer.no_padding()
    plain = tokenizer.encode(text)
    assert result.input_ids[0, :n][trunk].tolist() == plain.ids
    assert result.position_ids[0, :n][trunk].tolist() == list(range(len(plain.ids)))
    branches = result.input_ids[0, :n][~trunk].tolist()
    assert branches == (tokenizer.encode("is a place", add_special_tokens=False).ids
                        + tokenizer.encode("antonym bad", add_special_tokens=False).ids)
    assert result.injected.tolist() == [2]  # "Café" is "cafe" to uncased BERT, "GOOD" is "good"
    good = plain.tokens.index("good")
    after_good = result.position_ids[0, :n][~trunk][-len(tokenizer.encode("antonym bad",
                                                                         add_special_tokens=False).ids):]
    assert after_good.tolist() == list(range(good + 1, good + 1 + len(after_good)))
