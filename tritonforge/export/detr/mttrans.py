"""MTTrans (ECCV 2022) detectors on transformers' Deformable DETR: which weights of a checkpoint
reach the detections, and the domain tokens wired into the forward pass.

MTTrans trains an SFA detector (Wang et al. 2021, "sequence feature alignment") as the student of
a mean teacher. Inference runs the student alone, but SFA's *domain tokens* stay in its graph:

- `domain_enc.weight` [1, 2·d_model] = [position | content]. The content half is one more feature
  level of spatial shape 1x1, appended after the L image levels; its position embedding is the
  position half plus `level_embed[L]` (`transformer.level_embed` is [L+1, d_model]). The encoder's
  deformable self-attention therefore samples L+1 levels (its `sampling_offsets` has
  heads·(L+1)·points·2 rows, `attention_weights` heads·(L+1)·points): every image token reads the
  domain token, and the domain token reads the image. After the last encoder layer the token is
  split off; the decoder's cross-attention sees the L image levels only.
- `domain_dec.weight` [1, 2·d_model] (absent with two-stage) is appended as query Q+1 after the Q
  object queries: its reference point comes from `reference_points(position half)`, it takes part
  in the decoder's self-attention (the object queries attend to it) and cross-attention, and box
  refinement updates its reference point too. Every decoder layer's output drops it before the
  class and box heads, so logits and boxes have Q rows.

SFA's `--mask_domain_enc` / `--mask_domain_dec` (off by default) give the domain level, or the
domain query's key, zero attention: the image tokens and object queries then never read the
tokens, and `fold_masked_domain_tokens` turns such a checkpoint into a plain Deformable DETR.
Everything else MTTrans adds is training-only: see `TRAINING_ONLY` and `TEACHER_PREFIXES`.
Reference code: Lafite-Yu/MTTrans-OpenSource (models/sfa_transformer.py, models/deformable_detr.py).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping

import torch
from torch import nn

from tritonforge.errors import TritonForgeError

# Inference-time domain tokens: key in an MTTrans checkpoint -> key after `add_domain_tokens`.
DOMAIN_ENC = "domain_enc.weight"
DOMAIN_DEC = "domain_dec.weight"
DOMAIN_TOKENS = {DOMAIN_ENC: "model.domain_enc.weight", DOMAIN_DEC: "model.domain_dec.weight"}

# Training-only modules of MTTrans's SFA detector, by state-dict prefix.
TRAINING_ONLY = {
    "domain_pred_enc.": "encoder domain discriminator (3-layer MLP behind a gradient-reversal layer)",
    "domain_pred_dec.": "decoder domain discriminator (3-layer MLP behind a gradient-reversal layer)",
    "domain_prototype_pred_dec.": "prototype domain discriminator (3-layer MLP on the graph prototype)",
    "domain_prototype_dec_gcn.": "prototype graph convolution over the decoder queries (GCN + BatchNorm1d)",
    "dec_feature_projection_before_gcn.": "projection of the 300 decoder queries onto 9 prototype nodes",
}
# The mean teacher is a second, full detector (an EMA of the student) that makes pseudo-labels.
# MTTrans-OpenSource keeps it as a separate model, so its keys carry no fixed prefix; these are
# the prefixes under which training scripts commonly store it next to the student.
TEACHER_PREFIXES = ("teacher.", "model_teacher.", "teacher_model.", "ema.", "model_ema.", "ema_model.")
TEACHER_REASON = ("mean-teacher (EMA) copy of the detector: makes pseudo-labels in training; "
                  "the student is exported")

_ENCODER_LEVELED = re.compile(r"transformer\.encoder\.layers\.\d+\.self_attn\."
                              r"(sampling_offsets|attention_weights)\.")


def training_only_reason(key: str) -> str | None:
    """Why `key` (original MTTrans/SFA naming) is left out of the inference model, or None."""
    if key.startswith(TEACHER_PREFIXES):
        return TEACHER_REASON
    for prefix, reason in TRAINING_ONLY.items():
        if key.startswith(prefix):
            return f"MTTrans training-only: {reason}"
    return None


def has_domain_tokens(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict in the original naming is an SFA/MTTrans detector with domain tokens."""
    return DOMAIN_ENC in state or DOMAIN_DEC in state


