"""The terminal: one console for results, one for progress and errors, rich tables and bars.

Shared by the core commands (`tritonforge.cli`) and the families' own commands.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

console = Console()
errors = Console(stderr=True)  # progress bars and errors: stdout stays for results


class Stages:
    """Rich progress for a pipeline: each call closes the previous step and opens the next.

    `stages(description, total)` returns a tick function; total 0 shows a spinner only.
    """

    def __init__(self, progress: Progress):
        self.progress, self.task = progress, None

    def __call__(self, description: str, total: int = 0):
        self.finish()
        self.task = self.progress.add_task(description, total=total or None)
        task = self.task
        return lambda: self.progress.advance(task)

    def finish(self) -> None:
        if self.task is not None:
            total = self.progress.tasks[self.task].total or 1
            self.progress.update(self.task, total=total, completed=total)


def new_table(title: str, *columns: str) -> Table:
    """A rich table with these column headers."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def progress_bar() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=errors, transient=False)
