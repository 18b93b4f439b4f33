"""`tritonforge report`: docs/benchmarks.md with the machine, commit, date and versions as its
header, every section under its anchor, and the command that reproduces each table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.files import write_text_atomic
from tritonforge.report import Report, SectionResult, Table, all_sections, section_keys
from tritonforge.report.machine import (
    SourceState,
    describe_machine,
    parse_cpuinfo,
    parse_meminfo,
    source_state,
)
from tritonforge.report.markdown import render
from tritonforge.report.workspace import Workspace, run_measured

ANCHORS = ("bert-on-every-runtime", "export-cost", "verify-at-its-defaults", "serving", "live-updates",
           "families")
HEADINGS = ("## bert on every runtime", "## Export cost", "## Verify at its defaults", "## Serving",
            "## Live updates", "## Families")

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni
"""
OLD_XEON = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\nflags\t\t: fpu sse4_2 avx avx2\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes sha2\nCPU part\t: 0xd0c\n"
MEMINFO = "MemTotal:       24683792 kB\nMemFree:        21729328 kB\n"
LSCPU = "Architecture:  aarch64\nModel name:    Neoverse-N1\nFlags:         fp asimd\n"


def real_cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    pytest.skip("/proc/cpuinfo names no model here")


# -- the machine --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "cpu", "amx", "bf16", "vnni"), [
    (XEON, "Intel(R) Xeon(R) Platinum 8480+", True, True, True),
    (EPYC, "AMD EPYC 9654 96-Core Processor", False, True, True),
    (OLD_XEON, "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz", False, False, False),
    (ARM, None, False, False, False),
    ("", None, False, False, False),
])
def test_cpuinfo_gives_the_model_and_the_precision_flags(text, cpu, amx, bf16, vnni):
    found = parse_cpuinfo(text)
    assert found["cpu"] == cpu
    flags = found["flags"]
    assert (flags["AMX"], flags["AVX512_BF16"], flags["AVX512_VNNI"]) == (amx, bf16, vnni)


def test_meminfo_gives_the_total_in_gigabytes():
    assert parse_meminfo(MEMINFO) == pytest.approx(25.276, abs=1e-3)
    assert parse_meminfo("MemFree: 1 kB\n") is None and parse_meminfo("") is None


def test_lscpu_stands_in_where_cpuinfo_names_no_model():
    machine = describe_machine(cpuinfo=ARM, meminfo=MEMINFO, lscpu=LSCPU)
    assert machine.cpu == "Neoverse-N1" and not any(machine.flags.values())
    assert parse_cpuinfo(LSCPU)["cpu"] == "Neoverse-N1"


def test_the_machine_label_names_present_and_missing_flags():
    machine = describe_machine(cpuinfo=EPYC, meminfo=MEMINFO)
    assert machine.cpu == "AMD EPYC 9654 96-Core Processor"
    assert machine.memory_gb == pytest.approx(25.28, abs=0.01)
    assert machine.label().startswith("AMD EPYC 9654 96-Core Processor, ")
    assert "AVX512_BF16, AVX512_VNNI, no AMX" in machine.label()
    assert "AMX, AVX512_BF16, AVX512_VNNI" in describe_machine(cpuinfo=XEON, meminfo=MEMINFO).label()
    assert machine.cores >= 1 and json.dumps(machine.to_json())


def test_this_machine_is_described_from_proc_cpuinfo():
    machine = describe_machine()
    assert machine.cpu == real_cpu_model()
    assert machine.memory_gb and machine.memory_gb > 0 and machine.cores >= 1


