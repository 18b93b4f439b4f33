"""docker-compose.yml for GPU hosts, checked without a Docker engine: the Compose
Specification's JSON schema, the settings serving depends on, and `docker-compose config`
where Debian's docker-compose is installed. Nothing here builds or runs the image."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
VARIABLE = re.compile(r"\$\{(\w+):([-?])([^}]*)\}")
ADMIN_KEY = "test-admin-key"


class MissingVariable(Exception):
    """A ${NAME:?message} variable that is unset: compose refuses to start."""


def substitute(match: re.Match, env: dict[str, str]) -> str:
    name, kind, text = match.groups()
    if env.get(name):
        return env[name]
    if kind == "?":
        raise MissingVariable(f"{name}: {text}")
    return text


def interpolate(value, env: dict[str, str]):
    """Compose's ${NAME:-default} and ${NAME:?error} substitution, for the checks below."""
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: substitute(m, env), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def compose(env: dict[str, str] | None = None, admin_key: str | None = ADMIN_KEY) -> dict:
    """The file as compose resolves it under `env` (with TRITON_ADMIN_KEY set, unless None)."""
    env = {**({"TRITON_ADMIN_KEY": admin_key} if admin_key else {}), **(env or {})}
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)


def schema_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification():
    assert schema_errors(yaml.safe_load(COMPOSE.read_text())) == []
    assert schema_errors(compose()) == []


def test_schema_check_catches_a_misspelt_key():
    document = compose()
    document["services"]["triton"]["helthcheck"] = document["services"]["triton"].pop("healthcheck")
    assert any("helthcheck" in error for error in schema_errors(document))


def test_triton_service_reserves_a_gpu_and_publishes_the_three_ports():
    triton = compose()["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert [p.split(":")[-2:] for p in triton["ports"]] == [["8000", "8000"], ["8001", "8001"],
                                                             ["8002", "8002"]]
    assert triton["volumes"] == ["./model_repo:/models:ro"]
    assert triton["shm_size"] == "1gb"


def test_healthcheck_asks_triton_for_readiness():
    check = compose()["services"]["triton"]["healthcheck"]
    assert check["test"][0] == "CMD" and "http://localhost:8000/v2/health/ready" in check["test"]
    assert "curl" in check["test"] and "curl" in DOCKERFILE.read_text()  # the image has curl


def test_server_uses_the_mounted_repository_with_strict_model_config():
    command = compose()["services"]["triton"]["command"]
    assert command[0] == "tritonserver"
    assert "--model-repository=/models" in command and "--disable-auto-complete-config" in command
    assert "--strict-readiness=true" in command


def test_ngc_image_tag_comes_from_triton_tag_with_a_default():
    default, chosen = compose(), compose({"TRITON_TAG": "24.12"})
    assert default["services"]["triton"]["build"]["args"]["TRITON_TAG"] == "24.10"
    assert chosen["services"]["triton"]["build"]["args"]["TRITON_TAG"] == "24.12"
    assert chosen["services"]["triton"]["image"] == "tritonforge-triton:24.12"
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^ARG TRITON_TAG=24\.10$", dockerfile, re.M)
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_TAG\}-py3$", dockerfile, re.M)


PACKAGE = ROOT / "tritonforge"
LOCAL_ONLY = {"onnx_runtime.py"}  # only `tritonforge serve` runs it, never the image
# Pins of the image that differ from constraints.txt, and why: the NGC 24.10 image runs Python
# 3.10, and Pillow 13 is built for Python 3.11 and newer only.
IMAGE_ONLY_PINS = {"pillow": "12.3.0"}


def third_party_imports(path: Path) -> set[str]:
    """Top-level modules a file imports, less the standard library and Triton's own module."""
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    return imported - set(sys.stdlib_module_names) - {"__future__", "triton_python_backend_utils"}


def pins(path: Path) -> dict[str, str]:
    return dict(line.lower().split("==") for line in path.read_text().splitlines()
                if "==" in line and not line.startswith("#"))


