"""Built-in kinds of vectors and plain tensors: embeddings, class scores and probabilities,
and `tensor`, the kind of anything else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from tritonforge.outputs.kind import COSINE_MIN, OutputKind, Part, QueryContext, Summary, Table, Tolerances
from tritonforge.outputs.metrics import sample_cosines, top1_agreement
from tritonforge.outputs.registry import register_kind
from tritonforge.spec import CLASS_PROBABILITIES, CLASS_SCORES, EMBEDDING, MEAN, TENSOR, Check, Parity


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def top_labels(labels: Sequence[str] | None, scores: np.ndarray, logits: bool = True, k: int = 3
               ) -> list[list[tuple[str, float]]]:
    """For each row: the k most probable classes as (label, probability); `scores` are logits,
    or probabilities already (`logits=False`)."""
    labels = labels or [f"class {i}" for i in range(scores.shape[-1])]
    probabilities = softmax(scores.astype(np.float64)) if logits else scores.astype(np.float64)
    return [[(labels[j], float(row[j])) for j in np.argsort(-row)[:k]] for row in probabilities]


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return unit @ unit.T


def cosine_check(reference: np.ndarray, candidate: np.ndarray, tolerances: Tolerances) -> Check:
    cosines = sample_cosines(reference, candidate)
    return Check(COSINE_MIN, float(cosines.min()) if cosines.size else 1.0, tolerances.min_cosine, True)


@register_kind
class Tensor(OutputKind):
    """Anything else (hidden states, feature maps): shape and statistics."""

    name = TENSOR

    def summarize(self, part: Part, context: QueryContext) -> Summary:
        values = part.value
        if not values.size or values.dtype == object:
            return Summary("tensors", part.label, {})
        stats = {"min": values.min().item(), "max": values.max().item(),
                 "mean": float(values.astype(np.float64).mean())}
        return Summary("tensors", part.label, stats, lines=(
            f"{part.label}: {values.dtype} {list(values.shape)}, min {stats['min']:.6g}, "
            f"max {stats['max']:.6g}, mean {stats['mean']:.6g}",))


@register_kind
class Embedding(OutputKind):
    """[batch, width] vectors: norms, and the cosine similarity of every pair of inputs."""

    name = EMBEDDING

    def summarize(self, part: Part, context: QueryContext) -> Summary:
        vectors = part.value.astype(np.float64)
        norms, cosine = np.linalg.norm(vectors, axis=-1), cosine_matrix(vectors)
        rows = context.row_names(len(vectors))
        table = Table(f"{part.label}: L2 norm and cosine similarity",
                      ("input", "norm", *(f"#{index}" for index in range(len(rows)))),
                      tuple((label, f"{norms[index]:.4f}", *(f"{c:.4f}" for c in cosine[index]))
                            for index, label in enumerate(rows)))
        return Summary("embeddings", part.label, {"norms": norms.tolist(), "cosine": cosine.tolist()},
                       (table,))

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        return Parity((cosine_check(reference.value, candidate.value, tolerances),))


@register_kind
class ClassScores(OutputKind):
    """[batch, classes] logits: the most probable labels (names from the model's labels)."""

    name = CLASS_SCORES
    logits: ClassVar[bool] = True

    def summarize(self, part: Part, context: QueryContext) -> Summary | None:
        if self.logits and CLASS_PROBABILITIES in context.kinds.values():
            return None  # the model's own probabilities are shown instead
        ranked = top_labels(context.labels, part.value, self.logits)
        rows = tuple((label if position == 0 else "", cls, f"{probability:.4f}")
                     for label, row in zip(context.row_names(len(ranked)), ranked, strict=True)
                     for position, (cls, probability) in enumerate(row))
        table = Table(f"{part.label}: most probable labels", ("input", "label", "probability"), rows)
        return Summary("labels", part.label, ranked, (table,))

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        top1 = top1_agreement(reference.value, candidate.value)
        return Parity((Check("top1_agreement", top1, 1.0, True, MEAN),
                       cosine_check(reference.value, candidate.value, tolerances)))


@register_kind
class ClassProbabilities(ClassScores):
    """[batch, classes] probabilities the model computed itself: never softmaxed again."""

    name = CLASS_PROBABILITIES
    logits = False
