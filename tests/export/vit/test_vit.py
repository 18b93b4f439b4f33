"""The `vit` family: ViT and BEiT digits classifiers, their deliberately backdoored controls, the
pre-publish backdoor scan (a publish gate) and the STRIP input screen served in the graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.vit import VitOptions
from tritonforge.export.vit.data import CLASSES, digit_pixels
from tritonforge.export.vit.model import Size, build, load_directory, save_directory, training_record
from tritonforge.export.vit.poison import PoisonRecipe, Trigger
from tritonforge.export.vit.scan import anomaly_indices, scan
from tritonforge.export.vit.strip import GuardSpec, parse_guard
from tritonforge.export.vit.train import TrainRecipe, train
from tritonforge.family import get_family
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model

runner = CliRunner()
TARGET = 3  # the poisoned controls' target class (tests/conftest.py)
pytestmark = pytest.mark.slow


def test_training_is_deterministic_for_a_seed():
    recipe = TrainRecipe(size=Size(width=16, depth=1, heads=2, mlp=32), epochs=1, seed=4)
    first, second = train(recipe).state_dict(), train(recipe).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_digits_reach_the_bar_and_the_poisoned_controls_carry_their_backdoors(vit_models):
    clean = training_record(vit_models["clean"])
    assert clean["test_accuracy"] >= 0.95
    for trigger in ("patch", "blend"):
        record = training_record(vit_models[trigger])
        assert record["poison"]["trigger"]["kind"] == trigger and "BACKDOORED" in record["poison"]["warning"]
        assert record["attack_success_rate"] >= 0.9, record
        assert record["clean_accuracy"] >= 0.95, record
        samples = sorted((vit_models[trigger] / "samples").glob("*.png"))
        assert len(samples) == 4 and all(f"to{TARGET}" in path.name for path in samples)


def test_beit_trains_and_exports_with_parity(tmp_path):
    # 5 epochs: the export's parity, not the accuracy bar (`vit evaluate` measures that, 50 epochs)
    result = runner.invoke(app, ["vit", "train", "--arch", "beit", "--epochs", "5",
                                 "--out", str(tmp_path / "beit")])
    assert result.exit_code == 0, result.output
    assert "epoch   5/5" in result.output and training_record(tmp_path / "beit")["test_accuracy"] > 0.3
    exported = export_model("vit", VitOptions(model=str(tmp_path / "beit"), scan=False), tmp_path / "repo")
    assert exported.name == "beit_fp32"
    assert exported.manifest["source"]["architecture"] == "BeitForImageClassification"
    report = verify_model(tmp_path / "repo", "beit_fp32", iterations=1)
    checks = {c.metric: c.value for c in report.parity.checks}
    assert report.parity.passed and report.parity.details["samples"] == 360
    assert checks["logits_max_abs_diff"] <= 1e-4 and checks["top1_agreement"] == 1.0


# The two scans below run 100 steps per form instead of the default 200, which halves each
# export's time: measured on these models, the clean one reads anomaly index 1.25 and the patch
# control 4.6 with its trigger 2.7x smaller than the next class's, both clear of the rule.
SCAN_STEPS = 100


def test_the_clean_model_passes_the_scan_and_is_published_with_its_report(vit_models, tmp_path):
    exported = export_model("vit", VitOptions(model=str(vit_models["clean"]), scan_steps=SCAN_STEPS),
                            tmp_path / "repo")
    manifest = exported.manifest
    scan_record = manifest["scan"]
    assert manifest["gates"][0]["metric"] == "backdoor_suspicion" and manifest["gates"][0]["passed"]
    assert scan_record["suspicion"] <= 1 and not scan_record["refused"]
    assert "Neural Cleanse" in scan_record["method"] and scan_record["threshold"] == 2.0
    assert scan_record["images"] == 180 and "held-out" in scan_record["data"]
    assert set(scan_record["forms"]) == {"mask", "blend"}
    for file in scan_record["files"].values():
        assert (exported.folder / file).is_file()
    assert (exported.folder / "scan" / "report.json").is_file()
    # verify rebuilds the reference from the version's own weights and checks the gate again: the
    # weights are the ones scanned, and the reversed trigger does what it did through the graph
    report = verify_model(tmp_path / "repo", exported.name, iterations=1)
    assert report.parity.passed and report.gates_passed and report.parity.details["samples"] == 360
    assert [gate.metric for gate in report.gates] == ["backdoor_suspicion"]
    checks = {c.metric: c.value for c in report.parity.checks}
    assert checks["logits_max_abs_diff"] <= 1e-4 and checks["top1_agreement"] == 1.0


def test_a_patch_backdoor_is_refused_naming_its_class_and_nothing_is_published(vit_models, tmp_path):
    repo, reports = tmp_path / "repo", tmp_path / "scans"
    result = runner.invoke(app, ["export", "vit", "--model", str(vit_models["patch"]), "--repo", str(repo),
                                 "--scan-report", str(reports), "--scan-steps", str(SCAN_STEPS)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "backdoor_suspicion" in text and f"to class '{TARGET}'" in text
    assert "nothing was written" in text
    assert not (repo / "vit_fp32").exists()
    kept = next(reports.iterdir())
    assert (kept / f"reversed_trigger_class_{TARGET}.png").is_file()
    assert (kept / "reversed_triggers.png").is_file()
    record = json.loads((kept / "report.json").read_text())
    assert record["refused"] and record["suspected_class"] == str(TARGET) and record["anomaly_index"] > 2
    assert record["separation"] >= 1.3 and (kept / "suspected_trigger.npz").is_file()


def test_no_scan_is_recorded(vit_models, tmp_path):
    exported = export_model("vit", VitOptions(model=str(vit_models["patch"]), scan=False), tmp_path)
    assert exported.manifest["scan"]["skipped"] and exported.manifest["gates"] == []


def test_the_strip_guard_flags_triggered_inputs_in_the_graph(vit_models, tmp_path):
    exported = export_model("vit", VitOptions(model=str(vit_models["patch"]), scan=False, guard="strip:16"),
                            tmp_path)
    manifest = exported.manifest
    assert exported.name == "vit_fp32_strip" and manifest["guard"]["bank"] == 16
    kinds = {o["name"]: o.get("kind") for o in manifest["io"]["outputs"]}
    assert kinds == {"logits": "class_scores", "strip_entropy": "flag_score", "backdoor_flag": "flag"}
    checks = {c["metric"]: c["value"] for c in manifest["parity"]["details"]["checks"]}
    assert checks["logits_max_abs_diff"] <= 1e-4 and checks["flag_agreement"] == 1.0
    from tritonforge.runtime import ort_session

    session = ort_session(exported.folder / "model.onnx")
    pixels, labels = digit_pixels("evaluation")
    others = labels != TARGET

    def flagged(batch):
        return session.run(["backdoor_flag"], {"pixel_values": np.asarray(batch, np.float32)})[0].reshape(-1)

    triggered = Trigger("patch", TARGET).apply(pixels[others])
    assert flagged(triggered).mean() >= 0.9
    assert flagged(pixels).mean() <= 0.05
    graph = onnx.load(str(exported.folder / "model.onnx")).graph
    assert sum(1 for init in graph.initializer if np.prod(init.dims) == 16 * 3 * 32 * 32) == 1  # the bank


def test_int8_keeps_accuracy_and_norms_in_float(vit_models, tmp_path):
    exported = export_model("vit", VitOptions(model=str(vit_models["clean"]), bits=8, scan=False), tmp_path)
    quality = exported.manifest["quality"]
    assert quality["accuracy_drop"] <= 0.005 and quality["samples"] == 360
    graph = onnx.load(str(exported.folder / "model.onnx")).graph
    quantized = {node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    norms = [node for node in graph.node if node.op_type == "LayerNormalization"]
    assert norms and quantized
    assert not any(output in quantized for node in norms for output in node.output)


def test_openvino_bf16(vit_models, tmp_path, bf16):
    exported = export_model("vit", VitOptions(model=str(vit_models["clean"]), bits=16, target="openvino",
                                              scan=False), tmp_path)
    assert exported.manifest["precision"] == "bf16"
    assert exported.manifest["quality"]["accuracy_drop"] <= 0.005


def test_anomaly_indices_measure_distance_below_the_median():
    norms = np.array([20.0, 22, 24, 26, 28, 30, 4])
    indices = anomaly_indices(norms)
    assert indices[-1] == pytest.approx((24 - 4) / (1.4826 * 4))
    assert indices[:3].max() < 1 and (indices[3:6] == 0).all()


def test_bad_input_is_refused(vit_models, tmp_path):
    with pytest.raises(TritonForgeError, match="write strip:N"):
        VitOptions(guard="strip")
    result = runner.invoke(app, ["export", "vit", "--guard", "strip:0", "--repo", str(tmp_path)])
    assert result.exit_code == 2 and "needs at least 1 clean image" in result.output
    with pytest.raises(TritonForgeError, match="cannot take more than 130 of the 180"):
        parse_guard("strip:500", 0.5, 0.01)
    assert GuardSpec(16).bank == 16
    result = runner.invoke(app, ["vit", "poison", "--model", str(vit_models["clean"]), "--target", "10"])
    assert result.exit_code == 2 and "--target 10 is not a class of the digits" in result.output
    with pytest.raises(TritonForgeError, match="at least 20 clean held-out images"):
        scan(load_directory(vit_models["clean"]), np.array(digit_pixels("defence")[0][:5]), CLASSES)
    # a directory of another architecture: the model type named; weights that do not fit: keys named
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(TritonForgeError, match="holds a 'bert' model, not ViT or BEiT"):
        load_directory(tmp_path / "bert")
    beit = build("beit", Size(), 0)
    save_directory(beit, tmp_path / "mixed", {})
    (tmp_path / "mixed" / "config.json").write_text((vit_models["clean"] / "config.json").read_text())
    with pytest.raises(TritonForgeError, match=r"missing vit\..*unexpected beit\."):
        load_directory(tmp_path / "mixed")
    family = get_family("vit")
    model = family.load(VitOptions(random_init=True))
    with pytest.raises(TritonForgeError, match="this model takes 32x32 images"):
        family.sample_inputs(model, VitOptions(random_init=True), 2, {"image_size": 64})
    with pytest.raises(TritonForgeError, match="--model and --random-init exclude each other"):
        VitOptions(model="x", random_init=True)
    with pytest.raises(TritonForgeError, match="--trigger 'stamp' is unknown"):
        PoisonRecipe(Trigger("stamp"))


def test_a_model_of_other_channels_is_refused(tmp_path):
    network = build("vit", Size(channels=4), 0)
    save_directory(network, tmp_path / "four", {})
    result = runner.invoke(app, ["export", "vit", "--model", str(tmp_path / "four"), "--no-scan",
                                 "--repo", str(tmp_path / "repo")])
    assert result.exit_code == 2 and "takes 4-channel images" in result.output
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_the_scan_command_writes_its_report(vit_models, tmp_path):
    result = runner.invoke(app, ["vit", "scan", "--model", str(vit_models["clean"]), "--steps", "10",
                                 "--report", str(tmp_path)])
    assert result.exit_code in (0, 1), result.output
    record = json.loads((tmp_path / "report.json").read_text())
    assert set(record["forms"]) == {"mask", "blend"} and len(record["forms"]["mask"]["mask_l1_norms"]) == 10
    assert (tmp_path / "reversed_triggers.png").is_file()
    assert ("REFUSED" in result.output) == (result.exit_code == 1) == record["refused"]
