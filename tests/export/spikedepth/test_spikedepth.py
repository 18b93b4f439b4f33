"""The spikedepth family: exports of a (briefly trained) UGDF network, checked against PyTorch
through ONNX Runtime and OpenVINO; the streaming graph against the windowed one; INT8's gate;
the family's commands and the inputs they refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.spikedepth import SpikeDepthOptions, relative_difference
from tritonforge.export.spikedepth.data import scene_set
from tritonforge.export.spikedepth.model import PackedInput
from tritonforge.export.spikedepth.train import TrainRecipe, load_checkpoint, save_checkpoint, train
from tritonforge.family import get_family
from tritonforge.serving.repository import ModelRepository
from tritonforge.spec import DEPTH_MAP

runner = CliRunner()


def manifest(repo, name):
    return ModelRepository(repo).read_manifest(name)


def test_the_ugdf_export_matches_pytorch_on_dat_bytes(spikedepth_repo, spikedepth_checkpoint):
    from tritonforge.runtime import ort_session, run_session

    saved = manifest(spikedepth_repo, "spikedepth_ugdf")
    assert saved["parity"]["passed"]
    kinds = {o["name"]: o.get("kind") for o in saved["io"]["outputs"]}
    assert kinds == dict.fromkeys(("depth", "uncertainty", "depth_mono", "uncertainty_mono", "depth_stereo",
                                   "uncertainty_stereo"), DEPTH_MAP)
    assert [i["dtype"] for i in saved["io"]["inputs"]] == ["uint8", "uint8"]
    assert (spikedepth_repo / "spikedepth_ugdf_spikes").is_dir()
    # A client's .dat bytes (24 frames; the window is the last 8), encoded as the server does.
    family = get_family("spikedepth")
    options = SpikeDepthOptions(checkpoint=str(spikedepth_checkpoint))
    model = family.load(options)
    io = family.io(model, options)
    scenes = scene_set("test", 3, 24)
    raw = [{"left": scenes.left[i].tobytes(), "right": scenes.right[i].tobytes()} for i in range(3)]
    feed = io.preprocessing.encode(raw, io, None)
    np.testing.assert_array_equal(feed["spikes_left"], scenes.left[:, -8:])
    session = ort_session(spikedepth_repo / "spikedepth_ugdf" / "1" / "model.onnx")
    graph = run_session(session, feed)
    reference = family.reference_outputs(model, feed, io)
    for name in reference:
        assert relative_difference(reference[name], graph[name])[0] <= 1e-4, name
    assert (graph["depth"] > 0).all() and (graph["uncertainty"] > 0).all()


def test_openvino_runs_the_same_graph(spikedepth_repo):
    import openvino as ov

    from tritonforge.runtime import ort_session, run_session

    path = spikedepth_repo / "spikedepth_ugdf" / "1" / "model.onnx"
    samples = dict(np.load(spikedepth_repo / "spikedepth_ugdf" / "1" / "samples.npz"))
    feed = {k: v[:4] for k, v in samples.items()}
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feed)
    served = {output.get_any_name(): result[output] for output in compiled.outputs}
    local = run_session(ort_session(path), feed)
    for name, values in local.items():
        assert relative_difference(values, served[name])[0] <= 1e-4, name


def test_the_streaming_graph_gives_the_windowed_depth_after_every_frame(spikedepth_repo):
    from tritonforge.runtime import ort_session, run_session
    from tritonforge.verify.parity import run_steps

    saved = manifest(spikedepth_repo, "spikedepth_ugdf_stream")
    assert saved["onnx"]["stream_vs_window_max_abs_diff"] <= 1e-5
    family = get_family("spikedepth")
    from tritonforge.modalities import manifest_io

    io = manifest_io(saved)
    assert [pair[0] for pair in io.state] == ["window_left_in", "window_right_in", "frames_in"]
    scenes = scene_set("test", 2, 12)
    recording = {"spikes_left": scenes.left, "spikes_right": scenes.right}  # [2, 12 frames, 768]
    step = ort_session(spikedepth_repo / "spikedepth_ugdf_stream" / "1" / "model.onnx")
    streamed = run_steps(lambda feed: run_session(step, feed), family.steps(recording, io), io)
    windowed = ort_session(spikedepth_repo / "spikedepth_ugdf" / "1" / "model.onnx")
    assert (streamed["depth"][:, :7] == 0).all()  # no depth until 8 frames have arrived
    for last in range(7, 12):
        cut = {k: np.ascontiguousarray(v[:, last - 7:last + 1]) for k, v in recording.items()}
        np.testing.assert_allclose(streamed["depth"][:, last], run_session(windowed, cut)["depth"], atol=1e-5)


def test_int8_is_gated_on_the_depth_it_loses(tmp_path, spikedepth_checkpoint):
    from tritonforge.pipeline.export import export_model

    net, recipe = load_checkpoint(spikedepth_checkpoint)
    mono = train(TrainRecipe(arch="mono", scenes=8, epochs=1, window=8, width_factor=4))
    path = save_checkpoint(tmp_path / "mono.pt", mono, {}, {})
    options = SpikeDepthOptions(arch="mono", checkpoint=str(path), bits=8, eval_scenes=16,
                                calibration_scenes=32)
    result = export_model("spikedepth", options, tmp_path)
    saved = result.manifest
    assert saved["precision"] == "int8" and saved["quantization"]["quantize_linear_nodes"] > 0
    (gate,) = saved["gates"]
    assert gate["metric"] == "abs_rel_increase" and gate["passed"]
    assert abs(saved["quality"]["abs_rel"] - saved["quality"]["pytorch_abs_rel"]) <= 0.005
    assert [i["name"] for i in saved["io"]["inputs"]] == ["spikes"]
    assert recipe["arch"] == "ugdf" and net.config.window == 8


def test_checkpoints_that_do_not_fit_are_refused(tmp_path, spikedepth_checkpoint):
    family = get_family("spikedepth")
    with pytest.raises(TritonForgeError, match="holds a ugdf network, not --arch stereo"):
        family.load(SpikeDepthOptions(arch="stereo", checkpoint=str(spikedepth_checkpoint)))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(TritonForgeError, match="is not a spikedepth checkpoint"):
        family.load(SpikeDepthOptions(checkpoint=str(tmp_path / "other.pt")))
    with pytest.raises(TritonForgeError, match="--streaming exports FP32"):
        SpikeDepthOptions(streaming=True, bits=8)


def test_the_windowed_graph_takes_named_or_positional_windows(spikedepth_checkpoint):
    net, _recipe = load_checkpoint(spikedepth_checkpoint)
    graph = PackedInput(net).eval()
    scenes = scene_set("test", 1, 8)
    left, right = torch.from_numpy(scenes.left), torch.from_numpy(scenes.right)
    with torch.inference_mode():
        assert torch.equal(graph(left, right)[0], graph(spikes_right=right, spikes_left=left)[0])


# -- the family's commands --------------------------------------------------------------------


def test_simulate_records_an_image_and_reports_its_psnr(tmp_path):
    from PIL import Image

    from tritonforge.export.spikedepth.spikes import read_dat

    picture = (np.linspace(0, 255, 32 * 48).reshape(32, 48)).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "ramp.png")
    result = runner.invoke(app, ["spikedepth", "simulate", str(tmp_path / "ramp.png"), "--out",
                                 str(tmp_path / "ramp.dat"), "--frames", "200"])
    assert result.exit_code == 0, result.output
    psnr = float(result.output.split("PSNR ")[1].split(" dB")[0])
    assert psnr > 25.0
    spikes = read_dat(tmp_path / "ramp.dat", 32, 48)
    assert spikes.shape == (200, 32, 48)
    assert spikes[:, :, -1].mean() > spikes[:, :, 0].mean()  # the bright side fires more
    Image.fromarray(picture[:31, :47]).save(tmp_path / "odd.png")  # 31 x 47 bits: not whole bytes
    result = runner.invoke(app, ["spikedepth", "simulate", str(tmp_path / "odd.png"), "--out",
                                 str(tmp_path / "odd.dat")])
    assert result.exit_code == 2 and "whole bytes" in result.output


def test_scenes_writes_streams_depth_and_the_rig(tmp_path):
    result = runner.invoke(app, ["spikedepth", "scenes", "--count", "2", "--window", "8", "--out",
                                 str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    rig = json.loads((tmp_path / "s" / "rig.json").read_text())
    assert rig["focal_px"] == 80.0 and rig["window"] == 8
    scene = tmp_path / "s" / "scene_0001"
    assert (scene / "left.dat").stat().st_size == 8 * 64 * 96 // 8
    np.testing.assert_array_equal(np.load(scene / "depth.npy"), scene_set("test", 2, 8).depth[1])


def test_eval_reports_every_branch_per_band(tmp_path, spikedepth_checkpoint):
    result = runner.invoke(app, ["spikedepth", "eval", str(spikedepth_checkpoint), "--scenes", "4",
                                 "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert sorted(metrics) == ["ugdf:fused", "ugdf:mono", "ugdf:stereo"]
    assert {"abs_rel", "near_abs_rel", "far_abs_rel", "rmse", "delta_1.25"} <= set(metrics["ugdf:fused"])


def test_adapt_publishes_the_next_version_with_its_report(tmp_path, spikedepth_checkpoint):
    from tritonforge.pipeline.export import export_model

    export_model("spikedepth", SpikeDepthOptions(checkpoint=str(spikedepth_checkpoint), eval_scenes=8),
                 tmp_path / "repo", name="depth")
    command = ["spikedepth", "adapt", "--name", "depth", "--repo", str(tmp_path / "repo"),
               "--domain", "camera", "--source-scenes", "8", "--target-scenes", "8", "--teacher-epochs", "1",
               "--cfkd-epochs", "1", "--adapt-epochs", "1", "--eval-scenes", "8",
               "--out", str(tmp_path / "adapted.pt"), "--json", str(tmp_path / "a.json")]
    result = runner.invoke(app, command)
    report = json.loads((tmp_path / "a.json").read_text())
    assert set(report) == {"recipe", "source_only", "adapted"}
    assert set(report["adapted"]["target"]) == {"mono", "stereo", "fused"}
    before, after = (report[row]["target"]["fused"]["abs_rel"] for row in ("source_only", "adapted"))
    if after > before:  # a model this small may adapt either way: the gate must follow the report
        assert result.exit_code == 2 and "not published" in result.output
        assert "--publish-worse" in result.output
        assert manifest(tmp_path / "repo", "depth")["version"] == 1
        assert (tmp_path / "adapted.pt").is_file()  # the adapted network is kept either way
        result = runner.invoke(app, [*command, "--publish-worse"])
    assert result.exit_code == 0, result.output
    assert "published as version 2 of depth" in result.output
    saved = manifest(tmp_path / "repo", "depth")
    assert saved["version"] == 2 and saved["source"]["training"]["adaptation"]["domain"] == "camera"
    assert (tmp_path / "repo" / "depth" / "2" / "pytorch" / "model.pt").is_file()
    # A stereo network has no monocular branch to distil the RGB teacher into.
    stereo = train(TrainRecipe(arch="stereo", scenes=4, epochs=1, window=8, width_factor=4))
    save_checkpoint(tmp_path / "stereo.pt", stereo, {}, {})
    result = runner.invoke(app, ["spikedepth", "adapt", "--checkpoint", str(tmp_path / "stereo.pt")])
    assert result.exit_code == 2 and "--no-cfkd" in result.output


def test_publishing_a_worse_adaptation_needs_consent():
    from tritonforge.export.spikedepth.adapt import worse_than_source

    def report(before, after):
        return {"source_only": {"target": {"fused": {"abs_rel": before}}},
                "adapted": {"target": {"fused": {"abs_rel": after}}}}

    assert worse_than_source(report(0.34, 0.32), "fused") is None
    assert "0.3600" in worse_than_source(report(0.34, 0.36), "fused")


def test_eval_reads_recordings_and_refuses_nan_depth(tmp_path, spikedepth_checkpoint):
    result = runner.invoke(app, ["spikedepth", "scenes", "--count", "2", "--window", "8", "--out",
                                 str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["spikedepth", "eval", str(spikedepth_checkpoint), "--recordings",
                                 str(tmp_path / "s"), "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["ugdf:fused"]["pixels"] == 2 * 64 * 96
    depth = np.load(tmp_path / "s" / "scene_0001" / "depth.npy")
    depth[5, 7] = np.nan
    np.save(tmp_path / "s" / "scene_0001" / "depth.npy", depth)
    result = runner.invoke(app, ["spikedepth", "eval", str(spikedepth_checkpoint), "--recordings",
                                 str(tmp_path / "s")])
    assert result.exit_code == 2 and "holds NaN at [5, 7]" in " ".join(result.output.split())


def test_the_quality_table_scores_every_variant_against_the_true_depth(tmp_path, spikedepth_checkpoint):
    variants = "onnxruntime:fp32,openvino:fp32,onnxruntime:int8"
    result = runner.invoke(app, ["quality", "spikedepth", "--checkpoint", str(spikedepth_checkpoint),
                                 "--variants", variants, "--scenes", "8", "--iterations", "2",
                                 "--calibration-scenes", "16",
                                 "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "q.json").read_text())
    assert [(row["variant"], row["runtime"]) for row in rows] == [
        ("ugdf fp32 (PyTorch eager)", "pytorch"), ("ugdf fp32", "onnxruntime"), ("ugdf fp32", "openvino"),
        ("ugdf int8", "onnxruntime")]
    pytorch = rows[0]
    assert abs(rows[1]["abs_rel"] - pytorch["abs_rel"]) < 1e-5 and abs(rows[2]["abs_rel_increase"]) < 1e-5
    assert abs(rows[3]["abs_rel_increase"]) < 0.05 and rows[3]["abs_rel"] > 0
    assert all(row["latency_p50_ms"] > 0 for row in rows)
