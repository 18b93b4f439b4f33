"""The exported graph refuses what the local wrapper refuses (tritonforge.export.input_guards).

In production Triton's onnxruntime and openvino backends run model.onnx directly: each guard
must make BOTH runtimes raise (token ids out of range, token types, mask values, sequences too
long or empty) with the failing node's name in the message, and in-range inputs must compute
bit for bit what the unguarded graph computes. Everything here runs plain
onnxruntime.InferenceSession and openvino's Core().compile_model, never the wrapper.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tritonforge.errors import TritonForgeError
from tritonforge.export.input_guards import (
    LENGTH,
    VALUES,
    InputGuard,
    add_input_guards,
    declared_guards,
    guard_onnx_file,
)
from tritonforge.family import get_family
from tritonforge.modalities import Text
from tritonforge.runtime import cpu_has_bf16
from tritonforge.serving.local import shadow_models
from tritonforge.serving.repository import ModelRepository
from tritonforge.spec import ModelIO, TensorSpec

VOCAB = 30522  # the tiny BERT's (MiniLM's tokenizer); type_vocab_size 2, max_length 512
TOKENS = ("input_ids", "attention_mask", "token_type_ids")
ANY_LENGTH_GUARD = r"(input_ids|attention_mask|token_type_ids)_length_out_of_range_1_512"


# -- running a graph in the two runtimes, as Triton's backends do ----------------------------------


def ort_runner(path: Path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)


def openvino_runner(path: Path, precision: str = "f32"):
    """One compiled model and one infer request for every call, as Triton's openvino backend
    keeps them (a failed request must not break the next one)."""
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    return lambda feed: [np.array(v) for v in request.infer(feed, share_outputs=False).values()]


def runners(path: Path, openvino: bool = True) -> dict[str, object]:
    found = {"onnxruntime": ort_runner(path)}
    if openvino:
        found["openvino"] = openvino_runner(path)
        if cpu_has_bf16():
            found["openvino bf16"] = openvino_runner(path, "bf16")
    return found


def assert_refused(run, feed: dict[str, np.ndarray], node: str) -> None:
    with pytest.raises(Exception) as refused:  # noqa: PT011 - each runtime has its own error types
        run(feed)
    assert re.search(node, str(refused.value)), str(refused.value)


def assert_same(got: list[np.ndarray], expected: list[np.ndarray], context: str = "") -> None:
    """Bit for bit."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=context)


def unguarded_twin(repo: Path, name: str, folder: Path) -> Path:
    """The version's graph exported again by its family, without the pipeline's guards."""
    repository = ModelRepository(repo)
    manifest = repository.read_manifest(name)
    family = get_family(manifest["family"])
    options = family.options_from_json(manifest["recipe"])
    model = family.load_version(options, repository.resolve(name)[1])
    path = folder / "unguarded.onnx"
    family.export(model, path, options)
    return path


# -- a toy graph: the construction itself ------------------------------------------------------------


