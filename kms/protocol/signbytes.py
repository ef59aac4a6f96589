"""The exact bytes a validator signs, per CometBFT's canonical encodings.

Every consensus sign-bytes value is ``uvarint(len) || protobuf(canonical message)``:

- CanonicalVote{type=1, height=2 sfixed64, round=3 sfixed64, block_id=4 (left out when
  the block ID is nil), timestamp=5 (always written), chain_id=6}
- CanonicalProposal{type=1 (always 32), height=2 sfixed64, round=3 sfixed64,
  pol_round=4 int64 varint, block_id=5, timestamp=6, chain_id=7}
- CanonicalVoteExtension{extension=1, height=2 sfixed64, round=3 sfixed64, chain_id=4}
- CanonicalBlockID{hash=1, part_set_header=2 (always written){total=1, hash=2}}

Celestia's raw-bytes envelope is ``b"COMET::RAW_BYTES::SIGN" || uvarint(len) ||
protobuf(SignRawBytesRequest)``, as celestia-core's ``types.RawBytesMessageSignBytes``
builds it since commit 7b72eeeb5 (2025-08-04, "update the privval extension to match the
CIP", which switched it to ``protoio.MarshalDelimited``). Like that function, empty
chain ID, unique ID or raw bytes are refused. v1's SignBytesRequest signs its ``value``
as it is, so it needs nothing here.
"""

from __future__ import annotations

from kms.errors import ProtocolError, SigningRefused
from kms.protocol.encoding import timestamp_body
from kms.protocol.messages import BlockId, Proposal, SignRawBytesRequest, Vote
from kms.protocol.wire import int32_varint, len_field, sfixed64, uint32_varint, uvarint

RAW_BYTES_PREFIX = b"COMET::RAW_BYTES::SIGN"

STEP_PROPOSAL = 0
STEP_PREVOTE = 1
STEP_PRECOMMIT = 2
_STEPS = {32: STEP_PROPOSAL, 1: STEP_PREVOTE, 2: STEP_PRECOMMIT}

_HASH_SIZE = 32
_PROPOSAL_TYPE = b"\x08\x20"


def step_of(msg_type: int) -> int:
    """The double-sign step of a message type: proposal 0, prevote 1, precommit 2."""
    step = _STEPS.get(msg_type)
    if step is None:
        raise ProtocolError(f"message type {msg_type} is not a proposal, prevote or precommit")
    return step


def vote_sign_bytes(chain_id: str, vote: Vote) -> bytes:
    """CometBFT's ``VoteSignBytes``: the length-delimited CanonicalVote."""
    body = b"\x08" + int32_varint(vote.type) if vote.type else b""
    if vote.height:
        body += b"\x11" + sfixed64(vote.height)
    if vote.round:
        body += b"\x19" + sfixed64(vote.round)
    block_id = _canonical_block_id(vote.block_id)
    if block_id is not None:
        body += len_field(b"\x22", block_id)
    body += len_field(b"\x2a", timestamp_body(vote.timestamp))
    if chain_id:
        body += len_field(b"\x32", chain_id.encode())
    return uvarint(len(body)) + body


def proposal_sign_bytes(chain_id: str, proposal: Proposal) -> bytes:
    """CometBFT's ``ProposalSignBytes``; the canonical type is always PROPOSAL (32)."""
    body = _PROPOSAL_TYPE
    if proposal.height:
        body += b"\x11" + sfixed64(proposal.height)
    if proposal.round:
        body += b"\x19" + sfixed64(proposal.round)
    if proposal.pol_round:
        # int32 on the wire, widened to a varint int64 here: -1 takes ten bytes.
        body += b"\x20" + int32_varint(proposal.pol_round)
    block_id = _canonical_block_id(proposal.block_id)
    if block_id is not None:
        body += len_field(b"\x2a", block_id)
    body += len_field(b"\x32", timestamp_body(proposal.timestamp))
    if chain_id:
        body += len_field(b"\x3a", chain_id.encode())
    return uvarint(len(body)) + body


def vote_extension_sign_bytes(chain_id: str, vote: Vote) -> bytes:
    """CometBFT's ``VoteExtensionSignBytes``: the length-delimited CanonicalVoteExtension."""
    body = len_field(b"\x0a", vote.extension) if vote.extension else b""
    if vote.height:
        body += b"\x11" + sfixed64(vote.height)
    if vote.round:
        body += b"\x19" + sfixed64(vote.round)
    if chain_id:
        body += len_field(b"\x22", chain_id.encode())
    return uvarint(len(body)) + body


def raw_bytes_sign_bytes(req: SignRawBytesRequest) -> bytes:
    """Celestia's ``RawBytesMessageSignBytes``: prefix, then the length-delimited request.

    Raises SigningRefused (answered with a RemoteSignerError) when the chain ID, unique ID
    or raw bytes are empty, as celestia-core refuses them.
    """
    if not req.chain_id or not req.unique_id or not req.raw_bytes:
        raise SigningRefused("raw-bytes signing needs a chain ID, a unique ID and bytes")
    body = (
        len_field(b"\x0a", req.chain_id.encode())
        + len_field(b"\x12", req.raw_bytes)
        + len_field(b"\x1a", req.unique_id.encode())
    )
    return RAW_BYTES_PREFIX + uvarint(len(body)) + body


def _canonical_block_id(block_id: BlockId) -> bytes | None:
    """The CanonicalBlockID body, or None for the nil block ID; bad hash sizes refused."""
    header = block_id.part_set_header
    block_hash = block_id.hash
    if block_hash and len(block_hash) != _HASH_SIZE:
        raise ProtocolError(f"block hash is {len(block_hash)} bytes, expected 32")
    if header.hash and len(header.hash) != _HASH_SIZE:
        raise ProtocolError(f"part-set header hash is {len(header.hash)} bytes, expected 32")
    if not block_hash and not header.total and not header.hash:
        return None
    header_body = b"\x08" + uint32_varint(header.total) if header.total else b""
    if header.hash:
        header_body += len_field(b"\x12", header.hash)
    out = len_field(b"\x0a", block_hash) if block_hash else b""
    return out + len_field(b"\x12", header_body)
