"""Original Deformable DETR (and MTTrans) checkpoints -> transformers' DeformableDetrForObjectDetection.

Checkpoints of fundamentalvision/Deformable-DETR and the codebases built on it (SFA, MTTrans) are
`{"model": state_dict, "optimizer": ..., "args": Namespace}` pickles in the original naming:
`backbone.0.body.*` (a torchvision ResNet with frozen BatchNorm), `input_proj.N`,
`transformer.{encoder,decoder}.layers.N.*`, `transformer.level_embed`, `query_embed`,
`class_embed.N`, `bbox_embed.N.layers.M`. `load_checkpoint` reads them without running pickled
code; `map_state_dict` renames them for transformers and accounts for every key;
`config_from_state_dict` reads the architecture off the tensor shapes; `detector_from_checkpoint`
does all three.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.export.detr import mttrans
from tritonforge.safe_load import load_weights

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
WEIGHT_ENTRIES = ("model", "state_dict")  # where training scripts keep the weights in a checkpoint dict
WRAPPER_PREFIX = "module."  # DistributedDataParallel

_BN = r"(weight|bias|running_mean|running_var)"
_BODY = r"backbone\.0\.body\."
_RESNET = "model.backbone.model."
_ENC = r"transformer\.encoder\.layers\.(\d+)\."
_DEC = r"transformer\.decoder\.layers\.(\d+)\."
_DEFORMABLE = r"(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)"
_WB = r"(weight|bias)"


def _block(match: re.Match) -> str:
    """torchvision `layer{s}.{b}.conv{i}` / `bn{i}` / `downsample.{0,1}` -> transformers
    `stages.{s-1}.layers.{b}.layer.{i-1}` / `shortcut`, `.convolution` or `.normalization`."""
    stage, block, part, index, tensor = match.groups()
    where = "shortcut" if part == "downsample." else f"layer.{int(index) - 1}"
    kind = "convolution" if part == "conv" or (part == "downsample." and index == "0") else "normalization"
    return f"{_RESNET}encoder.stages.{int(stage) - 1}.layers.{block}.{where}.{kind}.{tensor}"


# (original name, transformers name): a template for re.Match.expand, or a function of the match.
RENAMES: tuple[tuple[str, str | Callable[[re.Match], str]], ...] = (
    # ResNet stem and bottleneck/basic blocks; torchvision's downsample = transformers' shortcut
    (_BODY + r"conv1\.weight", _RESNET + "embedder.embedder.convolution.weight"),
    (_BODY + r"bn1\." + _BN, _RESNET + r"embedder.embedder.normalization.\1"),
    (_BODY + r"layer([1-4])\.(\d+)\.(conv)(\d)\.(weight)", _block),
    (_BODY + r"layer([1-4])\.(\d+)\.(bn)(\d)\." + _BN, _block),
    (_BODY + r"layer([1-4])\.(\d+)\.(downsample\.)([01])\." + _BN, _block),
    (r"backbone\.1\.row_embed\.weight", "model.position_embedding.row_embeddings.weight"),
    (r"backbone\.1\.col_embed\.weight", "model.position_embedding.column_embeddings.weight"),
    (r"input_proj\.(\d+)\.([01])\." + _WB, r"model.input_proj.\1.\2.\3"),
    # transformer: the deformable encoder layer
    (_ENC + r"self_attn\." + _DEFORMABLE, r"model.encoder.layers.\1.self_attn.\2.\3"),
    (_ENC + r"norm1\." + _WB, r"model.encoder.layers.\1.self_attn_layer_norm.\2"),
    (_ENC + r"linear1\." + _WB, r"model.encoder.layers.\1.mlp.fc1.\2"),
    (_ENC + r"linear2\." + _WB, r"model.encoder.layers.\1.mlp.fc2.\2"),
    (_ENC + r"norm2\." + _WB, r"model.encoder.layers.\1.final_layer_norm.\2"),
    # the decoder layer: self-attention (nn.MultiheadAttention), deformable cross-attention, FFN
    (_DEC + r"self_attn\.out_proj\." + _WB, r"model.decoder.layers.\1.self_attn.o_proj.\2"),
    (_DEC + r"norm2\." + _WB, r"model.decoder.layers.\1.self_attn_layer_norm.\2"),
    (_DEC + r"cross_attn\." + _DEFORMABLE, r"model.decoder.layers.\1.encoder_attn.\2.\3"),
    (_DEC + r"norm1\." + _WB, r"model.decoder.layers.\1.encoder_attn_layer_norm.\2"),
    (_DEC + r"linear1\." + _WB, r"model.decoder.layers.\1.mlp.fc1.\2"),
    (_DEC + r"linear2\." + _WB, r"model.decoder.layers.\1.mlp.fc2.\2"),
    (_DEC + r"norm3\." + _WB, r"model.decoder.layers.\1.final_layer_norm.\2"),
    # box refinement / two-stage keep per-layer heads inside the decoder too
    (r"transformer\.decoder\.(bbox_embed\.\d+\.layers\.\d+|class_embed\.\d+)\." + _WB,
     r"model.decoder.\1.\2"),
    (r"transformer\.level_embed", "model.level_embed"),
    (r"transformer\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\." + _WB,
     r"model.\1.\2"),
    (r"query_embed\.weight", "model.query_position_embeddings.weight"),
    (r"(class_embed\.\d+|bbox_embed\.\d+\.layers\.\d+)\." + _WB, r"\1.\2"),
    (re.escape(mttrans.DOMAIN_ENC), mttrans.DOMAIN_TOKENS[mttrans.DOMAIN_ENC]),
    (re.escape(mttrans.DOMAIN_DEC), mttrans.DOMAIN_TOKENS[mttrans.DOMAIN_DEC]),
)
# nn.MultiheadAttention packs [W_q; W_k; W_v] into one in_proj; transformers has three Linears.
IN_PROJ = re.compile(_DEC + r"self_attn\.in_proj_(weight|bias)")

# Keys that say which other architecture a checkpoint is, when it is not Deformable DETR.
LOOKALIKES = (
    ("a DETR checkpoint", re.compile(r"transformer\.(encoder|decoder)\.layers\.\d+\."
                                     r"(self_attn\.in_proj_weight|multihead_attn\.)"
                                     r"|^class_embed\.weight$|^input_proj\.weight$")),
    ("a DETR segmentation checkpoint (DETRsegm)", re.compile(r"^(detr|mask_head|bbox_attention)\.")),
    ("an already converted transformers checkpoint (load its folder with from_pretrained)",
     re.compile(r"^model\.(backbone|encoder|decoder|input_proj)\.")),
    ("a bare ResNet (backbone weights only)", re.compile(r"^(layer[1-4]\.\d+\.conv1\.weight|fc\.weight)$")),
)


@dataclass(frozen=True)
class Checkpoint:
    """The weights of one checkpoint file, in the naming it was saved with."""

    path: Path
    state: dict[str, torch.Tensor]
    args: dict[str, Any] = field(default_factory=dict)  # the training arguments saved alongside, if any
    entry: str | None = None  # the top-level entry holding the weights; None: the file is a state dict
    ignored: tuple[str, ...] = ()  # other top-level entries (optimizer, lr_scheduler, epoch, ...)


def load_checkpoint(path: str | Path, entry: str | None = None) -> Checkpoint | None:
    """Read a checkpoint's tensors without executing pickled code.

    `.pth`/`.pt`/`.bin`: `torch.load(weights_only=True)`, with only `argparse.Namespace` (the
    `args` Deformable DETR saves) allowed beyond tensors and containers; the weights are the
    `entry` given, else the `model` or `state_dict` entry, else the whole dict. `.safetensors`:
    safetensors. A folder with config.json is a transformers checkpoint: None (use
    from_pretrained)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TritonForgeError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        raise TritonForgeError(f"checkpoint {path} is a folder without config.json: give a .pth/.pt/.bin/"
                               ".safetensors file or a folder saved with save_pretrained")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return Checkpoint(path, _unwrap(load_file(str(path), device="cpu"), path))
    if path.suffix not in PICKLE_SUFFIXES:
        raise TritonForgeError(f"checkpoint {path}: unknown file type {path.suffix!r}; expected one of "
                               f"{', '.join(PICKLE_SUFFIXES)}, .safetensors, or a transformers folder")
    loaded = load_weights(path, f"checkpoint {path}", allowed=[argparse.Namespace])
    if not isinstance(loaded, Mapping):
        raise TritonForgeError(f"checkpoint {path} holds a {type(loaded).__name__}, not a dict of tensors")
    if entry and not isinstance(loaded.get(entry), Mapping):
        raise TritonForgeError(f"checkpoint {path} has no dict entry {entry!r}; its entries: "
                               f"{sorted(loaded)}")
    names = [entry] if entry else [name for name in WEIGHT_ENTRIES if isinstance(loaded.get(name), Mapping)]
    names = names[:1]
    weights = loaded[names[0]] if names else loaded
    args = loaded.get("args") if names else None
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    ignored = tuple(sorted(set(loaded) - set(names) - {"args"})) if names else ()
    return Checkpoint(path, _unwrap(weights, path), args, names[0] if names else None, ignored)


