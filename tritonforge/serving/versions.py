"""A model's versions over their life: which ones are served, `prune` and `rollback`.

What Triton serves of a model is decided by its config's version policy (latest, all,
specific:N,M) over the versions on disk. Nothing here rewrites a version: a rollback is a
config change (version_policy specific:[N], the config replaced by one rename), and a prune
removes whole versions, each by one rename out of the repository
(`ModelRepository.update_configs` and `ModelRepository.remove_versions`, both under the
repository's write lock). The export's companions (its python step and ensemble, written with
each version) follow it: a rollback rolls them back to the same version, a prune removes
their copies of the versions it removes.

A version the current policy serves is never removed. A later export writes its own config
(its own policy), which ends a rollback; `rollback --undo` does the same without exporting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import ServerUnavailable, TritonForgeError
from tritonforge.serving.endpoint import Endpoint
from tritonforge.serving.repository import ModelRepository, tree_bytes
from tritonforge.triton_config import (
    MODEL_FILE,
    follow_policy,
    format_version_policy,
    onnx_io_matches_config,
    onnx_io_signature,
    parse_version_policy,
    policy_versions,
    set_version_policy,
    version_policy_text,
)

# -- what is on disk -----------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRow:
    """One version on disk: its manifest (None when it has none readable: `problem` says why),
    whether the config's policy serves it, and its size."""

    version: int
    served: bool
    bytes: int
    manifest: Mapping[str, Any] | None = None
    problem: str = ""

    def value(self, *path: str, default: Any = "") -> Any:
        value: Any = self.manifest or {}
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return default if value is None else value

    @property
    def created(self) -> str:
        return str(self.value("created"))

    @property
    def precision(self) -> str:
        return str(self.value("precision"))

    @property
    def target(self) -> str:
        return str(self.value("serving", "target"))

    @property
    def recipe(self) -> Mapping[str, Any]:
        recipe = self.value("recipe", default={})
        return recipe if isinstance(recipe, Mapping) else {}

    @property
    def parity(self) -> Mapping[str, Any]:
        parity = self.value("parity", default={})
        return parity if isinstance(parity, Mapping) else {}


@dataclass(frozen=True)
class ModelVersions:
    """The versions of one export on disk, its policy, and its companions' policies."""

    name: str
    policy: str  # the config's, as the command line writes it
    export_policy: str  # the one the newest export asked for (its manifest's)
    rows: tuple[VersionRow, ...]
    companions: tuple[tuple[str, str], ...] = ()  # (name, policy)
    companion_of: str = ""  # the export this model is a companion of (it follows that one's policy)

    @property
    def served(self) -> list[int]:
        return [row.version for row in self.rows if row.served]

    @property
    def rolled_back(self) -> bool:
        """The config serves other versions than the newest export's own policy would."""
        return self.policy != self.export_policy

    def varying_recipe(self) -> list[str]:
        """The recipe fields whose values differ between the versions (what tells them apart)."""
        keys = dict.fromkeys(key for row in self.rows for key in row.recipe)
        return [key for key in keys if len({repr(row.recipe.get(key)) for row in self.rows}) > 1]


def export_policy(repository: ModelRepository, name: str) -> str:
    """The version policy the newest version's export asked for (latest when its manifest
    does not say), as the command line writes it."""
    try:
        manifest = repository.read_manifest(name)
    except TritonForgeError:
        return "latest"
    policy = (manifest.get("serving") or {}).get("version_policy") or "latest"
    try:
        kind, versions = parse_version_policy(str(policy))
    except TritonForgeError:
        return "latest"
    return format_version_policy(kind, versions)


def model_versions(repo: Path | str | ModelRepository, name: str) -> ModelVersions:
    """What `tritonforge versions` shows."""
    repository = repo if isinstance(repo, ModelRepository) else ModelRepository(repo)
    repository.check_safe()
    versions = repository.versions(name)
    repository.resolve(name)  # no versions: an error that names the models there
    config = repository.read_config(name)
    served = set(policy_versions(config, versions))
    rows = []
    for version in versions:
        size = tree_bytes(repository.root / name / str(version))
        try:
            rows.append(VersionRow(version, version in served, size, repository.read_manifest(name, version)))
        except TritonForgeError as exc:
            rows.append(VersionRow(version, version in served, size, None, str(exc)))
    companions = tuple((companion, version_policy_text(repository.read_config(companion)))
                       for companion in repository.companions(name))
    owner = str(((rows[-1].manifest or {}).get("companion_of") or {}).get("name", ""))
    policy = version_policy_text(config)
    return ModelVersions(name, policy, policy if owner else export_policy(repository, name), tuple(rows),
                         companions, owner)


