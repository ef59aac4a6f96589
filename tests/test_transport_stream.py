"""SecretStream over trio's in-memory streams: the generic stream contract and the failures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from kms.errors import HandshakeError, ProtocolError
from kms.transport.secret_connection import (
    SecretConnection,
    encode_ephemeral_message,
    peer_id_from_pubkey,
)
from kms.transport.stream import SecretStream, secret_handshake

A_KEY = SigningKey(bytes.fromhex("a1" * 32))
B_KEY = SigningKey(bytes.fromhex("b2" * 32))
B_ID = peer_id_from_pubkey(bytes(B_KEY.verify_key))
LOW_ORDER_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")

PairMaker = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


def _unshaken(make: PairMaker) -> tuple[SecretStream, SecretStream]:
    left, right = make()
    return SecretStream(left, A_KEY), SecretStream(right, B_KEY)


async def _shaken(make: PairMaker) -> tuple[SecretStream, SecretStream]:
    a, b = _unshaken(make)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.do_handshake)
        nursery.start_soon(b.do_handshake)
    return a, b


def _makers(
    make: PairMaker, *, handshake: bool
) -> Callable[[], Awaitable[tuple[SecretStream, SecretStream]]]:
    async def maker() -> tuple[SecretStream, SecretStream]:
        if handshake:
            return await _shaken(make)
        await trio.lowlevel.checkpoint()
        return _unshaken(make)

    return maker


async def test_generic_two_way_stream_contract() -> None:
    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(
            _makers(trio.testing.memory_stream_pair, handshake=True),
            _makers(trio.testing.lockstep_stream_pair, handshake=True),
        )


async def test_generic_contract_with_the_handshake_run_lazily() -> None:
    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(
            _makers(trio.testing.memory_stream_pair, handshake=False), None
        )


async def test_handshake_over_lockstep_streams_does_not_deadlock() -> None:
    with trio.fail_after(10):
        a, b = await _shaken(trio.testing.lockstep_stream_pair)
        assert a.peer_id == b.local_id == B_ID
        assert b.peer_public_key == bytes(A_KEY.verify_key)


async def test_first_send_and_receive_run_the_handshake() -> None:
    with trio.fail_after(10):
        a, b = _unshaken(trio.testing.memory_stream_pair)
        assert not a.handshake_complete
        with pytest.raises(RuntimeError):
            _ = a.peer_id
        received: list[bytes] = []

        async def receive() -> None:
            received.append(await b.receive_some())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, b"ping" * 1000)
            nursery.start_soon(receive)
        assert a.handshake_complete and b.handshake_complete
        assert received[0] == (b"ping" * 1000)[: len(received[0])]
        # a second do_handshake is a no-op
        await a.do_handshake()


async def test_concurrent_handshake_callers_share_one_handshake() -> None:
    with trio.fail_after(10):
        a, b = _unshaken(trio.testing.memory_stream_pair)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.do_handshake)
            nursery.start_soon(a.do_handshake)
            nursery.start_soon(b.do_handshake)
        assert a.peer_id == B_ID


async def test_stalled_peer_is_cut_off_by_the_callers_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    left, right = trio.testing.memory_stream_pair()
    a = SecretStream(left, A_KEY)
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(5):
            await a.do_handshake()
    assert trio.current_time() - start == pytest.approx(5)
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"x")
    await a.aclose()
    await right.aclose()


async def test_peer_stalling_after_its_ephemeral_key_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    left, right = trio.testing.memory_stream_pair()
    peer = SecretConnection(B_KEY)
    await right.send_all(peer.data_to_send())  # ephemeral key, then silence
    a = SecretStream(left, A_KEY)
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(3):
            await a.do_handshake()
    assert not a.handshake_complete
    with pytest.raises(trio.BrokenResourceError):
        await a.receive_some()


async def test_low_order_ephemeral_key_is_refused() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        await right.send_all(encode_ephemeral_message(LOW_ORDER_POINT))
        a = SecretStream(left, A_KEY)
        with pytest.raises(trio.BrokenResourceError, match="low-order") as info:
            await a.do_handshake()
        assert isinstance(info.value.__cause__, HandshakeError)
        with pytest.raises(trio.BrokenResourceError):
            await a.do_handshake()


async def test_pinned_peer_id_mismatch_is_refused_with_the_exact_message() -> None:
    wrong = "cd" * 20
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        b = SecretStream(right, B_KEY)
        failures: list[BaseException] = []

        async def kms_side() -> None:
            try:
                await secret_handshake(left, A_KEY, expected_peer_id=wrong)
            except trio.BrokenResourceError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kms_side)
            nursery.start_soon(b.do_handshake)
        expected = f"validator peer ID mismatch! (expected {wrong}, got {B_ID})"
        assert str(failures[0]) == expected
        assert isinstance(failures[0].__cause__, HandshakeError)
        assert str(failures[0].__cause__) == expected
        # secret_handshake closed the transport: the node sees the connection end.
        assert await b.receive_some() == b""


async def test_secret_handshake_with_the_right_pin() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        b = SecretStream(right, B_KEY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.do_handshake)
            a = await secret_handshake(left, A_KEY, expected_peer_id=B_ID.upper())
        assert a.peer_id == B_ID
        await a.send_all(b"\x02\x3a\x00")
        assert await b.receive_some() == b"\x02\x3a\x00"


async def _peer_by_hand(right: trio.abc.Stream) -> SecretConnection:
    """Handshake a raw state machine over ``right``, driving its I/O from the test."""
    peer = SecretConnection(B_KEY)
    await right.send_all(peer.data_to_send())
    while not peer.handshake_complete:
        peer.receive_data(await right.receive_some())
        out = peer.data_to_send()
        if out:
            await right.send_all(out)
    return peer


async def test_tampered_frame_breaks_the_stream() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        a = SecretStream(left, A_KEY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.do_handshake)
            peer = await _peer_by_hand(right)
        peer.send(b"good")
        await right.send_all(peer.data_to_send())
        assert await a.receive_some() == b"good"
        peer.send(b"evil")
        wire = bytearray(peer.data_to_send())
        wire[500] ^= 0x01
        await right.send_all(bytes(wire))
        with pytest.raises(trio.BrokenResourceError, match="frame authentication failed") as info:
            await a.receive_some()
        assert isinstance(info.value.__cause__, ProtocolError)
        with pytest.raises(trio.BrokenResourceError):
            await a.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await a.send_all(b"reply")
        await a.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await a.send_all(b"reply")


async def test_close_in_the_middle_of_a_frame_breaks_the_stream() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        a = SecretStream(left, A_KEY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.do_handshake)
            peer = await _peer_by_hand(right)
        peer.send(b"truncated")
        await right.send_all(peer.data_to_send()[:600])
        await right.aclose()
        with pytest.raises(trio.BrokenResourceError, match="middle of a frame"):
            await a.receive_some()


async def test_close_during_the_handshake_breaks_the_stream() -> None:
    with trio.fail_after(10):
        left, right = trio.testing.memory_stream_pair()
        await right.send_all(b"\x22\x0a")
        await right.send_eof()  # half-close: our ephemeral key still goes through
        a = SecretStream(left, A_KEY)
        with pytest.raises(trio.BrokenResourceError, match="during the handshake"):
            await a.do_handshake()


async def test_messages_larger_than_a_frame_in_small_reads() -> None:
    with trio.fail_after(10):
        a, b = await _shaken(trio.testing.memory_stream_pair)
        message = bytes(range(256)) * 40  # 10 KiB: ten frames
        got = bytearray()

        async def read_all() -> None:
            while len(got) < len(message):
                got.extend(await b.receive_some(333))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await a.send_all(message)
        assert bytes(got) == message
