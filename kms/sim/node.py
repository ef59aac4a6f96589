"""A simulated CometBFT validator node: the listening side of the privval protocol.

It listens where a node's `priv_validator_laddr` would (tcp with Secret Connection, or a
plaintext unix socket), accepts the KMS, and sends the requests a real node sends, under
the node's own 5 s read/write timeouts. Used by the tests, the benchmarks and `tmkms demo`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import attrs
import trio
from nacl.signing import SigningKey

from kms.errors import ProtocolError
from kms.protocol.connection import CLOSED, NEED_DATA, PrivvalConnection
from kms.protocol.messages import (
    PingRequest,
    PingResponse,
    Proposal,
    PubKeyRequest,
    PubKeyResponse,
    PublicKey,
    Request,
    Response,
    SignedProposalResponse,
    SignedVoteResponse,
    SignProposalRequest,
    SignVoteRequest,
    Vote,
)
from kms.protocol.version import ProtocolVersion
from kms.transport.address import Address
from kms.transport.stream import secret_handshake

NODE_TIMEOUT = 5.0  # CometBFT's read/write timeout on the privval connection
PING_INTERVAL = 10.0 / 3.0  # a node pings after about 3.3 s of silence


class WireClock(trio.abc.Stream):
    """A pass-through stream that notes when bytes last left for, and arrived from, the wire.

    It sits directly on the accepted socket, below Secret Connection: ``arrived - sent`` is
    a round trip as the node's socket sees it, without the node's own framing and crypto.
    """

    def __init__(self, transport: trio.abc.Stream) -> None:
        self.transport = transport
        self.sent = 0.0  # perf_counter() as the last send was handed to the socket
        self.arrived = 0.0  # perf_counter() as the last bytes came out of it

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent = time.perf_counter()
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.transport.receive_some(max_bytes)
        self.arrived = time.perf_counter()
        return data

    async def aclose(self) -> None:
        await self.transport.aclose()


@attrs.define
class SignerClient:
    """The node's end of one accepted KMS connection: lock-step request/response."""

    stream: trio.abc.Stream
    chain_id: str
    version: ProtocolVersion
    timeout: float = NODE_TIMEOUT
    peer_id: str | None = None
    handshake_seconds: float = 0.0
    wire: WireClock | None = None  # the socket's clock (what the benchmarks time)
    _connection: PrivvalConnection = attrs.field(init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    def __attrs_post_init__(self) -> None:
        self._connection = PrivvalConnection("node", self.version)

    async def request(self, request: Request) -> Response:
        """Send one request and wait for its reply, each step under the node's timeout."""
        async with self._lock:
            with trio.fail_after(self.timeout):
                await self.stream.send_all(self._connection.send(request))
            while (event := self._connection.next_event()) is NEED_DATA:
                await self._receive()
            if event is CLOSED:
                raise trio.BrokenResourceError("signer closed the connection")
            return cast(Response, event)

    async def exchange(self, payload: bytes) -> bytes:
        """Send one encoded request and return the encoded reply (lock-step)."""
        async with self._lock:
            with trio.fail_after(self.timeout):
                await self.stream.send_all(self._connection.send_payload(payload))
            while (reply := self._connection.next_payload()) is NEED_DATA:
                await self._receive()
            if reply is CLOSED:
                raise trio.BrokenResourceError("signer closed the connection")
            return cast(bytes, reply)

    async def _receive(self) -> None:
        with trio.fail_after(self.timeout):
            self._connection.receive_data(bytes(await self.stream.receive_some(65536)))

    async def pub_key(self) -> PublicKey:
        """Ask for the signer's public key, as a node does first."""
        response = await self.request(PubKeyRequest(chain_id=self.chain_id))
        if not isinstance(response, PubKeyResponse) or response.pub_key is None:
            raise ProtocolError(f"bad reply to PubKeyRequest: {response!r}")
        return response.pub_key

    async def sign_vote(
        self, vote: Vote, *, skip_extension_signing: bool = False
    ) -> SignedVoteResponse:
        """Ask for a vote signature."""
        response = await self.request(
            SignVoteRequest(
                vote=vote, chain_id=self.chain_id, skip_extension_signing=skip_extension_signing
            )
        )
        if not isinstance(response, SignedVoteResponse):
            raise ProtocolError(f"bad reply to SignVoteRequest: {response!r}")
        return response

    async def sign_proposal(self, proposal: Proposal) -> SignedProposalResponse:
        """Ask for a proposal signature."""
        response = await self.request(
            SignProposalRequest(proposal=proposal, chain_id=self.chain_id)
        )
        if not isinstance(response, SignedProposalResponse):
            raise ProtocolError(f"bad reply to SignProposalRequest: {response!r}")
        return response

    async def ping(self) -> None:
        """One keep-alive round trip."""
        response = await self.request(PingRequest())
        if not isinstance(response, PingResponse):
            raise ProtocolError(f"bad reply to PingRequest: {response!r}")

    async def keepalive(self, interval: float = PING_INTERVAL) -> None:
        """Ping forever, as a node does when no signing request is pending."""
        while True:
            await trio.sleep(interval)
            if not self._lock.locked():
                await self.ping()

    async def aclose(self) -> None:
        """Close the connection."""
        await self.stream.aclose()


@attrs.define
class SimulatedNode:
    """Listens for the KMS like a validator node's `priv_validator_laddr`."""

    chain_id: str
    version: ProtocolVersion = ProtocolVersion.V0_38
    identity: SigningKey = attrs.field(factory=SigningKey.generate)
    timeout: float = NODE_TIMEOUT
    listener: trio.SocketListener | None = None
    address: Address | None = None
    clients: list[SignerClient] = attrs.field(factory=list)

    async def listen(self, laddr: Address) -> Address:
        """Start listening on ``laddr`` (tcp port 0 picks a free port); return the real address."""
        if laddr.scheme == "unix":
            assert laddr.path is not None
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _remove_socket_file(laddr.path)
            await sock.bind(laddr.path)
            sock.listen(16)
            self.listener = trio.SocketListener(sock)
            self.address = laddr
        else:
            listeners = await trio.open_tcp_listeners(laddr.port or 0, host=laddr.host)
            self.listener = listeners[0]
            for extra in listeners[1:]:
                await extra.aclose()
            host, port = self.listener.socket.getsockname()[:2]
            self.address = Address(scheme="tcp", host=host, port=port)
        return self.address

    async def accept(self) -> SignerClient:
        """Wait for the KMS to dial in; complete the handshake for tcp."""
        assert self.listener is not None, "call listen() first"
        wire = WireClock(await self.listener.accept())
        stream: trio.abc.Stream = wire
        peer_id = None
        accepted = time.perf_counter()
        if self.address is not None and self.address.scheme == "tcp":
            try:
                with trio.fail_after(self.timeout):
                    secret = await secret_handshake(stream, self.identity)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            stream, peer_id = secret, secret.peer_id
        client = SignerClient(
            stream=stream,
            chain_id=self.chain_id,
            version=self.version,
            timeout=self.timeout,
            peer_id=peer_id,
            handshake_seconds=time.perf_counter() - accepted,
            wire=wire,
        )
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        """Stop listening and close every accepted connection."""
        for client in self.clients:
            await trio.aclose_forcefully(client.stream)
        if self.listener is not None:
            await self.listener.aclose()
        if self.address is not None and self.address.scheme == "unix" and self.address.path:
            _remove_socket_file(self.address.path)


def _remove_socket_file(path: str) -> None:
    """Remove a stale unix socket file, as a node does before binding."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@asynccontextmanager
async def simulated_node(
    chain_id: str, laddr: Address, version: ProtocolVersion = ProtocolVersion.V0_38
) -> AsyncIterator[SimulatedNode]:
    """A listening SimulatedNode, closed on exit."""
    node = SimulatedNode(chain_id=chain_id, version=version)
    await node.listen(laddr)
    try:
        yield node
    finally:
        await node.aclose()
