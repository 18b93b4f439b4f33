"""The `tritonforge` app and what its commands share: exit codes, turning errors into one line,
and the shape options generated from the modalities' declarations."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tritonforge.command_options import (
    DEFAULT_REPO,
    common_parameter,
)
from tritonforge.console import errors
from tritonforge.errors import ServerUnavailable, TritonForgeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Export research models to verified ONNX and serve them with Triton.")


export_app = typer.Typer(no_args_is_help=True, help="Export a model family into the model repository.")


app.add_typer(export_app, name="export")


quality_app = typer.Typer(no_args_is_help=True, help="Quality vs speed of a family's recipes.")


app.add_typer(quality_app, name="quality")


speed_app = typer.Typer(no_args_is_help=True, help="A recipe on every CPU runtime and precision, timed "
                                                   "side by side.")


app.add_typer(speed_app, name="speed")


# Exit codes: 0 ok, 1 parity failed (or the server stopped on its own), 2 bad input,
# 3 server or network trouble (no server answers), 130 interrupted.
EXIT_PARITY, EXIT_BAD_INPUT, EXIT_SERVER = 1, 2, 3


def fail(exc: TritonForgeError) -> typing.NoReturn:
    """Print the error as one line and exit 3 for server trouble, else 2."""
    errors.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(EXIT_SERVER if isinstance(exc, ServerUnavailable) else EXIT_BAD_INPUT)


def friendly(command):
    """Turn TritonForgeError into a one-line message (exit 2, or 3 for server trouble) and
    Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TritonForgeError as exc:
            fail(exc)
        except KeyboardInterrupt:
            errors.print("[yellow]interrupted:[/] nothing was published; the repository is as it was")
            raise typer.Exit(130) from None

    return wrapper


# The shape options of every modality known here, generated from their declarations; a
# family's own modality's options arrive as extra arguments, read once the model is known.
SHAPE_COMMAND = {"allow_extra_args": True, "ignore_unknown_options": True}


def shape_parameters(command: Callable) -> Callable:
    """Give a command one option per declared shape option (`--seq-len`, `--image-size`,
    `--timesteps`, `--frame-size`, ...) and hand it `shape` (the given ones, checked) and
    `shape_arguments` (leftover `--name value` pairs for the model's own modality)."""
    from tritonforge.modalities import shape_options

    options = shape_options()
    parameters = [common_parameter(option.name, Annotated[(str if option.parse else int) | None, typer.Option(
        option.flag, help=option.help, metavar="WxH" if option.parse else None)], None) for option in options]

    @functools.wraps(command)
    def with_shape(**kwargs):
        shape: dict[str, int] = {}
        for option in options:
            value = kwargs.pop(option.name)
            if value is not None:
                shape.update(option.values(value))
        leftover = kwargs.pop("shape_context").args
        return command(**kwargs, shape=shape, shape_arguments=list(leftover))

    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name not in ("shape", "shape_arguments")]
    context = inspect.Parameter("shape_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    with_shape.__signature__ = signature.replace(parameters=[*own, *parameters, context])
    return with_shape


def parse_named_inputs(values: list[str]) -> dict[str, list[str]]:
    """`--input NAME=VALUE` options, values gathered by name in the order given."""
    named: dict[str, list[str]] = {}
    for value in values:
        name, equals, item = value.partition("=")
        if not equals or not name:
            raise TritonForgeError(f"--input {value!r} is not NAME=VALUE, e.g. --input LABELS=cat")
        named.setdefault(name, []).append(item)
    return named


def model_shape(shape: dict[str, int], arguments: list[str], modality) -> dict[str, int]:
    """`shape` plus the extra arguments read against the model's own modality's options."""
    if not arguments:
        return shape
    from tritonforge.modalities import parse_shape_arguments

    return {**shape, **parse_shape_arguments(arguments, modality.shape_options)}


def tokenizer_repo(repo: Path | None) -> Path | None:
    """Where a token model's tokenizer is found: --repo, else ./model_repo when it exists."""
    return repo or (DEFAULT_REPO if DEFAULT_REPO.is_dir() else None)
