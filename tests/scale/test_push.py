"""`tritonforge push` against a real S3-protocol endpoint: moto's standalone server (an
emulator of the S3 protocol) on 127.0.0.1, started here; fake credentials from the environment."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import ServerUnavailable, TritonForgeError
from tritonforge.modalities import Tensors
from tritonforge.scale.push import execute_push, parse_storage_uri, plan_push, push_repository
from tritonforge.serving.repository import ModelRepository
from tritonforge.spec import ModelIO, TensorSpec
from tritonforge.triton_config import ServingOptions, model_config

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
BIG_FILE_MB = 64  # 8 parts of boto3's default 8 MiB: a push is killed inside its multipart upload


@pytest.fixture(scope="module")
def endpoint() -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch, tmp_path):
    """Fake credentials, and nothing else of this machine's AWS set-up (no profile, no
    instance-metadata lookups off this host)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3(endpoint):
    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture
def bucket(s3) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory) -> Path:
    """A model whose version holds a large file (a multipart upload) among small ones."""
    repo = tmp_path_factory.mktemp("big_repo")
    io = ModelIO((TensorSpec("x", "float32", (-1,)),), (TensorSpec("y", "float32", (4,)),), Tensors())

    def populate(folder: Path, version: int) -> None:
        (folder / "model.onnx").write_bytes(np.random.default_rng(0).bytes(BIG_FILE_MB << 20))
        for index in range(20):
            (folder / f"extra_{index:02d}.txt").write_text(f"file {index}\n" * 100)

    ModelRepository(repo).write_version("big", model_config("big", io, ServingOptions()), populate)
    return repo


