"""EMT per-chunk tuning (ECCV 2022, arXiv 2207.09691): meta-learning, masks, hard patches, deltas.

Content-aware video delivery ships each chunk's LR frames with an SR model tuned to that chunk.
EMT makes the tuning cheap in three ways, each a function here:

- `meta_train`: first-order MAML over temporal tasks (blocks of frames), so one start point
  adapts quickly to any part of the video;
- `tune_chunk`: fine-tune all weights briefly, keep the global top p of |dw| over the conv
  weights as a mask, restart and fine-tune only the masked weights (biases always), so the
  change between chunks is small; `weight_delta` writes that change as indices + values;
- `hard_patches`: train on the windows where the current model is worst (lowest PSNR).

`tune_video` chains them: chunk 1 from the meta-learned model, chunk k+1 from chunk k's model.
Pixels are RGB floats on the 0-255 scale, NCHW, as the networks take them. Every 5th frame of a
chunk is held out (never trained on) and its PSNR is what a `ChunkReport` records.
"""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tritonforge.errors import TritonForgeError
from tritonforge.export.sr.data import psnr
from tritonforge.export.sr.model import bicubic_init, build_network, to_pixels
from tritonforge.export.sr.video import Chunk, check_patch, check_patch_size

HELDOUT_EVERY = 5  # frames 4, 9, 14, ... of a chunk are held out for its PSNR
HARD_FRACTION = 0.2  # sample among the worst 20% of windows
FIRST_FRACTION, LATER_FRACTION = 0.2, 0.01  # mask fractions: chunk 1, chunks 2+
EVAL_BATCH = 8  # frames per forward pass when scoring whole frames
INITS = ("bicubic", "random")
SCHEDULES = ("constant", "cosine")  # the outer learning rate: the reference's, or decayed to 0


