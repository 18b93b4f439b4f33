"""Where a report's commands run: a scratch model repository, each `tritonforge` command as its
own process (wall time and peak memory measured by the kernel), exports made once and shared by
the sections that need them, and `tritonforge serve` started on free ports."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonforge.errors import TritonForgeError

# A command that runs longer is stopped and reported as timed out (the report goes on).
COMMAND_TIMEOUT_S = 30 * 60
REPO = "REPO"  # how the scratch repository is shown in the commands written into the report


@dataclass
class CommandRun:
    """One `tritonforge` command run as a child process."""

    args: tuple[str, ...]  # after `tritonforge`
    shown: str  # the command as the report prints it (paths replaced by their roles)
    wall_s: float
    peak_rss_mb: float | None  # the child's (and its waited-for children's) peak resident set
    cpu_s: float | None  # user + system time
    exit_code: int | None  # None: stopped after the timeout
    log: Path

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def outcome(self) -> str:
        """`ok`, `exit 1: <the log's last line>` or `timed out after 1800 s`."""
        if self.exit_code == 0:
            return "ok"
        if self.exit_code is None:
            return f"timed out after {self.wall_s:.0f} s"
        return f"exit {self.exit_code}: {last_line(self.log)}"

    def to_json(self) -> dict[str, Any]:
        return {"command": self.shown, "wall_s": round(self.wall_s, 2),
                "peak_rss_mb": None if self.peak_rss_mb is None else round(self.peak_rss_mb, 1),
                "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 2), "exit_code": self.exit_code}


def last_line(log: Path) -> str:
    """The last meaningful line a command wrote (its error, usually)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no output)"
    lines = [line for line in lines if line and not set(line) <= set("━─│┃┏┓┗┛╸╺ ")]
    return lines[-1][:240] if lines else "(no output)"


def cli_command() -> list[str]:
    """How a child runs `tritonforge`: this interpreter, so the same installation is measured."""
    return [sys.executable, "-m", "tritonforge.cli"]


# A small process between the report and the measured command, as /usr/bin/time is: Linux
# carries the peak RSS of the image a child was forked from into the child's own (exec keeps
# it), so a command forked straight from the report would show the report's memory as its
# peak. This launcher (a bare interpreter, about 10 MB) runs the command, reaps it with wait4
# and writes its rusage to the file named first; it exits with the command's status.
LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_pid, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}, out)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(args: Sequence[str], log: Path, shown: str, timeout_s: float = COMMAND_TIMEOUT_S,
                 tick: Callable[[], None] | None = None, env: dict[str, str] | None = None) -> CommandRun:
    """Run `tritonforge ARGS` to completion: wall time, and the peak RSS and CPU time that the
    kernel reports for that child when it is reaped (wait4)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    usage_file = log.with_suffix(".rusage.json")
    usage_file.unlink(missing_ok=True)
    environment = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as out:
        start = time.perf_counter()
        command = [sys.executable, "-S", "-c", LAUNCHER, str(usage_file), *cli_command(), *args]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=environment, start_new_session=True)
        code = None
        try:
            while (code := process.poll()) is None:
                if time.perf_counter() - start > timeout_s:
                    _kill_group(process)
                    code = None
                    break
                if tick:
                    tick()
                time.sleep(0.1)
        except BaseException:
            _kill_group(process)
            raise
        wall = time.perf_counter() - start
    try:
        usage = json.loads(usage_file.read_text())
    except (OSError, ValueError):  # stopped after the timeout
        usage = None
    return CommandRun(tuple(args), shown, wall,
                      None if usage is None else usage["maxrss_kb"] / 1024,  # KiB on Linux
                      None if usage is None else usage["cpu_s"], code, log)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(10)
    except (subprocess.TimeoutExpired, ChildProcessError):
        pass


@dataclass
class Served:
    """A `tritonforge serve` child process and where it listens."""

    process: subprocess.Popen
    repo: Path
    grpc_url: str
    http_url: str
    log: Path
    shown: str

    def tritonserver_pid(self) -> int | None:
        """The tritonserver that `serve` runs (its child), from /proc."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren
            comm = stat[stat.find("(") + 1: stat.rfind(")")]
            fields = stat[stat.rfind(")") + 2:].split()
            if comm.startswith("tritonserver") and int(fields[1]) == self.process.pid:
                return int(entry.name)
        return None


