"""Commands generated from each family's options: `export <family>`, `quality <family>`,
`speed <family>`, and a family's own commands (`snn train`, `emt tune`), found lazily by name."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from tritonforge.cli.base import (
    app,
    export_app,
    friendly,
    quality_app,
    speed_app,
)
from tritonforge.command_options import (
    DEFAULT_REPO,
    RepoOption,
    common_parameter,
)
from tritonforge.console import Stages, console, new_table, progress_bar
from tritonforge.errors import TritonForgeError
from tritonforge.triton_config import VERSION_POLICY_HELP


def option_parameters(options_type: type) -> list[inspect.Parameter]:
    """One CLI option per field of a family's options dataclass (fields marked cli=False are
    recipe details with no option); the help text comes from `option(help=...)`."""
    hints = typing.get_type_hints(options_type)
    parameters = []
    for item in dataclasses.fields(options_type):
        if not item.metadata.get("cli", True):
            continue
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = inspect.Parameter.empty
        # cli_type: how the option is typed on the command line when the field takes more than one
        # kind of value (--bits 8 or --bits auto); the dataclass parses it.
        kind = item.metadata.get("cli_type", hints[item.name])
        annotation = Annotated[kind, typer.Option(help=item.metadata.get("help", ""))]
        parameters.append(inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return parameters


def generated_command(function: Callable, options_type: type, common: list[inspect.Parameter],
                      doc: str, omit: tuple[str, ...] = ()) -> Callable:
    """`function(options, **common)` as a typer command whose options are the dataclass's (but
    the fields in `omit`, which keep their defaults: the command varies them itself)."""
    names = {p.name for p in common}
    fields = [p for p in option_parameters(options_type) if p.name not in omit]
    clash = names & {p.name for p in fields}
    if clash:
        raise TritonForgeError(f"{options_type.__name__} has fields {sorted(clash)} that the command "
                               "itself takes: rename them")

    @friendly
    def command(**kwargs):
        shared = {name: kwargs.pop(name) for name in names}
        return function(options_type(**kwargs), **shared)

    command.__wrapped__.__signature__ = inspect.Signature([*fields, *common])
    command.__doc__ = doc
    return command


EXPORT_PARAMETERS = [
    common_parameter("name", Annotated[str | None, typer.Option(
        help="Model name. Default: the family's, from the recipe (e.g. bert_w6a6, detr_fp32).")], None),
    common_parameter("repo", RepoOption, DEFAULT_REPO),
    common_parameter("max_batch", Annotated[int, typer.Option(help="Triton max_batch_size.")], 32),
    common_parameter("version", Annotated[int | None, typer.Option(
        help="Version number. Default: the next one.")], None),
    common_parameter("force", Annotated[bool, typer.Option(
        help="Replace an existing version or config.")], False),
    common_parameter("version_policy", Annotated[str, typer.Option(
        metavar="latest|all|specific:N,M", help=VERSION_POLICY_HELP)], "latest"),
]


def export_command(family) -> Callable:
    def run(options, name, repo, max_batch, version, force, version_policy) -> None:
        from tritonforge.pipeline.export import export_model
        from tritonforge.triton_config import ServingOptions, validate_name

        if name is not None:
            validate_name(name)  # "" too: it would otherwise mean the default name
        serving = ServingOptions(max_batch_size=max_batch, version_policy=version_policy)

        with progress_bar() as progress:
            stages = Stages(progress)
            result = export_model(family, options, repo, name, serving, version, force, stages)
            stages.finish()
        console.print(f"[green]exported[/] {result.folder}")
        for line in family.summary(result.manifest):
            console.print(line)

    doc = (type(family).__doc__ or f"A {family.name} model.").strip().splitlines()[0]
    doc = f"Export {doc[0].lower()}{doc[1:]} Writes a new version into the model repository."
    return generated_command(run, family.options_type, EXPORT_PARAMETERS, doc)


QUALITY_PARAMETERS = [
    common_parameter("json_path", Annotated[Path | None, typer.Option(
        "--json", help="Write the table here.")], None),
    common_parameter("plot", Annotated[Path | None, typer.Option(help="Write a PNG plot here.")], None),
]


def quality_command(family) -> Callable:
    def run(options, json_path, plot) -> None:
        from tritonforge.verify.recipe_table import pareto_front, plot_pareto, plot_quality, speedups

        with progress_bar() as progress:
            stages = Stages(progress)
            rows = family.quality_table(options, stages)
            stages.finish()
        metrics = list(rows[0].metrics)
        serving = rows[0].serving_p50_ms is not None  # also timed on the common serving request
        sizes = any("onnx_mb" in row.details for row in rows)
        groups = len({row.group for row in rows}) > 1
        table = new_table(f"{family.name}: quality against full precision, and latency (p50, interleaved)",
                          "variant", "runtime", *(m.replace("_", " ") for m in metrics),
                          *(["MB"] if sizes else []), "p50 ms",
                          "x its group's first row" if groups else f"x {rows[0].variant}",
                          *(["serving p50 ms", "x"] if serving else []))
        faster = speedups(rows)
        faster_serving = speedups(rows, serving=True) if serving else []
        for i, row in enumerate(rows):
            table.add_row(row.variant, row.runtime, *(f"{row.metrics[m]:.4f}" for m in metrics),
                          *([str(row.details.get("onnx_mb", ""))] if sizes else []),
                          f"{row.latency_p50_ms:.1f}", f"{faster[i]:.2f}",
                          *([f"{row.serving_p50_ms:.1f}", f"{faster_serving[i]:.2f}"] if serving else []))
        console.print(table)
        runtime = next((row.runtime for row in rows if "average_bits" in row.details), None)
        front = pareto_front(rows, runtime) if runtime else []
        if front:
            pareto = new_table(f"Pareto front on {runtime}: no other row has fewer bits and better quality",
                               "variant", "average bits", metrics[0].replace("_", " "), "MB")
            for row in front:
                pareto.add_row(row.variant, f"{row.details['average_bits']:.2f}",
                               f"{row.metrics[metrics[0]]:.4f}", str(row.details.get("onnx_mb", "")))
            console.print(pareto)
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
            console.print(f"table written to {json_path}")
        if plot:
            console.print(f"plot written to {plot_quality(rows, plot, family.name)}")
            if front:
                written = plot_pareto(rows, plot.with_name(f"{plot.stem}_pareto{plot.suffix}"), family.name,
                                      runtime)
                console.print(f"Pareto plot written to {written}")

    return generated_command(run, family.quality_options(), QUALITY_PARAMETERS,
                             f"Quality vs speed of {family.name} recipes, side by side on held-out inputs.")


SPEED_VARIES = ("target", "fallback", "bits")  # each row of `speed` sets them


SPEED_PARAMETERS = [
    common_parameter("batch_size", Annotated[int, typer.Option(help="Inputs per timed request.")], 8),
    common_parameter("iterations", Annotated[int, typer.Option(help="Timed runs per variant.")], 20),
    common_parameter("json_path", Annotated[Path | None, typer.Option(
        "--json", help="Write the table here.")], None),
]


def speed_command(family) -> Callable:
    def run(options, batch_size, iterations, json_path) -> None:
        from tritonforge.speed import speed_table

        with progress_bar() as progress:
            stages = Stages(progress)
            report = speed_table(family, options, batch_size, iterations, stages)
            stages.finish()
        cpu = report.machine
        table = new_table(f"{family.name} on {cpu.get('cpu')}, {cpu.get('cores')} cores, {report.threads} "
                          f"threads: {report.request}; p50 of {iterations} runs, interleaved",
                          "variant", "precision", "parity vs PyTorch", "MB", "p50 ms", "p95 ms", "x PyTorch")
        for row in report.rows:
            if row.skipped:
                table.add_row(row.variant, row.precision, "[yellow]not run[/]", "", "", "", "")
                continue
            parity = row.parity
            verdict = "reference" if parity is None else (f"{parity['metric']} {parity['value']:.4g} "
                                                          + ("ok" if parity["passed"] else "[red]FAILED[/]"))
            size = "" if row.onnx_mb is None else f"{row.onnx_mb}"
            table.add_row(row.variant, row.precision, verdict, size, f"{row.p50_ms:.2f}", f"{row.p95_ms:.2f}",
                          f"{row.speedup:.2f}")
        console.print(table)
        for row in report.rows:
            if row.skipped:
                console.print(f"{row.variant}: not run: {escape(row.skipped)}")
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
            console.print(f"table written to {json_path}")

    doc = (f"PyTorch eager, ONNX Runtime and OpenVINO FP32 / BF16 / INT8 of a {family.name} recipe, "
           "checked against PyTorch, timed interleaved in one run.")
    return generated_command(run, family.options_type, SPEED_PARAMETERS, doc, omit=SPEED_VARIES)


def one_line(text: str | None) -> str:
    """A command's summary for a listing: the first sentence or clause of its help, on one line
    (a colon or semicolon inside parentheses does not end it)."""
    first = " ".join((text or "").split("\n\n")[0].split())
    depth = 0
    for i, char in enumerate(first):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char in ".:;" and (i + 1 == len(first) or first[i + 1] == " "):
            return first[:i] + "."
    return first


class OneLineGroup(TyperGroup):
    """A group whose listing shows each command's help as one line (`one_line`)."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None and not command.short_help:
            command.short_help = one_line(command.help)
        return command


