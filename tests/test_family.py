"""The Family contract, its registry (built in, decorated, entry points) and the manifest's I/O."""

from __future__ import annotations

import json
import sys

import pytest

from tritonforge import family as base
from tritonforge.errors import TritonForgeError
from tritonforge.family import family_names, get_family
from tritonforge.modalities import Tensors, Text, read_io
from tritonforge.outputs import output_kind
from tritonforge.serving.repository import check_manifest_version
from tritonforge.spec import CLASS_SCORES, EMBEDDING, Check, ModelIO, Parity, TensorSpec


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(TritonForgeError, match="unknown model family 'resnet'.*bert"):
        get_family("resnet")


def test_bert_is_registered_by_name():
    assert "bert" in family_names()
    assert get_family("bert").name == "bert"


def test_model_io_round_trips_through_json():
    io = ModelIO((TensorSpec("input_ids", "int64", (-1,)),),
                 (TensorSpec("logits", "float32", (2,), CLASS_SCORES),),
                 Text(max_length=128, pad_token_id=0, inputs=("input_ids",)), ("neg", "pos"))
    assert read_io(json.loads(json.dumps(io.to_json()))) == io


def test_a_version_1_manifest_still_reads():
    """What tritonforge 0.1 wrote for MiniLM: an untyped dict, pooling and labels inside it."""
    v1 = {"inputs": [{"name": n, "dtype": "int64", "dims": [-1]}
                     for n in ("input_ids", "attention_mask", "token_type_ids")],
          "outputs": [{"name": "last_hidden_state", "dtype": "float32", "dims": [-1, 384]},
                      {"name": "sentence_embedding", "dtype": "float32", "dims": [384]}],
          "preprocessing": {"kind": "text", "tokenizer": "tokenizer/tokenizer.json", "max_length": 256,
                            "lowercase": True, "padding": "longest", "truncation": True,
                            "pad_token_id": 0, "pooling": "mean", "normalize": True}}
    io = read_io(v1, manifest_version=1)
    assert io.preprocessing == Text(max_length=256, pad_token_id=0, lowercase=True)
    assert [o.kind for o in io.outputs] == ["tensor", EMBEDDING] and io.labels is None
    classifier = {**v1, "outputs": [{"name": "logits", "dtype": "float32", "dims": [2]}],
                  "preprocessing": {**v1["preprocessing"], "labels": ["neg", "pos"]}}
    io = read_io(classifier, manifest_version=1)
    assert io.labels == ("neg", "pos") and io.outputs[0].kind == CLASS_SCORES


def test_a_manifest_from_a_newer_tritonforge_is_refused_with_its_version():
    with pytest.raises(TritonForgeError, match="manifest version 3.*tritonforge 9.0.*up to 2"):
        check_manifest_version({"manifest_version": 3, "tritonforge_version": "9.0"}, "m.json")
    record = {**Tensors().to_json(), "version": 2}
    with pytest.raises(TritonForgeError, match="'tensors' pre-processing record has version 2"):
        read_io({"inputs": [], "outputs": [], "preprocessing": record})


def test_an_unknown_output_kind_is_refused_when_it_is_looked_up():
    declared = TensorSpec("y", "float32", (4,), "boxes")  # a family's own kind may be registered later
    with pytest.raises(TritonForgeError, match="output 'y' has kind 'boxes'.*embedding"):
        output_kind(declared.kind, declared.name)
    with pytest.raises(TritonForgeError, match="kind 'Boxes': a kind is a lowercase identifier"):
        TensorSpec("y", "float32", (4,), "Boxes")


def test_shape_options_of_another_modality_are_refused():
    text = Text(max_length=128, pad_token_id=0)
    assert text.resolve_shape({}) == {"seq_len": 128}
    assert text.resolve_shape({"seq_len": 32, "image_size": None}) == {"seq_len": 32}
    with pytest.raises(TritonForgeError, match="--image-size does not apply to a model that takes text "
                                               "input.*--seq-len"):
        text.resolve_shape({"image_size": 224})


def test_parity_passes_only_when_every_check_does():
    ok = Check("cosine", 0.9999, 0.999, True)
    too_far = Check("max_abs_diff", 0.2, 0.1, False)
    assert Parity((ok,)).passed
    assert not Parity((ok, too_far)).passed
    assert not Parity((Check("cosine", float("nan"), 0.9, True),)).passed
    assert Parity((ok, too_far)).to_json()["metric"] == "cosine"


PLUGIN = '''
from tritonforge.export.bert import BertFamily


class RenamedBert(BertFamily):
    """BERT under another name, as a package outside tritonforge would declare a family."""

    name = "plugin_bert"
'''


def test_a_family_from_another_package_is_found_through_its_entry_point(tmp_path, monkeypatch):
    (tmp_path / "plugin_family.py").write_text(PLUGIN)
    dist = tmp_path / "plugin_family-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-family\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[tritonforge.families]\nplugin_bert = plugin_family:RenamedBert\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # registered for this test only
    assert "plugin_bert" in family_names()
    assert type(get_family("plugin_bert")).__name__ == "RenamedBert"
    sys.modules.pop("plugin_family", None)
