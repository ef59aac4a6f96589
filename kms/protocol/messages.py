"""Typed privval messages: what the codec decodes requests into and encodes replies from.

Field names and meanings follow the protobuf schemas (see ``kms/proto``). Integers are
plain ints: decoding never produces an out-of-range value and encoding refuses one.
Vote and Proposal are mutable because the session fills in their signatures (and the
vote's extension signature) before echoing them back; everything else is frozen.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TypeAlias

import attrs


class SignedMsgType(IntEnum):
    """The kind of consensus message being signed (Vote.type / Proposal.type)."""

    UNKNOWN = 0
    PREVOTE = 1
    PRECOMMIT = 2
    PROPOSAL = 32


GO_ZERO_TIME_SECONDS = -62135596800
"""Seconds from the Unix epoch to Go's zero time, 0001-01-01T00:00:00Z."""

MAX_TIMESTAMP_SECONDS = 253402300799
"""Seconds from the Unix epoch to 9999-12-31T23:59:59Z, the last valid protobuf Timestamp."""


@attrs.frozen
class Timestamp:
    """A google.protobuf.Timestamp: seconds since the Unix epoch plus exact nanoseconds."""

    seconds: int
    nanos: int


ZERO_TIME = Timestamp(GO_ZERO_TIME_SECONDS, 0)
"""Go's zero ``time.Time``: what an absent timestamp means on the wire."""


@attrs.frozen
class PartSetHeader:
    """How a block is split into parts: part count and Merkle root of the parts."""

    total: int = 0
    hash: bytes = b""

    def is_zero(self) -> bool:
        """True when no part set is given (total 0, empty hash)."""
        return self.total == 0 and not self.hash


EMPTY_PART_SET_HEADER = PartSetHeader()


@attrs.frozen
class BlockId:
    """A block hash and its part-set header; empty in both for a nil vote."""

    hash: bytes = b""
    part_set_header: PartSetHeader = EMPTY_PART_SET_HEADER

    def is_nil(self) -> bool:
        """True for the nil block ID: empty hash AND zero part-set header."""
        return not self.hash and self.part_set_header.is_zero()


NIL_BLOCK_ID = BlockId()


@attrs.define(slots=True)
class Vote:
    """tendermint.types.Vote; ``extension`` fields only travel from v0.38 on."""

    type: int
    height: int
    round: int
    block_id: BlockId
    timestamp: Timestamp
    validator_address: bytes
    validator_index: int
    signature: bytes = b""
    extension: bytes = b""
    extension_signature: bytes = b""


@attrs.define(slots=True)
class Proposal:
    """tendermint.types.Proposal."""

    type: int
    height: int
    round: int
    pol_round: int
    block_id: BlockId
    timestamp: Timestamp
    signature: bytes = b""


def empty_vote() -> Vote:
    """The all-zero vote Go writes in a response that carries no vote."""
    return Vote(0, 0, 0, NIL_BLOCK_ID, ZERO_TIME, b"", 0)


def empty_proposal() -> Proposal:
    """The all-zero proposal Go writes in a response that carries no proposal."""
    return Proposal(0, 0, 0, 0, NIL_BLOCK_ID, ZERO_TIME)


@attrs.frozen
class RemoteSignerError:
    """A refusal or failure reported to the node instead of a signature."""

    code: int
    description: str


PUBLIC_KEY_TYPES = ("ed25519", "secp256k1", "bls12_381", "ml_dsa_65", "secp256k1eth")
"""Key type names in the order of the tendermint.crypto.PublicKey oneof (field 1, 2, ...).

The names are CometBFT's KeyType strings, which v1's PubKeyResponse carries as text.
"""


@attrs.frozen
class PublicKey:
    """A consensus public key: type name ("ed25519", "secp256k1", ...) and raw bytes."""

    type: str
    data: bytes


# --- Requests (node -> signer) ---------------------------------------------------------


@attrs.frozen
class PubKeyRequest:
    """Asks for the signer's consensus public key."""

    chain_id: str


@attrs.frozen
class SignVoteRequest:
    """Asks for a vote signature; ``skip_extension_signing`` exists in v1 only."""

    vote: Vote
    chain_id: str
    skip_extension_signing: bool = False


@attrs.frozen
class SignProposalRequest:
    """Asks for a proposal signature."""

    proposal: Proposal
    chain_id: str


@attrs.frozen
class PingRequest:
    """Keep-alive from the node."""


@attrs.frozen
class SignBytesRequest:
    """v1: sign ``value`` as it is (no domain separator, no double-sign state)."""

    value: bytes


@attrs.frozen
class SignRawBytesRequest:
    """Celestia: sign raw application bytes under a domain-separated envelope."""

    chain_id: str
    raw_bytes: bytes
    unique_id: str


# --- Responses (signer -> node) --------------------------------------------------------


@attrs.frozen
class PubKeyResponse:
    """The public key, or an error (the key is then absent/empty)."""

    pub_key: PublicKey | None
    error: RemoteSignerError | None = None


@attrs.frozen
class SignedVoteResponse:
    """The signed vote echoed back, or an error. None is written as the empty vote."""

    vote: Vote | None
    error: RemoteSignerError | None = None


@attrs.frozen
class SignedProposalResponse:
    """The signed proposal echoed back, or an error. None is written as empty."""

    proposal: Proposal | None
    error: RemoteSignerError | None = None


@attrs.frozen
class PingResponse:
    """Answer to PingRequest."""


@attrs.frozen
class SignBytesResponse:
    """v1: the signature over SignBytesRequest.value, or an error."""

    signature: bytes
    error: RemoteSignerError | None = None


@attrs.frozen
class SignedRawBytesResponse:
    """Celestia: the signature over the raw-bytes envelope, or an error."""

    signature: bytes
    error: RemoteSignerError | None = None


Request: TypeAlias = (
    PubKeyRequest
    | SignVoteRequest
    | SignProposalRequest
    | PingRequest
    | SignBytesRequest
    | SignRawBytesRequest
)
Response: TypeAlias = (
    PubKeyResponse
    | SignedVoteResponse
    | SignedProposalResponse
    | PingResponse
    | SignBytesResponse
    | SignedRawBytesResponse
)
