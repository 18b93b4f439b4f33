"""A model's versions over their life: the version policy an export writes, `versions`, `prune`
(never a served version, atomic per version, a dry run that removes nothing) and `rollback`
(a config change, undone by `--undo` or by the next export), and what `serve` reloads for them."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from toy_family import ToyImageOptions
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.modalities import Tensors
from tritonforge.pipeline.export import export_model
from tritonforge.serving.local import LocalTriton, repository_snapshot
from tritonforge.serving.repository import ModelRepository
from tritonforge.serving.versions import model_versions, prune, rollback, undo_rollback
from tritonforge.spec import ModelIO, TensorSpec
from tritonforge.triton_config import (
    CONFIG_FILE,
    ServingOptions,
    config_text,
    model_config,
    parse_config,
    policy_versions,
    version_policy_text,
)

runner = CliRunner()
NAME = "toy_image"
MODELS = (NAME, "toy_image_image_decode", "toy_image_image")  # the export, its step, its ensemble
IO = ModelIO((TensorSpec("x", "float32", (4,)),), (TensorSpec("y", "float32", (4,)),), Tensors())


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], terminal_width=220, env={"COLUMNS": "220"})


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory) -> Path:
    """toy_image exported three times (seeds 0, 1, 2: versions 1, 2, 3 that answer differently),
    with its decode step and ensemble; read-only (tests copy it)."""
    repo = tmp_path_factory.mktemp("three_versions")
    for seed in range(3):
        export_model(NAME, ToyImageOptions(seed=seed), repo)
    return repo


@pytest.fixture
def repo(three_versions, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(three_versions, copy, symlinks=True)
    return copy


def policy(repo: Path, model: str = NAME) -> str:
    return version_policy_text(ModelRepository(repo).read_config(model))


def files(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def staging_left(repo: Path) -> list[Path]:
    return sorted(ModelRepository(repo).staging_area().glob("staging-*"))


# -- the policy an export writes -----------------------------------------------------------


@pytest.mark.parametrize(("given", "kind", "written"), [
    ("latest", "latest", "latest"), ("all", "all", "all"), ("specific:3,1", "specific", "specific:1,3"),
    (" Specific: 2 ", "specific", "specific:2")])
def test_each_policy_is_written_into_config_pbtxt(given, kind, written):
    serving = ServingOptions(version_policy=given)
    config = parse_config(config_text(model_config("m", IO, serving)))
    assert serving.version_policy == written  # normalised, as the manifest records it
    assert config.version_policy.WhichOneof("policy_choice") == kind
    assert version_policy_text(config) == written
    if kind == "latest":
        assert config.version_policy.latest.num_versions == 1
    if kind == "specific":
        assert "specific {\n    versions: " in config_text(config)


@pytest.mark.parametrize(("given", "message"), [
    ("every", "version policy 'every' is unknown: choose latest"),
    ("specific", "is unknown: choose latest"), ("specific:", "names no valid versions: write specific:N"),
    ("specific:0", "names no valid versions"), ("specific:1,x", "names no valid versions"),
    ("latest:2", "is unknown")])
def test_a_policy_that_means_nothing_is_refused(given, message):
    with pytest.raises(TritonForgeError, match=message):
        ServingOptions(version_policy=given)


def test_which_versions_a_policy_serves():
    config = model_config("m", IO, ServingOptions())
    assert policy_versions(config, [1, 2, 5]) == [5]
    config.version_policy.latest.num_versions = 2
    assert policy_versions(config, [1, 2, 5]) == [2, 5] and version_policy_text(config) == "latest:2"
    assert policy_versions(model_config("m", IO, ServingOptions(version_policy="all")), [1, 2]) == [1, 2]
    specific = model_config("m", IO, ServingOptions(version_policy="specific:1,3"))
    assert policy_versions(specific, [1, 2]) == [1]
    config.ClearField("version_policy")  # a config written by hand: Triton's default
    assert policy_versions(config, [1, 2]) == [2] and version_policy_text(config) == "latest"


def test_an_export_with_a_specific_policy_serves_those_versions_and_its_companions_follow(repo):
    serving = ServingOptions(version_policy="specific:1,4")
    result = export_model(NAME, ToyImageOptions(seed=3), repo, serving=serving)
    assert result.version == 4 and result.manifest["serving"]["version_policy"] == "specific:1,4"
    for model in MODELS:
        assert policy(repo, model) == "specific:1,4"
    assert ModelRepository(repo).served_versions(NAME) == [1, 4]


def test_a_specific_version_that_will_not_exist_is_refused_before_the_model_loads(repo, monkeypatch):
    from toy_family import ToyImageFamily

    before = files(repo)

    def load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the policy was checked")

    monkeypatch.setattr(ToyImageFamily, "load", load)
    with pytest.raises(TritonForgeError) as refused:
        export_model(NAME, ToyImageOptions(), repo, serving=ServingOptions(version_policy="specific:2,9"))
    message = str(refused.value)
    assert "names version(s) 9, which will not exist (versions once this export is written: 1, 2, 3, 4)" \
        in message
    assert "--version-policy specific:4" in message and "leave --version-policy out" in message
    assert files(repo) == before and staging_left(repo) == []


def test_a_specific_version_removed_while_the_export_runs_is_refused_under_the_lock(repo):
    """The check runs again where the version is chosen and published (a prune may race it)."""
    config = model_config("m", IO, ServingOptions(version_policy="specific:1"))
    repository = ModelRepository(repo)
    assert repository.write_version("m", config, lambda folder, _n: (folder / "f").write_text("x")) == 1

    def populate(folder: Path, _number: int) -> None:
        (folder / "f").write_text("y")
        shutil.rmtree(repo / "m" / "1")  # what a racing prune of version 1 would do

    with pytest.raises(TritonForgeError, match=r"specific:1 of 'm' names version\(s\) 1, which will not"):
        repository.write_version("m", config, populate)
    assert repository.versions("m") == [] and staging_left(repo) == []


def test_the_export_command_takes_the_policy_and_refuses_a_missing_version(repo):
    refused = invoke("export", NAME, "--repo", repo, "--version-policy", "specific:7")
    assert refused.exit_code == 2 and "names version(s) 7, which will not exist" in refused.output
    wrong = invoke("export", NAME, "--repo", repo, "--version-policy", "newest")
    assert wrong.exit_code == 2 and "version policy 'newest' is unknown" in wrong.output
    done = invoke("export", NAME, "--repo", repo, "--version-policy", "all")
    assert done.exit_code == 0, done.output
    assert policy(repo) == "all" and ModelRepository(repo).served_versions(NAME) == [1, 2, 3, 4]
    assert "--version-policy" in invoke("export", NAME, "--help").output


# -- versions ------------------------------------------------------------------------------


def test_versions_lists_each_version_with_its_manifest_and_what_is_served(repo):
    found = model_versions(repo, NAME)
    assert [row.version for row in found.rows] == [1, 2, 3] and found.served == [3]
    assert found.policy == found.export_policy == "latest" and not found.rolled_back
    assert found.varying_recipe() == ["seed"]
    assert [row.recipe["seed"] for row in found.rows] == [0, 1, 2]
    assert all(row.precision == "fp32" and row.target == "onnxruntime" and row.parity["passed"]
               for row in found.rows)
    assert all(row.bytes == sum(p.stat().st_size for p in (repo / NAME / str(row.version)).iterdir())
               for row in found.rows)
    assert [name for name, _policy in found.companions] == ["toy_image_image_decode", "toy_image_image"]

    result = invoke("versions", NAME, "--repo", repo)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "toy_image in " in result.output and "version policy latest" in result.output
    row = {line.split("│")[1].strip(): line for line in lines if line.startswith("│")}
    assert set(row) == {"1", "2", "3"}
    assert "│ yes" in row["3"] and "│ no" in row["1"] and "│ no" in row["2"]
    assert "seed=0" in row["1"] and "max_abs_diff" in row["1"] and "pass" in row["1"] and "kB" in row["1"]
    assert "fp32" in row["2"] and "onnxruntime" in row["2"]
    assert "3 version(s)" in result.output and "served: 3" in result.output


def test_versions_says_a_rollback_and_refuses_an_unknown_model(repo):
    rollback(repo, NAME)
    result = invoke("versions", NAME, "--repo", repo)
    said = " ".join(result.output.split())  # the title wraps around the repository's path
    assert "version policy specific:2, rolled back (its newest export asked for latest)" in said
    assert "toy_image_image (specific:2)" in said
    missing = invoke("versions", "nope", "--repo", repo)
    assert missing.exit_code == 2 and "no model named 'nope'" in missing.output


# -- prune ---------------------------------------------------------------------------------


def test_prune_removes_the_oldest_beyond_the_newest_k_with_their_companions(repo):
    freed = sum(p.stat().st_size for m in MODELS for v in (1, 2) for p in (repo / m / str(v)).iterdir())
    keep = {m: files(repo / m / "3") for m in MODELS}
    result = invoke("prune", NAME, "--keep", "1", "--repo", repo)
    assert result.exit_code == 0, result.output
    for model in MODELS:
        assert ModelRepository(repo).versions(model) == [3]
        assert files(repo / model / "3") == keep[model]
        for version in (1, 2):
            assert f"removed {model} version {version}" in result.output
    assert f"removed 6 version folder(s), freed {freed / 1000:.1f} kB; toy_image keeps version(s) 3" \
        in result.output
    assert staging_left(repo) == []  # the removed versions are deleted, not left aside


def test_prune_never_removes_a_served_version_and_says_so(repo):
    rollback(repo, NAME, to=1)  # version 1 served: older than the newest K, kept
    plan = prune(repo, NAME, keep=1)
    assert sorted(plan.removed) == sorted((m, 2, size) for m, v, size in plan.remove)
    assert {(m, v) for m, v, _s in plan.removed} == {(m, 2) for m in MODELS}
    assert plan.kept_served == ((NAME, 1, "specific:1"),)  # its companions keep theirs with it
    assert all(ModelRepository(repo).versions(model) == [1, 3] for model in MODELS)
    assert ModelRepository(repo).served_versions(NAME) == [1]
    again = invoke("prune", NAME, "--keep", "1", "--repo", repo)
    assert again.exit_code == 0
    assert "kept toy_image version 1: its version policy (specific:1) serves it" in again.output
    assert "removed 0 version folder(s)" in again.output


def test_prune_keeps_every_version_the_all_policy_serves(repo):
    export_model(NAME, ToyImageOptions(), repo, serving=ServingOptions(version_policy="all"))
    plan = prune(repo, NAME, keep=1)
    assert plan.removed == () and {v for m, v, _p in plan.kept_served if m == NAME} == {1, 2, 3}


def test_prune_dry_run_removes_nothing(repo):
    before = files(repo)
    result = invoke("prune", NAME, "--keep", "2", "--dry-run", "--repo", repo)
    assert result.exit_code == 0, result.output
    assert files(repo) == before
    assert "would remove toy_image version 1" in result.output and "version 2" not in result.output
    assert "dry run: would remove 3 version folder(s)" in result.output
    assert "nothing was removed" in result.output


def test_prune_refuses_keeping_nothing_and_a_companion(repo):
    result = invoke("prune", NAME, "--keep", "0", "--repo", repo)
    assert result.exit_code == 2 and "--keep 0 is not allowed: it must be at least 1" in result.output
    assert invoke("prune", NAME, "--repo", repo).exit_code == 2  # --keep is required
    result = invoke("prune", "toy_image_image", "--keep", "1", "--repo", repo)
    assert result.exit_code == 2 and "companion of the export 'toy_image'" in result.output
    assert "run `tritonforge prune toy_image` instead" in result.output
    assert ModelRepository(repo).versions("toy_image_image") == [1, 2, 3]


def kill_after_renames(count: int) -> None:
    """In a child: SIGKILL itself right after its `count`-th rename."""
    calls = {"n": 0}
    original = os.rename

    def rename(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == count:
            os.kill(os.getpid(), signal.SIGKILL)

    os.rename = rename


def in_child(work) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.parametrize("kill_at", [1, 3, 4, 6])
def test_prune_killed_between_versions_leaves_each_version_whole_or_gone(repo, kill_at):
    """6 renames (versions 1 and 2 of the ensemble, the step, the model): killed after any of
    them, every version is in place unchanged or gone entirely, the served one stays, and the
    next writer deletes what the killed one had moved aside."""
    before = {(m, v): files(repo / m / str(v)) for m in MODELS for v in (1, 2, 3)}
    code = in_child(lambda: (kill_after_renames(kill_at), prune(repo, NAME, keep=1)))
    assert code == -signal.SIGKILL
    repository = ModelRepository(repo)
    present = {(m, v) for m in MODELS for v in repository.versions(m)}
    assert len(present) == 9 - kill_at
    for key in present:
        assert files(repo / key[0] / str(key[1])) == before[key]
    assert all((m, 3) in present for m in MODELS)
    assert ("toy_image_image", 1) not in present  # ensembles leave first, the model last
    assert sorted(p.name for p in (repo).iterdir()) == sorted(MODELS)  # nothing aside inside the repository
    assert len(staging_left(repo)) == 1  # the killed prune's versions, moved aside
    prune(repo, NAME, keep=1)  # the next writer finishes, and deletes what was moved aside
    assert staging_left(repo) == []
    assert {m: repository.versions(m) for m in MODELS} == {m: [3] for m in MODELS}


def test_a_served_version_is_refused_by_the_repository_itself(repo):
    with pytest.raises(TritonForgeError, match="is served .* it is not removed"):
        ModelRepository(repo).remove_versions(lambda: [(NAME, 3)])
    assert ModelRepository(repo).versions(NAME) == [1, 2, 3] and staging_left(repo) == []


# -- rollback ------------------------------------------------------------------------------


def test_rollback_serves_the_previous_version_by_a_config_change_and_an_export_returns_to_latest(repo):
    before = {m: (repo / m / CONFIG_FILE).stat().st_ino for m in MODELS}
    versions_before = files(repo / NAME / "1"), files(repo / NAME / "3")
    result = invoke("rollback", NAME, "--repo", repo)
    assert result.exit_code == 0, result.output
    assert "toy_image now serves version(s) 2 (version policy specific:2; was 3, latest)" in result.output
    assert "its companions follow: toy_image_image_decode, toy_image_image" in result.output
    config = ModelRepository(repo).read_config(NAME)
    assert list(config.version_policy.specific.versions) == [2]
    for model in MODELS:
        assert policy(repo, model) == "specific:2"
        assert (repo / model / CONFIG_FILE).stat().st_ino != before[model]  # replaced by a rename
        assert sorted(p.name for p in (repo / model).iterdir()) == [*"123", CONFIG_FILE]  # no temp file
    assert (files(repo / NAME / "1"), files(repo / NAME / "3")) == versions_before  # nothing deleted
    # rolling back again goes one further; --to picks any version
    assert rollback(repo, NAME).served_after == (1,)
    assert rollback(repo, NAME, to=3).served_after == (3,) and policy(repo) == "specific:3"
    # the next export writes its own policy: the newest version, companions too
    assert export_model(NAME, ToyImageOptions(seed=5), repo).version == 4
    assert all(policy(repo, model) == "latest" for model in MODELS)
    assert ModelRepository(repo).served_versions(NAME) == [4]


def test_rollback_undo_serves_the_newest_exports_policy_again(repo):
    rollback(repo, NAME, to=1)
    undone = invoke("rollback", NAME, "--undo", "--repo", repo)
    assert undone.exit_code == 0, undone.output
    assert "now serves version(s) 3 (version policy latest; was 1, specific:1)" in undone.output
    assert policy(repo) == "latest" and policy(repo, "toy_image_image") == "latest"
    again = invoke("rollback", NAME, "--undo", "--repo", repo)
    assert again.exit_code == 0 and "already serves version(s) 3 (version policy latest): nothing changed" \
        in again.output


@pytest.mark.parametrize(("args", "message"), [
    (["--to", "9"], "'toy_image' has no version 9 in {repo} (versions: 1, 2, 3): choose one of them"),
    (["--to", "1", "--undo"], "--undo and --to contradict each other")])
def test_rollback_refuses_a_missing_version(repo, args, message):
    before = files(repo)
    result = invoke("rollback", NAME, "--repo", repo, *args)
    assert result.exit_code == 2 and message.format(repo=repo) in result.output.replace("\n", "")
    assert files(repo) == before


def test_rollback_of_a_model_with_one_version_refuses_with_the_reason(tmp_path):
    export_model(NAME, ToyImageOptions(), tmp_path)
    for args in ([], ["--to", "1"]):
        result = invoke("rollback", NAME, "--repo", tmp_path, *args)
        assert result.exit_code == 2
        assert "'toy_image' has one version (1)" in result.output and "no other version to roll back to" \
            in result.output
    assert policy(tmp_path) == "latest"


def test_rollback_of_the_oldest_served_version_or_a_companion_refuses(repo):
    rollback(repo, NAME, to=1)
    with pytest.raises(TritonForgeError, match="already serves its oldest version on disk"):
        rollback(repo, NAME)
    with pytest.raises(TritonForgeError, match="companion of the export 'toy_image'"):
        rollback(repo, "toy_image_image")
    assert undo_rollback(repo, NAME).served_after == (3,)


def test_rollback_refuses_a_version_the_config_can_no_longer_serve(repo):
    """A version exported before the config was replaced (--force) with other inputs."""
    config = ModelRepository(repo).read_config(NAME)
    config.input[0].name = "renamed"
    (repo / NAME / CONFIG_FILE).write_text(config_text(config))
    with pytest.raises(TritonForgeError, match="version 1 of 'toy_image' takes other inputs/outputs"):
        rollback(repo, NAME, to=1)


# -- what `serve` does about it ------------------------------------------------------------


def test_serve_reloads_a_policy_change_and_leaves_an_unserved_prune_alone(repo):
    """`LocalTriton.sync`'s decision, without a server: a config change (rollback) is a change to
    load; versions removed that the policy does not serve are only dropped from the shadow."""
    server = LocalTriton(repo)
    repository = ModelRepository(repo)
    server._served = repository_snapshot(repository)
    prune(repo, NAME, keep=2)  # version 1 of each: not served
    now = repository_snapshot(repository)
    assert all(server._unserved_removal(repository, m, now[m]) == [1] for m in MODELS)
    server._served = now
    rollback(repo, NAME, to=2)  # a config change: reload
    changed = repository_snapshot(repository)
    assert changed[NAME][0] != now[NAME][0] and changed[NAME][1] == now[NAME][1]
    assert server._unserved_removal(repository, NAME, changed[NAME]) == []
    server._served = changed
    shutil.rmtree(repo / NAME / "2")  # the served version removed by hand: reload, never ignore
    assert server._unserved_removal(repository, NAME, repository_snapshot(repository)[NAME]) == []
