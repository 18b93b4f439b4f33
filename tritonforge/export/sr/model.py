"""The super-resolution networks of EMT (ECCV 2022) and the uint8 graph that serves them.

Every network takes RGB in raw 0-255 floats and returns RGB on the same scale (only EDSR
subtracts the DIV2K mean, and adds it back). `SRGraph` wraps one for export: uint8 pixels in,
cast to float, the network, then clamp to [0, 255], round (half to even, like ONNX's Round)
and cast back to uint8, so a client sends and receives plain images.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tritonforge.errors import TritonForgeError
from tritonforge.safe_load import load_weights

ARCHS = ("espcn", "srcnn", "fsrcnn", "edsr")
SCALES = (2, 3, 4)
DIV2K_MEAN = (0.4488 * 255, 0.4371 * 255, 0.4040 * 255)  # EDSR's RGB mean, on the 0-255 scale
CHECKPOINT_FORMAT = "tritonforge.sr/1"


class ESPCN(nn.Module):
    """Three 3x3 convs (3->64->64->32, ReLU), a 3x3 conv to 3*s^2 channels, PixelShuffle(s)."""

    def __init__(self, scale: int, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width // 2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width // 2, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SRCNN(nn.Module):
    """Bicubic upsampling first, then 9x9 3->64, 5x5 64->32 (ReLU), 5x5 32->3."""

    def __init__(self, scale: int, width: int = 64):
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 9, padding=4), nn.ReLU(),
            nn.Conv2d(width, width // 2, 5, padding=2), nn.ReLU(),
            nn.Conv2d(width // 2, 3, 5, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Resize(cubic, a=-0.75, half_pixel) in ONNX: the same kernel as PyTorch's bicubic
        up = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return self.body(up)


class FSRCNN(nn.Module):
    """5x5 3->56, 1x1 shrink to 12, four 3x3 12->12, 1x1 expand to 56 (PReLU after each), then a
    9x9 transposed conv of stride s (padding 4, output padding s-1: exactly s times larger)."""

    def __init__(self, scale: int, width: int = 56, shrink: int = 12, maps: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 5, padding=2), nn.PReLU(width),
                                   nn.Conv2d(width, shrink, 1), nn.PReLU(shrink)]
        for _ in range(maps):
            layers += [nn.Conv2d(shrink, shrink, 3, padding=1), nn.PReLU(shrink)]
        layers += [nn.Conv2d(shrink, width, 1), nn.PReLU(width)]
        self.body = nn.Sequential(*layers)
        self.tail = nn.ConvTranspose2d(width, 3, 9, stride=scale, padding=4, output_padding=scale - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x))


class ResBlock(nn.Module):
    """conv-ReLU-conv, scaled by res_scale, plus the input (no batch norm)."""

    def __init__(self, width: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """Mean shift, head conv, n residual blocks and a conv, the global skip, a PixelShuffle tail
    (x4 as two x2 stages), a conv to RGB, the mean added back."""

    def __init__(self, scale: int, blocks: int = 16, width: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(width, res_scale) for _ in range(blocks)],
                                  nn.Conv2d(width, width, 3, padding=1))
        stages = [2, 2] if scale == 4 else [scale]
        upsample: list[nn.Module] = []
        for factor in stages:
            upsample += [nn.Conv2d(width, width * factor * factor, 3, padding=1), nn.PixelShuffle(factor)]
        self.tail = nn.Sequential(*upsample, nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x - self.mean)
        return self.tail(self.body(x) + x) + self.mean


def build_network(arch: str, scale: int, blocks: int | None = None, width: int | None = None) -> nn.Module:
    """A network with fresh (random) weights; `blocks` only for EDSR (default 16)."""
    check_architecture(arch, scale, blocks)
    extra = {"width": width} if width else {}
    if arch == "espcn":
        return ESPCN(scale, **extra)
    if arch == "srcnn":
        return SRCNN(scale, **extra)
    if arch == "fsrcnn":
        return FSRCNN(scale, **extra)
    return EDSR(scale, blocks if blocks is not None else 16, **extra)


def architecture(network: nn.Module) -> tuple[str, int | None]:
    """(arch, blocks) of a network built by `build_network`, as checkpoints record them."""
    return type(network).__name__.lower(), len(network.body) - 1 if isinstance(network, EDSR) else None


def check_architecture(arch: str, scale: int, blocks: int | None) -> None:
    """Refuse an unknown arch or scale, and --blocks with a network that has no blocks."""
    if arch not in ARCHS:
        raise TritonForgeError(f"unknown --arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if scale not in SCALES:
        raise TritonForgeError(f"unknown --scale {scale}: choose one of {', '.join(map(str, SCALES))}")
    if blocks is not None and arch != "edsr":
        raise TritonForgeError(f"--blocks {blocks} applies to edsr only ({arch} has a fixed depth): "
                               "drop --blocks or use --arch edsr")
    if blocks is not None and blocks < 1:
        raise TritonForgeError(f"--blocks {blocks} must be at least 1 (EDSR-1 is --blocks 1)")


CUBIC_A = -0.5  # the cubic convolution kernel of Pillow's (and MATLAB's) bicubic resize


def cubic(distance: float, a: float = CUBIC_A) -> float:
    """Keys' cubic convolution kernel at `distance` (in LR pixels)."""
    d = abs(distance)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    return a * (d ** 3 - 5 * d ** 2 + 8 * d - 4) if d < 2 else 0.0


