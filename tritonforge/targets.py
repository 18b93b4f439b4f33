"""Where an export runs, and in what precision: the part of every family's recipe that names
its target.

Each family's options dataclass derives from `TargetOptions`, so `export <family>` takes
`--target` and `--fallback` and the manifest's recipe records where the artifact runs:

- `auto` becomes concrete when the recipe is made (the recipe records `openvino`, never
  `auto`): TensorRT for a GPU export, OpenVINO where it is installed, else ONNX Runtime;
- `--bits 16` computes in the target's half precision: BF16 on OpenVINO (the file stays FP32;
  bfloat16 is how OpenVINO runs it), FP16 elsewhere (`runtime.HALF_PRECISION`);
- a target this machine cannot run stops the recipe with what is missing, or, with
  `--fallback`, becomes `onnxruntime` and `fallback_reason` records why.

A family sets its own default target by declaring the field again (bert: `auto`; the others
`onnxruntime`, what they ran on before targets existed), and says which half precisions its
`--bits 16` offers (`half_precisions`). Families whose recipe has a `gpu` flag keep it: `--gpu`
means `tensorrt`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tritonforge.errors import TritonForgeError
from tritonforge.family import option
from tritonforge.runtime import HALF_PRECISION, TARGETS, check_target, default_target

if TYPE_CHECKING:
    from tritonforge.triton_config import ServingOptions

AUTO = "auto"
FALLBACK_TARGET = "onnxruntime"
TARGET_HELP = ("Where the artifact runs: onnxruntime, openvino (Triton's openvino backend; --bits 16 "
               "computes in BF16 there), tensorrt (GPU), or auto (the fastest this machine runs: "
               "openvino when installed).")
FALLBACK_HELP = ("When --target cannot run here, export for onnxruntime instead of stopping (the "
                 "manifest records why).")


@dataclass(frozen=True, kw_only=True)
class TargetOptions:
    """Target, fallback and threads of a recipe; `resolve_target` (run by `__post_init__`)
    makes the target concrete and checks that this machine runs it.

    A family's `__post_init__` validates its own fields first (`bits` above all, which
    `precision_on` reads) and then calls `super().__post_init__()`.
    """

    target: str = option("onnxruntime", help=TARGET_HELP)
    fallback: bool = option(False, help=FALLBACK_HELP)
    # Why the target asked for was not used (--fallback); set by the recipe itself.
    fallback_reason: str | None = option(None, cli=False)
    threads: int = option(2, cli=False)  # intra-op threads of every runtime the recipe runs

    # What `--bits 16` may compute in (on OpenVINO BF16, elsewhere FP16); a family without an
    # FP16 graph offers ("bf16",) only.
    half_precisions: ClassVar[tuple[str, ...]] = ("fp16", "bf16")

    def __post_init__(self) -> None:
        self.resolve_target()

    @property
    def wants_gpu(self) -> bool:
        """`--gpu`, for the families whose recipe has it."""
        return bool(getattr(self, "gpu", False))

    def resolve_target(self) -> None:
        """Make `target` concrete (the recipe records where the artifact runs, not "auto") and
        check that this machine can run it: an unusable target stops the export with what is
        missing, or with --fallback becomes onnxruntime and the reason is recorded."""
        if self.target not in (*TARGETS, AUTO):
            raise TritonForgeError(f"--target {self.target!r} is unknown: choose one of "
                                   f"{', '.join(TARGETS)} or auto")
        target = self.target
        if target == AUTO or (self.wants_gpu and target == self.default_target()):
            target = default_target(self.wants_gpu)
        if self.wants_gpu and target != "tensorrt":
            raise TritonForgeError(f"--gpu serves with TensorRT; it does not combine with --target "
                                   f"{target}: leave one of them out")
        self.check_half_precision(target)
        problem = check_target(target, self.precision_on(target))
        if problem:
            target = self.fall_back(problem)
        object.__setattr__(self, "target", target)
        if hasattr(self, "gpu"):
            object.__setattr__(self, "gpu", target == "tensorrt")

    def fall_back(self, problem: str) -> str:
        """The target to use instead of one that cannot run here (`problem` says why): with
        --fallback, onnxruntime (the reason recorded); else an error that says what is missing."""
        helps = self.offers_half_on(FALLBACK_TARGET)
        if not self.fallback:
            advice = " (or pass --fallback to export for onnxruntime instead)" if helps else ""
            raise TritonForgeError(f"{problem}{advice}")
        self.check_half_precision(FALLBACK_TARGET, problem)
        object.__setattr__(self, "fallback_reason", problem)
        return FALLBACK_TARGET

    @classmethod
    def default_target(cls) -> str:
        """The family's default `--target` (the field's default)."""
        return next(f.default for f in dataclasses.fields(cls) if f.name == "target")

    def offers_half_on(self, target: str) -> bool:
        """Whether this recipe's precision exists on `target` (only --bits 16 depends on it)."""
        return getattr(self, "bits", None) != 16 or HALF_PRECISION[target] in self.half_precisions

    def check_half_precision(self, target: str, problem: str | None = None) -> None:
        """--bits 16 on a target whose half precision the family has no graph for."""
        if self.offers_half_on(target):
            return
        offered = [t for t in TARGETS if HALF_PRECISION[t] in self.half_precisions]
        why = f"{problem}; " if problem else ""
        raise TritonForgeError(
            f"{why}--bits 16 computes in {HALF_PRECISION[target].upper()} on {target}, which these "
            f"models are not exported in: use --target {' or '.join(offered)} (on a CPU with BF16), "
            "or export --bits 32")

    def precision_on(self, target: str) -> str:
        """What the graph computes in on `target`: `--bits 16` is the target's half precision;
        32 is fp32 and 8 int8 (a family with other widths overrides this)."""
        bits = getattr(self, "bits", 32)
        if bits == 16:
            return HALF_PRECISION[target]
        return "fp32" if bits == 32 else "int8"

    @property
    def precision(self) -> str:
        """What the graph computes in on the resolved target."""
        return self.precision_on(self.target)

    def for_target(self, target: str, bits: int, **changes: Any) -> TargetOptions:
        """This recipe as `export --target target --bits bits` would make it (no fallback, no
        GPU flag; `changes` on top): the variants `tritonforge speed` times. A family whose
        recipe has options only some widths take overrides it to leave them out of the others."""
        fixed = {"target": target, "bits": bits, "fallback": False, "fallback_reason": None,
                 **({"gpu": False} if hasattr(self, "gpu") else {})}
        return dataclasses.replace(self, **{**fixed, **changes})

    def serving(self, base: ServingOptions) -> ServingOptions:
        """`base` with where this recipe runs and in what precision: Triton's openvino backend
        (with HINT_BF16 for BF16), or the onnxruntime backend (the TensorRT accelerator, in
        FP16 for an FP16 export, for tensorrt)."""
        precision = self.precision
        return dataclasses.replace(base, target=self.target, gpu=base.gpu or self.target == "tensorrt",
                                   fp16=precision == "fp16", bf16=precision == "bf16")
