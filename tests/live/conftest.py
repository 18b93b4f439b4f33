"""One real tritonserver for the serving tests: a tiny BERT encoder, a tiny classifier, a tiny
W6A6 (QDQ) encoder, a tiny BF16 encoder and the real MiniLM FP32, each with its `_text`
ensemble, and every model's `_nobatch` twin. The classifier targets ONNX Runtime, the others
OpenVINO (the default where it is installed), so the wrapper's two runtimes are both served."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonforge.export.bert import BertOptions
from tritonforge.pipeline.export import export_model
from tritonforge.runtime import cpu_has_bf16
from tritonforge.serving.local import LocalTriton

MINILM_MODELS = ("bert_fp32", "bert_fp32_tokenizer", "bert_fp32_text")


def pytest_collection_modifyitems(items):
    """Everything here needs a live tritonserver (started once, seconds to minutes): slow."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}  # LocalTriton picks free ones


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory, tiny_bert, tiny_repo, tiny_classifier, minilm_repo) -> Path:
    repo = tmp_path_factory.mktemp("served_repo")
    for name in ("tiny", "tiny_tokenizer", "tiny_text"):
        (repo / name).symlink_to(tiny_repo / name)
    export_model("bert", BertOptions(model=str(tiny_classifier), graph="plain", target="onnxruntime"), repo,
                 name="tiny_cls")
    if cpu_has_bf16():  # the tests that use it skip (fixture `bf16`) on a CPU without BF16
        export_model("bert", BertOptions(model=str(tiny_bert), bits=16, target="openvino"), repo,
                     name="tiny_bf16")
    export_model("bert", BertOptions(model=str(tiny_bert), bits=6, calib_size=16, lsq_epochs=0), repo,
                 name="tiny_w6a6")
    for name in MINILM_MODELS:  # the MiniLM export shared with the other tests, read-only
        (repo / name).symlink_to(minilm_repo / name)
    return repo


@pytest.fixture(scope="session")
def triton(served_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton_log") / "triton.log"
    with LocalTriton(served_repo, log_file=log, nobatch_twins=True, **ANY_PORTS) as server:
        yield server


@pytest.fixture
def client(triton):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and localhost, and a client
    certificate for mutual TLS, all signed by that CA: PEM files keyed ca, server_cert,
    server_key, client_cert, client_key (keys unencrypted, valid for a day)."""
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool = False,
                    names: tuple = (), usage=None):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = certificate("tritonforge test CA", ca_key, "tritonforge test CA", ca_key, ca=True)
    server = certificate("localhost", server_key, "tritonforge test CA", ca_key,
                         names=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
                         usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = certificate("tritonforge test client", client_key, "tritonforge test CA", ca_key,
                         usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {}
    for name, item in (("ca", ca), ("server_cert", server), ("client_cert", client)):
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(item.public_bytes(serialization.Encoding.PEM))
    for name, key in (("server_key", server_key), ("client_key", client_key)):
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files
