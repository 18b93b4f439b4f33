"""`tritonforge push`: the model repository copied to S3-compatible object storage.

KServe's Triton runtime (and Triton itself, `--model-repository=s3://...`) reads a model
repository from a bucket. Object storage has no rename, so the order of the uploads is what
keeps a polling reader from meeting a half-written model:

- models are pushed after the models their ensemble steps call;
- per model: every version folder's files first (its `tritonforge.json` last, so a version
  with a remote manifest is complete), then the model folder's other files (labels files the
  config names), and `config.pbtxt` last. A new model has no config until all its files are
  there, and without it a Triton with strict config (`--disable-auto-complete-config`, as
  tritonforge runs it) cannot load the folder.
  A new version of a model already on the store is another matter: object storage has no
  rename, so its folder exists from its first object on, and a Triton polling the prefix may
  try it before it is whole. Push new versions where nothing polls the prefix while it runs
  (KServe copies the repository once, at pod start) or load them explicitly.

Each object carries the sha256 of its bytes as metadata (`x-amz-meta-sha256`). A rerun skips
objects whose remote size and sha256 equal the local file's, so a push killed at any point
(even SIGKILL in a multipart upload, which leaves no object, only parts: they are aborted by
the next push) is completed by running it again. After the upload every object's size and
sha256 metadata are checked, small files (configs, manifests, tokenizers) are read back and
hashed, and each model file named by a version's manifest must carry the manifest's sha256.

Credentials come only from boto3's standard chain (environment, profile, instance role);
nothing here takes or writes them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonforge.errors import ServerUnavailable, TritonForgeError
from tritonforge.serving.repository import ModelRepository, sha256_file
from tritonforge.triton_config import CONFIG_FILE, MANIFEST_FILE

SHA256_METADATA = "sha256"  # sent as the header x-amz-meta-sha256
READ_BACK_BYTES = 1 << 20  # files up to this size are downloaded again and hashed after upload
# S3 bucket names; Triton's s3:// parser also accepts only these characters in the path.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PATH_PART = re.compile(r"^[A-Za-z0-9._-]+$")
CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
    "credentials), or AWS_PROFILE naming a profile in ~/.aws/credentials; for MinIO or GCS "
    "use their access key and secret (GCS: an HMAC key) in the same variables. tritonforge "
    "takes no credentials on the command line")


@dataclass(frozen=True)
class StorageLocation:
    """Where a repository goes: a bucket and a key prefix (no leading or trailing '/')."""

    bucket: str
    prefix: str

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def listing_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""


def parse_storage_uri(uri: str) -> StorageLocation:
    """`s3://bucket/prefix` -> StorageLocation; any other scheme is refused with what to use."""
    scheme, sep, rest = uri.partition("://")
    if scheme == "gs":
        raise TritonForgeError(
            f"{uri!r}: gs:// is not pushed directly; Google Cloud Storage speaks the S3 protocol: "
            f"push to s3://{rest} --endpoint-url https://storage.googleapis.com with a GCS HMAC key "
            "in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if not sep or scheme != "s3":
        raise TritonForgeError(
            f"storage URI {uri!r} is not supported: give s3://BUCKET/PREFIX (AWS S3, or any "
            "S3-compatible store such as MinIO or GCS with --endpoint-url URL)")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise TritonForgeError(
            f"{uri!r}: {bucket!r} is not a bucket name: use 3-63 lower-case letters, digits, "
            "'.' and '-', starting and ending with a letter or digit")
    parts = [part for part in prefix.split("/") if part]
    for part in parts:
        if part in (".", "..") or not _PATH_PART.match(part):
            raise TritonForgeError(
                f"{uri!r}: the prefix part {part!r} is not allowed: use letters, digits, '.', '_' "
                "and '-' (the characters Triton accepts in an s3:// repository path), no '..'")
    return StorageLocation(bucket, "/".join(parts))


@dataclass(frozen=True)
class LocalFile:
    """One file of the repository: its path relative to the repository root, its size and sha256."""

    relative: str
    path: Path
    size: int
    sha256: str

    @property
    def model(self) -> str:
        return self.relative.split("/", 1)[0]


@dataclass
class PushPlan:
    """What a push does: the files in upload order, split into those to upload and those the
    store already holds, the stale multipart uploads to abort, and remote objects under the
    prefix that the repository does not have (left alone)."""

    repo: Path
    location: StorageLocation
    endpoint_url: str | None
    files: list[LocalFile]
    upload: list[LocalFile]
    skip: list[LocalFile]
    stale_uploads: list[dict[str, str]]
    extra_keys: list[str]
    manifests: dict[str, str] = field(default_factory=dict)  # model-file relative -> manifest sha256
    client: Any = field(default=None, repr=False)

    @property
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.upload)


@dataclass(frozen=True)
class PushCheck:
    """What was checked after the upload, in numbers of objects."""

    objects: int  # remote size and sha256 metadata equal the local file's
    read_back: int  # downloaded again and hashed
    manifest_files: int  # model files whose remote sha256 is the one their manifest records

    def describe(self) -> str:
        return (f"{self.objects} objects: size and sha256 metadata equal the local files'; "
                f"{self.read_back} small files read back byte-for-byte; {self.manifest_files} "
                f"model files carry the sha256 their {MANIFEST_FILE} records")


# -- the local side ------------------------------------------------------------------------


def check_pushable(repository: ModelRepository) -> None:
    """The checks `tritonforge ls` runs, plus: there is something to push."""
    repository.check_is_repository()
    repository.check_safe()
    if not repository.models():
        raise TritonForgeError(f"no models in {repository.root}: nothing to push; export one with "
                               f"`tritonforge export bert --repo {repository.root}`")


def push_order(repository: ModelRepository) -> list[str]:
    """The models, each after the models its ensemble steps call (so a served ensemble never
    calls a model that is not there yet)."""
    models, order, visiting = set(repository.models()), [], set()

    def visit(name: str) -> None:
        if name in visiting:  # done, or a cycle (which Triton refuses anyway)
            return
        visiting.add(name)
        for step in repository.read_config(name).ensemble_scheduling.step:
            if step.model_name in models:
                visit(step.model_name)
        order.append(name)

    for name in sorted(models):
        visit(name)
    return order


def _walk_files(folder: Path) -> Iterator[Path]:
    """Files under `folder`, following links (`check_safe` keeps them inside the repository),
    each real folder once."""
    seen = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            yield Path(current) / name


def _upload_rank(relative: Path) -> tuple:
    """Sort key inside one model folder: versions (ascending, manifest last), other files,
    config.pbtxt."""
    first = relative.parts[0]
    if len(relative.parts) > 1 and first.isdigit():
        return (0, int(first), relative.name == MANIFEST_FILE, relative.as_posix())
    return (2,) if relative.as_posix() == CONFIG_FILE else (1, relative.as_posix())


def repository_files(repository: ModelRepository) -> list[LocalFile]:
    """Every file of every model, in upload order, with its sha256."""
    files = []
    for model in push_order(repository):
        folder = repository.root / model
        paths = sorted(_walk_files(folder), key=lambda p: _upload_rank(p.relative_to(folder)))
        for path in paths:
            files.append(LocalFile(f"{model}/{path.relative_to(folder).as_posix()}", path,
                                   path.stat().st_size, sha256_file(path)))
    return files


def manifest_hashes(repository: ModelRepository, files: list[LocalFile]) -> dict[str, str]:
    """relative path of each model file a version's manifest records -> the recorded sha256;
    refuses a file that no longer matches its manifest (changed after export)."""
    by_relative = {f.relative: f for f in files}
    recorded = {}
    for model in repository.models():
        for version in repository.versions(model):
            if not (repository.root / model / str(version) / MANIFEST_FILE).is_file():
                continue  # a version not written by tritonforge: its files are still checked
            onnx = repository.read_manifest(model, version).get("onnx") or {}
            if not onnx.get("file") or not onnx.get("sha256"):
                continue  # a companion (ensemble, python step): no model file of its own
            relative = f"{model}/{version}/{onnx['file']}"
            local = by_relative.get(relative)
            if local is None or local.sha256 != onnx["sha256"]:
                raise TritonForgeError(
                    f"{repository.root / relative} is missing or does not match the sha256 in its "
                    f"{MANIFEST_FILE}: it was changed after export; export the model again "
                    "(nothing was uploaded)")
            recorded[relative] = onnx["sha256"]
    return recorded


# -- the remote side -----------------------------------------------------------------------


def s3_client(endpoint_url: str | None):
    """A boto3 S3 client from the standard credential chain; refuses when it finds none."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session()
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
        raise TritonForgeError(f"AWS credentials could not be loaded ({exc}): {CREDENTIALS_HELP}") from exc
    if credentials is None:
        raise TritonForgeError(f"no AWS credentials found: {CREDENTIALS_HELP}")
    options: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"},
                               "connect_timeout": 10, "read_timeout": 120}
    if endpoint_url:
        # Other stores (GCS, older MinIO) refuse the streaming checksums boto3 sends to AWS by
        # default; path-style addressing works on all of them.
        options.update(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                       response_checksum_validation="when_required")
    return session.client("s3", endpoint_url=endpoint_url, config=Config(**options))


