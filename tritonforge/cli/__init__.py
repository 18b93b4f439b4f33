"""The `tritonforge` command: parses, calls the library, prints. No family-specific logic.

One module per command group: `models` (verify, ls, versions, prune, rollback), `serving`
(serve, query, bench, soak), `scale` (push, plan, deploy kserve), `report` (docs/benchmarks.md),
`families` (the commands generated from each family's options and its own commands); `base`
holds the app and what they share.
"""

from __future__ import annotations

import signal
from typing import Annotated

import typer

# isort: off
# Each module registers its commands on import, in this order (`tritonforge --help` lists them so).
from tritonforge.cli import models, serving, scale, report, families  # noqa: F401
# isort: on
from tritonforge.cli.base import app
from tritonforge.console import console

__all__ = ["app", "main"]


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"tritonforge {version('tritonforge')}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    _version: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True,
                                           help="Print the version and exit.")] = False,
) -> None:
    """Export research models to verified ONNX and serve them with Triton."""


def _terminate(signum, _frame):
    # SIGTERM unwinds like Ctrl-C, so staging folders are removed on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    # A shell without job control starts background commands with SIGINT ignored, and Python
    # keeps an ignored SIGINT ignored: `kill -INT` would then never stop `serve`. Ctrl-C and
    # SIGINT always mean "stop cleanly" here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app(prog_name="tritonforge")

