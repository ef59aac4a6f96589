"""Protobuf wire-format primitives for the hand-written privval codec.

Only what the privval messages need: varint keys, proto3 integer types (negative
int32/int64 written as ten-byte varints, as Go does), sfixed64, length-delimited fields,
and a field scanner that skips unknown fields of every wire type, groups included.

Decoding follows Go's generated code: an int32 field keeps the low 32 bits of its
varint, an int64 field the low 64. A known field arriving with the wrong wire type is an
error, and a repeated scalar or message field keeps its last value.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from kms.errors import ProtocolError
from kms.protocol.varint import decode_uvarint, encode_uvarint

VARINT = 0
FIXED64 = 1
LEN = 2
START_GROUP = 3
END_GROUP = 4
FIXED32 = 5

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT32_MAX = (1 << 32) - 1
MASK64 = (1 << 64) - 1
MAX_FIELD_NUMBER = (1 << 29) - 1

_ONE_BYTE = tuple(bytes((i,)) for i in range(128))
_MINUS_ONE = encode_uvarint(MASK64)  # pol_round -1, the commonest negative value
_SFIXED64 = struct.Struct("<q").pack

Fields = dict[int, Any]
"""Scanned fields: number -> int (varint), bytes (length-delimited or fixed-size)."""


def uvarint(value: int) -> bytes:
    """Encode a non-negative integer below 2**64 as a varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    return encode_uvarint(value)


def key(number: int, wire_type: int) -> bytes:
    """The encoded key (tag) of field ``number`` with ``wire_type``."""
    return uvarint(number << 3 | wire_type)


def int32_varint(value: int) -> bytes:
    """Encode an int32 field value; negatives take ten bytes, like Go."""
    if not INT32_MIN <= value <= INT32_MAX:
        raise ProtocolError(f"value {value} does not fit in int32")
    if value >= 0:
        return uvarint(value)
    return _MINUS_ONE if value == -1 else encode_uvarint(value & MASK64)


def int64_varint(value: int) -> bytes:
    """Encode an int64 field value; negatives take ten bytes."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolError(f"value {value} does not fit in int64")
    if value >= 0:
        return uvarint(value)
    return _MINUS_ONE if value == -1 else encode_uvarint(value & MASK64)


def uint32_varint(value: int) -> bytes:
    """Encode a uint32 field value."""
    if not 0 <= value <= UINT32_MAX:
        raise ProtocolError(f"value {value} does not fit in uint32")
    return uvarint(value)


def sfixed64(value: int) -> bytes:
    """Encode an sfixed64 field value: eight bytes, little-endian two's complement."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolError(f"value {value} does not fit in int64")
    return _SFIXED64(value)


def len_field(field_key: bytes, payload: bytes) -> bytes:
    """A length-delimited field: key, uvarint length, payload (always written)."""
    return field_key + uvarint(len(payload)) + payload


def to_int32(value: int) -> int:
    """Interpret a decoded varint as int32 (low 32 bits, two's complement)."""
    return ((value & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


def to_int64(value: int) -> int:
    """Interpret a decoded varint (below 2**64) as int64."""
    return value - (1 << 64) if value >> 63 else value


def to_uint32(value: int) -> int:
    """Interpret a decoded varint as uint32 (low 32 bits)."""
    return value & 0xFFFFFFFF


def to_str(value: bytes) -> str:
    """Decode a string field; invalid UTF-8 is a ProtocolError."""
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("string field is not valid UTF-8") from exc


def scan(data: bytes, schema: Mapping[int, int]) -> Fields:
    """Read every field of the message ``data``; keep the known ones.

    ``schema`` maps each known field number to its wire type. Unknown fields are
    skipped whatever their wire type; a known field with another wire type, an invalid
    key or a field running past the end raises ProtocolError. Values: int for VARINT,
    bytes for LEN, FIXED64 and FIXED32.
    """
    fields: Fields = {}
    pos = 0
    end = len(data)
    try:
        while pos < end:
            field_key = data[pos]
            if field_key < 0x80:
                pos += 1
            else:
                field_key, pos = decode_uvarint(data, pos)
            number = field_key >> 3
            wire_type = field_key & 7
            if number == 0 or number > MAX_FIELD_NUMBER:
                raise ProtocolError(f"invalid field number {number}")
            expected = schema.get(number)
            if expected is None:
                pos = _skip(data, pos, number, wire_type)
                continue
            if expected != wire_type:
                raise ProtocolError(
                    f"field {number} has wire type {wire_type}, expected {expected}"
                )
            if wire_type == VARINT:
                byte = data[pos]
                if byte < 0x80:
                    fields[number] = byte
                    pos += 1
                else:
                    fields[number], pos = decode_uvarint(data, pos)
            else:
                if wire_type == LEN:
                    size = data[pos]
                    if size < 0x80:
                        pos += 1
                    else:
                        size, pos = decode_uvarint(data, pos)
                else:
                    size = 8 if wire_type == FIXED64 else 4
                stop = pos + size
                if stop > end:
                    raise ProtocolError(f"field {number} runs past the end of its message")
                fields[number] = data[pos:stop]
                pos = stop
    except IndexError as exc:
        raise ProtocolError("message ends inside a field") from exc
    return fields


def _skip(data: bytes, pos: int, number: int, wire_type: int) -> int:
    """Skip the value of an unknown field whose key has been read; return the new pos."""
    if wire_type == VARINT:
        return decode_uvarint(data, pos)[1]
    if wire_type == LEN:
        size, pos = decode_uvarint(data, pos)
        stop = pos + size
    elif wire_type == FIXED64:
        stop = pos + 8
    elif wire_type == FIXED32:
        stop = pos + 4
    elif wire_type == START_GROUP:
        return _skip_group(data, pos, number)
    elif wire_type == END_GROUP:
        raise ProtocolError(f"unexpected end of group {number}")
    else:
        raise ProtocolError(f"invalid wire type {wire_type} for field {number}")
    if stop > len(data):
        raise ProtocolError(f"field {number} runs past the end of its message")
    return stop


def _skip_group(data: bytes, pos: int, number: int) -> int:
    """Skip a (deprecated) group up to its matching end-group key, nested groups too."""
    open_groups = [number]
    while open_groups:
        field_key, pos = decode_uvarint(data, pos)
        inner = field_key >> 3
        wire_type = field_key & 7
        if inner == 0 or inner > MAX_FIELD_NUMBER:
            raise ProtocolError(f"invalid field number {inner}")
        if wire_type == END_GROUP:
            if open_groups.pop() != inner:
                raise ProtocolError(f"end of group {inner} does not match its start")
        elif wire_type == START_GROUP:
            open_groups.append(inner)
        else:
            pos = _skip(data, pos, inner, wire_type)
    return pos
