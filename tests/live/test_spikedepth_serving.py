"""The spike-depth network served by a real tritonserver (the local python-backend wrapper runs the
ONNX graphs; the `_window` step is the same python model Triton's NGC image runs): `.dat` bytes
per camera through `spikedepth_ugdf_spikes`, and frame-by-frame streams under the sequence
batcher, each checked against ONNX Runtime on the same frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.spikedepth.data import scene_set
from tritonforge.pipeline.verify import verify_model
from tritonforge.runtime import ort_session, run_session
from tritonforge.serving.client import infer, model_info, model_ready, new_sequence_ids, stream_sequences
from tritonforge.serving.local import LocalTriton

runner = CliRunner()
WINDOW = 8  # the test network's T


@pytest.fixture(scope="module")
def spikedepth_server(spikedepth_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("spikedepth_log") / "triton.log"
    with LocalTriton(spikedepth_repo, log_file=log, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


def windowed(repo, left: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
    session = ort_session(repo / "spikedepth_ugdf" / "1" / "model.onnx")
    return run_session(session, {"spikes_left": left, "spikes_right": right})


def test_dat_files_through_the_ensemble_give_onnx_runtimes_depth(spikedepth_server, spikedepth_repo,
                                                                  tmp_path):
    scenes = scene_set("test", 2, 20)  # 20 frames: the ensemble keeps the last 8
    for side, streams in (("left", scenes.left), ("right", scenes.right)):
        (tmp_path / f"{side}.dat").write_bytes(streams[0].tobytes())
    result = runner.invoke(app, ["query", "spikedepth_ugdf_spikes", "--url", spikedepth_server.grpc_url,
                                 "--input", f"left={tmp_path / 'left.dat'}", "--input",
                                 f"right={tmp_path / 'right.dat'}", "--save", str(tmp_path / "depth.png"),
                                 "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    served = json.loads((tmp_path / "q.json").read_text())["outputs"]
    local = windowed(spikedepth_repo, scenes.left[:1, -WINDOW:], scenes.right[:1, -WINDOW:])
    np.testing.assert_allclose(np.array(served["depth"]["values"]), local["depth"], rtol=1e-5)
    assert (tmp_path / "depth_depth_0.png").is_file() and (tmp_path / "depth_uncertainty_0.npy").is_file()
    # Two samples in one request, as the client library sends them.
    client = grpcclient.InferenceServerClient(spikedepth_server.grpc_url)
    info = model_info(client, "spikedepth_ugdf_spikes", spikedepth_server.grpc_url)
    raw = [{"left": scenes.left[i].tobytes(), "right": scenes.right[i].tobytes()} for i in range(2)]
    outputs = infer(client, "spikedepth_ugdf_spikes", info.modality().request(raw))
    both = windowed(spikedepth_repo, scenes.left[:, -WINDOW:], scenes.right[:, -WINDOW:])
    for name in ("depth", "uncertainty", "depth_mono", "depth_stereo"):
        np.testing.assert_allclose(outputs[name], both[name], rtol=1e-5)


@pytest.mark.parametrize(("left", "right", "message"), [
    (b"\0" * (768 * 10 + 3), b"\0" * (768 * 10), "not a whole number of 64 x 96 frames"),
    (b"\0" * (768 * 5), b"\0" * (768 * 5), "holds 5 frames; this model takes a window of 8"),
    (b"\0" * (768 * 9), b"\0" * (768 * 12), "different numbers of frames"),
    (b"\0" * (48 * 80 // 8 * 13), b"\0" * (768 * 10), "not a whole number"),  # recorded at another size
])
def test_bad_streams_are_invalid_arguments_and_the_server_stays_ready(spikedepth_server, left, right,
                                                                      message):
    from tritonclient.utils import InferenceServerException

    from tritonforge.serving.client import infer_inputs

    client = grpcclient.InferenceServerClient(spikedepth_server.grpc_url)
    info = model_info(client, "spikedepth_ugdf_spikes", spikedepth_server.grpc_url)
    request = info.modality().request([{"left": left, "right": right}])
    with pytest.raises(InferenceServerException, match=message) as refused:
        client.infer("spikedepth_ugdf_spikes", infer_inputs(request))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert model_ready(client, "spikedepth_ugdf_spikes", spikedepth_server.grpc_url)
    with pytest.raises(TritonForgeError, match=message):  # the client cuts windows the same way
        info.modality().encode([{"left": left, "right": right}], None, None)


def test_interleaved_streams_give_the_windowed_depth_after_every_full_window(spikedepth_server,
                                                                             spikedepth_repo):
    scenes = scene_set("test", 6, WINDOW + 4)
    client = grpcclient.InferenceServerClient(spikedepth_server.grpc_url)
    ids = new_sequence_ids(6)
    sequences = {sequence: {"spikes_left": scenes.left[i], "spikes_right": scenes.right[i]}
                 for i, sequence in enumerate(ids)}
    result = stream_sequences(client, "spikedepth_ugdf_stream", sequences, spikedepth_server.grpc_url)
    depth = np.stack([result.outputs[sequence]["depth"] for sequence in ids])  # [6, 12 frames, 1, 64, 96]
    assert (depth[:, :WINDOW - 1] == 0).all()  # no depth before the window is full
    for last in range(WINDOW - 1, WINDOW + 4):
        cut = slice(last - WINDOW + 1, last + 1)
        local = windowed(spikedepth_repo, scenes.left[:, cut], scenes.right[:, cut])["depth"]
        np.testing.assert_allclose(depth[:, last], local, rtol=0, atol=1e-5)
    # No state leaks between sequences: the same recordings again, reversed and under new IDs (the
    # batcher groups the frames otherwise, so the arithmetic differs by rounding only).
    again = stream_sequences(client, "spikedepth_ugdf_stream",
                             dict(zip(new_sequence_ids(6), list(sequences.values())[::-1], strict=True)))
    np.testing.assert_allclose(np.stack([o["depth"] for o in again.outputs.values()]), depth[::-1],
                               rtol=0, atol=1e-5)


def test_a_frame_without_start_is_refused(spikedepth_server):
    from tritonclient.utils import InferenceServerException

    from tritonforge.serving.client import infer_inputs

    client = grpcclient.InferenceServerClient(spikedepth_server.grpc_url)
    frame = {"spikes_left": np.zeros((1, 768), np.uint8), "spikes_right": np.zeros((1, 768), np.uint8)}
    (sequence,) = new_sequence_ids(1)
    with pytest.raises(InferenceServerException, match="START"):
        client.infer("spikedepth_ugdf_stream", infer_inputs(frame), sequence_id=sequence,
                     sequence_start=False)
    assert model_ready(client, "spikedepth_ugdf_stream", spikedepth_server.grpc_url)


def test_query_streams_dat_files_and_bench_counts_frames(spikedepth_server, spikedepth_repo, tmp_path):
    scenes = scene_set("test", 1, WINDOW + 1)
    (tmp_path / "l.dat").write_bytes(scenes.left[0].tobytes())
    (tmp_path / "r.dat").write_bytes(scenes.right[0].tobytes())
    result = runner.invoke(app, ["query", "spikedepth_ugdf_stream", "--url", spikedepth_server.grpc_url,
                                 "--stream", f"spikes_left={tmp_path / 'l.dat'}", "--stream",
                                 f"spikes_right={tmp_path / 'r.dat'}", "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    assert f"frame {WINDOW + 1}/{WINDOW + 1}" in result.output
    depth = np.array(json.loads((tmp_path / "q.json").read_text())["outputs"]["depth"]["values"])
    assert depth.shape == (WINDOW + 1, 1, 64, 96) and (depth[WINDOW - 1:] > 0).all()
    result = runner.invoke(app, ["bench", "spikedepth_ugdf_stream", "--url", spikedepth_server.grpc_url,
                                 "--repo", str(spikedepth_repo), "--concurrency", "1,4", "--requests", "24",
                                 "--json", str(tmp_path / "bench.json")])
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert [(r["concurrency"], r["errors"], r["batching"]) for r in levels] == [(1, 0, "sequence"),
                                                                                (4, 0, "sequence")]


def test_verify_through_triton(spikedepth_server, spikedepth_repo):
    report = verify_model(spikedepth_repo, "spikedepth_ugdf", iterations=2, samples=8,
                          triton_url=spikedepth_server.grpc_url)
    assert report.parity.passed and report.triton_parity.passed


def test_soak_checks_every_depth_map_it_gets(spikedepth_server, spikedepth_repo, tmp_path):
    result = runner.invoke(app, ["soak", "spikedepth_ugdf", "--url", spikedepth_server.grpc_url, "--repo",
                                 str(spikedepth_repo), "--requests", "24", "--concurrency", "4",
                                 "--json", str(tmp_path / "soak.json")])
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in json.loads((tmp_path / "soak.json").read_text())["models"]}
    assert set(rows) == {"spikedepth_ugdf", "spikedepth_ugdf_spikes", "all"}  # tensors and .dat bytes
    assert (rows["all"]["ok"], rows["all"]["errors"], rows["all"]["wrong"]) == (24, 0, 0)
