"""The `dask` family: a BERT classifier reading K-BERT sentence trees, exported and served with
the injection inside Triton (`dask_fp32_text`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.dask import DaskOptions
from tritonforge.export.dask.loading import load_classifier
from tritonforge.export.dask.model import MASK_BIAS
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.serving.repository import ModelRepository

pytestmark = pytest.mark.slow  # its fixture trains a classifier on real tweets (about a minute)

runner = CliRunner()


def test_the_export_matches_pytorch_on_labelled_tweets_of_both_domains(dask_repo):
    manifest = ModelRepository(dask_repo).read_manifest("dask_fp32")
    checks = {c["metric"]: c["value"] for c in manifest["parity"]["details"]["checks"]}
    assert checks["label_agreement"] == 1.0 and checks["logits_max_abs_diff"] <= 1e-4
    assert manifest["quality"]["samples"] == 644  # 322 technology + 322 airline test tweets
    assert manifest["io"]["preprocessing"]["kind"] == "text_knowledge"
    assert manifest["source"]["knowledge_words"] > 50  # pivots the WordNet graph knows
    report = verify_model(dask_repo, "dask_fp32", iterations=2, samples=96)
    assert report.parity.passed and report.parity.details["samples"] == 96


def test_the_graph_takes_a_uint8_visible_matrix_and_the_ensemble_says_what_was_cut(dask_repo):
    graph = onnx.load(str(dask_repo / "dask_fp32" / "1" / "model.onnx")).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("input_ids", onnx.TensorProto.INT64), ("position_ids", onnx.TensorProto.INT64),
        ("visible_matrix", onnx.TensorProto.UINT8)]
    assert [o.name for o in graph.output] == ["logits", "probabilities"]
    repository = ModelRepository(dask_repo)
    ensemble = repository.read_config("dask_fp32_text")
    assert [o.name for o in ensemble.output] == ["logits", "probabilities", "truncated"]
    inject = repository.read_config("dask_fp32_inject")
    assert inject.parameters["outputs"].string_value == "input_ids,position_ids,visible_matrix,truncated"
    folder = dask_repo / "dask_fp32_inject" / "1"
    assert (folder / "knowledge.json").is_file() and (folder / "tokenizer.json").is_file()


def test_the_visible_matrix_is_the_attention_bias_in_every_layer(dask_checkpoint):
    model = load_classifier(DaskOptions(checkpoint=str(dask_checkpoint)))
    injected = model.injector.inject(["the flight was good"])
    inputs = {k: torch.from_numpy(v) for k, v in
              injected.arrays(("input_ids", "position_ids", "visible_matrix")).items()}
    with torch.inference_mode():
        hidden = model.encode(**inputs)
        # Hiding one knowledge token from everyone changes the [CLS] state only through the
        # word that sees it: the bias reaches the attention of the layers.
        hidden_vm = inputs["visible_matrix"].clone()
        branch = int(np.flatnonzero(injected.position_ids[0][:injected.lengths[0]]
                                    != np.arange(injected.lengths[0]))[0])  # the first soft position
        hidden_vm[0, :, branch] = 0
        changed = model.encode(inputs["input_ids"], inputs["position_ids"], hidden_vm)
    assert injected.injected[0] >= 1 and MASK_BIAS == -1e4
    assert (hidden[0, 0] - changed[0, 0]).abs().max() > 1e-4


def test_a_reference_state_dict_loads_and_a_wrong_shape_names_the_tensor(tmp_path, dask_checkpoint):
    state = torch.load(dask_checkpoint / "classifier.pt", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "reference.pt")
    model = load_classifier(DaskOptions(checkpoint=str(tmp_path / "reference.pt")))
    assert torch.equal(model.classifier[3].weight, state["classifier.3.weight"])
    state["classifier.0.weight"] = state["classifier.0.weight"][:, :100]
    torch.save(state, tmp_path / "wrong.pt")
    wrong = r"classifier\.0\.weight \(384, 100\) \(this encoder: \(384, 384\)\)"
    with pytest.raises(TritonForgeError, match=wrong):
        load_classifier(DaskOptions(checkpoint=str(tmp_path / "wrong.pt")))
    with pytest.raises(TritonForgeError, match="does not exist"):
        load_classifier(DaskOptions(checkpoint=str(tmp_path / "missing.pt")))


def test_bad_knowledge_files_are_refused_with_file_and_line(tmp_path, dask_checkpoint):
    (tmp_path / "graph.tsv").write_text("good\tantonym\tbad\t1.0\nbroken line without tabs\n")
    (tmp_path / "pivots.txt").write_text("good\n")
    state_file = dask_checkpoint / "classifier.pt"
    with pytest.raises(TritonForgeError, match=r"graph\.tsv, line 2"):
        load_classifier(DaskOptions(checkpoint=str(state_file), graph=str(tmp_path / "graph.tsv"),
                                    pivots=str(tmp_path / "pivots.txt")))
    with pytest.raises(TritonForgeError, match="nowhere.tsv"):
        load_classifier(DaskOptions(checkpoint=str(state_file), graph=str(tmp_path / "nowhere.tsv"),
                                    pivots=str(tmp_path / "pivots.txt")))
    result = runner.invoke(app, ["export", "dask", "--checkpoint", str(state_file), "--pivots",
                                 str(tmp_path / "absent.txt"), "--repo", str(tmp_path / "repo")])
    assert result.exit_code == 2 and "absent.txt" in result.output
    (tmp_path / "knowledge_broken").mkdir()
    with pytest.raises(TritonForgeError, match="dask train"):
        load_classifier(DaskOptions(checkpoint=str(tmp_path / "knowledge_broken")))
    with pytest.raises(TritonForgeError, match="--max-length 4 must be from 8 to 512"):
        DaskOptions(max_length=4)


def test_pivots_command_writes_the_polarity_ranking(tmp_path):
    source = [f"1\tgreat flight {i}" for i in range(3)] + [f"0\tawful flight {i}" for i in range(3)]
    (tmp_path / "source.tsv").write_text("\n".join(source) + "\n")
    (tmp_path / "target.txt").write_text("a great phone\nan awful phone\ngreat and awful\nflight\n")
    result = runner.invoke(app, ["dask", "pivots", "--source-labeled", str(tmp_path / "source.tsv"),
                                 "--target", str(tmp_path / "target.txt"), "--min-occur", "2",
                                 "--out", str(tmp_path / "pivots.tsv")])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in (tmp_path / "pivots.tsv").read_text().splitlines()
            if not line.startswith("#")]
    assert {(word, float(score)) for word, score in rows} == {("great", 1.0), ("awful", -1.0)}



def test_w8a8_quantizes_the_encoder_keeps_the_head_float_and_verify_reloads_it(tmp_path, dask_checkpoint,
                                                                                monkeypatch):
    from tritonforge.export.dask.outlier_suppression import REFERENCE_FILE

    result = export_model("dask", DaskOptions(checkpoint=str(dask_checkpoint), bits=8, max_length=64,
                                              calib_size=64), tmp_path)
    manifest = result.manifest
    assert manifest["parity"]["passed"] and manifest["precision"] == "w8a8"
    assert manifest["quantization"]["recipe"]["method"] == "os"  # Gamma Migration + Token-Wise Clipping
    assert manifest["quantization"]["calibration"]["texts"] == 64
    assert 0.0 <= manifest["quality"]["label_agreement_vs_fp"] <= 1.0
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 6 * 7  # every activation slot of the 6 layers
    head = {i.name for i in graph.initializer if "classifier" in i.name}
    assert head and all(i.data_type == onnx.TensorProto.FLOAT for i in graph.initializer if i.name in head)
    assert (result.folder / REFERENCE_FILE).is_file()
    # verify rebuilds the fake-quantized reference from reference.pt: no calibration again.
    import tritonforge.export.dask.outlier_suppression as quantized

    def no_calibration(*_args, **_kwargs):
        raise AssertionError("verify calibrated again")

    monkeypatch.setattr(quantized, "quantize_classifier", no_calibration)
    assert verify_model(tmp_path, "dask_w8a8", iterations=2, samples=32).parity.passed


def test_bits_other_than_32_8_6_are_refused():
    with pytest.raises(TritonForgeError, match="--bits 4 is not offered for DASK"):
        DaskOptions(bits=4)
