"""The spiking digits classifier served by a real tritonserver: a digit PNG in through
`snn_digits_image`, PyTorch's logits out; verify --triton over the whole test split."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image as PILImage
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.snn import SnnOptions
from tritonforge.export.snn.train import digits
from tritonforge.family import get_family
from tritonforge.pipeline.verify import verify_model
from tritonforge.serving.client import infer, model_info, new_sequence_ids, stream_sequences
from tritonforge.serving.local import LocalTriton

runner = CliRunner()


@pytest.fixture(scope="module")
def snn_server(snn_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("snn_log") / "triton.log"
    with LocalTriton(snn_repo, log_file=log, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


def digit_png(image: np.ndarray) -> bytes:
    """A test digit (0-1) as the 8-bit PNG a client would send."""
    buffer = io.BytesIO()
    PILImage.fromarray(np.rint(image[0] * 255).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_digit_pngs_through_the_image_ensemble_give_pytorchs_answers(snn_server, snn_checkpoint):
    images, labels = digits("test")
    family = get_family("snn")
    options = SnnOptions(checkpoint=str(snn_checkpoint))
    model = family.load(options)
    io_ = family.io(model, options)
    client = grpcclient.InferenceServerClient(snn_server.grpc_url)
    info = model_info(client, "snn_digits_image", snn_server.grpc_url)
    pngs = [digit_png(image) for image in images[:24]]
    served = infer(client, "snn_digits_image", info.modality().request(pngs))
    decoded = io_.preprocessing.encode(pngs, io_, None)
    reference = family.reference_outputs(model, decoded, io_)
    assert (served["logits"].argmax(1) == reference["logits"].argmax(1)).mean() >= 0.995
    np.testing.assert_allclose(served["spike_rates"], reference["spike_rates"], atol=1e-3)
    assert (served["logits"].argmax(1) == labels[:24]).mean() >= 0.9


def test_verify_through_triton_on_the_test_digits(snn_server, snn_repo):
    report = verify_model(snn_repo, "snn_digits", iterations=2, triton_url=snn_server.grpc_url)
    assert report.parity.passed and report.triton_parity.passed
    assert report.triton_parity.details["samples"] == 360


# -- streaming: one frame per request, the membranes kept per sequence --------------------


def full_sequence_logits(snn_repo, images: np.ndarray) -> np.ndarray:
    from tritonforge.runtime import ort_session, run_session

    session = ort_session(snn_repo / "snn_digits" / "1" / "model.onnx")
    return run_session(session, {"pixel_values": images})["logits"]


def test_32_interleaved_streams_give_the_full_sequence_graphs_logits(snn_server, snn_repo):
    images, _labels = digits("test")
    frames = np.repeat(images[:32, None], 4, axis=1)  # [32 sequences, T = 4, 1, 8, 8]
    client = grpcclient.InferenceServerClient(snn_server.grpc_url)
    ids = new_sequence_ids(32)
    result = stream_sequences(client, "snn_digits_stream",
                              {i: {"frame": f} for i, f in zip(ids, frames, strict=True)},
                              snn_server.grpc_url)
    streamed = np.stack([result.outputs[i]["logits"] for i in ids])  # [32, 4, 10]: after each frame
    assert len(result.latencies_s) == 32 * 4
    full = full_sequence_logits(snn_repo, images[:32])
    np.testing.assert_allclose(streamed[:, -1], full, rtol=0, atol=1e-5)
    # After one frame the running mean is the first step's logits: it differs from the final one,
    # so the state really carried something from frame to frame.
    assert np.abs(streamed[:, 0] - streamed[:, -1]).max() > 1e-2
    # No state leaks between sequences: the same digits again, in reverse order and new IDs,
    # come back exactly as before.
    reordered = zip(new_sequence_ids(32), frames[::-1], strict=True)
    again = stream_sequences(client, "snn_digits_stream", {i: {"frame": f} for i, f in reordered})
    np.testing.assert_array_equal(np.stack([o["logits"] for o in again.outputs.values()]), streamed[::-1])


def test_verify_streams_the_test_digits_through_triton(snn_server, snn_repo):
    report = verify_model(snn_repo, "snn_digits_stream", iterations=2, samples=64,
                          triton_url=snn_server.grpc_url)
    assert report.parity.passed and report.triton_parity.passed
    assert report.triton_parity.details["spike_rate_diff_per_layer"] == [0.0, 0.0]


def test_a_frame_without_start_and_an_end_for_an_unknown_sequence_are_refused(snn_server):
    client = grpcclient.InferenceServerClient(snn_server.grpc_url)
    frame = {"frame": np.zeros((1, 1, 8, 8), np.float32)}
    (sequence,) = new_sequence_ids(1)
    with pytest.raises(TritonForgeError, match="START"):
        infer_frame(client, frame, sequence, start=False, end=False)
    with pytest.raises(TritonForgeError, match="START"):
        infer_frame(client, frame, sequence + 1, start=False, end=True)
    # The same sequence started properly is served.
    assert infer_frame(client, frame, sequence, start=True, end=True)["logits"].shape == (1, 10)


def infer_frame(client, arrays, sequence: int, start: bool, end: bool):
    from tritonclient.utils import InferenceServerException

    from tritonforge.serving.client import infer_inputs, server_error

    try:
        result = client.infer("snn_digits_stream", infer_inputs(arrays), sequence_id=sequence,
                              sequence_start=start, sequence_end=end)
    except InferenceServerException as exc:
        raise server_error(exc, "test", "snn_digits_stream") from exc
    return {"logits": result.as_numpy("logits")}


def test_nan_is_refused_by_the_client_and_by_the_local_wrapper(snn_server, tmp_path):
    client = grpcclient.InferenceServerClient(snn_server.grpc_url)
    recording = np.zeros((4, 1, 8, 8), np.float32)
    recording[2, 0, 3, 5] = np.nan
    np.save(tmp_path / "nan.npy", recording)
    result = runner.invoke(app, ["query", "snn_digits_stream", "--url", snn_server.grpc_url,
                                 "--stream", str(tmp_path / "nan.npy")])
    assert result.exit_code != 0 and "index [2, 0, 3, 5]" in " ".join(result.output.split())
    # Sent around the client's check, the server-side wrapper refuses it (Triton's production
    # onnxruntime backend would not).
    (sequence,) = new_sequence_ids(1)
    with pytest.raises(TritonForgeError, match=r"input 'frame' holds nan at index \[0, 0, 3, 5\]"):
        infer_frame(client, {"frame": recording[2:3]}, sequence, start=True, end=True)


def test_query_streams_a_recording_and_bench_streams_sequences(snn_server, snn_repo, tmp_path):
    images, labels = digits("test")
    np.save(tmp_path / "digit.npy", np.repeat(images[:1], 4, axis=0))  # one digit as 4 frames
    result = runner.invoke(app, ["query", "snn_digits_stream", "--url", snn_server.grpc_url,
                                 "--stream", str(tmp_path / "digit.npy"), "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    assert "frame 4/4" in result.output
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["outputs"]["logits"]["shape"] == [4, 10]
    assert saved["summary"]["labels"]["logits"][-1][0][0] == str(labels[0])
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 8, 8), np.float32))
    result = runner.invoke(app, ["query", "snn_digits_stream", "--url", snn_server.grpc_url,
                                 "--stream", str(tmp_path / "wrong.npy")])
    assert result.exit_code != 0 and "[frames, 1, 8, 8]" in result.output
    result = runner.invoke(app, ["bench", "snn_digits_stream", "--url", snn_server.grpc_url, "--repo",
                                 str(snn_repo), "--concurrency", "1,8", "--requests", "64",
                                 "--json", str(tmp_path / "bench.json")])
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert [(r["concurrency"], r["errors"], r["batching"]) for r in levels] == [(1, 0, "sequence"),
                                                                                (8, 0, "sequence")]
    assert all(r["ok"] >= 64 for r in levels)


def test_query_takes_a_digit_as_npy_and_refuses_the_wrong_channels(snn_server, snn_repo, tmp_path):
    images, labels = digits("test")
    np.save(tmp_path / "digit.npy", images[5, 0])  # [8, 8] floats in 0-1, decoded by the ensemble
    result = runner.invoke(app, ["query", "snn_digits_image", "--url", snn_server.grpc_url,
                                 "--image", str(tmp_path / "digit.npy"), "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    logits = np.array(json.loads((tmp_path / "q.json").read_text())["outputs"]["logits"]["values"])
    np.testing.assert_allclose(logits[0], full_sequence_logits(snn_repo, images[5:6])[0],
                               atol=1e-5)
    assert int(logits.argmax()) == labels[5]
    np.save(tmp_path / "rgb.npy", np.zeros((8, 8, 3), np.uint8))
    result = runner.invoke(app, ["query", "snn_digits_image", "--url", snn_server.grpc_url,
                                 "--image", str(tmp_path / "rgb.npy")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "shape [8, 8, 3]" in output and "an array [8, 8]" in output


def test_event_frames_go_to_the_vggsnn_preset_as_npy_and_a_wrong_shape_names_the_expected_one(
        snn_server, snn_repo, tmp_path):
    from tritonforge.runtime import ort_session, run_session

    recordings = np.load(snn_repo / "snn_vggsnn" / "1" / "samples.npz")["frames"]
    np.save(tmp_path / "recording.npy", recordings[3])  # [T = 2, 2, 48, 48]
    result = runner.invoke(app, ["query", "snn_vggsnn", "--url", snn_server.grpc_url, "--npy",
                                 str(tmp_path / "recording.npy"), "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    served = np.array(json.loads((tmp_path / "q.json").read_text())["outputs"]["logits"]["values"])
    session = ort_session(snn_repo / "snn_vggsnn" / "1" / "model.onnx")
    local = run_session(session, {"frames": recordings[3:4]})
    np.testing.assert_allclose(served, local["logits"], atol=1e-5)
    assert "most probable labels" in result.output  # CIFAR-10's class names, from the config
    np.save(tmp_path / "channels.npy", np.zeros((2, 3, 48, 48), np.float32))
    result = runner.invoke(app, ["query", "snn_vggsnn", "--url", snn_server.grpc_url,
                                 "--npy", str(tmp_path / "channels.npy")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "takes one sample of shape [2, 2, 48, 48]" in output
