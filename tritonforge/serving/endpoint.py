"""Where a Triton server answers and how to reach it: the gRPC address, TLS (root
certificates, a client certificate for mutual TLS) and the headers every call carries (a
bearer token, a key a KServe ingress or Triton's `--grpc-restricted-protocol` asks for).

One `Endpoint` makes the synchronous and the asyncio clients the same way; the calls of
`client.py`, `bench.py` and `soak.py` pass its `headers` with every request. A bare
`host:port` string still works everywhere: `Endpoint.of(url)` reads it (`grpcs://host:port`
means TLS, `grpc://host:port` plain).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonforge.errors import TritonForgeError

TLS_SCHEME, PLAIN_SCHEME = "grpcs://", "grpc://"
AUTHORIZATION = "authorization"
# gRPC metadata keys: lower-case letters, digits, '-', '_' and '.'; `grpc-` is gRPC's own, and
# `-bin` keys carry binary values, which a header given as text cannot be.
HEADER_NAME = re.compile(r"[0-9a-z_.-]+")
RESERVED_HEADERS = ("content-type", "te", "host", "user-agent", ":authority")


@dataclass(frozen=True)
class Endpoint:
    """A Triton gRPC endpoint. `address` is host:port; the certificate fields are PEM files
    (read by tritonclient when a client is made); `headers` go with every call."""

    address: str
    ssl: bool = False
    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold a token

    @classmethod
    def of(cls, target: Endpoint | str) -> Endpoint:
        """An endpoint as it is, or one read from a URL: host:port, grpc:// or grpcs://."""
        if isinstance(target, Endpoint):
            return target
        scheme, address = split_scheme(target)
        return cls(address, ssl=scheme == TLS_SCHEME)

    def __str__(self) -> str:
        """The address as people write it (grpcs:// when TLS): for messages and reports."""
        return f"{TLS_SCHEME}{self.address}" if self.ssl else self.address

    @property
    def call_headers(self) -> dict[str, str] | None:
        """The `headers=` argument of every tritonclient call (None: none to send)."""
        return dict(self.headers) or None

    def _client_arguments(self) -> dict:
        def path(value: Path | None) -> str | None:
            return str(value) if value is not None else None

        return {"ssl": self.ssl, "root_certificates": path(self.root_certificates),
                "private_key": path(self.private_key), "certificate_chain": path(self.certificate_chain)}

    def client(self):
        """A tritonclient.grpc client (synchronous); it connects on its first call."""
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.address, **self._client_arguments())

    def aio_client(self):
        """A tritonclient.grpc.aio client, made the same way."""
        import tritonclient.grpc.aio as aioclient

        return aioclient.InferenceServerClient(self.address, **self._client_arguments())


def split_scheme(url: str, option: str = "the address") -> tuple[str, str]:
    """("grpcs://" | "grpc://" | "", host:port); `option` names the address in an error."""
    for scheme in (TLS_SCHEME, PLAIN_SCHEME):
        if url.lower().startswith(scheme):
            return scheme, url[len(scheme):]
    if "://" in url:
        raise TritonForgeError(f"{option} {url!r} has a scheme tritonforge does not speak: give host:port, "
                               "grpc://host:port or grpcs://host:port (TLS)")
    return "", url


def pem_file(option: str, path: Path | str, what: str) -> Path:
    """A PEM file that exists, can be read and holds a PEM block; the error names the option."""
    path = Path(path)
    if not path.exists():
        raise TritonForgeError(f"{option} {path} does not exist: give the PEM file of the {what}")
    if not path.is_file():
        raise TritonForgeError(f"{option} {path} is not a file: give the PEM file of the {what}")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise TritonForgeError(f"{option} {path} cannot be read ({exc.strerror}): give a PEM file "
                               f"of the {what} that this user can read") from exc
    if b"-----BEGIN " not in text:
        raise TritonForgeError(f"{option} {path} holds no PEM block (-----BEGIN ...): give the "
                               f"PEM file of the {what}")
    return path