def server_versions(endpoint: Endpoint | str, name: str, versions: Sequence[int]) -> dict[int, bool]:
    """Which versions of `name` the server at `endpoint` reports ready: each version on disk
    (`versions`) and any other the model's metadata lists (still loaded, gone from disk).
    Asks the health and metadata APIs, never the repository index (which Compose's restricted
    model-repository API guards). A model the server does not know is ready in no version."""
    from tritonclient.utils import InferenceServerException

    from tritonforge.serving.client import connect, model_ready, server_error

    endpoint = Endpoint.of(endpoint)
    client = connect(endpoint)
    try:
        try:
            metadata = client.get_model_metadata(name, headers=endpoint.call_headers, as_json=True)
            listed = {int(v) for v in metadata.get("versions", []) if str(v).isdigit()}
        except InferenceServerException as exc:
            error = server_error(exc, endpoint, name)
            if isinstance(error, ServerUnavailable) or "restricts this API" in str(error):
                raise error from exc
            return {version: False for version in versions}  # not loaded (or unknown) there
        return {version: model_ready(client, name, endpoint, version)
                for version in sorted({*versions, *listed})}
    finally:
        client.close()


# -- prune ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunePlan:
    """What `prune` removes: (model, version, bytes), the export's versions and its
    companions' copies of them; and the old versions it keeps because a policy serves them."""

    name: str
    keep: int
    remove: tuple[tuple[str, int, int], ...]
    kept_served: tuple[tuple[str, int, str], ...] = ()  # (model, version, policy)
    removed: tuple[tuple[str, int, int], ...] = ()  # once done
    remaining: tuple[int, ...] = ()  # the export's versions after it

    @property
    def bytes(self) -> int:
        return sum(size for _model, _version, size in self.remove)


def _check_export(repository: ModelRepository, name: str, command: str) -> None:
    """Refuse a companion: it follows its export's versions."""
    try:
        manifest = repository.read_manifest(name)
    except TritonForgeError:
        return  # not written by tritonforge: handled as a plain model
    owner = (manifest.get("companion_of") or {}).get("name")
    if owner:
        raise TritonForgeError(f"{name!r} is a companion of the export {owner!r} and follows its versions: "
                               f"run `tritonforge {command} {owner}` instead")


def prune_plan(repository: ModelRepository, name: str, keep: int) -> PrunePlan:
    """The versions of `name` beyond its newest `keep`, less those its config's policy serves,
    and its companions' copies of the versions removed (less those their policies serve)."""
    if keep < 1:
        raise TritonForgeError(f"--keep {keep} is not allowed: keep at least the newest version (--keep 1)")
    repository.resolve(name)
    _check_export(repository, name, "prune")
    old = repository.versions(name)[:-keep]
    served = set(repository.served_versions(name))
    policy = version_policy_text(repository.read_config(name))
    kept = [(name, version, policy) for version in old if version in served]
    leaving = [version for version in old if version not in served]
    remove = []
    for model in [*reversed(repository.companions(name)), name]:  # ensembles first, the model last
        present = set(repository.versions(model))
        theirs = set(repository.served_versions(model)) if model != name and present else set()
        if theirs:
            policy = version_policy_text(repository.read_config(model))
            kept += [(model, version, policy) for version in leaving if version in theirs]
        for version in leaving:
            if version in present and version not in theirs:
                remove.append((model, version, tree_bytes(repository.root / model / str(version))))
    return PrunePlan(name, keep, tuple(remove), tuple(kept))


def prune(repo: Path | str | ModelRepository, name: str, keep: int, dry_run: bool = False,
          removed: Callable[[str, int, int], None] | None = None) -> PrunePlan:
    """Remove the versions of `name` older than its newest `keep`, never one a policy serves
    (`prune_plan`); with `dry_run`, only say what would go. The plan is made again under the
    repository's write lock, so what is removed is what is true then. The returned plan's
    `removed` lists what was removed; `removed(model, version, bytes)` is told of each."""
    repository = repo if isinstance(repo, ModelRepository) else ModelRepository(repo)
    repository.check_safe()
    plan = prune_plan(repository, name, keep)
    if dry_run:
        return dataclasses.replace(plan, remaining=tuple(repository.versions(name)))
    decided: list[PrunePlan] = []

    def choose() -> list[tuple[str, int]]:
        decided.append(prune_plan(repository, name, keep))
        return [(model, version) for model, version, _size in decided[-1].remove]

    gone = repository.remove_versions(choose, removed)  # also deletes what a killed prune left aside
    final = decided[-1]
    return PrunePlan(name, keep, final.remove, final.kept_served, tuple(gone),
                     tuple(repository.versions(name)))


