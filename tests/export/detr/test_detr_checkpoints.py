"""Original Deformable DETR / MTTrans checkpoints onto transformers' DeformableDetrForObjectDetection.

The original-layout state dicts here are written from tiny random transformers detectors with
an independent inverse of the renaming (`to_original`), so every value is known and the loaded
detector must give the source detector's outputs exactly.
"""

from __future__ import annotations

import argparse
import copy
import re

import pytest
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.detr import mttrans
from tritonforge.export.detr.checkpoints import (
    config_from_state_dict,
    detector_from_checkpoint,
    load_checkpoint,
    load_original,
    map_state_dict,
)

# transformers name -> original Deformable DETR name (the decoder's q/k/v are packed separately)
INVERSE = (
    (r"model\.backbone\.model\.embedder\.embedder\.convolution\.", "backbone.0.body.conv1."),
    (r"model\.backbone\.model\.embedder\.embedder\.normalization\.", "backbone.0.body.bn1."),
    (r"model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
     lambda m: f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (r"model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
     lambda m: f"backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
    (r"model\.input_proj\.", "input_proj."),
    (r"model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.encoder.layers.\1.norm1."),
    (r"model\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"model\.(en|de)coder\.layers\.(\d+)\.mlp\.fc(\d)\.", r"transformer.\1coder.layers.\2.linear\3."),
    (r"model\.encoder\.layers\.(\d+)\.self_attn\.", r"transformer.encoder.layers.\1.self_attn."),
    (r"model\.decoder\.layers\.(\d+)\.self_attn\.o_proj\.",
     r"transformer.decoder.layers.\1.self_attn.out_proj."),
    (r"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm2."),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"transformer.decoder.layers.\1.cross_attn."),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm1."),
    (r"model\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"model\.decoder\.(bbox_embed|class_embed)\.", r"transformer.decoder.\1."),
    (r"model\.(level_embed|reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)",
     r"transformer.\1"),
    (r"model\.query_position_embeddings\.", "query_embed."),
    (r"model\.(domain_enc|domain_dec)\.", r"\1."),
    (r"(class_embed|bbox_embed)\.", r"\1."),
)
QKV = re.compile(r"model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
TRAINING_ONLY_EXTRAS = {  # what an MTTrans checkpoint carries besides the detector
    "domain_pred_enc.layers.0.weight": torch.ones(32, 32),
    "domain_pred_dec.layers.2.bias": torch.ones(2),
    "domain_prototype_dec_gcn.weight": torch.ones(32, 32),
    "domain_prototype_dec_gcn.bn.num_batches_tracked": torch.tensor(7),
    "dec_feature_projection_before_gcn.layers.0.weight": torch.ones(300, 300),
    "teacher.transformer.level_embed": torch.ones(3, 32),
}


def to_original(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers state dict written in the original Deformable DETR naming."""
    out, packed = {}, {}
    for key, value in hf_state.items():
        qkv = QKV.fullmatch(key)
        if qkv:
            packed.setdefault((qkv[1], qkv[3]), {})[qkv[2]] = value
            continue
        for pattern, replacement in INVERSE:
            match = re.match(pattern, key)
            if match:
                head = replacement(match) if callable(replacement) else match.expand(replacement)
                out[head + key[match.end():]] = value.clone()
                break
        else:
            raise AssertionError(f"no inverse for {key}")
    for (layer, tensor), parts in packed.items():
        packed_name = f"transformer.decoder.layers.{layer}.self_attn.in_proj_{tensor}"
        out[packed_name] = torch.cat([parts[name] for name in "qkv"])
    return out


def tiny_config(**changes):
    """A tiny Deformable DETR with a bottleneck ResNet (the ResNet-50 block layout)."""
    from transformers import DeformableDetrConfig, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[16, 32, 64, 128], depths=[1, 2, 1, 1],
                            layer_type="bottleneck", out_features=["stage2", "stage3", "stage4"])
    shape = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=48, decoder_ffn_dim=40,
                 encoder_attention_heads=2, decoder_attention_heads=2, num_queries=6, num_labels=5,
                 num_feature_levels=4, encoder_n_points=2, decoder_n_points=3, two_stage_num_proposals=6)
    return DeformableDetrConfig(backbone_config=backbone, use_pretrained_backbone=False,
                                **{**shape, **changes})


def randomized(model, seed: int = 0):
    """Every weight and buffer random: the default init zeroes sampling offsets and attention
    logits, which would hide a wrong mapping of them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.rand(tensor.shape, generator=generator) if "running_var" in name else \
                torch.randn(tensor.shape, generator=generator) * 0.2
            tensor.copy_(noise + (1.0 if "running_var" in name else 0.0))
    return model.eval()


def tiny_detector(seed: int = 0, domain_tokens: bool = False, **changes):
    from transformers import DeformableDetrForObjectDetection

    torch.manual_seed(seed)
    detector = DeformableDetrForObjectDetection(tiny_config(**changes))
    if domain_tokens:
        mttrans.add_domain_tokens(detector)
    return randomized(detector, seed)


def outputs(detector, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = detector(pixel_values=pixels)
    return out.logits, out.pred_boxes


PIXELS = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: thread hand-offs cost more than the work (seconds on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", [{}, {"with_box_refine": True},
                                     {"with_box_refine": True, "two_stage": True}],
                         ids=["plain", "box_refine", "two_stage"])
def test_original_layout_loads_with_identical_outputs(variant):
    from transformers import DeformableDetrForObjectDetection

    source = tiny_detector(**variant)
    original = {**to_original(source.state_dict()), **TRAINING_ONLY_EXTRAS}
    config = config_from_state_dict(original, {"nheads": 2, "num_queries": 6})
    detector = DeformableDetrForObjectDetection(config).eval()

    report = load_original(detector, original)

    assert not report.of("unknown") and not report.missing and not report.errors
    assert {f.key for f in report.of("dropped")} == set(TRAINING_ONLY_EXTRAS)
    assert len(report.of("mapped")) + len(report.of("dropped")) == len(original)
    reference, loaded = outputs(source, PIXELS), outputs(detector, PIXELS)
    assert torch.equal(reference[0], loaded[0]) and torch.equal(reference[1], loaded[1])


def test_every_dropped_key_says_why():
    original = {**to_original(tiny_detector().state_dict()), **TRAINING_ONLY_EXTRAS}
    _, report = map_state_dict(original, tiny_detector().state_dict())

    reasons = {f.key: f.detail for f in report.of("dropped")}
    assert "mean-teacher" in reasons["teacher.transformer.level_embed"]
    assert "discriminator" in reasons["domain_pred_enc.layers.0.weight"]
    assert "graph convolution" in reasons["domain_prototype_dec_gcn.weight"]
    assert "BatchNorm step counter" in reasons["domain_prototype_dec_gcn.bn.num_batches_tracked"]


def test_decoder_self_attention_is_unpacked_into_q_k_v():
    source = tiny_detector()
    original = to_original(source.state_dict())
    mapped, _ = map_state_dict(original, source.state_dict())

    packed = original["transformer.decoder.layers.1.self_attn.in_proj_weight"]
    assert packed.shape == (96, 32)
    assert torch.equal(mapped["model.decoder.layers.1.self_attn.k_proj.weight"], packed[32:64])
    assert mapped["model.backbone.model.encoder.stages.1.layers.1.layer.2.normalization.running_var"] is \
        original["backbone.0.body.layer2.1.bn3.running_var"]


def test_box_refinement_class_heads_load_the_last_layers_head():
    """The original keeps one class head per decoder layer with box refinement; transformers 5
    ties them, so the head that makes the logits (the last layer's) is loaded into all."""
    source = tiny_detector(with_box_refine=True)
    original = to_original(source.state_dict())
    original["class_embed.0.weight"] = torch.zeros_like(original["class_embed.0.weight"])
    detector = tiny_detector(seed=5, with_box_refine=True)

    report = load_original(detector, original)

    assert any("class_embed.1.weight loaded into the tied" in note for note in report.notes)
    assert torch.equal(outputs(detector, PIXELS)[0], outputs(source, PIXELS)[0])


def test_detr_checkpoint_is_refused_naming_its_keys():
    detr = {"transformer.encoder.layers.0.self_attn.in_proj_weight": torch.zeros(768, 256),  # DETR's order
            "transformer.encoder.layers.0.linear1.weight": torch.zeros(2048, 256),
            "transformer.decoder.layers.0.multihead_attn.in_proj_weight": torch.zeros(768, 256),
            "transformer.decoder.norm.weight": torch.zeros(256),
            "class_embed.weight": torch.zeros(92, 256),
            "query_embed.weight": torch.zeros(100, 256),
            "input_proj.weight": torch.zeros(256, 2048, 1, 1),
            "backbone.0.body.conv1.weight": torch.zeros(64, 3, 7, 7)}
    detector = tiny_detector()

    with pytest.raises(TritonForgeError) as error:
        load_original(detector, detr)

    message = str(error.value)
    assert ("this looks like a DETR checkpoint (transformer.encoder.layers.0.self_attn.in_proj_weight, "
            "transformer.decoder.layers.0.multihead_attn.in_proj_weight, class_embed.weight and 1 more), "
            "not Deformable DETR") in message
    assert "transformer.decoder.norm.weight" in message  # unknown keys are named
    assert "model.level_embed" in message  # and the detector's weights left empty


def test_shape_mismatch_names_key_and_both_shapes():
    original = to_original(tiny_detector().state_dict())
    original["class_embed.1.bias"] = torch.zeros(9)

    with pytest.raises(TritonForgeError,
                       match=re.escape("class_embed.1.bias (9,) -> class_embed.1.bias (5,)")):
        load_original(tiny_detector(), original)


def test_mttrans_checkpoint_keeps_its_domain_tokens(tmp_path):
    """A .pth as SFA/MTTrans save it: weights under "model", training args as a Namespace."""
    source = tiny_detector(domain_tokens=True)
    original = {**to_original(source.state_dict()), **TRAINING_ONLY_EXTRAS}
    for key, shape in mttrans.domain_token_shapes(32, 4, n_heads=2, n_points=2).items():
        assert original[key.replace(".N.", ".1.")].shape == shape  # level_embed: 4 image levels + 1
    args = argparse.Namespace(nheads=2, num_queries=6, mask_domain_enc=False, mask_domain_dec=False, hda=[1])
    saved = {"model": original, "optimizer": {"state": {}}, "epoch": 3, "args": args}
    torch.save(saved, tmp_path / "sfa.pth")

    detector, report = detector_from_checkpoint(tmp_path / "sfa.pth")

    assert not report.errors and "checkpoint entries not loaded: epoch, optimizer" in report.notes
    reference, loaded = outputs(source, PIXELS), outputs(detector, PIXELS)
    assert loaded[0].shape == (2, 6, 5)  # the domain query never reaches the heads
    assert torch.equal(reference[0], loaded[0]) and torch.equal(reference[1], loaded[1])


def test_domain_token_enters_the_encoder_as_a_one_by_one_level():
    """SFA: domain_enc = [position | content]; the content is level L+1 (1x1, never padding), its
    position embedding the position half plus level_embed[L]. The decoder reads image tokens only."""
    detector = tiny_detector(domain_tokens=True)
    encoder_input, decoder_input = {}, {}
    for module, seen in ((detector.model.encoder, encoder_input), (detector.model.decoder, decoder_input)):
        module.register_forward_pre_hook(lambda m, a, kw, seen=seen: seen.update(kw), with_kwargs=True)
    outputs(detector, PIXELS)

    position, content = detector.model.domain_enc.weight.detach().split(32, dim=1)
    shapes = encoder_input["spatial_shapes_list"]
    image_tokens = sum(h * w for h, w in shapes[:-1])
    assert len(shapes) == 5 and shapes[-1] == (1, 1)
    assert encoder_input["inputs_embeds"].shape[1] == image_tokens + 1
    assert torch.equal(encoder_input["inputs_embeds"][:, -1], content.expand(2, 32))
    assert torch.equal(encoder_input["spatial_position_embeddings"][:, -1],
                       (position + detector.model.level_embed[4]).detach().expand(2, 32))
    assert encoder_input["attention_mask"][:, -1].all()
    assert torch.equal(encoder_input["valid_ratios"][:, -1], torch.ones(2, 2))
    assert decoder_input["encoder_hidden_states"].shape[1] == image_tokens
    assert decoder_input["inputs_embeds"].shape[1] == 7  # 6 object queries + the domain query


@pytest.mark.parametrize("token", ["domain_enc", "domain_dec"])
def test_each_domain_token_changes_the_detections(token):
    detector = tiny_detector(domain_tokens=True)
    before = outputs(detector, PIXELS)[0]
    with torch.no_grad():
        getattr(detector.model, token).weight.add_(1.0)

    assert not torch.allclose(before, outputs(detector, PIXELS)[0])


def test_domain_query_is_one_more_decoder_query():
    """Unmasked, the decoder treats the domain query like an object query whose output is dropped."""
    from transformers import DeformableDetrForObjectDetection

    mtt = tiny_detector(seed=3)
    mttrans.add_domain_tokens(mtt, encoder=False)
    randomized(mtt, seed=3)
    plain = DeformableDetrForObjectDetection(tiny_config(num_queries=7)).eval()
    state = mtt.state_dict()
    state["model.query_position_embeddings.weight"] = torch.cat(
        [state["model.query_position_embeddings.weight"], state.pop("model.domain_dec.weight")])
    plain.load_state_dict(state)

    assert torch.equal(outputs(mtt, PIXELS)[0], outputs(plain, PIXELS)[0][:, :6])


def test_masked_encoder_domain_token_folds_into_a_plain_detector():
    """With mask_domain_enc no image token reads the domain level: its attention logits go to
    -inf. Giving that level -1e4 logits here is the same mask; folding drops it exactly."""
    from transformers import DeformableDetrForObjectDetection

    mtt = tiny_detector(seed=4)
    mttrans.add_domain_tokens(mtt, decoder=False)
    randomized(mtt, seed=4)
    with torch.no_grad():
        for layer in mtt.model.encoder.layers:
            logits = layer.self_attn.attention_weights
            logits.weight.view(2, 5, 2, 32)[:, -1] = 0.0
            logits.bias.view(2, 5, 2)[:, -1] = -1e4
    original = to_original(mtt.state_dict())

    folded, notes = mttrans.fold_masked_domain_tokens(original, 2, encoder=True, decoder=False)
    plain = DeformableDetrForObjectDetection(tiny_config()).eval()
    load_original(plain, folded)

    assert mttrans.DOMAIN_ENC not in folded and "mask_domain_enc" in notes[0]
    assert torch.allclose(outputs(mtt, PIXELS)[0], outputs(plain, PIXELS)[0], atol=1e-5)


def test_domain_tokens_need_the_patched_detector():
    original = to_original(tiny_detector(domain_tokens=True).state_dict())

    with pytest.raises(TritonForgeError) as error:
        load_original(tiny_detector(), original)

    assert "transformer.level_embed (5, 32) -> model.level_embed (4, 32)" in str(error.value)
    assert ("MTTrans/SFA detector with domain tokens (domain_enc.weight, domain_dec.weight): build the "
            "detector with mttrans.add_domain_tokens") in str(error.value)


def test_deepcopy_of_a_patched_detector_uses_its_own_tokens():
    detector = tiny_detector(domain_tokens=True)
    twin = copy.deepcopy(detector)
    with torch.no_grad():
        twin.model.domain_dec.weight.add_(1.0)

    assert not torch.allclose(outputs(detector, PIXELS)[0], outputs(twin, PIXELS)[0])


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    torch.save({"model": {"w": torch.ones(1)}, "extra": Payload()}, tmp_path / "evil.pth")

    with pytest.raises(TritonForgeError, match=r"loaded safely \(Unsupported global: GLOBAL print\)"):
        load_checkpoint(tmp_path / "evil.pth")
    assert "pickled code ran" not in capsys.readouterr().out


def test_state_dict_files_load_without_pickled_code(tmp_path):
    from safetensors.torch import save_file

    weights = {"module.query_embed.weight": torch.arange(6.0).view(3, 2)}
    torch.save({"state_dict": weights, "args": argparse.Namespace(nheads=8)}, tmp_path / "a.pt")
    save_file(weights, str(tmp_path / "b.safetensors"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")

    pickled, safe = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.safetensors")

    assert pickled.entry == "state_dict" and pickled.args == {"nheads": 8}
    assert list(pickled.state) == list(safe.state) == ["query_embed.weight"]  # DDP's module. removed
    assert torch.equal(safe.state["query_embed.weight"], weights["module.query_embed.weight"])
    assert load_checkpoint(tmp_path / "hf") is None


def test_config_is_read_off_the_shapes():
    original = to_original(tiny_detector(with_box_refine=True).state_dict())

    config = config_from_state_dict(original, {"nheads": 2})

    assert (config.d_model, config.num_feature_levels) == (32, 4)
    assert (config.encoder_layers, config.decoder_layers, config.encoder_ffn_dim, config.decoder_ffn_dim) == \
        (2, 2, 48, 40)
    assert (config.encoder_n_points, config.decoder_n_points, config.num_queries, config.num_labels) == \
        (2, 3, 6, 5)
    assert (config.with_box_refine, config.two_stage) == (True, False)
    assert config.backbone_config.depths == [1, 2, 1, 1]
    assert config.backbone_config.hidden_sizes == [16, 32, 64, 128]
