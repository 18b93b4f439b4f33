"""Detection transformers with their pre- and post-processing in one graph.

`DetectionGraph` takes what the Image modality's decode step makes of a photograph: the
letterboxed uint8 pixels [B, 3, S, S] and the original (height, width) [B, 2]. Inside the graph:
normalisation, the detector (transformers' DETR or Deformable DETR), and a fixed top-k of
detections with boxes mapped back through the letterbox to original pixels, so Triton can batch
and a client needs no post-processing. The detector's raw `logits` and `pred_boxes` are outputs
too: parity compares them before the top-k, where near-tied random scores can reorder.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES = ("detr", "deformable", "mttrans")
SIZES = ("tiny", "r50")


def detector_config(arch: str, size: str, num_labels: int):
    """A transformers config with a transformers ResNet backbone (no timm, nothing downloaded):
    `r50` is the papers' size (ResNet-50, d_model 256, 6 + 6 layers), `tiny` a test-sized one."""
    from transformers import DeformableDetrConfig, DetrConfig, ResNetConfig

    deformable = arch == "deformable"
    stages = ["stage2", "stage3", "stage4"] if deformable else ["stage4"]
    if size == "r50":
        backbone = ResNetConfig(out_features=stages)  # ResNet-50: bottleneck blocks [3, 4, 6, 3]
        shape = {}
    else:
        backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                depths=[1, 1, 1, 1], layer_type="basic", out_features=stages)
        shape = dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20)
        if deformable:  # decoder_layers=1 trips a tied-weights error in transformers: keep 2
            shape.update(num_feature_levels=3, encoder_n_points=2, decoder_n_points=2)
    config_type = DeformableDetrConfig if deformable else DetrConfig
    return config_type(backbone_config=backbone, use_pretrained_backbone=False, num_labels=num_labels,
                       **shape)


def random_detector(arch: str, size: str, num_labels: int, seed: int) -> nn.Module:
    """A detector with seeded random weights. Deformable DETR initialises its sampling offsets
    to a fixed pattern with zero weights, so every query would sample the same points whatever
    the image: a little noise makes the random model's attention depend on its input. MTTrans
    is Deformable DETR with its two domain tokens (random too)."""
    from transformers import DeformableDetrForObjectDetection, DetrForObjectDetection

    from tritonforge.export.detr.mttrans import add_domain_tokens

    config = detector_config("detr" if arch == "detr" else "deformable", size, num_labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (DetrForObjectDetection if arch == "detr" else DeformableDetrForObjectDetection)(config)
        if arch == "mttrans":
            add_domain_tokens(model)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "sampling_offsets.weight" in name:
                    parameter.normal_(0.0, 0.02)
                elif "attention_weights" in name or "domain_" in name:
                    parameter.normal_(0.0, 0.05)
    return model.eval()


def letterbox_to_original(boxes: torch.Tensor, orig_size: torch.Tensor, height: int, width: int
                          ) -> torch.Tensor:
    """xyxy boxes in the letterboxed height x width image -> pixels of the original image.

    The inverse of the decode step's letterbox (`modalities/steps/image_decode.py: resized`),
    computed as it does in double precision: ratio = min(W / w, H / h), the image resized to
    round(w * ratio) x round(h * ratio) (at least 1, at most the canvas), pasted at
    ((W - inner_w) // 2, (H - inner_h) // 2). Round is half-to-even in both Python and ONNX.
    """
    h, w = orig_size[:, 0].double(), orig_size[:, 1].double()
    ratio = torch.minimum(width / w, height / h)
    inner_w = torch.clamp(torch.round(w * ratio), min=1.0, max=float(width))
    inner_h = torch.clamp(torch.round(h * ratio), min=1.0, max=float(height))
    left, top = torch.floor((width - inner_w) / 2), torch.floor((height - inner_h) / 2)
    offset = torch.stack([left, top, left, top], dim=-1)[:, None, :]
    scale = torch.stack([w / inner_w, h / inner_h, w / inner_w, h / inner_h], dim=-1)[:, None, :]
    limit = torch.stack([w, h, w, h], dim=-1)[:, None, :]
    mapped = (boxes.double() - offset) * scale
    return torch.minimum(torch.clamp(mapped, min=0.0), limit).float()


class DetectionGraph(nn.Module):
    """uint8 letterboxed image + original size -> top-k boxes (xyxy, original pixels), scores,
    integer labels, and the detector's raw logits and boxes."""

    def __init__(self, detector: nn.Module, arch: str, height: int, width: int, top_k: int):
        super().__init__()
        self.detector, self.arch = detector, arch
        self.height, self.width, self.top_k = height, width, top_k
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor, orig_size: torch.Tensor):
        pixels = (image.float() / 255.0 - self.mean) / self.std
        out = self.detector(pixel_values=pixels)
        logits, pred_boxes = out.logits, out.pred_boxes  # [B, Q, C(+1)], [B, Q, 4] cxcywh in 0..1
        if self.arch == "detr":  # softmax over classes + "no object"; the best real class per query
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)
            scores, query = scores.topk(self.top_k, dim=1)
            labels = labels.gather(1, query)
        else:  # sigmoid per class; top-k over queries x classes
            classes = logits.shape[-1]
            scores, index = logits.sigmoid().flatten(1).topk(self.top_k, dim=1)
            query, labels = index // classes, index % classes
        chosen = pred_boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
        cx, cy, w, h = chosen.unbind(-1)
        xyxy = torch.stack([(cx - w / 2) * self.width, (cy - h / 2) * self.height,
                            (cx + w / 2) * self.width, (cy + h / 2) * self.height], dim=-1)
        boxes = letterbox_to_original(xyxy, orig_size, self.height, self.width)
        return boxes, scores, labels.long(), logits, pred_boxes
