"""A real Triton Inference Server on this machine, without Docker.

The `nvidia-pytriton` wheel ships a `tritonserver` binary (2.51) with the python backend only.
`LocalTriton` copies that server into a scratch folder, adds the python-backend stub built for
the running Python, and serves a *shadow* of the model repository:

- each ONNX model (`backend: "onnxruntime"` or `platform: "onnxruntime_onnx"`) becomes a
  python-backend model of the same name and config (inputs, outputs, max_batch_size, dynamic
  batching, warm-up) whose model.py (`python_models/onnx_runtime.py`) runs ONNX Runtime on the
  same model.onnx, linked from the repository; a streaming model keeps its sequence batcher,
  but its implicit state moves into a parameter and the wrapper keeps the state itself per
  sequence (the python backend never feeds state back);
- ensembles and python-backend models are linked unchanged.

With `nobatch_twins`, every model also gets a `<name>_nobatch` twin without dynamic batching
(ensembles point at their steps' twins), so `bench` can measure both on one server.

Process hygiene: tritonserver runs in its own process group (the python stubs it forks join
it) and is told by the kernel to exit when the process that started it dies
(PR_SET_PDEATHSIG), so neither Ctrl-C, SIGTERM nor SIGKILL of the CLI leaves a server behind.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import ServerUnavailable, TritonForgeError
from tritonforge.modalities import manifest_io
from tritonforge.processes import pid_alive
from tritonforge.serving.endpoint import Endpoint
from tritonforge.serving.python_models import ONNX_RUNTIME_MODEL
from tritonforge.serving.repository import ModelRepository, NewerManifestError
from tritonforge.triton_config import (
    CONFIG_FILE,
    PYTHON_MODEL_FILE,
    config_text,
    config_threads,
    parse_config,
    policy_versions,
    state_specs,
    version_policy_text,
)

NOBATCH_SUFFIX = "_nobatch"
SCRATCH_PREFIX = "tritonforge-serve-"
_PR_SET_PDEATHSIG = 1


# -- the server files ----------------------------------------------------------------------


@dataclass(frozen=True)
class TritonDistribution:
    """Where the nvidia-pytriton wheel keeps the server, its backends, stubs and libraries."""

    root: Path  # .../pytriton/tritonserver
    libs: Path  # .../nvidia_pytriton.libs

    @property
    def stub(self) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"

    @classmethod
    def find(cls) -> TritonDistribution:
        try:
            import pytriton
        except ImportError as exc:
            raise TritonForgeError(
                "the local Triton server comes from the nvidia-pytriton wheel, which is not "
                "installed: `pip install -c constraints.txt nvidia-pytriton` (or `make setup`)") from exc
        package = Path(pytriton.__file__).parent
        found = cls(package / "tritonserver", package.parent / "nvidia_pytriton.libs")
        if not (found.root / "bin" / "tritonserver").is_file():
            raise TritonForgeError(f"{found.root / 'bin' / 'tritonserver'} is missing: reinstall "
                                   "nvidia-pytriton")
        if not found.stub.is_file():
            raise TritonForgeError(
                f"nvidia-pytriton has no python-backend stub for Python "
                f"{sys.version_info.major}.{sys.version_info.minor} ({found.stub}): use Python 3.8-3.13")
        return found

    def install(self, target: Path) -> Path:
        """Lay out the server in `target` as links: the wheel's binary, caches and python
        backend, with the stub for this Python where the backend looks for it (beside
        libtriton_python.so). Returns the binary."""
        (target / "bin").mkdir(parents=True)
        (target / "bin" / "tritonserver").symlink_to(self.root / "bin" / "tritonserver")
        (target / "caches").symlink_to(self.root / "caches")
        backend = target / "backends" / "python"
        backend.mkdir(parents=True)
        for item in (self.root / "backends" / "python").iterdir():
            if item.is_file():
                (backend / item.name).symlink_to(item)
        (backend / "triton_python_backend_stub").symlink_to(self.stub)
        return target / "bin" / "tritonserver"

    def environment(self) -> dict[str, str]:
        """The server finds its libraries, and the python stubs this environment's packages."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p)
        paths = [*site.getsitepackages(), *sys.path[1:]]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p and os.path.isdir(p)))
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env.setdefault("OMP_NUM_THREADS", "1")
        return env


