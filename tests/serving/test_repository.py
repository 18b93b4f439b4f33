"""The model repository: versions, names, atomic writes, and nothing lost on failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import BertOptions
from tritonforge.modalities import Tensors
from tritonforge.pipeline.export import export_model
from tritonforge.serving.repository import ModelRepository
from tritonforge.spec import ModelIO, TensorSpec
from tritonforge.triton_config import ServingOptions, model_config, validate_name

IO = ModelIO((TensorSpec("x", "float32", (-1,)),), (TensorSpec("y", "float32", (4,)),), Tensors())


def write_file(name: str, text: str):
    def populate(folder: Path, version: int) -> None:
        (folder / name).write_text(f"{text} v{version}")
    return populate


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_each_write_adds_the_next_version(tmp_path):
    repository = ModelRepository(tmp_path)
    config = model_config("m", IO, ServingOptions())
    assert repository.write_version("m", config, write_file("a.txt", "first")) == 1
    assert repository.write_version("m", config, write_file("a.txt", "second")) == 2
    assert repository.versions("m") == [1, 2]
    assert (tmp_path / "m" / "1" / "a.txt").read_text() == "first v1"
    assert repository.models() == ["m"]


def test_version_policy_all_keeps_every_version_served_and_latest_serves_the_newest(tmp_path):
    from tritonforge.triton_config import config_text, parse_config

    every = parse_config(config_text(model_config("m", IO, ServingOptions(version_policy="all"))))
    assert every.version_policy.WhichOneof("policy_choice") == "all"
    latest = parse_config(config_text(model_config("m", IO, ServingOptions())))
    assert latest.version_policy.latest.num_versions == 1  # Triton's default, written out
    with pytest.raises(TritonForgeError, match="version policy 'every' is unknown: choose latest"):
        ServingOptions(version_policy="every")


def test_existing_version_is_replaced_only_with_force(tmp_path):
    repository = ModelRepository(tmp_path)
    config = model_config("m", IO, ServingOptions())
    repository.write_version("m", config, write_file("a.txt", "served"))
    with pytest.raises(TritonForgeError, match="already exists and may be served"):
        repository.write_version("m", config, write_file("a.txt", "new"), version=1)
    assert (tmp_path / "m" / "1" / "a.txt").read_text() == "served v1"
    repository.write_version("m", config, write_file("b.txt", "new"), version=1, force=True)
    assert sorted(p.name for p in (tmp_path / "m" / "1").iterdir()) == ["b.txt"]


def test_changed_inputs_outputs_need_another_name_or_force(tmp_path):
    repository = ModelRepository(tmp_path)
    repository.write_version("m", model_config("m", IO, ServingOptions()), write_file("a", "1"))
    other = ModelIO(IO.inputs, (TensorSpec("y", "float32", (5,)),), Tensors())
    with pytest.raises(TritonForgeError, match="inputs/outputs differ"):
        repository.write_version("m", model_config("m", other, ServingOptions()), write_file("a", "2"))
    assert repository.versions("m") == [1]


@pytest.mark.parametrize("name", ["a/b", "..", "../escape", ".hidden", "a..b", "", "x" * 200])
def test_names_that_could_escape_or_hide_are_rejected(name):
    with pytest.raises(TritonForgeError, match="not allowed"):
        validate_name(name)


def test_unwritable_repository_is_reported_before_any_work(tmp_path, tiny_bert):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(TritonForgeError, match="cannot write the model repository"):
        export_model("bert", BertOptions(model=str(tiny_bert)), blocker / "repo")


def test_failure_while_building_leaves_the_repository_as_it_was(tmp_path):
    repository = ModelRepository(tmp_path)
    config = model_config("m", IO, ServingOptions())
    repository.write_version("m", config, write_file("a.txt", "kept"))
    before = snapshot(tmp_path)

    def interrupted(folder: Path, version: int) -> None:
        (folder / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        repository.write_version("m", config, interrupted)
    assert snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_brand_new_model_appears_whole_or_not_at_all(tmp_path):
    repository = ModelRepository(tmp_path)

    def failing(folder: Path, version: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        repository.write_version("fresh", model_config("fresh", IO, ServingOptions()), failing)
    assert list(tmp_path.iterdir()) == []


def export_in_background_until_staging(repo: Path, model: Path) -> subprocess.Popen:
    """Start `tritonforge export bert` and return once its staging folder exists (beside `repo`)."""
    command = [sys.executable, "-m", "tritonforge.cli", "export", "bert", "--model", str(model),
               "--repo", str(repo)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    area = ModelRepository(repo).staging_area()
    while not list(area.glob("staging-*")):
        assert process.poll() is None, "export finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return process


def test_export_killed_midway_leaves_versions_untouched(tmp_path, tiny_bert):
    export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), tmp_path)
    before = snapshot(tmp_path)
    process = export_in_background_until_staging(tmp_path, tiny_bert)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(".")} == before
    assert ModelRepository(tmp_path).versions("bert_fp32") == [1]
    # The next export cleans up after the killed one and takes version 2.
    result = export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), tmp_path)
    assert result.version == 2
    assert not list(ModelRepository(tmp_path).staging_area().glob("staging-*"))


def test_sigterm_unwinds_and_removes_the_staging_folder(tmp_path, tiny_bert):
    process = export_in_background_until_staging(tmp_path, tiny_bert)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "nothing was published" in stderr
    assert list(tmp_path.iterdir()) == []