def toy_graph(path: Path) -> Path:
    """ids (int64) -> an embedding table of 100 rows, times a uint8 mask; `spare` is read by no node."""
    table = np.random.default_rng(0).random((100, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
         helper.make_node("Cast", ["mask"], ["mask_float"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["mask_float", "last"], ["mask_3d"]),
         helper.make_node("Mul", ["rows", "mask_3d"], ["out"])],
        "toy",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("mask", TensorProto.UINT8, ["batch", "length"]),
         helper.make_tensor_value_info("spare", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "length", 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([-1]), "last")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


TOY_GUARDS = (InputGuard("ids", VALUES, 0, 99, what="row ids"), InputGuard("mask", VALUES, 0, 1),
              InputGuard("spare", VALUES, 0, 3), InputGuard("ids", LENGTH, 1, 16, (1,)))


def toy_feed(length: int = 8, batch: int = 2, **changed) -> dict[str, np.ndarray]:
    feed = {"ids": np.arange(batch * length, dtype=np.int64).reshape(batch, length) % 100,
            "mask": np.ones((batch, length), np.uint8), "spare": np.zeros((batch, length), np.int64)}
    for name, (index, value) in changed.items():
        feed[name][index] = value
    return feed


TOY_BAD = {
    "id -5": (toy_feed(ids=((1, 3), -5)), "ids_out_of_range_0_99"),
    "id at the table's size": (toy_feed(ids=((0, 0), 100)), "ids_out_of_range_0_99"),
    "id 10,000,000": (toy_feed(ids=((1, 7), 10_000_000)), "ids_out_of_range_0_99"),
    "uint8 mask 2": (toy_feed(mask=((0, 1), 2)), "mask_out_of_range_0_1"),
    "an input no node reads": (toy_feed(spare=((0, 0), 9)), "spare_out_of_range_0_3"),
    "longer than 16": (toy_feed(length=17, batch=1), "ids_length_out_of_range_1_16"),
    "empty": (toy_feed(length=0), "ids_length_out_of_range_1_16"),
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("toy_guards")
    plain = toy_graph(folder / "plain.onnx")
    guarded = folder / "guarded.onnx"
    shutil.copy(plain, guarded)
    assert guard_onnx_file(guarded, TOY_GUARDS) == [g.node_name for g in TOY_GUARDS]
    return plain, guarded


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_each_guard_fails_in_both_runtimes_naming_its_node_and_good_inputs_compute_as_before(toy, runtime):
    plain, guarded = toy
    run, reference = runners(guarded)[runtime], runners(plain, runtime == "openvino")[runtime]
    for case, (feed, node) in TOY_BAD.items():
        for _attempt in range(2):  # the same bad request again fails again
            assert_refused(run, feed, node)
        good = toy_feed(length=5, batch=3)  # another shape than the bad request's
        assert_same(run(good), reference(good), f"after {case}")
    empty_batch = toy_feed(batch=0)  # nothing to check, nothing to compute
    assert_same(run(empty_batch), reference(empty_batch))


def test_the_guarded_graph_keeps_its_inputs_outputs_and_opset(toy):
    from tritonforge.triton_config import onnx_io_signature

    plain, guarded = toy
    assert onnx_io_signature(guarded) == onnx_io_signature(plain)
    before, after = onnx.load(str(plain)), onnx.load(str(guarded))
    assert list(after.opset_import) == list(before.opset_import)
    onnx.checker.check_model(after, full_check=True)
    failing = {n.name: n for n in after.graph.node if n.op_type == "ScatterElements"}
    assert set(failing) == {g.node_name for g in TOY_GUARDS}
    assert "row ids, 0 to 99" in failing["ids_out_of_range_0_99"].doc_string


def test_guards_come_from_the_limits_the_wrapper_reads():
    text = Text(max_length=512, pad_token_id=0, vocab_size=VOCAB, type_vocab_size=2)
    io = ModelIO(tuple(TensorSpec(n, "int64", (-1,)) for n in TOKENS),
                 (TensorSpec("sentence_embedding", "float32", (32,)),), text)
    guards = declared_guards(io, text.limits())
    assert [(g.node_name, g.axes) for g in guards] == [
        ("input_ids_out_of_range_0_30521", ()), ("attention_mask_out_of_range_0_1", ()),
        ("token_type_ids_out_of_range_0_1", ()), ("input_ids_length_out_of_range_1_512", (1,)),
        ("attention_mask_length_out_of_range_1_512", (1,)),
        ("token_type_ids_length_out_of_range_1_512", (1,))]
    assert guards[0].what == f"token ids below vocab_size {VOCAB}"
    assert declared_guards(io, {}) == ()  # a modality without limits: the graph is left as it is
    floats = ModelIO((TensorSpec("x", "float32", (3,)),), (TensorSpec("y", "float32", (3,)),), text)
    with pytest.raises(TritonForgeError, match="only integer inputs"):
        declared_guards(floats, {"value_ranges": {"x": [0, 1, "x"]}})


def test_a_guard_on_a_missing_or_float_input_is_refused(tmp_path):
    model = onnx.load(str(toy_graph(tmp_path / "toy.onnx")))
    with pytest.raises(TritonForgeError, match="no input 'pixels'"):
        add_input_guards(model, [InputGuard("pixels", VALUES, 0, 1)])
    with pytest.raises(TritonForgeError, match="empty"):
        InputGuard("ids", VALUES, 5, 1)
    floats = helper.make_model(helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])], "floats",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(TritonForgeError, match="'x' is FLOAT: only int64, int32, int8 and uint8"):
        add_input_guards(floats, [InputGuard("x", VALUES, 0, 1)])


# -- bert: FP32 through the export pipeline, the fused graph, a W8A8 QDQ graph -----------------------


def token_feed(batch: int = 2, length: int = 16) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(length).integers(1000, VOCAB, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[0, length // 2:] = 0  # padding, as a tokenizer makes it
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((batch, length), np.int64)}


def changed(name: str, index: tuple[int, int], value: int) -> dict[str, np.ndarray]:
    feed = token_feed()
    feed[name][index] = value
    return feed


TOKEN_BAD = {  # case: (feed, the failing node's name, as a pattern)
    "token id -5": (changed("input_ids", (1, 3), -5), "input_ids_out_of_range_0_30521"),
    "token id at vocab_size": (changed("input_ids", (0, 0), VOCAB), "input_ids_out_of_range_0_30521"),
    "token id 10,000,000": (changed("input_ids", (1, 15), 10_000_000), "input_ids_out_of_range_0_30521"),
    "token type 2": (changed("token_type_ids", (0, 4), 2), "token_type_ids_out_of_range_0_1"),
    "token type -1": (changed("token_type_ids", (1, 0), -1), "token_type_ids_out_of_range_0_1"),
    "attention mask 2": (changed("attention_mask", (0, 1), 2), "attention_mask_out_of_range_0_1"),
    "attention mask -1": (changed("attention_mask", (1, 9), -1), "attention_mask_out_of_range_0_1"),
    "513 tokens": ({name: np.ones((1, 513), np.int64) for name in TOKENS}, ANY_LENGTH_GUARD),
    "no tokens": ({name: np.ones((2, 0), np.int64) for name in TOKENS}, ANY_LENGTH_GUARD),
}


def check_token_graph(guarded: Path, plain: Path, openvino: bool = True) -> None:
    """Every bad case fails in every runtime, twice; good inputs of other shapes before and after
    give exactly the unguarded graph's outputs."""
    references = runners(plain, openvino)
    for runtime, run in runners(guarded, openvino).items():
        for length in (16, 7):
            good = token_feed(3, length)
            assert_same(run(good), references[runtime](good))
        for case, (feed, node) in TOKEN_BAD.items():
            assert_refused(run, feed, node)
            assert_refused(run, feed, node)
            good = token_feed(1, 5)
            assert_same(run(good), references[runtime](good), f"{runtime}, after {case}")


def test_the_exported_bert_graph_refuses_bad_tokens_in_both_runtimes(tiny_repo, tmp_path):
    path = tiny_repo / "tiny" / "1" / "model.onnx"
    manifest = ModelRepository(tiny_repo).read_manifest("tiny")
    assert [g["node"] for g in manifest["onnx"]["input_guards"]] == [
        "input_ids_out_of_range_0_30521", "attention_mask_out_of_range_0_1",
        "token_type_ids_out_of_range_0_1", "input_ids_length_out_of_range_1_512",
        "attention_mask_length_out_of_range_1_512", "token_type_ids_length_out_of_range_1_512"]
    check_token_graph(path, unguarded_twin(tiny_repo, "tiny", tmp_path))


def test_the_graph_guards_and_the_wrapper_read_the_same_limits(tiny_repo):
    """The local wrapper's parameters and the graph's guards come from one declaration."""
    repository = ModelRepository(tiny_repo)
    served = next(m for m in shadow_models(repository, ["tiny"]) if m.name == "tiny").config
    ranges = json.loads(served.parameters["value_ranges"].string_value)
    guards = repository.read_manifest("tiny")["onnx"]["input_guards"]
    assert {g["input"]: [g["low"], g["high"]] for g in guards if g["check"] == VALUES} == {
        name: bounds[:2] for name, bounds in ranges.items()}
    assert {g["high"] for g in guards if g["check"] == LENGTH} == {
        int(served.parameters["max_sequence_length"].string_value)}


def test_the_fused_graph_refuses_bad_tokens_in_onnx_runtime(tiny_bert, tmp_path):
    """ONNX Runtime's transformer optimizer: EmbedLayerNormalization reads input_ids (ONNX
    Runtime only; OpenVINO never gets a fused graph)."""
    from tritonforge.export.bert import BertOptions

    family = get_family("bert")
    options = BertOptions(model=str(tiny_bert), graph="fused", target="onnxruntime")
    model = family.load(options)
    plain = tmp_path / "fused.onnx"
    family.export(model, plain, options)
    assert "EmbedLayerNormalization" in {n.op_type for n in onnx.load(str(plain)).graph.node}
    guarded = tmp_path / "guarded.onnx"
    shutil.copy(plain, guarded)
    io = family.io(model, options)
    guard_onnx_file(guarded, declared_guards(io, io.preprocessing.limits()))
    check_token_graph(guarded, plain, openvino=False)


@pytest.fixture(scope="module")
def w8a8_repo(tmp_path_factory, tiny_bert) -> Path:
    from tritonforge.export.bert import BertOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("w8a8_guards")
    export_model("bert", BertOptions(model=str(tiny_bert), bits=8, method="os", calib_size=16, lsq_epochs=0),
                 repo, name="tiny_w8a8")
    return repo


def test_the_quantized_graph_refuses_bad_tokens_in_both_runtimes(w8a8_repo, tmp_path):
    path = w8a8_repo / "tiny_w8a8" / "1" / "model.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "ScatterElements"} <= ops
    check_token_graph(path, unguarded_twin(w8a8_repo, "tiny_w8a8", tmp_path))


# -- dask: token ids, soft positions and the visible matrix -------------------------------------------


@pytest.mark.slow  # its fixture trains a classifier on real tweets (about a minute)
def test_the_dask_graph_refuses_bad_sentence_trees_in_both_runtimes(dask_repo, tmp_path):
    from tritonforge.export.dask.model import inject_inputs

    repository = ModelRepository(dask_repo)
    manifest = repository.read_manifest("dask_fp32")
    assert {g["node"] for g in manifest["onnx"]["input_guards"]} == {
        "input_ids_out_of_range_0_30521", "position_ids_out_of_range_0_511",
        "visible_matrix_out_of_range_0_1", "input_ids_length_out_of_range_1_64",
        "position_ids_length_out_of_range_1_64", "visible_matrix_length_out_of_range_1_64"}
    family = get_family("dask")
    options = family.options_from_json(manifest["recipe"])
    model = family.load_version(options, repository.resolve("dask_fp32")[1])
    trees = inject_inputs(model.injector, ["The flight was late again.", "Great service, friendly crew!"])

    def tree(name: str, index: tuple, value: int) -> dict[str, np.ndarray]:
        feed = {key: value_.copy() for key, value_ in trees.items()}
        feed[name][index] = value
        return feed

    length = trees["input_ids"].shape[1]
    bad = {
        "token id -1": (tree("input_ids", (0, 1), -1), "input_ids_out_of_range_0_30521"),
        "token id at vocab_size": (tree("input_ids", (1, 2), VOCAB), "input_ids_out_of_range_0_30521"),
        "soft position 512": (tree("position_ids", (0, 3), 512), "position_ids_out_of_range_0_511"),
        "visible matrix 2": (tree("visible_matrix", (1, 0, 0), 2), "visible_matrix_out_of_range_0_1"),
        "65 tokens": ({"input_ids": np.ones((1, 65), np.int64), "position_ids": np.zeros((1, 65), np.int64),
                       "visible_matrix": np.ones((1, 65, 65), np.uint8)}, r"_length_out_of_range_1_64"),
        "no tokens": ({"input_ids": np.ones((1, 0), np.int64), "position_ids": np.zeros((1, 0), np.int64),
                       "visible_matrix": np.ones((1, 0, 0), np.uint8)}, r"_length_out_of_range_1_64"),
        "a visible matrix longer than the ids": (
            {**trees, "visible_matrix": np.ones((2, length, 65), np.uint8)}, "visible_matrix_length"),
    }
    path = dask_repo / "dask_fp32" / "1" / "model.onnx"
    references = runners(unguarded_twin(dask_repo, "dask_fp32", tmp_path))
    for runtime, run in runners(path).items():
        assert_same(run(trees), references[runtime](trees))
        for case, (feed, node) in bad.items():
            assert_refused(run, feed, node)
            assert_same(run(trees), references[runtime](trees), f"{runtime}, after {case}")
