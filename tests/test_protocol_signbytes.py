"""Canonical sign bytes: the rules the vectors and the betterproto oracle cannot show alone."""

from __future__ import annotations

import attrs
import pytest
from betterproto.lib.google.protobuf import Timestamp as PbTimestamp
from hypothesis import given

from kms.errors import ProtocolError, SigningRefused
from kms.protocol.messages import (
    BlockId,
    PartSetHeader,
    Proposal,
    SignedMsgType,
    SignRawBytesRequest,
    Timestamp,
    Vote,
)
from kms.protocol.signbytes import (
    RAW_BYTES_PREFIX,
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    STEP_PROPOSAL,
    proposal_sign_bytes,
    raw_bytes_sign_bytes,
    step_of,
    vote_extension_sign_bytes,
    vote_sign_bytes,
)
from kms.protocol.varint import decode_uvarint
from kms.protocol.wire import uvarint
from tests.support.strategies import proposals, texts, timestamps, votes

HASH = bytes(range(32))
BLOCK = BlockId(HASH, PartSetHeader(1, bytes(32)))


def _vote(**changes: object) -> Vote:
    base = Vote(2, 5, 0, BLOCK, Timestamp(1_700_000_000, 0), b"a" * 20, 0)
    return attrs.evolve(base, **changes)


def _proposal(**changes: object) -> Proposal:
    base = Proposal(32, 5, 0, -1, BLOCK, Timestamp(1_700_000_000, 0))
    return attrs.evolve(base, **changes)


def _body(sign_bytes: bytes) -> bytes:
    """Strip and check the uvarint length prefix."""
    length, pos = decode_uvarint(sign_bytes)
    assert length == len(sign_bytes) - pos
    return sign_bytes[pos:]


@given(ts=timestamps())
def test_timestamps_keep_exact_nanoseconds(ts: Timestamp) -> None:
    """The timestamp field is exactly what an independent encoder writes, nanos included
    (betterproto's plain Timestamp message: ints, unlike its datetime-mapped fields)."""
    reference = bytes(PbTimestamp(seconds=ts.seconds, nanos=ts.nanos))
    field = b"\x2a" + uvarint(len(reference)) + reference
    assert field in _body(vote_sign_bytes("c", _vote(timestamp=ts)))
    assert _body(vote_sign_bytes("c", _vote(timestamp=ts))).endswith(field + b"\x32\x01c")
    field = b"\x32" + uvarint(len(reference)) + reference
    assert _body(proposal_sign_bytes("c", _proposal(timestamp=ts))).endswith(field + b"\x3a\x01c")


@given(vote=votes(extensions=True), chain_id=texts)
def test_only_consensus_fields_enter_vote_sign_bytes(vote: Vote, chain_id: str) -> None:
    """Address, index, signatures and the extension never change the vote's sign bytes."""
    other = attrs.evolve(
        vote,
        validator_address=b"x",
        validator_index=vote.validator_index ^ 1,
        signature=b"s",
        extension=vote.extension + b"e",
        extension_signature=b"t",
    )
    assert vote_sign_bytes(chain_id, vote) == vote_sign_bytes(chain_id, other)
    assert vote_extension_sign_bytes(chain_id, vote) != vote_extension_sign_bytes(chain_id, other)


@given(proposal=proposals(), chain_id=texts)
def test_proposal_type_is_always_32(proposal: Proposal, chain_id: str) -> None:
    """Whatever type the request carries, the canonical proposal says PROPOSAL."""
    body = _body(proposal_sign_bytes(chain_id, proposal))
    assert body.startswith(b"\x08\x20")
    assert proposal_sign_bytes(chain_id, attrs.evolve(proposal, type=1)) == proposal_sign_bytes(
        chain_id, proposal
    )


def test_pol_round_minus_one_is_a_ten_byte_varint_and_rounds_are_sfixed64() -> None:
    """pol_round is a varint int64; height and round are little-endian sfixed64."""
    body = _body(proposal_sign_bytes("", _proposal(round=-2)))
    assert b"\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01" in body
    assert b"\x19" + (-2).to_bytes(8, "little", signed=True) in body
    assert b"\x11" + (5).to_bytes(8, "little", signed=True) in body


