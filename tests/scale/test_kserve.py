"""`tritonforge deploy kserve`: manifests built from the kserve/kubernetes models, validated
against the Kubernetes schemas (kubernetes-validate) and KServe's CRD schemas."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.scale.kserve import (
    DEFAULT_TRITON_TAG,
    RESTRICTED_APIS,
    KServeOptions,
    build_deployment,
    kserve_models,
)
from tritonforge.scale.plan import plan_replicas

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37.0 ships
# KServe's CRDs (config/crd/full/serving.kserve.io_*.yaml), see tests/data/README.md.
CRD_DIR = Path(os.environ.get("KSERVE_CRD_DIR", ROOT / "tests" / "data" / "kserve"))
CRDS = {"InferenceService": ("serving.kserve.io_inferenceservices.yaml", "v1beta1"),
        "ServingRuntime": ("serving.kserve.io_servingruntimes.yaml", "v1alpha1")}
MINILM_MODELS = ("bert_fp32", "bert_fp32_tokenizer", "bert_fp32_text")


@pytest.fixture(scope="module")
def minilm_w6a6_repo(tmp_path_factory, minilm_repo) -> Path:
    """The real MiniLM exported FP32 (shared fixture) and W6A6, each with its `_text` ensemble."""
    from tritonforge.export.bert import BertOptions
    from tritonforge.pipeline.export import export_model

    repo = tmp_path_factory.mktemp("kserve_repo")
    for name in MINILM_MODELS:
        (repo / name).symlink_to(minilm_repo / name)
    # A short calibration (16 texts, coarse clipping only: about 30 s); the recipe is recorded.
    export_model("bert", BertOptions(bits=6, calib_size=16, lsq_epochs=0, reconstruct=False), repo,
                 name="bert_w6a6")
    return repo


@pytest.fixture(scope="module")
def gpu_repo(tmp_path_factory, minilm_repo) -> Path:
    """MiniLM FP32 as a `--gpu` export configures it: a KIND_GPU instance group and the
    TensorRT accelerator (written here, since no GPU export runs on this machine)."""
    from tritonclient.grpc import model_config_pb2 as mc

    from tritonforge.triton_config import CONFIG_FILE, config_text, parse_config

    repo = tmp_path_factory.mktemp("gpu_repo")
    shutil.copytree(minilm_repo / "bert_fp32", repo / "bert_fp32")
    config = parse_config((repo / "bert_fp32" / CONFIG_FILE).read_text())
    config.instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU
    config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    (repo / "bert_fp32" / CONFIG_FILE).write_text(config_text(config))
    return repo


@pytest.fixture(scope="module")
def plan_json(tmp_path_factory) -> Path:
    """A plan for 600 req/s at p99 <= 50 ms from a bench curve of bert_fp32_text."""
    bench = {"url": "127.0.0.1:8001", "levels": [
        {"model": "bert_fp32_text", "batching": "dynamic", "concurrency": c, "requests": 500, "ok": 500,
         "errors": 0, "seconds": 1.0, "throughput_rps": rps,
         "latency_ms": {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99}, "first_error": ""}
        for c, rps, p99 in ((1, 100.0, 12.0), (4, 250.0, 30.0), (16, 300.0, 120.0))]}
    folder = tmp_path_factory.mktemp("plan")
    (folder / "bench.json").write_text(json.dumps(bench))
    result = runner.invoke(app, ["plan", "--bench", str(folder / "bench.json"), "--target-rps", "600",
                                 "--p99-ms", "50", "-o", str(folder / "plan.json")])
    assert result.exit_code == 0, result.output
    return folder / "plan.json"


def deploy(repo: Path, out: Path, *arguments: str):
    return runner.invoke(app, ["deploy", "kserve", str(repo), "-o", str(out), *arguments], terminal_width=300)


def read_manifests(out: Path) -> dict[str, dict]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(out.glob("*.yaml"))}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, minilm_w6a6_repo, plan_json) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("kserve_out")
    result = deploy(minilm_w6a6_repo, out, "--storage-uri", "s3://models/minilm", "--plan", str(plan_json),
                    "--cpu", "4", "--memory", "8Gi", "--namespace", "inference", "--name", "minilm",
                    "--s3-endpoint", "minio.storage:9000", "--no-s3-use-https", "--image",
                    "registry.example.com/ml/tritonforge-triton", "--image-tag", "24.10")
    assert result.exit_code == 0, result.output
    assert "kubectl -n inference create secret generic tritonforge-storage" in result.output
    # written by rename: no temporary files left beside them
    assert sorted(p.name for p in out.iterdir()) == ["inferenceservice.yaml", "serviceaccount.yaml",
                                                      "servingruntime.yaml"]
    return read_manifests(out)


@pytest.mark.slow
def test_deploy_the_plan_for_minilm_fp32_and_w6a6(deployed):
    # the plan: concurrency 4 (30 ms <= 50 ms), 250 x 0.8 = 200 req/s usable, ceil(600 / 200) = 3
    assert set(deployed) == {"inferenceservice.yaml", "servingruntime.yaml", "serviceaccount.yaml"}
    service = deployed["inferenceservice.yaml"]
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert service["metadata"] == {"name": "minilm", "namespace": "inference", "labels": {
        "app.kubernetes.io/name": "minilm", "app.kubernetes.io/managed-by": "tritonforge"}}
    predictor = service["spec"]["predictor"]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 4)
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert predictor["serviceAccountName"] == "minilm-storage"
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"}
    assert model["storageUri"] == "s3://models/minilm"
    assert model["runtime"] == "minilm-triton"
    # CPU exports (the default target here: OpenVINO where installed, else ONNX Runtime): no GPU
    assert model["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"},
                                  "limits": {"cpu": "4", "memory": "8Gi"}}
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}


def test_the_runtime_restricts_admin_apis_with_a_key_from_a_secret(deployed):
    runtime = deployed["servingruntime.yaml"]
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert runtime["metadata"]["name"] == "minilm-triton"
    assert runtime["spec"]["supportedModelFormats"] == [
        {"autoSelect": False, "name": "triton", "version": "2"}]
    [container] = runtime["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/tritonforge-triton:24.10"
    restriction = f"{RESTRICTED_APIS}:triton-admin-key=$(TRITON_ADMIN_KEY)"
    assert f"--http-restricted-api={restriction}" in container["args"]
    assert f"--grpc-restricted-protocol={restriction}" in container["args"]
    assert "--model-repository=/mnt/models" in container["args"]
    assert container["env"] == [{"name": "TRITON_ADMIN_KEY", "valueFrom": {"secretKeyRef": {
        "name": "tritonforge-triton-admin", "key": "admin-key"}}}]
    # python-backend tokenizers exchange tensors through /dev/shm, as compose's shm_size
    assert container["volumeMounts"] == [{"mountPath": "/dev/shm", "name": "dshm"}]
    assert runtime["spec"]["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]


def test_storage_access_is_references_only(deployed):
    account = deployed["serviceaccount.yaml"]
    assert account["secrets"] == [{"name": "tritonforge-storage"}]
    assert account["metadata"]["annotations"] == {"serving.kserve.io/s3-endpoint": "minio.storage:9000",
                                                  "serving.kserve.io/s3-usehttps": "0"}
    text = json.dumps(deployed)
    assert not re.search(r"AWS_ACCESS_KEY_ID|AWS_SECRET|stringData|\"data\"|\"kind\": \"Secret\"", text)


def test_restricted_apis_and_image_tag_match_compose_and_the_dockerfile():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["triton"]["command"]
    for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
        [argument] = [a for a in command if a.startswith(flag)]
        assert argument.removeprefix(flag).split(":")[0] == RESTRICTED_APIS
    assert f"ARG TRITON_TAG={DEFAULT_TRITON_TAG}\n" in (ROOT / "docker" / "Dockerfile").read_text()


def test_manifests_validate_against_the_kubernetes_schemas(deployed):
    import kubernetes_validate

    kubernetes_validate.validate(deployed["serviceaccount.yaml"], KUBERNETES_VERSION, strict=True)
    # The pod parts KServe passes to Kubernetes, against Kubernetes' own Container schema.
    container = copy.deepcopy(deployed["servingruntime.yaml"]["spec"]["containers"][0])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [container], "volumes": deployed["servingruntime.yaml"]["spec"]["volumes"]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    model = {k: v for k, v in deployed["inferenceservice.yaml"]["spec"]["predictor"]["model"].items()
             if k not in ("modelFormat", "runtime", "storageUri", "protocolVersion")}
    pod["spec"] = {"containers": [{**model, "image": "x"}], "serviceAccountName": "minilm-storage"}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validate_catches_a_bad_field(deployed):
    import kubernetes_validate

    account = copy.deepcopy(deployed["serviceaccount.yaml"])
    account["secrets"] = [{"name": "x", "bogus": 1}]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(account, KUBERNETES_VERSION, strict=True)


def strict(schema):
    """The CRD schema with unknown fields refused (as `kubectl apply --validate=strict` does),
    except where the CRD keeps unknown fields or declares a map."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_validator(kind: str):
    import jsonschema

    filename, version = CRDS[kind]
    path = CRD_DIR / filename
    if not path.is_file():
        pytest.skip(f"KServe CRD schema {path} not pinned: no package registry ships KServe's CRDs "
                    "(tests/data/README.md); set KSERVE_CRD_DIR to a folder holding them")
    crd = yaml.safe_load(path.read_text())
    [entry] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(strict(entry["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize(("kind", "filename"), [("InferenceService", "inferenceservice.yaml"),
                                                ("ServingRuntime", "servingruntime.yaml")])
def test_manifests_validate_against_the_kserve_crds(deployed, kind, filename):
    validator = crd_validator(kind)
    assert [error.message for error in validator.iter_errors(deployed[filename])] == []
    broken = copy.deepcopy(deployed[filename])
    broken["spec"]["bogus"] = 1
    assert any("bogus" in error.message for error in validator.iter_errors(broken))


def test_the_crd_schema_refuses_a_wrong_type(deployed):
    validator = crd_validator("InferenceService")
    broken = copy.deepcopy(deployed["inferenceservice.yaml"])
    broken["spec"]["predictor"]["scaleTarget"] = "four"
    assert not validator.is_valid(broken)


def unknown_keys(data, type_name: str, path: str = "") -> list[str]:
    """Keys of `data` that the model `type_name` (a kserve or kubernetes model, or a list/map
    of them, as their `openapi_types` spell it) does not declare, with their paths."""
    from kubernetes import client as k8s

    models = kserve_models()
    if match := re.fullmatch(r"(?:list|List)\[(.+)\]", type_name):
        return [key for i, item in enumerate(data) for key in unknown_keys(item, match[1], f"{path}[{i}]")]
    if match := re.fullmatch(r"(?:dict\(|Dict\[)str, (.+)[)\]]", type_name):
        return [key for k, v in data.items() for key in unknown_keys(v, match[1], f"{path}.{k}")]
    model = getattr(models, type_name, None) or getattr(k8s, type_name, None)
    if model is None:  # str, int, bool, object
        return []
    declared = {json_key: attribute for attribute, json_key in model.attribute_map.items()}
    found = []
    for key, value in data.items():
        if key not in declared:
            found.append(f"{path}.{key}")
        else:
            found += unknown_keys(value, model.openapi_types[declared[key]], f"{path}.{key}")
    return found


@pytest.mark.parametrize(("filename", "model"), [("inferenceservice.yaml", "V1beta1InferenceService"),
                                                 ("servingruntime.yaml", "V1alpha1ServingRuntime"),
                                                 ("serviceaccount.yaml", "V1ServiceAccount")])
def test_every_key_is_declared_by_the_kserve_and_kubernetes_models(deployed, filename, model):
    """Always runs (the CRD check needs the CRDs): each key is one the SDKs' generated models,
    made from the KServe and Kubernetes OpenAPI definitions, declare."""
    assert unknown_keys(deployed[filename], model) == []
    broken = copy.deepcopy(deployed[filename])
    broken["metadata"]["bogus"] = 1
    assert unknown_keys(broken, model) == [".metadata.bogus"]


# -- what the repository decides ----------------------------------------------------------

def test_gpu_exports_get_a_gpu_and_refuse_gpu_zero(gpu_repo, tmp_path):
    deployment = build_deployment(gpu_repo, KServeOptions("s3://models/gpu", target_concurrency=8))
    resources = deployment.objects["inferenceservice.yaml"]["spec"]["predictor"]["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    deployment = build_deployment(gpu_repo, KServeOptions("s3://models/gpu", gpu=2, target_concurrency=8))
    assert deployment.objects["inferenceservice.yaml"]["spec"]["predictor"]["model"]["resources"][
        "limits"]["nvidia.com/gpu"] == "2"
    result = deploy(gpu_repo, tmp_path, "--storage-uri", "s3://models/gpu", "--gpu", "0",
                    "--target-concurrency", "8")
    assert result.exit_code == 2
    assert "--gpu 0, but the repository has models exported for a GPU (bert_fp32: KIND_GPU" in result.output


def test_gpu_on_a_cpu_only_repository_is_refused(minilm_w6a6_repo, tmp_path):
    manifest = json.loads((minilm_w6a6_repo / "bert_w6a6" / "1" / "tritonforge.json").read_text())
    assert manifest["serving"]["gpu"] is False
    result = deploy(minilm_w6a6_repo, tmp_path, "--storage-uri", "s3://models/minilm", "--gpu", "1",
                    "--target-concurrency", "4")
    assert result.exit_code == 2
    assert "--gpu 1: the repository has no GPU support" in result.output
    assert not list(tmp_path.glob("*.yaml"))


def test_the_default_runtime_is_used_when_it_fits(minilm_repo, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "bert_fp32").symlink_to(minilm_repo / "bert_fp32")  # no python steps
    deployment = build_deployment(tmp_path / "repo", KServeOptions(
        "s3://models/plain", restrict_admin_api=False, target_concurrency=2))
    assert deployment.runtime_reasons == []
    assert set(deployment.objects) == {"inferenceservice.yaml", "serviceaccount.yaml"}
    assert "runtime" not in deployment.objects["inferenceservice.yaml"]["spec"]["predictor"]["model"]
    pinned = build_deployment(tmp_path / "repo", KServeOptions(
        "s3://models/plain", restrict_admin_api=False, target_concurrency=2, image_tag="25.01"))
    assert pinned.runtime_reasons == ["pinned NGC release 25.01"]
    [container] = pinned.objects["servingruntime.yaml"]["spec"]["containers"]
    assert container["image"] == "tritonforge-triton:25.01"


# -- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["gs://models/minilm", "https://example.com/minilm", "/data/model_repo",
                                 "pvc://claim/minilm"])