def test_image_installs_what_the_companion_models_import_with_the_project_pins():
    from importlib.metadata import packages_distributions

    # Every python-backend model of the project, wherever its modality or family keeps it.
    companions = sorted((p for p in PACKAGE.rglob("*.py") if p.name not in LOCAL_ONLY
                         and "class TritonPythonModel" in p.read_text()), key=lambda p: p.name)
    assert [p.name for p in companions] == ["cloud_step.py", "image_decode.py", "knowledge_injection.py",
                                            "spike_window.py", "text_tokenizer.py"]
    # ov3d's step takes the client's own readers beside it (`STEP_MODULES`); they may import
    # `tritonforge.errors` alone, which the step provides when tritonforge is absent.
    from tritonforge.export.ov3d.modality import STEP_MODULES

    beside = [PACKAGE / "export" / "ov3d" / f"{module}.py" for module in STEP_MODULES]
    imported = set().union(*(third_party_imports(p) for p in (*companions, *beside)))
    imported -= {*STEP_MODULES, "tritonforge"}
    assert {line.strip() for p in beside for line in p.read_text().splitlines()
            if line.strip().startswith(("from tritonforge", "import tritonforge"))} == {
        "from tritonforge.errors import TritonForgeError"}
    assert imported == {"numpy", "tokenizers", "PIL"}  # never tritonforge itself: copied into Triton
    distributions = {packages_distributions()[name][0].lower() for name in imported}
    image, project = pins(ROOT / "docker" / "requirements.txt"), pins(ROOT / "constraints.txt")
    assert set(image) == distributions == {"numpy", "tokenizers", "pillow"}
    assert image == {name: IMAGE_ONLY_PINS.get(name, project[name]) for name in image}


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="Debian's docker-compose is not installed (apt-get install docker-compose)")
def test_docker_compose_config_accepts_the_file():
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True,
                            text=True, env={"TRITON_TAG": "24.12", "TRITON_ADMIN_KEY": ADMIN_KEY,
                                            "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]["triton"]
    assert resolved["image"] == "tritonforge-triton:24.12"
    assert resolved["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


# -- security defaults ---------------------------------------------------------------------

ADMIN_APIS = {"model-repository", "shared-memory", "statistics", "trace", "logging"}
OPEN_APIS = {"health", "metadata", "inference", "model-config"}  # what clients of the ports use


def restricted(command: list[str], option: str) -> tuple[set[str], str, str]:
    """(APIs, header key, header value) of tritonserver's `--<option>=<apis>:<key>=<value>`."""
    [value] = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{option}=")]
    apis, header = value.split(":", 1)
    key, secret = header.split("=", 1)
    return set(apis.split(",")), key, secret


@pytest.mark.parametrize("option", ["http-restricted-api", "grpc-restricted-protocol"])
def test_admin_apis_need_the_admin_key_on_http_and_grpc(option):
    apis, key, secret = restricted(compose()["services"]["triton"]["command"], option)
    assert apis == ADMIN_APIS and not apis & OPEN_APIS
    assert key == "triton-admin-key" and secret == ADMIN_KEY


def test_admin_key_comes_from_the_environment_without_a_default():
    raw = yaml.safe_load(COMPOSE.read_text())["services"]["triton"]["command"]
    keyed = [arg for arg in raw if "restricted" in arg]
    assert len(keyed) == 2 and all(arg.endswith("=${TRITON_ADMIN_KEY:?set TRITON_ADMIN_KEY to the admin "
                                                 "key for model control and shared memory}")
                                   for arg in keyed)
    with pytest.raises(MissingVariable, match="TRITON_ADMIN_KEY"):
        compose(admin_key=None)


def test_ports_bind_loopback_unless_triton_bind_says_otherwise():
    default = compose()["services"]["triton"]["ports"]
    public = compose({"TRITON_BIND": "0.0.0.0"})["services"]["triton"]["ports"]
    assert default == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert public == ["0.0.0.0:8000:8000", "0.0.0.0:8001:8001", "0.0.0.0:8002:8002"]


def test_image_runs_as_a_non_root_user_after_installing():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    assert users and lines[users[-1]] == "USER triton-server"
    assert users[-1] > max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    assert "id -u triton-server" in DOCKERFILE.read_text() and "useradd --uid 1000" in DOCKERFILE.read_text()