def cubic_taps(scale: int, phase: int, offsets: range) -> torch.Tensor:
    """The 1-D weights, over LR `offsets`, of the HR pixel at `phase` (0..scale-1) past an LR
    pixel, the pixel centres aligned as resizes align them; renormalised to sum 1 where the
    offsets cut the kernel short."""
    centre = (phase + 0.5) / scale - 0.5  # the HR pixel's position on the LR grid, relative
    taps = torch.tensor([cubic(t - centre) for t in offsets], dtype=torch.float64)
    return taps / taps.sum()


def phase_kernel(scale: int, py: int, px: int, offsets: range) -> torch.Tensor:
    """The 2-D cubic weights (float32, over `offsets` in each direction) of HR phase (py, px)."""
    return torch.outer(cubic_taps(scale, py, offsets), cubic_taps(scale, px, offsets)).float()


@torch.no_grad()
def bicubic_init(network: nn.Module, scale: int) -> nn.Module:
    """Set `network` (in place) so that it starts as a bicubic upscaler, and return it.

    Each network keeps a linear path through three of its channels: the first layers copy the
    RGB input (pixels are >= 0, so ReLU and PReLU let the copies through), the upsampling layer
    applies the cubic kernel, and every weight from the other (random) channels into that path,
    or into the output, is zero. Training starts at bicubic quality instead of far below it; the
    zeroed weights next to the path get gradients, so the first steps open it to the random
    channels (as a zero-initialised last layer of a residual branch does)."""
    convs = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if isinstance(network, ESPCN):
        _copy_rgb(convs[:2])
        _espcn_upsampler(convs[2], convs[3], scale)
    elif isinstance(network, SRCNN):  # the bicubic resize is in the graph: copy RGB through
        _copy_rgb(convs)
    elif isinstance(network, FSRCNN):
        _copy_rgb(convs[:-1])
        _transposed_upsampler(convs[-1], scale)
    elif isinstance(network, EDSR):
        _copy_rgb(convs[:1])
        for branch_end in [block.body[-1] for block in network.body[:-1]] + [network.body[-1]]:
            branch_end.weight[:3].zero_()  # residual branches and the body add nothing to RGB
            branch_end.bias[:3].zero_()
        ups = [m for m in network.tail if isinstance(m, nn.Conv2d)]
        for up, factor in zip(ups[:-1], [2, 2] if scale == 4 else [scale], strict=True):
            up.weight[:3 * factor * factor].zero_()
            up.bias[:3 * factor * factor].zero_()
            for c, py, px in itertools.product(range(3), range(factor), range(factor)):
                up.weight[(c * factor + py) * factor + px, c] = phase_kernel(factor, py, px, range(-1, 2))
        _copy_rgb(ups[-1:])
    return network


def _espcn_upsampler(third: nn.Conv2d, last: nn.Conv2d, scale: int) -> None:
    """ESPCN's last two convs as the bicubic upsampler over LR offsets -2..2: the third conv makes
    nine copies of RGB shifted by -1..1 in each direction, the last conv weighs them per phase
    (its channel c * s^2 + py * s + px, PixelShuffle's order)."""
    shifts = list(itertools.product((-1, 0, 1), repeat=2))
    third.weight[:3 * len(shifts)].zero_()
    third.bias[:3 * len(shifts)].zero_()
    for n, (dy, dx) in enumerate(shifts):
        for c in range(3):
            third.weight[3 * n + c, c, 1 + dy, 1 + dx] = 1.0
    last.weight.zero_()
    last.bias.zero_()
    for c, py, px in itertools.product(range(3), range(scale), range(scale)):
        kernel = phase_kernel(scale, py, px, range(-2, 3))
        for ty, tx in itertools.product(range(-2, 3), repeat=2):  # offset = shift + kernel tap - 1
            sy, sx = max(-1, min(1, ty)), max(-1, min(1, tx))
            last.weight[(c * scale + py) * scale + px, 3 * shifts.index((sy, sx)) + c,
                        ty - sy + 1, tx - sx + 1] = kernel[ty + 2, tx + 2]


