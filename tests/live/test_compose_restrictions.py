"""The Compose path: `query`, `bench` and `soak` against a tritonserver started with the very
restriction flags of docker-compose.yml (model repository, shared memory, statistics, trace and
logging behind the admin key), called with no key at all. They may use only what Compose leaves
open: health, metadata, model config and inference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.serving.client import connect, model_ready
from tritonforge.serving.endpoint import Endpoint
from tritonforge.serving.local import LocalTriton

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
ADMIN_KEY = "compose-test-admin-key"
# Triton reads the key of --grpc-restricted-protocol=<apis>:<key>=<value> from the gRPC header
# `triton-grpc-protocol-<key>`; the server's own clients (model control, readiness) send it.
ADMIN_HEADER = "triton-grpc-protocol-triton-admin-key"
runner = CliRunner()


def compose_restrictions() -> list[str]:
    """docker-compose.yml's --http-restricted-api and --grpc-restricted-protocol arguments, with
    TRITON_ADMIN_KEY set as compose would substitute it."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["triton"]["command"]
    return [re.sub(r"\$\{TRITON_ADMIN_KEY:\?[^}]*\}", ADMIN_KEY, arg)
            for arg in command if "restricted" in arg]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], terminal_width=250)


@pytest.fixture(scope="module")
def compose_triton(tiny_repo, tmp_path_factory):
    arguments = compose_restrictions()
    assert [a.split("=", 1)[0] for a in arguments] == ["--http-restricted-api", "--grpc-restricted-protocol"]
    log = tmp_path_factory.mktemp("compose_triton") / "triton.log"
    with LocalTriton(tiny_repo, log_file=log, extra_args=arguments, nobatch_twins=True,
                     client=Endpoint("", headers={ADMIN_HEADER: ADMIN_KEY}),
                     http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


def test_the_repository_index_really_needs_the_admin_key(compose_triton):
    client = connect(compose_triton.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
            client.get_model_repository_index()
        assert model_ready(client, "tiny_nobatch", compose_triton.grpc_url)  # the health API is open
        assert not model_ready(client, "no_such_model", compose_triton.grpc_url)
    finally:
        client.close()


def test_query_needs_no_admin_key(compose_triton):
    result = invoke("query", "tiny_text", "--url", compose_triton.grpc_url, "--text", "hello",
                    "--text", "world")
    assert result.exit_code == 0, result.output
    assert "[2, 32]" in result.output


def test_bench_needs_no_admin_key_and_still_finds_the_nobatch_twin(compose_triton, tmp_path):
    result = invoke("bench", "tiny", "--url", compose_triton.grpc_url, "--repo", compose_triton.repo,
                    "--concurrency", "1,2", "--requests", "10", "--json", tmp_path / "bench.json")
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert {(r["model"], r["concurrency"], r["ok"], r["errors"]) for r in levels} == {
        (model, level, 10, 0) for model in ("tiny", "tiny_nobatch") for level in (1, 2)}


def test_soak_needs_no_admin_key_and_still_finds_the_ensemble(compose_triton, tmp_path):
    result = invoke("soak", "tiny", "--url", compose_triton.grpc_url, "--repo", compose_triton.repo,
                    "--requests", "20", "--concurrency", "2", "--json", tmp_path / "soak.json")
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in json.loads((tmp_path / "soak.json").read_text())["models"]}
    assert set(rows) == {"tiny", "tiny_text", "all"}
    assert (rows["all"]["ok"], rows["all"]["errors"], rows["all"]["wrong"]) == (20, 0, 0)