def test_nil_block_id_is_left_out_but_a_bare_part_set_header_is_not() -> None:
    """Only hash empty AND part-set header zero makes a block ID nil."""
    nil = _body(vote_sign_bytes("c", _vote(block_id=BlockId())))
    assert b"\x22" not in nil[: nil.index(b"\x2a")]
    header_only = BlockId(b"", PartSetHeader(3, b""))
    assert not header_only.is_nil()
    body = _body(vote_sign_bytes("c", _vote(block_id=header_only)))
    assert b"\x22\x04\x12\x02\x08\x03" in body
    assert BlockId().is_nil() and BlockId(b"", PartSetHeader()).is_nil()


@pytest.mark.parametrize(
    "block_id",
    [
        BlockId(b"\x01" * 31, PartSetHeader(1, HASH)),
        BlockId(b"\x01" * 33, PartSetHeader(1, HASH)),
        BlockId(HASH, PartSetHeader(1, b"\x02" * 20)),
        BlockId(b"", PartSetHeader(0, b"\x02")),
    ],
)
def test_hashes_must_be_empty_or_32_bytes(block_id: BlockId) -> None:
    """Block and part-set hashes of other sizes are refused, for votes and proposals."""
    with pytest.raises(ProtocolError, match="expected 32"):
        vote_sign_bytes("c", _vote(block_id=block_id))
    with pytest.raises(ProtocolError, match="expected 32"):
        proposal_sign_bytes("c", _proposal(block_id=block_id))


def test_extension_sign_bytes_cover_extension_height_round_chain() -> None:
    """CanonicalVoteExtension: extension=1, height=2, round=3 (sfixed64), chain_id=4."""
    body = _body(vote_extension_sign_bytes("chain", _vote(extension=b"ext", round=1)))
    assert body == (
        b"\x0a\x03ext"
        + b"\x11"
        + (5).to_bytes(8, "little")
        + b"\x19"
        + (1).to_bytes(8, "little")
        + b"\x22\x05chain"
    )


def test_raw_bytes_envelope_layout() -> None:
    """Prefix, uvarint length, then chain_id=1, raw_bytes=2, unique_id=3."""
    signed = raw_bytes_sign_bytes(SignRawBytesRequest("c1", b"\x00\x01", "uid"))
    message = b"\x0a\x02c1\x12\x02\x00\x01\x1a\x03uid"
    assert signed == RAW_BYTES_PREFIX + bytes([len(message)]) + message
    assert RAW_BYTES_PREFIX == b"COMET::RAW_BYTES::SIGN"


@pytest.mark.parametrize(
    "req",
    [
        SignRawBytesRequest("", b"x", "u"),
        SignRawBytesRequest("c", b"", "u"),
        SignRawBytesRequest("c", b"x", ""),
    ],
)
def test_raw_bytes_with_empty_fields_are_refused(req: SignRawBytesRequest) -> None:
    """As celestia-core refuses them; a refusal, so the node gets a RemoteSignerError."""
    with pytest.raises(SigningRefused):
        raw_bytes_sign_bytes(req)


def test_step_of() -> None:
    """Proposal 0, prevote 1, precommit 2; anything else is not signable."""
    assert step_of(SignedMsgType.PROPOSAL) == STEP_PROPOSAL == 0
    assert step_of(SignedMsgType.PREVOTE) == STEP_PREVOTE == 1
    assert step_of(SignedMsgType.PRECOMMIT) == STEP_PRECOMMIT == 2
    for bad in (0, 3, 31, -1):
        with pytest.raises(ProtocolError):
            step_of(bad)


def test_out_of_range_values_are_refused_not_wrapped() -> None:
    """A height beyond int64 or a timestamp beyond year 9999 never reaches a signature."""
    with pytest.raises(ProtocolError):
        vote_sign_bytes("c", _vote(height=2**63))
    with pytest.raises(ProtocolError):
        vote_sign_bytes("c", _vote(timestamp=Timestamp(253402300800, 0)))
