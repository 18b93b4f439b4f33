"""Output kinds: what each output of a model *is*, so that `query` prints and writes it
naturally and `soak` judges it by a fitting measure, with nothing guessed from shapes.

A kind is an object registered by name (the name a manifest and a served config carry):

    from tritonforge.outputs import OutputKind, register_kind

    @register_kind
    class Heatmap(OutputKind):
        name = "heatmap"
        def summarize(self, part, context): ...

The built-in kinds register themselves here the same way; registering a name again replaces
the earlier kind. This package imports nothing of tritonforge but `spec` and `errors`:
serving, the CLI and verify read answers through it, never the other way round.
"""

# The built-in kinds register on import: importing any part of this package registers them first.
from tritonforge.outputs import boxes3d, detections, images, labels, vectors  # noqa: F401
from tritonforge.outputs.answers import (
    answer_json,
    compare_outputs,
    parts,
    save_outputs,
    summaries,
    summary_json,
)
from tritonforge.outputs.kind import (
    COSINE_MIN,
    OutputKind,
    Part,
    QueryContext,
    SavePaths,
    Summary,
    Table,
    Tolerances,
    Written,
    tensor_checks,
)
from tritonforge.outputs.registry import known_kinds, output_kind, register_kind

__all__ = ["COSINE_MIN", "OutputKind", "Part", "QueryContext", "SavePaths", "Summary", "Table", "Tolerances",
           "Written", "answer_json", "compare_outputs", "known_kinds", "output_kind", "parts",
           "register_kind", "save_outputs", "summaries", "summary_json", "tensor_checks"]