def test_unsupported_storage_schemes_are_refused(minilm_w6a6_repo, tmp_path, uri):
    result = deploy(minilm_w6a6_repo, tmp_path, "--storage-uri", uri, "--target-concurrency", "4")
    assert result.exit_code == 2
    assert f"--storage-uri {uri!r}" in result.output
    assert "is not supported: give s3://BUCKET/PREFIX" in result.output


def test_a_plan_whose_target_is_unreachable_writes_no_plan(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"levels": [
        {"model": "bert_fp32_text", "concurrency": 1, "errors": 0, "throughput_rps": 90.0,
         "latency_ms": {"p99": 14.2}}]}))
    result = runner.invoke(app, ["plan", "--bench", str(bench), "--target-rps", "500", "--p99-ms", "10",
                                 "-o", str(tmp_path / "plan.json")], terminal_width=300)
    assert result.exit_code == 2
    assert "the best p99 measured is 14.2 ms, at concurrency 1" in result.output
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"storage_uri": "s3://Bad_Bucket/x"}, "is not a bucket name"),
    ({"gpu": -1}, "--gpu -1 is not allowed"),
    ({"min_replicas": -1}, "--min-replicas -1 is not allowed"),
    ({"max_replicas": 0}, "--max-replicas 0 is not allowed"),
    ({"target_concurrency": 0}, "--target-concurrency 0 is not allowed"),
    ({"min_replicas": 3, "max_replicas": 2}, "--min-replicas 3 is above --max-replicas 2"),
    ({"name": "MiniLM"}, "--name 'MiniLM' is not a Kubernetes name"),
    ({"name": "1minilm"}, "--name '1minilm' is not a Kubernetes name"),
    ({"namespace": "a.b"}, "--namespace 'a.b' is not a Kubernetes name"),
    ({"storage_secret": "creds_s3"}, "--storage-secret 'creds_s3' is not a Kubernetes name"),
    ({"cpu": "two"}, "--cpu 'two' is not a Kubernetes quantity"),
    ({"cpu": "0"}, "--cpu '0' is too small: give at least 10m"),
    ({"cpu": "-1"}, "--cpu '-1' is too small"),
    ({"memory": "4GB"}, "--memory '4GB' is not a Kubernetes quantity"),
    ({"memory": "4096"}, "--memory '4096' is too small: give at least 64Mi"),
    ({"image": "tritonforge-triton:24.10"}, "--image 'tritonforge-triton:24.10' is not an image name"),
    ({"image_tag": "24.13"}, "--image-tag '24.13' is not an NGC release"),
    ({"s3_endpoint": "https://minio:9000"}, "give host[:port] without a scheme"),
    ({"target_concurrency": None}, "give the per-replica concurrency: --plan PLAN.json"),
])
def test_bad_options_are_refused(minilm_w6a6_repo, options, message):
    arguments = {"storage_uri": "s3://models/minilm", "target_concurrency": 4, **options}
    with pytest.raises(TritonForgeError, match=re.escape(message)):
        build_deployment(minilm_w6a6_repo, KServeOptions(**arguments))


