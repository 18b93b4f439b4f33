"""Command-line options shared by the core commands and the families' own commands.

The model repository, the server address with its TLS and header options (`remote_options`),
and checks of option values made before anything loads or connects.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tritonforge.errors import TritonForgeError
from tritonforge.serving.endpoint import Endpoint

RepoOption = Annotated[Path, typer.Option("--repo", help="Model repository folder.")]


DEFAULT_REPO = Path("model_repo")


MAX_PORT = 65535


def require_at_least(option: str, value: float | None, minimum: float) -> None:
    """Refuse `option value` below `minimum` (None: not given)."""
    if value is not None and value < minimum:
        raise TritonForgeError(f"{option} {value} is not allowed: it must be at least {minimum}")


def require_positive(option: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise TritonForgeError(f"{option} {value} is not allowed: give a number of seconds above 0")


def check_port(option: str, port: int) -> None:
    """A port to listen on: 1..65535, or 0 for any free one."""
    if not 0 <= port <= MAX_PORT:
        raise TritonForgeError(f"{option} {port} is not a port: give 1..{MAX_PORT}, or 0 for any free port")


def check_host(option: str, host: str) -> None:
    """An IP address, or a name this machine resolves."""
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        return
    except ValueError:
        pass
    # Digits and dots only (999.1.1.1) is a bad address, never a name to look up.
    if host and not set(host) <= set("0123456789."):
        try:
            socket.getaddrinfo(host, None)
            return
        except (socket.gaierror, UnicodeError):
            pass
    raise TritonForgeError(f"{option} {host!r} is not an IP address or a name this machine resolves: "
                           "give e.g. 127.0.0.1, 0.0.0.0 or localhost")


def check_url(option: str, url: str) -> None:
    """A server address host:port (port 1..65535), checked before connecting."""
    host, colon, port = url.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise TritonForgeError(f"{option} {url!r} is not host:port: give e.g. 127.0.0.1:8001")
    if not 1 <= int(port) <= MAX_PORT:
        raise TritonForgeError(f"{option} {url!r} has port {port}, outside 1..{MAX_PORT}: "
                               "give e.g. 127.0.0.1:8001")
    check_host(f"{option} {url!r}: host", host)


def common_parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


# How to reach a remote server (a KServe ingress): TLS and headers, shared by query, bench,
# soak and verify --triton.
TlsOption = Annotated[bool | None, typer.Option(
    "--tls/--no-tls", help="TLS to the server. Default: on for grpcs:// or when certificates are "
                           "given, else off.")]


RootCertsOption = Annotated[Path | None, typer.Option(
    "--root-certs", help="TLS: PEM file of the CA certificates that signed the server's "
                         "certificate (default: the system's).")]


ClientCertOption = Annotated[Path | None, typer.Option(
    "--client-cert", help="Mutual TLS: PEM file of the client certificate (chain), with --client-key.")]


ClientKeyOption = Annotated[Path | None, typer.Option(
    "--client-key", help="Mutual TLS: PEM file of the private key of --client-cert.")]


HeaderOption = Annotated[list[str] | None, typer.Option(
    "--header", help="A header sent with every call, 'Name: value' (repeat for several).")]


BearerTokenEnvOption = Annotated[str | None, typer.Option(
    "--bearer-token-env", metavar="VAR",
    help="Send 'authorization: Bearer <token>' with the token read from environment variable VAR "
         "(so it never appears on the command line).")]


def remote_endpoint(option: str, url: str, tls: bool | None = None, root_certs: Path | None = None,
                    client_cert: Path | None = None, client_key: Path | None = None,
                    header: list[str] | None = None, bearer_token_env: str | None = None) -> Endpoint:
    """The server `option` names, with its TLS and header options, every value checked."""
    from tritonforge.serving.endpoint import endpoint_from_options, split_scheme

    check_url(option, split_scheme(url, option)[1])
    return endpoint_from_options(url, tls, root_certs, client_cert, client_key, header or (),
                                 bearer_token_env, option)


REMOTE_PARAMETERS = [common_parameter("tls", TlsOption, None),
                     common_parameter("root_certs", RootCertsOption, None),
                     common_parameter("client_cert", ClientCertOption, None),
                     common_parameter("client_key", ClientKeyOption, None),
                     common_parameter("header", HeaderOption, None),
                     common_parameter("bearer_token_env", BearerTokenEnvOption, None)]


def remote_options(address: str) -> Callable[[Callable], Callable]:
    """Give a command the TLS and header options (REMOTE_PARAMETERS) and hand it `endpoint`:
    the server that its option `address` ("url", "triton") names, reached with those options,
    every value checked; None when that option is not given (and then the others are refused)."""
    flag = "--" + address

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)  # typer reads the Annotated options

        @functools.wraps(command)
        def with_endpoint(**kwargs):
            remote = {p.name: kwargs.pop(p.name) for p in REMOTE_PARAMETERS}
            url = kwargs[address]
            if url is None and any(value not in (None, []) for value in remote.values()):
                *others, last = ("--" + name.replace("_", "-") for name in remote)
                raise TritonForgeError(f"{', '.join(others)} and {last} are for the server of {flag}: "
                                       f"give {flag} too")
            endpoint = remote_endpoint(flag, url, **remote) if url is not None else None
            return command(**kwargs, endpoint=endpoint)

        own = [p for p in signature.parameters.values() if p.name != "endpoint"]
        with_endpoint.__signature__ = signature.replace(parameters=[*own, *REMOTE_PARAMETERS])
        return with_endpoint

    return decorate


UrlOption = Annotated[str, typer.Option(
    "--url", help="Triton gRPC address: host:port, grpc://host:port or grpcs://host:port (TLS).")]
