"""`export bert --bits auto --max-drop X`: each quantizer's width chosen within a quality budget."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import BertOptions, tokenize
from tritonforge.export.bert.outlier_suppression import calibration_texts, slotted_copy
from tritonforge.family import get_family
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.quant.calibrate import QuantRecipe, calibrate, quantized_slots
from tritonforge.quant.mixed import Move, measure_moves, plan_bits, pooled_outputs

runner = CliRunner()


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory, tiny_bert):
    repo = tmp_path_factory.mktemp("mixed")
    options = BertOptions(model=str(tiny_bert), bits="auto", max_drop=0.01, calib_size=32, lsq_epochs=1)
    return repo, export_model("bert", options, repo)


def test_auto_records_every_quantizers_width_within_the_budget(mixed_export):
    repo, result = mixed_export
    assert result.name == "bert_mixed" and result.manifest["precision"] == "mixed"
    widths = result.manifest["quantization"]["widths"]
    fp = get_family("bert").load(BertOptions(model=result.manifest["recipe"]["model"], target="onnxruntime"))
    slotted = slotted_copy(fp)
    assert set(widths["weights"]) == set(slotted.weight_tables())
    # every activation its placement quantizes (os+: the Linears' inputs) has a width
    placement = result.manifest["quantization"]["recipe"]["placement"]
    assert placement == "linear"
    assert set(widths["activations"]) == set(quantized_slots(slotted, placement))
    assert set(widths["weights"].values()) | set(widths["activations"].values()) <= {4, 6, 8}
    assert widths["average_bits"] < 8 and widths["measured_drop"] <= 0.01
    # The graph holds what was chosen: verify rebuilds the reference with those widths and matches.
    report = verify_model(repo, result.name, samples=32, iterations=1)
    assert report.parity.passed and report.quality["cosine_vs_fp"] >= 0.98


def test_the_saved_reference_keeps_each_activation_width(mixed_export):
    repo, result = mixed_export
    saved = torch.load(result.folder / "reference.pt", weights_only=True)
    widths = result.manifest["quantization"]["widths"]
    assert saved["activation_bits"] == widths["activations"]
    assert {name: int(w["bits"]) for name, w in saved["weights"].items()} == widths["weights"]
    for w in saved["weights"].values():  # each weight's integers lie on its own grid
        bits = int(w["bits"])
        assert int(w["values"].min()) >= -(2 ** (bits - 1)) and int(w["values"].max()) <= 2 ** (bits - 1) - 1


def test_measuring_a_move_leaves_the_model_as_it_was(tiny_bert):
    family = get_family("bert")
    fp = family.load(BertOptions(model=str(tiny_bert), target="onnxruntime"))
    texts, _ = calibration_texts(None, 16, False)
    tokens = tokenize(fp.tokenizer, texts, 32)
    result = calibrate(slotted_copy(fp), QuantRecipe(method="os+"), tokens, 8)
    before = pooled_outputs(result.model, tokens)
    moves = measure_moves(result, tokens, pooled_outputs(slotted_copy(fp), tokens))
    assert torch.equal(pooled_outputs(result.model, tokens), before)
    measured = {(m.kind, m.name) for m in moves}
    expected = {("weight", n) for n in result.weights} | {("activation", s) for s in result.quantizers}
    assert measured == expected


def test_plan_takes_the_cheapest_bits_first_and_stays_within_the_budget():
    moves = [Move("weight", "a", 6, 0.001), Move("weight", "a", 4, 0.004),
             Move("weight", "b", 6, 0.0005), Move("weight", "b", 4, 0.0006),
             Move("activation", "x", 6, 0.003), Move("activation", "y", 6, -0.0001)]
    plan = plan_bits(moves, ["a", "b"], ["x", "y"], budget=0.002, parameters={"a": 100, "b": 300})
    # b drops to 4 (0.0006 for 4 bits), y is free, a's 6 bits (0.001) still fits; x (0.003) does not.
    assert plan.weights == {"a": 6, "b": 4} and plan.activations == {"x": 8, "y": 6}
    assert plan.predicted_drop == pytest.approx(0.0016)
    assert plan.average_bits == pytest.approx((6 + 4 + 8 + 6) / 4)
    assert plan.weight_bits_by_parameters == pytest.approx((100 * 6 + 300 * 4) / 400)
    assert plan_bits(moves, ["a", "b"], ["x", "y"], budget=0.0).weights == {"a": 8, "b": 8}


@pytest.mark.parametrize("max_drop", [0.0, 1.0, -0.1, 1.5])
def test_max_drop_outside_zero_one_is_refused(max_drop):
    with pytest.raises(TritonForgeError, match=rf"--max-drop {max_drop} must lie strictly between 0 and 1"):
        BertOptions(bits="auto", max_drop=max_drop)


def test_max_drop_without_auto_and_auto_with_fixed_widths_are_refused():
    with pytest.raises(TritonForgeError, match="quality budget of --bits auto"):
        BertOptions(bits=8, max_drop=0.01)
    with pytest.raises(TritonForgeError, match="chooses every quantizer's width itself"):
        BertOptions(bits="auto", wbits=4)


def test_auto_without_enough_calibration_text_says_what_to_give(tiny_bert, tmp_path):
    short = tmp_path / "three.txt"
    short.write_text("one sentence\nanother sentence\na third\n")
    with pytest.raises(TritonForgeError, match=r"--bits auto needs at least 8 calibration texts.*got 3"):
        options = BertOptions(model=str(tiny_bert), bits="auto", calib=str(short), allow_fewer=True)
        export_model("bert", options, tmp_path / "repo")
    assert not (tmp_path / "repo" / "bert_mixed").exists()


def test_cli_takes_bits_auto_and_refuses_a_bad_budget(tmp_path):
    result = runner.invoke(app, ["export", "bert", "--bits", "auto", "--max-drop", "2",
                                 "--repo", str(tmp_path)])
    assert result.exit_code == 2 and "--max-drop 2.0 must lie strictly between 0 and 1" in result.output
    result = runner.invoke(app, ["export", "bert", "--bits", "seven", "--repo", str(tmp_path)])
    assert result.exit_code == 2 and "--bits 'seven' is not a width" in result.output
    manifest_recipe = json.loads(json.dumps({"bits": "auto", "max_drop": 0.01}))
    assert get_family("bert").options_from_json(manifest_recipe).bits == "auto"
