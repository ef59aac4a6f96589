"""Reading CometBFT's own ``priv_validator_state.json`` (for ``tmkms state import``).

A node's file signer leaves ``{"height":"H","round":R,"step":S,"signature":"<b64>",
"signbytes":"<HEX>"}`` behind, with steps numbered propose = 1, prevote = 2, precommit = 3
and 0 ("none") for "nothing signed yet at this height" (the initial state). The last two
keys are omitted when empty.

Mapping onto the KMS state:

* steps 1, 2, 3 become 0, 1, 2;
* step 0 becomes step 0 (proposal) with a nil block at the same height and round. That is
  never *below* anything the node signed (it signed nothing at that height), and it refuses
  at most a proposal for a block at exactly that height/round/step, which in practice only
  arises for height 0, where nothing is ever signed;
* the block comes from ``signbytes``: the length-prefixed CanonicalVote / CanonicalProposal
  the node last signed. Knowing it matters: with a nil block we would accept, say, a
  precommit for B after the node prevoted A. The sign bytes must agree with height, round
  and step, or the file is refused. Without sign bytes the block is taken as nil.

Nothing here decides whether the import may replace an existing state; the caller compares
``hrs`` and never lowers a state.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from kms.chain.state import MAX_HEIGHT_VALUE, MAX_ROUND_VALUE, BlockRef, SignState
from kms.errors import ProtocolError, StateError
from kms.protocol.varint import decode_uvarint

# SignedMsgType values in the canonical sign bytes, and the KMS step each one signs.
_TYPE_TO_STEP = {1: 1, 2: 2, 32: 0}
# Field number of the block ID inside CanonicalVote and CanonicalProposal.
_BLOCK_ID_FIELD = {1: 4, 2: 4, 32: 5}
_DECIMAL = re.compile(r"[0-9]+\Z")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*\Z")

_Fields = dict[int, list[int | bytes]]


def _fields(data: bytes) -> _Fields:
    """Split one protobuf message into ``{field: [values...]}`` (varint/fixed as int)."""
    out: _Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = decode_uvarint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = decode_uvarint(data, pos)
        elif wire == 1:
            if pos + 8 > len(data):
                raise ProtocolError("truncated fixed64 field")
            (value,) = struct.unpack_from("<q", data, pos)
            pos += 8
        elif wire == 2:
            length, pos = decode_uvarint(data, pos)
            if pos + length > len(data):
                raise ProtocolError("truncated length-delimited field")
            value = bytes(data[pos : pos + length])
            pos += length
        elif wire == 5:
            if pos + 4 > len(data):
                raise ProtocolError("truncated fixed32 field")
            (value,) = struct.unpack_from("<i", data, pos)
            pos += 4
        else:
            raise ProtocolError(f"unsupported wire type {wire}")
        if number == 0:
            raise ProtocolError("field number 0")
        out.setdefault(number, []).append(value)
    return out


def _last(fields: _Fields, number: int, kind: type, default: Any) -> Any:
    values = fields.get(number)
    if not values:
        return default
    value = values[-1]
    if not isinstance(value, kind):
        raise ProtocolError(f"field {number} has the wrong wire type")
    return value


def decode_sign_bytes(sign_bytes: bytes) -> tuple[int, int, int, BlockRef]:
    """Return ``(step, height, round, block)`` from length-prefixed canonical sign bytes.

    Raises ProtocolError when the bytes are not a CanonicalVote/CanonicalProposal.
    """
    length, pos = decode_uvarint(sign_bytes)
    if pos + length != len(sign_bytes):
        raise ProtocolError("length prefix does not match the sign bytes")
    msg = _fields(sign_bytes[pos:])
    msg_type = _last(msg, 1, int, 0)
    if msg_type not in _TYPE_TO_STEP:
        raise ProtocolError(f"unknown signed message type {msg_type}")
    height = _last(msg, 2, int, 0)
    round_ = _last(msg, 3, int, 0)
    raw_block = _last(msg, _BLOCK_ID_FIELD[msg_type], bytes, b"")
    block_fields = _fields(raw_block)
    parts = _fields(_last(block_fields, 2, bytes, b""))
    block = BlockRef(
        hash=_last(block_fields, 1, bytes, b""),
        parts_total=_last(parts, 1, int, 0),
        parts_hash=_last(parts, 2, bytes, b""),
    )
    return _TYPE_TO_STEP[msg_type], height, round_, block


def _cometbft_fields(doc: object) -> tuple[int, int, int, str]:
    if not isinstance(doc, dict):
        raise ValueError("the top level is not a JSON object")
    height, round_, step = doc.get("height"), doc.get("round"), doc.get("step")
    if not isinstance(height, str) or not _DECIMAL.match(height):
        raise ValueError(f"height must be a decimal string, got {height!r}")
    if int(height) > MAX_HEIGHT_VALUE:
        raise ValueError(f"height {height} is out of range")
    if isinstance(round_, bool) or not isinstance(round_, int):
        raise ValueError(f"round must be an integer, got {round_!r}")
    if not 0 <= round_ <= MAX_ROUND_VALUE:
        raise ValueError(f"round {round_} is out of range")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= 3:
        raise ValueError(f"step must be 0-3, got {step!r}")
    signbytes = doc.get("signbytes") or ""
    if not isinstance(signbytes, str) or not _HEX.match(signbytes):
        raise ValueError("signbytes must be a hex string")
    return int(height), round_, step, signbytes


def parse_cometbft_state(text: str | bytes) -> SignState:
    """Convert a CometBFT ``priv_validator_state.json`` into the KMS's SignState.

    Raises StateError when the text is not such a file or its sign bytes disagree with it.
    """
    try:
        doc = json.loads(text)
        height, round_, step, signbytes = _cometbft_fields(doc)
    except (ValueError, RecursionError) as exc:
        raise StateError(f"not a CometBFT priv_validator_state.json: {exc}") from exc
    if step == 0:
        return SignState(height, round_, 0, BlockRef.NIL)
    kms_step = step - 1
    if not signbytes:
        return SignState(height, round_, kms_step, BlockRef.NIL)
    try:
        signed_step, signed_height, signed_round, block = decode_sign_bytes(
            bytes.fromhex(signbytes)
        )
    except ProtocolError as exc:
        raise StateError(f"cannot decode signbytes of priv_validator_state.json: {exc}") from exc
    if (signed_height, signed_round, signed_step) != (height, round_, kms_step):
        raise StateError(
            "signbytes of priv_validator_state.json are for h/r/s "
            f"{signed_height}/{signed_round}/{signed_step}, not {height}/{round_}/{kms_step}"
        )
    return SignState(height, round_, kms_step, block)
