"""docs/benchmarks.md from a Report: the machine header once, then one section per anchor, each
table with the command that reproduces it alone; written atomically (temp file + rename)."""

from __future__ import annotations

import json
from pathlib import Path

from tritonforge.files import write_text_atomic
from tritonforge.report import Report, SectionResult, Table
from tritonforge.report.machine import FLAGS


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def mode(report: Report) -> str:
    parts = ["`--quick` (a small part of each section; the others not measured)" if report.quick
             else "full"]
    if report.only:
        parts.append("only " + ", ".join(f"`{key}`" for key in report.only))
    return "; ".join(parts)


def header(report: Report) -> list[str]:
    machine, source = report.machine, report.source
    flags = ", ".join(f"{name} {'yes' if machine.flags.get(name) else 'no'}" for name in FLAGS)
    load = ", ".join(f"{x:g}" for x in machine.load_average) if machine.load_average else "unknown"
    rows = [
        ["machine", machine.label()],
        ["CPU", f"{machine.cpu} (/proc/cpuinfo)"],
        ["CPU flags", flags],
        ["cores", f"{machine.cores} (logical CPUs this run could use); every runtime ran with "
                  f"{report.threads} threads"],
        ["memory", "unknown" if machine.memory_gb is None else f"{machine.memory_gb:.1f} GB"],
        ["system", machine.system],
        ["load average at the start", load],
        ["commit", source.label()],
        ["date", report.started],
        ["versions", ", ".join(f"{name} {version}" for name, version in report.versions.items())],
        ["mode", mode(report)],
        ["run time", duration(report.seconds)],
    ]
    return [
        "# Benchmarks",
        "",
        "Written by `tritonforge report --out docs/benchmarks.md` (`make benchmarks`): every figure "
        "below was measured in that one run, on the machine in this header, at this commit. Do "
        "not edit it by hand; run it again. Each table names the command that measures it alone.",
        "",
        *markdown_table(["", ""], rows),
        "",
    ]


def table_lines(table: Table) -> list[str]:
    lines = [f"Reproduce this table alone: `{table.command}`"]
    if table.runs:
        runs = [run if run.startswith("`") else f"`{run}`" for run in table.runs if run != table.command]
        if runs:
            lines[-1] += " (it runs " + ", ".join(runs) + ")"
    lines.append("")
    if table.caption:
        lines += [table.caption, ""]
    lines += markdown_table(table.columns, table.rows)
    return [*lines, ""]


def section_lines(section: SectionResult, summary: str) -> list[str]:
    lines = [f"## {section.title}", "", summary, ""]
    if not section.measured and section.error is None:
        return [*lines, f"Not measured in this run: `{section.command}`", ""]
    if section.error is not None:
        lines += [f"**Failed in this run** after {duration(section.seconds)}: {section.error.strip()}",
                  "", f"Reproduce: `{section.command}`", ""]
    for table in section.tables:
        lines += table_lines(table)
    for note in section.notes:
        lines += [f"- {note}"]
    if section.notes:
        lines.append("")
    if section.measured:
        lines += [f"Measured in {duration(section.seconds)}.", ""]
    return lines


def render(report: Report) -> str:
    from tritonforge.report import all_sections

    summaries = {s.key: s.summary for s in all_sections()}
    lines = header(report)
    for section in report.sections:
        lines += section_lines(section, summaries[section.key])
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: Report, out: Path, json_path: Path | None = None) -> None:
    write_text_atomic(out, render(report))
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report.to_json(), indent=2, default=str) + "\n")