# ---------------------------------------------------------------------------------- frames


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] as float 0-255 [N, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float()


def heldout_split(n: int) -> tuple[list[int], list[int]]:
    """(training, held-out) frame indices of an n-frame chunk: every 5th frame is held out
    (the last frame when there are fewer than 5)."""
    if n < 2:
        raise TritonForgeError(f"a chunk of {n} frame(s) leaves nothing to hold out for its PSNR: "
                               "use chunks of at least 2 frames (longer chunks or a higher fps)")
    held = [i for i in range(n) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1] or [n - 1]
    return [i for i in range(n) if i not in held], held


@torch.no_grad()
def upscale(network: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """The network's uint8 output for float LR frames [N, 3, h, w], a few frames at a time."""
    network.eval()
    return torch.cat([to_pixels(network(lr[i:i + EVAL_BATCH])) for i in range(0, len(lr), EVAL_BATCH)])


def frames_psnr(network: nn.Module, lr: torch.Tensor, hr: torch.Tensor, scale: int) -> float:
    """PSNR of the network's rounded output against HR, as EMT measures it (`data.psnr`)."""
    return psnr(upscale(network, lr).numpy(), hr.to(torch.uint8).numpy(), scale)


def check_fraction(fraction: float, what: str) -> None:
    if not 0 < fraction <= 1:
        raise TritonForgeError(f"{what} must be in (0, 1], got {fraction}: e.g. 0.2 for 20%, "
                               "0.01 for 1%")


# ---------------------------------------------------------------------------------- patches


class Patches(NamedTuple):
    """LR [n, 3, p/s, p/s] and HR [n, 3, p, p] patches (float 0-255), and where each was cut:
    `windows` [n, 3] = (frame, top, left) on the LR grid, before the flip and rotation."""

    lr: torch.Tensor
    hr: torch.Tensor
    windows: torch.Tensor


def window_psnr(network: nn.Module, lr: torch.Tensor, hr: torch.Tensor, scale: int, patch: int,
                stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Every LR window of `patch / scale` pixels (every `stride` LR pixels) with the PSNR of the
    network's rounded output against HR over it, the frame's border of scale + 6 HR pixels left
    out (EMT's metric). Returns windows [M, 3] = (frame, top, left) and PSNR [M] (float64)."""
    border = scale + 6
    height, width = hr.shape[-2:]
    valid = torch.zeros(1, 1, height, width, dtype=torch.float64)
    valid[..., border:height - border, border:width - border] = 1
    # avg_pool of (error * valid) over avg_pool of valid: the MSE over the window's valid pixels
    counts = F.avg_pool2d(valid, patch, stride * scale)[0, 0]
    windows, values = [], []
    for start in range(0, len(lr), EVAL_BATCH):
        sr = upscale(network, lr[start:start + EVAL_BATCH]).double()
        error = ((sr - hr[start:start + EVAL_BATCH].double()) ** 2).mean(1, keepdim=True) * valid
        mse = F.avg_pool2d(error, patch, stride * scale)[:, 0] / counts.clamp_min(1e-12)
        frame, top, left = torch.nonzero((counts > 0).expand_as(mse), as_tuple=True)
        windows.append(torch.stack([frame + start, top * stride, left * stride], 1))
        values.append(10 * torch.log10(255.0 ** 2 / mse[frame, top, left]))  # mse 0 -> inf
    return torch.cat(windows), torch.cat(values)


def hard_patches(network: nn.Module, lr: torch.Tensor, hr: torch.Tensor, scale: int, patch: int,
                 fraction: float = HARD_FRACTION, count: int = 64, generator: torch.Generator | None = None,
                 stride: int = 1) -> Patches:
    """`count` patches sampled uniformly among the worst `fraction` of windows by the current
    network's PSNR (`window_psnr`), each flipped and rotated by 90 degrees at random.

    `lr` [N, 3, h, w] and `hr` [N, 3, sh, sw]: float 0-255 frames; `patch`: the HR patch size."""
    check_fraction(fraction, "the hard-patch fraction")
    _check_frames(lr, hr, scale, patch)
    windows, values = window_psnr(network, lr, hr, scale, patch, stride)
    worst = torch.argsort(values, stable=True)[:max(1, math.ceil(fraction * len(values)))]
    chosen = windows[worst[torch.randint(len(worst), (count,), generator=generator)]]
    return _cut(lr, hr, chosen, scale, patch, generator)


def random_patches(lr: torch.Tensor, hr: torch.Tensor, scale: int, patch: int, count: int,
                   generator: torch.Generator | None = None) -> Patches:
    """`count` patches at uniformly random windows, flipped and rotated at random."""
    _check_frames(lr, hr, scale, patch)
    lr_patch = patch // scale
    frame = torch.randint(len(lr), (count,), generator=generator)
    top = torch.randint(lr.shape[-2] - lr_patch + 1, (count,), generator=generator)
    left = torch.randint(lr.shape[-1] - lr_patch + 1, (count,), generator=generator)
    return _cut(lr, hr, torch.stack([frame, top, left], 1), scale, patch, generator)


def _cut(lr: torch.Tensor, hr: torch.Tensor, windows: torch.Tensor, scale: int, patch: int,
         generator: torch.Generator | None) -> Patches:
    """The LR and HR patches at `windows`, each with one of the 8 flips/rotations of the square
    (the same one for LR and HR)."""
    lr_patch = patch // scale
    flips = torch.randint(2, (len(windows),), generator=generator)
    turns = torch.randint(4, (len(windows),), generator=generator)
    lr_out, hr_out = [], []
    for (f, t, left), flip, turn in zip(windows.tolist(), flips.tolist(), turns.tolist(), strict=True):
        pair = (lr[f, :, t:t + lr_patch, left:left + lr_patch],
                hr[f, :, t * scale:t * scale + patch, left * scale:left * scale + patch])
        if flip:
            pair = tuple(torch.flip(x, [-1]) for x in pair)
        pair = tuple(torch.rot90(x, turn, [-2, -1]) for x in pair)
        lr_out.append(pair[0])
        hr_out.append(pair[1])
    return Patches(torch.stack(lr_out).contiguous(), torch.stack(hr_out).contiguous(), windows)


def _check_frames(lr: torch.Tensor, hr: torch.Tensor, scale: int, patch: int) -> None:
    if tuple(hr.shape[-2:]) != (lr.shape[-2] * scale, lr.shape[-1] * scale) or len(lr) != len(hr):
        raise TritonForgeError(f"HR frames {list(hr.shape)} are not the LR frames {list(lr.shape)} "
                               f"times x{scale}: crop HR to a multiple of the scale, then downscale")
    check_patch_size(*hr.shape[-2:], patch, scale, "the frames")


# ---------------------------------------------------------------------------------- meta-learning


def fresh_network(arch: str, scale: int, init: str = "bicubic", blocks: int | None = None,
                  seed: int = 0) -> nn.Module:
    """New weights of `arch` (seeded by `seed`; the caller's RNG untouched): PyTorch's random
    initialisation (`init="random"`, the reference's), or that with a bicubic upscaler set into
    it (`init="bicubic"`, `model.bicubic_init`), so training starts at bicubic quality."""
    if init not in INITS:
        raise TritonForgeError(f"unknown --init {init!r}: choose {' or '.join(INITS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(arch, scale, blocks)
    return bicubic_init(network, scale) if init == "bicubic" else network


def meta_train(arch: str | nn.Module, chunks: Sequence[Chunk], scale: int, steps: int = 200,
               inner_steps: int = 2, inner_lr: float = 5e-6, outer_lr: float = 1e-3, patch: int = 96,
               task_frames: int = 50, tasks_per_step: int = 4, batch: int = 8,
               seed: int = 0, init: str = "bicubic", blocks: int | None = None, schedule: str = "constant",
               progress: Callable[[int], None] | None = None) -> nn.Module:
    """First-order MAML over temporal tasks: returns the meta-learned network, from fresh weights
    of `arch` (`fresh_network(arch, scale, init, blocks, seed)`) or from a copy of the given
    network. `progress(step)` is called after each outer step.

    A task is a block of `task_frames` consecutive training frames of one chunk (held-out frames
    are never used). Each step draws `tasks_per_step` tasks and `batch` random patches from
    each; per task, `inner_steps` SGD steps on the L1 loss from the meta weights, then the L1
    loss of the adapted weights on the same patches; its gradient (taken at the adapted weights:
    first order) summed over tasks is one outer Adam step on the meta weights. `schedule`: the
    outer learning rate constant (the reference's) or decayed to 0 along a cosine."""
    if steps < 1 or inner_steps < 0 or task_frames < 1:
        raise TritonForgeError(f"meta-training needs steps >= 1, inner_steps >= 0 and task_frames >= 1, "
                               f"got {steps}, {inner_steps}, {task_frames}")
    tasks = []
    for chunk in chunks:
        check_patch(chunk, patch, scale)
        train, _ = heldout_split(len(chunk.frames))
        lr, hr = frames_to_tensor(chunk.lr(scale)[train]), frames_to_tensor(chunk.frames[train])
        tasks += [(lr[i:i + task_frames], hr[i:i + task_frames]) for i in range(0, len(train), task_frames)]
    if not tasks:
        raise TritonForgeError("meta-training needs at least one chunk with frames")
    generator = torch.Generator().manual_seed(seed)
    network = fresh_network(arch, scale, init, blocks, seed) if isinstance(arch, str) else arch
    meta = copy.deepcopy(network).train()
    fast = copy.deepcopy(network).train()
    optimizer = torch.optim.Adam(meta.parameters(), lr=outer_lr)
    if schedule not in SCHEDULES:
        raise TritonForgeError(f"unknown --schedule {schedule!r}: choose {' or '.join(SCHEDULES)}")
    decay = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if schedule == "cosine"
             else torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0))
    for p in meta.parameters():
        p.grad = torch.zeros_like(p)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=False)
        for t in torch.randint(len(tasks), (tasks_per_step,), generator=generator).tolist():
            lr_patches, hr_patches, _ = random_patches(*tasks[t], scale, patch, batch, generator)
            fast.load_state_dict(meta.state_dict())
            for _ in range(inner_steps):
                fast.zero_grad(set_to_none=False)
                F.l1_loss(fast(lr_patches), hr_patches).backward()
                with torch.no_grad():
                    for p in fast.parameters():
                        p -= inner_lr * p.grad
            fast.zero_grad(set_to_none=False)
            F.l1_loss(fast(lr_patches), hr_patches).backward()
            for p, q in zip(meta.parameters(), fast.parameters(), strict=True):
                p.grad += q.grad
        optimizer.step()
        decay.step()
        if progress:
            progress(step + 1)
    return meta.eval()


# ---------------------------------------------------------------------------------- masks


def conv_weights(network: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of every conv (and transposed conv), by state-dict name: what the mask covers.
    Biases (and PReLU slopes) are not masked: they are always trained."""
    return {f"{name}.weight": module.weight for name, module in network.named_modules()
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))}


def top_fraction_mask(before: nn.Module, after: nn.Module, fraction: float) -> dict[str, torch.Tensor]:
    """Per conv weight, a bool mask of the global top `fraction` of |after - before| over all conv
    weights together: exactly round(fraction * total) elements (at least one)."""
    check_fraction(fraction, "the mask fraction")
    start, end = conv_weights(before), conv_weights(after)
    deltas = {name: (end[name] - start[name]).detach().abs() for name in start}
    flat = torch.cat([d.flatten() for d in deltas.values()])
    keep = max(1, round(fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, keep, sorted=False).indices] = True
    masks, offset = {}, 0
    for name, delta in deltas.items():
        masks[name] = chosen[offset:offset + delta.numel()].view_as(delta)
        offset += delta.numel()
    return masks


def _fine_tune(network: nn.Module, patches: Patches, steps: int, lr: float, batch: int,
               generator: torch.Generator, mask: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Adam on the L1 loss over batches drawn from `patches`; with a mask, the conv weights'
    gradients are multiplied by it (Adam's moments of a masked element stay 0, so it never moves)."""
    network.train()
    masked: dict[int, torch.Tensor] = {}
    if mask is not None:
        masked = {id(p): mask[name].to(p.dtype) for name, p in conv_weights(network).items()}
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    for _ in range(steps):
        pick = torch.randint(len(patches.lr), (batch,), generator=generator)
        optimizer.zero_grad(set_to_none=False)
        F.l1_loss(network(patches.lr[pick]), patches.hr[pick]).backward()
        for p in network.parameters():
            if id(p) in masked:
                p.grad *= masked[id(p)]
        optimizer.step()
    return network.eval()


# ---------------------------------------------------------------------------------- per chunk


@dataclass(frozen=True)
class ChunkReport:
    """What one chunk's tuning did: its time range, the mask, held-out PSNR and the bytes to ship."""

    index: int
    start_s: float
    end_s: float
    mask_fraction: float
    psnr_before: float  # dB, held-out frames, the starting model
    psnr_after: float  # dB, held-out frames, the tuned model
    full_bytes: int  # every weight as float32
    delta_bytes: int  # `weight_delta(start, tuned).to_bytes()`
    train_frames: int
    heldout_frames: int


class TunedChunk(NamedTuple):
    network: nn.Module
    mask: dict[str, torch.Tensor]
    report: ChunkReport
    delta: WeightDelta  # from the starting model to `network`: what a server ships


def tune_chunk(network: nn.Module, chunk: Chunk, scale: int, mask_fraction: float,
               full_steps: int = 50, masked_steps: int = 190, lr: float = 1e-4, patch: int = 96,
               batch: int = 8, pool: int = 256, hard_fraction: float = HARD_FRACTION,
               score_frames: int = 30, seed: int = 0) -> TunedChunk:
    """Tune a copy of `network` to `chunk` the EMT way; `network` itself is left as it was.

    1. `pool` hard patches of the chunk's training frames under the starting model (scored on
       at most `score_frames` of them, evenly spaced);
    2. `full_steps` of Adam on all weights ("one epoch"), then the mask: the global top
       `mask_fraction` of |dw| over the conv weights;
    3. from the starting weights again, `masked_steps` of Adam on the masked conv weights and
       all biases. The report's PSNR is on the held-out frames (every 5th)."""
    check_fraction(mask_fraction, "the mask fraction")
    check_patch(chunk, patch, scale)
    if full_steps < 1 or masked_steps < 0:
        raise TritonForgeError(f"tuning needs full_steps >= 1 (to choose the mask) and masked_steps >= 0, "
                               f"got {full_steps} and {masked_steps}")
    train, held = heldout_split(len(chunk.frames))
    lr_frames, hr_frames = frames_to_tensor(chunk.lr(scale)), frames_to_tensor(chunk.frames)
    scored = [train[round(i)] for i in np.linspace(0, len(train) - 1, min(score_frames, len(train)))]
    generator = torch.Generator().manual_seed(seed)
    start = copy.deepcopy(network).eval()
    patches = hard_patches(start, lr_frames[scored], hr_frames[scored], scale, patch, hard_fraction,
                           pool, generator)
    full = _fine_tune(copy.deepcopy(start), patches, full_steps, lr, batch, generator)
    mask = top_fraction_mask(start, full, mask_fraction)
    tuned = _fine_tune(copy.deepcopy(start), patches, masked_steps, lr, batch, generator, mask)
    delta = weight_delta(start, tuned)
    report = ChunkReport(
        index=chunk.index, start_s=chunk.start_s, end_s=chunk.end_s, mask_fraction=mask_fraction,
        psnr_before=frames_psnr(start, lr_frames[held], hr_frames[held], scale),
        psnr_after=frames_psnr(tuned, lr_frames[held], hr_frames[held], scale),
        full_bytes=model_bytes(tuned), delta_bytes=delta.nbytes,
        train_frames=len(train), heldout_frames=len(held))
    return TunedChunk(tuned, mask, report, delta)


def tune_video(meta_network: nn.Module, chunks: Sequence[Chunk], scale: int,
               first_fraction: float = FIRST_FRACTION, later_fraction: float = LATER_FRACTION,
               **tuning: object) -> list[TunedChunk]:
    """Each chunk tuned in turn: chunk 1 from the meta-learned model with mask `first_fraction`,
    chunk k+1 from chunk k's tuned model with `later_fraction`. `tuning`: `tune_chunk`'s options."""
    check_fraction(first_fraction, "the first chunk's mask fraction")
    check_fraction(later_fraction, "the later chunks' mask fraction")
    results: list[TunedChunk] = []
    for chunk in chunks:
        start = results[-1].network if results else meta_network
        fraction = later_fraction if results else first_fraction
        results.append(tune_chunk(start, chunk, scale, fraction, **tuning))  # type: ignore[arg-type]
    return results


def train_on_chunk(network: nn.Module, chunk: Chunk, scale: int, steps: int, lr: float = 1e-3,
                   patch: int = 96, batch: int = 8, seed: int = 0) -> tuple[nn.Module, float]:
    """The baseline EMT is judged against: a copy of `network` (fresh weights, for training
    from scratch) trained on all its weights for `steps` of Adam on the L1 loss, each batch
    of random patches of the chunk's training frames. Returns it and its held-out PSNR."""
    check_patch(chunk, patch, scale)
    train, held = heldout_split(len(chunk.frames))
    lr_frames, hr_frames = frames_to_tensor(chunk.lr(scale)), frames_to_tensor(chunk.frames)
    lr_train, hr_train = lr_frames[train], hr_frames[train]
    generator = torch.Generator().manual_seed(seed)
    network = copy.deepcopy(network).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    for _ in range(steps):
        patches = random_patches(lr_train, hr_train, scale, patch, batch, generator)
        optimizer.zero_grad()
        F.l1_loss(network(patches.lr), patches.hr).backward()
        optimizer.step()
    network.eval()
    return network, frames_psnr(network, lr_frames[held], hr_frames[held], scale)


# ---------------------------------------------------------------------------------- deltas


def model_bytes(network: nn.Module) -> int:
    """The full model as shipped without deltas: every state-dict value as float32."""
    return sum(4 * t.numel() for t in network.state_dict().values())


@dataclass(frozen=True)
class WeightDelta:
    """The change from one model to the next: per tensor, the flat indices (int32) and new values
    (float32) of the elements that changed; 1-D tensors (biases, PReLU slopes) whole when any
    element changed (indices None)."""

    tensors: dict[str, tuple[np.ndarray | None, np.ndarray]]

    def to_bytes(self) -> bytes:
        """One .npz of three arrays: a JSON header (name, element count, whole or sparse), all
        indices concatenated, all values concatenated."""
        header = [[name, int(values.size), indices is None]
                  for name, (indices, values) in self.tensors.items()]
        indices = [i for i, _ in self.tensors.values() if i is not None]
        buffer = io.BytesIO()
        np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                 indices=np.concatenate(indices) if indices else np.zeros(0, np.int32),
                 values=np.concatenate([v for _, v in self.tensors.values()] or [np.zeros(0, np.float32)]))
        return buffer.getvalue()

    @property
    def nbytes(self) -> int:
        return len(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> WeightDelta:
        with np.load(io.BytesIO(data)) as arrays:
            header = json.loads(arrays["header"].tobytes().decode())
            all_indices, all_values = arrays["indices"], arrays["values"]
        tensors: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
        at_index = at_value = 0
        for name, count, whole in header:
            indices = None if whole else all_indices[at_index:at_index + count]
            at_index += 0 if whole else count
            tensors[name] = (indices, all_values[at_value:at_value + count])
            at_value += count
        return cls(tensors)


def weight_delta(before: nn.Module, after: nn.Module) -> WeightDelta:
    """What `apply_delta(before, ...)` needs to rebuild `after` exactly."""
    old, new = before.state_dict(), after.state_dict()
    if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in old):
        raise TritonForgeError("the two models have different weights: a delta needs the same "
                               "architecture, scale and width on both sides")
    tensors: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
    for name, value in new.items():
        changed = (value != old[name]).flatten()
        if not changed.any():
            continue
        flat = value.detach().flatten().to(torch.float32).numpy()
        if value.dim() < 2:
            tensors[name] = (None, flat.copy())
        else:
            indices = torch.nonzero(changed).flatten().numpy().astype(np.int32)
            tensors[name] = (indices, flat[indices])
    return WeightDelta(tensors)


def apply_delta(base: nn.Module, delta: WeightDelta | bytes) -> nn.Module:
    """A copy of `base` with the delta's values written in (`base` itself is not changed)."""
    if isinstance(delta, bytes):
        delta = WeightDelta.from_bytes(delta)
    network = copy.deepcopy(base)
    state = network.state_dict()
    for name, (indices, values) in delta.tensors.items():
        if name not in state:
            raise TritonForgeError(f"the delta changes {name!r}, which the base model does not have: "
                                   "apply it to the model it was computed from")
        flat = state[name].view(-1)
        source = torch.from_numpy(values).to(flat.dtype)
        if indices is None:
            flat.copy_(source)
        else:
            flat[torch.from_numpy(indices.astype(np.int64))] = source
    return network
