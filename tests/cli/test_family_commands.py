"""A family's own commands run as `tritonforge <family> ...`, beside the generated ones."""

from __future__ import annotations

from toy_family import ToyImageFamily, ToyImageOptions
from typer.testing import CliRunner

from tritonforge.cli import app

runner = CliRunner()


def test_a_family_command_runs_under_the_family_name(tmp_path):
    family = ToyImageFamily()
    options = ToyImageOptions()
    io = family.io(family.load(options), options)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(bytes(io.preprocessing.sample_raw(1)[0]))
    result = runner.invoke(app, ["toy_image", "predict", str(photo)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("photo.jpg: class_")


def test_a_family_without_commands_and_an_unknown_name_are_not_commands():
    assert "No such command 'bert'" in runner.invoke(app, ["bert"]).output
    assert "No such command 'resnet'" in runner.invoke(app, ["resnet"]).output


def test_the_generated_export_command_lists_the_family_options():
    result = runner.invoke(app, ["export", "toy_image", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--image-size", "--classes", "--resize", "--seed", "--name", "--repo", "--max-batch",
                   "--force"):
        assert option in result.output
