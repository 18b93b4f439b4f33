"""Built-in kinds that name things: labels from a vocabulary sent with the request, and flags
(a screen's verdict per sample, read with its score)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.outputs.kind import OutputKind, Part, QueryContext, Summary, Table, Tolerances
from tritonforge.outputs.metrics import max_abs_diff
from tritonforge.outputs.registry import register_kind
from tritonforge.spec import FLAG, FLAG_SCORE, MEAN, VOCABULARY_LABELS, Check, Parity


def as_text(value: object) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


@register_kind
class VocabularyLabels(OutputKind):
    """[batch, k] integer indices into the vocabulary the request sent as strings (an
    open-vocabulary detector's class names), printed as the names; -1 is padding."""

    name = VOCABULARY_LABELS
    vocabulary_input: ClassVar[str] = "vocabulary"  # the input read when the request has several of strings

    def vocabularies(self, context: QueryContext, batch: int) -> list[list[str]]:
        """Each sample's vocabulary: the request's string input, [V] for all samples or [batch, V]."""
        strings = {name.lower(): values for name, values in context.inputs.items()
                   if values.dtype == object or values.dtype.kind in "SU"}  # VOCABULARY or vocabulary
        named = context.vocabulary.lower() or self.vocabulary_input
        chosen = strings.get(named) if len(strings) > 1 else next(iter(strings.values()), None)
        if chosen is None:
            raise TritonForgeError(
                f"{VOCABULARY_LABELS} name classes from the vocabulary sent with the request, and the "
                f"request's string inputs are {sorted(strings) or 'none'}: send the class names as an "
                f"input of strings (named {named!r} when there are several)")
        names = [[as_text(v) for v in row] for row in (chosen[None] if chosen.ndim == 1 else chosen)]
        return names * batch if len(names) == 1 else names

    def names(self, indices: np.ndarray, context: QueryContext) -> list[list[str]]:
        """Each sample's labels as the sent names (padding left out)."""
        rows = indices.reshape(len(indices), -1)
        named = []
        for row, vocabulary in zip(rows, self.vocabularies(context, len(rows)), strict=True):
            beyond = f"(beyond the {len(vocabulary)} sent)"
            named.append([vocabulary[i] if i < len(vocabulary) else f"#{i} {beyond}"
                          for i in (int(v) for v in row) if i >= 0])
        return named

    def summarize(self, part: Part, context: QueryContext) -> Summary:
        named = self.names(part.value, context)
        rows = tuple((label, ", ".join(names) or "(none)")
                     for label, names in zip(context.row_names(len(named)), named, strict=True))
        return Summary("vocabulary_labels", part.label, named,
                       (Table(f"{part.label}: labels from the sent vocabulary", ("input", "labels"), rows),))

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        return Parity((Check("label_agreement", float(np.mean(reference.value == candidate.value))
                             if reference.value.size else 1.0, 1.0, True, MEAN),))


class Flags(OutputKind):
    """[batch] booleans (flagged or clear) with their [batch] scores: printed as "flagged
    (score 0.93)" or "clear (score 0.12)"; judged by equal flags."""

    group = "flags"

    @staticmethod
    def verdicts(part: Part) -> np.ndarray:
        flags = part.arrays["flag"]
        if flags.size != len(flags):
            raise TritonForgeError(f"flag output {part.names['flag']!r} is {list(flags.shape)}: a flag is "
                                   "one value per sample ([N] or [N, 1])")
        return flags.reshape(len(flags)) != 0

    def summarize(self, part: Part, context: QueryContext) -> Summary | None:
        if "flag" not in part.arrays:
            return None
        verdicts = self.verdicts(part)
        scores = part.arrays.get("score")
        scores = None if scores is None else scores.reshape(len(scores), -1)[:, 0].astype(np.float64)
        data = [{"flagged": bool(flagged), "score": None if scores is None else float(scores[index])}
                for index, flagged in enumerate(verdicts)]
        texts = [("flagged" if item["flagged"] else "clear")
                 + ("" if item["score"] is None else f" (score {item['score']:.2f})") for item in data]
        name = part.names["flag"]
        return Summary("flags", name, data, (Table(f"{name}: flags", ("input", "verdict"), tuple(
            zip(context.row_names(len(texts)), texts, strict=True))),))

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        if "flag" not in reference.arrays:
            return super().agreement(reference, candidate, tolerances)
        same = self.verdicts(reference) == self.verdicts(candidate)
        details = ({"score_max_abs_diff": max_abs_diff(reference.arrays["score"], candidate.arrays["score"])}
                   if "score" in reference.arrays and reference.arrays["score"].size else {})
        return Parity((Check("flag_agreement", float(same.mean()) if same.size else 1.0, 1.0, True, MEAN),),
                      details)


@register_kind
class Flag(Flags):
    name = FLAG
    role = "flag"


@register_kind
class FlagScore(Flags):
    name = FLAG_SCORE
    role = "score"
