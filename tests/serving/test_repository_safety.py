"""ModelRepository.check_safe: nothing in a repository may make Triton (or `serve`'s shadow,
which links every file) read outside it, and every model folder has a plain name."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.modalities import Tensors
from tritonforge.serving.local import write_shadow_repository
from tritonforge.serving.repository import ModelRepository
from tritonforge.spec import ModelIO, TensorSpec
from tritonforge.triton_config import CONFIG_FILE, ServingOptions, model_config

IO = ModelIO((TensorSpec("x", "float32", (-1,)),), (TensorSpec("y", "float32", (4,)),), Tensors())


def add_model(root: Path, name: str) -> Path:
    """A model `name` with version 1 holding one file, written as an export writes it."""
    def populate(folder: Path, _version: int) -> None:
        (folder / "model.onnx").write_bytes(b"onnx")

    ModelRepository(root).write_version(name, model_config(name, IO, ServingOptions()), populate)
    return root / name


def ls(repo: Path):
    return CliRunner().invoke(app, ["ls", "--repo", str(repo)])


def test_a_version_file_linked_to_etc_passwd_is_refused_by_ls_and_serve(tmp_path):
    repo = tmp_path / "repo"
    link = add_model(repo, "clf") / "1" / "labels.txt"
    link.symlink_to("/etc/passwd")

    result = ls(repo)
    assert result.exit_code == 2
    assert str(link) in result.output.replace("\n", "") and "/etc/passwd" in result.output
    with pytest.raises(TritonForgeError, match="labels.txt is a link to /etc/passwd, outside"):
        write_shadow_repository(repo, tmp_path / "shadow")
    assert not (tmp_path / "shadow").exists()  # refused before anything was written


def test_a_model_folder_linked_to_a_folder_that_is_not_a_model_is_refused(tmp_path):
    repo = tmp_path / "repo"
    add_model(repo, "clf")
    (tmp_path / "secrets").mkdir()
    (repo / "stolen").symlink_to(tmp_path / "secrets")

    with pytest.raises(TritonForgeError, match=f"stolen is a link to {tmp_path / 'secrets'}, which is "
                                               "not a model folder"):
        ModelRepository(repo).check_safe()


def test_a_model_folder_linked_to_a_model_of_another_repository_is_accepted(tmp_path):
    shared = add_model(tmp_path / "shared", "tiny")  # as tests/live/conftest.py `served_repo` does
    repo = tmp_path / "repo"
    add_model(repo, "clf")
    (repo / "tiny").symlink_to(shared)

    ModelRepository(repo).check_safe()
    assert write_shadow_repository(repo, tmp_path / "shadow") == ["clf", "tiny"]
    assert ls(repo).exit_code == 0


def test_a_link_that_stays_inside_the_repository_is_accepted(tmp_path):
    repo = tmp_path / "repo"
    add_model(repo, "clf")
    (add_model(repo, "other") / "1" / "model.onnx").unlink()
    (repo / "other" / "1" / "model.onnx").symlink_to(repo / "clf" / "1" / "model.onnx")

    ModelRepository(repo).check_safe()


def test_a_model_folder_with_a_bad_name_is_refused_naming_it(tmp_path):
    repo = tmp_path / "repo"
    add_model(repo, "clf")
    (repo / "bad name").mkdir()
    (repo / "bad name" / CONFIG_FILE).write_text('name: "bad name"\n')

    result = ls(repo)
    assert result.exit_code == 2 and "'bad name' is not allowed" in result.output
    with pytest.raises(TritonForgeError, match="bad name: model name 'bad name' is not allowed"):
        write_shadow_repository(repo, tmp_path / "shadow")


def test_hidden_entries_are_ignored(tmp_path):
    repo = tmp_path / "repo"
    add_model(repo, "clf")
    (repo / ".cache").symlink_to("/etc")

    ModelRepository(repo).check_safe()
