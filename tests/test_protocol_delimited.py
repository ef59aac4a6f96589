"""uvarint framing and the incremental FrameDecoder."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.errors import ProtocolError
from kms.protocol.delimited import MAX_MESSAGE_SIZE, FrameDecoder, FrameTooLarge, frame
from kms.protocol.wire import uvarint

payload_lists = st.lists(st.binary(max_size=300), max_size=12)


def _drain(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (message := decoder.next_message()) is not None:
        out.append(message)
    return out


def _feed_in_pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    decoder = FrameDecoder()
    messages: list[bytes] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        decoder.feed(stream[start:cut])
        messages += _drain(decoder)
        start = cut
    assert decoder.buffered == 0
    return messages


@given(payloads=payload_lists, data=st.data())
def test_any_chunking_gives_the_same_messages(payloads: list[bytes], data: st.DataObject) -> None:
    """Whole stream, one byte at a time, and random cuts all yield the framed payloads."""
    stream = b"".join(frame(p) for p in payloads)
    whole = FrameDecoder()
    whole.feed(stream)
    assert _drain(whole) == payloads
    assert _feed_in_pieces(stream, list(range(len(stream)))) == payloads
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert _feed_in_pieces(stream, cuts) == payloads


def test_frame_is_uvarint_length_then_payload() -> None:
    """frame() writes the uvarint length first: one byte below 128, two from 128."""
    assert frame(b"\x3a\x00") == b"\x02\x3a\x00"
    assert frame(b"x" * 200) == b"\xc8\x01" + b"x" * 200
    assert frame(b"") == b"\x00"


def test_partial_message_waits_for_more_bytes() -> None:
    """None until the last byte arrives; the empty message is a valid (empty) frame."""
    decoder = FrameDecoder()
    decoder.feed(b"\x03ab")
    assert decoder.next_message() is None
    assert decoder.buffered == 2
    decoder.feed(b"c\x00")
    assert decoder.next_message() == b"abc"
    assert decoder.next_message() == b""
    assert decoder.next_message() is None


def test_largest_message_is_accepted_and_one_more_byte_refused() -> None:
    """MAX_MESSAGE_SIZE (1.1 MiB, rounded up) passes; MAX + 1 is FrameTooLarge."""
    assert MAX_MESSAGE_SIZE >= 1.1 * 1024 * 1024
    payload = bytes(MAX_MESSAGE_SIZE)
    decoder = FrameDecoder()
    decoder.feed(frame(payload))
    assert decoder.next_message() == payload
    with pytest.raises(FrameTooLarge):
        frame(payload + b"\x00")
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(uvarint(MAX_MESSAGE_SIZE + 1))


def test_huge_prefix_is_refused_at_once_without_allocating() -> None:
    """A 2**40 length prefix raises on feed, before any payload, with no big allocation."""
    prefix = uvarint(2**40)
    tracemalloc.start()
    try:
        decoder = FrameDecoder()
        with pytest.raises(FrameTooLarge):
            decoder.feed(prefix + b"payload")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    # The decoder stays broken: the connection has to go.
    with pytest.raises(FrameTooLarge):
        decoder.next_message()
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\x00")


def test_huge_prefix_fed_byte_by_byte_is_refused_by_its_third_byte() -> None:
    """A third byte that still continues means at least 2**21 bytes: over the limit."""
    decoder = FrameDecoder()
    prefix = uvarint(2**40)
    for byte in prefix[:2]:
        decoder.feed(bytes([byte]))
        assert decoder.next_message() is None
    with pytest.raises(FrameTooLarge):
        decoder.feed(prefix[2:3])


def test_frame_too_large_is_a_protocol_error() -> None:
    """Sessions handle it like any malformed input."""
    assert issubclass(FrameTooLarge, ProtocolError)


def _chunked_feed_seconds(size: int, chunk: int = 1024) -> float:
    stream = frame(bytes(size))
    best = float("inf")
    for _ in range(3):
        decoder = FrameDecoder()
        started = time.perf_counter()
        for start in range(0, len(stream), chunk):
            decoder.feed(stream[start : start + chunk])
            message = decoder.next_message()
        best = min(best, time.perf_counter() - started)
        assert message is not None and len(message) == size
    return best


def test_chunked_feeding_is_linear_not_quadratic() -> None:
    """Four times the bytes in 1 KiB chunks costs about four times as long (quadratic
    copying would cost sixteen times)."""
    small = _chunked_feed_seconds(256 * 1024)
    large = _chunked_feed_seconds(1024 * 1024)
    assert large / small < 10
