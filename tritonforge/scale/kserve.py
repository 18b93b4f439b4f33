"""`tritonforge deploy kserve`: KServe manifests for the model repository in object storage.

What is written (each object built from the `kserve` and `kubernetes` Python models and
serialised by the API client, never from text templates):

- `inferenceservice.yaml`: serving.kserve.io/v1beta1 InferenceService. Its predictor serves the
  whole repository (`modelFormat: triton`, `storageUri`: KServe's storage initializer copies
  the prefix to /mnt/models at pod start), with resources, a readiness probe on Triton's
  `/v2/health/ready`, and autoscaling on in-flight requests (`scaleMetric: concurrency`,
  `scaleTarget`: per-replica concurrency, best measured by `tritonforge plan`).
- `servingruntime.yaml`, when the cluster's default Triton runtime (KServe's
  `kserve-tritonserver`, the stock NGC image with all APIs open) does not fit:
  - model control, shared memory, statistics, trace and logging restricted behind the header
    `triton-admin-key`, as docker-compose.yml does (the default; `--no-restrict-admin-api`
    turns it off). The key comes from a Kubernetes Secret through an environment variable
    that Kubernetes expands into the argument: no manifest holds its value;
  - python-backend models (the `_text`/`_image` ensembles' tokenizer or decoder steps) need
    docker/requirements.txt's packages, which the stock image lacks;
  - `--image-tag`: a pinned NGC release.
  Its image is the one docker/Dockerfile builds (docker-compose.yml tags it
  `tritonforge-triton:<YY.MM>`); push it to a registry the cluster pulls from (`--image`).
`scaleMetric: concurrency` is Knative's in-flight request count: it works in KServe's default
Serverless mode (and with KEDA in RawDeployment mode, whose plain HPA scales on CPU/memory only).

- `serviceaccount.yaml`: the predictor's ServiceAccount. It references the storage Secret by
  name (KServe mounts the credentials of the Secrets a ServiceAccount lists) and carries the
  `serving.kserve.io/s3-*` annotations KServe reads for the endpoint. The Secret itself (the
  access key) is never written: `secret_commands` prints how to create it.

A GPU is requested only where the repository's configs use one: a model exported with `--gpu`
has a KIND_GPU instance group (and a TensorRT accelerator). A repository whose every model
runs on KIND_CPU (ONNX Runtime on CPU, the CPU-only OpenVINO target, the python-backend
steps) has no GPU support: Triton would never touch a GPU it was given, so `--gpu N` is
refused there rather than holding an idle accelerator. The reverse, a GPU export with
`--gpu 0`, is refused too (its instance group cannot load without one).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonforge.errors import TritonForgeError
from tritonforge.files import write_text_atomic
from tritonforge.scale.plan import Plan
from tritonforge.scale.push import parse_storage_uri
from tritonforge.serving.repository import ModelRepository

# docker-compose.yml's image for docker/Dockerfile, and the Dockerfile's default NGC release.
DEFAULT_IMAGE = "tritonforge-triton"
DEFAULT_TRITON_TAG = "24.10"
# docker-compose.yml's restricted endpoints and header (the public ports keep inference,
# health, metadata and model config).
RESTRICTED_APIS = "model-repository,shared-memory,statistics,trace,logging"
ADMIN_KEY_HEADER = "triton-admin-key"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"
DEFAULT_ADMIN_KEY_SECRET = "tritonforge-triton-admin"
ADMIN_KEY_SECRET_KEY = "admin-key"
DEFAULT_STORAGE_SECRET = "tritonforge-storage"
# KServe's conventions: the storage initializer's target folder, the ports its Triton runtime
# uses, the GPU resource of NVIDIA's device plugin.
MODEL_DIR = "/mnt/models"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8080, 9000, 8002
READY_PATH = "/v2/health/ready"
GPU_RESOURCE = "nvidia.com/gpu"
KSERVE_GROUP = "serving.kserve.io"
SHM_SIZE = "1Gi"  # docker-compose.yml's shm_size: python backend stubs exchange tensors there

# Kubernetes names: DNS-1035 labels for the InferenceService (KServe derives Services from it),
# DNS-1123 labels for namespaces, DNS-1123 subdomains for other objects.
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IMAGE = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")  # registry[:port]/path, without a tag
_TAG = re.compile(r"^\d{2}\.(0[1-9]|1[0-2])$")
MIN_CPU, MIN_MEMORY = "10m", "64Mi"  # below these, a typo (memory '4096' is 4 kB), not a choice


@dataclass(frozen=True)
class RepositoryNeeds:
    """What the repository's configs ask of the runtime."""

    models: tuple[str, ...]
    gpu_models: tuple[str, ...]  # a KIND_GPU instance group or a GPU accelerator
    python_models: tuple[str, ...]  # python backend: docker/requirements.txt's packages
    backends: tuple[str, ...]