def local_hashes(repo: Path) -> dict[str, str]:
    return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def remote_hashes(s3, bucket: str, prefix: str) -> dict[str, str]:
    """Every object under the prefix, downloaded and hashed."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", ()):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix) + 1:]] = hashlib.sha256(body).hexdigest()
    return found


def remote_keys(s3, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", ())]


def pending_uploads(s3, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", ())]


# -- pushing -------------------------------------------------------------------------------


def test_push_uploads_every_file_byte_identical_with_its_sha256(tiny_repo, endpoint, s3, bucket):
    plan, check = push_repository(tiny_repo, f"s3://{bucket}/prod/repo", endpoint)
    local = local_hashes(tiny_repo)
    assert remote_hashes(s3, bucket, "prod/repo") == local
    for relative, digest in local.items():
        head = s3.head_object(Bucket=bucket, Key=f"prod/repo/{relative}")
        assert head["Metadata"]["sha256"] == digest
    assert len(plan.upload) == len(local) and not plan.skip
    assert (check.objects, check.manifest_files) == (len(local), 1)  # tiny's model.onnx
    assert check.read_back == sum((tiny_repo / r).stat().st_size <= 1 << 20 for r in local)


def test_config_comes_after_the_versions_and_ensembles_after_their_steps(tiny_repo, endpoint, bucket):
    plan = plan_push(tiny_repo, f"s3://{bucket}/repo", endpoint)
    completed = []  # keys in the order they were written (uploads run one after another)
    for operation in ("PutObject", "CompleteMultipartUpload"):
        plan.client.meta.events.register(f"before-parameter-build.s3.{operation}",
                                          lambda params, **_: completed.append(params["Key"]))
    execute_push(plan)
    order = [key.removeprefix("repo/") for key in completed]
    assert sorted(order) == sorted(local_hashes(tiny_repo))
    for model in ("tiny", "tiny_tokenizer", "tiny_text"):
        files = [key for key in order if key.startswith(f"{model}/")]
        assert files[-1] == f"{model}/config.pbtxt"
        assert files[-2] == f"{model}/1/tritonforge.json"  # a version's manifest after its files
    # the ensemble appears once both of its steps are served
    assert order.index("tiny_text/config.pbtxt") > max(order.index("tiny/config.pbtxt"),
                                                         order.index("tiny_tokenizer/config.pbtxt"))


def test_rerun_skips_identical_objects_and_replaces_changed_or_missing_ones(tiny_repo, endpoint, s3,
                                                                            bucket):
    uri = f"s3://{bucket}/repo"
    push_repository(tiny_repo, uri, endpoint)
    again, _check = push_repository(tiny_repo, uri, endpoint)
    assert again.upload == [] and len(again.skip) == len(local_hashes(tiny_repo))

    s3.put_object(Bucket=bucket, Key="repo/tiny/config.pbtxt", Body=b"tampered")
    s3.delete_object(Bucket=bucket, Key="repo/tiny_tokenizer/1/model.py")
    repaired, check = push_repository(tiny_repo, uri, endpoint)
    assert sorted(f.relative for f in repaired.upload) == ["tiny/config.pbtxt", "tiny_tokenizer/1/model.py"]
    assert remote_hashes(s3, bucket, "repo") == local_hashes(tiny_repo)
    assert check.objects == len(local_hashes(tiny_repo))


def test_dry_run_lists_what_would_change_and_changes_nothing(tiny_repo, endpoint, s3, bucket):
    s3.put_object(Bucket=bucket, Key="repo/tiny/config.pbtxt", Body=b"old")
    stale = s3.create_multipart_upload(Bucket=bucket, Key="repo/tiny/1/model.onnx")["UploadId"]
    result = CliRunner().invoke(app, ["push", str(tiny_repo), f"s3://{bucket}/repo",
                                      "--endpoint-url", endpoint, "--dry-run"])
    assert result.exit_code == 0, result.output
    files = len(local_hashes(tiny_repo))
    assert f"would upload {files} files" in result.output and "skip 0" in result.output
    assert f"upload  s3://{bucket}/repo/tiny/config.pbtxt" in result.output
    assert f"abort   s3://{bucket}/repo/tiny/1/model.onnx (an unfinished multipart upload)" in result.output
    assert remote_keys(s3, bucket) == ["repo/tiny/config.pbtxt"]
    assert s3.get_object(Bucket=bucket, Key="repo/tiny/config.pbtxt")["Body"].read() == b"old"
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [stale]

    push_repository(tiny_repo, f"s3://{bucket}/repo", endpoint)
    result = CliRunner().invoke(app, ["push", str(tiny_repo), f"s3://{bucket}/repo",
                                      "--endpoint-url", endpoint, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would upload 0 files (0.0 MB) and skip {files}" in result.output


def test_cli_push_prints_the_summary_and_what_was_verified(tiny_repo, endpoint, bucket):
    result = CliRunner().invoke(app, ["push", str(tiny_repo), f"s3://{bucket}/repo",
                                      "--endpoint-url", endpoint])
    assert result.exit_code == 0, result.output
    assert "tiny_tokenizer" in result.output and "verified:" in result.output
    assert "1 model files carry the sha256 their tritonforge.json records" in result.output


def test_sigkill_in_a_multipart_upload_then_rerun_leaves_a_complete_identical_copy(big_repo, endpoint,
                                                                                    s3, bucket):
    uri = f"s3://{bucket}/repo"
    push = subprocess.Popen(
        [sys.executable, "-m", "tritonforge.cli", "push", str(big_repo), uri, "--endpoint-url", endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **FAKE_CREDENTIALS})
    deadline = time.monotonic() + 120
    while not pending_uploads(s3, bucket):
        assert push.poll() is None, push.stdout.read().decode()
        assert time.monotonic() < deadline, "the push never started its multipart upload"
        time.sleep(0.01)
    push.send_signal(signal.SIGKILL)
    assert push.wait(10) == -signal.SIGKILL

    # killed inside the big file's multipart upload: no object for it, and no config yet
    assert pending_uploads(s3, bucket) == ["repo/big/1/model.onnx"]
    assert "repo/big/1/model.onnx" not in remote_keys(s3, bucket)
    assert "repo/big/config.pbtxt" not in remote_keys(s3, bucket)

    plan, check = push_repository(big_repo, uri, endpoint)
    assert [u["Key"] for u in plan.stale_uploads] == ["repo/big/1/model.onnx"]
    assert len(plan.skip) == 20  # the small files uploaded before the kill
    assert pending_uploads(s3, bucket) == []
    assert remote_hashes(s3, bucket, "repo") == local_hashes(big_repo)
    assert check.objects == len(local_hashes(big_repo))


def test_bundled_tritonserver_serves_straight_from_the_endpoint(tiny_repo, endpoint, bucket, tmp_path):
    """The nvidia-pytriton tritonserver (2.51) was built with S3 support: it loads a pushed
    python-backend model from `s3://http://host:port/bucket/prefix` and answers."""
    import tritonclient.grpc as grpcclient
    from tokenizers import Tokenizer

    from tritonforge.serving.local import TritonDistribution, free_port

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny_tokenizer", repo / "tiny_tokenizer")
    push_repository(repo, f"s3://{bucket}/serve", endpoint)
    distribution = TritonDistribution.find()
    scratch = Path(tempfile.mkdtemp(dir=tmp_path))
    binary = distribution.install(scratch / "tritonserver")
    port = free_port()
    server = subprocess.Popen(
        [str(binary), f"--model-repository=s3://{endpoint}/{bucket}/serve",
         f"--backend-directory={scratch / 'tritonserver' / 'backends'}",
         "--disable-auto-complete-config", "--strict-readiness=true", "--allow-http=false",
         "--allow-metrics=false", "--grpc-address=127.0.0.1", f"--grpc-port={port}",
         "--exit-timeout-secs=5"],
        env=distribution.environment(), stdout=open(tmp_path / "triton.log", "wb"),
        stderr=subprocess.STDOUT, start_new_session=True)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        while not _ready(client):
            assert server.poll() is None, (tmp_path / "triton.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "triton.log").read_text()[-3000:]
            time.sleep(0.5)
        text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"hello world"]], dtype=object))
        ids = client.infer("tiny_tokenizer", [text]).as_numpy("input_ids")[0]
        encoding = Tokenizer.from_file(str(repo / "tiny_tokenizer" / "1" / "tokenizer.json")) \
            .encode("hello world")
        expected = [token for token, real in zip(encoding.ids, encoding.attention_mask, strict=True) if real]
        assert ids[:len(expected)].tolist() == expected and not ids[len(expected):].any()
    finally:
        client.close()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _ready(client) -> bool:
    try:
        return client.is_server_ready()
    except Exception:  # not listening yet
        return False


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "message"), [
    ("gs://models/repo", "--endpoint-url https://storage.googleapis.com with a GCS HMAC key"),
    ("https://example.com/models", "give s3://BUCKET/PREFIX"),
    ("model_repo", "give s3://BUCKET/PREFIX"),
    ("s3://Bad_Bucket/repo", "is not a bucket name"),
    ("s3://models/../etc", "'..' is not allowed"),
])
def test_unsupported_storage_uris_are_refused_with_what_to_give(uri, message):
    with pytest.raises(TritonForgeError, match=message.replace(".", r"\.")):
        parse_storage_uri(uri)


def test_cli_refuses_gs_scheme_before_connecting(tiny_repo):
    result = CliRunner().invoke(app, ["push", str(tiny_repo), "gs://models/repo"])
    assert result.exit_code == 2
    assert "s3://models/repo --endpoint-url https://storage.googleapis.com" in result.output


def test_a_bucket_that_does_not_exist_is_named(tiny_repo, endpoint):
    with pytest.raises(TritonForgeError, match="bucket 'no-such-bucket' does not exist at http://127"):
        push_repository(tiny_repo, "s3://no-such-bucket/repo", endpoint)


@pytest.mark.parametrize("profile", [None, "missing-profile"])
def test_missing_credentials_say_what_to_set(tiny_repo, endpoint, monkeypatch, profile):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    if profile:
        monkeypatch.setenv("AWS_PROFILE", profile)
    with pytest.raises(TritonForgeError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY .* "
                                               "or AWS_PROFILE"):
        push_repository(tiny_repo, "s3://models/repo", endpoint)


def test_no_store_at_the_endpoint_is_server_trouble(tiny_repo, bucket):
    from tritonforge.serving.local import free_port

    with pytest.raises(ServerUnavailable, match="no S3 endpoint answers at"):
        push_repository(tiny_repo, f"s3://{bucket}/repo", f"http://127.0.0.1:{free_port()}")


def test_a_repository_failing_the_ls_checks_is_refused_before_any_upload(tiny_repo, endpoint, s3,
                                                                         bucket, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    (repo / "tiny" / "1" / "secrets").symlink_to("/etc/passwd")
    with pytest.raises(TritonForgeError, match="outside the model folder and the repository"):
        push_repository(repo, f"s3://{bucket}/repo", endpoint)
    with pytest.raises(TritonForgeError, match="does not exist"):
        push_repository(tmp_path / "missing", f"s3://{bucket}/repo", endpoint)
    assert remote_keys(s3, bucket) == []


def test_a_model_file_changed_after_export_is_refused_before_any_upload(tiny_repo, endpoint, s3,
                                                                        bucket, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    with open(repo / "tiny" / "1" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(TritonForgeError, match="does not match the sha256 in its tritonforge.json"):
        push_repository(repo, f"s3://{bucket}/repo", endpoint)
    assert remote_keys(s3, bucket) == []