def domain_token_shapes(d_model: int, num_feature_levels: int, n_heads: int, n_points: int,
                        two_stage: bool = False) -> dict[str, tuple[int, ...]]:
    """The shapes an MTTrans checkpoint has where it differs from a plain Deformable DETR."""
    levels = num_feature_levels + 1  # the image levels and the domain token's 1x1 level
    attention = "transformer.encoder.layers.N.self_attn."
    shapes = {
        DOMAIN_ENC: (1, 2 * d_model),
        "transformer.level_embed": (levels, d_model),
        attention + "sampling_offsets.weight": (n_heads * levels * n_points * 2, d_model),
        attention + "attention_weights.weight": (n_heads * levels * n_points, d_model),
    }
    if not two_stage:
        shapes[DOMAIN_DEC] = (1, 2 * d_model)
    return shapes


def fold_masked_domain_tokens(state: Mapping[str, torch.Tensor], n_heads: int, *, encoder: bool,
                              decoder: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove domain tokens that SFA's attention masks hide (original naming in and out).

    `encoder` (`--mask_domain_enc`): every encoder query gives the domain level -inf attention
    logits, so softmax over heads x (L+1) x points equals softmax over the L image levels: the
    image tokens compute exactly what a plain L-level encoder with the first L levels' rows of
    `sampling_offsets`/`attention_weights` and `level_embed[:L]` computes, and the token's own
    output is discarded. `decoder` (`--mask_domain_dec`): no query attends to the domain query, and
    nothing else mixes queries, so the object queries are unchanged without it.
    Returns the new state dict and one note per change."""
    folded, notes = dict(state), []
    if encoder and DOMAIN_ENC in folded:
        del folded[DOMAIN_ENC]
        levels = state["transformer.level_embed"].shape[0]  # the image levels and the domain level
        folded["transformer.level_embed"] = state["transformer.level_embed"][:-1].clone()
        for key, value in state.items():
            if _ENCODER_LEVELED.match(key):
                # rows are laid out [heads, levels, points(, 2)]: drop the domain level
                rows = value.reshape(n_heads, levels, -1, *value.shape[1:])[:, :-1]
                folded[key] = rows.reshape(-1, *value.shape[1:]).clone()
        notes.append(f"{DOMAIN_ENC}: masked in the encoder (mask_domain_enc), folded away: the encoder "
                     "attention keeps the image levels' rows and level_embed its first L rows")
    if decoder and DOMAIN_DEC in folded:
        del folded[DOMAIN_DEC]
        notes.append(f"{DOMAIN_DEC}: masked in the decoder self-attention (mask_domain_dec), no object "
                     "query reads it: dropped")
    return folded, notes


def add_domain_tokens(detector: nn.Module, *, encoder: bool = True, decoder: bool = True) -> nn.Module:
    """Give a transformers `DeformableDetrForObjectDetection` MTTrans's domain tokens, in place.

    `encoder`: `model.domain_enc` (nn.Embedding(1, 2·d_model)), `model.level_embed` grows to L+1
    rows and each encoder layer's deformable attention to L+1 levels (the image levels' weights
    are kept; the new level starts with zero offsets and zero attention logits). `decoder`:
    `model.domain_dec` (nn.Embedding(1, 2·d_model)). Hooks on the encoder and decoder append the
    tokens to their inputs and drop them from their outputs, so the rest of transformers' forward
    (heads, box refinement, outputs) is untouched. Two-stage MTTrans is not supported."""
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrMultiscaleDeformableAttention,
    )

    config, model = detector.config, detector.model
    if config.two_stage:
        raise TritonForgeError("two-stage MTTrans/SFA detectors are not supported: their domain token "
                               "also joins the encoder's proposals (always selected); export a one-stage "
                               "checkpoint")
    if hasattr(model, "domain_enc") or hasattr(model, "domain_dec"):
        raise TritonForgeError("this detector already has domain tokens: add_domain_tokens was applied twice")
    d_model, levels = config.d_model, config.num_feature_levels
    like = {"device": model.level_embed.device, "dtype": model.level_embed.dtype}
    if encoder:
        wider = copy.deepcopy(config)
        wider.num_feature_levels = levels + 1
        for layer in model.encoder.layers:
            old = layer.self_attn
            new = DeformableDetrMultiscaleDeformableAttention(wider, config.encoder_attention_heads,
                                                              config.encoder_n_points).to(**like)
            _copy_with_extra_level(old, new)
            layer.self_attn = new
        level_embed = torch.zeros(levels + 1, d_model, **like)
        level_embed[:levels] = model.level_embed.detach()
        model.level_embed = nn.Parameter(level_embed)
        model.domain_enc = nn.Embedding(1, 2 * d_model, **like)
        # partial, not a closure: deepcopy of the detector then rebinds the hooks to the copy
        model.encoder.register_forward_pre_hook(functools.partial(_append_domain_token, model),
                                                with_kwargs=True)
        model.encoder.register_forward_hook(_drop_domain_token)
    if decoder:
        model.domain_dec = nn.Embedding(1, 2 * d_model, **like)
        model.decoder.register_forward_pre_hook(functools.partial(_append_domain_query, model),
                                                with_kwargs=True)
        model.decoder.register_forward_hook(_drop_domain_query)
    return detector


@torch.no_grad()
def _copy_with_extra_level(old: nn.Module, new: nn.Module) -> None:
    """Copy an L-level deformable attention into an (L+1)-level one; the extra level is neutral."""
    for name in ("value_proj", "output_proj"):
        getattr(new, name).load_state_dict(getattr(old, name).state_dict())
    for name in ("sampling_offsets", "attention_weights"):
        source, target = getattr(old, name), getattr(new, name)
        for tensor in ("weight", "bias"):
            value, grown = getattr(source, tensor), getattr(target, tensor)
            rows = value.reshape(old.n_heads, old.n_levels, -1, *value.shape[1:])
            wider = rows.new_zeros(old.n_heads, old.n_levels + 1, *rows.shape[2:])
            wider[:, :old.n_levels] = rows
            grown.copy_(wider.reshape(grown.shape))


def _append_domain_token(model, encoder, args, kwargs):
    """Encoder input: the domain token as level L+1 of spatial shape 1x1, never padding."""
    embeds = _kwarg(kwargs, "inputs_embeds", "encoder")
    batch, length, d_model = embeds.shape
    position, content = model.domain_enc.weight.split(d_model, dim=1)  # SFA's order: position first
    position = position + model.level_embed[-1]
    kwargs["inputs_embeds"] = torch.cat([embeds, content.expand(batch, 1, d_model)], 1)
    mask = kwargs["attention_mask"]  # transformers: True = a real pixel
    kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(batch, 1)], 1)
    positions = kwargs["spatial_position_embeddings"]
    kwargs["spatial_position_embeddings"] = torch.cat([positions, position.expand(batch, 1, d_model)], 1)
    shapes = kwargs["spatial_shapes"]
    kwargs["spatial_shapes"] = torch.cat([shapes, shapes.new_ones(1, 2)], 0)
    kwargs["spatial_shapes_list"] = [*kwargs["spatial_shapes_list"], (1, 1)]
    starts = kwargs["level_start_index"]
    kwargs["level_start_index"] = torch.cat([starts, starts.new_full((1,), length)], 0)
    ratios = kwargs["valid_ratios"]
    kwargs["valid_ratios"] = torch.cat([ratios, ratios.new_ones(batch, 1, 2)], 1)
    return args, kwargs


def _drop_domain_token(encoder, args, output):
    """Encoder output: the decoder reads the image tokens only."""
    hidden = output.hidden_states and tuple(h[:, :-1] for h in output.hidden_states)
    return type(output)(**{**output, "last_hidden_state": output.last_hidden_state[:, :-1],
                           **({"hidden_states": hidden} if hidden else {})})


def _append_domain_query(model, decoder, args, kwargs):
    """Decoder input: the domain query after the object queries, with its own reference point."""
    target = _kwarg(kwargs, "inputs_embeds", "decoder")
    batch, _, d_model = target.shape
    position, content = model.domain_dec.weight.split(d_model, dim=1)
    kwargs["inputs_embeds"] = torch.cat([target, content.expand(batch, 1, d_model)], 1)
    positions = kwargs["object_queries_position_embeddings"]
    positions = torch.cat([positions, position.expand(batch, 1, d_model)], 1)
    kwargs["object_queries_position_embeddings"] = positions
    reference = model.reference_points(position).sigmoid()
    points = kwargs["reference_points"]
    kwargs["reference_points"] = torch.cat([points, reference.expand(batch, 1, points.shape[-1])], 1)
    return args, kwargs


def _drop_domain_query(decoder, args, output):
    """Decoder output: the heads see the object queries only."""
    changed = {"last_hidden_state": output.last_hidden_state[:, :-1],
               "intermediate_hidden_states": output.intermediate_hidden_states[:, :, :-1],
               "intermediate_reference_points": output.intermediate_reference_points[:, :, :-1]}
    if output.hidden_states:
        changed["hidden_states"] = tuple(h[:, :-1] for h in output.hidden_states)
    return type(output)(**{**output, **changed})


def _kwarg(kwargs: dict, name: str, where: str) -> torch.Tensor:
    if name not in kwargs:
        raise TritonForgeError(f"the Deformable DETR {where} was called without keyword {name!r}: this "
                               "transformers version wires its forward differently from 5.x; the MTTrans "
                               "domain tokens need updating in tritonforge/export/detr/mttrans.py")
    return kwargs[name]
