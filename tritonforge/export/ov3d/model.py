"""A 3DETR-style detector small enough for two CPU cores, with an open-vocabulary class head.

The graph takes the cloud and the indices `sampling.py` computes outside it (PointNet++'s
sampler and grouper do not export):

- `points` [B, N, 3]; `centres` [B, M] (farthest-point sample of the points); `groups`
  [B, M, K] (each centre's ball-query neighbours); `queries` [B, Q] (farthest-point sample of
  the centres);
- `class_embeddings` [C, D]: the request's vocabulary, one text embedding per class name (C
  varies from request to request; the graph normalises them).

Pre-encoder: each centre's neighbours, relative to it and over the radius, through a shared
MLP and max-pooled (one set-abstraction layer). Encoder: transformer layers over the centres
with a Fourier embedding of their position (coordinates scaled to the cloud's bounding box).
Decoder: the queries start at the sampled centres, attend to each other and to the encoder's
tokens. Heads (shared by every decoder layer, so each layer can be supervised): centre offset
(±`reach` metres from the query's point), size (a fraction of `max_size`), yaw in [0, pi) as
one of `angle_bins` bins plus a residual (a box turned by pi is the same box), and an
embedding per query, L2-normalised and compared by cosine with the normalised class
embeddings and a learned background embedding, times a fixed scale (1 / 0.07, CLIP's and
OV-3DET's): a softmax over the C names and background gives each query's label and score.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d.sampling import Sampling

LOGIT_SCALE = 1 / 0.07


@dataclass(frozen=True)
class DetectorConfig:
    num_points: int = 2048
    centres: int = 256
    group: int = 32
    radius: float = 0.4  # metres: the ball query's radius
    queries: int = 64
    width: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 3
    embedding: int = 384  # the text encoder's width (all-MiniLM-L6-v2)
    angle_bins: int = 12
    reach: float = 1.0  # metres a box centre may lie from its query's point
    max_size: float = 3.0  # metres: the largest box side

    def __post_init__(self):
        if not self.num_points >= self.centres >= self.queries >= 1 or self.group < 1:
            raise TritonForgeError(f"the detector needs points ({self.num_points}) >= centres "
                                   f"({self.centres}) >= queries ({self.queries}) >= 1 and a group of "
                                   "at least one point")
        if self.width % self.heads:
            raise TritonForgeError(f"width {self.width} must divide into {self.heads} attention heads")

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.num_points, self.centres, self.group, self.radius, self.queries)


class Detections(NamedTuple):
    """One decoder layer's predictions. `logits` [B, Q, C + 1] (the last column background)."""

    centre: torch.Tensor  # [B, Q, 3]
    size: torch.Tensor  # [B, Q, 3]
    angle_logits: torch.Tensor  # [B, Q, bins]
    angle_residual: torch.Tensor  # [B, Q, bins] in bin widths
    embedding: torch.Tensor  # [B, Q, D] unit length
    logits: torch.Tensor

    def yaw(self, bins: int) -> torch.Tensor:
        """[B, Q] yaw in [0, pi) of the likeliest bin plus its residual."""
        width = math.pi / bins
        chosen = self.angle_logits.argmax(-1, keepdim=True)
        residual = torch.gather(self.angle_residual, -1, chosen)[..., 0]
        return torch.remainder(chosen[..., 0].to(residual.dtype) * width + residual * width, math.pi)

    def boxes(self, bins: int) -> torch.Tensor:
        return torch.cat([self.centre, self.size, self.yaw(bins)[..., None]], -1)


@contextmanager
def traceable():
    """PyTorch's fused inference kernels for transformer layers (its "fast path") off: the ONNX
    tracer has no export for them. The same arithmetic, op by op."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, N, F] at index [B, ...] -> [B, ..., F]."""
    flat = index.reshape(index.shape[0], -1)
    picked = torch.gather(values, 1, flat[..., None].expand(-1, -1, values.shape[-1]))
    return picked.reshape(*index.shape, values.shape[-1])


