"""A post-LN BERT encoder written out, with a slot at every place the paper quantizes.

Built from a Hugging Face `BertModel` (same weights, same arithmetic), so that Gamma
Migration can edit LayerNorms, Linears and shortcuts explicitly, and activation quantizers
sit exactly where Outlier Suppression puts them:

    embeddings -> LN_e -> [q: ln]                                   (one per LayerNorm output)
    layer:  Q, K, V = Linear(x)  -> [q: query, key, value]
            P = softmax(QK^T/sqrt(d) + mask) -> [q: probs]
            C = P V -> [q: context]
            A = LN_a(Linear(C) + gamma_in * x) -> [q: ln]
            G = GELU(Linear(A)) -> [q: gelu]
            H = LN_o(Linear(G) + gamma_a * A) -> [q: ln]  (the last LN keeps its gamma)

Slots hold `nn.Identity()` until quantizers are attached, so the FP model is exact.
Not quantized (as in the paper): pre-softmax scores, the FFN pre-GELU output, residual sums.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from tritonforge.errors import TritonForgeError
from tritonforge.quant.quantizers import TokenMask

ACTIVATION_SLOTS = ("query", "key", "value", "probs", "context", "gelu")


class ShortcutLayerNorm(nn.Module):
    """LayerNorm(sublayer + shortcut_scale * shortcut): a post-LN residual block's end.

    `shortcut_scale` is 1 until Gamma Migration moves the previous LayerNorm's gamma there.
    """

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm
        self.register_buffer("shortcut_scale", torch.ones(norm.normalized_shape))

    def forward(self, sublayer: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return self.norm(sublayer + self.shortcut_scale * shortcut)


class QuantBertLayer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        attention = layer.attention
        self.heads = attention.self.num_attention_heads
        self.head_dim = attention.self.attention_head_size
        self.query, self.key, self.value = attention.self.query, attention.self.key, attention.self.value
        self.attn_out = attention.output.dense
        self.attn_norm = ShortcutLayerNorm(attention.output.LayerNorm)
        self.ffn_in = layer.intermediate.dense
        self.ffn_out = layer.output.dense
        self.out_norm = ShortcutLayerNorm(layer.output.LayerNorm)
        act = layer.intermediate.intermediate_act_fn
        if not isinstance(act, nn.Module) or "GELU" not in type(act).__name__:
            raise TritonForgeError(f"unsupported BERT activation {act!r}: only GELU is handled")
        self.act = act
        self.quant = nn.ModuleDict({name: nn.Identity() for name in ACTIVATION_SLOTS})
        self.quant["ln"] = nn.Identity()  # this layer's attention-output LayerNorm (A)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, out_quant: nn.Module) -> torch.Tensor:
        q = self.quant["query"](self.query(x))
        k = self.quant["key"](self.key(x))
        v = self.quant["value"](self.value(x))
        scores = self.split(q) @ self.split(k).transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = self.quant["probs"](torch.softmax(scores + mask, dim=-1))
        context = (probs @ self.split(v)).transpose(1, 2).flatten(2)
        context = self.quant["context"](context)
        a = self.quant["ln"](self.attn_norm(self.attn_out(context), x))
        g = self.quant["gelu"](self.act(self.ffn_in(a)))
        return out_quant(self.out_norm(self.ffn_out(g), a))


class QuantBert(nn.Module):
    """Same call signature and output as `BertModel` (last_hidden_state only)."""

    def __init__(self, bert):
        super().__init__()
        config = bert.config
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise TritonForgeError(
                f"position_embedding_type {config.position_embedding_type!r} is not supported "
                "for quantization: only absolute position embeddings")
        self.config = config
        embeddings = bert.embeddings
        self.word = embeddings.word_embeddings
        self.position = embeddings.position_embeddings
        self.token_type = embeddings.token_type_embeddings
        self.embed_norm = embeddings.LayerNorm
        self.layers = nn.ModuleList(QuantBertLayer(layer) for layer in bert.encoder.layer)
        # Output quantizer of each layer's final LayerNorm; the embedding LN's is embed_quant.
        self.embed_quant = nn.Identity()
        self.out_quant = nn.ModuleList(nn.Identity() for _ in self.layers)
        self.token_mask = TokenMask()  # observers read which tokens are real from here

    def forward(self, input_ids, attention_mask, token_type_ids) -> BaseModelOutput:
        self.token_mask.mask = attention_mask.bool()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions)
        x = self.embed_quant(self.embed_norm(x))
        # Additive mask: 0 where attending, a large negative where padding (see MASK_FILL).
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer, out_quant in zip(self.layers, self.out_quant, strict=True):
            x = layer(x, mask, out_quant)
        return BaseModelOutput(last_hidden_state=x)

    def activation_slots(self) -> list[tuple[str, nn.Module, str]]:
        """(name, owner, key) of every activation quantizer slot, in execution order; the
        last layer's output is the model's output and has none."""
        slots = [("embed", self, "embed_quant")]
        for index, layer in enumerate(self.layers):
            for key in (*ACTIVATION_SLOTS[:5], "ln", "gelu"):
                slots.append((f"layers.{index}.{key}", layer.quant, key))
            if index < len(self.layers) - 1:
                slots.append((f"layers.{index}.out", self.out_quant, str(index)))
        return slots

    def weight_tables(self) -> dict[str, nn.Parameter]:
        """Every weight the paper quantizes: Linear weights and embedding tables (per row)."""
        tables = {"word": self.word.weight, "position": self.position.weight,
                  "token_type": self.token_type.weight}
        for index, layer in enumerate(self.layers):
            for key in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"):
                tables[f"layers.{index}.{key}"] = getattr(layer, key).weight
        return tables

    def norm_sites(self) -> list[tuple[nn.LayerNorm, list[nn.Linear], ShortcutLayerNorm | None]]:
        """Each LayerNorm with the Linears that read its output and the block end that adds it
        back as a shortcut (None for the last LayerNorm, whose output is the model's)."""
        sites = []
        previous = self.embed_norm
        for layer in self.layers:
            sites.append((previous, [layer.query, layer.key, layer.value], layer.attn_norm))
            sites.append((layer.attn_norm.norm, [layer.ffn_in], layer.out_norm))
            previous = layer.out_norm.norm
        sites.append((previous, [], None))
        return sites
