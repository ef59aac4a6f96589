"""Sign bytes computed by the tests themselves, independently of `kms.protocol.signbytes`.

A deliberately plain encoder of CometBFT's canonical messages, written from the spec, so
that end-to-end tests check the KMS's signatures over bytes the KMS did not produce.
"""

from __future__ import annotations

import struct

from kms.protocol.messages import BlockId, Proposal, Timestamp, Vote


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out += bytes([low | 0x80])
        else:
            return out + bytes([low])


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value if value else b""


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value) if value else b""


def _sfixed64(field: int, value: int) -> bytes:
    return _key(field, 1) + struct.pack("<q", value) if value else b""


def _timestamp(field: int, ts: Timestamp) -> bytes:
    body = _int_field(1, ts.seconds) + _int_field(2, ts.nanos)
    return _key(field, 2) + _varint(len(body)) + body  # always written, even when empty


def _block_id(field: int, block_id: BlockId) -> bytes:
    psh = block_id.part_set_header
    if not block_id.hash and not psh.total and not psh.hash:
        return b""
    header = _int_field(1, psh.total) + _bytes_field(2, psh.hash)
    body = _bytes_field(1, block_id.hash) + _key(2, 2) + _varint(len(header)) + header
    return _key(field, 2) + _varint(len(body)) + body


def _delimited(body: bytes) -> bytes:
    return _varint(len(body)) + body


def vote_sign_bytes(chain_id: str, vote: Vote) -> bytes:
    """uvarint-delimited CanonicalVote."""
    return _delimited(
        _int_field(1, vote.type)
        + _sfixed64(2, vote.height)
        + _sfixed64(3, vote.round)
        + _block_id(4, vote.block_id)
        + _timestamp(5, vote.timestamp)
        + _bytes_field(6, chain_id.encode())
    )


def proposal_sign_bytes(chain_id: str, proposal: Proposal) -> bytes:
    """uvarint-delimited CanonicalProposal (type always 32)."""
    return _delimited(
        _int_field(1, 32)
        + _sfixed64(2, proposal.height)
        + _sfixed64(3, proposal.round)
        + _int_field(4, proposal.pol_round)
        + _block_id(5, proposal.block_id)
        + _timestamp(6, proposal.timestamp)
        + _bytes_field(7, chain_id.encode())
    )


def vote_extension_sign_bytes(chain_id: str, vote: Vote) -> bytes:
    """uvarint-delimited CanonicalVoteExtension."""
    return _delimited(
        _bytes_field(1, vote.extension)
        + _sfixed64(2, vote.height)
        + _sfixed64(3, vote.round)
        + _bytes_field(4, chain_id.encode())
    )
