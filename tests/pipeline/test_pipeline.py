"""export and verify as pipelines of named steps: parity batch by batch (outputs whose size
differs between batches, inputs that belong to the whole request) and the publish gates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import typer
from torch import nn
from toy_family import ToyImageFamily, ToyImageOptions
from typer.testing import CliRunner

from tritonforge import family as base
from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.family import Family
from tritonforge.modalities import Tensors
from tritonforge.outputs.metrics import max_abs_diff
from tritonforge.pipeline.export import export_model, export_pipeline
from tritonforge.pipeline.steps import Context, Pipeline, Step
from tritonforge.pipeline.verify import verify_model, verify_pipeline
from tritonforge.serving.repository import ModelRepository
from tritonforge.spec import Check, ModelIO, Parity, TensorSpec
from tritonforge.verify.parity import parity_check

# -- the pipelines as data -------------------------------------------------------------------


def test_export_and_verify_are_lists_of_named_steps():
    assert [step.name for step in export_pipeline().walk()] == [
        "load", "io", "export", "graph", "guards", "runtime", "parity", "gates", "quality", "manifest",
        "publish"]
    assert [step.name for step in verify_pipeline().walk()] == [
        "load", "parity", "gates", "quality", "triton parity", "latency", "serving latency"]


@dataclass
class Note(Step):
    """Appends its word to the context's inputs; fails on "boom", skips "later"."""

    name: ClassVar[str] = "note"
    word: str = ""

    def skip(self, context: Context) -> bool:
        return self.word == "later"

    def run(self, context: Context) -> None:
        if self.word == "boom":
            raise TritonForgeError("boom")
        context.inputs.setdefault("words", []).append(self.word)


def test_each_step_ends_done_skipped_or_failed_and_a_failure_stops_the_rest():
    pipeline = Pipeline([Note(word="load"), Note(word="later"), Note(word="boom"), Note(word="never")])
    context = Context(family=None, options=None, progress=lambda _d, _t=0: (lambda: None), inputs={})
    with pytest.raises(TritonForgeError, match="boom"):
        pipeline.run(context)
    assert [status for _name, status in pipeline.report()] == ["done", "skipped", "failed", "pending"]
    assert context.inputs["words"] == ["load"]


# -- parity batch by batch -------------------------------------------------------------------


class NumpySession:
    """ONNX Runtime's session interface (`get_inputs`, `get_outputs`, `run`) over a numpy
    function: the candidate runtime, recording every feed it gets."""

    def __init__(self, function, inputs: list[str], outputs: list[str]):
        self.function, self.feeds = function, []
        self._inputs = [SimpleNamespace(name=n) for n in inputs]
        self._outputs = [SimpleNamespace(name=n) for n in outputs]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feed):
        self.feeds.append(dict(feed))
        outputs = self.function(feed)
        return [outputs[name] for name in names]


class Prefix(nn.Module):
    """values [N, 12] cut to the longest sequence of the batch: [N, max(lengths)]."""

    def forward(self, lengths, values):
        return values[:, : int(lengths.max())]


class ScoreVocabulary(nn.Module):
    """queries [N, D] against a vocabulary [V, D] sent with the request: scores [N, V]."""

    def forward(self, queries, vocabulary):
        return queries @ vocabulary.T


@dataclass(frozen=True)
class NoOptions:
    pass