# -- the shadow repository -----------------------------------------------------------------


def is_onnx_model(config: mc.ModelConfig) -> bool:
    """Served from model.onnx: by the onnxruntime backend, or by the openvino backend."""
    return config.platform == "onnxruntime_onnx" or config.backend in ("onnxruntime", "openvino")


def shadow_config(config: mc.ModelConfig, threads: int, limits: dict[str, object] | None = None
                  ) -> mc.ModelConfig:
    """The ONNX model's config, served by the python backend on the CPU (python_models/onnx_runtime.py)."""
    shadow = mc.ModelConfig()
    shadow.CopyFrom(config)
    if config.backend == "openvino":  # the wrapper runs OpenVINO, reading HINT_BF16 as the backend does
        shadow.parameters["runtime"].string_value = "openvino"
        shadow.ClearField("default_model_filename")
    shadow.ClearField("platform")
    shadow.backend = "python"
    shadow.ClearField("optimization")  # TensorRT / CUDA accelerators belong to the onnxruntime backend
    for group in shadow.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        group.ClearField("gpus")
    # The config's own thread count (`tritonforge tune` writes the backend's parameter) over
    # `serve --threads`, so the wrapper runs what Triton's backend would.
    shadow.parameters["intra_op_threads"].string_value = str(config_threads(config) or threads)
    for key, value in (limits or {}).items():  # max_sequence_length, value_ranges, ...: see the wrapper
        shadow.parameters[key].string_value = value if isinstance(value, str) else json.dumps(value)
    if shadow.sequence_batching.state:
        # The python backend never feeds implicit state back: the wrapper keeps it per sequence.
        shadow.parameters["sequence_state"].string_value = json.dumps(
            [{"input": i, "output": o, "dims": dims, "dtype": dtype}
             for i, o, dims, dtype in state_specs(config)])
        shadow.parameters["sequence_idle_us"].string_value = str(
            shadow.sequence_batching.max_sequence_idle_microseconds)
        shadow.sequence_batching.ClearField("state")
    return shadow


def nobatch_twin(config: mc.ModelConfig, twins: set[str]) -> mc.ModelConfig:
    """The same model without dynamic batching; ensemble steps use their own twins."""
    twin = mc.ModelConfig()
    twin.CopyFrom(config)
    twin.name = config.name + NOBATCH_SUFFIX
    twin.ClearField("dynamic_batching")
    for step in twin.ensemble_scheduling.step:
        if step.model_name in twins:
            step.model_name += NOBATCH_SUFFIX
    return twin


def _link_version(source: Path, target: Path, model_py: Path | None) -> None:
    """A version folder of links to the original files (and the ORT model.py, for ONNX models)."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != PYTHON_MODEL_FILE or model_py is None:
            (target / item.name).symlink_to(item.resolve())
    if model_py is not None:
        shutil.copy2(model_py, target / PYTHON_MODEL_FILE)


@dataclass(frozen=True)
class ShadowModel:
    """One model of the shadow repository: the source model it serves and its served config."""

    source: str
    config: mc.ModelConfig
    model_py: Path | None  # the ONNX Runtime wrapper, for an ONNX model

    @property
    def name(self) -> str:
        return self.config.name


def shadow_models(repository: ModelRepository, names: list[str], threads: int = 2,
                  nobatch_twins: bool = False) -> list[ShadowModel]:
    """What the shadow serves for the source models `names` (each with its twin, if asked)."""
    served = []
    for name in names:
        config = repository.read_config(name)
        model_py = None
        if is_onnx_model(config):
            config = shadow_config(config, threads, _manifest_limits(repository, name))
            model_py = ONNX_RUNTIME_MODEL
        served.append(ShadowModel(name, config, model_py))
    if nobatch_twins:  # a sequence model has no unbatched twin: its batcher keeps its state
        everything = set(repository.models())
        served += [ShadowModel(m.source, nobatch_twin(m.config, everything), m.model_py)
                   for m in list(served) if not m.config.HasField("sequence_batching")]
    return served


def write_shadow_model(repository: ModelRepository, target: Path, model: ShadowModel) -> None:
    """The shadow folder of one model, built beside `target/<name>` and swapped into place (a
    server loading it meanwhile sees the old folder or the new one, never half of one)."""
    folder = target / model.name
    building = target / f".building-{model.name}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    for version in repository.versions(model.source):
        _link_version(repository.root / model.source / str(version), building / str(version),
                      model.model_py)
    (building / CONFIG_FILE).write_text(config_text(model.config))
    if folder.exists():
        retired = target / f".retired-{model.name}"
        shutil.rmtree(retired, ignore_errors=True)
        os.rename(folder, retired)
        os.rename(building, folder)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(building, folder)


def write_shadow_repository(repo: Path | str, target: Path, threads: int = 2,
                            nobatch_twins: bool = False) -> list[str]:
    """Write the shadow of `repo` into `target` (see the module doc); returns the model names."""
    repository = ModelRepository(repo)
    repository.check_safe()  # the shadow links every file: nothing may point outside
    names = repository.models()
    if not names:
        raise TritonForgeError(
            f"no models in {repository.root}: export one first (`tritonforge export bert`), "
            "or pass --repo")
    target.mkdir(parents=True, exist_ok=True)
    served = shadow_models(repository, names, threads, nobatch_twins)
    for model in served:
        write_shadow_model(repository, target, model)
    return sorted(model.name for model in served)


def _manifest_limits(repository: ModelRepository, name: str) -> dict[str, object]:
    """The bounds the export's modality declares for one request (`Modality.limits`: the
    longest sequence, the range of each integer input, a text's size)."""
    try:
        manifest = repository.read_manifest(name)
    except NewerManifestError:
        raise
    except TritonForgeError:  # not written by tritonforge: served as its config says
        return {}
    if "io" not in manifest:  # a companion's manifest
        return {}
    return manifest_io(manifest).preprocessing.limits()


