"""Parity merged batch by batch (`Parity.merge`): extremes take the worst batch, rates the
sample-weighted mean, details the worst batch's with counts summed; request inputs go whole."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tritonforge.batching import batch_count, batches
from tritonforge.errors import TritonForgeError
from tritonforge.modalities import Tensors, read_io
from tritonforge.spec import MEAN, Check, ModelIO, Parity, TensorSpec


def batch(diff: float, agreement: float, samples: int, **details) -> Parity:
    return Parity((Check("max_abs_diff", diff, 1e-3, False),
                   Check("top1_agreement", agreement, 0.9, True, MEAN)), {"samples": samples, **details})


def test_an_extreme_takes_the_worst_batch_and_a_rate_the_weighted_mean():
    merged = Parity.merge([batch(1e-5, 1.0, 8), batch(4e-4, 0.5, 2)], [8, 2])
    diff, agreement = merged.checks
    assert diff.value == 4e-4 and diff.merge == "worst"
    assert agreement.value == pytest.approx((8 * 1.0 + 2 * 0.5) / 10)  # 0.9: the whole set's rate
    assert merged.passed and merged.primary.metric == "max_abs_diff"


def test_worst_is_the_lowest_value_when_higher_is_better():
    cosine = [Parity((Check("cosine_min", value, 0.99, True),)) for value in (0.999, 0.98, 0.995)]
    merged = Parity.merge(cosine, [8, 8, 8])
    assert merged.primary.value == 0.98 and not merged.passed


def test_details_are_the_worst_batchs_with_the_counts_summed():
    good = Parity((Check("d", 0.1, 1.0, False),), {"samples": 8, "swaps": 1, "top_k": 20, "note": "good"},
                  totals=("samples", "swaps"))
    failing = Parity((Check("d", 2.0, 1.0, False),), {"samples": 4, "swaps": 3, "top_k": 20, "note": "bad"},
                     totals=("samples", "swaps"))
    merged = Parity.merge([good, failing, good], [8, 4, 8])
    assert merged.details == {"samples": 20, "swaps": 5, "top_k": 20, "note": "bad"}
    assert merged.to_json()["details"]["checks"] == [
        {"metric": "d", "value": 2.0, "tolerance": 1.0, "passed": False}]


def test_the_worst_batch_is_the_one_with_most_failed_checks_before_the_worst_headline():
    headline_worst = batch(9e-4, 0.95, 8, batch="a")  # passes, worst diff
    fails_agreement = batch(1e-5, 0.5, 8, batch="b")
    merged = Parity.merge([headline_worst, fails_agreement], [8, 8])
    assert merged.details["batch"] == "b" and merged.details["samples"] == 16


def test_a_check_only_some_batches_have_merges_over_those_at_the_strictest_tolerance():
    shapes_differ = Parity((Check("max_abs_diff", math.inf, 0.0, False),), {"samples": 2})
    fine = Parity((Check("max_abs_diff", 0.0, 1.0, False), Check("psnr_diff_db", 0.001, 0.01, False, MEAN)),
                  {"samples": 8})
    merged = Parity.merge([fine, shapes_differ], [8, 2])
    assert [c.metric for c in merged.checks] == ["max_abs_diff", "psnr_diff_db"]
    assert merged.checks[0].value == math.inf and merged.checks[0].tolerance == 0.0
    assert merged.checks[1].value == pytest.approx(0.001) and not merged.passed


def test_a_nan_in_any_batch_fails_the_merged_check():
    merged = Parity.merge([batch(1e-5, 1.0, 8), batch(float("nan"), 1.0, 8)], [8, 8])
    assert math.isnan(merged.primary.value) and not merged.passed


def test_one_batch_is_its_own_verdict_and_none_is_an_error():
    only = batch(1e-5, 1.0, 3, steps=8)
    assert Parity.merge([only], [3]) is only
    with pytest.raises(TritonForgeError, match="at least one result"):
        Parity.merge([], [])


def test_a_check_must_keep_its_direction_and_rule_between_batches():
    with pytest.raises(TritonForgeError, match="'top1_agreement' changes direction or merge rule"):
        Parity.merge([batch(0.0, 1.0, 8), Parity((Check("top1_agreement", 1.0, 0.9, True),))], [8, 8])
    with pytest.raises(TritonForgeError, match="merges by 'median': choose one of worst, mean"):
        Check("cosine", 1.0, 0.9, True, "median")


# -- request inputs ------------------------------------------------------------------------

VOCAB_IO = ModelIO((TensorSpec("queries", "float32", (4,)), TensorSpec("vocabulary", "float32", (-1, 4))),
                   (TensorSpec("scores", "float32", (-1,)),), Tensors(), request_inputs=("vocabulary",))


def test_request_inputs_go_whole_with_every_batch():
    inputs = {"queries": np.zeros((20, 4), np.float32), "vocabulary": np.ones((3, 4), np.float32)}
    assert batch_count(inputs, VOCAB_IO.request_inputs) == 20
    sliced = list(batches(inputs, 8, VOCAB_IO.request_inputs))
    assert [len(b["queries"]) for b in sliced] == [8, 8, 4]
    assert all(b["vocabulary"] is inputs["vocabulary"] for b in sliced)


def test_request_inputs_are_declared_in_the_manifest_and_read_back():
    assert VOCAB_IO.to_json()["request_inputs"] == ["vocabulary"]
    assert read_io(VOCAB_IO.to_json()) == VOCAB_IO
    assert "request_inputs" not in ModelIO(VOCAB_IO.inputs, VOCAB_IO.outputs, Tensors()).to_json()


def test_request_inputs_name_some_of_the_inputs():
    with pytest.raises(TritonForgeError, match=r"\['labels'\] must name some.*unknown: \['labels'\]"):
        ModelIO(VOCAB_IO.inputs, VOCAB_IO.outputs, Tensors(), request_inputs=("labels",))
    with pytest.raises(TritonForgeError, match="must name some, not all"):
        ModelIO(VOCAB_IO.inputs, VOCAB_IO.outputs, Tensors(), request_inputs=("queries", "vocabulary"))
