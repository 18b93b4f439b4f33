"""The spike camera simulator, SpikeCV's `.dat` layout, the procedural scenes' geometry, the
in-graph unpacking and the stream windows a server cuts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.spikedepth.data import depth_metrics, scene_set
from tritonforge.export.spikedepth.model import Unpack, fuse
from tritonforge.export.spikedepth.scenes import Rig, Scene, Surface, render, render_window
from tritonforge.export.spikedepth.spike_window import StreamError, cut_windows
from tritonforge.export.spikedepth.spikes import (
    Camera,
    pack,
    psnr,
    read_dat,
    reconstruct,
    simulate,
    unpack,
    write_dat,
)


def spikecv_read(data: bytes, height: int, width: int) -> np.ndarray:
    """SpikeCV's reading of a `.dat` stream, written from its description: pixel p of a frame is
    bit p % 8 of byte p // 8, and the frame is flipped upside down after reading."""
    size = height * width // 8
    raw = np.frombuffer(data, np.uint8).reshape(-1, size)
    pixel = np.arange(height * width).reshape(height, width)
    bits = (raw[:, pixel // 8] >> (pixel % 8)) & 1
    return bits[:, ::-1, :]


def test_dat_files_use_spikecvs_layout(tmp_path):
    rng = np.random.default_rng(0)
    spikes = (rng.random((5, 16, 24)) < 0.3).astype(np.uint8)
    path = write_dat(tmp_path / "s.dat", spikes)
    assert path.stat().st_size == 5 * 16 * 24 // 8
    np.testing.assert_array_equal(spikecv_read(path.read_bytes(), 16, 24), spikes)
    np.testing.assert_array_equal(read_dat(path, 16, 24), spikes)
    one = np.zeros((1, 16, 24), np.uint8)
    one[0, 0, 0] = 1  # the top-left pixel: in the last row of the file, least significant bit
    packed = pack(one)[0]
    assert packed[(15 * 24) // 8] == 1 and packed.sum() == 1


def test_a_stream_that_is_not_whole_frames_is_refused(tmp_path):
    path = tmp_path / "odd.dat"
    path.write_bytes(bytes(16 * 24 // 8 * 3 + 5))
    with pytest.raises(TritonForgeError, match=r"not a whole number of 16 x 24 frames .*3 whole frames and"):
        read_dat(path, 16, 24)


def test_firing_rate_is_luminance():
    camera = Camera(gain=0.5, threshold=1.0, dark=0.0, noise=0.0)
    steps = 400
    levels = np.linspace(0.0, 1.0, 8 * 8).reshape(1, 8, 8)
    spikes = simulate(np.repeat(levels, steps, axis=0), camera, seed=3)
    expected = levels[0] * 0.5 * steps  # spikes = accumulated light / threshold, +- the initial phase
    assert np.abs(spikes.sum(0) - expected).max() <= 1.0
    assert spikes.max() == 1 and spikes.dtype == np.uint8


def test_a_still_image_comes_back_from_its_spikes():
    from skimage.data import camera as photograph
    from skimage.transform import resize

    image = resize(photograph() / 255.0, (64, 96), anti_aliasing=True)
    spikes = simulate(np.repeat(image[None], 512, axis=0), Camera(), seed=0)
    rebuilt = reconstruct(spikes, Camera())
    assert psnr(image, rebuilt) > 28.0
    assert psnr(image, reconstruct(spikes[:32], Camera())) < psnr(image, rebuilt)  # a short window is noisier


def test_bright_pixels_cannot_outrun_one_spike_per_step():
    with pytest.raises(TritonForgeError, match="exceeds the threshold"):
        Camera(gain=1.2, threshold=1.0)


def wall_scene(distance: float) -> Scene:
    wall = Surface("wall", (distance,), "brick", 30.0, 0.8, 0.1)
    return Scene((wall,), 1.5, (0.0, 0.0, -1.0), (0.0, 0.0, 0.0))


def test_depth_is_exact_and_the_right_view_is_the_left_shifted_by_the_disparity():
    rig = Rig(height=16, width=48, focal=80.0, baseline=0.25)
    left, depth = render(wall_scene(10.0), rig, np.zeros(3))
    right, _ = render(wall_scene(10.0), rig, np.array([rig.baseline, 0.0, 0.0]))
    np.testing.assert_allclose(depth, 10.0)
    shift = int(rig.disparity(10.0))  # 2 pixels
    np.testing.assert_allclose(right[:, :-shift], left[:, shift:], atol=1e-9)
    assert np.abs(right - left).max() > 0.05  # the views differ: the shift is real


def test_scenes_are_reproducible_and_the_splits_differ():
    a = scene_set("test", 3, 8)
    b = scene_set("test", 3, 8)
    train = scene_set("train", 3, 8)
    np.testing.assert_array_equal(a.left, b.left)
    assert not np.array_equal(a.depth, train.depth)
    assert a.left.shape == (3, 8, 64 * 96 // 8) and a.depth.shape == (3, 64, 96)
    assert 1.0 < a.depth.min() and a.depth.max() <= 30.0


def test_the_rig_moves_during_a_window():
    wall = Surface("wall", (6.0,), "brick", 30.0, 0.8, 0.1)
    scene = Scene((wall,), 1.5, (0.0, 0.0, -1.0), (0.05, 0.0, 0.0))  # the rig slides sideways
    views = render_window(scene, Rig(height=16, width=48), 8)
    assert np.abs(views.left[0] - views.left[-1]).max() > 0.05


def test_the_graph_unpacks_dat_bytes_exactly():
    rng = np.random.default_rng(1)
    spikes = (rng.random((2, 4, 16, 24)) < 0.5).astype(np.uint8)
    packed = torch.from_numpy(pack(spikes))
    np.testing.assert_array_equal(Unpack(16, 24)(packed).numpy(), spikes)
    np.testing.assert_array_equal(unpack(pack(spikes), 16, 24), spikes)


def test_ugdf_trusts_the_more_certain_branch():
    mu_mono, mu_stereo = torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 2.0)
    mu, s = fuse(mu_mono, torch.full_like(mu_mono, -4.0), mu_stereo, torch.full_like(mu_mono, 0.0))
    assert torch.allclose(mu, torch.full_like(mu, 1.0), atol=1e-3)  # the mono branch is 55x more certain
    assert (s < -4.0).all()  # two estimates together are more certain than either
    mu, _ = fuse(mu_mono, torch.zeros_like(mu_mono), mu_stereo, torch.zeros_like(mu_mono))
    assert torch.allclose(mu, torch.full_like(mu, 1.5))


def test_depth_metrics_by_band():
    truth = np.array([[1.0, 2.0, 5.0, 10.0]])
    predicted = np.array([[1.1, 2.0, 5.0, 20.0]])
    metrics = depth_metrics(predicted, truth)
    assert metrics["near_abs_rel"] == pytest.approx(0.05)
    assert metrics["middle_abs_rel"] == 0.0 and metrics["far_abs_rel"] == pytest.approx(1.0)
    assert metrics["delta_1.25"] == 0.75


# -- the windows a server cuts from .dat payloads ----------------------------------------------


def payload(frames: int, value: int = 0, size: int = 6) -> bytes:
    return bytes([value]) * (frames * size)


def test_the_window_is_the_last_t_frames():
    data = bytes(range(6 * 5))  # 5 frames of 6 bytes (a 6 x 8 frame)
    out = cut_windows({"left": [data], "right": [data]}, 6, 8, window=3, max_frames=100)
    np.testing.assert_array_equal(out["left"][0].reshape(-1), np.arange(12, 30))


@pytest.mark.parametrize(("left", "right", "message"), [
    (payload(4)[:-1], payload(4), "not a whole number of 6 x 8 frames"),
    (payload(2), payload(2), "holds 2 frames; this model takes a window of 3"),
    (payload(4), payload(5), "different numbers of frames"),
    (payload(400), payload(400), "above this model's limit of 100 frames"),
])
def test_bad_streams_are_refused_with_the_reason(left, right, message):
    with pytest.raises(StreamError, match=message):
        cut_windows({"left": [left], "right": [right]}, 6, 8, window=3, max_frames=100)


def test_an_untrained_fusion_is_pure_certainty_weighting():
    from tritonforge.export.spikedepth.model import Fusion

    generator = torch.Generator().manual_seed(0)
    mu_m, s_m, mu_s, s_s = (torch.randn((2, 1, 4, 6), generator=generator) for _ in range(4))
    fused, uncertainty = Fusion()(mu_m, s_m, mu_s, s_s)
    expected, expected_s = fuse(mu_m, s_m, mu_s, s_s)
    assert torch.allclose(fused, expected, atol=1e-6) and torch.allclose(uncertainty, expected_s)


def test_the_motorcycle_scene_keeps_its_true_depth():
    from tritonforge.export.spikedepth.data import motorcycle

    scene = motorcycle(8, copies=2)
    valid = np.isfinite(scene.depth[0])
    assert 0.9 < valid.mean() < 0.95  # Middlebury leaves some pixels without a disparity
    assert 2.0 < scene.depth[0][valid].min() and scene.depth[0][valid].max() < 5.1
    assert scene.rig.focal == pytest.approx(994.978 * 96 / 741)
    assert scene.rig.baseline == pytest.approx(0.193001)
    assert not np.array_equal(scene.left[0], scene.left[1])  # two recordings of the same scene


def test_training_re_records_and_mirrors_scenes_consistently():
    from tritonforge.export.spikedepth.model import DepthNet, NetConfig
    from tritonforge.export.spikedepth.train import mirrored

    scenes = scene_set("test", 2, 8)
    again = scenes.respiked(7)
    assert not np.array_equal(again.left, scenes.left)  # other spikes ...
    rates = [unpack(s.left, 64, 96).mean() for s in (scenes, again)]
    assert abs(rates[0] - rates[1]) < 0.01  # ... of the same scenes
    left, right = (torch.from_numpy(scenes.windows(slice(None), side)) for side in ("left", "right"))
    depth, depth_right = torch.from_numpy(scenes.depth), torch.from_numpy(scenes.depth_right)
    stereo = DepthNet(NetConfig(arch="stereo", window=8, width_factor=2, disparities=2))
    chosen = torch.tensor([True, False])
    new_left, new_right, new_depth = mirrored(stereo, left, right, depth, depth_right, chosen)
    assert torch.equal(new_left[0], right[0].flip(-1)) and torch.equal(new_right[0], left[0].flip(-1))
    assert torch.equal(new_depth[0], depth_right[0].flip(-1)) and torch.equal(new_left[1], left[1])
