"""`tritonforge report`: every figure of the docs measured in one run on one machine, written to
docs/benchmarks.md with that machine, the commit, the date and the versions as its header.

Each section runs the project's own measurement code: `export` and `verify` as child processes
(wall time and peak memory from the kernel), `serve` and `bench` against a local server, and
`tritonforge.speed`'s pieces (`open_session`, `timing.measure_interleaved`, the family's parity)
for the table of bert on every runtime. Exports are made once, into a scratch repository, and
shared by the sections that need them. `--quick` measures a small part of each section (what a
test runs); `--only KEY` runs one section; a section not run says which command measures it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonforge.errors import TritonForgeError
from tritonforge.report.machine import Machine, SourceState, describe_machine, now, source_state, versions
from tritonforge.report.workspace import Workspace

DEFAULT_OUT = Path("docs/benchmarks.md")


@dataclass
class Table:
    """One table of a section, with the command that reproduces it alone."""

    columns: list[str]
    rows: list[list[str]]
    command: str  # `tritonforge report --only KEY`
    caption: str = ""
    runs: list[str] = field(default_factory=list)  # the commands it ran, as a user would type them

    def to_json(self) -> dict[str, Any]:
        return {"caption": self.caption, "command": self.command, "runs": self.runs,
                "columns": self.columns, "rows": self.rows}


@dataclass
class SectionResult:
    key: str  # the anchor: bert-on-every-runtime, export-cost, ...
    title: str
    command: str  # what measures this section alone
    measured: bool = False
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the section stopped: why
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)  # the raw figures, for the JSON

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "command": self.command, "measured": self.measured,
                "error": self.error, "seconds": round(self.seconds, 1), "notes": self.notes,
                "tables": [t.to_json() for t in self.tables], "data": self.data}


@dataclass
class Context:
    """What a section's measurement gets: the workspace, the mode, the progress display."""

    workspace: Workspace
    quick: bool
    stage: Callable[[str, int], Callable[[], None]]
    results: dict[str, SectionResult] = field(default_factory=dict)  # sections run so far
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. verify reports, by model

    @property
    def mode_flag(self) -> str:
        return " --quick" if self.quick else ""


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    measure: Callable[[Context, SectionResult], None]
    summary: str  # one line under the heading: what the section measures
    in_quick: bool = True  # --quick measures a part of it (else none: "not measured in this run")


@dataclass
class Report:
    machine: Machine
    source: SourceState
    versions: Mapping[str, str]
    started: str
    quick: bool
    only: tuple[str, ...]
    sections: list[SectionResult]
    seconds: float = 0.0
    threads: int = 2

    @property
    def failed(self) -> list[SectionResult]:
        return [s for s in self.sections if s.error]

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine.to_json(), "source": self.source.to_json(),
                "versions": dict(self.versions), "started": self.started, "quick": self.quick,
                "only": list(self.only), "seconds": round(self.seconds, 1), "threads": self.threads,
                "sections": [s.to_json() for s in self.sections]}


def all_sections() -> list[Section]:
    from tritonforge.report.sections import SECTIONS

    return SECTIONS


def section_keys() -> list[str]:
    return [s.key for s in all_sections()]


def report_command(key: str, quick: bool) -> str:
    return f"tritonforge report --only {key}" + (" --quick" if quick else "")


def run_report(workdir: Path, quick: bool = False, only: Sequence[str] = (), threads: int = 2,
               stage: Callable[[str, int], Callable[[], None]] | None = None,
               on_section: Callable[[SectionResult], None] | None = None,
               outputs: Sequence[Path] = ()) -> Report:
    """Measure the chosen sections (all by default) in order, in `workdir`. A section that
    fails is reported with its error and the others still run. `outputs`: the files the report
    will write, which do not make the source tree count as changed."""
    known = section_keys()
    unknown = [key for key in only if key not in known]
    if unknown:
        raise TritonForgeError(f"--only {', '.join(unknown)}: no such section; choose from "
                               f"{', '.join(known)}")
    stage = stage or (lambda _description, _total=0: (lambda: None))
    started, clock = now(), time.perf_counter()
    machine, source, installed = describe_machine(), source_state(outputs=tuple(outputs)), versions()
    workspace = Workspace(workdir, threads, stage)
    context = Context(workspace, quick, stage)
    results = []
    for section in all_sections():
        runs_quick = section.in_quick or not quick
        result = SectionResult(section.key, section.title, report_command(section.key, quick and runs_quick))
        if (not only or section.key in only) and runs_quick:
            begin = time.perf_counter()
            try:
                section.measure(context, result)
                result.measured = True
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # reported in the file; the other sections still run
                result.error = (str(exc) if isinstance(exc, TritonForgeError)
                                else f"{type(exc).__name__}: {exc}")
            result.seconds = time.perf_counter() - begin
            context.results[section.key] = result
            if on_section:
                on_section(result)
        results.append(result)
    return Report(machine, source, installed, started, quick, tuple(only), results,
                  time.perf_counter() - clock, threads)
