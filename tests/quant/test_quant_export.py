"""`export bert --bits 8/6/4`: QDQ ONNX with k-bit grids, integer kernels, manifest, verify."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.data import sentences
from tritonforge.encoders.slotted_bert import SlottedBert
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import BertOptions, tokenize
from tritonforge.export.bert.model import SentenceEncoder, embedded_model_dir, load_bert
from tritonforge.outputs.metrics import nearest_neighbour_agreement, row_cosines
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.quant.calibrate import attach_quantizers, observe, shift_and_scale
from tritonforge.quant.quantizable import grid_matmul
from tritonforge.runtime import cpu_has_bf16

runner = CliRunner()


@pytest.fixture(scope="module")
def w6a6_repo(tmp_path_factory, tiny_bert):
    repo = tmp_path_factory.mktemp("w6a6")
    # The paper's recipe (Gamma Migration + Token-Wise Clipping), whose clipping the tests read.
    options = BertOptions(model=str(tiny_bert), bits=6, method="os", calib_size=32, lsq_epochs=1)
    result = export_model("bert", options, repo)
    return repo, result


def test_quantized_export_is_named_for_its_bits_and_records_its_recipe(w6a6_repo):
    repo, result = w6a6_repo
    assert result.name == "bert_w6a6_os"
    manifest = json.loads((result.folder / "tritonforge.json").read_text())
    assert manifest["precision"] == "w6a6"
    quant = manifest["quantization"]
    assert quant["recipe"]["method"] == "os" and quant["recipe"]["wbits"] == quant["recipe"]["abits"] == 6
    assert quant["calibration"]["texts"] == 32 and len(quant["calibration"]["sha256"]) == 64
    assert quant["calibration"]["shipped"] is True
    assert set(quant["alphas"]) and all(0.5 <= a <= 1.0 for a in quant["alphas"].values())
    assert manifest["parity"]["value"] >= 0.999  # ONNX Runtime vs the PyTorch quantized reference
    assert 0.0 < manifest["quality"]["cosine_vs_fp"] <= 1.0 and manifest["quality"]["samples"] == 320
    assert (result.folder / "reference.pt").is_file()


def test_weights_are_int8_on_the_6_bit_grid_with_per_channel_scales(w6a6_repo):
    _, result = w6a6_repo
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantized = {name: v for name, v in initializers.items() if name.endswith("_quantized")}
    assert len(quantized) == 3 + 6 * 2  # 3 embedding tables + 6 Linears per layer, 2 layers
    for name, values in quantized.items():
        assert values.dtype == np.int8 and values.min() >= -32 and values.max() <= 31, name
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized]
    assert len(dequantize) == 6 * 2  # Linears: per-channel DequantizeLinear over [in, out]
    for node in dequantize:
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert axis == 1 and initializers[node.input[1]].shape == (quantized[node.input[0]].shape[1],)
    # Embedding rows are looked up in int8 and only the looked-up rows are dequantized.
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in quantized]
    assert len(gathers) == 3
    assert not [name for name, v in initializers.items() if v.dtype == np.float32 and v.ndim == 2]


def test_activations_are_clipped_to_64_levels_before_uint8_quantize(w6a6_repo):
    _, result = w6a6_repo
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == 1 + 8 * 2 - 1  # one per activation quantizer
    for node in quantize:
        clip = producers[node.input[0]]
        assert clip.op_type == "Clip"
        scale, zero = constants[node.input[1]], constants[node.input[2]]
        assert zero.dtype == np.uint8
        low, high = constants[clip.input[1]], constants[clip.input[2]]
        levels = (high - low) / scale
        assert levels == pytest.approx(63, abs=1e-3)


def test_onnx_runtime_runs_integer_matmuls(w6a6_repo):
    _, result = w6a6_repo
    ops = json.loads((result.folder / "tritonforge.json").read_text())["onnx"]["onnxruntime_cpu_ops"]
    # Q, K, V, attention output, FFN in and out per layer, plus QK^T and PV: 8 per layer
    assert ops.get("MatMulIntegerToFloat", 0) == 8 * 2
    assert "MatMul" not in ops


def test_verify_compares_with_the_saved_quantized_reference_and_fp(w6a6_repo):
    repo, result = w6a6_repo
    report = verify_model(repo, result.name, samples=16, iterations=2)
    assert report.parity.passed and report.parity.primary.value >= 0.999
    assert report.quality["samples"] == 320 and report.precision == "w6a6"
    assert report.to_json()["quality"]["cosine_vs_fp"] == pytest.approx(
        json.loads((result.folder / "tritonforge.json").read_text())["quality"]["cosine_vs_fp"], abs=1e-6)


@pytest.mark.parametrize("bits", [6, 8])
def test_products_on_quantization_grids_are_summed_exactly(bits):
    generator = torch.Generator().manual_seed(bits)
    top = 2 ** (bits - 1)
    a_scale, b_scale = torch.tensor(0.37), torch.tensor(0.011)
    a = torch.randint(-top, top, (4, 64, 1536), generator=generator).float() * a_scale
    b = torch.randint(-top, top, (1536, 96), generator=generator).float() * b_scale
    integers = (a.double() / a_scale.double()).round() @ (b.double() / b_scale.double()).round()
    expected = integers.float() * (a_scale * b_scale)  # one rounding, as MatMulIntegerToFloat
    torch.testing.assert_close(grid_matmul(a, a_scale, b, b_scale), expected, rtol=0, atol=0)


def test_bits_4_means_w4a8_with_gptq_weights():
    options = BertOptions(bits=4)
    recipe = options.recipe()
    assert (recipe.wbits, recipe.abits, recipe.weight_observer) == (4, 8, "gptq")
    # os+ clips 6- and 7-bit weights per row by MSE; 8-bit ones and the paper's os keep MinMax
    assert [BertOptions(bits=b).recipe().weight_observer for b in (8, 7, 6)] == ["minmax", "mse", "mse"]
    assert BertOptions(bits=6, method="os").recipe().weight_observer == "minmax"
    assert options.precision == "w4a8"
    assert BertOptions(bits=8, abits=6).precision == "w8a6"


def test_os_plus_reconstructs_on_the_pooled_objective_and_os_stays_the_papers():
    plus = BertOptions(bits=6).recipe()
    assert (plus.method, plus.reconstruct, plus.objective) == ("os+", True, "pooled")
    assert plus.reconstruct_iters == 160 and BertOptions(bits=6, method="os", reconstruct=True
                                                         ).recipe().reconstruct_iters == 200
    paper = BertOptions(bits=6, method="os").recipe()
    assert (paper.reconstruct, paper.objective) == (False, "hidden")
    chosen = BertOptions(bits=6, reconstruct=False, objective="both").recipe()
    assert (chosen.reconstruct, chosen.objective) == (False, "both")
    with pytest.raises(TritonForgeError, match="--reconstruct is a quantization option"):
        BertOptions(bits=32, reconstruct=True)
    with pytest.raises(TritonForgeError, match="objective 'cosine' is unknown"):
        BertOptions(bits=6, objective="cosine")


@pytest.mark.parametrize("method, name", [("os+", "bert_w8a8"), ("os", "bert_w8a8_os"),
                                          ("minmax", "bert_w8a8_minmax")])
def test_default_names_carry_the_method(method, name):
    # os+ is the default (best measured); the paper's os and the baselines carry their name.
    assert BertOptions(bits=8).method == "os+"
    from tritonforge.family import get_family

    assert get_family("bert").default_name(BertOptions(bits=8, method=method)) == name


def test_channel_shift_and_scale_keeps_minilm_outputs():
    model = load_bert(embedded_model_dir())
    feed = {k: torch.from_numpy(v) for k, v in tokenize(model.tokenizer, sentences(48), 128).items()}
    quant = SlottedBert(copy.deepcopy(model.bert)).eval()
    quantizers = attach_quantizers(quant, 6)
    observe(quant, quantizers, {k: v.numpy() for k, v in feed.items()}, 16)
    thresholds = shift_and_scale(quant, quantizers, grid=8)
    assert len(thresholds) == 2 * 6  # every quantized LayerNorm output
    scaled = [site for site in quant.norm_sites() if site.shortcut is not None
              and (site.shortcut.shortcut_scale > 1).any()]
    assert scaled, "MiniLM's outlier channels should be scaled down somewhere"
    with torch.no_grad():
        hidden, embedding = SentenceEncoder(model.bert, "mean", True)(**feed)
        hidden2, embedding2 = SentenceEncoder(quant, "mean", True)(**feed)
    real = feed["attention_mask"].bool()
    assert (hidden2 - hidden)[real].abs().max().item() <= 1e-4
    assert row_cosines(embedding.numpy(), embedding2.numpy()).min() >= 0.99999


def test_nearest_neighbour_agreement_counts_changed_neighbours():
    reference = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert nearest_neighbour_agreement(reference, reference) == 1.0
    swapped = np.array([[1.0, 0.0], [0.1, 0.9], [0.0, 1.0], [0.9, 0.1]])
    assert nearest_neighbour_agreement(reference, swapped) == 0.0


# -- bad input -------------------------------------------------------------------------------


def cli_export(*args):
    return runner.invoke(app, ["export", "bert", *args])


def test_missing_calibration_file_is_named(tmp_path, tiny_bert):
    result = cli_export("--model", str(tiny_bert), "--bits", "6", "--calib", str(tmp_path / "nope.txt"),
                        "--repo", str(tmp_path))
    assert result.exit_code == 2 and "nope.txt does not exist" in result.output


def test_empty_calibration_file_is_refused(tmp_path, tiny_bert):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    result = cli_export("--model", str(tiny_bert), "--bits", "6", "--calib", str(empty),
                        "--repo", str(tmp_path))
    assert result.exit_code == 2 and "has no text" in result.output


def test_short_calibration_file_is_refused_unless_asked(tmp_path, tiny_bert):
    short = tmp_path / "short.txt"
    short.write_text("\n".join(sentences(20)) + "\n")
    result = cli_export("--model", str(tiny_bert), "--bits", "6", "--calib", str(short),
                        "--repo", str(tmp_path))
    assert result.exit_code == 2
    assert "has 20 texts, fewer than --calib-size 256" in result.output and "--allow-fewer" in result.output
    assert not (tmp_path / "bert_w6a6").exists()
    result = cli_export("--model", str(tiny_bert), "--bits", "6", "--calib", str(short), "--allow-fewer",
                        "--lsq-epochs", "0", "--repo", str(tmp_path))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "bert_w6a6" / "1" / "tritonforge.json").read_text())
    assert manifest["quantization"]["calibration"]["texts"] == 20


@pytest.mark.parametrize("flag, value", [("--bits", "9"), ("--bits", "1"), ("--wbits", "12")])
def test_bits_outside_2_to_8_are_refused_by_the_cli(tmp_path, flag, value):
    args = ["--bits", "6", flag, value] if flag != "--bits" else [flag, value]
    result = cli_export(*args, "--repo", str(tmp_path))
    assert result.exit_code == 2 and f"{value} is outside 2..8" in result.output


def test_a_model_that_is_not_a_post_ln_bert_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2Model"]}))
    result = cli_export("--model", str(folder), "--bits", "6", "--repo", str(tmp_path))
    assert result.exit_code == 2 and "post-LN BERT" in result.output


def test_quantizing_a_classifier_is_refused_with_what_works(tmp_path, tiny_classifier):
    with pytest.raises(TritonForgeError, match="export classifiers with --bits 32 or 16"):
        export_model("bert", BertOptions(model=str(tiny_classifier), bits=8, calib_size=8), tmp_path)


def test_quality_command_tables_fp32_dynamic_int8_and_each_recipe(tmp_path, tiny_bert):
    report, plot = tmp_path / "quality.json", tmp_path / "quality.png"
    result = runner.invoke(app, ["quality", "bert", "--model", str(tiny_bert), "--bits", "6",
                                 "--methods", "os,minmax", "--calib-size", "16", "--lsq-epochs", "0",
                                 "--max-drops", "0.01",
                                 "--iterations", "2", "--json", str(report), "--plot", str(plot)],
                           terminal_width=250)
    assert result.exit_code == 0, result.output
    rows = {row["variant"]: row for row in json.loads(report.read_text())}
    # Every graph on each installed target (BF16 where the CPU has it), quantize_dynamic on ONNX
    # Runtime, whose operators it chose.
    # NNCF's INT8 (the test extra installs it) runs on OpenVINO with each float-op hint there is.
    bf16 = ["bf16 (openvino)"] if cpu_has_bf16() else []  # none on a CPU without it
    nncf_bf16 = ["nncf int8, bf16 float ops (openvino)"] if cpu_has_bf16() else []
    assert list(rows) == ["fp32 (PyTorch eager)", "fp32 (onnxruntime)", "fp32 (openvino)", *bf16,
                          "quantize_dynamic int8 (onnxruntime)", "nncf int8 (openvino)", *nncf_bf16,
                          "w6a6 os (onnxruntime)", "w6a6 os (openvino)",
                          "w6a6 minmax (onnxruntime)", "w6a6 minmax (openvino)",
                          # below 8 bits (auto's 6- and 4-bit quantizers) float ops stay fp32
                          "auto 0.01 (onnxruntime)", "auto 0.01 (openvino)"]
    for target in ("onnxruntime", "openvino"):
        fp32 = rows[f"fp32 ({target})"]
        assert fp32["cosine_vs_fp"] > 0.99999 and fp32["nn_agreement_vs_fp"] == 1.0
    assert not bf16 or 0.999 < rows["bf16 (openvino)"]["cosine_vs_fp"] < 1.0
    for name in ("quantize_dynamic int8 (onnxruntime)", "w6a6 os (onnxruntime)", "w6a6 os (openvino)",
                 "w6a6 minmax (onnxruntime)", "nncf int8 (openvino)", *nncf_bf16):
        row = rows[name]
        assert 0.5 < row["cosine_vs_fp"] < 1.0 and row["latency_p50_ms"] > 0 and row["serving_p50_ms"] > 0
        assert row["onnx_mb"] > 0
    assert [rows[name]["float_ops"] for name in ("nncf int8 (openvino)", *nncf_bf16)] == \
        ["fp32", *(["bf16"] if nncf_bf16 else [])]
    assert rows["w6a6 os (openvino)"]["alphas"] and rows["w6a6 minmax (openvino)"]["alphas"] is None
    # the quantized graphs hold int8 weights: a quarter of FP32's bytes, give or take the floats kept
    assert rows["w6a6 os (onnxruntime)"]["onnx_mb"] < 0.5 * rows["fp32 (onnxruntime)"]["onnx_mb"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --bits auto within 0.01: fewer bits than W8A8 would need, placed on the Pareto front's plot.
    auto = rows["auto 0.01 (onnxruntime)"]
    assert auto["precision"] == "mixed" and auto["average_bits"] < 8
    assert rows["w6a6 os (onnxruntime)"]["average_bits"] == 6
    assert "Pareto front on onnxruntime" in result.output
    assert (tmp_path / "quality_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_command_refuses_unknown_methods_and_bad_bits(tmp_path):
    result = runner.invoke(app, ["quality", "bert", "--methods", "os,awq"])
    assert result.exit_code == 2 and "'awq' is unknown" in result.output
    result = runner.invoke(app, ["quality", "bert", "--bits", "8,x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output
    result = runner.invoke(app, ["quality", "bert", "--max-drops", "0.01,2"])
    assert result.exit_code == 2 and "--max-drop 2.0 must lie strictly between 0 and 1" in result.output
    result = runner.invoke(app, ["quality", "bert", "--targets", "onnxruntime,tensorrt"])
    assert result.exit_code == 2 and "'tensorrt' is not a CPU runtime" in result.output


def test_os_plus_quantizes_linear_inputs_and_openvino_keeps_attention_one_kernel(tmp_path, tiny_bert):
    # os+ (the default) leaves attention float, as NNCF's transformer preset does; the paper's os
    # (w6a6_repo) quantizes Q, K, V and the probabilities too.
    options = BertOptions(model=str(tiny_bert), bits=8, calib_size=16, lsq_epochs=0, reconstruct=False,
                          target="openvino")
    assert options.recipe().placement == "linear"
    assert BertOptions(bits=8, method="os").recipe().placement == "all"
    result = export_model("bert", options, tmp_path)
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    # the embedding LN's output, then per layer the attention context, its LN and GELU, and the
    # output LN that feeds the next layer: 1 + 3 * 2 + 1
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == 8
    manifest = json.loads((result.folder / "tritonforge.json").read_text())
    executed = manifest["onnx"]["openvino_cpu_ops"]
    # every Linear (6 per layer) an integer GEMM, no MatMul or Softmax left outside a fused kernel
    assert sum(n for op, n in executed.items() if op in ("FullyConnected u8", "FullyConnected i8")) == 12
    assert not [op for op in executed if op.startswith(("MatMul", "Softmax", "FullyConnected f"))]
    # at 8 bits the float ops run in bfloat16 where the CPU has it, in the export's checks and in
    # Triton; below 8 bits they stay fp32
    assert BertOptions(bits=6, target="openvino").float_ops == "fp32"
    bf16 = cpu_has_bf16()
    assert manifest["onnx"]["float_ops"] == ("bf16" if bf16 else "fp32")
    assert manifest["serving"]["bf16"] is bf16
    assert ('"HINT_BF16"' in (result.folder.parent / "config.pbtxt").read_text()) is bf16
    assert manifest["parity"]["value"] >= 0.995
