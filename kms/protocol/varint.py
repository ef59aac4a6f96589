"""Unsigned LEB128 varints, as protobuf and the uvarint length prefixes use them."""

from __future__ import annotations

from kms.errors import ProtocolError

MAX_VARINT_LEN = 10


class IncompleteVarint(ProtocolError):
    """The buffer ends inside a varint; more bytes may complete it."""


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer below 2**64 as a varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a varint at ``pos``; return ``(value, position after it)``.

    Raises IncompleteVarint when the data ends first and ProtocolError when the varint is
    longer than ten bytes or does not fit in 64 bits.
    """
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise IncompleteVarint("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >= 1 << 64:
                raise ProtocolError("varint overflows 64 bits")
            return result, pos
        shift += 7
        if shift >= 7 * MAX_VARINT_LEN:
            raise ProtocolError("varint longer than 10 bytes")
