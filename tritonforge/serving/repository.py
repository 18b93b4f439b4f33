"""The Triton model repository: protobuf configs, numbered versions, manifests, atomic writes.

Layout (what Triton reads, plus our manifest beside the model):

    <repo>/<name>/config.pbtxt
    <repo>/<name>/<version>/model.onnx
    <repo>/<name>/<version>/tritonforge.json

and, beside the repository, where versions are built (`ModelRepository.staging_area`):

    <parent>/.<repo name>.staging/staging-<pid>-<random>/owner.json   who builds what
    <parent>/.<repo name>.staging/staging-<pid>-<random>/models/<name>/...

Triton's poll mode takes every sub-folder of the repository for a model, hidden ones too, so
nothing is built inside it; only when the parent is on another filesystem or read-only does
staging fall back to `<repo>/.tritonforge-staging/`.

What a reader (a Triton polling the repository) can see, whatever happens to a writer
(SIGKILL at any point, a full disk, another export racing for the same name):
- a new model appears whole: one rename of a folder holding its config.pbtxt and version;
- a new version appears by one rename, then the config is replaced by another (os.replace);
- a published version folder is never modified; only `force` replaces one (moved aside, the
  new one renamed in; if the writer dies in between, the next writer puts the old one back);
- an export's companions (tokenizer step, ensemble) are built with its model and published
  after it, so no companion ever calls a missing model;
- a full disk while building raises a TritonForgeError and publishes nothing.
- a config-only change (a version policy: `rollback`) is one os.replace of config.pbtxt;
- a version is removed (`prune`) by one rename out of the repository into a staging folder,
  deleted from there; if the writer dies first, the next writer deletes it.
A version number is chosen, and versions are published, under an flock on the repository
folder; each writer's staging folder records the number it builds (flocked while it lives),
so racing exports take N and N+1, and the folders of dead writers are removed by the next.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import TritonForgeError
from tritonforge.processes import pid_alive
from tritonforge.triton_config import (
    CONFIG_FILE,
    MANIFEST_FILE,
    CompanionModel,
    config_text,
    follow_policy,
    io_signature,
    is_model_name,
    parse_config,
    policy_versions,
    set_version_policy,
    validate_name,
    version_policy_text,
)

STAGING_PREFIX = "staging-"  # <staging area>/staging-<pid>-<random>/
LEGACY_STAGING_PREFIX = ".staging-"  # inside the repository, by tritonforge before the staging area
INSIDE_STAGING = ".tritonforge-staging"  # the staging area when none can sit beside the repository
OWNER_FILE = "owner.json"  # in a staging folder: who builds what; flocked while the writer lives
STAGED_MODELS = "models"  # in a staging folder: the model folders being built
REPLACED = "replaced"  # in a staging folder: versions moved aside to be replaced (force)
RETIRED = "retired"  # in a staging folder: versions moved out of the repository to be deleted (prune)
LOCK_FILE = ".tritonforge.lock"  # the write lock where folders cannot be flocked (NFS)
FULL_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The manifest format this tritonforge writes; it reads this one and every older one.
MANIFEST_VERSION = 2


# -- the repository ------------------------------------------------------------------------


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_modes(root: Path) -> None:
    """Give `root` and everything under it the modes a plain `mkdir`/`open` would have given:
    folders 0o777 and files 0o666 (0o777 when executable) less the umask. Staging folders from
    `mkdtemp` (0700) and files from `mkstemp` (0600) would otherwise be published private, and
    a Triton running as another user could not read them."""
    mask = _umask()
    folder_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    paths = [root] if root.is_file() else [root, *root.rglob("*")]
    for path in paths:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(folder_mode)
        else:
            executable = path.stat().st_mode & 0o100
            path.chmod(folder_mode if executable else file_mode)


class ModelRepository:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    # reading ------------------------------------------------------------------------------

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).is_file())

    def check_is_repository(self) -> None:
        """Refuse a path that is missing, a file, or a folder of something else (entries but no
        model folder with a config.pbtxt). An empty folder is an empty repository."""
        if not self.root.exists():
            raise TritonForgeError(f"model repository {self.root} does not exist: export a model "
                                   "into it first (`tritonforge export bert`), or pass --repo")
        if not self.root.is_dir():
            raise TritonForgeError(f"model repository {self.root} is a file, not a folder: pass "
                                   "the repository folder with --repo")
        visible = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        if visible and not self.models():
            raise TritonForgeError(
                f"{self.root} is not a model repository: none of its {len(visible)} entries is a "
                f"model folder with a {CONFIG_FILE}; pass the repository folder with --repo")

    def check_safe(self) -> None:
        """Refuse a repository whose entries would make Triton (or `serve`'s shadow, which links
        every file) read outside it, or whose model names are not plain folder names.

        The rule, entry by entry (hidden top-level entries, e.g. staging folders, are skipped):
        - a model folder (one with a config.pbtxt) must have a name `validate_name` accepts;
        - a top-level symlink must resolve to a model folder, a folder with a config.pbtxt
          (a model shared from another repository, as the serving tests do); a link to
          anything else (a system folder, a dangling link) is refused;
        - inside a model folder, at any depth, a symlink must resolve inside that model's
          (resolved) folder or inside this repository, so a version file can never be
          /etc/passwd or /proc/...; and every entry must be a plain file, folder or such a
          link (no FIFO, socket or device, which would hang or leak when read).
        A missing root is left to `check_is_repository`."""
        if not self.root.is_dir():
            return
        root = self.root.resolve()
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_symlink() and not (entry.is_dir() and (entry / CONFIG_FILE).is_file()):
                raise TritonForgeError(
                    f"{entry} is a link to {os.path.realpath(entry)}, which is not a model folder "
                    f"(no {CONFIG_FILE}): remove the link, or link a model folder instead")
            if not (entry.is_dir() and (entry / CONFIG_FILE).is_file()):
                continue  # not a model: Triton fails to load it, and `ls` does not list it
            try:
                validate_name(entry.name)
            except TritonForgeError as exc:
                raise TritonForgeError(f"{entry}: {exc}; rename the folder") from None
            self._check_model_entries(entry, (entry.resolve(), root))

    @staticmethod
    def _check_model_entries(model_dir: Path, anchors: tuple[Path, ...]) -> None:
        """Every entry under `model_dir` is a plain file or folder, or a link inside `anchors`."""
        for folder, dirs, files in os.walk(model_dir):  # does not descend into linked folders
            for name in sorted(dirs + files):
                path = Path(folder) / name
                if path.is_symlink():
                    target = Path(os.path.realpath(path))
                    if not any(target.is_relative_to(anchor) for anchor in anchors):
                        raise TritonForgeError(
                            f"{path} is a link to {target}, outside the model folder and the "
                            f"repository: replace the link with a copy of the file, or remove it")
                    mode = target.stat().st_mode if target.exists() else None
                else:
                    mode = path.lstat().st_mode
                if mode is None or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise TritonForgeError(
                        f"{path} is not a plain file or folder (a dangling link, FIFO, socket or "
                        "device): remove it from the repository")

    def check_exported(self, name: str, version: int | None = None) -> None:
        """Refuse a companion (an ensemble or python step served beside an export, whose
        manifest says `companion_of`): it has no ONNX model of its own to verify."""
        manifest = self.read_manifest(name, version)
        owner = manifest.get("companion_of")
        if owner:
            raise TritonForgeError(
                f"{name!r} is a companion model ({manifest.get('kind') or 'ensemble'}) of the "
                f"export {owner.get('name')!r}, with no ONNX model of its own: verify "
                f"{owner.get('name')!r} instead (`tritonforge verify {owner.get('name')}`)")

    def versions(self, name: str) -> list[int]:
        folder = self.root / validate_name(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def resolve(self, name: str, version: int | None = None) -> tuple[int, Path]:
        """(version, folder) of an existing version; the latest when version is None."""
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.models()) or "none yet"
            raise TritonForgeError(
                f"no model named {name!r} in {self.root} (models there: {known}); "
                f"export it first, e.g. `tritonforge export bert --name {name}`, or pass --repo")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise TritonForgeError(
                f"model {name!r} has no version {chosen} (versions: {', '.join(map(str, versions))})")
        return chosen, self.root / name / str(chosen)

    def read_manifest(self, name: str, version: int | None = None) -> dict[str, Any]:
        version, folder = self.resolve(name, version)
        path = folder / MANIFEST_FILE
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise TritonForgeError(
                f"{path} is missing: this version was not written by tritonforge; export again"
            ) from exc
        except json.JSONDecodeError as exc:
            raise TritonForgeError(f"{path} is not valid JSON ({exc}): export the model again") from exc
        check_manifest_version(manifest, path)
        return manifest

    def read_config(self, name: str) -> mc.ModelConfig:
        path = self.root / validate_name(name) / CONFIG_FILE
        try:
            return parse_config(path.read_text())
        except FileNotFoundError as exc:
            raise TritonForgeError(f"{path} is missing: export the model again") from exc
        except text_format.ParseError as exc:
            raise TritonForgeError(f"{path} is not a valid Triton model config: {exc}") from exc

    def served_versions(self, name: str) -> list[int]:
        """The versions on disk that `name`'s config's version policy serves."""
        return policy_versions(self.read_config(name), self.versions(name))

    def companions(self, name: str) -> list[str]:
        """The companion models written with the export `name` (their manifests say
        `companion_of` it), ensembles last: the order in which they are published."""
        found = []
        for model in self.models():
            if model == name:
                continue
            try:
                manifest = self.read_manifest(model)
            except TritonForgeError:
                continue
            if (manifest.get("companion_of") or {}).get("name") == name:
                found.append((manifest.get("kind") == "ensemble", model))
        return [model for _ensemble, model in sorted(found)]

    # writing ------------------------------------------------------------------------------

    def _ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(dir=self.root, prefix=".write-check-")
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            raise TritonForgeError(
                f"cannot write the model repository {self.root}: {exc.strerror or exc}; "
                "choose another folder with --repo or fix its permissions") from exc

    def _staging_areas(self) -> tuple[Path, Path]:
        """(beside the repository, inside it): the two places a version may be built."""
        root = self.root.resolve()
        return root.parent / f".{root.name}.staging", root / INSIDE_STAGING

    def staging_area(self) -> Path:
        """The folder where versions are built before a rename publishes them (created if needed).

        Triton's poll mode takes every sub-folder of the repository for a model, hidden ones
        included (triton-inference-server/core, src/filesystem/implementations/local.h:
        GetDirectorySubdirs drops only "." and ".."), so a staging folder inside the repository
        is polled as a model that fails to load. Staging therefore sits beside the repository,
        in `<parent>/.<repo name>.staging/`, when that folder is on the repository's filesystem
        (os.rename is atomic only within one) and writable; otherwise (the repository is a mount
        point, or its parent is read-only) in `<repo>/.tritonforge-staging/`."""
        beside, inside = self._staging_areas()
        root_device = self.root.stat().st_dev
        try:
            if beside.parent.stat().st_dev == root_device and beside.parent != inside.parent:
                beside.mkdir(exist_ok=True)
                if beside.stat().st_dev == root_device and os.access(beside, os.W_OK | os.X_OK):
                    return beside
        except OSError:
            pass
        inside.mkdir(exist_ok=True)
        return inside

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the repository's write lock, taken to choose a version number and to publish.

        It is an flock on the repository folder itself: the same lock however the repository
        is reached and wherever staging sits, nothing written for it, and the kernel drops it
        when the holder dies, even by SIGKILL. NFS emulates flock with POSIX locks, which need
        a file open for writing: there a hidden lock file in the repository root is locked
        instead (Triton reads only the root's sub-folders, never its files)."""
        handle = os.open(self.root, os.O_RDONLY)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                os.close(handle)
                handle = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)

    def _remove_stale_staging(self) -> list[dict[str, Any]]:
        """Remove the staging folders of writers that are gone (killed, or the machine went
        down) and return the records of those still writing. Call it under the lock.

        A writer killed while replacing a version (`force`) may have moved the old version
        aside into its staging folder: it is put back before the folder is removed."""
        writing = []
        for staging in [p for area in self._staging_areas() if area.is_dir()
                        for p in sorted(area.glob(f"{STAGING_PREFIX}*"))]:
            alive, record = _staging_owner(staging)
            if alive:
                writing.append(record)
                continue
            version = record.get("version")
            for model in record.get("models", ()):
                old = staging / REPLACED / str(model)
                if isinstance(version, int) and is_model_name(str(model)) and old.is_dir() \
                        and not (self.root / model / str(version)).exists():
                    os.rename(old, self.root / model / str(version))
            shutil.rmtree(staging, ignore_errors=True)
        for staging in self.root.glob(f"{LEGACY_STAGING_PREFIX}*"):  # an older tritonforge's
            owner = staging.name[len(LEGACY_STAGING_PREFIX):].split("-")[0]
            if owner.isdigit() and not pid_alive(int(owner)):
                shutil.rmtree(staging, ignore_errors=True)
        return writing

    def _choose_version(self, name: str, config: mc.ModelConfig, version: int | None,
                        force: bool, writing: list[dict[str, Any]]) -> int:
        """The version to build: `version`, or the next number neither published nor being
        built by another export (so two exports racing for a name both publish, as N and N+1)."""
        model_dir = self.root / name
        existing = self.versions(name)
        building = {r.get("version"): r.get("pid") for r in writing if name in r.get("models", ())}
        if version is None:
            version = max([0, *existing, *(v for v in building if isinstance(v, int))]) + 1
        if version < 1:
            raise TritonForgeError(f"version {version} is not allowed: versions start at 1")
        if version in existing and not force:
            raise TritonForgeError(
                f"{model_dir / str(version)} already exists and may be served: "
                "leave --version out to add the next version, or pass --force to replace it")
        if version in building and not force:
            raise TritonForgeError(
                f"{model_dir / str(version)} is being written by another export (process "
                f"{building[version]}): leave --version out to add the next version, or wait "
                "for that export to finish")
        self._check_config(name, config, force)
        return version

    def check_version_policy(self, name: str, policy: str, version: int | None = None) -> None:
        """Refuse, before an export of `name` starts, a version policy that names versions which
        will not exist once it is written as `version` (default: the next number). Checked again
        under the lock when the version is chosen and when it is published."""
        config = set_version_policy(mc.ModelConfig(name=validate_name(name)), policy)
        self._check_policy(config, version or max([0, *self.versions(name)]) + 1)

    def _check_policy(self, config: mc.ModelConfig, version: int) -> None:
        """Refuse a specific version policy naming a version that will not exist once `version`
        of `config.name` is published (Triton would serve fewer versions than asked, or none)."""
        if config.version_policy.WhichOneof("policy_choice") != "specific":
            return
        after = sorted({*self.versions(config.name), version})
        missing = [v for v in config.version_policy.specific.versions if v not in after]
        if missing:
            raise TritonForgeError(
                f"version policy {version_policy_text(config)} of {config.name!r} names version(s) "
                f"{', '.join(map(str, missing))}, which will not exist (versions once this export is "
                f"written: {', '.join(map(str, after))}): name existing versions, e.g. "
                f"--version-policy specific:{after[-1]}, or leave --version-policy out to serve the newest")

    def _check_config(self, name: str, config: mc.ModelConfig, force: bool) -> None:
        model_dir = self.root / name
        if (model_dir / CONFIG_FILE).is_file() and not force:
            old = self.read_config(name)
            if io_signature(old) != io_signature(config):
                raise TritonForgeError(
                    f"the new export's inputs/outputs differ from those of the versions already "
                    f"in {model_dir} (one config serves all versions): use another --name, "
                    "or --force to replace the config")

    def _open_staging(self, version: int, models: Sequence[str]) -> tuple[Path, int]:
        """A new staging folder recorded as this process building `version` of `models`, and
        the handle whose flock says so while this process lives. Call it under the lock, so
        that no other writer sees the folder before its record."""
        staging = Path(tempfile.mkdtemp(dir=self.staging_area(),
                                        prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
        handle = os.open(staging / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            record = {"pid": os.getpid(), "version": version, "models": list(models)}
            os.write(handle, json.dumps(record).encode())
        except BaseException:
            os.close(handle)
            raise
        return staging, handle

    def write_version(self, name: str, config: mc.ModelConfig,
                      populate: Callable[[Path, int], None], version: int | None = None,
                      force: bool = False, companions: Sequence[CompanionModel] = (),
                      companion_fields: Mapping[str, Any] | None = None) -> int:
        """Build a new version with `populate(folder, version)` and publish it atomically.

        The next free version number is used unless `version` is given; an existing version
        is replaced only with `force`. The config is replaced after the version is in place;
        a config whose inputs/outputs differ from the existing one needs `force`.

        `companions` (an ensemble, its python steps) are built in the same staging folder as
        the same version, their files taken from the model's version folder, each with a
        manifest of `companion_fields` and `companion_of`; an existing companion version of
        that number is replaced (a companion is derived from its model). Everything is built
        before anything is published, then the model is published before its companions, in
        their order (an ensemble last), so a reader never meets a companion whose model is
        missing: a kill between them leaves the new version served by the previous companions.

        A specific version policy in `config` must name versions that exist once this one is
        published (checked when the number is chosen and again when publishing, as a prune may
        race); the companions follow it (`follow_policy`), so the raw-input path serves the
        same versions as the model.
        """
        validate_name(name)
        models = [name, *(validate_name(companion.name) for companion in companions)]
        if config.name != name or len(set(models)) != len(models):
            raise ValueError(f"config is for {config.name!r}, not {name!r}, or a companion "
                             f"repeats a name ({models})")
        self._ensure_writable()
        staging, handle = None, None
        try:
            try:
                with self._locked():
                    version = self._choose_version(name, config, version, force,
                                                   self._remove_stale_staging())
                    self._check_policy(config, version)
                    companions = [dataclasses.replace(companion, config=follow_policy(
                        companion.config, config, {*self.versions(companion.name), version}))
                        for companion in companions]
                    staging, handle = self._open_staging(version, models)
                built = staging / STAGED_MODELS
                folder = _stage_model(built, config, version)
                populate(folder, version)
                for companion in companions:
                    manifest = {"manifest_version": 1, "name": companion.name, "version": version,
                                **(companion_fields or {}),
                                "companion_of": {"name": name, "version": version},
                                "kind": companion.config.platform or companion.config.backend}
                    _stage_companion(built, companion, folder, version, manifest)
                publish_modes(built)  # before the rename, so files appear with their final modes
                _sync_tree(built)
            except OSError as exc:
                if exc.errno not in FULL_DISK_ERRORS:
                    raise
                raise TritonForgeError(
                    f"no space left to write {name} version {version} for the model repository "
                    f"{self.root} ({exc.strerror}: {exc.filename or staging}): nothing was "
                    "published and the repository is as it was; free space on that disk (or "
                    "raise the file-size limit), then export again") from exc
            with self._locked():
                self._check_config(name, config, force)  # another export may have published
                for item in (config, *(companion.config for companion in companions)):
                    self._check_policy(item, version)  # or a prune removed a version meanwhile
                for model in models:
                    self._publish(staging, model, version, force or model != name)
            return version
        finally:
            _discard_staging(staging, handle)

    @contextmanager
    def _scratch(self) -> Iterator[Path]:
        """Hold the write lock with a fresh staging folder recorded as this live process's (so
        no other writer removes it), for a change that is not a new version. The folder is
        removed when the block ends, after the lock is released."""
        self._ensure_writable()
        staging, handle = None, None
        try:
            with self._locked():
                self._remove_stale_staging()
                staging, handle = self._open_staging(0, [])
                yield staging
        finally:
            _discard_staging(staging, handle)

    def update_configs(self, change: Callable[[], Mapping[str, mc.ModelConfig]]) -> dict[str, mc.ModelConfig]:
        """Replace the config.pbtxt of existing models, each by one os.replace (what a poller
        meets is the old config or the new one), with the configs `change()` returns by name.
        `change` runs under the write lock, so what it reads (versions, configs) stays true
        until its configs are in place; it may raise to change nothing. A config's inputs and
        outputs must stay those of the config it replaces (its versions are served by it).
        Returns what was written."""
        with self._scratch() as staging:
            configs = dict(change())
            for name, config in configs.items():
                if config.name != name or not (self.root / validate_name(name) / CONFIG_FILE).is_file():
                    raise ValueError(f"config of {config.name!r} given for {name!r}, or no model {name!r}")
                if io_signature(config) != io_signature(self.read_config(name)):
                    raise TritonForgeError(f"the new config of {name!r} changes its inputs/outputs: "
                                           "export the model again instead")
                for version in config.version_policy.specific.versions:
                    if version not in self.versions(name):
                        raise TritonForgeError(f"{name!r} has no version {version} to serve "
                                               f"(versions: {', '.join(map(str, self.versions(name)))})")
            try:
                for name, config in configs.items():  # every config written before any is replaced
                    built = staging / f"{name}.{CONFIG_FILE}"
                    built.write_text(config_text(config))
                    publish_modes(built)
                    _sync_tree(built)
            except OSError as exc:
                if exc.errno not in FULL_DISK_ERRORS:
                    raise
                raise TritonForgeError(
                    f"no space left to write the config of {', '.join(configs)} ({exc.strerror}): "
                    "nothing was changed; free space on that disk and try again") from exc
            for name in configs:  # ensembles last, as configs is ordered by the caller
                os.replace(staging / f"{name}.{CONFIG_FILE}", self.root / name / CONFIG_FILE)
            return configs

    def remove_versions(self, choose: Callable[[], Sequence[tuple[str, int]]],
                        removed: Callable[[str, int, int], None] | None = None) -> list[tuple[str, int, int]]:
        """Remove the versions `choose()` names, as (model, version) pairs, from the repository.

        `choose` runs under the write lock, so an export, a rollback or another prune cannot
        change what it decided on until the versions are gone. Each version leaves by one
        rename into a staging folder (atomic: a poller sees it whole or not at all; a version
        the config's policy serves is refused); they are deleted there once the lock is
        released, and if this process dies first, the next writer deletes them. Returns
        (model, version, bytes) of each removed version; `removed` is told of each."""
        gone: list[tuple[str, int, int]] = []
        with self._scratch() as staging:
            for model, version in choose():
                folder = self.root / validate_name(model) / str(version)
                if version in self.served_versions(model):
                    raise TritonForgeError(
                        f"{folder} is served (version policy {version_policy_text(self.read_config(model))}):"
                        " it is not removed; roll back to another version first")
                size = tree_bytes(folder)
                target = staging / RETIRED / model / str(version)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(folder, target)
                gone.append((model, version, size))
                if removed is not None:
                    removed(model, version, size)
        return gone

    def _publish(self, staging: Path, model: str, version: int, replace: bool) -> None:
        """Make `version` of `model`, built in `staging`, visible by renames a poller can meet
        at any moment: a new model's whole folder (config and version) at once; else the
        version folder, then the config replaced atomically (one serves every version)."""
        built, target = staging / STAGED_MODELS / model, self.root / model
        if not target.exists():
            os.rename(built, target)
            return
        self._publish_version(staging, built / str(version), target / str(version), replace)
        os.replace(built / CONFIG_FILE, target / CONFIG_FILE)

    @staticmethod
    def _publish_version(staging: Path, built: Path, target: Path, replace: bool) -> None:
        if target.exists() and not replace:  # the number was chosen under the lock
            raise TritonForgeError(
                f"{target} appeared while this export ran, written by something other than "
                "tritonforge: nothing was published; run the export again")
        old = staging / REPLACED / target.parent.name
        if target.exists():
            old.parent.mkdir(exist_ok=True)
            os.rename(target, old)  # put back by the next writer if this one dies now
        try:
            os.rename(built, target)
        except OSError as exc:
            if old.exists():
                os.rename(old, target)
            raise TritonForgeError(
                f"could not publish {target} ({exc.strerror or exc}); another export may have "
                "written it meanwhile: run the export again") from exc


def _discard_staging(staging: Path | None, handle: int | None) -> None:
    """Remove a writer's staging folder and close its owner record (after the lock is released)."""
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    if handle is not None:
        os.close(handle)


def _stage_model(built: Path, config: mc.ModelConfig, version: int) -> Path:
    """`built/<name>/config.pbtxt` and the empty `built/<name>/<version>/`, which it returns."""
    folder = built / config.name / str(version)
    folder.mkdir(parents=True)
    (built / config.name / CONFIG_FILE).write_text(config_text(config))
    return folder


def _stage_companion(built: Path, companion: CompanionModel, model_folder: Path, version: int,
                     manifest: Mapping[str, Any]) -> None:
    folder = _stage_model(built, companion.config, version)
    for name, source in companion.files.items():
        path = Path(source) if Path(source).is_absolute() else model_folder / source
        if not path.is_file():
            raise TritonForgeError(
                f"{path} is missing, but {companion.name} needs it: export the model again")
        shutil.copy2(path, folder / name)
    write_manifest(folder, manifest)


def _staging_owner(staging: Path) -> tuple[bool, dict[str, Any]]:
    """(whether the writer of `staging` still runs, its record: pid, version, models).

    The writer holds an flock on its record until it ends, and the kernel drops the lock when
    a process dies however it dies: a lock we can take means the folder is left over. Unlike
    a pid, this survives pid reuse and pid namespaces (containers sharing the repository)."""
    try:
        handle = os.open(staging / OWNER_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False, {}  # folder and record are made under the lock: killed in between
    except OSError:
        return True, {}  # another user's: leave it alone
    try:
        try:
            record = json.loads(os.pread(handle, 1 << 16, 0))
        except ValueError:
            record = {}
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, record if isinstance(record, dict) else {}
        return False, record if isinstance(record, dict) else {}
    finally:
        os.close(handle)


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under `root` before a rename publishes it: after a crash of
    the machine a published model.onnx is never empty, and a full disk that the filesystem
    reports only at fsync (delayed allocation, quotas) is reported while nothing is published."""
    for folder, _dirs, files in os.walk(root):
        for path in [*(os.path.join(folder, name) for name in files), folder]:
            handle = os.open(path, os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)


def tree_bytes(path: Path) -> int:
    """The bytes of the files under `path` (links not followed): what deleting it frees."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file (a version's model.onnx, as its manifest records it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class NewerManifestError(TritonForgeError):
    """A manifest written by a newer tritonforge than this one."""


def check_manifest_version(manifest: Mapping[str, Any], path: Path | str) -> None:
    """Refuse a manifest written by a newer tritonforge, naming both versions."""
    version = manifest.get("manifest_version", 1)
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise NewerManifestError(
            f"{path} has manifest version {version!r} (written by tritonforge "
            f"{manifest.get('tritonforge_version', '?')}); this tritonforge reads versions up to "
            f"{MANIFEST_VERSION}: upgrade tritonforge to serve or verify this model")


def write_manifest(version_dir: Path, manifest: Mapping[str, Any]) -> None:
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
