"""EMT delivery: chunk k of a video published as version k of one model, every version kept,
each with its weights, its delta from the previous chunk and a manifest of its tuning."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.sr import emt
from tritonforge.export.sr.delivery import DELTA_FILE, META_FILE, SECTION, TuneRecipe, publish_video
from tritonforge.export.sr.model import load_checkpoint
from tritonforge.export.sr.video import demo_clip
from tritonforge.pipeline.export import export_model
from tritonforge.serving.repository import ModelRepository

SCALE = 2
# three 1-s shots at 10 fps, 96x48 (LR 48x24): three chunks of 10 frames, each its own photo
RECIPE = TuneRecipe(first_fraction=0.2, later_fraction=0.01, full_steps=5, masked_steps=10, lr=1e-3,
                    patch=32, batch=4, pool=32, chunk_seconds=1.0)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return demo_clip(size=(96, 48), fps=10, shot_seconds=1, shots=3).write(
        tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="module")
def meta():
    return emt.fresh_network("espcn", SCALE, "bicubic")


@pytest.fixture(scope="module")
def published(tmp_path_factory, clip_path, meta):
    repo = tmp_path_factory.mktemp("emt") / "repo"
    return repo, publish_video(clip_path, "clip_sr", repo, meta, SCALE, RECIPE, export_model=export_model)


def test_chunk_k_is_version_k_and_every_version_is_served(published):
    repo, results = published
    assert [r.version for r in results] == [1, 2, 3]
    assert ModelRepository(repo).versions("clip_sr") == [1, 2, 3]
    config = ModelRepository(repo).read_config("clip_sr")
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    for result in results:
        section = result.manifest[SECTION]
        k = result.version
        assert (section["index"], section["start_s"], section["end_s"]) == (k, k - 1.0, float(k))
        assert section["mask_fraction"] == (0.2 if result.version == 1 else 0.01)
        assert section["frames"] == 10 and section["heldout_frames"] == 2
        assert section["psnr_after"] > 0 and section["psnr_before"] > 0
        assert section["delta_bytes"] == (result.folder / DELTA_FILE).stat().st_size
        assert section["full_bytes"] == 4 * sum(t.numel() for t in load_checkpoint(
            result.folder / "weights.pt")[0].state_dict().values())
        assert result.manifest["parity"]["passed"]
    # chunks 2+ change 1% of the conv weights (and every bias): a delta of under 5% of the model
    sections = [r.manifest[SECTION] for r in results[1:]]
    assert all(section["delta_bytes"] <= 0.05 * section["full_bytes"] for section in sections)


def test_meta_and_the_deltas_rebuild_every_chunk_model_exactly(published, meta):
    repo, results = published
    model = load_checkpoint(results[0].folder / META_FILE)[0]
    for name, value in meta.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    for result in results:
        model = emt.apply_delta(model, (result.folder / DELTA_FILE).read_bytes())
        shipped = load_checkpoint(result.folder / "weights.pt")[0]
        for name, value in shipped.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), (result.version, name)


def test_each_versions_onnx_computes_its_chunks_model(published, clip_path):
    repo, results = published
    lr = np.random.default_rng(0).integers(0, 256, (2, 3, 24, 48), dtype=np.uint8)
    outputs = []
    for result in results:
        session = ort.InferenceSession(str(result.folder / "model.onnx"), providers=["CPUExecutionProvider"])
        served = session.run(None, {"lr": lr})[0]
        network = load_checkpoint(result.folder / "weights.pt")[0]
        expected = emt.upscale(network, torch.from_numpy(lr).float()).numpy()
        assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1
        outputs.append(served)
    assert not np.array_equal(outputs[0], outputs[1])  # the versions are different models


def test_verify_rebuilds_a_chunk_version_from_its_own_weights(published, tmp_path):
    repo, _results = published
    # the recipe names no checkpoint: without weights.pt the reference would be random weights
    # and parity would fail
    output = CliRunner().invoke(app, ["verify", "clip_sr", "--version", "2", "--repo", str(repo), "--samples",
                                      "4", "--iterations", "1", "--json", str(tmp_path / "v.json")],
                                terminal_width=200)
    assert output.exit_code == 0, output.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["parity"]["passed"] and report["version"] == 2


def test_a_name_with_versions_is_refused_without_force(published, clip_path, meta):
    repo, _results = published
    before = (repo / "clip_sr" / "1" / "model.onnx").stat().st_mtime_ns
    with pytest.raises(TritonForgeError, match=r"clip_sr already has versions \[1, 2, 3\].*--force"):
        publish_video(clip_path, "clip_sr", repo, meta, SCALE, RECIPE, export_model=export_model)
    assert (repo / "clip_sr" / "1" / "model.onnx").stat().st_mtime_ns == before


def test_versions_beyond_the_videos_chunks_are_refused_even_with_force(tmp_path, published, meta):
    repo, _results = published
    short = demo_clip(size=(96, 48), fps=10, shot_seconds=1, shots=2).write(tmp_path / "short.mp4")
    with pytest.raises(TritonForgeError, match=r"versions \[3\] beyond this video's 2 chunks"):
        publish_video(short, "clip_sr", repo, meta, SCALE, RECIPE, force=True, export_model=export_model)


def test_compare_reports_every_chunk_of_every_network_and_writes_its_figures(clip_path, tmp_path):
    output = CliRunner().invoke(app, [
        "emt", "compare", str(clip_path), "--archs", "espcn,edsr1", "--chunks", "2", "--meta-steps", "3",
        "--outer-lr", "1e-6",
        "--full-steps", "3", "--masked-steps", "5", "--scratch-factor", "2", "--chunk-seconds", "1",
        "--patch", "32", "--batch", "4", "--task-frames", "4",
        "--no-speed", "--json", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png")],
        terminal_width=220, env={"COLUMNS": "220"})
    assert output.exit_code == 0, output.output
    figures = json.loads((tmp_path / "c.json").read_text())
    assert [(r["arch"], r["chunk"]) for r in figures["chunks"]] == [("espcn", 1), ("espcn", 2), ("edsr1", 1),
                                                                     ("edsr1", 2)]
    assert all(r["scratch_steps"] == 2 * (3 + 5) for r in figures["chunks"])
    # bicubic is the same frames whatever the network; the networks start at bicubic quality
    # (and 3 meta steps at 1e-6 leave them there)
    assert figures["chunks"][0]["bicubic_db"] == figures["chunks"][2]["bicubic_db"]
    assert all(abs(r["meta_db"] - r["bicubic_db"]) < 1.5 for r in figures["chunks"])
    assert (tmp_path / "c.png").stat().st_size > 10_000
    assert "EMT - bicubic" in output.output


@pytest.mark.slow
def test_compare_without_quality_times_fp32_and_int8_and_trains_nothing(clip_path, tmp_path):
    output = CliRunner().invoke(app, [
        "emt", "compare", str(clip_path), "--archs", "espcn", "--no-quality",
        "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")],
        terminal_width=220, env={"COLUMNS": "220"})
    assert output.exit_code == 0, output.output
    figures = json.loads((tmp_path / "s.json").read_text())
    assert figures["chunks"] == [] and not (tmp_path / "s.png").exists()
    (speed,) = figures["speed"]
    assert speed["frame"] == "640x360" and speed["int8_ms"] > 0
    assert speed["int8_speedup"] == pytest.approx(speed["onnxruntime_ms"] / speed["int8_ms"])
    assert "INT8 vs FP32" in output.output and "EMT - bicubic" not in output.output


@pytest.mark.parametrize(("arguments", "message"), [
    (["--archs", "espcn,vdsr"], "'vdsr' is not espcn, srcnn, fsrcnn or edsrN"),
    (["--no-quality", "--no-speed"], "--no-quality and --no-speed leave nothing to compare"),
])
def test_compare_refuses_what_it_cannot_do(clip_path, arguments, message):
    output = CliRunner().invoke(app, ["emt", "compare", str(clip_path), *arguments])
    assert output.exit_code != 0 and message in output.output


def test_speed_times_the_three_runtimes_on_one_frame_of_the_asked_size():
    from tritonforge.export.sr.compare import measure_speed

    speed = measure_speed("fsrcnn", None, 2, frame=(64, 36), iterations=3)
    assert speed.frame == "64x36" and min(speed.pytorch_ms, speed.onnxruntime_ms, speed.int8_ms) > 0
    assert speed.speedup == pytest.approx(speed.pytorch_ms / speed.onnxruntime_ms)
    assert speed.int8_speedup == pytest.approx(speed.onnxruntime_ms / speed.int8_ms)
