"""Remote servers: `query`, `bench`, `verify --triton` and `soak` over TLS (the server's CA,
mutual TLS with a client certificate) and with the headers a gateway or Triton's
`--grpc-restricted-protocol` asks for, against real tritonservers started with those options."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.serving.endpoint import Endpoint, endpoint_from_options
from tritonforge.serving.local import LocalTriton
from tritonforge.serving.perf_analyzer import connection_arguments

runner = CliRunner()
# Triton checks the key of --grpc-restricted-protocol=<apis>:<key>=<value> as header
# `triton-grpc-protocol-<key>`.
RESTRICTED_APIS = "health,metadata,inference,model-config,model-repository"
KEY_HEADER, KEY = "triton-grpc-protocol-x-test-key", "not-a-real-secret-42"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], terminal_width=250)


def local_server(repo, log, extra_args: list[str], client: Endpoint) -> LocalTriton:
    """A tritonserver with these options on free ports, its own clients reaching it as `client`."""
    return LocalTriton(repo, log_file=log, extra_args=extra_args, client=client, http_port=0, grpc_port=0,
                       metrics_port=0)


def tls_server_args(tls_files, mutual: bool = False) -> list[str]:
    return [f"--grpc-use-ssl{'-mutual' if mutual else ''}=true",
            f"--grpc-server-cert={tls_files['server_cert']}", f"--grpc-server-key={tls_files['server_key']}",
            f"--grpc-root-cert={tls_files['ca']}"]


@pytest.fixture(scope="module")
def tls_triton(tiny_repo, tls_files, tmp_path_factory):
    """The tiny encoder and its `_text` ensemble behind TLS (server certificate only)."""
    log = tmp_path_factory.mktemp("tls_triton") / "triton.log"
    with local_server(tiny_repo, log, tls_server_args(tls_files),
                      Endpoint("", ssl=True, root_certificates=tls_files["ca"])) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_triton(tiny_repo, tmp_path_factory):
    """The same models, every API but model control restricted to callers with the key."""
    log = tmp_path_factory.mktemp("keyed_triton") / "triton.log"
    with local_server(tiny_repo, log, [f"--grpc-restricted-protocol={RESTRICTED_APIS}:x-test-key={KEY}"],
                      Endpoint("", headers={KEY_HEADER: KEY})) as server:
        yield server


# -- TLS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["grpcs", "tls", "implied"])
def test_query_over_tls_with_the_servers_ca(tls_triton, tls_files, how):
    address = tls_triton.grpc_url
    url, extra = {"grpcs": (f"grpcs://{address}", []), "tls": (address, ["--tls"]),
                  "implied": (address, [])}[how]
    result = invoke("query", "tiny_text", "--url", url, *extra, "--root-certs", tls_files["ca"],
                    "--text", "hello", "--text", "world")
    assert result.exit_code == 0, result.output
    assert "[2, 32]" in result.output  # sentence_embedding of the 32-wide tiny encoder


def test_query_over_tls_without_the_ca_says_which_option_is_missing(tls_triton):
    unverified = invoke("query", "tiny_text", "--url", f"grpcs://{tls_triton.grpc_url}", "--text", "x")
    assert unverified.exit_code == 2
    assert "TLS handshake" in unverified.output and "CERTIFICATE_VERIFY_FAILED" in unverified.output
    assert "--root-certs" in unverified.output
    plain = invoke("query", "tiny_text", "--url", tls_triton.grpc_url, "--text", "x")
    assert plain.exit_code == 3
    assert "closed the connection" in plain.output and "grpcs://" in plain.output


def test_tls_to_a_plain_server_says_it_does_not_speak_tls(keyed_triton, tls_files):
    result = invoke("query", "tiny_text", "--url", f"grpcs://{keyed_triton.grpc_url}",
                    "--root-certs", tls_files["ca"], "--text", "x")
    assert result.exit_code == 2 and "does not speak TLS" in result.output


def test_bench_over_tls(tls_triton, tls_files, tmp_path):
    url = f"grpcs://{tls_triton.grpc_url}"
    result = invoke("bench", "tiny_text", "--url", url, "--root-certs", tls_files["ca"],
                    "--concurrency", "1,2", "--requests", "10", "--json", tmp_path / "bench.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["url"] == url
    assert [(r["concurrency"], r["ok"], r["errors"]) for r in report["levels"]] == [(1, 10, 0), (2, 10, 0)]
    refused = invoke("bench", "tiny_text", "--url", url, "--requests", "10")
    assert refused.exit_code == 2 and "TLS handshake" in refused.output


def test_perf_analyzer_gets_the_tls_files(tls_triton, tls_files, tmp_path):
    from tritonforge.serving.client import bench_payloads, connect, model_info
    from tritonforge.serving.perf_analyzer import find_perf_analyzer, input_data, run_perf_analyzer

    try:
        find_perf_analyzer()
    except TritonForgeError as exc:
        pytest.skip(str(exc))
    endpoint = Endpoint(tls_triton.grpc_url, ssl=True, root_certificates=tls_files["ca"])
    client = connect(endpoint)
    info = model_info(client, "tiny_text", endpoint)
    _kind, payloads = bench_payloads(info, None)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(input_data(info, payloads[:4])))
    level = run_perf_analyzer(endpoint, "tiny_text", data, 1, 10, stability_percent=100)
    assert level.requests > 0 and level.throughput > 0


def test_mutual_tls_needs_the_client_certificate(tiny_repo, tls_files, tmp_path):
    mutual = Endpoint("", ssl=True, root_certificates=tls_files["ca"], private_key=tls_files["client_key"],
                      certificate_chain=tls_files["client_cert"])
    with local_server(tiny_repo, tmp_path / "triton.log", tls_server_args(tls_files, True), mutual) as server:
        url = f"grpcs://{server.grpc_url}"
        result = invoke("query", "tiny_text", "--url", url, "--root-certs", tls_files["ca"],
                        "--client-cert", tls_files["client_cert"], "--client-key", tls_files["client_key"],
                        "--text", "hello")
        assert result.exit_code == 0, result.output
        assert "[1, 32]" in result.output
        without = invoke("query", "tiny_text", "--url", url, "--root-certs", tls_files["ca"], "--text", "x")
    assert without.exit_code == 3
    assert "closed the connection" in without.output and "--client-cert" in without.output


# -- headers -------------------------------------------------------------------------------


def test_query_sends_the_header_the_server_asks_for(keyed_triton):
    url, header = keyed_triton.grpc_url, f"{KEY_HEADER}: {KEY}"
    result = invoke("query", "tiny_text", "--url", url, "--header", header, "--text", "hello")
    assert result.exit_code == 0, result.output
    assert "[1, 32]" in result.output
    for extra in ([], ["--header", f"{KEY_HEADER}: wrong"]):
        refused = invoke("query", "tiny_text", "--url", url, *extra, "--text", "hello")
        assert refused.exit_code == 2
        assert f"--header '{KEY_HEADER}: VALUE'" in refused.output and KEY not in refused.output


def test_bench_sends_the_header(keyed_triton, tmp_path):
    url = keyed_triton.grpc_url
    result = invoke("bench", "tiny_text", "--url", url, "--header", f"{KEY_HEADER}: {KEY}",
                    "--concurrency", "2", "--requests", "10", "--json", tmp_path / "bench.json")
    assert result.exit_code == 0, result.output
    [level] = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert (level["ok"], level["errors"]) == (10, 0)
    refused = invoke("bench", "tiny_text", "--url", url, "--requests", "10")
    assert refused.exit_code == 2 and KEY_HEADER in refused.output


def test_verify_triton_sends_the_header(keyed_triton, tiny_repo, tmp_path):
    common = ["verify", "tiny", "--repo", tiny_repo, "--samples", "8", "--iterations", "2",
              "--triton", keyed_triton.grpc_url]
    result = invoke(*common, "--header", f"{KEY_HEADER}: {KEY}", "--json", tmp_path / "verify.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["triton"]["parity"]["passed"] is True and report["latency_ms"]["triton"]["n"] == 2
    refused = invoke(*common)
    assert refused.exit_code == 2 and KEY_HEADER in refused.output


def test_soak_sends_the_header(keyed_triton, tiny_repo, tmp_path):
    common = ["soak", "tiny", "--url", keyed_triton.grpc_url, "--repo", tiny_repo, "--requests", "20",
              "--concurrency", "2"]
    result = invoke(*common, "--header", f"{KEY_HEADER}: {KEY}", "--json", tmp_path / "soak.json")
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in json.loads((tmp_path / "soak.json").read_text())["models"]}
    assert set(rows) == {"tiny", "tiny_text", "all"}  # the ensemble was found and soaked too
    assert (rows["all"]["ok"], rows["all"]["errors"], rows["all"]["wrong"]) == (20, 0, 0)
    refused = invoke(*common)
    assert refused.exit_code == 2 and KEY_HEADER in refused.output


# -- the endpoint and its options, without a server ----------------------------------------


@pytest.mark.parametrize(("url", "address", "ssl"), [
    ("10.0.0.1:8001", "10.0.0.1:8001", False), ("grpc://host:8001", "host:8001", False),
    ("grpcs://host:443", "host:443", True), ("GRPCS://host:443", "host:443", True)])
def test_endpoint_of_a_url(url, address, ssl):
    endpoint = Endpoint.of(url)
    assert (endpoint.address, endpoint.ssl, endpoint.call_headers) == (address, ssl, None)
    assert str(endpoint) == (f"grpcs://{address}" if ssl else address)


def test_bearer_token_comes_from_the_environment_and_stays_out_of_repr(monkeypatch):
    monkeypatch.setenv("TF_TEST_TOKEN", "abc.def.ghi")
    endpoint = endpoint_from_options("grpcs://host:443", headers=["X-Tenant: blue"],
                                     bearer_token_env="TF_TEST_TOKEN")
    assert endpoint.call_headers == {"x-tenant": "blue", "authorization": "Bearer abc.def.ghi"}
    assert endpoint.ssl and "abc.def.ghi" not in repr(endpoint)


def test_perf_analyzer_takes_tls_and_refuses_headers(tls_files):
    endpoint = Endpoint("host:443", ssl=True, root_certificates=tls_files["ca"],
                        private_key=tls_files["client_key"], certificate_chain=tls_files["client_cert"])
    assert connection_arguments(endpoint) == [
        "-u", "host:443", "--ssl-grpc-use-ssl", "true",
        "--ssl-grpc-root-certifications-file", str(tls_files["ca"]),
        "--ssl-grpc-private-key-file", str(tls_files["client_key"]),
        "--ssl-grpc-certificate-chain-file", str(tls_files["client_cert"])]
    assert connection_arguments("127.0.0.1:8001") == ["-u", "127.0.0.1:8001"]
    with pytest.raises(TritonForgeError, match="perf_analyzer ignores -H for gRPC"):
        connection_arguments(Endpoint("host:443", headers={"x-key": "v"}))


@pytest.mark.parametrize("command", [
    ["query", "tiny", "--text", "x", "--url", "127.0.0.1:1"], ["bench", "tiny", "--url", "127.0.0.1:1"],
    ["soak", "tiny", "--url", "127.0.0.1:1"], ["verify", "tiny", "--triton", "127.0.0.1:1"]])
@pytest.mark.parametrize(("options", "message"), [
    (["--root-certs", "{missing}"], "--root-certs {missing} does not exist"),
    (["--root-certs", "{folder}"], "--root-certs {folder} is not a file"),
    (["--root-certs", "{not_pem}"], "--root-certs {not_pem} holds no PEM block"),
    (["--client-cert", "{ca}"], "--client-cert needs --client-key"),
    (["--client-key", "{ca}"], "--client-key needs --client-cert"),
    (["--header", "x-key"], "is not 'Name: value'"),
    (["--header", "x key: v"], "cannot be a gRPC header name"),
    (["--header", "grpc-timeout: 1"], "cannot be a gRPC header name"),
    (["--header", "x-key:"], "needs a value"),
    (["--header", "x-key: a", "--header", "X-Key: b"], "given more than once"),
    (["--bearer-token-env", "TF_TEST_UNSET"], "TF_TEST_UNSET: that environment variable is not set"),
    (["--bearer-token-env", "TF_TEST_EMPTY"], "TF_TEST_EMPTY: that environment variable is empty"),
    (["--no-tls", "--root-certs", "{ca}"], "--no-tls with --root-certs"),
])
def test_remote_options_are_checked_before_connecting(command, options, message, tls_files, tmp_path,
                                                      monkeypatch):
    monkeypatch.delenv("TF_TEST_UNSET", raising=False)
    monkeypatch.setenv("TF_TEST_EMPTY", "")
    (tmp_path / "not.pem").write_text("hello")
    paths = {"missing": tmp_path / "missing.pem", "folder": tmp_path, "not_pem": tmp_path / "not.pem",
             "ca": tls_files["ca"]}
    result = invoke(*command, *[o.format(**paths) for o in options], "--repo", tmp_path)
    assert result.exit_code == 2, result.output
    assert message.format(**paths) in result.output.replace("\n", "")


@pytest.mark.parametrize(("url", "options", "message"), [
    ("grpc://127.0.0.1:1", ["--root-certs", "{ca}"], "asks for a plain connection (grpc://)"),
    ("grpc://127.0.0.1:1", ["--tls"], "asks for a plain connection (grpc://)"),
    ("grpcs://127.0.0.1:1", ["--no-tls"], "asks for TLS (grpcs://) but --no-tls"),
    ("https://127.0.0.1:1", [], "--url 'https://127.0.0.1:1' has a scheme tritonforge does not speak"),
])
def test_tls_options_must_agree_with_the_url(url, options, message, tls_files):
    options = [o.format(ca=tls_files["ca"]) for o in options]
    result = invoke("query", "tiny", "--text", "x", "--url", url, *options)
    assert result.exit_code == 2 and message in result.output.replace("\n", "")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_certificate_is_named(tls_files, tmp_path):
    locked = tmp_path / "locked.pem"
    locked.write_bytes(tls_files["ca"].read_bytes())
    locked.chmod(0)
    result = invoke("query", "tiny", "--text", "x", "--url", "127.0.0.1:1", "--root-certs", locked)
    assert result.exit_code == 2 and f"--root-certs {locked} cannot be read" in result.output


def test_remote_options_without_triton_are_refused_by_verify(tmp_path):
    result = invoke("verify", "tiny", "--repo", tmp_path, "--header", "x-key: v")
    assert result.exit_code == 2 and "give --triton too" in result.output
