"""Dialling the validator node: raw TCP or unix-socket streams (no timeouts here).

The KMS always dials out; the node listens on its ``priv_validator_laddr``. TCP streams
still need the Secret Connection handshake (``kms.transport.stream.secret_handshake``);
unix sockets are used in plaintext. Timeouts belong to the caller (``trio.fail_after``
around the connect at the session level).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from kms.errors import ConfigError
from kms.transport.address import Address


async def _open_tcp(addr: Address) -> trio.abc.Stream:
    if addr.host is None or addr.port is None:
        raise ConfigError(f"address {addr} has no host or port")
    stream = await trio.open_tcp_stream(addr.host, addr.port)
    # Privval is strictly request/response with small messages: never delay a reply.
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    return stream


async def _open_unix(addr: Address) -> trio.abc.Stream:
    if addr.path is None:
        raise ConfigError(f"address {addr} has no socket path")
    return await trio.open_unix_socket(addr.path)


_OPENERS: dict[str, Callable[[Address], Awaitable[trio.abc.Stream]]] = {
    "tcp": _open_tcp,
    "unix": _open_unix,
}


async def open_connection(addr: Address) -> trio.abc.Stream:
    """Connect to ``addr`` (``tcp://`` with TCP_NODELAY, or ``unix://``).

    Raises ConfigError for schemes this build cannot dial (``noise://`` is reserved for the
    CometBFT v0.40 Noise transport and refused for now) and OSError when the connect fails.
    """
    if addr.scheme == "noise":
        raise ConfigError(
            f"cannot dial {addr.scheme}://: the Noise transport (CometBFT v0.40) "
            "is not supported yet; use tcp:// or unix://"
        )
    opener = _OPENERS.get(addr.scheme)
    if opener is None:
        raise ConfigError(f"cannot dial address scheme {addr.scheme!r}: expected tcp or unix")
    return await opener(addr)
