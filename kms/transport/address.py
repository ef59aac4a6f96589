"""Validator addresses: `tcp://[<peer-id>@]host:port` and `unix:///abs/path`."""

from __future__ import annotations

import re

import attrs

_PEER_ID = re.compile(r"^[0-9a-fA-F]{40}$")


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
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{ident}{host}:{self.port}"


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
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError(f"invalid address {text!r}: malformed [ipv6]:port")
        port_text = port_text[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError(f"invalid address {text!r}: missing :port")
    if not host:
        raise ValueError(f"invalid address {text!r}: missing host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid address {text!r}: port must be 1-65535")
    return Address(scheme="tcp", host=host, port=int(port_text), peer_id=peer_id)