class Fourier(nn.Module):
    """A fixed random Fourier embedding of positions scaled to [0, 1] by the cloud's box."""

    def __init__(self, width: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("basis", torch.randn(3, width // 2, generator=generator) * 2 * math.pi)

    def forward(self, xyz: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        scaled = (xyz - low[:, None]) / (high - low).clamp(min=1e-3)[:, None]
        projected = scaled @ self.basis
        return torch.cat([projected.sin(), projected.cos()], -1)


def mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for position, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if position < len(widths) - 2:
            layers += [nn.LayerNorm(b), nn.ReLU()]
    return nn.Sequential(*layers)


class DecoderLayer(nn.Module):
    """Pre-norm: self-attention among the queries, cross-attention to the encoder, feed-forward;
    positions are added to queries and keys, not to values (DETR's way)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))
        self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.feed_forward = mlp(width, 2 * width, width)

    def forward(self, target, query_position, memory, memory_position):
        x = self.norms[0](target)
        placed = x + query_position
        target = target + self.self_attention(placed, placed, x, need_weights=False)[0]
        x = self.norms[1](target)
        target = target + self.cross_attention(x + query_position, memory + memory_position, memory,
                                               need_weights=False)[0]
        return target + self.feed_forward(self.norms[2](target))


class Detector(nn.Module):
    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.pre_encoder = mlp(3, 64, 128, width)
        self.position = Fourier(width)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(width, config.heads, 2 * width, dropout=0.0, batch_first=True,
                                       norm_first=True),
            config.encoder_layers, enable_nested_tensor=False)
        self.query_position = mlp(width, width, width)
        self.decoder = nn.ModuleList(DecoderLayer(width, config.heads) for _ in range(config.decoder_layers))
        self.final_norm = nn.LayerNorm(width)
        self.centre_head = mlp(width, width, 3)
        self.size_head = mlp(width, width, 3)
        self.angle_head = mlp(width, width, 2 * config.angle_bins)
        self.embedding_head = mlp(width, 2 * width, config.embedding)
        self.background = nn.Parameter(torch.randn(config.embedding) / math.sqrt(config.embedding))

    def forward_layers(self, points, centres, groups, queries, class_embeddings) -> list[Detections]:
        """Every decoder layer's detections (training supervises all of them)."""
        config = self.config
        low, high = points.min(1).values, points.max(1).values
        centre_xyz = gather(points, centres)  # [B, M, 3]
        local = (gather(points, groups) - centre_xyz[:, :, None]) / config.radius  # [B, M, K, 3]
        tokens = self.pre_encoder(local).max(2).values  # [B, M, W]
        memory_position = self.position(centre_xyz, low, high)
        memory = self.encoder(tokens + memory_position)
        query_xyz = gather(centre_xyz, queries)  # [B, Q, 3]
        query_position = self.query_position(self.position(query_xyz, low, high))
        names = F.normalize(torch.cat([class_embeddings, self.background[None]]), dim=-1)  # [C + 1, D]
        target = torch.zeros_like(query_position)
        out = []
        for layer in self.decoder:
            target = layer(target, query_position, memory, memory_position)
            out.append(self.heads(self.final_norm(target), query_xyz, names))
        return out

    def heads(self, features, query_xyz, names) -> Detections:
        config = self.config
        angle = self.angle_head(features)
        embedding = F.normalize(self.embedding_head(features), dim=-1)
        return Detections(
            centre=query_xyz + config.reach * torch.tanh(self.centre_head(features)),
            size=config.max_size * torch.sigmoid(self.size_head(features)),
            angle_logits=angle[..., :config.angle_bins],
            angle_residual=torch.tanh(angle[..., config.angle_bins:]),
            embedding=embedding,
            logits=LOGIT_SCALE * embedding @ names.T)

    def forward(self, points, centres, groups, queries, class_embeddings):
        """The served outputs: boxes [B, Q, 7], scores [B, Q] (the likeliest name's probability),
        labels [B, Q] (its index in the request's vocabulary), query embeddings [B, Q, D]."""
        last = self.forward_layers(points, centres, groups, queries, class_embeddings)[-1]
        probabilities = last.logits.softmax(-1)[..., :-1]
        scores, labels = probabilities.max(-1)
        return last.boxes(self.config.angle_bins), scores, labels, last.embedding