@dataclass
class Workspace:
    """The scratch folder of one report: `repo/` holds every export, `logs/` every command's
    output, `serve-*/` the repositories that `serve` is given (links to the exports it needs)."""

    root: Path
    threads: int = 2
    stage: Callable[[str, int], Callable[[], None]] = field(default=lambda _d, _t=0: (lambda: None))
    runs: list[CommandRun] = field(default_factory=list)
    exports: dict[tuple[str, ...], CommandRun] = field(default_factory=dict)
    served_names: dict[Path, list[str]] = field(default_factory=dict)  # serving_repo's exports
    _count: int = 0

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    def show(self, args: Sequence[str]) -> str:
        """The command as the report prints it: the scratch paths by their roles."""
        replaced = []
        for arg in args:
            text = str(arg)
            if text.startswith(str(self.root)):
                relative = Path(text).relative_to(self.root)
                text = REPO if relative == Path("repo") else (
                    f"{REPO}/{relative.relative_to('repo')}" if relative.parts[0] == "repo" else
                    relative.name)
            replaced.append(text)
        return "tritonforge " + shlex.join(replaced)

    def run(self, args: Sequence[str], shown: str | None = None,
            timeout_s: float = COMMAND_TIMEOUT_S) -> CommandRun:
        """`tritonforge ARGS` in its own process, announced on the progress bar (as `shown`:
        default, the command with the scratch paths by their roles)."""
        self._count += 1
        shown = shown or self.show(args)
        words = "-".join(Path(str(a)).name for a in args[:3])
        log = self.root / "logs" / f"{self._count:02d}-{words}.log"
        tick = self.stage(shown, 0)
        done = run_measured([str(a) for a in args], log, shown, timeout_s, tick)
        self.runs.append(done)
        return done

    def export(self, family: str, *options: str) -> CommandRun:
        """`tritonforge export FAMILY OPTIONS --repo REPO`, once per report: a second caller
        gets the first run (and its measurements)."""
        key = (family, *options)
        if key not in self.exports:
            self.exports[key] = self.run(["export", family, *options, "--repo", str(self.repo)])
        return self.exports[key]

    def exported_path(self, run: CommandRun) -> Path:
        """The version folder an export wrote: its `exported REPO/NAME/VERSION` line."""
        if not run.ok:
            raise TritonForgeError(f"`{run.shown}` failed ({run.outcome()}); its log: {run.log}")
        for line in run.log.read_text(errors="replace").splitlines():
            if line.startswith("exported "):
                return Path(line.split(" ", 1)[1].strip())
        raise TritonForgeError(f"`{run.shown}` did not say what it exported; its log: {run.log}")

    def exported_name(self, run: CommandRun) -> str:
        return self.exported_path(run).parent.name

    def serving_repo(self, names: Sequence[str], label: str) -> Path:
        """A repository of links to these exports of `repo` and their companions (tokenizer,
        ensembles), so `serve` loads only them."""
        from tritonforge.serving.repository import ModelRepository

        target = self.root / f"serve-{label}"
        target.mkdir(parents=True, exist_ok=True)
        self.served_names[target] = list(names)
        repository = ModelRepository(self.repo)
        for name in names:
            for model in (name, *repository.companions(name)):
                link = target / model
                if not link.exists():
                    link.symlink_to((self.repo / model).resolve(), target_is_directory=True)
        return target

    @contextmanager
    def serve(self, repo: Path, label: str, ready_timeout_s: float = 600.0) -> Iterator[Served]:
        """`tritonforge serve --repo REPO` on free ports until the block ends (SIGTERM)."""
        import tritonclient.grpc as grpcclient

        from tritonforge.serving.local import free_port

        http, grpc, metrics = free_port(), free_port(), free_port()
        while len({http, grpc, metrics}) < 3:
            grpc, metrics = free_port(), free_port()
        args = ["serve", "--repo", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
                "--metrics-port", str(metrics), "--threads", str(self.threads),
                "--log", str(self.root / "logs" / f"triton-{label}.log")]
        log = self.root / "logs" / f"serve-{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        tick = self.stage(f"tritonforge serve ({label}): starting", 0)
        out = open(log, "wb")
        process = subprocess.Popen([*cli_command(), *args], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"})
        # a repository of links to some of REPO's exports is shown as REPO holding only them
        shown = "tritonforge serve --repo " + (REPO if repo == self.repo or repo in self.served_names
                                               else repo.name)
        served = Served(process, repo, f"127.0.0.1:{grpc}", f"http://127.0.0.1:{http}", log, shown)
        try:
            client = grpcclient.InferenceServerClient(served.grpc_url)
            deadline = time.monotonic() + ready_timeout_s
            try:
                while True:
                    if process.poll() is not None:
                        raise TritonForgeError(f"`{shown}` stopped while starting ({last_line(log)}); "
                                               f"its log: {log}")
                    if time.monotonic() > deadline:
                        raise TritonForgeError(f"`{shown}` was not ready after {ready_timeout_s:.0f} s; "
                                               f"its log: {log}")
                    try:
                        if client.is_server_ready():
                            break
                    except Exception:  # not listening yet
                        pass
                    tick()
                    time.sleep(0.25)
            finally:
                client.close()
            yield served
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # serve stops tritonserver and its stubs
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    _kill_group(process)
            out.close()
