"""A hostile node against the real `tmkms start`, pinned to its node's peer ID.

The node misbehaves in a different way on every connection: garbage, oversized length
prefixes, low-order ephemeral keys, truncated handshakes, an impostor identity, garbage and
oversized frames after the handshake, unknown oneof fields, wrong chain IDs, tampered
ciphertext, votes no honest node sends, pipelined bursts. After each one the process must
still be running and serve the next, honest connection; at the end it must stop and start
again from its state file. Also: garbage on plaintext unix sockets, and a hostile validator
connection beside an honest one of the same chain. (Sans-IO fuzzing: test_fault_fuzz.py.)
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from kms.protocol.codec import decode_response, encode_request
from kms.protocol.delimited import MAX_MESSAGE_SIZE, FrameDecoder, frame
from kms.protocol.messages import (
    BlockId,
    PingRequest,
    SignedVoteResponse,
    SignVoteRequest,
    Timestamp,
    Vote,
)
from kms.protocol.wire import uvarint
from kms.sim.node import SignerClient, SimulatedNode
from kms.transport.address import Address
from kms.transport.handshake import encode_ephemeral_message
from kms.transport.secret_connection import peer_id_from_pubkey
from kms.transport.stream import SecretStream, secret_handshake
from tests.fault.kit import KmsHome, Ledger, ask, block, fault_counted, log_book, start_kms

CHAIN = "hostile-1"


# ---------------------------------------------------------------- a hostile node, real process


class Tamper(trio.abc.Stream):
    """Passes bytes through, but flips one bit of the ``nth`` write (ciphertext tampering)."""

    def __init__(self, inner: trio.abc.Stream, nth: int) -> None:
        self.inner = inner
        self.nth = nth
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        if self.writes == self.nth:
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0x10
            data = flipped
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def until_closed(stream: trio.abc.Stream) -> None:
    """Read until the KMS hangs up (it must, within the test's patience)."""
    with trio.fail_after(10):
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


Scenario = Callable[["HostileNode", trio.SocketStream], Awaitable[None]]


class HostileNode:
    """The listening side: one scenario per KMS connection, an honest session after each."""

    def __init__(self, node: SimulatedNode, home: KmsHome) -> None:
        self.node = node
        self.home = home
        self.ledger = Ledger(home.chain_id, home.verify_key)
        self.rng = random.Random(9)
        self.height = 0
        self.requests = 0

    async def raw(self) -> trio.SocketStream:
        assert self.node.listener is not None
        with trio.fail_after(10):
            stream = await self.node.listener.accept()
        assert isinstance(stream, trio.SocketStream)
        return stream

    async def secret(
        self, stream: trio.abc.Stream, identity: SigningKey | None = None
    ) -> SecretStream:
        with trio.fail_after(5):
            return await secret_handshake(stream, identity or self.node.identity)

    def client(self, stream: trio.abc.Stream) -> SignerClient:
        return SignerClient(stream=stream, chain_id=CHAIN, version=self.node.version)

    async def honest(self) -> None:
        """A well-behaved connection gets a verified proposal and both votes."""
        client = self.client(await self.secret(await self.raw()))
        self.height += 1
        block_id = block(self.rng)
        for step in (0, 1, 2):
            self.requests += 1
            assert await ask(client, self.ledger, step, (self.height, 0, block_id))
        await trio.aclose_forcefully(client.stream)


async def garbage_first(h: HostileNode, raw: trio.SocketStream) -> None:
    await raw.send_all(h.rng.randbytes(64))
    await until_closed(raw)


async def oversized_handshake_prefix(h: HostileNode, raw: trio.SocketStream) -> None:
    await raw.send_all(uvarint(1 << 40) + b"\x0a\x20")
    await until_closed(raw)


async def low_order_point(h: HostileNode, raw: trio.SocketStream) -> None:
    point = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    await raw.send_all(encode_ephemeral_message(point))
    await until_closed(raw)


async def all_zero_point_high_bit(h: HostileNode, raw: trio.SocketStream) -> None:
    await raw.send_all(encode_ephemeral_message(bytes(31) + b"\x80"))
    await until_closed(raw)


async def truncated_handshake(h: HostileNode, raw: trio.SocketStream) -> None:
    await raw.send_all(encode_ephemeral_message(h.rng.randbytes(32))[:20])
    await raw.aclose()


async def impostor(h: HostileNode, raw: trio.SocketStream) -> None:
    """A valid handshake by the wrong identity: the pinned peer ID must refuse it."""
    with trio.fail_after(5):
        try:
            stream = await secret_handshake(raw, SigningKey.generate())
        except trio.BrokenResourceError:
            return
    await until_closed(stream)


async def garbage_frame(h: HostileNode, raw: trio.SocketStream) -> None:
    stream = await h.secret(raw)
    await stream.send_all(frame(h.rng.randbytes(200)))
    await until_closed(stream)


async def oversized_frame_prefix(h: HostileNode, raw: trio.SocketStream) -> None:
    stream = await h.secret(raw)
    await stream.send_all(uvarint(MAX_MESSAGE_SIZE + 1))
    await until_closed(stream)


async def huge_garbage_message(h: HostileNode, raw: trio.SocketStream) -> None:
    stream = await h.secret(raw)
    await stream.send_all(frame(b"\xff" * (MAX_MESSAGE_SIZE - 10)))
    await until_closed(stream)


async def truncated_frame(h: HostileNode, raw: trio.SocketStream) -> None:
    stream = await h.secret(raw)
    data = frame(encode_request(PingRequest(), h.node.version) + b"\x3a\x00" * 20)
    await stream.send_all(data[: len(data) // 2])
    await stream.aclose()


async def unknown_oneof_only(h: HostileNode, raw: trio.SocketStream) -> None:
    stream = await h.secret(raw)
    await stream.send_all(frame(uvarint(99 << 3 | 2) + b"\x01x"))
    await until_closed(stream)


async def unknown_field_beside_a_ping(h: HostileNode, raw: trio.SocketStream) -> None:
    """Unknown fields are skipped like Go does: the ping is answered, the link stays."""
    stream = await h.secret(raw)
    client = h.client(stream)
    await stream.send_all(frame(encode_request(PingRequest(), h.node.version) + b"\xa0\x06\x05"))
    reply = await client.request(PingRequest())  # the first reply is already queued
    assert type(reply).__name__ == "PingResponse"
    await client.ping()
    await trio.aclose_forcefully(stream)


async def tampered_ciphertext(h: HostileNode, raw: trio.SocketStream) -> None:
    stream = await h.secret(Tamper(raw, nth=3))  # writes 1-2 are the handshake
    await stream.send_all(frame(encode_request(PingRequest(), h.node.version)))
    await until_closed(stream)


async def wrong_chain_and_odd_votes(h: HostileNode, raw: trio.SocketStream) -> None:
    """Answered with RemoteSignerError; the connection stays and signs the next request."""
    client = h.client(await h.secret(raw))
    h.height += 1
    odd = [
        SignVoteRequest(
            vote=Vote(1, h.height, 0, BlockId(), Timestamp(1, 0), b"", 0), chain_id="other-9"
        ),
        SignVoteRequest(
            vote=Vote(1, h.height, -1, BlockId(), Timestamp(1, 0), b"", 0), chain_id=CHAIN
        ),
        SignVoteRequest(
            vote=Vote(32, h.height, 0, BlockId(), Timestamp(1, 0), b"", 0), chain_id=CHAIN
        ),
        SignVoteRequest(
            vote=Vote(0, h.height, 0, BlockId(), Timestamp(1, 0), b"", 0), chain_id=CHAIN
        ),
        SignVoteRequest(vote=Vote(2, -7, 0, BlockId(), Timestamp(1, 0), b"", 0), chain_id=CHAIN),
    ]
    for request in odd:
        h.requests += 1
        reply = await client.request(request)
        assert isinstance(reply, SignedVoteResponse), reply
        assert reply.error is not None, (request, reply)
        assert reply.vote is None or not reply.vote.signature, (request, reply)
    h.requests += 1
    assert await ask(client, h.ledger, 1, (h.height, 0, block(h.rng)))
    await trio.aclose_forcefully(client.stream)


async def pipelined_burst(h: HostileNode, raw: trio.SocketStream) -> None:
    """Fifty requests in one write, no waiting: each is answered, in order, all signed."""
    client = h.client(await h.secret(raw))
    assert isinstance(client.stream, SecretStream)
    first = h.height + 1
    h.height += 50
    votes = [
        Vote(1, height, 0, block(h.rng), Timestamp(1, 0), b"", 0)
        for height in range(first, h.height + 1)
    ]
    burst = b"".join(
        frame(encode_request(SignVoteRequest(vote=v, chain_id=CHAIN), h.node.version))
        for v in votes
    )
    await client.stream.send_all(burst)
    decoder = FrameDecoder()
    replies: list[bytes] = []
    with trio.fail_after(10):
        while len(replies) < len(votes):
            decoder.feed(await client.stream.receive_some(65536))
            while (payload := decoder.next_message()) is not None:
                replies.append(payload)
    for vote, payload in zip(votes, replies, strict=True):
        reply = decode_response(payload, h.node.version)
        assert isinstance(reply, SignedVoteResponse) and reply.vote is not None
        assert reply.vote.height == vote.height
        assert h.ledger.vote(reply)
    h.requests += len(votes)
    await trio.aclose_forcefully(client.stream)


SCENARIOS: list[Scenario] = [
    garbage_first,
    oversized_handshake_prefix,
    low_order_point,
    all_zero_point_high_bit,
    truncated_handshake,
    impostor,
    garbage_frame,
    oversized_frame_prefix,
    huge_garbage_message,
    truncated_frame,
    unknown_oneof_only,
    unknown_field_beside_a_ping,
    tampered_ciphertext,
    wrong_chain_and_odd_votes,
    pipelined_burst,
]


async def hostile_run(tmp_path: Path, scenarios: list[Scenario]) -> None:
    home = KmsHome.create(tmp_path, chain_id=CHAIN)
    node = SimulatedNode(chain_id=CHAIN)
    await node.listen(Address(scheme="tcp", host="127.0.0.1", port=0))
    assert node.address is not None
    pinned = f"tcp://{peer_id_from_pubkey(bytes(node.identity.verify_key))}@127.0.0.1:{node.address.port}"
    config = home.write_config([pinned])
    hostile = HostileNode(node, home)
    async with start_kms(config) as kms:
        await hostile.honest()
        for scenario in scenarios:
            await scenario(hostile, await hostile.raw())
            assert kms.process.returncode is None, f"the KMS died after {scenario.__name__}"
            await hostile.honest()
        await kms.wait_for(
            r"validator peer ID mismatch", count=sum(s is impostor for s in scenarios)
        )
        lines = list(kms.lines)
    assert kms.process.returncode == 0, "\n".join(kms.lines[-20:])
    assert not [line for line in lines if "Traceback" in line or "unexpected error" in line], lines
    # and it starts again from what it wrote
    async with start_kms(config):
        await hostile.honest()
    await node.aclose()
    conflicts = hostile.ledger.conflicts() + log_book(lines).conflicts()
    fault_counted(
        "hostile node, real process",
        hostile_connections=len(scenarios),
        requests=hostile.requests,
        signatures=hostile.ledger.signatures,
        conflicts=len(conflicts),
    )
    assert not conflicts


async def test_hostile_node_against_the_process(tmp_path: Path) -> None:
    with trio.fail_after(60):
        await hostile_run(tmp_path, SCENARIOS)


@pytest.mark.slow
async def test_hostile_node_many_times(tmp_path: Path) -> None:
    """Every scenario several times, in a seeded random order."""
    order = SCENARIOS * 3
    random.Random(4).shuffle(order)
    with trio.fail_after(150):
        await hostile_run(tmp_path, order)


async def test_garbage_on_a_unix_socket(tmp_path: Path) -> None:
    """Plaintext privval: random garbage on many connections never stops the process."""
    home = KmsHome.create(tmp_path, chain_id=CHAIN)
    node = SimulatedNode(chain_id=CHAIN)
    await node.listen(Address(scheme="unix", path=str(tmp_path / "pv.sock")))
    config = home.write_config([str(node.address)])
    hostile = HostileNode(node, home)
    rng = random.Random(77)
    with trio.fail_after(40):
        async with start_kms(config) as kms:
            for _ in range(12):
                raw = await hostile.raw()
                await raw.send_all(rng.randbytes(rng.randint(1, 400)))
                with trio.move_on_after(0.2):
                    await until_closed(raw)
                await trio.aclose_forcefully(raw)
                assert kms.process.returncode is None
            client = hostile.client(await hostile.raw())
            assert await ask(client, hostile.ledger, 1, (1, 0, block(rng)))
            await trio.aclose_forcefully(client.stream)
    await node.aclose()
    fault_counted(
        "hostile unix garbage", hostile_connections=12, signatures=hostile.ledger.signatures
    )


async def test_a_hostile_validator_does_not_disturb_an_honest_one(tmp_path: Path) -> None:
    """Two validators of one chain: garbage and reconnects on one, steady signing on the other."""
    home = KmsHome.create(tmp_path, chain_id=CHAIN)
    honest_node = SimulatedNode(chain_id=CHAIN)
    await honest_node.listen(Address(scheme="tcp", host="127.0.0.1", port=0))
    hostile_node = SimulatedNode(chain_id=CHAIN)
    await hostile_node.listen(Address(scheme="unix", path=str(tmp_path / "hostile.sock")))
    config = home.write_config([str(honest_node.address), str(hostile_node.address)])
    honest = HostileNode(honest_node, home)
    hostile = HostileNode(hostile_node, home)
    rng = random.Random(31)
    attacks = 0
    with trio.fail_after(40):
        async with start_kms(config) as kms:
            client = honest.client(await honest.secret(await honest.raw()))

            async def attack() -> None:
                nonlocal attacks
                while True:
                    raw = await hostile.raw()
                    await raw.send_all(rng.randbytes(rng.randint(1, 300)))
                    attacks += 1
                    await trio.aclose_forcefully(raw)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(attack)
                for height in range(1, 41):
                    chosen = block(rng)
                    for step in (0, 1, 2):
                        assert await ask(client, honest.ledger, step, (height, 0, chosen))
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
            assert kms.process.returncode is None
            await trio.aclose_forcefully(client.stream)
    await honest_node.aclose()
    await hostile_node.aclose()
    assert attacks >= 10
    fault_counted(
        "hostile beside honest validator",
        hostile_connections=attacks,
        requests=120,
        signatures=honest.ledger.signatures,
        conflicts=len(honest.ledger.conflicts()),
    )
    assert honest.ledger.signatures == 120 and not honest.ledger.conflicts()