def _unwrap(weights: Mapping, path: Path) -> dict[str, torch.Tensor]:
    not_tensors = [key for key, value in weights.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise TritonForgeError(f"checkpoint {path}: entries {not_tensors[:5]} are not tensors; pass the "
                               "entry that holds the model's state dict")
    if weights and all(key.startswith(WRAPPER_PREFIX) for key in weights):
        return {key[len(WRAPPER_PREFIX):]: value for key, value in weights.items()}
    return dict(weights)


@dataclass(frozen=True)
class KeyFate:
    """What became of one source key: mapped (to `detail`), dropped (because `detail`) or unknown."""

    key: str
    fate: Literal["mapped", "dropped", "unknown"]
    detail: str


@dataclass
class MappingReport:
    """Every source key accounted for, and every problem a person can act on."""

    fates: list[KeyFate]
    missing: list[str] = field(default_factory=list)  # target keys no source key fills
    mismatched: list[str] = field(default_factory=list)  # "source -> target: shape vs shape"
    conflicts: list[str] = field(default_factory=list)  # tied target weights given different values
    looks_like: str | None = None  # e.g. "a DETR checkpoint (transformer.encoder...in_proj_weight)"
    advice: list[str] = field(default_factory=list)  # what to do, shown with the errors
    notes: list[str] = field(default_factory=list)

    def of(self, fate: str) -> list[KeyFate]:
        return [entry for entry in self.fates if entry.fate == fate]

    @property
    def errors(self) -> list[str]:
        errors = []
        unknown = [entry.key for entry in self.of("unknown")]
        if self.looks_like:
            errors.append(f"this looks like {self.looks_like}, not Deformable DETR")
        if unknown:
            errors.append(f"{len(unknown)} checkpoint keys match nothing in Deformable DETR: {_few(unknown)}")
        if self.missing:
            errors.append(f"{len(self.missing)} weights of the detector are not in the checkpoint: "
                          f"{_few(self.missing)}")
        errors += [f"shape mismatch: {line}" for line in self.mismatched]
        errors += [f"tied weights differ: {line}" for line in self.conflicts]
        return errors + self.advice if errors else []

    def check(self) -> None:
        """Raise one readable error listing every problem, if there is any."""
        if self.errors:
            problems = "\n  - ".join(self.errors)
            raise TritonForgeError(f"the checkpoint does not fit the detector:\n  - {problems}")

    def summary(self) -> str:
        dropped = defaultdict(int)
        for entry in self.of("dropped"):
            dropped[entry.detail] += 1
        lines = [f"{len(self.of('mapped'))} keys mapped, {len(self.of('dropped'))} dropped, "
                 f"{len(self.of('unknown'))} unknown"]
        lines += [f"dropped {count}: {reason}" for reason, count in dropped.items()]
        return "\n".join(lines + self.notes + self.errors)


def _few(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def rename(key: str) -> list[str]:
    """The transformers name(s) of one original key; [] when there is none."""
    in_proj = IN_PROJ.fullmatch(key)
    if in_proj:
        layer, tensor = in_proj.groups()
        return [f"model.decoder.layers.{layer}.self_attn.{name}_proj.{tensor}" for name in "qkv"]
    for pattern, target in RENAMES:
        match = re.fullmatch(pattern, key)
        if match:
            return [target(match) if callable(target) else match.expand(target)]
    return []


def dropped_reason(key: str) -> str | None:
    """Why an original key has no place in the inference model, or None."""
    if key.endswith(".num_batches_tracked"):
        return "BatchNorm step counter (the backbone's BatchNorms are frozen)"
    return mttrans.training_only_reason(key)


def map_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                   ) -> tuple[dict[str, torch.Tensor], MappingReport]:
    """Original Deformable DETR / MTTrans names -> the names of `target` (a transformers model's
    `state_dict()`, used for its keys, shapes and tied weights). Pure: nothing is modified."""
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    fates, mismatched = [], []
    for key, value in source.items():
        reason = dropped_reason(key)
        if reason:
            fates.append(KeyFate(key, "dropped", reason))
            continue
        names = rename(key)
        if not names:
            fates.append(KeyFate(key, "unknown", "no Deformable DETR weight has this name"))
            continue
        parts = value.chunk(len(names)) if len(names) > 1 else (value,)
        for name, part in zip(names, parts, strict=True):
            if name in target and tuple(part.shape) != tuple(target[name].shape):
                mismatched.append(f"{key} {tuple(part.shape)} -> {name} {tuple(target[name].shape)}")
            mapped[name], origin[name] = part, key
        fates.append(KeyFate(key, "mapped", ", ".join(names)))
    for name in set(mapped) - set(target):  # a known original name the detector does not have
        fates = [KeyFate(f.key, "unknown", f"the detector has no {name}") if f.key == origin[name] else f
                 for f in fates]
        del mapped[name]
    report = MappingReport(fates, [name for name in target if name not in mapped], mismatched)
    report.looks_like = _looks_like(report)
    tokens = [key for key in source if key in mttrans.DOMAIN_TOKENS]
    if any(mttrans.DOMAIN_TOKENS[key] not in target for key in tokens):
        report.advice.append(f"the checkpoint is an MTTrans/SFA detector with domain tokens "
                             f"({', '.join(tokens)}): build the detector with mttrans.add_domain_tokens, "
                             "or use detector_from_checkpoint")
    if not mismatched:
        _settle_tied(mapped, origin, target, report)
    return mapped, report


def _looks_like(report: MappingReport) -> str | None:
    unknown = [entry.key for entry in report.of("unknown")]
    for name, pattern in LOOKALIKES:
        hits = [key for key in unknown if pattern.search(key)]
        if hits:
            return f"{name} ({_few(hits, 3)})"
    return None


def _settle_tied(mapped: dict[str, torch.Tensor], origin: dict[str, str], target: Mapping[str, torch.Tensor],
                 report: MappingReport) -> None:
    """Keys of one tied weight in transformers must get one value.

    transformers 5 ties class_embed.1..N to class_embed.0 even with box refinement, where the
    original has one class head per decoder layer: the logits come from the last layer's head,
    so that one is loaded into all of them (the auxiliary outputs of earlier layers change)."""
    groups = defaultdict(list)
    for name, tensor in target.items():
        if name in mapped and tensor.numel():
            where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            groups[where].append(name)
    for names in groups.values():
        values = [mapped[name] for name in names]
        if all(torch.equal(values[0], value) for value in values[1:]):
            continue
        heads = [name for name in names if re.fullmatch(r"class_embed\.\d+\.(weight|bias)", name)]
        if len(heads) == len(names):
            last = max(names, key=lambda name: int(name.split(".")[1]))
            for name in names:
                mapped[name] = mapped[last]
            tied = ", ".join(sorted(names))
            report.notes.append(f"{origin[last]} loaded into the tied {tied}: transformers ties the "
                                "per-layer class heads; the logits use the last layer's")
        else:
            sources = ", ".join(origin[name] for name in names)
            report.conflicts.append(f"{', '.join(names)} share one weight in the detector but the checkpoint "
                                    f"gives them different values ({sources})")


def config_from_state_dict(state: Mapping[str, torch.Tensor], args: Mapping[str, Any] | None = None,
                           num_heads: int | None = None):
    """A `DeformableDetrConfig` for an original-layout state dict, read off its tensor shapes.

    Attention heads cannot be told from shapes (sampling_offsets has heads x levels x points x 2
    rows): they come from `num_heads`, else the checkpoint's `args.nheads`, else 8 (the paper's)."""
    from transformers import DeformableDetrConfig, ResNetConfig

    args = dict(args or {})
    if "transformer.level_embed" not in state or "backbone.0.body.conv1.weight" not in state:
        raise TritonForgeError("not a Deformable DETR state dict: it lacks transformer.level_embed or "
                               "backbone.0.body.conv1.weight")
    if args.get("dilation"):
        raise TritonForgeError("this checkpoint was trained with a dilated ResNet (DC5, args.dilation): "
                               "transformers' ResNet backbone has no dilation")
    heads = num_heads or int(args.get("nheads", 8))
    projection = re.compile(r"input_proj\.(\d+)\.0\.weight")
    projections = sorted(int(match[1]) for match in map(projection.fullmatch, state) if match)
    levels = len(projections)
    from_backbone = sum(state[f"input_proj.{i}.0.weight"].shape[-1] == 1 for i in projections)
    d_model = state["transformer.level_embed"].shape[1]
    encoder_levels = levels + (1 if mttrans.DOMAIN_ENC in state else 0)

    def count(prefix: str) -> int:
        return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})

    def rows(key: str) -> int:
        return state[key].shape[0]

    depths = [count(f"backbone.0.body.layer{stage}.") for stage in range(1, 5)]
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state
    last_conv = "conv3" if bottleneck else "conv2"
    backbone = ResNetConfig(
        embedding_size=rows("backbone.0.body.conv1.weight"), depths=depths,
        hidden_sizes=[rows(f"backbone.0.body.layer{stage}.0.{last_conv}.weight") for stage in range(1, 5)],
        layer_type="bottleneck" if bottleneck else "basic",
        out_features=[f"stage{stage}" for stage in range(5 - from_backbone, 5)])
    two_stage = "transformer.enc_output.weight" in state
    with_box_refine = any(key.startswith("transformer.decoder.bbox_embed.") for key in state)
    if two_stage and not with_box_refine:
        raise TritonForgeError("this checkpoint is two-stage Deformable DETR without box refinement, which "
                               "transformers' DeformableDetrConfig refuses (two_stage needs with_box_refine)")
    enc, dec = "transformer.encoder.layers.0.", "transformer.decoder.layers.0."
    return DeformableDetrConfig(
        backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False,
        d_model=d_model, num_feature_levels=levels,
        encoder_layers=count("transformer.encoder.layers."),
        decoder_layers=count("transformer.decoder.layers."),
        encoder_ffn_dim=rows(enc + "linear1.weight"), decoder_ffn_dim=rows(dec + "linear1.weight"),
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_n_points=rows(enc + "self_attn.attention_weights.weight") // (heads * encoder_levels),
        decoder_n_points=rows(dec + "cross_attn.attention_weights.weight") // (heads * levels),
        num_queries=int(args.get("num_queries", 300)) if two_stage else rows("query_embed.weight"),
        num_labels=rows("class_embed.0.weight"),
        with_box_refine=with_box_refine,
        two_stage=two_stage, two_stage_num_proposals=int(args.get("num_queries", 300)),
        position_embedding_type="learned" if "backbone.1.row_embed.weight" in state else "sine")


