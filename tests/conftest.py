"""Shared fixtures: tiny random BERT checkpoints (fast) and one real MiniLM export (parity)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tritonforge.export.bert.model import embedded_model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def save_tiny_bert(folder: Path, classifier: bool = False, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's real tokenizer, randomly initialised."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    if classifier:
        config.num_labels = 3
        config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
        config.label2id = {v: k for k, v in config.id2label.items()}
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        source = embedded_model_dir() / name
        if source.is_file():
            shutil.copy(source, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, tiny_bert) -> Path:
    """The tiny encoder exported as `tiny` (with `tiny_text`), alone in its repository; shared
    by the whole session, so read-only (copy it to change it)."""
    from tritonforge.export.bert import BertOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("tiny_repo")
    export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), repo, name="tiny")
    return repo


@pytest.fixture(scope="session")
def tiny_bert_retrained(tmp_path_factory) -> Path:
    """The tiny encoder with other weights (another seed): a new version that answers differently."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_retrained"), seed=1)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_classifier"), classifier=True)


@pytest.fixture(scope="session")
def minilm_repo(tmp_path_factory) -> Path:
    """The embedded MiniLM exported once (FP32) into a repository shared by read-only tests."""
    from tritonforge.export.bert import BertOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("minilm_repo")
    export_model("bert", BertOptions(), repo)
    return repo


@pytest.fixture(scope="session")
def detr_repo(tmp_path_factory) -> Path:
    """DETR, Deformable DETR and MTTrans exported once: tiny random detectors at 128 x 128, top 20."""
    from tritonforge.export.detr import DetrOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("detr_repo")
    for arch in ("detr", "deformable", "mttrans"):
        export_model("detr", DetrOptions(arch=arch, size="tiny", image_size=128, top_k=20), repo)
    return repo


SNN_EPOCHS = 5  # 98.6% on the test digits here, in seconds