def test_the_source_state_is_the_commit_and_whether_tracked_files_changed(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    assert source_state(tmp_path).commit is None and "not a git checkout" in source_state(tmp_path).label()
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    clean = source_state(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", clean.commit) and clean.dirty is False
    assert clean.label() == f"{clean.commit} (clean tree)"
    (tmp_path / "out.md").write_text("the report's own output")
    assert source_state(tmp_path, outputs=(tmp_path / "out.md",)).dirty is False
    (tmp_path / "a.txt").write_text("two")
    (tmp_path / "new.py").write_text("not committed")
    dirty = source_state(tmp_path, outputs=(tmp_path / "out.md",))
    assert dirty.commit == clean.commit and dirty.dirty
    assert dirty.changed == ("a.txt",) and dirty.untracked == ("new.py",)
    assert "dirty tree: 1 tracked files changed: a.txt; 1 untracked: new.py" in dirty.label()


# -- the file -----------------------------------------------------------------------------------


def synthetic_report(measured: set[str]) -> Report:
    results = []
    for section in all_sections():
        result = SectionResult(section.key, section.title, f"tritonforge report --only {section.key}")
        if section.key in measured:
            result.measured = True
            result.tables.append(Table(["a", "b"], [["x | y", "1.0"]], result.command,
                                       runs=["tritonforge export bert --bits 32 --repo REPO"]))
        results.append(result)
    machine = describe_machine(cpuinfo=EPYC, meminfo=MEMINFO)
    return Report(machine, SourceState("0" * 40, False), {"tritonforge": "0.1.0", "torch": "2"},
                  "2026-01-01T00:00:00+00:00", False, (), results, 61.0)


def test_the_file_has_one_header_every_anchor_and_a_command_per_table():
    text = render(synthetic_report({"export-cost", "serving"}))
    assert text.count("AMD EPYC 9654 96-Core Processor, ") == 1  # one machine label, in the header
    assert "0" * 40 + " (clean tree)" in text and "2026-01-01T00:00:00+00:00" in text and "1 min 1 s" in text
    assert [line for line in text.splitlines() if line.startswith("## ")] == list(HEADINGS)
    for key in ("bert-on-every-runtime", "verify-at-its-defaults", "live-updates", "families"):
        assert f"Not measured in this run: `tritonforge report --only {key}`" in text
    for key in ("export-cost", "serving"):
        assert f"Reproduce this table alone: `tritonforge report --only {key}` (it runs " \
               "`tritonforge export bert --bits 32 --repo REPO`)" in text
    assert "| x \\| y | 1.0 |" in text  # a pipe in a cell does not split it


def test_the_section_keys_are_the_github_anchors_of_their_headings():
    assert section_keys() == list(ANCHORS)
    for section in all_sections():
        slug = re.sub(r"[^a-z0-9 -]", "", section.title.lower()).replace(" ", "-")
        assert slug == section.key


def test_the_file_is_written_atomically(tmp_path):
    target = tmp_path / "docs" / "benchmarks.md"
    write_text_atomic(target, "first\n")
    write_text_atomic(target, "second\n")
    assert target.read_text() == "second\n" and [p.name for p in target.parent.iterdir()] == ["benchmarks.md"]


# -- commands as measured child processes -------------------------------------------------------


def test_a_command_is_measured_as_its_own_process(tmp_path):
    done = run_measured(["--version"], tmp_path / "version.log", "tritonforge --version")
    assert done.ok and done.outcome() == "ok" and done.wall_s > 0
    assert done.peak_rss_mb > 0 and done.cpu_s >= 0
    assert "tritonforge" in done.log.read_text()
    failed = run_measured(["verify", "nothing", "--repo", str(tmp_path / "none")], tmp_path / "verify.log",
                          "tritonforge verify nothing")
    assert failed.exit_code == 2 and failed.outcome().startswith("exit 2: ")


def test_the_workspace_shows_scratch_paths_by_their_roles(tmp_path):
    workspace = Workspace(tmp_path)
    shown = workspace.show(["verify", "bert_fp32", "--repo", str(workspace.repo), "--json",
                            str(tmp_path / "verify" / "bert_fp32.verify.json")])
    assert shown == "tritonforge verify bert_fp32 --repo REPO --json bert_fp32.verify.json"


def test_an_unknown_section_is_refused_before_anything_runs(tmp_path):
    result = CliRunner().invoke(app, ["report", "--only", "nothing", "--out", str(tmp_path / "b.md")])
    assert result.exit_code == 2 and "--only nothing" in result.output and "export-cost" in result.output
    assert not (tmp_path / "b.md").exists()


# -- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_report_writes_the_machine_commit_every_anchor_and_a_command_per_table(tmp_path):
    out = tmp_path / "benchmarks.md"
    done = subprocess.run([sys.executable, "-m", "tritonforge.cli", "report", "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    head = text.split("\n## ", 1)[0]
    assert f"| CPU | {real_cpu_model()} (/proc/cpuinfo) |" in head
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent, check=True).stdout.strip()
    assert commit in head and "| date |" in head and "onnxruntime " in head and "openvino " in head
    assert [line for line in text.splitlines() if line.startswith("## ")] == list(HEADINGS)
    for key in ("bert-on-every-runtime", "export-cost", "verify-at-its-defaults", "serving"):
        assert f"Reproduce this table alone: `tritonforge report --only {key} --quick`" in text
    for key in ("live-updates", "families"):
        assert f"Not measured in this run: `tritonforge report --only {key}`" in text
    assert "not measured in this run" in text  # the parts --quick leaves out say how to measure them
    document = json.loads(out.with_suffix(".json").read_text())
    assert document["source"]["commit"] == commit and document["quick"] is True
    assert [s["key"] for s in document["sections"]] == list(ANCHORS)
    assert all(s["error"] is None for s in document["sections"]), document["sections"]
    rows = {s["key"]: s for s in document["sections"]}
    assert rows["export-cost"]["data"]["exports"][0]["exit_code"] == 0
    assert rows["serving"]["data"]["bench"]["levels"][0]["errors"] == 0