def parse_header(text: str) -> tuple[str, str]:
    """`--header "Name: value"` as (lower-case name, value), both checked."""
    name, colon, value = text.partition(":")
    name, value = name.strip().lower(), value.strip()
    if not colon or not name:
        raise TritonForgeError(f"--header {text!r} is not 'Name: value': give e.g. --header "
                               "'x-api-key: VALUE'")
    if not HEADER_NAME.fullmatch(name) or name.startswith("grpc-") or name.endswith("-bin") \
            or name in RESERVED_HEADERS:
        raise TritonForgeError(
            f"--header {text!r}: {name!r} cannot be a gRPC header name: use letters, digits, '-', "
            "'_' and '.', not starting with 'grpc-' nor ending with '-bin', and not one gRPC "
            f"sets itself ({', '.join(RESERVED_HEADERS)})")
    if not value or not all(" " <= c <= "~" for c in value):
        raise TritonForgeError(f"--header {name!r} needs a value of printable ASCII characters: "
                               "give e.g. --header 'x-api-key: VALUE'")
    return name, value


def bearer_token(variable: str) -> str:
    """The token in environment variable `variable` (so it never appears on a command line)."""
    token = os.environ.get(variable, "").strip()
    if not token:
        state = "is empty" if variable in os.environ else "is not set"
        raise TritonForgeError(f"--bearer-token-env {variable}: that environment variable {state}: "
                               f"export {variable}=<token> first (the token is read from it, never "
                               "from the command line)")
    if not all(" " < c <= "~" for c in token):
        raise TritonForgeError(f"--bearer-token-env {variable}: the token holds spaces or characters "
                               "outside printable ASCII: check the variable's value")
    return token


def endpoint_from_options(url: str, tls: bool | None = None, root_certs: Path | str | None = None,
                          client_cert: Path | str | None = None, client_key: Path | str | None = None,
                          headers: Sequence[str] = (), bearer_token_env: str | None = None,
                          option: str = "--url") -> Endpoint:
    """The endpoint of the command-line options, every value checked. TLS is on with a
    grpcs:// URL, with --tls, or when certificates are given; --no-tls or grpc:// with
    certificates is a contradiction and refused."""
    scheme, address = split_scheme(url, option)
    given = (("--root-certs", root_certs), ("--client-cert", client_cert), ("--client-key", client_key))
    certificates = {name: value for name, value in given if value is not None}
    if scheme == PLAIN_SCHEME and (tls or certificates):
        given = ", ".join(["--tls"] * bool(tls) + list(certificates))
        raise TritonForgeError(f"{option} {url} asks for a plain connection (grpc://), but TLS is asked "
                               f"for by {given}: use grpcs://{address}, or drop {given}")
    if scheme == TLS_SCHEME and tls is False:
        raise TritonForgeError(f"{option} {url} asks for TLS (grpcs://) but --no-tls was given: "
                               f"use {address} or grpc://{address} for a plain connection")
    if tls is False and certificates:
        raise TritonForgeError(f"--no-tls with {', '.join(certificates)}: certificates are for TLS; "
                               "drop --no-tls or the certificates")
    if (client_cert is None) != (client_key is None):
        given, missing = ("--client-cert", "--client-key") if client_key is None else \
            ("--client-key", "--client-cert")
        raise TritonForgeError(f"{given} needs {missing} too: mutual TLS sends the client "
                               "certificate together with its private key")
    ssl = scheme == TLS_SCHEME or bool(tls) or bool(certificates)
    pairs = [parse_header(text) for text in headers]
    if bearer_token_env is not None:
        pairs.append((AUTHORIZATION, f"Bearer {bearer_token(bearer_token_env)}"))
    names = [name for name, _value in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        also = " (--bearer-token-env sends authorization)" if AUTHORIZATION in repeated else ""
        raise TritonForgeError(f"header {', '.join(repeated)} given more than once{also}: give each once")
    return Endpoint(address, ssl,
                    pem_file("--root-certs", root_certs, "CA certificates that signed the server's "
                             "certificate") if root_certs is not None else None,
                    pem_file("--client-key", client_key, "client certificate's private key")
                    if client_key is not None else None,
                    pem_file("--client-cert", client_cert, "client certificate (chain)")
                    if client_cert is not None else None,
                    dict(pairs))