def load_original(detector: nn.Module, state: Mapping[str, torch.Tensor]) -> MappingReport:
    """Map an original-layout state dict onto a transformers detector and load it (strict):
    raises a TritonForgeError naming every unknown, missing or misshapen key."""
    mapped, report = map_state_dict(state, detector.state_dict())
    report.check()
    detector.load_state_dict(mapped, strict=True)
    return report


def detector_from_checkpoint(path: str | Path, num_heads: int | None = None, entry: str | None = None
                             ) -> tuple[nn.Module, MappingReport] | None:
    """A transformers DeformableDetrForObjectDetection (eval mode) with a checkpoint's weights,
    MTTrans domain tokens included; None for a transformers folder (use from_pretrained).
    `entry` picks the checkpoint's top-level entry to load (e.g. a saved mean teacher)."""
    from transformers import DeformableDetrForObjectDetection

    checkpoint = load_checkpoint(path, entry)
    if checkpoint is None:
        return None
    state, args, notes = checkpoint.state, checkpoint.args, []
    config = config_from_state_dict(state, args, num_heads)
    if mttrans.has_domain_tokens(state):
        masked = {part: bool(args.get(f"mask_domain_{part}", False)) for part in ("enc", "dec")}
        if not {"mask_domain_enc", "mask_domain_dec"} <= set(args):
            notes.append("mask_domain_enc/mask_domain_dec are not recorded in the checkpoint: taken as "
                         "False (SFA's default: the domain tokens are read by the image tokens and queries)")
        state, folded = mttrans.fold_masked_domain_tokens(state, config.encoder_attention_heads,
                                                          encoder=masked["enc"], decoder=masked["dec"])
        notes += folded
    detector = DeformableDetrForObjectDetection(config)
    if mttrans.has_domain_tokens(state):
        mttrans.add_domain_tokens(detector, encoder=mttrans.DOMAIN_ENC in state,
                                  decoder=mttrans.DOMAIN_DEC in state)
    report = load_original(detector, state)
    report.notes = notes + report.notes
    if checkpoint.ignored:
        report.notes.append(f"checkpoint entries not loaded: {', '.join(checkpoint.ignored)}")
    return detector.eval(), report
