"""`emt meta-train`, `emt tune` and `emt play` end to end through the local Triton: every chunk
is upscaled by its own version, which computes that chunk's PyTorch model; swapping two
versions on disk makes those chunks worse; a chunk with no version is refused, naming those
that have one. The networks here are far from trained (96x48 frames, a few steps), and a model
tuned gently keeps improving on every chunk; tuned hard on all its weights, each chunk's model
fits its own chunk clearly better than its neighbour's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.data.video import read_video
from tritonforge.export.sr import emt
from tritonforge.export.sr.delivery import META_FILE
from tritonforge.export.sr.model import load_checkpoint
from tritonforge.export.sr.video import demo_clip, split_chunks
from tritonforge.serving.client import connect, infer
from tritonforge.serving.local import LocalTriton

ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}
SMALL = ["--patch", "32", "--batch", "4", "--chunk-seconds", "1"]
TUNE = [*SMALL, "--full-steps", "20", "--masked-steps", "150", "--lr", "2e-3", "--pool", "64",
        "--first-fraction", "1", "--later-fraction", "1"]


def run(*args: str):
    output = CliRunner().invoke(app, list(args), terminal_width=200)
    assert output.exit_code == 0, output.output
    return output


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("emt")
    clip = demo_clip(size=(96, 48), fps=10, shot_seconds=1, shots=3).write(root / "clip.mp4")
    run("emt", "meta-train", str(clip), "--steps", "10", "--task-frames", "4", *SMALL,
        "--out", str(root / "meta.pt"))
    output = run("emt", "tune", str(clip), "--name", "clip_sr", "--meta", str(root / "meta.pt"),
                 "--repo", str(root / "repo"), *TUNE)
    assert "3 versions of clip_sr" in output.output.replace("\n", "")
    return root, clip


def play(root, repo, clip, name="clip_sr", ok=True):
    with LocalTriton(repo, log_file=root / f"{repo.name}.log", **ANY_PORTS) as server:
        output = CliRunner().invoke(app, ["emt", "play", str(clip), "--name", name, "--url", server.grpc_url,
                                          "--repo", str(repo), "--json", str(root / "play.json"),
                                          "--plot", str(root / "play.png"), "--out", str(root / "sr.mp4")],
                                    terminal_width=200)
        assert (output.exit_code == 0) == ok, output.output
        if not ok:
            return output.output
        client = connect(server.grpc_url)
        lr = split_chunks(read_video(clip), 1.0, 2)[0][1].lr(2)[:2].transpose(0, 3, 1, 2).copy()
        served = {v: infer(client, name, {"lr": lr}, str(v), server.grpc_url)["sr"] for v in (1, 2, 3)}
    return json.loads((root / "play.json").read_text()), served, lr


def test_play_upscales_each_chunk_with_its_own_version(tuned):
    root, clip = tuned
    played, served, lr = play(root, root / "repo", clip)
    assert [(p["index"], p["version"], p["frames"]) for p in played] == [(1, 1, 10), (2, 2, 10), (3, 3, 10)]
    # through Triton, version k computes chunk k's PyTorch model (within one grey level)
    for version, output in served.items():
        network = load_checkpoint(root / "repo" / "clip_sr" / str(version) / "weights.pt")[0]
        expected = emt.upscale(network, torch.from_numpy(lr).float()).numpy()
        assert np.abs(output.astype(int) - expected.astype(int)).max() <= 1
    assert not np.array_equal(served[1], served[2])
    # the meta-learned model untuned is judged too, and every chunk is beaten by its tuned model
    meta = load_checkpoint(root / "repo" / "clip_sr" / "1" / META_FILE)[0]
    assert meta is not None and all(p["psnr_db"] > p["meta_db"] for p in played)
    # written by ffmpeg while the gRPC client was connected (its fork handlers once broke that)
    written = read_video(root / "sr.mp4").frames
    assert len(written) == 30 and written[0].shape == (48, 96, 3)
    assert (root / "play.png").stat().st_size > 10_000


def test_swapping_two_versions_on_disk_lowers_the_psnr_of_their_chunks(tuned):
    root, clip = tuned
    right = play(root, root / "repo", clip)[0]
    swapped = root / "swapped"
    shutil.copytree(root / "repo", swapped)
    # chunks 2 and 3 (chunk 1's model also starts every later one, so it is left in place)
    (swapped / "clip_sr" / "2").rename(swapped / "clip_sr" / "tmp")
    (swapped / "clip_sr" / "3").rename(swapped / "clip_sr" / "2")
    (swapped / "clip_sr" / "tmp").rename(swapped / "clip_sr" / "3")
    wrong = play(root, swapped, clip)[0]
    assert wrong[1]["psnr_db"] < right[1]["psnr_db"] and wrong[2]["psnr_db"] < right[2]["psnr_db"]
    assert wrong[0]["psnr_db"] == pytest.approx(right[0]["psnr_db"])  # chunk 1 kept its version


def test_a_chunk_without_a_version_is_refused_naming_the_chunks_served(tuned, tmp_path):
    root, _clip = tuned
    longer = demo_clip(size=(96, 48), fps=10, shot_seconds=1, shots=4).write(tmp_path / "longer.mp4")
    message = play(root, root / "repo", longer, ok=False).replace("\n", "")
    assert "has no version for chunk 4 (3.00-4.00 s)" in message
    assert "serves the models of chunks [1, 2, 3]" in message