def test_plan_conflicts_are_refused(minilm_w6a6_repo, tmp_path):
    from tritonforge.scale.plan import read_plan, write_plan

    bench = {"levels": [{"model": "bert_fp32_text", "concurrency": 4, "errors": 0, "throughput_rps": 100.0,
                         "latency_ms": {"p99": 20.0}}]}
    write_plan(plan_replicas(bench, 300, 50), tmp_path / "plan.json")  # 4 replicas
    plan = read_plan(tmp_path / "plan.json")
    base = {"storage_uri": "s3://models/minilm", "plan": plan}
    with pytest.raises(TritonForgeError, match="--target-concurrency 8 and --plan both set"):
        build_deployment(minilm_w6a6_repo, KServeOptions(**base, target_concurrency=8))
    with pytest.raises(TritonForgeError, match="--max-replicas 2 is below the plan's 4 replicas"):
        build_deployment(minilm_w6a6_repo, KServeOptions(**base, max_replicas=2))
    write_plan(plan_replicas({"levels": [{**bench["levels"][0], "model": "other_text"}]}, 300, 50),
               tmp_path / "other.json")
    with pytest.raises(TritonForgeError, match="measured on 'other_text', which the repository does not"):
        build_deployment(minilm_w6a6_repo, KServeOptions("s3://models/minilm",
                                                         plan=read_plan(tmp_path / "other.json")))


def test_an_output_path_that_is_a_file_is_refused(minilm_w6a6_repo, tmp_path):
    (tmp_path / "taken").write_text("")
    result = deploy(minilm_w6a6_repo, tmp_path / "taken", "--storage-uri", "s3://models/minilm",
                    "--target-concurrency", "4")
    assert result.exit_code == 2
    assert f"cannot write {tmp_path / 'taken'}" in result.output


def test_a_repository_that_fails_ls_checks_is_refused(tmp_path):
    (tmp_path / "not_a_repo").mkdir()
    (tmp_path / "not_a_repo" / "notes.txt").write_text("hello")
    with pytest.raises(TritonForgeError, match="is not a model repository"):
        build_deployment(tmp_path / "not_a_repo", KServeOptions("s3://models/x", target_concurrency=1))