# -- rollback ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollback:
    """What a rollback (or its undo) did: the policy before and after, the versions served
    before and after, and the companions whose policy followed."""

    name: str
    before: str
    after: str
    served_before: tuple[int, ...]
    served_after: tuple[int, ...]
    companions: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _rollback_target(repository: ModelRepository, name: str, config: mc.ModelConfig, to: int | None) -> int:
    versions = repository.versions(name)
    listed = ", ".join(map(str, versions))
    if len(versions) == 1:
        raise TritonForgeError(f"{name!r} has one version ({versions[0]}) in {repository.root}: there is "
                               "no other version to roll back to; export a new version first")
    if to is not None:
        if to not in versions:
            raise TritonForgeError(f"{name!r} has no version {to} in {repository.root} (versions: {listed}): "
                                   "choose one of them with --to")
        return to
    served = policy_versions(config, versions)
    current = max(served) if served else versions[-1]
    earlier = [v for v in versions if v < current]
    if not earlier:
        raise TritonForgeError(
            f"{name!r} already serves its oldest version on disk ({current}; versions: {listed}): there "
            "is no earlier version to roll back to; `tritonforge rollback --undo` serves the newest again")
    return earlier[-1]


def _check_servable(repository: ModelRepository, name: str, version: int, config: mc.ModelConfig) -> None:
    """Refuse a version whose graph does not match the config that serves every version (the
    config was replaced with --force since it was exported): Triton would fail to load it."""
    path = repository.root / name / str(version) / MODEL_FILE
    if not path.is_file():
        return

    mismatch = onnx_io_matches_config(*onnx_io_signature(path), config)
    if mismatch:
        raise TritonForgeError(
            f"version {version} of {name!r} takes other inputs/outputs than its current config "
            f"({'; '.join(mismatch)}): it cannot be served by it; roll back to another version, or "
            "export that model again")


def _with_policy(repository: ModelRepository, name: str, policy: str) -> dict[str, mc.ModelConfig]:
    """`name`'s config with `policy`, then each companion's config following it (changed ones
    only), the model first and ensembles last."""
    config = mc.ModelConfig()
    config.CopyFrom(repository.read_config(name))
    set_version_policy(config, policy)
    configs = {name: config}
    for companion in repository.companions(name):
        old = repository.read_config(companion)
        new = follow_policy(old, config, repository.versions(companion))
        if new is not old:
            configs[companion] = new
    return configs


def _apply(repository: ModelRepository, name: str,
           decide: Callable[[mc.ModelConfig], str | None]) -> Rollback:
    """Under the write lock: `decide(config)` gives the new policy (None: leave it), which is
    written into the model's config and its companions' (`ModelRepository.update_configs`)."""
    repository.check_safe()
    repository.resolve(name)
    seen: dict[str, Any] = {}

    def change() -> dict[str, mc.ModelConfig]:
        config = repository.read_config(name)
        versions = repository.versions(name)
        seen.update(before=version_policy_text(config), served=tuple(policy_versions(config, versions)))
        policy = decide(config)
        if policy is None:
            seen.update(after=seen["before"], served_after=seen["served"], companions=())
            return {}
        configs = _with_policy(repository, name, policy)
        seen.update(after=version_policy_text(configs[name]),
                    served_after=tuple(policy_versions(configs[name], versions)),
                    companions=tuple(model for model in configs if model != name))
        if seen["after"] == seen["before"] and len(configs) == 1:
            return {}
        return configs

    repository.update_configs(change)
    return Rollback(name, seen["before"], seen["after"], seen["served"], seen["served_after"],
                    seen["companions"])


def rollback(repo: Path | str | ModelRepository, name: str, to: int | None = None) -> Rollback:
    """Serve version `to` of `name` (default: the version before the newest one served) and no
    other, by its config's version policy (specific:[N]); its companions follow. Nothing is
    deleted, and a later export (or `undo_rollback`) serves as that export asks again."""
    repository = repo if isinstance(repo, ModelRepository) else ModelRepository(repo)
    repository.resolve(name)
    _check_export(repository, name, "rollback")

    def decide(config: mc.ModelConfig) -> str:
        version = _rollback_target(repository, name, config, to)
        _check_servable(repository, name, version, config)
        return f"specific:{version}"

    return _apply(repository, name, decide)


def undo_rollback(repo: Path | str | ModelRepository, name: str) -> Rollback:
    """Serve `name` as its newest export asked (its manifest's version policy; latest unless
    that export chose another), ending a rollback; its companions follow."""
    repository = repo if isinstance(repo, ModelRepository) else ModelRepository(repo)
    repository.resolve(name)
    _check_export(repository, name, "rollback")

    def decide(_config: mc.ModelConfig) -> str:
        policy = export_policy(repository, name)
        kind, listed = parse_version_policy(policy)
        if kind == "specific":
            present = [v for v in listed if v in repository.versions(name)]
            if not present:
                raise TritonForgeError(
                    f"the newest export of {name!r} asked for {policy}, and none of those versions is "
                    f"on disk any more: roll back to a version with --to, or export {name!r} again")
            policy = f"specific:{','.join(map(str, present))}"
        return policy

    return _apply(repository, name, decide)