def kserve_models() -> types.ModuleType:
    """The `kserve` SDK's resource models (`kserve.models`), without running `kserve/__init__.py`.

    That file imports KServe's model server, whose `grpc_predict_v2` protos register
    `inference.ServerLiveRequest` and friends in protobuf's default pool, as tritonclient's
    `grpc_service` protos do: whichever comes second fails to import. The models need only
    `kserve.configuration`, so the package is entered through a bare module with the same
    search path (a later `import kserve` in this process gets that bare package)."""
    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        if spec is None or not spec.submodule_search_locations:
            raise TritonForgeError("`deploy kserve` needs the kserve and kubernetes packages: "
                                   "pip install -c constraints.txt -e '.[kserve]'")
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


def repository_needs(repo: Path | str) -> RepositoryNeeds:
    """Read every model's config.pbtxt (after the same checks as `tritonforge ls`)."""
    from tritonclient.grpc import model_config_pb2 as mc

    repository = ModelRepository(repo)
    repository.check_is_repository()
    repository.check_safe()
    models = repository.models()
    if not models:
        raise TritonForgeError(f"{repo} has no models: export one (`tritonforge export bert --repo "
                               f"{repo}`) and push it (`tritonforge push {repo} s3://...`) first")
    gpu, python, backends = [], [], set()
    for name in models:
        config = repository.read_config(name)
        backends.add(config.backend or config.platform)
        if config.backend == "python":
            python.append(name)
        if (any(group.kind == mc.ModelInstanceGroup.KIND_GPU for group in config.instance_group)
                or len(config.optimization.execution_accelerators.gpu_execution_accelerator)):
            gpu.append(name)
    return RepositoryNeeds(tuple(models), tuple(gpu), tuple(python), tuple(sorted(backends)))


def dns_name(option: str, value: str, pattern: re.Pattern = _DNS1123_SUBDOMAIN, limit: int = 253) -> str:
    if len(value) > limit or not pattern.match(value):
        kind = {_DNS1035_LABEL: "a DNS-1035 label (lower-case letters, digits and '-', starting "
                                "with a letter, ending with a letter or digit",
                _DNS1123_LABEL: "a DNS-1123 label (lower-case letters, digits and '-', starting "
                                "and ending with a letter or digit"}.get(
            pattern, "a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', each part "
                     "starting and ending with a letter or digit")
        raise TritonForgeError(f"{option} {value!r} is not a Kubernetes name: give {kind}, at most "
                               f"{limit} characters), e.g. 'minilm'")
    return value


def quantity(option: str, value: str, minimum: str, example: str) -> str:
    """A Kubernetes resource quantity of at least `minimum` (e.g. CPU '2' or '500m', memory '4Gi')."""
    from kubernetes.utils import parse_quantity

    try:
        amount = parse_quantity(value)
    except (ValueError, TypeError) as exc:
        raise TritonForgeError(f"{option} {value!r} is not a Kubernetes quantity: give e.g. "
                               f"{example}") from exc
    if amount < parse_quantity(minimum):
        raise TritonForgeError(f"{option} {value!r} is too small: give at least {minimum}, e.g. {example}")
    return value


