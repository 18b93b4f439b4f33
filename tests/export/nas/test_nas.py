"""The `nas` family: the DARTS space and genotype files, the four kinds of search data, the latency
table measured on ONNX Runtime, first-order search with latency in the objective, training on
real (and the user's own) labelled images, the export through the normal pipeline, and the
comparison. Sizes are tiny: the figures come from `nas compare` (docs/nas.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.nas import NasOptions
from tritonforge.export.nas.compare import CompareRecipe, compare, comparison_table, plot_comparison
from tritonforge.export.nas.data import DATA_KINDS, SHAPES, search_data
from tritonforge.export.nas.latency import LatencyTable, measure_table, obtain_table
from tritonforge.export.nas.network import Network, NetworkSize, edge_shapes
from tritonforge.export.nas.search import SearchRecipe, search
from tritonforge.export.nas.space import CHOSEN, EDGES, PRIMITIVES, Genotype, derive, random_genotype
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model

runner = CliRunner()
pytestmark = pytest.mark.slow
TINY = {"width": 4, "layers": 3, "epochs": 1, "samples": 384}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A latency table of the served network (width 16, 5 cells) measured here on ONNX Runtime."""
    path = tmp_path_factory.mktemp("nas") / "latency.json"
    return measure_table("onnxruntime", 2, 8, NetworkSize()).write(path)


@pytest.fixture(scope="module")
def genotype_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("nas") / "genotype.json"
    path.write_text(json.dumps({"genotype": random_genotype(np.random.default_rng(3)).to_json()}))
    return path


