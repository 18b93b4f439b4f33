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
`SlottedBert` is BERT's `tritonforge.quant.quantizable.Quantizable`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from tritonforge.errors import TritonForgeError
from tritonforge.quant.quantizable import NormSite, ShortcutLayerNorm, grid_matmul, quantizing
from tritonforge.quant.quantizers import SampleMask

LAYER_SLOTS = ("query", "key", "value", "probs", "context", "gelu")


class SlottedBertLayer(nn.Module):
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
        self.quant = nn.ModuleDict({name: nn.Identity() for name in LAYER_SLOTS})
        self.quant["ln"] = nn.Identity()  # this layer's attention-output LayerNorm (A)
        self.exact = False  # see linear()

    def split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, in_quant: nn.Module, out_quant: nn.Module
                ) -> torch.Tensor:
        quant = self.quant
        q = quant["query"](self.linear(self.query, x, in_quant))
        k = quant["key"](self.linear(self.key, x, in_quant))
        v = quant["value"](self.linear(self.value, x, in_quant))
        scores = self.matmul(self.split(q), quant["query"], self.split(k).transpose(-1, -2), quant["key"])
        probs = quant["probs"](torch.softmax(scores / math.sqrt(self.head_dim) + mask, dim=-1))
        context = self.matmul(probs, quant["probs"], self.split(v), quant["value"])
        context = quant["context"](context.transpose(1, 2).flatten(2))
        a = quant["ln"](self.attn_norm(self.linear(self.attn_out, context, quant["context"]), x))
        g = quant["gelu"](self.act(self.linear(self.ffn_in, a, quant["ln"])))
        return out_quant(self.out_norm(self.linear(self.ffn_out, g, quant["gelu"]), a))

    # With `exact` set, products of two quantized operands are summed exactly in integers and
    # scaled once, as ONNX Runtime's integer kernels do (see grid_matmul).

    def linear(self, linear: nn.Linear, x: torch.Tensor, x_quant: nn.Module) -> torch.Tensor:
        if not (self.exact and quantizing(x_quant) and hasattr(linear, "weight_scale")):
            return linear(x)
        return grid_matmul(x, x_quant.scale.detach(), linear.weight.T, linear.weight_scale) + linear.bias

    def matmul(self, a: torch.Tensor, a_quant: nn.Module, b: torch.Tensor, b_quant: nn.Module
               ) -> torch.Tensor:
        if not (self.exact and quantizing(a_quant) and quantizing(b_quant)):
            return a @ b
        return grid_matmul(a, a_quant.scale.detach(), b, b_quant.scale.detach())


class SlottedBert(nn.Module):
    """Same call signature and output as `BertModel` (last_hidden_state only). Shares the
    Hugging Face model's modules: give it a copy when the original must stay as it is."""

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
        self.layers = nn.ModuleList(SlottedBertLayer(layer) for layer in bert.encoder.layer)
        # Output quantizer of each layer's final LayerNorm; the embedding LN's is embed_quant.
        self.embed_quant = nn.Identity()
        self.out_quant = nn.ModuleList(nn.Identity() for _ in self.layers)
        self.sample_mask = SampleMask()  # observers read which tokens are real from here

    def forward(self, input_ids, attention_mask, token_type_ids, position_ids=None,
                attention_bias=None) -> BaseModelOutput:
        """`attention_mask` marks the real tokens (the observers read only those). A model that
        says itself who attends to whom (DASK's visible matrix) passes an additive
        `attention_bias` [B, 1, L, L] and its own `position_ids` (soft positions)."""
        self.sample_mask.mask = attention_mask.bool()
        positions = position_ids if position_ids is not None else \
            torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions)
        x = self.embed_quant(self.embed_norm(x))
        # Additive mask: 0 where attending, a large negative where padding (see MASK_FILL).
        mask = attention_bias if attention_bias is not None else \
            (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        in_quant = self.embed_quant
        for layer, out_quant in zip(self.layers, self.out_quant, strict=True):
            x = layer(x, mask, in_quant, out_quant)
            in_quant = out_quant
        return BaseModelOutput(last_hidden_state=x)

    # -- tritonforge.quant.quantizable.Quantizable ------------------------------------------

    def output(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The final hidden states [B, L, hidden]."""
        return self(**batch).last_hidden_state

    def real_positions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The real (non-padding) tokens, [B, L]."""
        return batch["attention_mask"].bool()

    def activation_slots(self) -> list[str]:
        """Every activation quantizer slot, in execution order; the last layer's output is
        the model's output and has none."""
        slots = ["embed"]
        for index in range(len(self.layers)):
            slots += [f"layers.{index}.{key}" for key in (*LAYER_SLOTS[:5], "ln", "gelu")]
            if index < len(self.layers) - 1:
                slots.append(f"layers.{index}.out")
        return slots

    def set_slot(self, slot: str, module: nn.Module) -> None:
        if slot == "embed":
            self.embed_quant = module
            return
        _, index, key = slot.split(".")
        if key == "out":
            self.out_quant[int(index)] = module
        else:
            self.layers[int(index)].quant[key] = module

    def token_axis(self, slot: str) -> int:
        """Tokens are axis 1 of [B, L, C]; of probabilities [B, H, L, L], a query token's row."""
        return 2 if slot.endswith(".probs") else 1

    def set_exact(self, exact: bool) -> None:
        for layer in self.layers:
            layer.exact = exact

    def linears(self) -> dict[str, nn.Linear]:
        return {f"layers.{index}.{key}": getattr(layer, key) for index, layer in enumerate(self.layers)
                for key in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")}

    def linear_inputs(self) -> dict[str, str]:
        inputs = {}
        for index in range(len(self.layers)):
            previous = "embed" if index == 0 else f"layers.{index - 1}.out"
            inputs.update({f"layers.{index}.{key}": previous for key in ("query", "key", "value")})
            inputs.update({f"layers.{index}.attn_out": f"layers.{index}.context",
                           f"layers.{index}.ffn_in": f"layers.{index}.ln",
                           f"layers.{index}.ffn_out": f"layers.{index}.gelu"})
        return inputs

    def weight_tables(self) -> dict[str, nn.Parameter]:
        """Every weight the paper quantizes: Linear weights and embedding tables (per row)."""
        tables = {"word": self.word.weight, "position": self.position.weight,
                  "token_type": self.token_type.weight}
        tables.update({name: linear.weight for name, linear in self.linears().items()})
        return tables

    def norm_sites(self) -> list[NormSite]:
        """The embedding LN migrates into layer 0's Q/K/V and its attention residual; each
        attention-output LN into its FFN input and the FFN residual; each output LN into the
        next layer's Q/K/V and attention residual; the last output LN is the model's output."""
        sites = []
        previous, quantizer = self.embed_norm, "embed"
        for index, layer in enumerate(self.layers):
            sites.append(NormSite(previous, [layer.query, layer.key, layer.value], layer.attn_norm,
                                  quantizer))
            sites.append(NormSite(layer.attn_norm.norm, [layer.ffn_in], layer.out_norm,
                                  f"layers.{index}.ln"))
            previous, quantizer = layer.out_norm.norm, f"layers.{index}.out"
        sites.append(NormSite(previous, [], None, None))
        return sites