def require_count(option: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise TritonForgeError(f"{option} {value} is not allowed: give {minimum} or more")


@dataclass(frozen=True)
class KServeOptions:
    storage_uri: str
    name: str = "tritonforge"
    namespace: str = "default"
    gpu: int | None = None  # None: 1 when the repository has GPU models, else 0
    cpu: str = "2"
    memory: str = "4Gi"
    min_replicas: int | None = None  # default 1
    max_replicas: int | None = None  # default: the plan's replicas, else min_replicas
    target_concurrency: int | None = None  # or the plan's per-replica concurrency
    image: str = DEFAULT_IMAGE
    image_tag: str | None = None  # None: DEFAULT_TRITON_TAG, and the tag is not "pinned"
    restrict_admin_api: bool = True
    admin_key_secret: str = DEFAULT_ADMIN_KEY_SECRET
    storage_secret: str = DEFAULT_STORAGE_SECRET
    s3_endpoint: str | None = None  # host[:port] of an S3-compatible store; None: AWS S3
    s3_use_https: bool = True
    s3_region: str | None = None
    plan: Plan | None = None


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_concurrency: int
    source: str  # where the numbers came from, for the summary


@dataclass
class Deployment:
    """The objects to write (file name -> serialised object), and why each choice was made."""

    objects: dict[str, dict[str, Any]]
    needs: RepositoryNeeds
    gpu: int
    autoscaling: Autoscaling
    runtime_reasons: list[str] = field(default_factory=list)
    image: str = ""

    def write(self, out: Path) -> list[Path]:
        """Each object to `out/<kind>.yaml` atomically; returns the paths."""
        import yaml

        paths = []
        for filename, body in self.objects.items():
            path = Path(out) / filename
            write_text_atomic(path, yaml.safe_dump(body, sort_keys=False, default_flow_style=False))
            paths.append(path)
        return paths


def check_options(options: KServeOptions) -> None:
    """Every option on its own, before the repository is read."""
    location = options.storage_uri.partition("://")
    if location[1] == "" or location[0] != "s3":
        raise TritonForgeError(
            f"--storage-uri {options.storage_uri!r}: scheme {location[0] + '://' if location[1] else 'none'} "
            "is not supported: give s3://BUCKET/PREFIX, where `tritonforge push` put the repository "
            "(AWS S3, or an S3-compatible store such as MinIO or GCS with --s3-endpoint HOST)")
    parse_storage_uri(options.storage_uri)  # bucket and prefix as push checks them
    dns_name("--name", options.name, _DNS1035_LABEL, 63)
    dns_name("--namespace", options.namespace, _DNS1123_LABEL, 63)
    dns_name("--storage-secret", options.storage_secret)
    dns_name("--admin-key-secret", options.admin_key_secret)
    require_count("--gpu", options.gpu, 0)
    quantity("--cpu", options.cpu, MIN_CPU, example="'2' or '500m'")
    quantity("--memory", options.memory, MIN_MEMORY, example="'4Gi' (a plain number is bytes)")
    require_count("--min-replicas", options.min_replicas, 0)
    require_count("--max-replicas", options.max_replicas, 1)
    require_count("--target-concurrency", options.target_concurrency, 1)
    if options.min_replicas is not None and options.max_replicas is not None \
            and options.min_replicas > options.max_replicas:
        raise TritonForgeError(f"--min-replicas {options.min_replicas} is above --max-replicas "
                               f"{options.max_replicas}: give min <= max")
    if not _IMAGE.match(options.image) or ":" in options.image.rsplit("/", 1)[-1]:
        raise TritonForgeError(f"--image {options.image!r} is not an image name without a tag: give "
                               "e.g. registry.example.com/team/tritonforge-triton (the tag is --image-tag)")
    if options.image_tag is not None and not _TAG.match(options.image_tag):
        raise TritonForgeError(f"--image-tag {options.image_tag!r} is not an NGC release: give YY.MM, "
                               f"e.g. {DEFAULT_TRITON_TAG}")
    if options.s3_endpoint is not None and ("://" in options.s3_endpoint or "/" in options.s3_endpoint
                                            or not options.s3_endpoint):
        raise TritonForgeError(f"--s3-endpoint {options.s3_endpoint!r}: give host[:port] without a "
                               "scheme (e.g. minio.storage:9000); --s3-use-https/--no-s3-use-https "
                               "says how to reach it")
    if options.plan is not None and options.target_concurrency is not None:
        raise TritonForgeError(
            f"--target-concurrency {options.target_concurrency} and --plan both set the per-replica "
            f"concurrency (the plan says {options.plan.concurrency}): give one of them")


def choose_gpu(options: KServeOptions, needs: RepositoryNeeds) -> int:
    if needs.gpu_models:
        if options.gpu == 0:
            raise TritonForgeError(
                f"--gpu 0, but the repository has models exported for a GPU ({', '.join(needs.gpu_models)}: "
                "KIND_GPU instance groups), which Triton cannot load without one. Give --gpu 1 or "
                "more, or export them again without --gpu")
        return 1 if options.gpu is None else options.gpu
    if options.gpu:
        raise TritonForgeError(
            f"--gpu {options.gpu}: the repository has no GPU support: every model runs on the CPU "
            f"(backends {', '.join(needs.backends)}, all KIND_CPU instance groups; the openvino "
            "target is CPU-only), so Triton would never use the GPU. Drop --gpu, or export for a "
            "GPU (`tritonforge export bert --gpu --target tensorrt`) and push again")
    return 0


def choose_autoscaling(options: KServeOptions, needs: RepositoryNeeds) -> Autoscaling:
    plan = options.plan
    if plan is None and options.target_concurrency is None:
        raise TritonForgeError(
            "give the per-replica concurrency: --plan PLAN.json (measured: `tritonforge bench "
            "--json` then `tritonforge plan`) or --target-concurrency N")
    minimum = 1 if options.min_replicas is None else options.min_replicas
    if plan is None:
        maximum = max(minimum, 1) if options.max_replicas is None else options.max_replicas
        return Autoscaling(minimum, maximum, options.target_concurrency, "--target-concurrency")
    if plan.model not in needs.models:
        raise TritonForgeError(
            f"the plan was measured on {plan.model!r}, which the repository does not serve (it has "
            f"{', '.join(needs.models)}): bench a model of this repository and plan again")
    maximum = plan.replicas if options.max_replicas is None else options.max_replicas
    if maximum < plan.replicas:
        raise TritonForgeError(
            f"--max-replicas {maximum} is below the plan's {plan.replicas} replicas for "
            f"{plan.target_rps:g} req/s: give --max-replicas {plan.replicas} or more, or plan for less")
    if minimum > maximum:
        raise TritonForgeError(f"--min-replicas {minimum} is above the {maximum} replicas of the plan: "
                               "give min <= max")
    return Autoscaling(minimum, maximum, plan.concurrency,
                       f"plan: {plan.replicas} replicas at concurrency {plan.concurrency} for "
                       f"{plan.target_rps:g} req/s at p99 <= {plan.p99_ms:g} ms")


def runtime_reasons(options: KServeOptions, needs: RepositoryNeeds) -> list[str]:
    """Why the default runtime does not fit (empty: it does)."""
    reasons = []
    if options.restrict_admin_api:
        reasons.append(f"model control, shared memory, statistics, trace and logging need the "
                       f"{ADMIN_KEY_HEADER} header (as in docker-compose.yml), key from Secret "
                       f"{options.admin_key_secret}")
    if needs.python_models:
        reasons.append(f"python-backend models ({', '.join(needs.python_models)}) need "
                       "docker/requirements.txt's packages")
    if options.image_tag is not None:
        reasons.append(f"pinned NGC release {options.image_tag}")
    return reasons


def triton_args(options: KServeOptions) -> list[str]:
    """tritonserver's command line: KServe's model folder and ports, docker-compose.yml's
    strictness and (by default) its restricted APIs."""
    args = ["tritonserver", f"--model-repository={MODEL_DIR}", f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}", f"--metrics-port={METRICS_PORT}", "--allow-http=true",
            "--allow-grpc=true", "--disable-auto-complete-config", "--strict-readiness=true",
            "--log-verbose=0"]
    if options.restrict_admin_api:
        # $(VAR) is expanded by Kubernetes from the container's env: the value never lands in a
        # manifest (it does show in the process list inside the pod, as with compose).
        restriction = f"{RESTRICTED_APIS}:{ADMIN_KEY_HEADER}=$({ADMIN_KEY_ENV})"
        args += [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]
    return args


