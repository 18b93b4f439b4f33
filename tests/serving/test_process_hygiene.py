"""`serve` and `LocalTriton` leave no process behind: Ctrl-C/SIGTERM, SIGKILL of the CLI,
failed starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.serving.local import LocalTriton, process_group_members

ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}  # LocalTriton picks free ones


def wait_until_gone(pgid: int, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while process_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return process_group_members(pgid)


def start_serve(repo: Path, log: Path, sigint: object = signal.SIG_DFL) -> tuple[subprocess.Popen, int]:
    """`tritonforge serve` in a subprocess; returns it and the tritonserver's pid (= its group).
    `sigint` is the SIGINT disposition it inherits (a background job in a shell without job
    control inherits SIG_IGN)."""
    command = [sys.executable, "-m", "tritonforge.cli", "serve", "--repo", str(repo), "--log", str(log),
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "COLUMNS": "200"},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    lines = []
    for line in cli.stdout:
        lines.append(line)
        if "serving; Ctrl-C" in line:
            break
    pids = re.findall(r"\(pid (\d+),", "".join(lines))
    assert pids, "".join(lines)
    return cli, int(pids[0])


def test_sigterm_stops_serve_and_its_server(tiny_repo, tmp_path):
    cli, pgid = start_serve(tiny_repo, tmp_path / "triton.log")
    assert len(process_group_members(pgid)) >= 2  # tritonserver and its python stubs
    cli.send_signal(signal.SIGTERM)
    output = cli.communicate(timeout=60)[0]
    assert cli.returncode == 0, output
    assert "tritonserver stopped" in output
    assert wait_until_gone(pgid, 5) == []


@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN], ids=["foreground", "background"])
def test_ctrl_c_stops_serve_and_its_server(tiny_repo, tmp_path, inherited):
    cli, pgid = start_serve(tiny_repo, tmp_path / "triton.log", inherited)
    cli.send_signal(signal.SIGINT)
    output = cli.communicate(timeout=60)[0]
    assert cli.returncode == 0 and "tritonserver stopped" in output, output
    assert wait_until_gone(pgid, 5) == []


def test_sigkill_of_the_cli_leaves_no_process(tiny_repo, tmp_path):
    cli, pgid = start_serve(tiny_repo, tmp_path / "triton.log")
    members = process_group_members(pgid)
    assert pgid in members and len(members) >= 2
    cli.kill()  # no handler runs: the kernel's parent-death signal must end the server
    cli.wait()
    assert wait_until_gone(pgid) == []


def test_context_manager_stops_the_whole_process_group(tiny_repo, tmp_path):
    with LocalTriton(tiny_repo, log_file=tmp_path / "triton.log", **ANY_PORTS) as server:
        pgid = server.process.pid
        assert server.is_running() and {m.name for m in server.models} == {"tiny", "tiny_tokenizer",
                                                                            "tiny_text"}
    assert process_group_members(pgid) == []
    assert not server.is_running()


def test_busy_port_is_named_before_anything_starts(tiny_repo, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalTriton(tiny_repo, log_file=tmp_path / "triton.log", **{**ANY_PORTS, "grpc_port": port})
        with pytest.raises(TritonForgeError, match=rf"127\.0\.0\.1:{port}.*--grpc-port"):
            server.start()
    assert server.process is None


def test_a_model_that_cannot_load_fails_the_start_with_triton_s_reason(tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    broken = repo / "tiny"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text((tiny_repo / "tiny" / "config.pbtxt").read_text())
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    server = LocalTriton(repo, log_file=tmp_path / "triton.log", **ANY_PORTS)
    with pytest.raises(TritonForgeError, match=r"(?s)exited with code 1.*failed to load 'tiny'"):
        server.start()
    assert server.process is None and not server.is_running()


def test_an_empty_repository_is_refused(tmp_path):
    with pytest.raises(TritonForgeError, match="no models in"):
        LocalTriton(tmp_path, log_file=tmp_path / "log", **ANY_PORTS).start()


def test_scratch_folders_of_killed_servers_are_removed():
    import tempfile

    from tritonforge.serving.local import SCRATCH_PREFIX, remove_stale_scratch

    dead = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}999999999-left"  # beyond any pid
    alive = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
    dead.mkdir(exist_ok=True)
    try:
        remove_stale_scratch()
        assert not dead.exists() and alive.exists()
    finally:
        alive.rmdir()
