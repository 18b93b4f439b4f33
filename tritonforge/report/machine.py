"""What a report was measured on: the CPU and its instruction sets, memory, the source tree's
git commit, and the versions of the runtimes that did the work."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The CPU flags that decide which precisions run natively (as /proc/cpuinfo spells them):
# AMX (Intel Sapphire Rapids and later), AVX512_BF16 and AVX512_VNNI (BF16 and INT8 dot products).
FLAGS = {"AMX": ("amx_tile", "amx_bf16", "amx_int8"), "AVX512_BF16": ("avx512_bf16",),
         "AVX512_VNNI": ("avx512_vnni",), "AVX512F": ("avx512f",)}
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout tritonforge runs from


@dataclass(frozen=True)
class Machine:
    cpu: str
    flags: Mapping[str, bool]  # FLAGS' names: present or not
    cores: int  # logical CPUs this process may run on
    memory_gb: float | None
    system: str  # kernel and architecture
    load_average: tuple[float, float, float] | None = None  # when the report started

    def label(self) -> str:
        """One line: `AMD EPYC, 2 cores, 23.5 GB, AVX512_BF16 AVX512_VNNI, no AMX`."""
        named = ("AMX", "AVX512_BF16", "AVX512_VNNI")
        present = [name for name in named if self.flags.get(name)]
        absent = [f"no {name}" for name in named if not self.flags.get(name)]
        memory = f", {self.memory_gb:.1f} GB" if self.memory_gb is not None else ""
        return f"{self.cpu}, {self.cores} cores{memory}, " + ", ".join([*present, *absent])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SourceState:
    commit: str | None  # None: not a git checkout
    dirty: bool | None  # tracked files changed since the commit, or files git does not track
    changed: tuple[str, ...] = field(default_factory=tuple)  # tracked files changed
    untracked: tuple[str, ...] = field(default_factory=tuple)  # not ignored, not tracked

    def label(self) -> str:
        if self.commit is None:
            return "not a git checkout"
        if not self.dirty:
            return f"{self.commit} (clean tree)"
        parts = []
        for count, what, paths in ((len(self.changed), "tracked files changed", self.changed),
                                   (len(self.untracked), "untracked", self.untracked)):
            if count:
                parts.append(f"{count} {what}: " + ", ".join(paths[:5]) + (", ..." if count > 5 else ""))
        return f"{self.commit} (dirty tree: {'; '.join(parts)})"

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit, "dirty": self.dirty, "changed": list(self.changed),
                "untracked": list(self.untracked)}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The CPU's model name and the flags named in FLAGS, from /proc/cpuinfo's text (x86:
    `model name` and `flags`; other architectures: `Model name`/`Hardware`/`cpu model`, and
    `Features`); `lscpu`'s output reads the same way (its `Model name:` and `Flags:` lines). A
    model name that cannot be found is None."""
    model, flags = None, set()
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "cpu model", "uarch") and model is None and value:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = set(value.lower().split())
    return {"cpu": model, "flags": {name: any(f in flags for f in names) for name, names in FLAGS.items()}}


def parse_meminfo(text: str) -> float | None:
    """MemTotal in GB (10^9 bytes) from /proc/meminfo's text, or None."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024 / 1e9
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def describe_machine(cpuinfo: str | None = None, meminfo: str | None = None,
                     lscpu: str | None = None) -> Machine:
    """This machine (or the given /proc/cpuinfo, /proc/meminfo and lscpu texts): the CPU model
    from /proc/cpuinfo, else lscpu; its AMX / AVX512_BF16 / AVX512_VNNI flags; the logical CPUs
    this process may use; total memory."""
    found = parse_cpuinfo(_read("/proc/cpuinfo") if cpuinfo is None else cpuinfo)
    # lscpu only where /proc/cpuinfo lacks the model or every flag (given texts: only if given)
    if (found["cpu"] is None or not any(found["flags"].values())) and (cpuinfo is None or lscpu is not None):
        if lscpu is None and shutil.which("lscpu"):
            try:
                lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                                       env={**os.environ, "LC_ALL": "C"}).stdout
            except (OSError, subprocess.SubprocessError):
                lscpu = ""
        listed = parse_cpuinfo(lscpu or "")
        found = {"cpu": found["cpu"] or listed["cpu"],
                 "flags": {k: found["flags"][k] or listed["flags"][k] for k in FLAGS}}
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        load = None
    memory = parse_meminfo(_read("/proc/meminfo") if meminfo is None else meminfo)
    return Machine(cpu=found["cpu"] or platform.processor() or "unknown CPU", flags=found["flags"],
                   cores=cores, memory_gb=memory,
                   system=f"{platform.system()} {platform.release()} {platform.machine()}",
                   load_average=load)


def _git(*args: str, root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def source_state(root: Path = SOURCE_ROOT, outputs: tuple[Path, ...] = ()) -> SourceState:
    """The commit the measured code is at, the tracked files that differ from it and the
    untracked ones (but `outputs`, the files the report itself writes)."""
    commit = _git("rev-parse", "HEAD", root=root)
    if commit is None:
        return SourceState(None, None)
    status = _git("status", "--porcelain", root=root) or ""
    ignored = {str(path.resolve()) for path in outputs}
    changed, untracked = [], []
    for line in status.splitlines():
        if not line.strip():
            continue
        path = line[3:]
        if line.startswith("??"):
            if str((root / path).resolve()) not in ignored:
                untracked.append(path)
        else:
            changed.append(path)
    return SourceState(commit.strip(), bool(changed or untracked), tuple(changed), tuple(untracked))


def versions() -> dict[str, str]:
    """tritonforge, torch, onnxruntime and openvino as installed (\"not installed\" otherwise)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    try:
        found["tritonforge"] = version("tritonforge")
    except PackageNotFoundError:
        found["tritonforge"] = "not installed"
    for module in ("torch", "onnxruntime", "openvino"):
        try:
            imported = __import__(module)
            found[module] = str(getattr(imported, "__version__", "unknown"))
        except ImportError:
            found[module] = "not installed"
    return found


def now() -> str:
    """The local date and time with its UTC offset, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