# -- the process ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGKILL when our parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def check_port_free(host: str, port: int, option: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TritonForgeError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): another server uses it; "
                f"pass another {option}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def process_group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (zombies excluded), read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def remove_stale_scratch() -> None:
    """Scratch folders (shadow repository, server links) of servers whose CLI was killed."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        owner = folder.name[len(SCRATCH_PREFIX):].split("-")[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)


def remove_shared_memory(prefix: str) -> None:
    """The python backend's shared-memory regions (/dev/shm/<prefix>*) of a server that was
    killed: a server that exits cleanly removes its own."""
    for region in Path("/dev/shm").glob(f"{prefix}*"):
        region.unlink(missing_ok=True)


def repository_snapshot(repository: ModelRepository) -> dict[str, tuple]:
    """What `serve` watches in the source repository: per model, its config's digest and each
    version's number and folder identity (a version replaced with --force is a new folder)."""
    snapshot = {}
    for name in repository.models():
        folder = repository.root / name
        try:
            digest = hashlib.sha256((folder / CONFIG_FILE).read_bytes()).hexdigest()
            versions = tuple((v, (folder / str(v)).stat().st_ino) for v in repository.versions(name))
        except OSError:  # removed while we looked: the next poll sees the result
            continue
        snapshot[name] = (digest, versions)
    return snapshot


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is running"
    if code < 0:
        number = -code
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else "?"
        why = " (the kernel's out-of-memory killer sends SIGKILL too)" if number == signal.SIGKILL else ""
        return f"was killed by {name} (signal {number}){why}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    state: str
    reason: str = ""