def serving_runtime(options: KServeOptions, needs: RepositoryNeeds, image: str):
    from kubernetes import client as k8s

    models = kserve_models()

    env, mounts, volumes = [], [], []
    if options.restrict_admin_api:
        env.append(k8s.V1EnvVar(name=ADMIN_KEY_ENV, value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=options.admin_key_secret, key=ADMIN_KEY_SECRET_KEY))))
    if needs.python_models:
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=SHM_SIZE)))
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    container = k8s.V1Container(
        name="kserve-container", image=image, args=triton_args(options), env=env or None,
        volume_mounts=mounts or None,
        # the image runs as triton-server, uid 1000 (docker/Dockerfile)
        security_context=k8s.V1SecurityContext(
            run_as_user=1000, run_as_non_root=True, allow_privilege_escalation=False, privileged=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"])))
    return models.V1alpha1ServingRuntime(
        api_version=f"{KSERVE_GROUP}/v1alpha1", kind="ServingRuntime",
        metadata=k8s.V1ObjectMeta(name=runtime_name(options), namespace=options.namespace,
                                  labels=labels(options)),
        spec=models.V1alpha1ServingRuntimeSpec(
            annotations={"prometheus.kserve.io/port": str(METRICS_PORT),
                         "prometheus.kserve.io/path": "/metrics"},
            # not auto-selected: only InferenceServices that name this runtime use it
            supported_model_formats=[models.V1alpha1SupportedModelFormat(name="triton", version="2",
                                                                         auto_select=False)],
            protocol_versions=["v2", "grpc-v2"], containers=[container], volumes=volumes or None))


def runtime_name(options: KServeOptions) -> str:
    return f"{options.name}-triton"


def service_account_name(options: KServeOptions) -> str:
    return f"{options.name}-storage"


def labels(options: KServeOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": options.name, "app.kubernetes.io/managed-by": "tritonforge"}


def s3_annotations(options: KServeOptions) -> dict[str, str]:
    """The `serving.kserve.io/s3-*` annotations KServe reads (on the Secret, and on the
    ServiceAccount for IAM roles)."""
    annotations = {f"{KSERVE_GROUP}/s3-usehttps": "1" if options.s3_use_https else "0"}
    if options.s3_endpoint:
        annotations[f"{KSERVE_GROUP}/s3-endpoint"] = options.s3_endpoint
    if options.s3_region:
        annotations[f"{KSERVE_GROUP}/s3-region"] = options.s3_region
    return annotations


def service_account(options: KServeOptions):
    from kubernetes import client as k8s

    return k8s.V1ServiceAccount(
        api_version="v1", kind="ServiceAccount",
        metadata=k8s.V1ObjectMeta(name=service_account_name(options), namespace=options.namespace,
                                  labels=labels(options), annotations=s3_annotations(options)),
        secrets=[k8s.V1ObjectReference(name=options.storage_secret)])


def inference_service(options: KServeOptions, gpu: int, scaling: Autoscaling, runtime: str | None):
    from kubernetes import client as k8s

    models = kserve_models()

    requests: dict[str, str] = {"cpu": options.cpu, "memory": options.memory}
    limits = dict(requests)
    if gpu:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpu)
    model = models.V1beta1ModelSpec(
        name="kserve-container", model_format=models.V1beta1ModelFormat(name="triton"), runtime=runtime,
        storage_uri=options.storage_uri, protocol_version="v2",
        resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        # --strict-readiness: ready only when every model has loaded
        readiness_probe=k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path=READY_PATH, port=HTTP_PORT),
                                    period_seconds=10, timeout_seconds=5, failure_threshold=3))
    predictor = models.V1beta1PredictorSpec(
        model=model, service_account_name=service_account_name(options),
        min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas,
        scale_metric="concurrency", scale_target=scaling.target_concurrency)
    return models.V1beta1InferenceService(
        api_version=f"{KSERVE_GROUP}/v1beta1", kind="InferenceService",
        metadata=k8s.V1ObjectMeta(name=options.name, namespace=options.namespace, labels=labels(options)),
        spec=models.V1beta1InferenceServiceSpec(predictor=predictor))


