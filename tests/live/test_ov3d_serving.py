"""The open-vocabulary detector served by a real tritonserver: `ov3d_vocab` (a python-backend
model, the same file Triton's NGC image runs) reads point files, embeds the request's class
names with the bert family's MiniLM served beside it (cached per name) and runs `ov3d` (the
local python-backend wrapper on ONNX Runtime), then suppresses. Checked against the client's own
pipeline on the same files; two vocabularies to one served model; bad requests refused."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.export.ov3d.modality import CloudItem, npy_bytes
from tritonforge.export.ov3d.postprocess import suppress_each
from tritonforge.export.ov3d.scenes import room
from tritonforge.runtime import ort_session, run_session
from tritonforge.serving.client import infer, infer_inputs, model_info, model_ready
from tritonforge.serving.local import LocalTriton

runner = CliRunner()
TEXT_MODELS = ("bert_fp32", "bert_fp32_tokenizer", "bert_fp32_text")


@pytest.fixture(scope="module")
def ov3d_server(tmp_path_factory, ov3d_checkpoint, minilm_repo):
    from tritonforge.export.ov3d import Ov3dOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("ov3d_served")
    for name in TEXT_MODELS:  # the MiniLM export shared with the other tests, read-only
        (repo / name).symlink_to(minilm_repo / name)
    export_model("ov3d", Ov3dOptions(checkpoint=str(ov3d_checkpoint), eval_rooms=4), repo)
    log = tmp_path_factory.mktemp("ov3d_log") / "triton.log"
    with LocalTriton(repo, log_file=log, http_port=0, grpc_port=0, metrics_port=0) as server:
        server.repo = repo
        yield server


def local_detections(repo, modality, raw):
    """What the client computes itself: the same encoding (sentence-transformers for the names),
    ONNX Runtime, then suppression."""
    feed = modality.encode(raw, None, None)
    out = run_session(ort_session(repo / "ov3d" / "1" / "model.onnx"), feed)
    return suppress_each(out["boxes_3d"], out["scores"], out["labels"])


def text_requests(client) -> int:
    [stats] = client.get_inference_statistics("bert_fp32_text", as_json=True)["model_stats"]
    return int(stats["inference_stats"]["success"].get("count", 0))


def test_two_vocabularies_to_one_served_model_give_the_clients_detections(ov3d_server):
    client = grpcclient.InferenceServerClient(ov3d_server.grpc_url)
    info = model_info(client, "ov3d_vocab", ov3d_server.grpc_url)
    modality = info.modality()
    clouds = [npy_bytes(room("test", i).points) for i in (0, 1)]
    served = {}
    for names in (("chair", "table"), ("chair", "table", "sofa", "lamp", "trash can")):
        raw = [CloudItem(data, names) for data in clouds]
        outputs = infer(client, "ov3d_vocab", modality.request(raw))
        local = local_detections(ov3d_server.repo, modality, raw)
        for sample, (boxes, scores, labels) in enumerate(local):
            kept = outputs["labels"][sample] >= 0
            assert kept.sum() == len(labels)  # padding after the kept boxes only
            np.testing.assert_allclose(outputs["boxes_3d"][sample][kept], boxes, atol=1e-4)
            np.testing.assert_allclose(outputs["scores"][sample][kept], scores, atol=1e-3)
            assert np.mean(outputs["labels"][sample][kept] == labels) >= 0.9  # names embedded twice
            assert outputs["labels"].max() < len(names)
        served[names] = outputs
    first, second = served.values()
    assert not np.array_equal(first["scores"], second["scores"])  # the vocabulary is request data
    before = text_requests(client)
    infer(client, "ov3d_vocab", modality.request([CloudItem(clouds[0], ("lamp", "chair"))]))
    assert text_requests(client) == before  # both names cached: the text model is not asked again


def test_query_prints_boxes_with_the_sent_names(ov3d_server, tmp_path):
    (tmp_path / "room.npy").write_bytes(npy_bytes(room("test", 2).points))
    result = runner.invoke(app, ["query", "ov3d_vocab", "--url", ov3d_server.grpc_url, "--input",
                                 f"points={tmp_path / 'room.npy'}", "--input", "classes=chair,table,lamp",
                                 "--json", str(tmp_path / "q.json"), "--save", str(tmp_path / "top.png")],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "labels from the sent vocabulary" in result.output and "3-D boxes" in result.output
    from PIL import Image

    with Image.open(tmp_path / "top.png") as drawn:  # the cloud from above, the boxes over it
        assert drawn.size == (720, 720) and len(set(drawn.convert("L").getdata())) > 20
    saved = json.loads((tmp_path / "q.json").read_text())
    assert set(saved["outputs"]) >= {"boxes_3d", "scores", "labels"}


def npy(points) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, points)
    return buffer.getvalue()


GOOD = room("test", 3).points


@pytest.mark.parametrize(("data", "names", "message"), [
    (npy(np.where(np.arange(len(GOOD))[:, None] == 5, np.nan, GOOD)), ["chair"], "hold NaN or infinity"),
    (npy(GOOD[:100]), ["chair"], "has 100 points and the detector samples 512"),
    (b"OFF\n8 6 0\n", ["chair"], "none of ply, pcd, npy"),
    (npy(GOOD), [""], "class name 0 is empty"),
    (npy(GOOD), [f"class {i}" for i in range(257)], "257 names, above the limit of 256"),
    (npy(GOOD), ["a" * 65], "65 characters, above the limit of 64"),
])
def test_bad_requests_are_invalid_arguments_and_the_server_stays_ready(ov3d_server, data, names, message):
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(ov3d_server.grpc_url)
    request = {"points": np.array([[data]], dtype=object),
               "classes": np.array([[n.encode() for n in names]], dtype=object)}
    with pytest.raises(InferenceServerException, match=message) as refused:
        client.infer("ov3d_vocab", infer_inputs(request))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert model_ready(client, "ov3d_vocab", ov3d_server.grpc_url)
    good = {"points": np.array([[npy(GOOD)]], dtype=object), "classes": np.array([[b"chair"]], dtype=object)}
    assert infer(client, "ov3d_vocab", good)["boxes_3d"].shape[0] == 1


def test_verify_through_triton_checks_the_served_detector(ov3d_server):
    from tritonforge.pipeline.verify import verify_model

    report = verify_model(ov3d_server.repo, "ov3d", iterations=2, samples=8, triton_url=ov3d_server.grpc_url)
    assert report.parity.passed and report.triton_parity.passed
    scores = next(c for c in report.triton_parity.checks if c.metric == "score_max_abs_diff")
    assert scores.value <= 1e-4
