"""Crash consistency of the model repository: whatever happens to an export (SIGKILL at any
point, a full disk, another export racing for the same name), a reader of the repository (a
Triton polling it) sees only whole models and whole versions, and every served version stays
readable."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import TritonForgeError
from tritonforge.modalities import Tensors
from tritonforge.pipeline.export import export_model
from tritonforge.serving.repository import ModelRepository, write_manifest
from tritonforge.spec import ModelIO, TensorSpec
from tritonforge.triton_config import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    CompanionModel,
    ServingOptions,
    model_config,
    parse_config,
)

TESTS = Path(__file__).resolve().parents[1]
WIDTH = 16_384  # a 256 KiB weight: model.onnx is written in many chunks, so kills land inside it
IO = ModelIO((TensorSpec("x", "float32", (4,)),), (TensorSpec("y", "float32", (WIDTH,)),), Tensors())
KILLS = 50


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    """A real ONNX model (y = x @ W) of about 256 KiB."""
    weight = np.random.default_rng(0).standard_normal((4, WIDTH)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "crash",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [onnx.numpy_helper.from_array(weight, "W")])
    path = tmp_path_factory.mktemp("onnx") / MODEL_FILE
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_model(source: Path, writer: str = "") -> Callable[[Path, int], None]:
    """A populate callback writing as an export does: model.onnx in chunks, then the manifest."""
    def populate(folder: Path, number: int) -> None:
        data = source.read_bytes()
        with open(folder / MODEL_FILE, "wb") as out:
            for start in range(0, len(data), 8192):
                out.write(data[start:start + 8192])
                out.flush()
        write_manifest(folder, {"name": folder.parent.name, "version": number, "writer": writer,
                                "onnx": {"file": MODEL_FILE, "sha256": sha256(folder / MODEL_FILE)}})
    return populate


def companions_of(name: str) -> tuple[CompanionModel, ...]:
    """A python step that reads the model's file, and an ensemble calling the model after it."""
    step = CompanionModel(mc.ModelConfig(name=f"{name}_step", backend="python"),
                          {"weights.onnx": MODEL_FILE})
    ensemble = mc.ModelConfig(name=f"{name}_text", platform="ensemble")
    steps = ensemble.ensemble_scheduling.step
    steps.add(model_name=step.name, model_version=-1)
    steps.add(model_name=name, model_version=-1)
    return step, CompanionModel(ensemble)


def write_export(root: Path, name: str, source: Path, writer: str = "", **options) -> int:
    """What `export_model` does to the repository: a version of `name` and its companions."""
    return ModelRepository(root).write_version(
        name, model_config(name, IO, ServingOptions()), copy_model(source, writer),
        companions=companions_of(name), companion_fields={"family": "crash"}, **options)


