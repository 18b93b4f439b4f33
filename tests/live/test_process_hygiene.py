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


def start_serve(repo: Path, log: Path, sigint: object = signal.SIG_DFL, *options: str
                ) -> tuple[subprocess.Popen, int]:
    """`tritonforge serve` in a subprocess; returns it and the tritonserver's pid (= its group).
    `sigint` is the SIGINT disposition it inherits (a background job in a shell without job
    control inherits SIG_IGN)."""
    command = [sys.executable, "-m", "tritonforge.cli", "serve", "--repo", str(repo), "--log", str(log),
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *options]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "COLUMNS": "200"},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    lines = []
    for line in cli.stdout:
        lines.append(line)
        if "Ctrl-C or SIGTERM stops the server" in line:
            break
    pids = re.findall(r"\(pid (\d+),", "".join(lines))
    assert pids, "".join(lines)
    return cli, int(pids[0])


def grpc_url_of(log: Path) -> str:
    return re.findall(r"Started GRPCInferenceService at (\S+?)\"", log.read_text())[-1]


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


# -- supervision: a tritonserver that dies is restarted ---------------------------------------


def server_pids(cli_pid: int) -> list[int]:
    """The tritonserver processes the CLI started (its children named tritonserver)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == cli_pid and (entry / "comm").read_text().strip() == "tritonserver":
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_killed_server_is_restarted_and_clients_see_unavailable_only_meanwhile(tiny_repo, tmp_path):
    import threading

    import numpy as np
    import tritonclient.grpc as grpcclient

    log = tmp_path / "triton.log"
    cli, first = start_serve(tiny_repo, log, signal.SIG_DFL, "--max-restarts", "3")
    url = grpc_url_of(log)
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def load() -> None:
        client = grpcclient.InferenceServerClient(url)
        text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"a sentence under load"]], dtype=object))
        while not stop.is_set():
            sent = time.monotonic()
            try:
                client.infer("tiny_text", [text], client_timeout=10)
                outcomes.append((sent, "ok"))
            except Exception as exc:  # what a client sees during the gap
                outcomes.append((sent, getattr(exc, "status", lambda: "")() or str(exc)))
                time.sleep(0.05)
        client.close()

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        deadline = killed_at + 60
        while time.monotonic() < deadline and not any(t > killed_at and s == "ok" for t, s in outcomes[-20:]):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert cli.poll() is None, "serve gave up after one kill"
    second = server_pids(cli.pid)
    assert len(second) == 1 and second[0] != first
    assert wait_until_gone(first, 10) == []  # the killed server's python stubs are gone too
    after = [status for sent, status in outcomes if sent > killed_at]
    assert "ok" in after, outcomes[-5:]
    assert {status for status in after if status != "ok"} <= {"StatusCode.UNAVAILABLE"}
    cli.send_signal(signal.SIGTERM)
    output = cli.communicate(timeout=60)[0]
    assert cli.returncode == 0, output
    assert "was killed by SIGKILL" in output and "restarting it" in output and "is back" in output
    assert wait_until_gone(second[0], 5) == []


def test_serve_gives_up_after_its_restarts_and_exits_3_with_the_log_tail(tiny_repo, tmp_path):
    log = tmp_path / "triton.log"
    cli, first = start_serve(tiny_repo, log, signal.SIG_DFL, "--max-restarts", "0")
    os.kill(first, signal.SIGKILL)
    output = cli.communicate(timeout=60)[0]
    assert cli.returncode == 3, output
    assert "was killed by SIGKILL" in output and "gave up after 0 restarts" in output
    assert "--max-restarts 0" in output and str(log) in output
    assert wait_until_gone(first, 5) == [] and server_pids(cli.pid) == []


def readable_by(uid: int, gid: int, paths: list[Path]) -> list[str]:
    """The paths that user `uid` cannot read (folders: list), checked in a forked child."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(read)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        refused = []
        for path in paths:
            try:
                os.listdir(path) if path.is_dir() else open(path, "rb").close()
            except OSError:
                refused.append(str(path))
        os.write(write, "\n".join(refused).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        refused = pipe.read()
    os.waitpid(child, 0)
    return [line for line in refused.splitlines() if line]


PYTHON_HIDDEN = "the python stubs need this Python, which an unprivileged user cannot read here"


@pytest.mark.skipif(os.geteuid() != 0, reason="running the server as another user needs root")
def test_a_repository_exported_by_root_is_served_by_an_unprivileged_user(tiny_bert, tmp_path):
    """Exported by root under the usual umask, read by tritonserver running as nobody (as the
    production image runs as triton-server): published files must not be private to root."""
    import pwd
    import shutil
    import tempfile

    import numpy as np
    import tritonclient.grpc as grpcclient

    from tritonforge.export.bert import BertOptions
    from tritonforge.pipeline.export import export_model

    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="tritonforge-nobody-"))  # pytest's own folders are 0700
    try:
        shared.chmod(0o755)
        previous = os.umask(0o022)
        try:
            export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), shared / "repo",
                         name="tiny")
        finally:
            os.umask(previous)
        published = [shared / "repo", *(shared / "repo").rglob("*")]
        assert readable_by(nobody.pw_uid, nobody.pw_gid, published) == []
        if readable_by(nobody.pw_uid, nobody.pw_gid, [Path(sys.base_prefix) / "lib"]):
            pytest.skip(f"{PYTHON_HIDDEN} ({sys.base_prefix}); every published file was readable")
        with LocalTriton(shared / "repo", log_file=tmp_path / "triton.log", user="nobody",
                         **ANY_PORTS) as server:
            assert os.stat(f"/proc/{server.process.pid}").st_uid == nobody.pw_uid
            client = grpcclient.InferenceServerClient(server.grpc_url)
            text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[b"served by nobody"]], dtype=object))
            embedding = client.infer("tiny_text", [text]).as_numpy("sentence_embedding")
            client.close()
        assert embedding.shape == (1, 32) and np.isfinite(embedding).all()
    finally:
        shutil.rmtree(shared)


def test_an_unknown_user_is_refused_before_anything_starts(tiny_repo, tmp_path):
    server = LocalTriton(tiny_repo, log_file=tmp_path / "triton.log", user="no-such-user-here",
                         **ANY_PORTS)
    with pytest.raises(TritonForgeError, match="--user 'no-such-user-here': no such user"):
        server.start()
    assert server.process is None