def to_plain(obj) -> dict[str, Any]:
    """A model object as plain JSON types (camelCase keys, no None fields), by the kserve API
    client's own serialisation, which walks its models and the kubernetes ones they hold alike
    (the kubernetes client's would fall back to the kserve models' snake_case `to_dict`)."""
    kserve_models()
    from kserve.api_client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def build_deployment(repo: Path | str, options: KServeOptions) -> Deployment:
    """Check the options, read the repository, build the objects (nothing is written)."""
    kserve_models()  # first: a machine without the `kserve` extra is told how to install it
    check_options(options)
    needs = repository_needs(repo)
    gpu = choose_gpu(options, needs)
    scaling = choose_autoscaling(options, needs)
    reasons = runtime_reasons(options, needs)
    image = f"{options.image}:{options.image_tag or DEFAULT_TRITON_TAG}"
    objects: dict[str, dict[str, Any]] = {}
    runtime = None
    if reasons:
        runtime = runtime_name(options)
        objects["servingruntime.yaml"] = to_plain(serving_runtime(options, needs, image))
    objects["serviceaccount.yaml"] = to_plain(service_account(options))
    objects["inferenceservice.yaml"] = to_plain(inference_service(options, gpu, scaling, runtime))
    return Deployment(objects, needs, gpu, scaling, reasons, image if reasons else "")