class LocalTriton:
    """Context manager: a tritonserver serving the shadow of `repo`, ready when entered.
    A port given as 0 is replaced by a free one. The kernel ends the server when the *thread*
    that started it exits (PR_SET_PDEATHSIG), so start it from a thread that outlives it.

        with LocalTriton("model_repo", http_port=0, grpc_port=0, metrics_port=0) as server:
            client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

    The server runs under explicit model control: `sync()` brings it up to date with the
    source repository (new versions, new models, changed configs, removed models) without a
    restart, and `supervise()` does that every poll while restarting a server that died.
    `user` runs tritonserver as another (unprivileged) user when started as root.
    """

    def __init__(self, repo: Path | str = "model_repo", host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, log_file: Path | str | None = None,
                 threads: int = 2, nobatch_twins: bool = False, ready_timeout_s: float = 300.0,
                 log_verbose: int = 0, user: str | None = None, extra_args: Sequence[str] = (),
                 client: Endpoint | None = None):
        self.repo = Path(repo)
        self.host, self.http_port = host, http_port
        self.grpc_port, self.metrics_port = grpc_port, metrics_port
        # Beside the repository, not in it: Triton treats every folder of a repository as a model.
        self.log_file = Path(log_file) if log_file else Path(f"{self.repo.resolve()}.triton.log")
        self.threads, self.nobatch_twins = threads, nobatch_twins
        self.ready_timeout_s, self.log_verbose = ready_timeout_s, log_verbose
        self.user = user
        # More tritonserver options (TLS, restricted APIs), and how its own clients (readiness,
        # model control) then reach it: `client`'s TLS files and headers, at this server's address.
        self.extra_args, self._client = tuple(extra_args), client
        self._user_ids: dict[str, int] = {}  # Popen's user/group arguments, set by `start`
        self.process: subprocess.Popen | None = None
        self.models: list[ServedModel] = []
        self.restarts = 0
        self._scratch: Path | None = None
        self._launches = 0
        self._served: dict[str, tuple] = {}  # the source snapshot the server was brought up to
        self._seen: dict[str, tuple] = {}  # the last poll's snapshot (a change must settle)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def grpc_endpoint(self) -> Endpoint:
        """The gRPC address with the TLS files and headers its clients need (`client`)."""
        return replace(self._client, address=self.grpc_url) if self._client else Endpoint(self.grpc_url)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def shadow(self) -> Path:
        return self._scratch / "models"

    def __enter__(self) -> LocalTriton:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _shm_prefix(self) -> str:
        return f"tritonforge{os.getpid()}_{self.grpc_port}_{self._launches}_"

    def command(self, binary: Path, shadow: Path, backends: Path) -> list[str]:
        return [
            str(binary), f"--model-repository={shadow}", f"--backend-directory={backends}",
            f"--cache-directory={backends.parent / 'caches'}",
            # Every model of the repository is loaded at start; later changes are loaded by
            # `sync` through the model-control API (the server is bound to this host only).
            "--model-control-mode=explicit", "--load-model=*",
            "--disable-auto-complete-config",  # strict: the config is used as written
            "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=10",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            # Unique shared-memory names, so several local servers (and a restarted one, while
            # the regions of the one that died are removed) can run side by side.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix()}",
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def start(self, on_step: Callable[[str], None] | None = None) -> None:
        on_step = on_step or (lambda _message: None)
        if self.process is not None:
            raise RuntimeError("this LocalTriton is already running")
        # Port 0: any free port (tests run servers side by side).
        self.http_port, self.grpc_port, self.metrics_port = (
            port or free_port(self.host) for port in (self.http_port, self.grpc_port, self.metrics_port))
        for port, option in ((self.http_port, "--http-port"), (self.grpc_port, "--grpc-port"),
                             (self.metrics_port, "--metrics-port")):
            check_port_free(self.host, port, option)
        # an unknown user is refused before anything starts
        self._user_ids = _user_ids(self.user) if self.user is not None else {}
        remove_stale_scratch()
        try:
            self._launch(on_step, append_log=False)
        except BaseException:
            self.stop()
            raise

    def _launch(self, on_step: Callable[[str], None], append_log: bool) -> None:
        """Write a fresh shadow of the source repository and start tritonserver on it."""
        distribution = TritonDistribution.find()
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
            if self.user is not None:  # mkdtemp's 0700 would hide the shadow from that user
                self._scratch.chmod(0o755)
        for item in self._scratch.iterdir():
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        on_step("writing the shadow repository")
        snapshot = repository_snapshot(ModelRepository(self.repo))
        write_shadow_repository(self.repo, self.shadow, self.threads, self.nobatch_twins)
        binary = distribution.install(self._scratch / "tritonserver")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        on_step("starting tritonserver and loading the models")
        self._launches += 1
        with open(self.log_file, "ab" if append_log else "wb") as log:
            self.process = subprocess.Popen(
                self.command(binary, self.shadow, binary.parent.parent / "backends"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=distribution.environment(), start_new_session=True,
                preexec_fn=_die_with_parent, **self._user_ids)
        self._wait_ready()
        self._served = self._seen = snapshot

    def _wait_ready(self) -> None:
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.ready_timeout_s
        client = self.grpc_endpoint.client()
        try:
            while True:
                if self.process.poll() is not None:
                    raise ServerUnavailable(
                        f"tritonserver {describe_exit(self.process.returncode)} while starting; "
                        f"its log ({self.log_file}) ends with:\n{self.log_tail()}")
                try:
                    if client.is_server_ready(headers=self.grpc_endpoint.call_headers):
                        break
                except InferenceServerException:
                    pass
                if time.monotonic() > deadline:
                    raise ServerUnavailable(
                        f"tritonserver was not ready after {self.ready_timeout_s:.0f} s; its log "
                        f"({self.log_file}) ends with:\n{self.log_tail()}")
                time.sleep(0.25)
            self._read_index(client)
        finally:
            client.close()

    def _read_index(self, client) -> None:
        index = client.get_model_repository_index(headers=self.grpc_endpoint.call_headers,
                                                  as_json=True).get("models", [])
        self.models = [ServedModel(m["name"], m.get("version", ""), m.get("state", ""),
                                   m.get("reason", "")) for m in index]

    def log_tail(self, lines: int = 8) -> str:
        """Triton's error lines (model load failures say why there), then the last lines."""
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        failures = [line for line in text if line.startswith("E") and "CudaDriverHelper" not in line]
        return "\n".join([*failures[-10:], *text[-lines:]])

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- live updates ----------------------------------------------------------------------

    def sync(self, on_event: Callable[[str], None] | None = None) -> list[str]:
        """Load what changed in the source repository since the server last looked: new and
        changed models (new versions, a new config) are (re)loaded, and Triton keeps serving
        the loaded versions until the new ones are ready (a config-only change, such as the
        version policy `rollback` writes, reloads the model under its new policy the same way);
        versions removed that the server does not serve (`prune`) only leave the shadow, with
        no reload; removed models are unloaded, and Triton finishes their requests in flight
        first. A change is acted on once it has held
        for two calls, so an export that is still publishing its companions is taken whole.
        Returns what was done, one line each (also given to `on_event`)."""
        from tritonclient.utils import InferenceServerException

        on_event = on_event or (lambda _message: None)
        repository = ModelRepository(self.repo)
        snapshot = repository_snapshot(repository)
        settled, self._seen = snapshot == self._seen, snapshot
        if not settled or snapshot == self._served:
            return []
        changed = sorted(name for name in snapshot if self._served.get(name) != snapshot[name])
        removed = sorted(name for name in self._served if name not in snapshot)
        # Versions removed that the server does not serve (`prune`): no reload, nothing disturbed.
        pruned = {name: gone for name in changed
                  if (gone := self._unserved_removal(repository, name, snapshot[name]))}
        changed = [name for name in changed if name not in pruned]
        done: list[str] = []

        def report(message: str) -> None:
            done.append(message)
            on_event(message)

        try:
            repository.check_safe()
            updated = shadow_models(repository, changed, self.threads, self.nobatch_twins)
        except TritonForgeError as exc:
            report(f"not loading the changes to {', '.join(changed)}: {exc}")
            self._served = snapshot  # reported once; the next change is looked at again
            return done
        for name, gone in sorted(pruned.items()):
            for shadow in (name, f"{name}{NOBATCH_SUFFIX}"):
                for version in gone:
                    shutil.rmtree(self.shadow / shadow / str(version), ignore_errors=True)
            report(f"removed version(s) {', '.join(map(str, gone))} of {name} from the shadow: not "
                   "served, so nothing was reloaded")
        if not updated and not removed:
            self._served = snapshot
            return done
        client, headers = self.grpc_endpoint.client(), self.grpc_endpoint.call_headers
        try:
            for model in sorted(updated, key=lambda m: m.config.platform == "ensemble"):
                write_shadow_model(repository, self.shadow, model)
                try:
                    client.load_model(model.name, headers=headers)
                    versions = repository.versions(model.source)
                    served = policy_versions(model.config, versions)
                    report(f"loaded {model.name} (versions on disk: {', '.join(map(str, versions))}; "
                           f"served: {', '.join(map(str, served)) or 'none'}, version policy "
                           f"{version_policy_text(model.config)})")
                except InferenceServerException as exc:
                    report(f"could not load {model.name}: {exc.message()}; the versions "
                           "loaded before keep serving")
            gone = [f"{name}{suffix}" for name in removed for suffix in ("", NOBATCH_SUFFIX)
                    if (self.shadow / f"{name}{suffix}").is_dir()]
            ensembles = {name for name in gone if parse_config(
                (self.shadow / name / CONFIG_FILE).read_text()).platform == "ensemble"}
            for name in sorted(gone, key=lambda n: n not in ensembles):  # ensembles first
                try:
                    client.unload_model(name, headers=headers)  # returns once its requests in flight are done
                    report(f"unloaded {name} (removed from {self.repo})")
                except InferenceServerException as exc:
                    report(f"could not unload {name}: {exc.message()}")
                shutil.rmtree(self.shadow / name, ignore_errors=True)
            self._read_index(client)
        except InferenceServerException as exc:  # the server went away: `supervise` restarts it
            report(f"tritonserver did not answer while loading ({exc.message()}); trying again")
            return done
        finally:
            client.close()
        self._served = snapshot
        return done

    def _unserved_removal(self, repository: ModelRepository, name: str, now: tuple) -> list[int]:
        """The versions of `name` removed since it was loaded, when that is its only change
        (same config, the other versions the same folders) and the server serves none of
        them; else []: the model is reloaded."""
        before = self._served.get(name)
        if before is None or before[0] != now[0] or not set(now[1]) < set(before[1]):
            return []
        gone = sorted({v for v, _inode in before[1]} - {v for v, _inode in now[1]})
        try:
            served = policy_versions(repository.read_config(name), [v for v, _inode in before[1]])
        except TritonForgeError:
            return []
        return [] if set(gone) & set(served) else gone

    # -- supervision -----------------------------------------------------------------------

    def supervise(self, on_event: Callable[[str], None] | None = None, max_restarts: int = 5,
                  poll_s: float = 1.0, watch: bool = True, stable_s: float = 60.0) -> None:
        """Run until interrupted: every `poll_s`, `sync` the repository (when `watch`) and check
        that tritonserver lives. A server that died is restarted at once and then with back-off
        (1, 2, 4 ... 30 s between tries), its log tail reported; after `max_restarts` restarts
        without `stable_s` of healthy serving in between, raises ServerUnavailable. Clients get
        UNAVAILABLE while no server listens. Call from the thread that started the server."""
        on_event = on_event or (lambda _message: None)
        failures, up_since = 0, time.monotonic()
        while True:
            if self.is_running():
                if failures and time.monotonic() - up_since > stable_s:
                    failures = 0
                if watch:
                    self.sync(on_event)
                time.sleep(poll_s)
                continue
            why = (f"tritonserver {describe_exit(self.process.returncode if self.process else None)}; "
                   f"its log ({self.log_file}) ends with:\n{self.log_tail()}")
            self._reap()
            if failures >= max_restarts:
                raise ServerUnavailable(f"{why}\ngave up after {failures} restarts in a row "
                                        f"(--max-restarts {max_restarts})")
            delay = 0.0 if failures == 0 else min(2.0 ** (failures - 1), 30.0)
            failures += 1
            on_event(f"{why}\nrestarting it{f' in {delay:g} s' if delay else ''} "
                     f"(restart {failures} of at most {max_restarts})")
            time.sleep(delay)
            try:
                self._launch(on_event, append_log=True)
                self.restarts += 1
                up_since = time.monotonic()
                on_event(f"tritonserver is back (pid {self.process.pid}); models: "
                         f"{', '.join(m.name for m in self.models)}")
            except TritonForgeError as exc:
                on_event(f"restart failed: {exc}")

    def _reap(self) -> None:
        """What a dead server leaves: its stubs (same process group) and shared memory."""
        process, self.process = self.process, None
        if process is not None:
            self._kill_group(process.pid)
            process.wait()
        remove_shared_memory(self._shm_prefix())

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (Triton unloads its models and ends the stubs), then SIGKILL the group."""
        process = self.process
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            self._reap()
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    @staticmethod
    def _kill_group(pgid: int, timeout_s: float = 5.0) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout_s
        while process_group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _user_ids(user: str) -> dict[str, int]:
    """Popen's user/group arguments for running the server as `user` (a name or uid)."""
    import pwd

    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise TritonForgeError(f"--user {user!r}: no such user on this machine; give an existing "
                               "user name or uid (e.g. nobody)") from None
    if entry.pw_uid != os.getuid() and os.geteuid() != 0:
        raise TritonForgeError(f"--user {user!r}: only root can run the server as another user; "
                               "leave --user out")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
