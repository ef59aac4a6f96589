"""One validator connection: dial, handshake, then answer requests until the link fails.

The session owns every timeout of a connection (connect, handshake, each wait for a
request); the layers below it take none. It returns or raises when the connection ends; the
supervisor in :mod:`kms.service` decides whether and when to dial again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Protocol

import attrs
import trio
from nacl.signing import SigningKey

from kms.errors import KmsError, ProtocolError
from kms.handler import RequestHandler
from kms.protocol.connection import CLOSED, NEED_DATA, PrivvalConnection
from kms.protocol.messages import Request
from kms.protocol.version import ProtocolVersion
from kms.transport.address import Address
from kms.transport.dial import open_connection
from kms.transport.secret_connection import peer_id_from_pubkey
from kms.transport.stream import SecretStream, secret_handshake

log = logging.getLogger("kms.session")
conn_log = logging.getLogger("kms.connection")

RECEIVE_SIZE = 65536


class ConnectionClosed(KmsError):
    """The validator closed the connection cleanly."""


class ConnectionEvents(Protocol):
    """Hears what happens to the connection (kms.ops.stats.ValidatorMetrics is one)."""

    def on_connected(self) -> None:
        """The handshake succeeded."""
        ...

    def on_handshake_failure(self) -> None:
        """The Secret Connection handshake failed or timed out."""
        ...


class _Ignored:
    def on_connected(self) -> None:
        pass

    def on_handshake_failure(self) -> None:
        pass


@attrs.define
class Session:
    """Serves one `[[validator]]` connection for as long as it lives."""

    addr: Address
    version: ProtocolVersion
    identity: SigningKey | None
    handler: RequestHandler
    timeout: float
    prefix: str
    on_connected: Callable[[], None] = lambda: None
    events: ConnectionEvents = attrs.field(factory=_Ignored)

    async def run(self) -> None:
        """Dial, handshake and serve; raises when the connection fails or closes."""
        stream = await self._connect()
        async with stream:
            log.info("%s connected to validator successfully", self.prefix)
            if isinstance(stream, SecretStream) and self.addr.peer_id is None:
                log.warning("%s: unverified validator peer ID! (%s)", self.prefix, stream.peer_id)
            self.on_connected()
            self.events.on_connected()
            await self._serve(stream)

    async def _connect(self) -> trio.abc.Stream:
        if self.addr.scheme == "tcp" and self.identity is not None:
            conn_log.info("KMS node ID: %s", peer_id_from_pubkey(bytes(self.identity.verify_key)))
        with trio.fail_after(self.timeout):
            transport = await open_connection(self.addr)
        if self.addr.scheme != "tcp":
            return transport
        assert self.identity is not None, "tcp validators always have a secret_key"
        try:
            with trio.fail_after(self.timeout):
                stream = await secret_handshake(transport, self.identity, self.addr.peer_id)
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.events.on_handshake_failure()
            await trio.aclose_forcefully(transport)
            raise
        return stream

    async def _serve(self, stream: trio.abc.Stream) -> None:
        connection = PrivvalConnection("signer", self.version)
        while True:
            event = connection.next_event()
            if event is NEED_DATA:
                with trio.fail_after(self.timeout):
                    connection.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
                continue
            if event is CLOSED:
                raise ConnectionClosed("validator closed the connection")
            assert isinstance(event, Request)  # the signer's end reads requests only
            # A request that arrived is answered even during shutdown: the state write is
            # already shielded, and a node that gets its reply does not have to retry.
            # One scope does both jobs: shielded from shutdown, bounded by the timeout.
            with trio.CancelScope(
                shield=True, deadline=trio.current_time() + self.timeout
            ) as scope:
                answer = await self.handler.answer(event)
                try:
                    await stream.send_all(connection.send(answer.response))
                finally:
                    self.handler.report(answer)
            if scope.cancelled_caught:
                raise trio.TooSlowError("request not answered in time")


def describe_error(exc: BaseException) -> str:
    """A one-line, tmkms-shaped description of why a connection ended."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError):
        cause = _root_os_error(exc)
        if cause.errno is not None:
            return f"I/O error: {os.strerror(cause.errno)} (os error {cause.errno})"
        return f"I/O error: {cause}"
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return describe_error(exc.__cause__)
    if isinstance(exc, ProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, ConnectionClosed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _root_os_error(exc: OSError) -> OSError:
    """trio wraps failed dials as "all attempts ... failed"; find the errno underneath."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        if isinstance(seen, BaseExceptionGroup):
            for inner in seen.exceptions:
                if isinstance(inner, OSError):
                    return _root_os_error(inner)
        seen = seen.__cause__
    return exc