def storage_error(exc: Exception, location: StorageLocation, endpoint_url: str | None) -> TritonForgeError:
    """A botocore failure as a message that says what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint_url or "AWS S3"
    if isinstance(exc, NoCredentialsError):
        return TritonForgeError(f"no AWS credentials found: {CREDENTIALS_HELP}")
    if isinstance(exc, EndpointConnectionError):
        return ServerUnavailable(f"no S3 endpoint answers at {exc.kwargs.get('endpoint_url', where)}: "
                                 "check --endpoint-url and that the store is running")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return TritonForgeError(
                f"bucket {location.bucket!r} does not exist at {where}: create it first (e.g. "
                f"`aws s3 mb s3://{location.bucket}"
                f"{' --endpoint-url ' + endpoint_url if endpoint_url else ''}`) or fix the URI")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return TritonForgeError(
                f"{where} refused access to bucket {location.bucket!r} ({code}): check the "
                f"credentials ({CREDENTIALS_HELP}) and that they may list, read and write it")
        return TritonForgeError(f"{where} answered {code} for {location.uri}: {exc}")
    return TritonForgeError(f"pushing to {location.uri} at {where} failed: {exc}")


def _remote_objects(client, location: StorageLocation) -> dict[str, int]:
    sizes = {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=location.bucket, Prefix=location.listing_prefix)
    for page in pages:
        sizes.update({item["Key"]: item["Size"] for item in page.get("Contents", ())})
    return sizes


def _remote_sha256(client, location: StorageLocation, key: str) -> tuple[int, str | None]:
    head = client.head_object(Bucket=location.bucket, Key=key)
    return head["ContentLength"], head.get("Metadata", {}).get(SHA256_METADATA)


def plan_push(repo: Path | str, uri: str, endpoint_url: str | None = None) -> PushPlan:
    """Check the repository (as `ls` does) and the store, and decide what to upload; changes
    nothing anywhere."""
    from botocore.exceptions import BotoCoreError, ClientError

    location = parse_storage_uri(uri)
    repository = ModelRepository(repo)
    check_pushable(repository)
    client = s3_client(endpoint_url)  # missing credentials are reported before any hashing
    files = repository_files(repository)
    manifests = manifest_hashes(repository, files)
    try:
        client.head_bucket(Bucket=location.bucket)
        remote = _remote_objects(client, location)
        upload, skip = [], []
        for local in files:
            key = location.key(local.relative)
            same = key in remote and remote[key] == local.size \
                and _remote_sha256(client, location, key) == (local.size, local.sha256)
            (skip if same else upload).append(local)
        stale = [{"Key": u["Key"], "UploadId": u["UploadId"]}
                 for page in client.get_paginator("list_multipart_uploads").paginate(
                     Bucket=location.bucket, Prefix=location.listing_prefix)
                 for u in page.get("Uploads", ())]
    except (BotoCoreError, ClientError) as exc:
        raise storage_error(exc, location, endpoint_url) from exc
    keys = {location.key(f.relative) for f in files}
    return PushPlan(repository.root, location, endpoint_url, files, upload, skip, stale,
                    sorted(set(remote) - keys), manifests, client)


def execute_push(plan: PushPlan, on_uploaded: Callable[[LocalFile], None] | None = None) -> None:
    """Abort the multipart uploads a killed push left under the prefix, then upload the planned
    files in order, each with its sha256 as metadata."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    client, location = plan.client, plan.location
    try:
        for upload in plan.stale_uploads:
            client.abort_multipart_upload(Bucket=location.bucket, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
        for local in plan.upload:
            if sha256_file(local.path) != local.sha256:
                raise TritonForgeError(f"{local.path} changed while it was being pushed: push again")
            client.upload_file(str(local.path), location.bucket, location.key(local.relative),
                               ExtraArgs={"Metadata": {SHA256_METADATA: local.sha256}},
                               Config=TransferConfig())
            if on_uploaded:
                on_uploaded(local)
    except (BotoCoreError, ClientError) as exc:
        raise storage_error(exc, location, plan.endpoint_url) from exc


def verify_push(plan: PushPlan) -> PushCheck:
    """Check every object against the local file: size and sha256 metadata; small files read
    back and hashed; model files against the sha256 their manifest records."""
    from botocore.exceptions import BotoCoreError, ClientError

    client, location = plan.client, plan.location
    problems, read_back, manifest_files = [], 0, 0
    try:
        for local in plan.files:
            key = location.key(local.relative)
            size, sha256 = _remote_sha256(client, location, key)
            if (size, sha256) != (local.size, local.sha256):
                problems.append(f"{key}: {size} bytes, sha256 {sha256} (local: {local.size}, {local.sha256})")
                continue
            if local.size <= READ_BACK_BYTES:
                body = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
                read_back += 1
                if hashlib.sha256(body).hexdigest() != local.sha256:
                    problems.append(f"{key}: the bytes read back differ from {local.path}")
            if local.relative in plan.manifests:
                manifest_files += 1
                if sha256 != plan.manifests[local.relative]:
                    problems.append(f"{key}: sha256 {sha256}, its manifest records "
                                    f"{plan.manifests[local.relative]}")
    except (BotoCoreError, ClientError) as exc:
        raise storage_error(exc, location, plan.endpoint_url) from exc
    if problems:
        raise TritonForgeError(
            f"{len(problems)} objects under {location.uri} do not match the repository "
            f"{plan.repo} after the push ({'; '.join(problems[:3])}): push again")
    return PushCheck(len(plan.files), read_back, manifest_files)


def push_repository(repo: Path | str, uri: str, endpoint_url: str | None = None,
                    dry_run: bool = False) -> tuple[PushPlan, PushCheck | None]:
    """Plan, upload and verify (only plan with `dry_run`)."""
    plan = plan_push(repo, uri, endpoint_url)
    if dry_run:
        return plan, None
    execute_push(plan)
    return plan, verify_push(plan)
