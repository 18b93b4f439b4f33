"""Video in and out for the `sr` family: demo clip, mp4/folder round trips, chunks, LR, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from tritonforge.data.video import Video, read_video, write_video
from tritonforge.errors import TritonForgeError
from tritonforge.export.sr.video import Chunk, check_patch, crop_to_scale, demo_clip, split_chunks

# A small clip: 3 shots of 1 s at 10 fps, 96x48 (divisible by 2, 3 and 4), so tests take seconds.
SIZE, FPS, SHOT_S, SHOTS = (96, 48), 10.0, 1.0, 3
SHOT_FRAMES = int(FPS * SHOT_S)


@pytest.fixture(scope="module")
def clip() -> Video:
    return demo_clip(size=SIZE, fps=FPS, shot_seconds=SHOT_S, shots=SHOTS, seed=0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse else float("inf")


def random_frames(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


# ---------------------------------------------------------------------------------- demo clip


def test_demo_clip_has_the_asked_frames_size_and_rate(clip):
    assert len(clip.frames) == SHOTS * SHOT_FRAMES
    assert clip.fps == FPS
    assert all(f.shape == (SIZE[1], SIZE[0], 3) and f.dtype == np.uint8 for f in clip.frames)


def test_demo_clip_is_deterministic_for_a_seed(clip):
    again = demo_clip(size=SIZE, fps=FPS, shot_seconds=SHOT_S, shots=SHOTS, seed=0)
    other = demo_clip(size=SIZE, fps=FPS, shot_seconds=SHOT_S, shots=SHOTS, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, again.frames, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(clip.frames, other.frames, strict=True))


def test_demo_clip_changes_little_within_a_shot_and_a_lot_at_cuts(clip):
    frames = np.stack(clip.frames).astype(np.int16)
    step = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # step[i]: frame i -> i + 1
    cuts = [k * SHOT_FRAMES - 1 for k in range(1, SHOTS)]
    within = np.delete(step, cuts)
    assert within.max() > 0  # the camera moves: pans and zooms, not still photographs
    assert step[cuts].min() > 4 * within.max()


def test_demo_clip_default_size_divides_by_2_3_and_4():
    width, height = demo_clip.__defaults__[0]
    assert all(width % s == 0 and height % s == 0 for s in (2, 3, 4))


# ---------------------------------------------------------------------------------- round trips


def test_mp4_round_trip_keeps_count_size_rate_and_content(clip, tmp_path):
    path = clip.write(tmp_path / "clip.mp4")
    back = read_video(path)
    assert len(back.frames) == len(clip.frames)
    assert back.fps == FPS
    assert back.frames[0].shape == clip.frames[0].shape and back.frames[0].dtype == np.uint8
    assert min(psnr(a, b) for a, b in zip(clip.frames, back.frames, strict=True)) > 30.0


def test_folder_round_trip_is_exact_and_takes_fps(clip, tmp_path):
    write_video(clip.frames, tmp_path / "frames", FPS)
    back = read_video(tmp_path / "frames", fps=12.5)
    assert back.fps == 12.5
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, back.frames, strict=True))


def test_folder_default_fps_is_30_and_frames_come_in_name_order(tmp_path):
    first, second = random_frames(2, 8, 12)
    PILImage.fromarray(second).save(tmp_path / "b.png")
    PILImage.fromarray(first).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    video = read_video(tmp_path)
    assert video.fps == 30.0
    assert [np.array_equal(f, g) for f, g in zip(video.frames, (first, second), strict=True)] == [True, True]


def test_folder_frames_are_read_as_rgb(tmp_path):
    PILImage.new("L", (10, 6), 200).save(tmp_path / "0.png")
    PILImage.new("RGBA", (10, 6), (1, 2, 3, 4)).save(tmp_path / "1.png")
    PILImage.new("RGB", (10, 6), (9, 8, 7)).save(tmp_path / "2.jpg", quality=100)
    video = read_video(tmp_path)
    assert [f.shape for f in video.frames] == [(6, 10, 3)] * 3
    assert video.frames[0][0, 0].tolist() == [200, 200, 200]
    assert video.frames[1][0, 0].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------- chunks


def test_chunks_cover_the_video_in_time_ranges_of_the_asked_seconds():
    video = Video(random_frames(25, 8, 8), fps=10.0)
    chunks, note = split_chunks(video, seconds=1.0)
    assert [(c.index, c.start_s, c.end_s, len(c.frames)) for c in chunks] == [
        (1, 0.0, 1.0, 10), (2, 1.0, 2.0, 10), (3, 2.0, 2.5, 5)]
    assert note == ""
    assert np.array_equal(chunks[1].frames[0], video.frames[10])


def test_default_chunks_are_5_seconds_so_each_demo_shot_is_one_chunk():
    video = Video(random_frames(300, 4, 4), fps=30.0)
    chunks, _ = split_chunks(video)
    assert [(c.start_s, c.end_s, len(c.frames)) for c in chunks] == [(0.0, 5.0, 150), (5.0, 10.0, 150)]


def test_lr_frames_are_the_bicubic_downscale_of_hr(clip):
    chunk = split_chunks(clip, seconds=SHOT_S, scale=3)[0][0]
    lr = chunk.lr(3)
    assert lr.shape == (SHOT_FRAMES, SIZE[1] // 3, SIZE[0] // 3, 3) and lr.dtype == np.uint8
    expected = PILImage.fromarray(chunk.frames[4]).resize((SIZE[0] // 3, SIZE[1] // 3), PILImage.BICUBIC)
    assert np.array_equal(lr[4], np.asarray(expected))


def test_a_size_the_scale_does_not_divide_is_cropped_bottom_right_and_said():
    video = Video(random_frames(3, 50, 99), fps=10.0)
    chunks, note = split_chunks(video, scale=4)
    assert chunks[0].frames.shape == (3, 48, 96, 3)
    assert np.array_equal(chunks[0].frames[0], video.frames[0][:48, :96])
    assert "99x50" in note and "96x48" in note
    assert "3 column(s) on the right" in note and "2 row(s) at the bottom" in note
    assert chunks[0].lr(4).shape == (3, 12, 24, 3)


def test_a_size_the_scale_divides_is_not_cropped():
    frames = np.stack(random_frames(2, 12, 24))
    cropped, note = crop_to_scale(frames, 3)
    assert cropped.shape == frames.shape and np.shares_memory(cropped, frames) and note == ""


# ---------------------------------------------------------------------------------- bad input


def test_a_file_that_is_not_a_video_is_refused_with_the_decoders_reason(tmp_path):
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is a text file, not a video")
    with pytest.raises(TritonForgeError, match="holiday.mp4") as caught:
        read_video(fake)
    assert "Invalid data" in str(caught.value)  # ffmpeg's own words


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(TritonForgeError, match="holds no frames"):
        read_video(tmp_path)


def test_a_missing_path_is_refused(tmp_path):
    with pytest.raises(TritonForgeError, match="no video at"):
        read_video(tmp_path / "absent.mp4")


def test_a_frame_that_cannot_be_decoded_is_named(tmp_path):
    PILImage.new("RGB", (8, 8)).save(tmp_path / "0001.png")
    (tmp_path / "0002.png").write_bytes(b"not a png")
    with pytest.raises(TritonForgeError, match="cannot decode frame .*0002.png"):
        read_video(tmp_path)


def test_frames_of_different_sizes_in_a_chunk_name_the_first_that_differs(tmp_path):
    for name, size in (("f1.png", (16, 8)), ("f2.png", (16, 8)), ("f3.png", (20, 10)), ("f4.png", (16, 8))):
        PILImage.new("RGB", size).save(tmp_path / name)
    video = read_video(tmp_path, fps=2.0)
    with pytest.raises(TritonForgeError, match=r"chunk 1 .*: f3.png is 20x10, but f1.png is 16x8"):
        split_chunks(video, seconds=5.0)


def test_a_chunk_smaller_than_the_patch_is_refused_with_the_sizes():
    chunk = Chunk(2, 5.0, 10.0, np.zeros((4, 40, 60, 3), np.uint8))
    check_patch(chunk, patch=40, scale=2)  # LR 30x20 holds a 20x20 LR patch
    with pytest.raises(TritonForgeError, match=r"chunk 2 .*LR frames are 30x20 at x2, smaller than the "
                                               r"24x24 LR patch \(HR patch 48\)"):
        check_patch(chunk, patch=48, scale=2)


def test_a_crop_that_would_leave_nothing_is_refused():
    video = Video(random_frames(2, 3, 8), fps=10.0)
    with pytest.raises(TritonForgeError, match="leaves nothing"):
        split_chunks(video, scale=4)


def test_mp4_refuses_an_odd_size_instead_of_a_broken_pipe(tmp_path):
    with pytest.raises(TritonForgeError, match="even width and height"):
        write_video(random_frames(2, 7, 8), tmp_path / "odd.mp4", 10.0)
    assert not (tmp_path / "odd.mp4").exists()
