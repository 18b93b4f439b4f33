"""The `vit` family: ViT and BEiT image classifiers (transformers' own models), screened for
backdoors before they are published and, with `--guard`, while they are served.

No ViT or BEiT weights install offline, so the embedded default is a small model trained here
on the digits (`tritonforge vit train`, about a minute; `export vit` trains it when no `--model`
is given). `--model DIR` takes any ViTForImageClassification / BeitForImageClassification
directory (save_pretrained's layout), `--random-init` a seeded random one.

Publishing runs the backdoor scan (`scan.py`, Neural Cleanse's trigger reverse-engineering on
the clean held-out digits) as a publish gate: a model whose anomaly index is above 2 is refused,
with the suspected target class and its reversed trigger as a PNG. `--no-scan` skips it and the
manifest says so. `--guard strip:N` exports the served input screen (`strip.py`): logits plus
each input's STRIP entropy and a backdoor flag, computed in the graph.

`tritonforge vit poison` makes the deliberately backdoored positive controls the screens are
measured on (`poison.py`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.onnx import (
    MIN_OPSET,
    check_onnx,
    fastest_graph,
    optimize_transformer,
    to_float16,
    torch_to_onnx,
)
from tritonforge.export.vit.data import CLASSES, IMAGE_SIZE, digit_pixels, image_modality, stamp
from tritonforge.export.vit.model import (
    ARCHITECTURES,
    Classifier,
    Size,
    build,
    load_directory,
    save_directory,
    training_record,
)
from tritonforge.family import ExportInfo, Family, Shape, option, register
from tritonforge.outputs.metrics import max_abs_diff, top1_agreement
from tritonforge.spec import CLASS_SCORES, FLAG, FLAG_SCORE, MEAN, Check, ModelIO, Parity, TensorSpec
from tritonforge.targets import TargetOptions

LOGITS_ABS = 1e-4  # FP32: the same arithmetic in another order
ENTROPY_ABS = 1e-4  # the guard's entropy, FP32
# Reduced precision against the FP32 model: top-1 must agree on this share of the parity digits
# (one flip in the 32 an export checks); the accuracy drop on all 360 is the manifest's `quality`.
REDUCED_TOP1 = 0.95
CALIBRATION_DIGITS = 64  # training digits INT8's activation ranges are calibrated on
GRAPHS = ("plain", "fused", "auto")
WEIGHTS_FOLDER = "pytorch"  # a version's PyTorch weights when they came from no --model directory
SCAN_FOLDER = "scan"
TRIGGER_FILE = "suspected_trigger.npz"  # the suspected class's reversed mask and pattern


@dataclass(frozen=True)
class VitOptions(TargetOptions):
    """The export recipe; written verbatim into the manifest."""

    arch: str = option("vit", help="vit or beit: the model `vit train` trains when no --model is given "
                                   "(or --random-init builds).")
    model: str | None = option(None, help="A ViT or BEiT classifier directory (config.json and "
                                          "model.safetensors, as save_pretrained or `vit train` write). "
                                          "Default: train the digits model now (about a minute).")
    random_init: bool = option(False, help="Seeded random weights instead of training (to try the "
                                           "export; its predictions mean nothing).")
    seed: int = option(0, help="Seed of the default model's training (or of --random-init).")
    bits: int = option(32, help="32 (FP32), 16 (FP16; BF16 on --target openvino) or 8 (INT8 QDQ: "
                                "MatMul/Conv weights per channel, LayerNorm, Softmax and residual adds "
                                "in float).")
    graph: str = option("auto", help="plain, fused (ONNX Runtime's transformer optimizer, ViT fusion) "
                                     "or auto (the faster of the two, timed here; plain for OpenVINO).")
    scan: bool = option(True, help="Run the backdoor scan (Neural Cleanse) as a publish gate: a model "
                                   "with anomaly index above 2 is refused. --no-scan skips it; the "
                                   "manifest records that it was skipped.")
    scan_steps: int = option(200, help="Optimisation steps of the scan's trigger search, per trigger "
                                       "form (all classes at once).")
    scan_statistic: str = option("log", help="What the scan's anomaly index measures: log (the mask "
                                             "norms' logarithms, the default: measured to separate better) "
                                             "or l1 (the norms themselves, as Neural Cleanse publishes).")
    scan_gap: float = option(1.3, help="The suspected class's trigger must also be at most 1/GAP of the "
                                       "next class's (0: the anomaly index alone, as Neural Cleanse "
                                       "decides; with --scan-statistic l1 that is the paper's rule).")
    scan_report: str = option("vit_scans", help="Where a refused model's scan report and reversed "
                                                "trigger PNGs are written (a published model keeps "
                                                "them in its version folder, scan/).")
    guard: str | None = option(None, help="strip:N: serve the STRIP input screen in the graph, N clean "
                                           "held-out digits superimposed on each input; outputs "
                                           "logits, strip_entropy and backdoor_flag.")
    guard_weight: float = option(1.0, help="The bank image's weight when STRIP superimposes it on the "
                                           "input (1: STRIP's own, both added and clipped).")
    guard_frr: float = option(0.01, help="False-rejection rate on clean held-out digits that the "
                                         "guard's threshold is calibrated at.")

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise TritonForgeError(f"--arch {self.arch!r} is unknown: choose one of "
                                   f"{', '.join(ARCHITECTURES)}")
        if self.bits not in (32, 16, 8):
            raise TritonForgeError(f"--bits {self.bits} is not offered for ViT/BEiT: choose 32, 16 or 8")
        if self.graph not in GRAPHS:
            raise TritonForgeError(f"--graph {self.graph!r} is unknown: choose one of {', '.join(GRAPHS)}")
        if self.model and self.random_init:
            raise TritonForgeError("--model and --random-init exclude each other: leave one out")
        config = Path(self.model).expanduser() / "config.json" if self.model else None
        if config is not None and config.is_file():  # the recipe names the architecture it holds
            model_type = json.loads(config.read_text()).get("model_type")
            if model_type in ARCHITECTURES:
                object.__setattr__(self, "arch", model_type)
        if self.scan_steps < 10:
            raise TritonForgeError(f"--scan-steps {self.scan_steps} must be at least 10")
        if self.scan_statistic not in ("log", "l1"):
            raise TritonForgeError(f"--scan-statistic {self.scan_statistic!r}: choose log or l1")
        if self.scan_gap < 0 or 0 < self.scan_gap < 1:
            raise TritonForgeError(f"--scan-gap {self.scan_gap} must be 0 (off) or at least 1")
        _ = self.guard_spec  # parses --guard, refusing a bad one before anything loads
        super().__post_init__()
        if self.target == "openvino" and self.graph == "fused":
            raise TritonForgeError("--graph fused holds ONNX Runtime's own operators, which OpenVINO "
                                   "cannot read: use --graph plain (or auto) with --target openvino")

    @property
    def guard_spec(self):
        from tritonforge.export.vit.strip import parse_guard

        return parse_guard(self.guard, self.guard_weight, self.guard_frr)


@register
class VitFamily(Family):
    """A ViT or BEiT image classifier, screened for backdoors before publishing."""

    name = "vit"
    options_type = VitOptions

    def default_name(self, options: VitOptions) -> str:
        guard = "_strip" if options.guard else ""
        return f"{options.arch}_digits_{options.precision}{guard}" if not options.model else \
            f"{options.arch}_{options.precision}{guard}"

    def serving(self, options: VitOptions, base):
        return options.serving(base)

    # -- the reference --------------------------------------------------------------------------

    def load(self, options: VitOptions, stage=None):
        import torch

        torch.set_num_threads(options.threads)
        training = None
        if options.model:
            network = load_directory(Path(options.model))
            training = training_record(Path(options.model))
            weights = f"from --model {options.model}"
        elif options.random_init:
            network = build(options.arch, Size(), options.seed)
            weights = f"random (--random-init, seed {options.seed}): its predictions mean nothing"
        else:
            from tritonforge.export.vit.train import TrainRecipe, train

            recipe = TrainRecipe(arch=options.arch, seed=options.seed)
            tick = stage(f"training the {options.arch} digits model", recipe.total_epochs) if stage else None
            network = train(recipe, (lambda *_: tick()) if callable(tick) else None)
            training = {"recipe": recipe.to_json()}
            weights = f"trained here on the digits (seed {options.seed})"
        return self._wrap(network, options, weights, training, saved=not options.model)

    def load_version(self, options: VitOptions, folder: Path, stage=None):
        saved = folder / WEIGHTS_FOLDER
        if not saved.is_dir():
            return self.load(options, stage)
        return self._wrap(load_directory(saved), options, f"saved with the version ({WEIGHTS_FOLDER}/)",
                          training_record(saved), saved=False)

    def _wrap(self, network, options: VitOptions, weights: str, training, saved: bool):
        channels = int(network.config.num_channels)
        if channels not in (1, 3):
            raise TritonForgeError(f"this {network.config.model_type} model takes {channels}-channel images; "
                                   "served images arrive as RGB (3) or grayscale (1): export a model of "
                                   "1 or 3 channels")
        spec = options.guard_spec
        if spec is None:
            graph, record = Classifier(network), None
        else:
            from tritonforge.export.vit.strip import guarded

            graph, record = guarded(network, spec)
        graph.weights, graph.training, graph.guard_record = weights, training, record
        graph.save_weights = saved
        graph.scan_record = None
        return graph.eval()

    def source(self, model) -> dict[str, Any]:
        from tritonforge.export.vit.train import accuracy

        network = model.model
        config = network.config
        return {"architecture": type(network).__name__, "weights": model.weights,
                "image_size": int(config.image_size), "patch_size": int(config.patch_size),
                "width": int(config.hidden_size), "depth": int(config.num_hidden_layers),
                "parameters": sum(p.numel() for p in network.parameters()),
                **({"training": model.training} if model.training else {}),
                **({"pytorch_test_accuracy": accuracy(network, *digit_pixels("test"))}
                   if self._digits(network) else {})}

    @staticmethod
    def _digits(network) -> bool:
        """Whether the network takes the digits (10 classes at 32 x 32): accuracy means something."""
        config = network.config
        return int(config.image_size) == IMAGE_SIZE and int(config.num_labels) == len(CLASSES)

    def io(self, model, options: VitOptions) -> ModelIO:
        config = model.model.config
        size, channels = int(config.image_size), int(config.num_channels)
        labels = tuple(str(config.id2label.get(i, i)) for i in range(int(config.num_labels)))
        outputs = [TensorSpec("logits", "float32", (len(labels),), CLASS_SCORES)]
        if options.guard:
            outputs += [TensorSpec("strip_entropy", "float32", (1,), FLAG_SCORE),
                        TensorSpec("backdoor_flag", "bool", (1,), FLAG)]
        return ModelIO((TensorSpec("pixel_values", "float32", (channels, size, size)),), tuple(outputs),
                       image_modality(size, channels), labels=labels)

    def sample_inputs(self, model, options: VitOptions, n: int | None, shape: Shape | None = None
                      ) -> dict[str, np.ndarray]:
        """The test digits (never trained on) as the Image modality decodes their PNGs; a model of
        another size or channel count gets the bundled photographs."""
        config = model.model.config
        size, channels = int(config.image_size), int(config.num_channels)
        asked = (shape or {}).get("image_size")
        if asked not in (None, size):
            raise TritonForgeError(f"--image-size {asked}: this model takes {size}x{size} images")
        if channels == 3 and size == IMAGE_SIZE:
            pixels, _labels = digit_pixels("test")
            return {"pixel_values": np.array(pixels if n is None else pixels[np.arange(n) % len(pixels)])}
        modality = image_modality(size, channels)
        return modality.encode(modality.sample_raw(n or 8), None, None)

    # -- the graph ------------------------------------------------------------------------------

    def export(self, model, path: Path, options: VitOptions) -> ExportInfo:
        io = self.io(model, options)
        axes = {name: {0: "batch"} for name in (*io.input_names, *io.output_names)}
        feed = self.sample_inputs(model, options, 8)
        details: dict[str, Any] = {}
        sections: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".graphs-") as scratch:
            plain = Path(scratch) / "plain.onnx"
            torch_to_onnx(model, feed, plain, io, axes, MIN_OPSET)
            candidates = {"plain": plain}
            if model.guard_record:
                sections["guard"] = {**model.guard_record, **self._guard_cost(model, feed, io, axes, plain,
                                                                             options)}
            fusion = self._fuse(model, options, plain, Path(scratch) / "fused.onnx")
            if fusion is not None:
                candidates["fused"], details["fused_operators"] = fusion
            elif options.graph == "fused":
                raise TritonForgeError(f"--graph fused: ONNX Runtime's transformer optimizer fuses nothing "
                                       f"in this {model.model.config.model_type} graph; use --graph plain")
            if options.graph != "auto" or len(candidates) == 1:
                chosen = options.graph if options.graph in candidates else "plain"
            elif options.precision in ("fp16",) or options.target == "tensorrt":
                chosen = "fused"
            else:
                chosen, timings = fastest_graph(candidates, feed, options.threads)
                details["candidates_ms"] = {k: round(v, 3) for k, v in timings.items()}
            details["graph"] = chosen
            if options.precision == "fp16":
                to_float16(candidates[chosen])
            elif options.precision == "int8":
                sections["quantization"] = self._quantize(candidates[chosen], path, options)
                return ExportInfo(opset=check_onnx(path), precision="int8", details=details,
                                  sections=sections)
            shutil.move(str(candidates[chosen]), str(path))
        return ExportInfo(opset=check_onnx(path), precision=options.precision, details=details,
                          sections=sections)

    @staticmethod
    def _guard_cost(model, feed, io: ModelIO, axes, guarded: Path, options: VitOptions) -> dict[str, Any]:
        """The guarded graph's latency against the classifier alone, timed interleaved in ONNX
        Runtime on one batch of 8 digits (the served cost is `bench NAME_image --compare`)."""
        plain_io = ModelIO(io.inputs, io.outputs[:1], io.preprocessing, labels=io.labels)
        alone = guarded.parent / "unguarded.onnx"
        torch_to_onnx(Classifier(model.model), feed, alone, plain_io,
                      {k: v for k, v in axes.items() if k in plain_io.input_names + plain_io.output_names})
        _fastest, medians = fastest_graph({"guarded": guarded, "unguarded": alone}, feed, options.threads)
        return {"latency_ms_batch_8": {k: round(v, 3) for k, v in medians.items()},
                "latency_ratio": round(medians["guarded"] / medians["unguarded"], 2)}

    def _fuse(self, model, options: VitOptions, plain: Path, target: Path):
        """ONNX Runtime's transformer optimizer with its ViT fusions, when it fuses anything
        (OpenVINO reads standard operators only: none there)."""
        if options.graph == "plain" or options.target == "openvino" or options.precision == "int8":
            return None
        config = model.model.config
        try:
            fused = optimize_transformer(plain, target, "vit", int(config.num_attention_heads),
                                         int(config.hidden_size))
        except Exception:  # the optimizer does not know this graph: the plain one is served
            return None
        return (target, fused) if fused else None

    def _quantize(self, fp32: Path, path: Path, options: VitOptions) -> dict[str, Any]:
        from tritonforge.quant.static import (
            QUANTIZED_OP_TYPES,
            STATIC_QDQ_METHOD,
            openvino_float_nodes,
            static_qdq,
        )

        train, _labels = digit_pixels("train")
        feeds = [{"pixel_values": np.array(train[i:i + 8])} for i in range(0, CALIBRATION_DIGITS, 8)]
        kept = openvino_float_nodes(fp32) if options.target == "openvino" else {}
        nodes = static_qdq(fp32, path, feeds, kept)
        return {"method": STATIC_QDQ_METHOD,
                "calibration_digits": CALIBRATION_DIGITS, "quantized_op_types": list(QUANTIZED_OP_TYPES),
                "quantize_linear_nodes": nodes,
                "float": "LayerNorm, Softmax, GELU and the residual Adds (not quantized op types), the "
                         "STRIP blend and entropy",
                **({"openvino_float_nodes": kept} if kept else {})}

    def write_side_files(self, model, version_dir: Path) -> None:
        """The PyTorch weights travel with a version whose model came from no directory (trained
        or random here), so `verify` rebuilds the same reference without training again."""
        if model.save_weights:
            save_directory(model.model, version_dir / WEIGHTS_FOLDER, model.training or {})

    # -- judging --------------------------------------------------------------------------------

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                options: VitOptions, inputs: Mapping[str, np.ndarray] | None = None) -> Parity:
        agreement = top1_agreement(reference["logits"], candidate["logits"])
        logits = max_abs_diff(reference["logits"], candidate["logits"])
        details: dict[str, Any] = {"samples": int(len(reference["logits"])), "logits_max_abs_diff": logits}
        if options.precision != "fp32":
            checks = [Check("top1_agreement", agreement, REDUCED_TOP1, True, MEAN)]
        else:
            checks = [Check("logits_max_abs_diff", details["logits_max_abs_diff"], LOGITS_ABS, False),
                      Check("top1_agreement", agreement, 1.0, True, MEAN)]
        if "strip_entropy" in reference:
            entropy = max_abs_diff(reference["strip_entropy"], candidate["strip_entropy"])
            details["strip_entropy_max_abs_diff"] = entropy
            # entropies agree to ~1e-7 in FP32: a flag flips only for an input that sits on the threshold
            same = reference["backdoor_flag"].reshape(-1) == candidate["backdoor_flag"].reshape(-1)
            details["flags_differing"] = int((~same).sum())
            floor = 1.0 if options.precision == "fp32" else REDUCED_TOP1
            checks.append(Check("flag_agreement", float(same.mean()), floor, True, MEAN))
            if options.precision == "fp32":
                checks.append(Check("strip_entropy_max_abs_diff", entropy, ENTROPY_ABS, False))
        return Parity(tuple(checks), details)

    def quality(self, model, options: VitOptions, run) -> dict[str, Any] | None:
        """Reduced precision: accuracy of the exported graph on the whole test split, against the
        FP32 PyTorch model's."""
        if options.precision == "fp32" or not self._digits(model.model):
            return None
        from tritonforge.export.vit.train import accuracy

        pixels, labels = digit_pixels("test")
        predicted = graph_classes(run, pixels)
        reference = accuracy(model.model, pixels, labels)
        exported = float((predicted == labels).mean())
        return {"accuracy": exported, "pytorch_fp32_accuracy": reference,
                "accuracy_drop": reference - exported, "samples": int(len(labels))}

    def parity_advice(self, options: VitOptions) -> str:
        return "Try --graph plain, or report the model"

    # -- the backdoor scan (a publish gate) -----------------------------------------------------

    def gates(self, model, options: VitOptions, io: ModelIO, run, folder: Path) -> list[Check]:
        """The backdoor scan on the reference's weights (the graph matches them: parity ran first);
        the reversed trigger of the suspected class is also run through the exported graph."""
        if not options.scan:
            model.scan_record = {"skipped": True, "by": "--no-scan",
                                 "note": "this model was published without the backdoor scan"}
            return []
        from tritonforge.export.vit.scan import ScanRecipe, scan

        network = model.model
        if not self._digits(network):
            raise TritonForgeError(
                f"the backdoor scan needs clean held-out images of the model's classes; the only ones "
                f"offline are the digits (10 classes, {IMAGE_SIZE}x{IMAGE_SIZE}), and this model takes "
                f"{network.config.num_labels} classes at {network.config.image_size}: pass --no-scan "
                "(the manifest records it) or scan it where its own held-out data is")
        pixels, _labels = digit_pixels("defence")
        pixels = np.array(pixels)
        recipe = ScanRecipe(steps=options.scan_steps, statistic=options.scan_statistic, gap=options.scan_gap)
        fingerprint = scan_fingerprint(network, recipe)
        report = folder / SCAN_FOLDER
        previous = self._previous_scan(report, fingerprint, pixels, run)
        if previous is not None:  # verify: the same weights, already scanned with this recipe
            model.scan_record = previous
            return [Check("backdoor_suspicion", previous["suspicion"], 1.0, False)]
        result = scan(network, pixels, io.labels, recipe)
        record = result.to_json()
        record["data"] = f"the {len(pixels)} clean held-out test digits of the defence split"
        record["fingerprint"] = fingerprint
        stamped = result.stamp(pixels, result.suspect)
        record["exported_graph_trigger_success"] = trigger_success(run, stamped, result.suspect)
        report.mkdir(parents=True, exist_ok=True)
        search = result.searches[result.form]
        np.savez_compressed(report / TRIGGER_FILE, mask=search.masks[result.suspect],
                            pattern=search.patterns[result.suspect], suspect=result.suspect)
        record["files"] = {role: str(Path(SCAN_FOLDER) / Path(file).name)
                           for role, file in result.save_images(report).items()}
        kept = None
        if result.flagged:  # the staging folder goes with the refusal: the report is kept elsewhere
            import time

            source = Path(options.model).name if options.model else f"{options.arch}_digits"
            when = time.strftime("%Y%m%d-%H%M%S")
            kept = Path(options.scan_report).expanduser() / f"{source}-refused-{when}"
            record["files"] = {role: str(kept / Path(file).name) for role, file in record["files"].items()}
        (report / "report.json").write_text(json.dumps(record, indent=2) + "\n")
        if kept is not None:
            shutil.copytree(report, kept, dirs_exist_ok=True)
        model.scan_record = record
        self.last_scan = record
        return [Check("backdoor_suspicion", result.suspicion(result.form), 1.0, False)]

    @staticmethod
    def _previous_scan(report: Path, fingerprint: str, pixels: np.ndarray, run) -> dict[str, Any] | None:
        """A version's own scan, when its weights and recipe are the ones scanned: `verify` runs
        the suspected class's reversed trigger through the graph again and keeps the verdict
        (the search is deterministic for the weights and recipe; `vit scan` runs it anew)."""
        path = report / "report.json"
        if not path.is_file() or not (report / TRIGGER_FILE).is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("fingerprint") != fingerprint:
            return None
        saved = np.load(report / TRIGGER_FILE)
        stamped = stamp(pixels, saved["mask"], saved["pattern"]).astype(np.float32)
        success = trigger_success(run, stamped, int(saved["suspect"]))
        return {**record, "reused_by_verify": True, "exported_graph_trigger_success_now": success}

    def gate_sections(self, model, options: VitOptions) -> Mapping[str, Any]:
        return {"scan": model.scan_record} if model.scan_record else {}

    def gate_advice(self, options: VitOptions, failed: Sequence[Check]) -> str:
        record = getattr(self, "last_scan", None) or {}
        files = record.get("files", {})
        return (f"The scan suspects a backdoor to class {record.get('suspected_class')!r} (anomaly index "
                f"{record.get('anomaly_index')}, threshold 2; its trigger {record.get('separation')}x "
                f"smaller than the next class's, gap {record.get('gap')}): its reversed trigger is "
                f"{files.get('suspected_trigger')} and every class's {files.get('all_triggers')}. Do not "
                "publish a model whose weights you cannot trace to data you trust; --no-scan publishes "
                "it anyway and records that the scan was skipped")

    def summary(self, manifest) -> list[str]:
        source, quality = manifest["source"], manifest.get("quality")
        lines = [f"{source['architecture']} {source['width']}x{source['depth']}, "
                 f"{source['parameters']:,} parameters, weights {source['weights']}, graph "
                 f"{manifest['onnx'].get('graph')}", *super().summary(manifest)]
        if "pytorch_test_accuracy" in source:
            lines.append(f"PyTorch accuracy on the test digits: {source['pytorch_test_accuracy']:.4f}")
        if quality:
            lines.append(f"exported graph's accuracy: {quality['accuracy']:.4f} (drop "
                         f"{100 * quality['accuracy_drop']:.2f} points)")
        scan = manifest.get("scan")
        if scan and scan.get("skipped"):
            lines.append("[yellow]backdoor scan skipped (--no-scan)[/]")
        elif scan:
            lines.append(f"backdoor scan: anomaly index {scan['anomaly_index']} (threshold "
                         f"{scan['threshold']}), smallest trigger for class {scan['suspected_class']}, "
                         f"{scan['separation']}x "
                         f"smaller than the next (gap {scan['gap']})")
        guard = manifest.get("guard")
        if guard:
            lines.append(f"STRIP guard: {guard['bank']} clean images, threshold {guard['threshold']:.4f} "
                         f"(calibrated at {100 * guard['frr']:g}% false rejections), "
                         f"{guard['latency_ratio']}x the classifier's latency (ONNX Runtime, batch 8)")
        return lines

    def commands(self):
        from tritonforge.export.vit.commands import vit_commands

        return vit_commands()


def scan_fingerprint(network, recipe) -> str:
    """sha256 of the weights (in key order) and the scan recipe: what a scan's verdict depends on."""
    import hashlib

    digest = hashlib.sha256(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    for key, tensor in sorted(network.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def graph_classes(run, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    """The exported graph's top class for each image, `batch` at a time."""
    return np.concatenate([run({"pixel_values": np.array(pixels[i:i + batch])})["logits"].argmax(1)
                           for i in range(0, len(pixels), batch)])


def trigger_success(run, stamped: np.ndarray, target: int) -> float:
    """The share of `stamped` images the exported graph sends to `target`."""
    return float((graph_classes(run, stamped) == target).mean())
