"""The tmkms state file format: what we write, and what we accept on reading.

tmkms writes ``{"height":"H","round":"R","step":S,"block_id":{"hash":"HEX","parts":
{"total":T,"hash":"HEX"}}}`` (compact JSON, that key order, upper-case hex, a nil block ID as
empty hashes and a zero total). We write byte-for-byte the same so an operator can switch
back to tmkms at any time, and read what tmkms and older tendermint-rs versions accept:
``"block_id": null``, ``part_set_header`` instead of ``parts``, ``total`` as a string and
hex in either case. Everything else that is off (not JSON, truncated, wrong types, missing
keys, a step outside 0-2) is refused with a ValueError giving the reason, which
:class:`kms.chain.store.StateFile` turns into a StateError naming the file. A CometBFT
``priv_validator_state.json`` (an operator pointing ``state_file`` at the node's own file) is
recognised and named as such, with the way out: ``tmkms state import``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kms.chain.state import (
    MAX_HEIGHT_VALUE,
    MAX_ROUND_VALUE,
    STEP_PRECOMMIT,
    BlockRef,
    SignState,
)

__all__ = ["COMETBFT_STATE_FILE", "format_state", "parse_state"]

_DECIMAL = re.compile(r"[0-9]+\Z")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*\Z")
_MAX_TOTAL = (1 << 32) - 1


def format_state(state: SignState) -> bytes:
    """Serialise ``state`` exactly as tmkms does (compact JSON, fixed key order)."""
    block = state.block
    return (
        f'{{"height":"{state.height}","round":"{state.round}","step":{state.step},'
        f'"block_id":{{"hash":"{block.hash.hex().upper()}","parts":{{"total":'
        f'{block.parts_total},"hash":"{block.parts_hash.hex().upper()}"}}}}}}'
    ).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _decimal(value: object, what: str, maximum: int) -> int:
    """A non-negative integer written as a decimal string (tmkms's height and round)."""
    if not isinstance(value, str) or not _DECIMAL.match(value):
        raise ValueError(f"{what} must be a decimal string, got {value!r}")
    number = int(value)
    if number > maximum:
        raise ValueError(f"{what} {number} is out of range")
    return number


def _hex(value: object, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str) or not _HEX.match(value):
        raise ValueError(f"{what} must be a hex string, got {value!r}")
    return bytes.fromhex(value)


def _total(value: object) -> int:
    if isinstance(value, str):
        return _decimal(value, "block_id.parts.total", _MAX_TOTAL)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOTAL:
        raise ValueError(f"block_id.parts.total must be a 32-bit unsigned integer, got {value!r}")
    return value


def _field(obj: dict[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise ValueError(f"missing key {what}")
    return obj[key]


def _block(value: object) -> BlockRef:
    if value is None:
        return BlockRef.NIL
    if not isinstance(value, dict):
        raise ValueError(f"block_id must be an object or null, got {value!r}")
    # tmkms writes "parts"; older tendermint-rs wrote "part_set_header". Neither may be
    # missing or null: tmkms refuses such a file too, and guessing "nil" here could hide
    # the block that was really signed.
    key = "parts" if "parts" in value else "part_set_header"
    parts = _field(value, key, "block_id.parts")
    if not isinstance(parts, dict):
        raise ValueError(f"block_id.parts must be an object, got {parts!r}")
    return BlockRef(
        hash=_hex(_field(value, "hash", "block_id.hash"), "block_id.hash"),
        parts_total=_total(_field(parts, "total", "block_id.parts.total")),
        parts_hash=_hex(_field(parts, "hash", "block_id.parts.hash"), "block_id.parts.hash"),
    )


#: Why a CometBFT ``priv_validator_state.json`` is refused as a state file, and what to do.
COMETBFT_STATE_FILE = (
    'this is a CometBFT priv_validator_state.json (a numeric "round", no "block_id"), '
    "not a tmkms state file: convert it with `tmkms state import CHAIN_ID FILE` into a "
    "state_file of the KMS's own (or, if this file is a copy the node does not use, convert "
    "it in place with `tmkms state import --force CHAIN_ID FILE`)"
)


def _is_cometbft_state(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` has the shape CometBFT's file signer writes rather than tmkms's.

    CometBFT writes the round as a JSON number and may add ``signature``/``signbytes``;
    tmkms writes the round as a string and always a ``block_id``.
    """
    if "block_id" in doc:
        return False
    round_ = doc.get("round")
    numeric_round = isinstance(round_, int) and not isinstance(round_, bool)
    return numeric_round or "signbytes" in doc or "signature" in doc


def parse_state(text: str | bytes) -> SignState:
    """Parse a tmkms state file's contents; ValueError (with the reason) if it is not one."""
    doc = json.loads(text, parse_constant=_reject_constant)
    if not isinstance(doc, dict):
        raise ValueError("the top level is not a JSON object")
    if _is_cometbft_state(doc):
        raise ValueError(COMETBFT_STATE_FILE)
    for key in ("height", "round", "step", "block_id"):
        if key not in doc:
            raise ValueError(f"missing key {key!r}")
    step = doc["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= STEP_PRECOMMIT:
        raise ValueError(f"step must be 0, 1 or 2, got {step!r}")
    return SignState(
        height=_decimal(doc["height"], "height", MAX_HEIGHT_VALUE),
        round=_decimal(doc["round"], "round", MAX_ROUND_VALUE),
        step=step,
        block=_block(doc["block_id"]),
    )