class FamilyGroup(OneLineGroup):
    """A command group with one subcommand per model family, built when it is asked for, so
    that `tritonforge --help` does not import every family."""

    build: ClassVar[Callable[[Any], Callable | None]]

    def list_commands(self, ctx: click.Context) -> list[str]:
        from tritonforge.family import family_names

        return sorted(set(super().list_commands(ctx)) | set(family_names()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from tritonforge.family import family_names, get_family

        command = super().get_command(ctx, name)
        if command is not None or name not in family_names():
            return command
        function = type(self).build(get_family(name))
        if function is None:
            return None
        single = typer.Typer(add_completion=False)
        single.command(name)(function)
        return typer.main.get_command(single)


class ExportGroup(FamilyGroup):
    build = staticmethod(export_command)


class QualityGroup(FamilyGroup):
    build = staticmethod(lambda family: quality_command(family) if family.quality_options() else None)


class SpeedGroup(FamilyGroup):
    build = staticmethod(speed_command)


# `tritonforge --help` lists the commands in the order of the work, one line each; commands not
# named here follow in registration order, then the families' own command groups.
COMMAND_ORDER = ("export", "verify", "ls", "versions", "prune", "rollback", "serve", "query", "bench", "tune",
                 "soak", "quality", "speed", "report", "push", "plan", "deploy")
FAMILY_PANEL = "Family commands"


class RootGroup(OneLineGroup):
    """`tritonforge`: the shared commands, and `tritonforge <family> ...`, a family's own
    commands (e.g. training), built when asked for. `--help` names the built-in families'
    commands from `BUILTIN_COMMANDS` without importing them."""

    listing = False  # set while `--help` is printed: family groups are named, not built

    def list_commands(self, ctx: click.Context) -> list[str]:
        from tritonforge.family import BUILTIN_COMMANDS

        registered = super().list_commands(ctx)
        ordered = [name for name in COMMAND_ORDER if name in registered]
        return ordered + [name for name in registered if name not in ordered] + sorted(BUILTIN_COMMANDS)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from tritonforge.family import BUILTIN_COMMANDS, CommandServices, family_names, get_family

        command = super().get_command(ctx, name)
        if command is not None:
            return command
        family, summary = BUILTIN_COMMANDS.get(name, (name, None))
        if self.listing:
            return summary and TyperGroup(name=name, short_help=summary, rich_help_panel=FAMILY_PANEL)
        if family not in family_names():
            return None
        from tritonforge.pipeline.export import export_model  # only a family's own commands need it

        commands = get_family(family).commands()
        if commands is None:
            return None
        group = typer.main.get_group(commands)  # a group even with one command
        group.name = name
        # What the family's commands may call above the families (they cannot import it).
        group.context_settings = {**group.context_settings, "obj": CommandServices(export_model=export_model)}
        for command in group.commands.values():  # errors and Ctrl-C as for every other command
            command.callback = friendly(command.callback)
            command.short_help = command.short_help or one_line(command.help)
        return group


app.info.cls = RootGroup


export_app.info.cls = ExportGroup


quality_app.info.cls = QualityGroup


speed_app.info.cls = SpeedGroup
