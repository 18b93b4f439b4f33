"""The `snn` family: a spiking VGG trained with TET on scikit-learn's digits, exported with T fixed,
BatchNorm folded and LIF as comparison + cast + arithmetic reset."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.snn import SnnOptions
from tritonforge.export.snn.model import LIF
from tritonforge.export.snn.train import TrainRecipe, load_checkpoint, save_checkpoint, train
from tritonforge.family import get_family
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model

runner = CliRunner()
EPOCHS = 5  # as the snn_checkpoint fixture trains


def test_lif_integrates_fires_above_threshold_and_resets():
    x = torch.tensor([[0.6, 0.6, 0.6, 2.0, 0.0]]).view(1, 5, 1)  # [B, T, neurons]
    spikes = LIF().eval()(x).view(-1).tolist()
    # u: 0.6, 0.9, 1.05 -> fire and reset to 0, 2.0 -> fire, 0.0
    assert spikes == [0.0, 0.0, 1.0, 1.0, 0.0]


def test_the_triangle_surrogate_passes_gradient_near_the_threshold_only():
    layer = LIF().train()
    x = torch.tensor([[[0.2]], [[0.9]], [[1.0]], [[1.5]], [[2.5]]]).view(5, 1, 1).requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad.view(-1).tolist() == pytest.approx([0.2, 0.9, 1.0, 0.5, 0.0])


def test_training_is_deterministic_for_a_seed():
    first = train(TrainRecipe(epochs=1, seed=3)).state_dict()
    second = train(TrainRecipe(epochs=1, seed=3)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_export_matches_pytorch_on_the_test_digits(snn_repo):
    from tritonforge.serving.repository import ModelRepository

    manifest = ModelRepository(snn_repo).read_manifest("snn_digits")
    checks = {c["metric"]: c["value"] for c in manifest["parity"]["details"]["checks"]}
    assert checks["top1_agreement"] >= 0.995 and checks["spike_rate_max_abs_diff"] <= 0.001
    assert manifest["quality"]["accuracy"] >= 0.95 and manifest["quality"]["samples"] == 360
    report = verify_model(snn_repo, "snn_digits", iterations=2)
    assert report.parity.passed and report.parity.details["samples"] == 360


def test_the_graph_has_no_batchnorm_and_spikes_by_comparison(snn_repo):
    graph = onnx.load(str(snn_repo / "snn_digits" / "1" / "model.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Greater") == 4 * 2  # T = 4 steps x 2 LIF layers
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)  # no custom operator
    assert ops.count("Conv") == 2  # the static image's first conv once, the second folded over B*T


def test_bad_recipes_and_checkpoints_are_refused(tmp_path, snn_checkpoint):
    with pytest.raises(TritonForgeError, match="--timesteps 0 must be at least 1"):
        SnnOptions(timesteps=0)
    result = runner.invoke(app, ["snn", "train", "--timesteps", "0"])
    assert result.exit_code == 2 and "--timesteps 0 must be at least 1" in result.output
    model, recipe = load_checkpoint(snn_checkpoint)
    save_checkpoint(model, TrainRecipe(widths=(8, 16)), tmp_path / "other.pt")  # weights of 16,32
    with pytest.raises(TritonForgeError, match=r"does not fit widths \[8, 16\]"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"weights": np.arange(3)}, tmp_path / "pickled.pt")
    with pytest.raises(TritonForgeError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "pickled.pt")
    with pytest.raises(TritonForgeError, match="this model takes 8x8 images"):
        get_family("snn").sample_inputs(None, SnnOptions(), 2, {"image_size": 16})


def test_int8_keeps_the_digits_and_quantizes_every_conv(tmp_path, snn_checkpoint):
    result = export_model("snn", SnnOptions(checkpoint=str(snn_checkpoint), bits=8), tmp_path)
    assert result.name == "snn_digits_int8" and result.manifest["precision"] == "int8"
    assert result.manifest["parity"]["passed"] and result.manifest["quality"]["accuracy"] >= 0.94
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    assert convs and all(producers.get(node.input[1]) == "DequantizeLinear" for node in convs)
    assert [node.op_type for node in graph.node].count("Greater") == 8  # the LIF stays as it was
    with pytest.raises(TritonForgeError, match="--bits 4 is not offered for spiking models"):
        SnnOptions(bits=4)


# -- streaming: one time step, the membranes as state -------------------------------------


def test_the_streaming_export_is_one_step_with_implicit_state_under_the_sequence_batcher(snn_repo):
    from tritonforge.serving.local import shadow_config
    from tritonforge.serving.repository import ModelRepository

    repository = ModelRepository(snn_repo)
    manifest = repository.read_manifest("snn_digits_stream")
    assert manifest["parity"]["passed"] and manifest["quality"]["accuracy"] >= 0.95
    # The running mean after T frames is the full-sequence model's output.
    assert manifest["onnx"]["stream_vs_full_sequence_max_abs_diff"] <= 1e-5
    graph = onnx.load(str(snn_repo / "snn_digits_stream" / "1" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["frame", "state_in"]
    assert [o.name for o in graph.output] == ["logits", "step_logits", "spike_rates", "state_out"]
    assert [n.op_type for n in graph.node].count("Greater") == 2  # one step x 2 LIF layers
    config = repository.read_config("snn_digits_stream")
    assert config.WhichOneof("scheduling_choice") == "sequence_batching" and not config.model_warmup
    assert [i.name for i in config.input] == ["frame"] and "state_out" not in [o.name for o in config.output]
    (state,) = config.sequence_batching.state
    assert (state.input_name, state.output_name) == ("state_in", "state_out")
    assert list(state.dims) == [manifest["onnx"]["state_size"]] and state.initial_state[0].zero_data
    assert config.sequence_batching.oldest.max_candidate_sequences >= 32
    # The local server's python backend never feeds state back: its shadow hands it to the wrapper.
    shadow = shadow_config(config, threads=2)
    assert not shadow.sequence_batching.state and shadow.sequence_batching.HasField("oldest")
    assert json.loads(shadow.parameters["sequence_state"].string_value) == [
        {"input": "state_in", "output": "state_out", "dims": list(state.dims), "dtype": "float32"}]


def test_streaming_is_refused_where_it_cannot_work(snn_repo):
    with pytest.raises(TritonForgeError, match="--streaming exports FP32 steps only"):
        SnnOptions(streaming=True, bits=8)
    with pytest.raises(TritonForgeError, match="--timesteps 0 must be at least 1"):
        verify_model(snn_repo, "snn_digits_stream", iterations=1, shape={"timesteps": 0})


# -- the TET paper's networks (presets), with random weights: no trained checkpoint offline --


def test_the_vggsnn_preset_exports_on_event_frames_with_every_layer_firing(snn_repo):
    from tritonforge.runtime import ort_session, run_session
    from tritonforge.serving.repository import ModelRepository

    repository = ModelRepository(snn_repo)
    manifest = repository.read_manifest("snn_vggsnn")
    assert manifest["parity"]["passed"] and manifest["source"]["architecture"] == "VGGSNN"
    assert manifest["source"]["weights"].startswith("random")
    assert [list(i.dims) for i in repository.read_config("snn_vggsnn").input] == [[2, 2, 48, 48]]
    recordings = np.load(snn_repo / "snn_vggsnn" / "1" / "samples.npz")["frames"]  # made from photographs
    assert recordings.shape == (32, 2, 2, 48, 48) and recordings.max() >= 1 and recordings.min() == 0
    outputs = run_session(ort_session(snn_repo / "snn_vggsnn" / "1" / "model.onnx"), {"frames": recordings})
    # Random weights scaled from data: every layer fires, so the parity above compared real spikes.
    assert outputs["spike_rates"].shape == (32, 8) and outputs["spike_rates"].mean(0).min() > 0.05
    assert len(set(outputs["logits"].argmax(1).tolist())) > 1


def test_a_reference_checkpoint_exports_and_another_architectures_is_refused(tmp_path):
    from tritonforge.export.snn.presets import ResNet19

    torch.manual_seed(0)
    model = ResNet19(timesteps=2)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "resnet19.pth")
    result = export_model("snn", SnnOptions(arch="resnet19", checkpoint=str(tmp_path / "resnet19.pth"),
                                            timesteps=2), tmp_path / "repo")
    manifest = result.manifest
    assert manifest["source"]["weights"] == "the TET reference's state dict"
    assert manifest["parity"]["details"]["checks"][0]["tolerance"] == 0.995  # a checkpoint: the full bar
    io_record = manifest["io"]["preprocessing"]
    assert (io_record["kind"], io_record["height"], io_record["channels"]) == ("image", 32, 3)
    assert io_record["mean"] == [0.4914, 0.4822, 0.4465]  # the reference's CIFAR-10 normalisation
    assert (tmp_path / "repo" / "snn_resnet19_image" / "config.pbtxt").is_file()
    result = runner.invoke(app, ["export", "snn", "--arch", "vggsnn", "--checkpoint",
                                 str(tmp_path / "resnet19.pth"), "--repo", str(tmp_path / "repo")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "does not fit vggsnn" in output
    assert "features.0.fwd.module.0.weight" in output and "load it as resnet19" in output


def test_presets_need_weights_and_train_only_the_digits_model():
    with pytest.raises(TritonForgeError, match="--arch vggsnn needs --checkpoint FILE"):
        SnnOptions(arch="vggsnn")
    with pytest.raises(TritonForgeError, match="--arch 'alexnet' is unknown"):
        SnnOptions(arch="alexnet")
    result = runner.invoke(app, ["snn", "train", "--arch", "resnet19"])
    assert result.exit_code == 2 and "train them with the TET reference" in " ".join(result.output.split())