def secret_commands(options: KServeOptions) -> list[str]:
    """How to create the two Secrets the manifests reference (values typed by the user)."""
    annotate = " ".join(f"{key}={value}" for key, value in s3_annotations(options).items())
    commands = [
        f"kubectl -n {options.namespace} create secret generic {options.storage_secret} "
        "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...",
        f"kubectl -n {options.namespace} annotate secret {options.storage_secret} {annotate}",
    ]
    if options.restrict_admin_api:
        commands.append(f"kubectl -n {options.namespace} create secret generic {options.admin_key_secret} "
                        f"--from-literal={ADMIN_KEY_SECRET_KEY}=$(openssl rand -hex 32)")
    return commands


def deploy_kserve(repo: Path | str, options: KServeOptions, out: Path | str) -> tuple[Deployment, list[Path]]:
    deployment = build_deployment(repo, options)
    return deployment, deployment.write(Path(out))


def summary_rows(deployment: Deployment, options: KServeOptions) -> Sequence[tuple[str, str]]:
    scaling = deployment.autoscaling
    return [
        ("models", ", ".join(deployment.needs.models)),
        ("storage", options.storage_uri),
        ("resources", f"cpu {options.cpu}, memory {options.memory}"
                      + (f", {GPU_RESOURCE} {deployment.gpu}" if deployment.gpu else ", no GPU")),
        ("autoscaling", f"concurrency {scaling.target_concurrency} per replica, "
                        f"{scaling.min_replicas}..{scaling.max_replicas} replicas ({scaling.source})"),
        ("runtime", f"ServingRuntime {runtime_name(options)}, image {deployment.image}: "
                    + "; ".join(deployment.runtime_reasons)
         if deployment.runtime_reasons else "the cluster's default Triton runtime"),
        ("storage access",
         f"ServiceAccount {service_account_name(options)} -> Secret {options.storage_secret}"),
    ]
