"""W4 exports store their weights at 4 bits: INT4 MatMul weights (opset 21), packed embedding rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tritonforge.export.bert.outlier_suppression as bert_quantized
from tritonforge.data import sentences
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import BertOptions, tokenize
from tritonforge.export.input_guards import declared_guards, guard_onnx_file
from tritonforge.modalities import manifest_io
from tritonforge.pipeline.export import export_model
from tritonforge.quant import qdq
from tritonforge.quant.qdq import NIBBLE_VALUES, dequantize_weights, gather_rows, pack_nibbles, raise_opset


def tiny_export(tiny_bert, bits: int, repo):
    """Export the tiny BERT at `bits`, keeping the traced float graph and the quantized weights
    handed to `dequantize_weights`."""
    captured = {}

    def capture(path, weights):
        shutil.copy(path, repo / "traced.onnx")
        captured["weights"] = weights
        return qdq.dequantize_weights(path, weights)

    options = BertOptions(model=str(tiny_bert), bits=bits, calib_size=8, allow_fewer=True, lsq_epochs=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bert_quantized, "dequantize_weights", capture)
        result = export_model("bert", options, repo)
    return result, repo / "traced.onnx", captured["weights"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_bert):
    """The W4A8 and W8A8 exports of the tiny BERT, and the W4 weights in int8 containers."""
    w4, traced, weights = tiny_export(tiny_bert, 4, tmp_path_factory.mktemp("w4"))
    int8_container = traced  # the same traced graph and integers, the 8-bit layout
    dequantize_weights(int8_container, weights, pack_int4=False)
    io = manifest_io(json.loads((w4.folder / "tritonforge.json").read_text()))  # guarded as the export
    guard_onnx_file(int8_container, declared_guards(io, io.preprocessing.limits()))
    w8, _, _ = tiny_export(tiny_bert, 8, tmp_path_factory.mktemp("w8"))
    return w4.folder / "model.onnx", int8_container, w8.folder / "model.onnx", weights


def initializers(path):
    return {i.name: i for i in onnx.load(str(path)).graph.initializer}


def default_opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def test_linear_weights_are_int4_initializers_at_opset_21(exports):
    w4, _, _, weights = exports
    model = onnx.load(str(w4))
    onnx.checker.check_model(model, full_check=True)
    assert default_opset(w4) == 21 and model.ir_version >= 10
    assert json.loads((w4.parent / "tritonforge.json").read_text())["onnx"]["opset"] == 21
    tensors = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                  and n.input[0] in producers and producers[n.input[0]].op_type == "Cast"]
    assert len(dequantize) == 6 * 2  # 6 Linears per layer, 2 layers
    for node in dequantize:
        cast = producers[node.input[0]]  # INT4 on disk, widened to int8 in the graph
        values = tensors[cast.input[0]]
        assert cast.input[0].endswith("_quantized") and values.data_type == TensorProto.INT4
        assert next(a.i for a in cast.attribute if a.name == "to") == TensorProto.INT8
        assert len(values.raw_data) == (int(np.prod(values.dims)) + 1) // 2  # two per byte
        assert not numpy_helper.to_array(tensors[node.input[2]]).any()
        axis = next(a.i for a in node.attribute if a.name == "axis")
        assert axis == 1 and tuple(tensors[node.input[1]].dims) == (values.dims[1],)
    assert not [i.name for i in model.graph.initializer  # int8: the zero points only
                if i.data_type == TensorProto.INT8 and not i.name.endswith("_zero_point")]
    # Embedding tables (Gather takes no INT4): two 4-bit values per uint8, looked up row by row.
    tables = [n.input[0] for n in model.graph.node if n.op_type == "Gather"
              and n.input[0].endswith("_quantized")]
    assert len(set(tables)) == 3
    for name in tables:
        assert tensors[name].data_type == TensorProto.UINT8 and tensors[name].dims[1] == 32 // 2
    assert sum(w.bits == 4 for w in weights.values()) == len(weights) == 3 + 6 * 2


def test_the_stored_integers_are_those_of_the_int8_container(exports):
    w4, int8_container, _, _ = exports
    packed, plain = initializers(w4), initializers(int8_container)
    assert default_opset(int8_container) == 17
    quantized = [name for name in plain if name.endswith("_quantized")]
    assert len(quantized) == 3 + 6 * 2
    for name in quantized:
        expected = numpy_helper.to_array(plain[name])
        assert expected.dtype == np.int8
        stored = numpy_helper.to_array(packed[name])
        if packed[name].data_type == TensorProto.UINT8:  # packed embedding rows
            stored = NIBBLE_VALUES[stored].reshape(expected.shape)
        np.testing.assert_array_equal(stored.astype(np.int8), expected, err_msg=name)


def test_onnx_runtime_runs_the_int4_graph_like_the_int8_container(exports, tiny_bert):
    w4, int8_container, _, _ = exports
    from transformers import AutoTokenizer

    feed = tokenize(AutoTokenizer.from_pretrained(str(tiny_bert)), sentences(8), 128)  # real ids, 8 x 128
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    outputs = []
    for path in (w4, int8_container):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        outputs.append(session.run(None, {k: v for k, v in feed.items() if k in names}))
    assert len(outputs[0]) == 2 and outputs[0][0].shape == (8, 128, 32)
    for packed, plain in zip(*outputs, strict=True):
        assert np.isfinite(packed).all()
        np.testing.assert_allclose(packed, plain, rtol=0, atol=1e-5)


def test_onnx_runtime_still_runs_integer_matmuls(exports):
    # It folds the Cast of the INT4 constants into int8 ones, so the QDQ fusion still applies.
    w4, int8_container, _, _ = exports
    ops = json.loads((w4.parent / "tritonforge.json").read_text())["onnx"]["onnxruntime_cpu_ops"]
    plain = qdq.integer_kernels(int8_container)
    # every Linear (6 per layer) an integer GEMM; os+ leaves attention's QK^T and PV float
    assert ops["MatMulIntegerToFloat"] == plain["MatMulIntegerToFloat"] == 6 * 2
    # (ONNX Runtime fuses the 1/sqrt(d) scale into QK^T: a FusedMatMul)
    assert ops["MatMul"] == ops["FusedMatMul"] == plain["MatMul"] == 2
    assert ops["Cast"] == plain["Cast"]  # the INT4 -> int8 Casts: folded


def test_w4_file_is_smaller_than_w8_by_half_the_weights(exports):
    w4, int8_container, w8, weights = exports
    assert default_opset(w8) == 17
    w8_values = [numpy_helper.to_array(v) for k, v in initializers(w8).items() if k.endswith("_quantized")]
    assert len(w8_values) == 3 + 6 * 2 and all(v.dtype == np.int8 for v in w8_values)
    saved = sum(w.values.numel() for w in weights.values()) // 2  # bytes: 8 -> 4 bits a weight
    for larger in (w8, int8_container):
        shrink = larger.stat().st_size - w4.stat().st_size
        assert 0.97 * saved <= shrink <= saved, (larger, shrink, saved)


def test_nibbles_pack_two_signed_values_per_byte_and_unpack_by_lookup():
    values = np.arange(-8, 8, dtype=np.int8)[np.random.default_rng(0).integers(0, 16, (5, 10))]
    packed = pack_nibbles(values)
    assert packed.dtype == np.uint8 and packed.shape == (5, 5)
    # ONNX's INT4 layout: the even element in the low nibble.
    assert bytes(packed.tobytes()) == numpy_helper.from_array(
        values.astype(onnx.helper.tensor_dtype_to_np_dtype(TensorProto.INT4)), "t").raw_data
    np.testing.assert_array_equal(NIBBLE_VALUES[packed].reshape(values.shape), values)


def test_packed_rows_are_looked_up_for_any_shape_of_ids():
    table = np.random.default_rng(1).integers(-8, 8, (50, 6)).astype(np.int8)
    scale = np.random.default_rng(2).uniform(0.5, 2.0, 50).astype(np.float32)
    for ids in (np.array([3, 0, 49]), np.array([[1, 2], [7, 7], [49, 0]])):
        dims = [f"d{i}" for i in range(ids.ndim)]
        graph = helper.make_graph(
            [helper.make_node("Gather", ["table", "ids"], ["rows"])], "rows",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, dims)],
            [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [*dims, 6])])
        assert gather_rows(graph, "table", packed=True)
        graph.initializer.extend([
            numpy_helper.from_array(pack_nibbles(table), "table_quantized"),
            numpy_helper.from_array(scale, "table_scale"),
            numpy_helper.from_array(np.array([-1], np.int64), "table_last_axis"),
            numpy_helper.from_array(NIBBLE_VALUES, "table_nibbles"),
            numpy_helper.from_array(np.array([6], np.int64), "table_width")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = table[ids].astype(np.float32) * scale[ids][..., None]
        np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], expected)


def test_raising_the_opset_moves_reduce_axes_to_an_input_and_keeps_the_result():
    # MiniLM's normalized sentence embedding traces to ReduceL2 with an axes attribute (opset 17).
    x = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceL2", ["x"], ["norm"], name="norm", axes=[1], keepdims=1)], "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])],
        [helper.make_tensor_value_info("norm", TensorProto.FLOAT, [4, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    raise_opset(model, 21, 10)
    onnx.checker.check_model(model, full_check=True)
    assert default_opset_of(model) == 21 and model.ir_version == 10
    node = model.graph.node[0]
    assert list(node.input) == ["x", "norm_axes"] and [a.name for a in node.attribute] == ["keepdims"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], np.linalg.norm(x, axis=1, keepdims=True),
                               rtol=1e-6)
    grouped = helper.make_model(helper.make_graph(
        [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=1)], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "xsb"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(TritonForgeError, match="GroupNormalization"):
        raise_opset(grouped, 21, 10)


def default_opset_of(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
