"""The Family contract and registry."""

from __future__ import annotations

import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.export.base import Check, ModelIO, Parity, TensorSpec, family_names, get_family


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(TritonForgeError, match="unknown model family 'resnet'.*bert"):
        get_family("resnet")


def test_bert_is_registered_by_name():
    assert "bert" in family_names()
    assert get_family("bert").name == "bert"


def test_model_io_round_trips_through_json():
    io = ModelIO((TensorSpec("input_ids", "int64", (-1,)),),
                 (TensorSpec("logits", "float32", (2,)),), {"kind": "text", "max_length": 128})
    assert ModelIO.from_json(io.to_json()) == io


def test_parity_passes_only_when_every_check_does():
    ok = Check("cosine", 0.9999, 0.999, True)
    too_far = Check("max_abs_diff", 0.2, 0.1, False)
    assert Parity((ok,)).passed
    assert not Parity((ok, too_far)).passed
    assert not Parity((Check("cosine", float("nan"), 0.9, True),)).passed
    assert Parity((ok, too_far)).to_json()["metric"] == "cosine"