@pytest.fixture(scope="session")
def snn_checkpoint(tmp_path_factory) -> Path:
    """The digits spiking VGG trained through `tritonforge snn train` (TET, T = 4)."""
    from typer.testing import CliRunner

    from tritonforge.cli import app

    path = tmp_path_factory.mktemp("snn") / "digits.pt"
    result = CliRunner().invoke(app, ["snn", "train", "--epochs", str(SNN_EPOCHS), "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert f"epoch   {SNN_EPOCHS}/{SNN_EPOCHS}" in result.output
    return path


@pytest.fixture(scope="session")
def snn_repo(tmp_path_factory, snn_checkpoint) -> Path:
    from tritonforge.export.snn import SnnOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("snn_repo")
    export_model("snn", SnnOptions(checkpoint=str(snn_checkpoint)), repo)  # snn_digits (+ _image)
    export_model("snn", SnnOptions(checkpoint=str(snn_checkpoint), streaming=True), repo)  # _stream
    # The TET paper's VGGSNN on event frames, random weights (no trained checkpoint offline), T = 2.
    export_model("snn", SnnOptions(arch="vggsnn", random_init=True, timesteps=2), repo)  # snn_vggsnn
    return repo


@pytest.fixture(scope="session")
def dask_checkpoint(tmp_path_factory) -> Path:
    """A DASK classifier fine-tuned through `tritonforge dask train` on 320 airline tweets (one
    epoch, about half a minute: its labels have margins, unlike a barely trained head's)."""
    from typer.testing import CliRunner

    from tritonforge.cli import app

    out = tmp_path_factory.mktemp("dask") / "classifier"
    result = CliRunner().invoke(app, ["dask", "train", "--train-size", "320", "--epochs", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output and "technology test accuracy" in result.output
    return out


@pytest.fixture(scope="session")
def dask_repo(tmp_path_factory, dask_checkpoint) -> Path:
    from tritonforge.export.dask import DaskOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("dask_repo")
    export_model("dask", DaskOptions(checkpoint=str(dask_checkpoint), max_length=64), repo)
    return repo


@pytest.fixture
def bf16() -> None:
    """Skips a test that exports or runs BF16 on a CPU without native bfloat16, and in a run as
    if on one (TRITONFORGE_NO_BF16=1)."""
    from tritonforge.runtime import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("no native bfloat16 here (no AVX512_BF16 or AMX, or TRITONFORGE_NO_BF16=1): "
                    "OpenVINO cannot run a BF16 artifact")


@pytest.fixture(scope="session")
def vit_models(tmp_path_factory) -> dict[str, Path]:
    """The digits ViT trained through `tritonforge vit train` (the default recipe), and two
    DELIBERATELY BACKDOORED copies made through `tritonforge vit poison` (patch and blend
    triggers, target class 3): the positive controls of the backdoor screens."""
    from typer.testing import CliRunner

    from tritonforge.cli import app

    root = tmp_path_factory.mktemp("vit")
    models = {"clean": root / "clean", "patch": root / "patch", "blend": root / "blend"}
    result = CliRunner().invoke(app, ["vit", "train", "--out", str(models["clean"])])
    assert result.exit_code == 0, result.output
    assert "epoch  40/40" in result.output
    for trigger in ("patch", "blend"):
        result = CliRunner().invoke(app, ["vit", "poison", "--model", str(models["clean"]), "--trigger",
                                          trigger, "--target", "3", "--out", str(models[trigger])])
        assert result.exit_code == 0, result.output
        assert "DELIBERATELY BACKDOORED" in result.output
    return models


@pytest.fixture(scope="session")
def vit_repo(tmp_path_factory, vit_models) -> Path:
    """The clean digits ViT exported with its scan (`vit_fp32`, + `_image`) and the patch-poisoned
    control exported with the STRIP guard and the scan skipped (`vit_fp32_strip`, + `_image`)."""
    from tritonforge.export.vit import VitOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("vit_repo")
    export_model("vit", VitOptions(model=str(vit_models["clean"]), scan=False), repo)
    export_model("vit", VitOptions(model=str(vit_models["patch"]), scan=False, guard="strip:16"), repo)
    return repo


@pytest.fixture(scope="session")
def spikedepth_checkpoint(tmp_path_factory) -> Path:
    """A UGDF spike-depth network trained through `tritonforge spikedepth train` on 16 procedural
    scenes for one epoch, window T = 8: an untrained-quality model whose graphs exercise every
    path (unpacking, cost volume, fusion) in seconds."""
    from typer.testing import CliRunner

    from tritonforge.cli import app

    path = tmp_path_factory.mktemp("spikedepth") / "ugdf.pt"
    result = CliRunner().invoke(app, ["spikedepth", "train", "--scenes", "16", "--epochs", "1", "--window",
                                      "8", "--eval-scenes", "8", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="session")
def spikedepth_repo(tmp_path_factory, spikedepth_checkpoint) -> Path:
    """That network exported windowed (`spikedepth_ugdf`, + `_spikes` taking .dat bytes) and
    streaming (`spikedepth_ugdf_stream`, one frame per camera per request)."""
    from tritonforge.export.spikedepth import SpikeDepthOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("spikedepth_repo")
    export_model("spikedepth", SpikeDepthOptions(checkpoint=str(spikedepth_checkpoint), eval_scenes=16), repo)
    export_model("spikedepth", SpikeDepthOptions(checkpoint=str(spikedepth_checkpoint), streaming=True), repo)
    return repo


@pytest.fixture(scope="session")
def ov3d_checkpoint(tmp_path_factory) -> Path:
    """An open-vocabulary detector trained through `tritonforge ov3d train` on 8 procedural rooms
    for one epoch, small (512 points, 64 centres, 16 queries, width 32): untrained quality, every
    path of the graph and the training (pseudo boxes, the tag bags, the debiased contrast)
    exercised in seconds."""
    from typer.testing import CliRunner

    from tritonforge.cli import app

    path = tmp_path_factory.mktemp("ov3d") / "ov3d.pt"
    result = CliRunner().invoke(app, ["ov3d", "train", "--rooms", "8", "--epochs", "1", "--eval-rooms", "4",
                                      "--num-points", "512", "--centres", "64", "--queries", "16", "--width",
                                      "32", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="session")
def ov3d_repo(tmp_path_factory, ov3d_checkpoint) -> Path:
    """That detector exported FP32 for ONNX Runtime (`ov3d`)."""
    from tritonforge.export.ov3d import Ov3dOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("ov3d_repo")
    export_model("ov3d", Ov3dOptions(checkpoint=str(ov3d_checkpoint), eval_rooms=4), repo)
    return repo
