"""The `bert` family: Hugging Face BERT encoders and sequence classifiers."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.data import sentences
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert.model import (
    EMBEDDED_NAME,
    SequenceClassifier,
    eager_attention,
    hf_config,
    load_bert,
    max_sequence_length,
    output_width,
    resolve_model_dir,
)
from tritonforge.export.bert.outlier_suppression import (
    FakeQuantEncoder,
    calibrate_encoder,
    calibrate_mixed,
    load_reference,
    quality_vs_fp,
    recipe_record,
    save_reference,
    sentence_embeddings,
    trace_qdq,
)
from tritonforge.export.onnx import (
    MIN_OPSET,
    check_onnx,
    fastest_graph,
    optimize_transformer,
    soften_mask_constants,
    to_float16,
    torch_to_onnx,
)
from tritonforge.family import ExportInfo, Family, Shape, VerifyDefaults, option, register
from tritonforge.modalities import Text
from tritonforge.outputs.metrics import max_abs_diff, row_cosines, top1_agreement
from tritonforge.quant.calibrate import QuantRecipe
from tritonforge.quant.mixed import check_max_drop
from tritonforge.quant.qdq import integer_kernels
from tritonforge.runtime import HALF_PRECISION, cpu_has_bf16, openvino_executed_ops
from tritonforge.spec import CLASS_SCORES, EMBEDDING, MEAN, Check, ModelIO, Parity, TensorSpec
from tritonforge.targets import TARGET_HELP, TargetOptions
from tritonforge.triton_config import ServingOptions

FLOAT_BITS = {32: "fp32", 16: "fp16"}
GRAPHS = ("auto", "plain", "fused")
# The default quantization method: the best measured on MiniLM at every width (`tritonforge
# quality bert`: W6A6 embedding cosine 0.978 with os+, 0.934 with the paper's os).
DEFAULT_METHOD = "os+"
# Declared tolerances per precision: (sentence-embedding cosine floor, max-abs-diff ceiling,
# top-1 agreement floor for classifiers). FP32 is the same arithmetic in another order;
# FP16 rounds every activation to 11 significant bits. A quantized graph is compared with its
# integer-exact fake-quantized PyTorch reference; LayerNorm, Softmax and GELU still differ in
# the last bit between the runtimes, and at 6 bits a value on a rounding boundary lands a whole
# grid step away and drags later quantizers along. Measured on MiniLM: W8A8 and W6A6 os+
# 0.9999, W6A6 os 0.997 (its noisier model amplifies those flips), so the gate is 0.995 and
# the value is reported; max-abs-diff is reported, not gated.
# BF16 (OpenVINO on CPUs with AVX512_BF16 or AMX) keeps FP32's exponent but 8 significant
# bits: its own floor, never FP32's; its max-abs-diff is reported, not gated.
TOLERANCES = {"fp32": (0.99999, 1e-4, 0.99), "fp16": (0.999, 0.05, 0.97), "bf16": (0.9999, None, 0.97),
              "quantized": (0.995, None, 0.95)}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


AUTO_BITS = "auto"  # --bits auto: mixed 8/6/4 within --max-drop (tritonforge.quant.mixed)
DEFAULT_MAX_DROP = 0.005
# Options that only a quantized export (--bits 8, 6, 4) uses.
QUANTIZATION_OPTIONS = ("method", "calib", "calib_size", "allow_fewer", "lsq_epochs", "reconstruct",
                        "objective", "placement")
# What the default method (os+) adds to the paper's recipe: block-wise reconstruction and LSQ+
# on the pooled sentence embedding. MiniLM W8A8, 320 held-out sentences: cosine 0.9961 -> 0.9987,
# NN agreement 0.928 -> 0.963 (tritonforge.quant.reconstruct).
OS_PLUS_OBJECTIVE = "pooled"
# os+ quantizes the inputs of every Linear and leaves attention float, as NNCF's transformer
# preset does: OpenVINO then runs attention as one fused kernel and every quantized MatMul as an
# integer one. MiniLM W8A8 on OpenVINO, 2-core EPYC, one run: 8 x 128 at 3.10x PyTorch with fp32
# float ops (all activations quantized: 2.70x), 3.37x with bf16 ones; embedding cosine 0.9988 and
# NN agreement 0.972 with fp32 float ops (all: 0.9987, 0.956). docs/bert.md has the table.
OS_PLUS_PLACEMENT = "linear"
# Block-reconstruction steps per layer of os+: 160 instead of the core's 200 keeps a W6A6 export
# under 2.5 minutes on 2 cores at the same quality (MiniLM W6A6, fake-quantized PyTorch, 320
# held-out sentences: cosine 0.9883 / NN 0.906 at 160 steps, 0.9885 / 0.884 at 200).
OS_PLUS_RECONSTRUCT_ITERS = 160


@dataclass(frozen=True)
class BertOptions(TargetOptions):
    """The export recipe; written verbatim into the manifest."""

    model: str | None = option(None, help="Hugging Face BERT directory (config.json, weights, "
                               "tokenizer). Default: the embedded all-MiniLM-L6-v2.")
    # 4 = W4A8: 4-bit activations lose too much; wbits/abits override.
    bits: int | str = option(32, cli_type=str, help="32 (FP32), 16 (BF16 on OpenVINO, FP16 on GPU), 8, 6, 4 "
                             "(quantized W8A8, W6A6, W4A8; any 2..8 works), or auto (the fewest bits per "
                             "quantizer, 8/6/4, within --max-drop).")
    max_drop: float | None = option(None, help="--bits auto: the sentence-embedding cosine the model may "
                                               "lose against FP32, in (0, 1). Default 0.005.")
    graph: str = option("auto", help="plain, fused (ONNX Runtime transformer optimizer) or auto (time "
                                     "both, keep the faster).")
    gpu: bool = option(False, help="Serve on GPU with the TensorRT accelerator (same as --target tensorrt).")
    # Target, --fallback and threads (used when "auto" times the candidate graphs) come from
    # TargetOptions; a BERT export runs where this machine runs it best.
    target: str = option("auto", help=TARGET_HELP, kw_only=True)
    opset: int = option(MIN_OPSET, cli=False)
    # Quantization (bits <= 8): see tritonforge.quant and QuantRecipe.
    wbits: int | None = option(None, help="Weight bits (overrides --bits).")
    abits: int | None = option(None, help="Activation bits (overrides --bits).")
    method: str = option(DEFAULT_METHOD, help="Quantization: os+ (channel-wise shifting and scaling + "
                                              "percentile clipping + LSQ+; the best measured), os (the "
                                              "paper's Gamma Migration + Token-Wise Clipping + LSQ+), "
                                              "minmax or percentile.")
    calib: str | None = option(None, help="Calibration text file, one text per line. Default: the "
                                          "shipped corpus.")
    calib_size: int = option(256, help="Calibration texts (length 128, batch 32).")
    allow_fewer: bool = option(False, help="Calibrate on fewer texts when the file is shorter than "
                                           "--calib-size.")
    # minmax, mse or gptq; None: gptq below 6 bits, else minmax
    weight_observer: str | None = option(None, cli=False)
    lsq_epochs: int = option(3, help="LSQ+ epochs of os / os+ (0: coarse clipping only).")
    lsq_lr: float = option(3e-2, cli=False)
    reconstruct: bool | None = option(None, help="Block-wise reconstruction (BRECQ/QDrop: each "
                                      "layer's weight rounding and activation ranges learned "
                                      "against its FP output). Default: on for os+, off for the "
                                      "paper's os and for minmax/percentile.")
    objective: str | None = option(None, help="What LSQ+ matches to FP: pooled (the sentence "
                                   "embedding), hidden (every token's hidden state, the paper's) or "
                                   "both. Default: pooled for os+, hidden otherwise.")
    placement: str | None = option(None, help="Which activations are quantized: linear (the inputs of "
                                   "every Linear; attention computes in float and stays one fused "
                                   "kernel) or all (attention's Q, K, V and probabilities too, the "
                                   "paper's). Default: linear for os+, all otherwise.")

    def __post_init__(self):
        self.parse_bits()
        super().__post_init__()  # resolves the target
        if self.bits in FLOAT_BITS and (self.wbits is not None or self.abits is not None):
            raise TritonForgeError(
                f"--wbits/--abits quantize; they do not combine with --bits {self.bits}: "
                "use --bits 8, 6 or 4 (or leave --wbits/--abits out)")
        if not self.quantized:
            self.refuse_quantization_options()
        if self.graph not in GRAPHS:
            raise TritonForgeError(f"--graph {self.graph!r} is unknown: choose one of {', '.join(GRAPHS)}")
        if self.target == "openvino" and self.graph == "fused":
            raise TritonForgeError(
                "--graph fused holds ONNX Runtime's own operators, which OpenVINO cannot read: use "
                "--graph plain (or auto) with --target openvino, or --target onnxruntime")
        if self.quantized:
            self.recipe()  # validates bits and method

    def parse_bits(self) -> None:
        """--bits arrives as text from the command line: a width, or auto with its budget."""
        bits = self.bits
        if isinstance(bits, str) and bits.strip().isdigit():
            bits = int(bits)
        elif isinstance(bits, str) and bits.strip().lower() == AUTO_BITS:
            bits = AUTO_BITS
        elif not isinstance(bits, int):
            raise TritonForgeError(f"--bits {bits!r} is not a width: give 32, 16, 8, 6, 4 or auto")
        object.__setattr__(self, "bits", bits)
        if bits != AUTO_BITS:
            if self.max_drop is not None:
                raise TritonForgeError(
                    f"--max-drop is the quality budget of --bits auto; with --bits {bits} every quantizer "
                    "has that width: use --bits auto, or leave --max-drop out")
            return
        if self.wbits is not None or self.abits is not None:
            raise TritonForgeError("--bits auto chooses every quantizer's width itself: leave "
                                   "--wbits/--abits out, or give --bits 8, 6 or 4")
        object.__setattr__(self, "max_drop", check_max_drop(DEFAULT_MAX_DROP if self.max_drop is None
                                                            else self.max_drop))

    def precision_on(self, target: str) -> str:
        """What the graph computes in on `target`: fp32, fp16 or bf16 (--bits 16), or wXaY."""
        if self.bits == 16:
            return HALF_PRECISION[target]
        return self.precision if self.quantized else "fp32"

    def for_target(self, target: str, bits: int, **changes: Any) -> BertOptions:
        """As `TargetOptions.for_target`; a float width leaves the quantization options at
        their defaults."""
        if bits in FLOAT_BITS:
            changes = {f.name: f.default for f in dataclasses.fields(self)
                       if f.name in (*QUANTIZATION_OPTIONS, "wbits", "abits", "max_drop")} | changes
        return super().for_target(target, bits, **changes)

    def refuse_quantization_options(self) -> None:
        """Quantization options given with --bits 32 or 16 would be silently ignored."""
        for name in QUANTIZATION_OPTIONS:
            default = next(f.default for f in dataclasses.fields(self) if f.name == name)
            value = getattr(self, name)
            if value != default:
                flag = "--" + name.replace("_", "-")
                shown = flag if isinstance(value, bool) else f"{flag} {value}"
                raise TritonForgeError(
                    f"{shown} is a quantization option; --bits {self.bits} does not quantize: "
                    f"use --bits 8, 6 or 4, or leave {flag} out")

    @property
    def quantized(self) -> bool:
        return self.bits not in FLOAT_BITS

    @property
    def float_ops(self) -> str:
        """What a quantized graph's float operations (LayerNorm, GELU, attention) compute in:
        bf16 on OpenVINO for 8-bit activations when attention is left float and the CPU has BF16
        (measured faster at both 8 x 128 and 1 x 32 on MiniLM; with attention quantized too it
        is slower at 1 x 32), else fp32. Below 8 bits a bf16 LayerNorm output lands on another
        grid step of its quantizer too often: W6A6 MiniLM read cosine 0.9916 against its
        integer-exact reference, under the 0.995 gate. The integer MatMuls are the same."""
        if not (self.quantized and self.bits != AUTO_BITS and self.target == "openvino" and cpu_has_bf16()):
            return "fp32"
        recipe = self.recipe()
        return "bf16" if recipe.placement == "linear" and recipe.abits == 8 else "fp32"

    def serving(self, base: ServingOptions) -> ServingOptions:
        """As `TargetOptions.serving`; a quantized graph whose float ops run in bfloat16 is
        served with OpenVINO's bf16 hint."""
        serving = super().serving(base)
        return dataclasses.replace(serving, bf16=True) if self.float_ops == "bf16" else serving

    def recipe(self) -> QuantRecipe:
        """The recipe; for --bits auto, the 8-bit recipe that the search starts from."""
        bits = 8 if self.bits == AUTO_BITS else self.bits
        wbits = self.wbits or bits
        abits = self.abits or (8 if bits == 4 else bits)
        plus = self.method == "os+"
        # os+ at 6 and 7 bits: per-row clipping chosen by MSE (W6A6 MiniLM: embedding cosine
        # 0.9878 -> 0.9885, NN agreement 0.872 -> 0.884 against MinMax, same export time)
        observer = self.weight_observer or ("gptq" if wbits < 6 else
                                            "mse" if plus and wbits < 8 else "minmax")
        lsq = self.lsq_epochs if self.method in ("os", "os+") else 0
        reconstruct = plus if self.reconstruct is None else self.reconstruct
        objective = self.objective or (OS_PLUS_OBJECTIVE if plus else "hidden")
        placement = self.placement or (OS_PLUS_PLACEMENT if plus else "all")
        return QuantRecipe(method=self.method, wbits=wbits, abits=abits, weight_observer=observer,
                           lsq_epochs=lsq, lsq_lr=self.lsq_lr, reconstruct=reconstruct, objective=objective,
                           placement=placement, reconstruct_iters=OS_PLUS_RECONSTRUCT_ITERS if plus
                           else QuantRecipe.reconstruct_iters)

    @property
    def precision(self) -> str:
        if self.bits == 16 and self.target in HALF_PRECISION:
            return HALF_PRECISION[self.target]
        if not self.quantized:
            return FLOAT_BITS[self.bits]
        if self.bits == AUTO_BITS:
            return "mixed"
        recipe = self.recipe()
        return f"w{recipe.wbits}a{recipe.abits}"


