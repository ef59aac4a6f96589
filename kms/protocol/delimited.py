"""uvarint length-delimited privval messages, in both directions.

The node sends one ``uvarint(len) || Message`` and waits for the reply, so the decoder is
built for one message at a time: bytes are appended to one buffer, the length prefix is
parsed once, and a message is copied out exactly once when complete. Feeding a 1 MiB
message in 1 KiB chunks costs linear time, not quadratic. A prefix announcing more than
MAX_MESSAGE_SIZE is refused as soon as its bytes show it, before any payload is buffered.
"""

from __future__ import annotations

from kms.errors import ProtocolError
from kms.protocol.wire import uvarint

MAX_MESSAGE_SIZE = 1_153_434
"""Largest accepted message: 1.1 MiB rounded up (CometBFT v0.40 sends up to ~1 MiB)."""

_MAX_PREFIX_LEN = 3  # MAX_MESSAGE_SIZE < 2**21, so a valid prefix has at most 3 bytes


class FrameTooLarge(ProtocolError):
    """A length prefix announces a message larger than MAX_MESSAGE_SIZE."""


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its uvarint length, ready to send."""
    if len(payload) > MAX_MESSAGE_SIZE:
        raise FrameTooLarge(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return uvarint(len(payload)) + payload


class FrameDecoder:
    """Splits a received byte stream into messages (sans-IO).

    ``feed()`` what arrives, then call ``next_message()`` until it returns None (more
    bytes needed). After a FrameTooLarge (or any ProtocolError) the decoder is broken and
    keeps raising; the connection must be closed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # where the unread bytes begin in _buffer
        self._end: int | None = None  # end of the current message, once its prefix is read
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> None:
        """Append received bytes; may raise FrameTooLarge on an oversized prefix."""
        if self._error is not None:
            raise self._error
        if self._start and self._start == len(self._buffer):
            # Everything buffered was consumed (maybe all but a parsed prefix): start over.
            if self._end is not None:
                self._end -= self._start
            self._buffer.clear()
            self._start = 0
        if self._end is None:
            # Check the prefix before buffering the payload behind it.
            self._buffer += data[:_MAX_PREFIX_LEN]
            self._read_prefix()
            self._buffer += memoryview(data)[_MAX_PREFIX_LEN:]
        else:
            self._buffer += data

    def next_message(self) -> bytes | None:
        """The next complete message (without its prefix), or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        if self._end is None and self._read_prefix() is None:
            return None
        end = self._end
        assert end is not None
        if len(self._buffer) < end:
            return None
        with memoryview(self._buffer) as view:
            message = bytes(view[self._start : end])
        self._start = end
        self._end = None
        if self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        elif self._start > len(self._buffer) // 2:
            del self._buffer[: self._start]
            self._start = 0
        return message

    def _read_prefix(self) -> int | None:
        """Parse the length prefix at the read position if complete; return message end."""
        buffer = self._buffer
        pos = self._start
        length = 0
        shift = 0
        while pos < len(buffer):
            byte = buffer[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if length > MAX_MESSAGE_SIZE or (byte & 0x80 and shift >= 7 * _MAX_PREFIX_LEN):
                self._error = FrameTooLarge(
                    f"length prefix announces more than {MAX_MESSAGE_SIZE} bytes"
                )
                raise self._error
            if not byte & 0x80:
                # Leave the prefix out of the message: skip past it now.
                self._start = pos
                self._end = pos + length
                return self._end
        return None
