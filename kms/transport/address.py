"""Every network address the KMS reads, parsed in one place.

* :func:`parse_address` -- a validator's ``[[validator]] addr``:
  ``tcp://[<peer-id>@]host:port`` or ``unix:///abs/path``, as an :class:`Address`;
* :func:`parse_listen_address` -- where a listener binds, ``host:port`` (port 0: any free
  port), such as the metrics listener's ``--metrics`` / ``[metrics] bind_address``;
* :func:`parse_listen_url` -- the same as a URL, ``tcp://host:port`` or ``http://host:port``
  (the YubiHSM simulator's ``--laddr``, written like yubihsm-connector's).

All three split ``host:port`` (``[v6]:port`` for IPv6) with :func:`split_host_port`, and
:func:`format_host_port` writes it back.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import attrs

__all__ = [
    "Address",
    "format_host_port",
    "parse_address",
    "parse_listen_address",
    "parse_listen_url",
    "split_host_port",
]

_PEER_ID = re.compile(r"^[0-9a-fA-F]{40}$")
_MAX_PORT = 65535


def split_host_port(text: str, *, lowest_port: int = 0) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``, brackets removed.

    ValueError with the bare reason (``missing :port``, ``missing host``, ``malformed
    [ipv6]:port``, ``port must be <lowest_port>-65535``) for the caller to put in context.
    """
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError("malformed [ipv6]:port")
        port_text = port_text[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError("missing :port")
    if not host:
        raise ValueError("missing host")
    if not (port_text.isascii() and port_text.isdigit()) or not (
        lowest_port <= int(port_text) <= _MAX_PORT
    ):
        raise ValueError(f"port must be {lowest_port}-{_MAX_PORT}")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host (the inverse of split_host_port)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class Address:
    """A parsed `[[validator]] addr`; ``str()`` gives back the canonical text form."""

    scheme: str
    host: str | None = None
    port: int | None = None
    path: str | None = None
    peer_id: str | None = None

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        ident = f"{self.peer_id}@" if self.peer_id else ""
        return f"tcp://{ident}{format_host_port(self.host or '', self.port or 0)}"


def parse_address(text: str) -> Address:
    """Parse a validator address; ValueError says what is wrong with it."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"invalid address {text!r}: expected tcp://host:port or unix:///path")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"invalid address {text!r}: unix socket path must be absolute")
        return Address(scheme="unix", path=rest)
    if scheme == "noise":
        raise ValueError(f"unsupported address {text!r}: noise:// is not supported yet")
    if scheme != "tcp":
        raise ValueError(f"invalid address {text!r}: scheme must be tcp or unix")
    peer_id: str | None = None
    if "@" in rest:
        peer_id, _, rest = rest.partition("@")
        if not _PEER_ID.match(peer_id):
            raise ValueError(f"invalid address {text!r}: peer ID must be 40 hex characters")
        peer_id = peer_id.lower()
    try:
        host, port = split_host_port(rest, lowest_port=1)
    except ValueError as exc:
        raise ValueError(f"invalid address {text!r}: {exc}") from exc
    return Address(scheme="tcp", host=host, port=port, peer_id=peer_id)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6; port 0: any) -> ``(host, port)``.

    ValueError if malformed.
    """
    try:
        return split_host_port(text)
    except ValueError as exc:
        raise ValueError(f"expected host:port such as 127.0.0.1:9181, got {text!r}") from exc


def parse_listen_url(text: str) -> tuple[str, int]:
    """``tcp://host:port`` or ``http://host:port`` (a trailing ``/`` allowed; port 0: any).

    ValueError if malformed.
    """
    scheme, sep, rest = text.partition("://")
    try:
        if not sep or scheme not in ("tcp", "http"):
            raise ValueError("scheme must be tcp or http")
        return split_host_port(rest.rstrip("/"))
    except ValueError as exc:
        raise ValueError(f"expected tcp://host:port, got {text!r}") from exc


@attrs.frozen
class EndpointUrl:
    """``http(s)://host:port`` of one member."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(text: str) -> EndpointUrl:
    """Parse an ``[etcd] endpoints`` entry; ValueError saying what is wrong."""
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"invalid etcd endpoint {text!r}: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise ValueError(f"invalid etcd endpoint {text!r}: expected http:// or https://")
    if not url.hostname:
        raise ValueError(f"invalid etcd endpoint {text!r}: missing host")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise ValueError(f"invalid etcd endpoint {text!r}: give only scheme, host and port")
    default = 443 if url.scheme == "https" else 2379
    return EndpointUrl(url.scheme, url.hostname, port or default)