def _transposed_upsampler(tail: nn.ConvTranspose2d, scale: int) -> None:
    """FSRCNN's transposed conv as the cubic upsampler: out[s*i - 4 + k] += x[i] * w[k], so tap k
    serves HR phase p = (k - 4) mod s at LR offset (p + 4 - k) / s; renormalised per phase
    where the 9 taps cut the kernel short (x3, x4)."""
    tail.weight.zero_()
    tail.bias.zero_()
    size = tail.kernel_size[0]
    phases = [(k - 4) % scale for k in range(size)]
    raw = torch.tensor([cubic((p + 4 - k) // scale - ((p + 0.5) / scale - 0.5))
                        for k, p in zip(range(size), phases, strict=True)], dtype=torch.float64)
    totals = {p: float(sum(raw[k] for k in range(size) if phases[k] == p)) for p in set(phases)}
    taps = torch.stack([raw[k] / totals[phases[k]] for k in range(size)])
    for c in range(3):
        tail.weight[c, c] = torch.outer(taps, taps).float()


def _copy_rgb(convs: list[nn.Conv2d]) -> None:
    """Each conv's channels 0-2 become a copy of its input's channels 0-2 (the centre tap), with
    no weight from any other input channel."""
    for conv in convs:
        conv.weight[:3].zero_()
        centre = conv.kernel_size[0] // 2
        for c in range(3):
            conv.weight[c, c, centre, centre] = 1.0
        if conv.bias is not None:
            conv.bias[:3].zero_()


class SRGraph(nn.Module):
    """uint8 [N, 3, H, W] -> uint8 [N, 3, sH, sW]: cast, the network, clamp, round, cast.

    `dtype` is the arithmetic of the graph (float16 for an FP16 export); pixels stay uint8."""

    def __init__(self, network: nn.Module, scale: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.network = network
        self.scale = scale
        self.dtype = dtype

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return to_pixels(self.network(lr.to(self.dtype)))

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        """The float output before rounding (training and PSNR on floats)."""
        return self.network(lr.to(self.dtype))


def to_pixels(values: torch.Tensor) -> torch.Tensor:
    """0-255 floats as uint8 pixels: clamp, round half to even, cast."""
    return torch.round(torch.clamp(values, 0.0, 255.0)).to(torch.uint8)


# -- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(network: nn.Module, path: Path | str, arch: str, scale: int,
                    blocks: int | None = None, **extra: Any) -> Path:
    """The network's state dict with what rebuilds it (arch, scale, blocks, width), loadable
    with `torch.load(..., weights_only=True)`; `extra` (plain values) is kept alongside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = _width(network)
    torch.save({"format": CHECKPOINT_FORMAT, "arch": arch, "scale": int(scale),
                "blocks": blocks, "width": width, "extra": dict(extra),
                "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()}}, path)
    return path


def load_checkpoint(path: Path | str, arch: str | None = None, scale: int | None = None,
                    blocks: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The network saved by `save_checkpoint` (or a bare state dict, given arch and scale), in
    eval mode, and what the file says about it. A mismatch with the asked arch/scale/blocks is
    refused rather than loaded into the wrong network."""
    path = Path(path)
    if not path.is_file():
        raise TritonForgeError(f"--checkpoint {path} does not exist: give the path of a state dict "
                               "written by tritonforge.export.sr.model.save_checkpoint")
    data = load_weights(path, f"--checkpoint {path}")
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        meta = {k: data[k] for k in ("arch", "scale", "blocks", "width", "extra")}
        state = data["state_dict"]
        for key, asked in (("arch", arch), ("scale", scale), ("blocks", blocks)):
            if asked is not None and meta[key] != asked:
                raise TritonForgeError(f"--checkpoint {path} holds {key} {meta[key]!r}, not the "
                                       f"requested {asked!r}: export with --{key} {meta[key]}")
    elif isinstance(data, dict) and arch is not None and scale is not None:
        meta = {"arch": arch, "scale": scale, "blocks": blocks, "width": None, "extra": {}}
        state = data
    else:
        raise TritonForgeError(f"--checkpoint {path} does not say which network it holds: give "
                               "--arch and --scale, or save it with save_checkpoint")
    network = build_network(meta["arch"], meta["scale"], meta["blocks"], meta["width"])
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise TritonForgeError(f"--checkpoint {path} does not fit {meta['arch']} x{meta['scale']}: "
                               f"{str(exc).splitlines()[0]}") from None
    return network.eval(), meta


def _width(network: nn.Module) -> int | None:
    """The first conv's width when it is not the architecture's default."""
    first = next(m for m in network.modules() if isinstance(m, nn.Conv2d))
    default = 56 if isinstance(network, FSRCNN) else 64
    return None if first.out_channels == default else first.out_channels
