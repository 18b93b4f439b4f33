"""EMT per-chunk tuning: hard patches, masks, deltas, meta-learning, chaining chunks, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tritonforge.errors import TritonForgeError
from tritonforge.export.sr import emt
from tritonforge.export.sr.model import build_network
from tritonforge.export.sr.video import Chunk, demo_clip, split_chunks

# 3 shots of 1 s at 10 fps, 96x48: three 10-frame chunks of their own content, LR 48x24 at x2.
SCALE, PATCH = 2, 32  # HR patch 32, LR 16
TUNING = {"full_steps": 10, "masked_steps": 30, "lr": 1e-3, "patch": PATCH, "batch": 4, "pool": 64}


@pytest.fixture(scope="module")
def chunks() -> list[Chunk]:
    clip = demo_clip(size=(96, 48), fps=10, shot_seconds=1, shots=3)
    return split_chunks(clip, 1.0, SCALE)[0]


@pytest.fixture(scope="module")
def initial() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("espcn", SCALE)


@pytest.fixture(scope="module")
def meta(initial, chunks) -> torch.nn.Module:
    return emt.meta_train(initial, chunks, SCALE, steps=30, patch=PATCH, task_frames=4,
                          tasks_per_step=2, batch=4)


@pytest.fixture(scope="module")
def tuned(meta, chunks) -> list[emt.TunedChunk]:
    return emt.tune_video(meta, chunks[:2], SCALE, first_fraction=0.2, later_fraction=0.01, **TUNING)


def frames(chunk: Chunk, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return emt.frames_to_tensor(chunk.lr(SCALE)[indices]), emt.frames_to_tensor(chunk.frames[indices])


def test_hard_patches_are_cut_from_the_worst_fifth_of_windows(meta, chunks):
    lr, hr = frames(chunks[0], list(range(4)))
    patches = emt.hard_patches(meta, lr, hr, SCALE, PATCH, fraction=0.2, count=40,
                               generator=torch.Generator().manual_seed(1))
    # exhaustively: every LR window, PSNR of the rounded output over its pixels off the frame border
    sr = emt.upscale(meta, lr).numpy().astype(np.float64)
    target = hr.numpy().astype(np.float64)
    border, lr_patch = SCALE + 6, PATCH // SCALE
    valid = np.zeros(target.shape[-2:], bool)
    valid[border:-border, border:-border] = True
    scores = {}
    for f in range(len(lr)):
        for top in range(lr.shape[-2] - lr_patch + 1):
            for left in range(lr.shape[-1] - lr_patch + 1):
                rows = slice(top * SCALE, top * SCALE + PATCH)
                cols = slice(left * SCALE, left * SCALE + PATCH)
                error = ((sr[f, :, rows, cols] - target[f, :, rows, cols]) ** 2)[:, valid[rows, cols]]
                if error.size:
                    scores[(f, top, left)] = 10 * math.log10(255.0**2 / error.mean())
    threshold = sorted(scores.values())[math.ceil(0.2 * len(scores)) - 1]
    windows = [tuple(w) for w in patches.windows.tolist()]
    assert all(scores[w] <= threshold + 1e-9 for w in windows)
    assert len(set(windows)) > 10  # sampled among them, not the single worst
    # each patch is its window's crop under one of the 8 flips/rotations, the same for LR and HR
    for (f, top, left), lr_patch_t, hr_patch_t in zip(windows, patches.lr, patches.hr, strict=True):
        lr_crop = lr[f, :, top:top + lr_patch, left:left + lr_patch]
        hr_crop = hr[f, :, top * SCALE:top * SCALE + PATCH, left * SCALE:left * SCALE + PATCH]
        assert any(torch.equal(dihedral(hr_crop, flip, turn), hr_patch_t)
                   and torch.equal(dihedral(lr_crop, flip, turn), lr_patch_t)
                   for flip in (False, True) for turn in range(4))


def dihedral(x: torch.Tensor, flip: bool, turn: int) -> torch.Tensor:
    return torch.rot90(torch.flip(x, [-1]) if flip else x, turn, [-2, -1])


def test_mask_holds_exactly_the_fraction_and_masked_tuning_moves_nothing_else(meta, tuned):
    first = tuned[0]
    total = sum(w.numel() for w in emt.conv_weights(meta).values())
    assert sum(int(m.sum()) for m in first.mask.values()) == round(0.2 * total)
    before, after = emt.conv_weights(meta), emt.conv_weights(first.network)
    for name, mask in first.mask.items():
        assert torch.equal(after[name][~mask], before[name][~mask]), name
    assert any(not torch.equal(a, b) for (n, a), b in zip(first.network.named_parameters(),
                                                           meta.parameters(), strict=True)
               if n.endswith("bias"))


def test_tuning_raises_the_heldout_psnr_of_its_chunk(meta, chunks, tuned):
    report = tuned[0].report
    _, held = emt.heldout_split(len(chunks[0].frames))
    assert (report.train_frames, report.heldout_frames) == (8, 2)
    lr, hr = frames(chunks[0], held)
    assert report.psnr_before == pytest.approx(emt.frames_psnr(meta, lr, hr, SCALE))
    assert report.psnr_after == pytest.approx(emt.frames_psnr(tuned[0].network, lr, hr, SCALE))
    assert report.psnr_after > report.psnr_before
    assert (report.index, report.start_s, report.end_s, report.mask_fraction) == (1, 0.0, 1.0, 0.2)


def test_chunk_two_starts_from_chunk_one_and_ships_a_small_exact_delta(chunks, tuned):
    previous, second = tuned[0].network, tuned[1]
    _, held = emt.heldout_split(len(chunks[1].frames))
    lr, hr = frames(chunks[1], held)
    assert second.report.psnr_before == pytest.approx(emt.frames_psnr(previous, lr, hr, SCALE))
    delta = emt.weight_delta(previous, second.network)
    data = delta.to_bytes()
    assert second.report.delta_bytes == len(data)
    rebuilt = emt.apply_delta(previous, data)
    for name, value in second.network.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    # 1% of ESPCN x2's conv weights plus all biases: well under 5% of the full model
    assert second.report.full_bytes == 4 * sum(p.numel() for p in second.network.parameters())
    assert second.report.delta_bytes <= 0.05 * second.report.full_bytes
    changed = sum(int((a != b).sum()) for a, b in zip(emt.conv_weights(previous).values(),
                                                      emt.conv_weights(second.network).values(), strict=True))
    assert 0 < changed <= sum(int(m.sum()) for m in second.mask.values())


def test_meta_training_lowers_the_l1_loss_on_its_tasks(initial, meta, chunks):
    train, _ = emt.heldout_split(len(chunks[0].frames))
    lr, hr = frames(chunks[0], train)
    patches = emt.random_patches(lr, hr, SCALE, PATCH, 32, torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = F.l1_loss(initial(patches.lr), patches.hr).item()
        after = F.l1_loss(meta(patches.lr), patches.hr).item()
    assert after < 0.5 * before


def test_refuses_a_chunk_smaller_than_the_patch(meta, chunks):
    with pytest.raises(TritonForgeError, match="smaller than the 32x32 LR patch"):
        emt.tune_chunk(meta, chunks[0], SCALE, 0.2, patch=64)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_refuses_a_mask_fraction_outside_zero_to_one(meta, chunks, fraction):
    with pytest.raises(TritonForgeError, match=r"mask fraction must be in \(0, 1\]"):
        emt.tune_chunk(meta, chunks[0], SCALE, fraction, **TUNING)
    with pytest.raises(TritonForgeError, match="fraction must be in"):
        emt.tune_video(meta, chunks, SCALE, later_fraction=fraction, **TUNING)


def test_a_delta_rebuilds_fsrcnn_with_its_transposed_conv_and_prelu_exactly():
    torch.manual_seed(0)
    base = build_network("fsrcnn", 3)
    after = build_network("fsrcnn", 3)
    after.load_state_dict(base.state_dict())
    with torch.no_grad():
        after.tail.weight.view(-1)[[0, 7, 100]] += 0.5
        after.body[1].weight[3] = 0.9  # a PReLU slope: sent whole, like a bias
    delta = emt.weight_delta(base, after)
    assert set(delta.tensors) == {"tail.weight", "body.1.weight"}
    assert delta.tensors["tail.weight"][0].tolist() == [0, 7, 100]
    untouched = {k: v.clone() for k, v in base.state_dict().items()}
    rebuilt = emt.apply_delta(base, delta.to_bytes())
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in after.state_dict().items())
    assert all(torch.equal(base.state_dict()[k], v) for k, v in untouched.items())


@pytest.mark.parametrize("arch,scale", [("espcn", 2), ("espcn", 3), ("espcn", 4), ("fsrcnn", 2), ("srcnn", 2),
                                        ("edsr", 2)])
def test_bicubic_init_starts_each_network_at_bicubic_quality(arch, scale):
    from PIL import Image as PILImage

    from tritonforge.export.sr.data import lr_hr_pairs, psnr

    lr, hr = lr_hr_pairs(scale, 8)
    pillow = np.stack([np.asarray(PILImage.fromarray(x.transpose(1, 2, 0)).resize(
        (x.shape[2] * scale, x.shape[1] * scale), PILImage.BICUBIC)).transpose(2, 0, 1) for x in lr])
    network = emt.fresh_network(arch, scale, "bicubic", blocks=1 if arch == "edsr" else None)
    random = emt.fresh_network(arch, scale, "random", blocks=1 if arch == "edsr" else None)
    started = emt.upscale(network, torch.from_numpy(lr).float()).numpy()
    baseline = psnr(pillow, hr, scale)
    # ESPCN and FSRCNN x2 carry the whole cubic kernel (Pillow's, a = -0.5); SRCNN's graph resizes
    # with PyTorch's (a = -0.75); EDSR's 3x3 upsampling conv cuts the kernel to 3 taps
    tolerance = {"espcn": 0.01, "fsrcnn": 0.01, "srcnn": 0.15, "edsr": 0.15}[arch]
    assert psnr(started, hr, scale) == pytest.approx(baseline, abs=tolerance)
    assert psnr(emt.upscale(random, torch.from_numpy(lr).float()).numpy(), hr, scale) < baseline - 5
    # the random channels are still there: once a first step has opened their zeroed path to
    # the output, the layers a few steps from it get gradients too
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        F.l1_loss(network(torch.from_numpy(lr[:2]).float()), torch.from_numpy(hr[:2]).float()).backward()
        optimizer.step()
    assert all(p.grad.abs().sum() > 0 for p in emt.conv_weights(network).values())


def test_meta_training_refuses_an_unknown_schedule_or_init(chunks):
    with pytest.raises(TritonForgeError, match="unknown --schedule 'warm': choose constant or cosine"):
        emt.meta_train("espcn", chunks, SCALE, steps=1, patch=PATCH, task_frames=4, schedule="warm")
    with pytest.raises(TritonForgeError, match="unknown --init 'zeros': choose bicubic or random"):
        emt.meta_train("espcn", chunks, SCALE, steps=1, patch=PATCH, task_frames=4, init="zeros")