def fork(work: Callable[[], object]) -> tuple[int, int]:
    """Run `work` in a forked child; (its pid, a pipe that gives 'ok' or the error it raised)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            work()
            os.write(write, b"ok")
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    return pid, read


def outcome(pid: int, pipe: int) -> str:
    """Wait for the child; what it reported ('' when it was killed before reporting)."""
    os.waitpid(pid, 0)
    with os.fdopen(pipe, "rb") as reader:
        return reader.read().decode()


def staging_left(root: Path) -> list[Path]:
    return sorted(ModelRepository(root).staging_area().glob("staging-*"))


def signature(path: Path) -> tuple:
    """Which files `path` holds (itself, or those in it), by inode, size and modification time."""
    files = [path] if path.is_file() else sorted(path.iterdir())
    return tuple((p.name, (s := p.stat()).st_ino, s.st_size, s.st_mtime_ns) for p in files)


def check_repository(root: Path, seen: dict[Path, tuple]) -> None:
    """What a polling Triton would see is whole: every sub-folder of the root is a model with a
    valid config and only version folders; every version's manifest parses and matches its
    folder and files; a companion's version has its model's version beside it; an ensemble
    calls only models that are there; new ONNX versions load. A version in `seen` (checked
    before, with its files' signature) must still be there, unchanged."""
    repository = ModelRepository(root)
    models = repository.models()
    assert sorted(p.name for p in root.iterdir()) == models  # no staging, no temp files
    unchanged = set()
    for model in models:
        config = parse_config((root / model / CONFIG_FILE).read_text())
        assert config.name == model
        versions = repository.versions(model)
        assert {p.name for p in (root / model).iterdir()} == {CONFIG_FILE, *map(str, versions)}
        for step in config.ensemble_scheduling.step:
            assert step.model_name in models, f"{model} calls {step.model_name}, which is missing"
        for version in versions:
            folder = root / model / str(version)
            files = signature(folder)
            if seen.get(folder) == files:
                unchanged.add(folder)
                continue
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            assert (manifest["name"], manifest["version"]) == (model, version)
            if "companion_of" in manifest:  # published after its model's version
                owner = manifest["companion_of"]
                owner_folder = root / owner["name"] / str(version)
                assert model.startswith(f"{owner['name']}_") and owner["version"] == version
                assert (owner_folder / MANIFEST_FILE).is_file()
                if (folder / "weights.onnx").is_file():
                    assert sha256(folder / "weights.onnx") == sha256(owner_folder / MODEL_FILE)
            else:
                assert sha256(folder / MODEL_FILE) == manifest["onnx"]["sha256"]
                onnxruntime.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
            assert folder not in seen, f"{folder} changed after it was published"
            seen[folder] = files
            unchanged.add(folder)
    assert set(seen) == unchanged, "a version published before was lost or changed"


def kill_after_renames(count: int) -> None:
    """In a child: SIGKILL itself right after its `count`-th rename (a publish step)."""
    calls = {"n": 0}
    for name in ("rename", "replace"):
        original = getattr(os, name)

        def wrapped(*args, _original=original, **kwargs):
            _original(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
        setattr(os, name, wrapped)


def test_fifty_sigkills_during_exports_leave_only_whole_versions(tmp_path, onnx_file):
    root = tmp_path / "repo"
    rng = random.Random(12)
    seen: dict[Path, tuple] = {}
    durations, between = [], 0
    for _ in range(3):  # how long one export-like write takes here, to spread the kill times
        start = time.monotonic()
        pid, pipe = fork(lambda: write_export(root, "clf", onnx_file))
        assert outcome(pid, pipe) == "ok"
        durations.append(time.monotonic() - start)
    check_repository(root, seen)
    for kill in range(KILLS):
        name = rng.choice(["clf", "clf", f"new{kill}"])  # new models must appear whole too
        renames = rng.randint(1, 5) if kill % 2 else 0  # 3 publishes: model, step, ensemble

        def work(name=name, renames=renames):
            if renames:
                kill_after_renames(renames)
            write_export(root, name, onnx_file)

        pid, pipe = fork(work)
        if not renames:
            time.sleep(rng.uniform(0, 1.2 * max(durations)))
            os.kill(pid, signal.SIGKILL)
        assert outcome(pid, pipe) in ("", "ok")
        check_repository(root, seen)
        repository = ModelRepository(root)
        between += repository.versions(name)[-1:] != repository.versions(f"{name}_text")[-1:]
        # The next write succeeds, takes a number nobody has, and clears the killed one's staging.
        before = ModelRepository(root).versions("clf")
        assert write_export(root, "clf", onnx_file) == max(before, default=0) + 1
        assert staging_left(root) == []  # (what it published is checked after the next kill)
    check_repository(root, seen)
    assert len(seen) > KILLS
    assert between > 0  # some kills fell between a model's version and its companions'


def test_force_replacement_killed_midway_gets_the_old_version_back(tmp_path, onnx_file):
    root = tmp_path / "repo"
    write_export(root, "clf", onnx_file)
    served = sha256(root / "clf" / "1" / MODEL_FILE)
    # Killed right after moving version 1 aside, before the new one took its place.
    pid, pipe = fork(lambda: (kill_after_renames(1), write_export(root, "clf", onnx_file, version=1,
                                                                  force=True)))
    assert outcome(pid, pipe) == ""
    assert ModelRepository(root).versions("clf") == []  # the documented window of --force
    assert write_export(root, "clf", onnx_file) == 2  # the next writer puts version 1 back
    assert sha256(root / "clf" / "1" / MODEL_FILE) == served
    check_repository(root, {})


def race(root: Path, source: Path, rounds: int, **options) -> list[str]:
    """Two forked writers of `clf` released at the same moment, `rounds` times; what each said."""
    said = []
    for _ in range(rounds):
        gate_read, gate_write = os.pipe()

        def work(writer, gate=gate_read):
            os.read(gate, 1)  # both wait here until the parent opens the gate
            write_export(root, "clf", source, writer=writer, **options)

        children = [fork(lambda writer=writer: work(writer)) for writer in ("a", "b")]
        os.write(gate_write, b"go")
        said += [outcome(pid, pipe) for pid, pipe in children]
        os.close(gate_read)
        os.close(gate_write)
    return said


def test_two_exports_racing_for_a_name_both_publish_as_the_next_numbers(tmp_path, onnx_file):
    root = tmp_path / "repo"
    assert race(root, onnx_file, rounds=5) == ["ok"] * 10  # the first round creates the model
    repository = ModelRepository(root)
    assert repository.versions("clf") == list(range(1, 11))
    writers = [json.loads((root / "clf" / str(v) / MANIFEST_FILE).read_text())["writer"]
               for v in range(1, 11)]
    assert sorted(writers) == ["a"] * 5 + ["b"] * 5
    assert repository.versions("clf_step") == repository.versions("clf_text") == list(range(1, 11))
    check_repository(root, {})
    assert staging_left(root) == []


def test_two_exports_racing_for_one_requested_version_publish_it_once(tmp_path, onnx_file):
    root = tmp_path / "repo"
    said = race(root, onnx_file, rounds=1, version=3)
    assert sorted(said)[1] == "ok"
    assert sorted(said)[0].startswith("TritonForgeError: ")
    assert ("already exists and may be served" in said[0] + said[1]
            or "is being written by another export" in said[0] + said[1])
    assert ModelRepository(root).versions("clf") == [3]
    check_repository(root, {})


def fill_disk_in_child(work: Callable[[], object], limit: int) -> str:
    """Run `work` in a child whose files may not grow past `limit` bytes (RLIMIT_FSIZE): a write
    beyond it fails with EFBIG, as a full disk fails with ENOSPC."""
    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a signal that kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        work()

    return outcome(*fork(limited))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_full_disk_while_writing_leaves_the_repository_exactly_as_it_was(tmp_path, onnx_file):
    root = tmp_path / "repo"
    write_export(root, "clf", onnx_file)
    before = snapshot(root)
    said = fill_disk_in_child(lambda: write_export(root, "clf", onnx_file), limit=64 * 1024)
    assert said.startswith(f"TritonForgeError: no space left to write clf version 2 for the model "
                           f"repository {root} (File too large: ")
    assert "nothing was published" in said and "free space on that disk" in said
    assert snapshot(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["clf", "clf_step", "clf_text"]
    assert staging_left(root) == []
    assert write_export(root, "clf", onnx_file) == 2


def test_a_full_disk_reported_only_at_fsync_publishes_nothing(tmp_path, onnx_file, monkeypatch):
    root = tmp_path / "repo"
    write_export(root, "clf", onnx_file)
    before = snapshot(root)

    def fsync(_handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(TritonForgeError, match="No space left on device.*nothing was published"):
        write_export(root, "clf", onnx_file)
    assert snapshot(root) == before
    assert staging_left(root) == []


# -- real `tritonforge export` processes -----------------------------------------------------

def tritonforge_export(repo: Path) -> subprocess.Popen:
    """`tritonforge export toy_image` (the worked-example family, registered by importing it, as
    a plugin's entry point would) in its own process."""
    command = [sys.executable, "-c", "import toy_family; from tritonforge.cli import main; main()",
               "export", "toy_image", "--repo", str(repo)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_real_exports_killed_at_random_points_leave_only_whole_versions(tmp_path):
    from toy_family import ToyImageOptions

    root = tmp_path / "repo"
    root.mkdir()
    rng = random.Random(3)
    seen: dict[Path, tuple] = {}
    for _ in range(2):
        process = tritonforge_export(root)
        deadline = time.monotonic() + 120
        while not staging_left(root):  # the export has begun writing: kill it within its work
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 1.0))
        process.kill()
        process.communicate()
        check_repository(root, seen)
        before = ModelRepository(root).versions("toy_image")
        result = export_model("toy_image", ToyImageOptions(), root)
        assert result.version == max(before, default=0) + 1
        assert ModelRepository(root).versions("toy_image_image")[-1] == result.version
        assert staging_left(root) == []
        check_repository(root, seen)


def test_two_real_exports_racing_for_a_name_both_publish(tmp_path):
    root = tmp_path / "repo"
    processes = [tritonforge_export(root) for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    repository = ModelRepository(root)
    for model in ("toy_image", "toy_image_image_decode", "toy_image_image"):
        assert repository.versions(model) == [1, 2]
    check_repository(root, {})
