"""`report`: every figure of the docs measured in one run, written to docs/benchmarks.md."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tritonforge.cli.base import app, fail
from tritonforge.console import Stages, console, errors, new_table, progress_bar
from tritonforge.errors import TritonForgeError


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="The Markdown file to write (atomically).")
                   ] = Path("docs/benchmarks.md"),
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the figures as JSON here. Default: beside --out (.json).")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="About a minute: bert FP32 only at few iterations, the FP32 export's cost, "
                        "one verify (sr), one bench level of bert_fp32; the other figures are marked "
                        "not measured.")
                     ] = False,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Measure only this section (repeat for several): bert-on-every-runtime, "
                       "export-cost, verify-at-its-defaults, serving, live-updates, families.")] = None,
    workdir: Annotated[Path | None, typer.Option(
        help="Keep the exports, logs and JSON of every command here (default: a temporary folder, "
             "removed at the end).")] = None,
):
    """Measure every figure of the docs in one run and write docs/benchmarks.md.

    The machine (CPU, its AMX / AVX512_BF16 / AVX512_VNNI flags, cores, memory), the git commit,
    the date and the versions head the file; each section runs the project's own commands
    (export, verify, serve, bench, the speed tables) and names the command that reproduces it."""
    from tritonforge.report import report_command, run_report, section_keys
    from tritonforge.report.markdown import write_report

    only = list(only or [])
    try:
        unknown = [key for key in only if key not in section_keys()]
        if unknown:
            raise TritonForgeError(f"--only {', '.join(unknown)}: no such section; choose from "
                                   f"{', '.join(section_keys())}")
        if out.exists() and out.is_dir():
            raise TritonForgeError(f"--out {out} is a folder: give the Markdown file to write")
    except TritonForgeError as exc:
        fail(exc)
    json_path = json_path or out.with_suffix(".json")
    scratch = workdir or Path(tempfile.mkdtemp(prefix="tritonforge-report-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with progress_bar() as progress:
            stages = Stages(progress)
            result = run_report(scratch.resolve(), quick, only, stage=stages, outputs=(out, json_path),
                                on_section=lambda section: progress.console.print(
                                    f"{section.title}: {'failed' if section.error else 'measured'} in "
                                    f"{section.seconds:.0f} s", highlight=False))
            stages.finish()
    except TritonForgeError as exc:
        fail(exc)
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    for section in result.sections:
        print_section(section)
    write_report(result, out, json_path)
    console.print(f"[green]written[/] {out} and {json_path} ({result.machine.label()}; "
                  f"{result.seconds / 60:.1f} min)", highlight=False)
    if workdir is not None:
        console.print(f"exports and logs kept in {workdir}")
    for section in result.failed:
        errors.print(f"[bold red]{section.key} failed[/]: {escape(section.error or '')} "
                     f"(reproduce: {report_command(section.key, quick)})")
    if result.failed:
        raise typer.Exit(1)


def print_section(section) -> None:
    """A section's measured rows as rich tables."""
    from tritonforge.report.sections import NOT_MEASURED

    if section.error:
        console.print(f"[bold red]{escape(section.title)}: failed[/]: {escape(section.error)}")
    for table in section.tables:
        shown = new_table(f"{section.title} ({section.seconds:.0f} s) — reproduce: {table.command}",
                          *table.columns)
        for row in table.rows:
            if not any(NOT_MEASURED in str(c) for c in row):  # the file says which; the terminal need not
                shown.add_row(*(escape(str(c).replace("`", "")) for c in row))
        console.print(shown)