class ArrayFamily(Family):
    """A family used through parity_check only: `model` and `io` are given."""

    name = "toy_arrays"
    options_type = NoOptions

    def __init__(self, model: nn.Module, io: ModelIO, inputs: dict[str, np.ndarray]):
        self.model, self._io, self.inputs = model, io, inputs

    def load(self, options, stage=None):
        return self.model.eval()

    def io(self, model, options) -> ModelIO:
        return self._io

    def sample_inputs(self, model, options, n, shape=None):
        return self.inputs

    def export(self, model, path, options):
        raise NotImplementedError("used through parity_check only")

    def compare(self, reference, candidate, options, inputs=None) -> Parity:
        (name,) = self._io.output_names
        ref, cand = reference[name], candidate[name]
        if ref.shape != cand.shape:
            return Parity((Check("max_abs_diff", float("inf"), 1e-6, False),), {"samples": len(ref)})
        return Parity((Check("max_abs_diff", max_abs_diff(ref, cand), 1e-6, False),),
                      {"samples": len(ref), "width": int(ref.shape[1])})

    def default_name(self, options) -> str:
        return "toy_arrays"


LENGTHS = np.array([1, 2, 3, 4] * 2 + [5, 6] * 4 + [12, 7, 8, 9], dtype=np.int64)  # widths 4, 6, 12
RAGGED_IO = ModelIO((TensorSpec("lengths", "int64", ()), TensorSpec("values", "float32", (12,))),
                    (TensorSpec("prefix", "float32", (-1,)),), Tensors())
RAGGED = ArrayFamily(Prefix(), RAGGED_IO,
                     {"lengths": LENGTHS, "values": np.arange(20 * 12, dtype=np.float32).reshape(20, 12) / 7})


def ragged_parity(error_in_batch: int | None = None) -> Parity:
    def prefix(feed):
        out = feed["values"][:, : feed["lengths"].max()].copy()
        if error_in_batch is not None and len(session.feeds) == error_in_batch + 1:
            out[0, 0] += 0.5
        return {"prefix": out}

    session = NumpySession(prefix, ["lengths", "values"], ["prefix"])
    return parity_check(RAGGED, RAGGED.load(NoOptions()), NoOptions(), RAGGED_IO, session, RAGGED.inputs,
                        batch_size=8)


def test_parity_compares_batches_whose_outputs_differ_in_width():
    parity = ragged_parity()
    assert parity.passed and parity.primary.value == 0.0
    assert parity.details == {"samples": 20, "width": 4}  # all equal: the first batch stands


def test_a_miss_in_one_batch_fails_parity_with_that_batchs_details():
    parity = ragged_parity(error_in_batch=1)
    assert not parity.passed and parity.primary.value == pytest.approx(0.5)
    assert parity.details == {"samples": 20, "width": 6}


def test_a_request_input_is_sent_whole_with_every_batch():
    vocabulary = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    queries = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    io = ModelIO((TensorSpec("queries", "float32", (4,)), TensorSpec("vocabulary", "float32", (-1, 4))),
                 (TensorSpec("scores", "float32", (-1,)),), Tensors(), request_inputs=("vocabulary",))
    family = ArrayFamily(ScoreVocabulary(), io, {"queries": queries, "vocabulary": vocabulary})
    session = NumpySession(lambda feed: {"scores": feed["queries"] @ feed["vocabulary"].T},
                           ["queries", "vocabulary"], ["scores"])
    model = family.load(NoOptions())
    parity = parity_check(family, model, NoOptions(), io, session, family.inputs, batch_size=8)
    assert parity.passed and parity.details == {"samples": 20, "width": 3}
    assert [len(feed["queries"]) for feed in session.feeds] == [8, 8, 4]
    assert all(np.array_equal(feed["vocabulary"], vocabulary) for feed in session.feeds)


# -- publish gates ---------------------------------------------------------------------------


class GatedToy(ToyImageFamily):
    """toy_image with two publish gates on the exported graph: its largest logit on a black
    image (run through the graph), and the size of its model.onnx (read from the folder)."""

    name = "toy_gated"
    max_logit: ClassVar[float] = 10.0  # the gate's bar; a test lowers it

    def default_name(self, options: ToyImageOptions) -> str:
        return "toy_gated"

    def gates(self, model, options, io, run, folder) -> list[Check]:
        black = np.zeros((1, 3, options.image_size, options.image_size), np.float32)
        logit = float(np.abs(run({"pixel_values": black})["logits"]).max())
        return [Check("black_image_max_abs_logit", logit, self.max_logit, False),
                Check("onnx_kilobytes", (folder / "model.onnx").stat().st_size / 1e3, 100.0, False)]

    def gate_advice(self, options: ToyImageOptions, failed) -> str:
        failed = ", ".join(gate.metric for gate in failed)
        return f"Draw other weights (--seed {options.seed + 1}); failed: {failed}"


