"""Spike-depth networks: monocular, stereo and their UGDF fusion, sized for 2 CPU cores.

Every network takes a window of T binary spike frames per camera as T input channels, mapped
to 2s - 1 (BiCross' stem), and predicts per pixel a log depth mu and a log scale s: the depth
is exp(mu) and the uncertainty b = exp(s) is the scale of a Laplace distribution of the log
depth (so b ~ the expected relative error). Trained by that distribution's negative log
likelihood, |mu - log d| / b + log b, the uncertainty learns where the network errs.

- `MonoNet`: a small U-Net over the left window; depth from context (sizes, the ground).
- `StereoNet`: a shared encoder per camera to half resolution, a correlation cost volume over
  `disparities` shifts (one Mul + ReduceMean per shift: it exports to plain ONNX), a 2-D
  aggregation network, soft-argmin disparity, a full-resolution refinement, then depth =
  focal x baseline / disparity. Accurate near (large disparities), poor far (sub-pixel ones).
- `ugdf`: both, trained jointly (UGDF's dual-task training); their log depths fused by
  certainty inside the graph (`Fusion`): inverse-variance weights w = 1 / b^2, mu = (w_m mu_m +
  w_s mu_s) / (w_m + w_s), fused b = (w_m + w_s)^-1/2, with a small learned correction of the
  weight and the fused uncertainty from both uncertainties and the branches' disagreement.

`PackedInput` wraps any of them for export: the graph takes each camera's window bit-packed as
the `.dat` file stores it ([B, T, H * W / 8] uint8, rows flipped, least significant bit
first) and unpacks it with exact float arithmetic (floor of x / 2^k), so a client sends the
file's bytes unchanged and INT8 sees exact 0/1 values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tritonforge.errors import TritonForgeError

ARCHITECTURES = ("mono", "stereo", "ugdf")
MIN_DEPTH, MAX_DEPTH = 0.5, 50.0  # metres: the range a network's depth is squashed into


@dataclass(frozen=True)
class NetConfig:
    """What a checkpoint needs to rebuild its network."""

    arch: str = "ugdf"
    window: int = 32  # T: spike frames per window
    height: int = 64
    width: int = 96
    focal: float = 80.0  # pixels (stereo: depth = focal * baseline / disparity)
    baseline: float = 0.3  # metres
    width_factor: int = 16  # channels of the first level (then x2, x3, x4)
    disparities: int = 16  # cost-volume shifts at half resolution (so up to 2 x this in pixels)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise TritonForgeError(f"--arch {self.arch!r} is unknown: choose one of "
                                   f"{', '.join(ARCHITECTURES)}")
        if self.window < 1:
            raise TritonForgeError(f"--window {self.window} must be at least 1 spike frame")
        if self.height % 8 or self.width % 8 or self.height < 8 or self.width < 8:
            raise TritonForgeError(f"{self.height} x {self.width}: the networks take heights and widths "
                                   "that are multiples of 8")
        if self.width_factor < 2 or self.disparities < 2:
            raise TritonForgeError(f"width factor {self.width_factor} and disparities {self.disparities} "
                                   "must be at least 2")

    @property
    def stereo(self) -> bool:
        return self.arch != "mono"

    def to_json(self) -> dict:
        return asdict(self)


class Features(NamedTuple):
    """What a branch shows of itself besides its depth, for adaptation (`adapt.py`)."""

    coarse: torch.Tensor  # the coarsest level: pooled for global alignment and contrastive distillation
    decoded: torch.Tensor | None = None  # full-resolution decoder features: pixel-level distillation


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1))


class Encoder(nn.Module):
    """Levels at 1, 1/2, 1/4, 1/8 resolution."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        widths = [width, 2 * width, 3 * width, 4 * width]
        self.widths = widths
        self.levels = nn.ModuleList([
            nn.Sequential(conv(cin, widths[0]), conv(widths[0], widths[0])),
            nn.Sequential(conv(widths[0], widths[1], 2), conv(widths[1], widths[1])),
            nn.Sequential(conv(widths[1], widths[2], 2), conv(widths[2], widths[2])),
            nn.Sequential(conv(widths[2], widths[3], 2), conv(widths[3], widths[3])),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    """U-Net decoder from the coarsest level back to the finest given, skips added."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.ups = nn.ModuleList([conv(widths[i + 1] + widths[i], widths[i]) for i in range(len(widths) - 1)])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for index in range(len(features) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.ups[index](torch.cat([x, features[index]], 1))
        return x


def squash_log_depth(raw: torch.Tensor) -> torch.Tensor:
    low, high = math.log(MIN_DEPTH), math.log(MAX_DEPTH)
    return low + (high - low) * torch.sigmoid(raw)


def log_scale(raw: torch.Tensor) -> torch.Tensor:
    """The Laplace scale's log, kept in [log 0.005, log 2] so the likelihood stays finite."""
    return math.log(0.005) + (math.log(2.0) - math.log(0.005)) * torch.sigmoid(raw)


class MonoNet(nn.Module):
    def __init__(self, config: NetConfig):
        super().__init__()
        self.encoder = Encoder(config.window, config.width_factor)
        self.decoder = Decoder(self.encoder.widths)
        self.head = nn.Conv2d(config.width_factor, 2, 3, 1, 1)

    def forward(self, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Features]:
        """spikes [B, T, H, W] in {-1, 1} (or an image [B, 1, H, W]: BiCross' teacher) ->
        (mu, s) [B, 1, H, W] and its features."""
        levels = self.encoder(spikes)
        decoded = self.decoder(levels)
        out = self.head(decoded)
        return squash_log_depth(out[:, :1]), log_scale(out[:, 1:]), Features(levels[-1], decoded)


def correlation(left: torch.Tensor, right: torch.Tensor, shifts: int) -> torch.Tensor:
    """Cost volume [B, shifts, H, W]: at shift d, the mean over channels of left(x) * right(x - d)
    (zero where x - d leaves the image)."""
    volumes = [(left * right).mean(1, keepdim=True)]
    for d in range(1, shifts):
        volumes.append(F.pad((left[..., d:] * right[..., :-d]).mean(1, keepdim=True), (d, 0)))
    return torch.cat(volumes, 1)


class StereoNet(nn.Module):
    def __init__(self, config: NetConfig):
        super().__init__()
        w = config.width_factor
        self.shifts = config.disparities
        self.focal_baseline = config.focal * config.baseline
        self.features = nn.Sequential(conv(config.window, w), conv(w, 2 * w, 2), conv(2 * w, 2 * w))
        self.reduce = conv(2 * w, w)
        widths = [self.shifts + w, 3 * w, 4 * w, 4 * w]
        self.aggregate = nn.ModuleList([conv(widths[0], widths[0]), conv(widths[0], widths[1], 2),
                                        conv(widths[1], widths[2], 2), conv(widths[2], widths[3], 2)])
        self.decoder = Decoder(widths)
        self.cost = nn.Conv2d(widths[0], self.shifts, 3, 1, 1)
        self.refine = nn.Sequential(conv(config.window + 1, w), conv(w, w), nn.Conv2d(w, 2, 3, 1, 1))
        self.min_disparity = self.focal_baseline / MAX_DEPTH

    def forward(self, left: torch.Tensor, right: torch.Tensor):
        """Windows [B, T, H, W] in {-1, 1} -> (mu, s) [B, 1, H, W], and the aggregation's
        coarsest features."""
        fl, fr = self.features(left), self.features(right)
        volume = correlation(F.normalize(fl, dim=1), F.normalize(fr, dim=1), self.shifts)
        x = torch.cat([volume, self.reduce(fl)], 1)
        levels = []
        for layer in self.aggregate:
            x = layer(x)
            levels.append(x)
        costs = self.cost(self.decoder(levels))
        shifts = torch.arange(self.shifts, dtype=costs.dtype).reshape(1, -1, 1, 1)
        half = (torch.softmax(costs, 1) * shifts).sum(1, keepdim=True)
        disparity = 2.0 * F.interpolate(half, scale_factor=2.0, mode="bilinear", align_corners=False)
        refined = self.refine(torch.cat([left, disparity / self.shifts], 1))
        disparity = torch.clamp(disparity + refined[:, :1], min=self.min_disparity)
        mu = math.log(self.focal_baseline) - torch.log(disparity)
        mu = torch.clamp(mu, math.log(MIN_DEPTH), math.log(MAX_DEPTH))
        return mu, log_scale(refined[:, 1:]), Features(levels[-1])


def fuse(mu_mono: torch.Tensor, s_mono: torch.Tensor, mu_stereo: torch.Tensor, s_stereo: torch.Tensor):
    """Fusion by certainty: inverse-variance weights of the two Laplace log depths."""
    w_mono, w_stereo = torch.exp(-2.0 * s_mono), torch.exp(-2.0 * s_stereo)
    total = w_mono + w_stereo
    return (w_mono * mu_mono + w_stereo * mu_stereo) / total, -0.5 * torch.log(total)


class Fusion(nn.Module):
    """UGDF's fusion: the inverse-variance weighting of `fuse`, corrected by a small learned map of
    both branches' log depths and uncertainties (zero at initialisation, so training starts from
    pure certainty weighting). The weight on the monocular branch is sigmoid(log w_mono -
    log w_stereo + correction); the fused uncertainty is the combined one, corrected likewise.
    It can learn, for example, that where the branches disagree by much, or at a range where one
    branch's uncertainty is too modest, the other deserves more trust than its scale says."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.correct = nn.Sequential(nn.Conv2d(5, width, 3, 1, 1), nn.LeakyReLU(0.1),
                                     nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.1),
                                     nn.Conv2d(width, 2, 3, 1, 1))
        nn.init.zeros_(self.correct[-1].weight)
        nn.init.zeros_(self.correct[-1].bias)

    def forward(self, mu_mono, s_mono, mu_stereo, s_stereo):
        _mu, s = fuse(mu_mono, s_mono, mu_stereo, s_stereo)
        cues = torch.cat([mu_mono, s_mono, mu_stereo, s_stereo, mu_mono - mu_stereo], 1)
        correction = self.correct(cues)
        weight = torch.sigmoid(2.0 * (s_stereo - s_mono) + correction[:, :1])
        return weight * mu_mono + (1.0 - weight) * mu_stereo, s + correction[:, 1:]


class DepthNet(nn.Module):
    """Any of the three architectures behind one interface: `predict(left, right)` gives a
    dict of log depths and log scales ("mono", "stereo", "fused" as they exist), and
    `forward` the served outputs: depth and uncertainty, and for ugdf also each branch's
    depth and uncertainty."""

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.mono = MonoNet(config) if config.arch in ("mono", "ugdf") else None
        self.stereo = StereoNet(config) if config.arch in ("stereo", "ugdf") else None
        self.fusion = Fusion() if config.arch == "ugdf" else None

    def predict(self, left: torch.Tensor, right: torch.Tensor | None = None) -> dict[str, tuple]:
        """{branch: (mu, s, features)} for spike windows in {-1, 1}."""
        out: dict[str, tuple] = {}
        if self.mono is not None:
            out["mono"] = self.mono(left)
        if self.stereo is not None:
            if right is None:
                raise TritonForgeError(f"the {self.config.arch} network needs the right camera's window too")
            out["stereo"] = self.stereo(left, right)
        if self.fusion is not None:
            mu, s = self.fusion(out["mono"][0], out["mono"][1], out["stereo"][0], out["stereo"][1])
            out["fused"] = (mu, s, None)
        return out

    @property
    def final(self) -> str:
        return {"mono": "mono", "stereo": "stereo", "ugdf": "fused"}[self.config.arch]

    def forward(self, left: torch.Tensor, right: torch.Tensor | None = None):
        out = self.predict(left, right)
        mu, s, _ = out[self.final]
        served = [torch.exp(mu), torch.exp(s)]
        if self.config.arch == "ugdf":
            for branch in ("mono", "stereo"):
                served += [torch.exp(out[branch][0]), torch.exp(out[branch][1])]
        return tuple(served)


def output_names(arch: str) -> tuple[str, ...]:
    names = ("depth", "uncertainty")
    return names + ("depth_mono", "uncertainty_mono", "depth_stereo", "uncertainty_stereo") \
        if arch == "ugdf" else names


def signed(spikes: torch.Tensor) -> torch.Tensor:
    """0/1 spikes as BiCross feeds them: 2s - 1."""
    return 2.0 * spikes - 1.0


class Unpack(nn.Module):
    """[B, T, H * W / 8] uint8 in `.dat` layout -> [B, T, H, W] float 0/1, in exact arithmetic
    (every intermediate is an integer below 2^8, so float32 holds it exactly)."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width
        self.register_buffer("powers", torch.tensor([2.0 ** -k for k in range(9)]), persistent=False)
        self.register_buffer("rows", torch.arange(height - 1, -1, -1), persistent=False)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        batch, steps = packed.shape[0], packed.shape[1]
        shifted = torch.floor(packed.to(torch.float32).unsqueeze(-1) * self.powers)
        bits = shifted[..., :8] - 2.0 * shifted[..., 1:]
        frames = bits.reshape(batch, steps, self.height, self.width)
        return torch.index_select(frames, 2, self.rows)  # the file stores the rows bottom-up


class PackedInput(nn.Module):
    """The exported graph: bit-packed windows in (`spikes`, or `spikes_left` and `spikes_right`),
    the network's served outputs out. Called positionally (the exporter) or by input name."""

    def __init__(self, net: DepthNet):
        super().__init__()
        self.net = net
        self.unpack = Unpack(net.config.height, net.config.width)
        self.input_names = input_names(net.config.arch)

    def forward(self, *packed: torch.Tensor, **named: torch.Tensor):
        packed = packed or tuple(named[name] for name in self.input_names)
        windows = [signed(self.unpack(p)) for p in packed]
        return self.net(*windows)


class StreamStep(nn.Module):
    """One frame per camera per request: each camera's window lives in the state (its last T
    packed frames, shifted by one each step) beside a frame count; depth and uncertainty are
    computed from the window after every frame and are 0 ("no depth") until T frames have
    arrived. Inputs: the frames, each camera's `window_<camera>_in`, `frames_in`; outputs:
    the served outputs, then the new states in the same order."""

    def __init__(self, net: DepthNet):
        super().__init__()
        self.graph = PackedInput(net)
        self.window = net.config.window
        cameras = ("left", "right") if net.config.stereo else ("left",)
        self.input_names = (*self.graph.input_names, *(f"window_{c}_in" for c in cameras), "frames_in")

    def forward(self, *tensors: torch.Tensor, **named: torch.Tensor):
        tensors = tensors or tuple(named[name] for name in self.input_names)
        cameras = len(self.graph.input_names)
        frames, states, count = tensors[:cameras], tensors[cameras:-1], tensors[-1]
        windows = [torch.cat([state[:, 1:], frame.unsqueeze(1)], 1) for frame, state in zip(frames, states,
                                                                                             strict=True)]
        count = torch.clamp(count + 1.0, max=float(self.window))
        ready = (count >= float(self.window)).to(torch.float32).reshape(-1, 1, 1, 1)
        outputs = [out * ready for out in self.graph(*windows)]
        return (*outputs, *windows, count)


def input_names(arch: str) -> tuple[str, ...]:
    return ("spikes",) if arch == "mono" else ("spikes_left", "spikes_right")
