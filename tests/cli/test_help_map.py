"""`tritonforge --help` as a map: the commands in the order of the work, one line each, and the
families' own command groups named without importing a family."""

from __future__ import annotations

import json
import subprocess
import sys

import typer

from tritonforge.cli import app
from tritonforge.cli.families import COMMAND_ORDER, one_line
from tritonforge.family import BUILTIN_COMMANDS

# Prints the root help at 100 columns and says which built-in family packages that imported.
LISTING = """
import json, sys
from typer.testing import CliRunner
from tritonforge.cli import app
result = CliRunner().invoke(app, ["--help"], terminal_width=100)
from tritonforge.family import _BUILTIN_MODULES
families = sorted(m for m in sys.modules if m in _BUILTIN_MODULES.values())
print(json.dumps({"code": result.exit_code, "output": result.output, "imported": families}))
"""


def root_help() -> dict:
    done = subprocess.run([sys.executable, "-c", LISTING], capture_output=True, text=True, check=True,
                          env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    return json.loads(done.stdout)


def listed(output: str) -> list[tuple[str, str]]:
    """(command, summary) per row of the help's command panels; a summary broken over two rows
    would show as a row with no command."""
    rows = []
    for line in output.splitlines():
        if line.startswith("│ ") and not line.startswith("│ --"):
            cells = line.strip("│ ").split(None, 1)
            rows.append((cells[0], cells[1].strip() if len(cells) > 1 else ""))
    return rows


def test_help_lists_export_first_one_line_each_and_every_family_command_without_importing_them():
    shown = root_help()
    assert shown["code"] == 0 and shown["imported"] == []
    rows = listed(shown["output"])
    names = [name for name, _summary in rows]
    assert names[0] == "export"
    shared = [n for n in names if n not in BUILTIN_COMMANDS]
    assert shared == [n for n in COMMAND_ORDER if n in shared]  # the order of the work
    assert {"verify", "serve", "query", "bench", "soak", "push", "plan", "deploy"} <= set(shared)
    assert sorted(BUILTIN_COMMANDS) == names[len(shared):] == ["dask", "emt", "nas", "ov3d", "snn",
                                                                   "spikedepth", "vit"]
    assert "Family commands" in shown["output"]
    for name, summary in rows:  # every row is a command with its whole summary on it
        assert name.isidentifier() or "-" in name, (name, summary)
        assert summary.endswith("."), (name, summary)


def test_a_family_command_still_runs_its_own_group():
    command = typer.main.get_command(app)
    ctx = command.make_context("tritonforge", ["snn", "--help"], resilient_parsing=True)
    group = command.get_command(ctx, "snn")
    assert "train" in group.list_commands(ctx)
    assert "\n" not in group.get_command(ctx, "train").short_help


def test_one_line_keeps_the_first_sentence_and_ignores_colons_in_parentheses():
    assert one_line("Send one request (a stream: one per frame).\n\nMore.") == (
        "Send one request (a stream: one per frame).")
    assert one_line("Sustained load with every answer checked: requests\n    alternate") == (
        "Sustained load with every answer checked.")
    assert one_line("Version 1.5 stays whole. Then more") == "Version 1.5 stays whole."
    assert one_line(None) == ""