@register
class BertFamily(Family):
    """A BERT encoder or sequence classifier: FP32, FP16 or quantized (Outlier Suppression)."""

    name = "bert"
    options_type = BertOptions
    # Parity on 128 of the 320 held-out sentences keeps a first answer under two minutes on 2
    # cores; `verify --precise` checks all 320.
    verify_defaults = VerifyDefaults(samples=128)

    def serving(self, options: BertOptions, base: ServingOptions) -> ServingOptions:
        return options.serving(base)

    def options_from_json(self, data: Mapping[str, Any]) -> BertOptions:
        # Manifests written before targets existed ran on ONNX Runtime.
        return super().options_from_json({"target": "onnxruntime", **data})

    def parity_advice(self, options: BertOptions) -> str:
        return "Try --graph plain, or report the model"

    def default_name(self, options: BertOptions) -> str:
        # bert_w6a6 for the default method, bert_w6a6_os / _minmax / _percentile otherwise
        suffix = "" if not options.quantized or options.method == DEFAULT_METHOD else "_" + options.method
        return f"bert_{options.precision}{suffix.replace('+', 'plus')}"

    def load(self, options: BertOptions, stage=None):
        model = load_bert(resolve_model_dir(options.model))
        if not options.quantized:
            return model
        if options.bits == AUTO_BITS:
            return calibrate_mixed(model, options.recipe(), options.calib, options.calib_size,
                                   options.allow_fewer, options.max_drop, stage)
        return calibrate_encoder(model, options.recipe(), options.calib, options.calib_size,
                                 options.allow_fewer, stage)

    def load_version(self, options: BertOptions, folder: Path, stage=None):
        if not options.quantized:
            return self.load(options, stage)
        return load_reference(load_bert(resolve_model_dir(options.model)), options.recipe(), folder)

    def source(self, model) -> dict[str, Any]:
        """Where the weights came from, for the manifest."""
        config = hf_config(model)
        embedded = model.model_dir == resolve_model_dir(None)
        return {
            "model_dir": None if embedded else str(Path(model.model_dir).resolve()),
            "embedded": EMBEDDED_NAME if embedded else None,
            "architecture": type(model.classifier).__name__ if isinstance(model, SequenceClassifier)
            else "BertModel",
            "hidden_size": int(config.hidden_size),
            "num_hidden_layers": int(config.num_hidden_layers),
            **({} if isinstance(model, SequenceClassifier)
               else {"pooling": model.pooling, "normalize": model.normalize}),
        }

    def io(self, model, options: BertOptions) -> ModelIO:
        width = output_width(model)
        labels = None
        if isinstance(model, SequenceClassifier):
            outputs = (TensorSpec("logits", "float32", (width,), CLASS_SCORES),)
            names = {int(k): v for k, v in hf_config(model).id2label.items()}
            labels = tuple(names[i] for i in sorted(names))
        else:
            outputs = (TensorSpec("last_hidden_state", "float32", (-1, width)),
                       TensorSpec("sentence_embedding", "float32", (width,), EMBEDDING))
        tokenizer, config = model.tokenizer, hf_config(model)
        text = Text(max_length=max_sequence_length(model.model_dir, config),
                    pad_token_id=int(tokenizer.pad_token_id),
                    lowercase=bool(getattr(tokenizer, "do_lower_case", False)), inputs=INPUTS,
                    vocab_size=int(config.vocab_size), type_vocab_size=int(config.type_vocab_size))
        return ModelIO(tuple(TensorSpec(n, "int64", (-1,)) for n in INPUTS), outputs, text, labels)

    def sample_inputs(self, model, options: BertOptions, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        """Evaluation sentences, padded to `seq_len` (default 128; None pads to the longest)."""
        corpus = sentences()
        texts = corpus if n is None else [corpus[i % len(corpus)] for i in range(n)]
        return tokenize(model.tokenizer, texts, (shape or {"seq_len": 128}).get("seq_len"))

    def export(self, model, path: Path, options: BertOptions) -> ExportInfo:
        io = self.io(model, options)
        feed = self.sample_inputs(model, options, 8, {"seq_len": 128})
        axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
        axes.update({spec.name: {0: "batch"} for spec in io.outputs})
        if "last_hidden_state" in axes:
            axes["last_hidden_state"] = {0: "batch", 1: "sequence"}

        def trace(module, target: Path) -> None:
            torch_to_onnx(module, feed, target, io, axes, options.opset)
            soften_mask_constants(target)

        if options.quantized:
            trace_qdq(model, path, trace)
            details = {"graph": "qdq", "onnxruntime_cpu_ops": integer_kernels(path),
                       "float_ops": options.float_ops}
            if options.target == "openvino":  # which MatMuls run integer kernels, attention fused or not
                details["openvino_cpu_ops"] = openvino_executed_ops(path, options.threads, options.float_ops)
            return ExportInfo(opset=check_onnx(path), precision=options.precision, details=details,
                              sections={"quantization": {"recipe": dataclasses.asdict(options.recipe()),
                                                         **recipe_record(model)}})
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".graphs-") as scratch:
            plain = Path(scratch) / "plain.onnx"
            with eager_attention(model):
                trace(model, plain)
            candidates = {"plain": plain}
            if options.graph != "plain" and options.target != "openvino":
                candidates["fused"] = fuse_transformer(plain, model, Path(scratch) / "fused.onnx")
            details: dict[str, Any] = {}
            if options.graph == "auto" and (options.precision == "fp16" or options.gpu):
                # GPU graphs are the fused ones (fused Attention is what GPUs gain most from);
                # FP16 conversion keeps fp32 inputs/outputs so clients need not change.
                chosen = "fused"
            elif options.graph == "auto" and options.target == "openvino":
                chosen = "plain"  # OpenVINO fuses attention itself and reads only standard operators
            elif options.graph == "auto":
                chosen, timings = fastest_graph(candidates, feed, options.threads)
                details["candidates_ms"] = {k: round(v, 2) for k, v in timings.items()}
            else:
                chosen = options.graph
            if options.precision == "fp16":  # BF16 is OpenVINO's execution precision, not the file's
                candidates[chosen] = to_float16(candidates[chosen])
            shutil.move(str(candidates[chosen]), str(path))
        details["graph"] = chosen
        return ExportInfo(opset=check_onnx(path), precision=options.precision, details=details)

    def write_side_files(self, model, version_dir: Path) -> None:
        """The tokenizer travels with the artifact, so any client can reproduce the inputs; a
        quantized export also keeps its PyTorch reference for `verify`."""
        model.tokenizer.save_pretrained(str(version_dir / "tokenizer"))
        if isinstance(model, FakeQuantEncoder):
            save_reference(model, version_dir)

    def latency_baseline(self, model):
        return model.fp[0] if isinstance(model, FakeQuantEncoder) else model

    def quality(self, model, options: BertOptions, run) -> dict[str, Any] | None:
        """Embedding cosine and nearest-neighbour agreement against the FP32 PyTorch model on
        the held-out sentences, for every lossy export (quantized, BF16, FP16) of an encoder."""
        if options.precision == "fp32" or isinstance(model, SequenceClassifier):
            return None
        inputs = self.sample_inputs(model, options, None, {"seq_len": 128})
        io = self.io(model, options)
        fp_model = self.latency_baseline(model)
        fp = sentence_embeddings(lambda batch: self.reference_outputs(fp_model, batch, io), inputs)
        return quality_vs_fp(fp, sentence_embeddings(run, inputs))

    def quality_options(self) -> type:
        from tritonforge.export.bert.compare_recipes import BertQualityOptions

        return BertQualityOptions

    def quality_table(self, options, stage) -> list:
        """FP32, ONNX Runtime's quantize_dynamic INT8 and each method x bits: embedding cosine and
        nearest-neighbour agreement against FP32 on held-out sentences, latency interleaved."""
        from tritonforge.export.bert.compare_recipes import quality_table

        return quality_table(options, stage)

    def summary(self, manifest) -> list[str]:
        onnx = manifest["onnx"]
        target = manifest.get("serving", {}).get("target", "onnxruntime")
        lines = [f"{manifest['precision']} for {target}, graph {onnx.get('graph')}, "
                 f"{onnx['bytes'] / 1e6:.1f} MB",
                 *super().summary(manifest)]
        quality = manifest.get("quality")
        if quality:  # named in words rather than by key
            lines[-1] = (f"quality vs FP on {quality['samples']} held-out sentences: embedding cosine "
                         f"{quality['cosine_vs_fp']:.4f}, nearest-neighbour agreement "
                         f"{quality['nn_agreement_vs_fp']:.3f}")
        return lines

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: BertOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        cosine_floor, abs_ceiling, top1_floor = TOLERANCES[
            "quantized" if options.quantized else options.precision]
        if "logits" in reference:
            ref, cand = reference["logits"], candidate["logits"]
            agreement = top1_agreement(ref, cand)
            return Parity((Check("top1_agreement", agreement, top1_floor, True, MEAN),
                           Check("max_abs_diff", max_abs_diff(ref, cand), abs_ceiling, False)),
                          {"samples": int(ref.shape[0])})
        cosines = row_cosines(reference["sentence_embedding"], candidate["sentence_embedding"])
        hidden_ref, hidden_cand = reference["last_hidden_state"], candidate["last_hidden_state"]
        details = {"min_cosine": float(cosines.min()), "samples": int(cosines.shape[0]),
                   "embedding_max_abs_diff": max_abs_diff(reference["sentence_embedding"],
                                                          candidate["sentence_embedding"])}
        if inputs is not None:
            # Hidden states at padding positions are never used (pooling masks them out) and
            # differ more between attention kernels: judge the real tokens, report the rest.
            real = inputs["attention_mask"][:, : hidden_ref.shape[1]].astype(bool)
            if (~real).any():
                details["padding_max_abs_diff"] = max_abs_diff(hidden_ref[~real], hidden_cand[~real])
            hidden_ref, hidden_cand = hidden_ref[real], hidden_cand[real]
        checks = [Check("cosine", float(cosines.mean()), cosine_floor, True, MEAN)]
        hidden_diff = max_abs_diff(hidden_ref, hidden_cand)
        if abs_ceiling is None:
            details["max_abs_diff"] = hidden_diff
        else:
            checks.append(Check("max_abs_diff", hidden_diff, abs_ceiling, False))
        return Parity(tuple(checks), details)


def tokenize(tokenizer, texts: list[str], seq_len: int | None) -> dict[str, np.ndarray]:
    """Token arrays for the graph: padded to `seq_len` (None: to the longest text)."""
    padding = "max_length" if seq_len else "longest"
    encoded = tokenizer(texts, padding=padding, truncation=True, max_length=seq_len,
                        return_tensors="np", return_token_type_ids=True)
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in INPUTS}


def fuse_transformer(source: Path, model, target: Path) -> Path:
    """ONNX Runtime's transformer optimizer: fused Attention (reading the raw attention mask),
    EmbedLayerNorm, SkipLayerNorm, BiasGelu."""
    config = hf_config(model)
    optimize_transformer(source, target, "bert", int(config.num_attention_heads), int(config.hidden_size))
    return target