@pytest.fixture
def gated(monkeypatch) -> GatedToy:
    family = GatedToy()
    monkeypatch.setattr(base, "_REGISTRY", {**base._REGISTRY, "toy_gated": family})  # this test only
    return family


def test_a_failed_gate_publishes_nothing_and_says_what_to_do(gated, tmp_path, monkeypatch):
    monkeypatch.setattr(GatedToy, "max_logit", 0.0)
    with pytest.raises(TritonForgeError, match=r"failed 1 of its 2 publish gates \(black_image_max_abs_logit "
                                               r"[0-9.e-]+ <= 0 FAILED, onnx_kilobytes [0-9.]+ <= 100 ok\); "
                                               r"nothing was written\. Draw other weights \(--seed 1\); "
                                               r"failed: black_image_max_abs_logit"):
        export_model("toy_gated", ToyImageOptions(), tmp_path)
    assert ModelRepository(tmp_path).models() == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_passed_gates_land_in_the_manifest_and_in_verify(gated, tmp_path, monkeypatch):
    result = export_model("toy_gated", ToyImageOptions(), tmp_path)
    gates = result.manifest["gates"]
    assert [(g["metric"], g["passed"]) for g in gates] == [("black_image_max_abs_logit", True),
                                                           ("onnx_kilobytes", True)]
    assert json.loads((result.folder / "tritonforge.json").read_text())["gates"] == gates
    assert any(line.startswith("publish gates: black_image_max_abs_logit")
               for line in gated.summary(result.manifest))

    report = verify_model(tmp_path, "toy_gated", samples=8, iterations=1)
    assert report.passed and report.to_json()["gates"] == gates  # the same graph, the same figures

    monkeypatch.setattr(GatedToy, "max_logit", 0.0)  # a stricter gate than at export
    report = verify_model(tmp_path, "toy_gated", samples=8, iterations=1)
    assert report.parity.passed and not report.passed
    assert [g["passed"] for g in report.to_json()["gates"]] == [False, True]
    result = CliRunner().invoke(app, ["verify", "toy_gated", "--repo", str(tmp_path), "--samples", "8",
                                      "--iterations", "1"])
    assert result.exit_code == 1, result.output
    assert "gate FAILED" in result.output and "black_image_max_abs_logit" in result.output


def test_families_without_gates_record_none(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", {**base._REGISTRY, "toy_image": ToyImageFamily()})
    result = export_model("toy_image", ToyImageOptions(), tmp_path)
    assert result.manifest["gates"] == [] and result.manifest["parity"]["passed"]
    assert verify_model(tmp_path, "toy_image", samples=8, iterations=1).to_json()["gates"] == []


class PublishingToy(ToyImageFamily):
    """toy_image with a command of its own that publishes, as EMT's `emt tune` does."""

    name = "toy_publishing"

    def commands(self):
        commands = typer.Typer()

        @commands.command()
        def publish(ctx: typer.Context, repo: str) -> None:
            result = ctx.obj.export_model(self, ToyImageOptions(), repo)
            typer.echo(f"published version {result.version} of {result.name}")

        return commands


def test_a_family_command_publishes_through_the_pipeline_the_cli_hands_it(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", {**base._REGISTRY, "toy_publishing": PublishingToy()})
    result = CliRunner().invoke(app, ["toy_publishing", "publish", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "published version 1 of toy_image" in result.output
    assert ModelRepository(tmp_path).versions("toy_image") == [1]