@pytest.fixture(scope="module")
def checkpoint(genotype_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("nas") / "nas.pt"
    result = runner.invoke(app, ["nas", "train", "--genotype", str(genotype_file), "--epochs", "6",
                                 "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_derivation_keeps_each_nodes_two_strongest_edges_and_never_none():
    weights = {kind: np.full((EDGES, len(PRIMITIVES)), 0.1) for kind in ("normal", "reduce")}
    weights["normal"][:, PRIMITIVES.index("none")] = 0.9  # `none` strongest everywhere: still never chosen
    weights["normal"][0, PRIMITIVES.index("sep_conv_3x3")] = 0.5  # node 0: input 0
    weights["normal"][1, PRIMITIVES.index("max_pool_3x3")] = 0.4  # node 0: input 1
    weights["normal"][4, PRIMITIVES.index("dil_conv_5x5")] = 0.6  # node 1 (edges 2-4): input 2
    weights["normal"][2, PRIMITIVES.index("skip_connect")] = 0.3  # node 1: input 0
    genotype = derive(weights)
    assert genotype.normal[:4] == (("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 0),
                                   ("dil_conv_5x5", 2))
    assert all(op in CHOSEN for op, _index in genotype.normal + genotype.reduce)
    assert Genotype.from_json(json.loads(json.dumps(genotype.to_json()))) == genotype


def test_networks_have_the_shapes_the_latency_table_keys():
    size = NetworkSize()
    cells = edge_shapes(size)
    assert [kind for kind, _shapes in cells] == ["normal", "reduce", "normal", "reduce", "normal"]
    assert cells[1][1][2] == (32, 8, 2) and cells[1][1][4] == (32, 4, 1)  # reduce: inputs 0, 1 stride 2
    import torch

    logits = Network(random_genotype(np.random.default_rng(0)), size)(torch.zeros(3, 1, 8, 8))
    assert logits.shape == (3, 10)


def test_search_data_kinds():
    real, noise = search_data("real", 0), search_data("noise", 0)
    assert real.images.shape == noise.images.shape == (1437, 1, 8, 8)
    assert abs(noise.images.mean() - real.images.mean()) < 0.01  # the digits' pixel statistics
    shuffled = search_data("random-labels", 0)
    assert np.array_equal(shuffled.images, real.images) and (shuffled.labels == real.labels).mean() < 0.2
    assert np.array_equal(search_data("noise", 1).labels, search_data("noise", 1).labels)
    # generated shapes carry their generator's labels: a linear classifier learns them, unlike noise's
    from sklearn.linear_model import LogisticRegression

    for kind, low, high in (("generated", 0.7, 1.0), ("noise", 0.0, 0.2)):
        data = search_data(kind, 0)
        flat = data.images.reshape(len(data.images), -1)
        model = LogisticRegression(max_iter=500).fit(flat[:1000], data.labels[:1000])
        assert low <= model.score(flat[1000:], data.labels[1000:]) <= high, kind
    assert len(search_data("generated", 0).classes) == len(SHAPES)
    with pytest.raises(TritonForgeError, match="choose one of real, random-labels, generated, noise"):
        search_data("cifar", 0)
    assert set(DATA_KINDS) == {"real", "random-labels", "generated", "noise"}


def test_the_latency_table_covers_every_primitive_and_refuses_another_runtime(table):
    loaded = LatencyTable.read(table)
    assert loaded.target == "onnxruntime" and loaded.threads == 2 and loaded.batch == 8
    shapes = {shape for _kind, cell in edge_shapes(NetworkSize()) for shape in cell}
    for op in CHOSEN:
        for shape in shapes:
            value = loaded.entry(op, *shape)
            assert value >= 0 and (value == 0) == (op == "skip_connect" and shape[2] == 1)
    assert len(loaded.calibration["points"]) == 8 and loaded.calibration["scale"] > 0
    genotype = random_genotype(np.random.default_rng(1))
    point = loaded.calibration["points"][2]
    assert point["predicted_ms"] == pytest.approx(loaded.calibration["scale"] * point["operations_ms"]
                                                  + loaded.calibration["offset_ms"], abs=1e-4)
    assert loaded.predict(genotype) > loaded.calibration["offset_ms"]
    with pytest.raises(TritonForgeError, match="measured for target onnxruntime .this search: openvino."):
        obtain_table(table, "openvino", 2, 8, NetworkSize())
    with pytest.raises(TritonForgeError, match="2 threads .this search: 4."):
        obtain_table(table, "onnxruntime", 4, 8, NetworkSize())
    result = runner.invoke(app, ["nas", "search", "--latency-table", str(table), "--threads", "1"])
    assert result.exit_code == 2
    assert "Measure one with `tritonforge nas latency" in " ".join(result.output.split())


def test_latency_weight_moves_the_search_to_cheaper_operations(table):
    loaded = LatencyTable.read(table)
    plain = search(SearchRecipe(data="noise", **TINY), loaded)
    weighted = search(SearchRecipe(data="noise", latency_weight=5.0, **TINY), loaded)
    assert weighted.history[-1]["relative_expected_latency"] < plain.history[-1]["relative_expected_latency"]
    assert loaded.predict(weighted.genotype) < loaded.predict(plain.genotype)


def test_search_command_writes_a_genotype_with_predicted_and_measured_latency(table, tmp_path):
    out = tmp_path / "g.json"
    result = runner.invoke(app, ["nas", "search", "--data", "generated", "--epochs", "1", "--width", "4",
                                 "--layers", "3", "--samples", "256", "--latency-table", str(table),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    Genotype.from_json(record["genotype"])
    assert record["search"]["recipe"]["data"] == "generated" and len(record["search"]["history"]) == 1
    latency = record["latency"]
    assert latency["target"] == "onnxruntime" and latency["measured_ms"] > 0 and latency["predicted_ms"] > 0
    assert "predicted" in result.output and "measured" in result.output


def test_bad_genotype_files_are_refused(tmp_path, genotype_file):
    good = json.loads(genotype_file.read_text())["genotype"]
    cases = {"unknown primitive 'conv_7x7'": {**good, "normal": [["conv_7x7", 0]] + good["normal"][1:]},
             "reads input 3, out of range for node 1": {
                 **good, "reduce": good["reduce"][:2] + [["skip_connect", 3]] + good["reduce"][3:]},
             "a genotype names an operation": {**good, "normal": [["none", 0]] + good["normal"][1:]},
             "has 7 edges": {**good, "normal": good["normal"][:7]}}
    for message, data in cases.items():
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"genotype": data}))
        result = runner.invoke(app, ["nas", "train", "--genotype", str(path), "--epochs", "1"])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (message, result.output)
    (tmp_path / "text.json").write_text("not json")
    result = runner.invoke(app, ["nas", "train", "--genotype", str(tmp_path / "text.json")])
    assert result.exit_code == 2 and "is not JSON" in result.output


def test_training_on_a_folder_and_bad_data_is_refused(tmp_path, genotype_file):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    result = runner.invoke(app, ["nas", "train", "--genotype", str(genotype_file), "--data", str(empty)])
    assert result.exit_code == 2 and "holds no images" in result.output
    folder = tmp_path / "shapes"
    data = search_data("generated", 0)
    for index in range(60):
        label = SHAPES[data.labels[index]].replace(" ", "_")
        (folder / label).mkdir(parents=True, exist_ok=True)
        pixels = (data.images[index, 0] * 255).astype(np.uint8)
        PILImage.fromarray(pixels, "L").save(folder / label / f"{index}.png")
    out = tmp_path / "folder.pt"
    result = runner.invoke(app, ["nas", "train", "--genotype", str(genotype_file), "--data", str(folder),
                                 "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["config"]["classes"] == sorted(p.name for p in folder.iterdir())
    assert "held out" in saved["metrics"]["held_out"]
    np.savez(tmp_path / "bad.npz", images=data.images[:20, 0], labels=np.r_[data.labels[:19], 12],
             classes=np.array(SHAPES))
    result = runner.invoke(app, ["nas", "train", "--genotype", str(genotype_file), "--data",
                                 str(tmp_path / "bad.npz")])
    assert result.exit_code == 2
    assert "label 12 (sample 19) is out of range: labels run 0 .. 9" in result.output


def test_export_fp32_parity_and_verify(checkpoint, tmp_path):
    exported = export_model("nas", NasOptions(checkpoint=str(checkpoint)), tmp_path / "repo")
    assert exported.name == "nas_fp32"
    manifest = exported.manifest
    checks = {c["metric"]: c["value"] for c in manifest["parity"]["details"]["checks"]}
    assert checks["logits_max_abs_diff"] <= 1e-4 and checks["top1_agreement"] == 1.0
    assert manifest["source"]["genotype"] == json.loads(checkpoint.with_suffix(".json").read_text()
                                                        )["config"]["genotype"]
    assert manifest["latency"]["exported"]["measured_ms"] > 0
    assert manifest["io"]["labels"] == [str(d) for d in range(10)]
    report = verify_model(tmp_path / "repo", exported.name, iterations=1)
    assert report.parity.passed and report.parity.details["samples"] == 360


def test_int8_keeps_accuracy_within_its_gate(checkpoint, tmp_path):
    exported = export_model("nas", NasOptions(checkpoint=str(checkpoint), bits=8), tmp_path)
    manifest = exported.manifest
    assert manifest["gates"][0]["metric"] == "accuracy_drop" and manifest["gates"][0]["passed"]
    assert manifest["quality"]["accuracy_drop"] <= 0.01
    assert manifest["quantization"]["quantize_linear_nodes"] > 0


def test_fp16_and_openvino_bf16(checkpoint, tmp_path, bf16):
    for bits, target, precision in ((16, "onnxruntime", "fp16"), (16, "openvino", "bf16")):
        options = NasOptions(checkpoint=str(checkpoint), bits=bits, target=target)
        exported = export_model("nas", options, tmp_path)
        assert exported.manifest["precision"] == precision
        assert exported.manifest["quality"]["accuracy_drop"] <= 0.01


def test_the_bundled_genotype_trains_and_exports(tmp_path):
    result = runner.invoke(app, ["export", "nas", "--epochs", "1", "--repo", str(tmp_path)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "nas_digits_fp32" / "1" / "tritonforge.json").read_text())
    assert manifest["source"]["searched"]["data"] == "noise"
    assert manifest["latency"]["search"]["target"] == "onnxruntime"
    assert (tmp_path / "nas_digits_fp32" / "1" / "nas.pt").is_file()


def test_compare_reports_every_kind_and_random_genotypes(table, tmp_path):
    recipe = CompareRecipe(seeds=(0,), kinds=("real", "noise"), search_epochs=1, train_epochs=1,
                           search_width=4, search_layers=3, search_samples=256, latency_weights=(1.0,))
    result = compare(recipe, tmp_path, table)
    assert {row["kind"] for row in result["rows"]} == {"real", "noise", "random", "noise (latency curve)"}
    random_row = next(row for row in result["rows"] if row["kind"] == "random")
    real_row = next(row for row in result["rows"] if row["kind"] == "real")
    assert abs(random_row["predicted_ms"] - real_row["predicted_ms"]) / real_row["predicted_ms"] <= 0.03
    assert all(0 <= row["accuracy"] <= 1 and row["measured_ms"] > 0 for row in result["rows"])
    assert result["summary"]["real"]["accuracy_gap_points"] == 0
    assert len(comparison_table(result)) == 2
    assert plot_comparison(result, tmp_path / "compare.png").stat().st_size > 0
    # a rerun reuses the searches and the trained accuracies
    again = compare(recipe, tmp_path, table)
    assert [row["accuracy"] for row in again["rows"]] == [row["accuracy"] for row in result["rows"]]
    with pytest.raises(TritonForgeError, match="choose among real"):
        CompareRecipe(kinds=("imagenet",))
