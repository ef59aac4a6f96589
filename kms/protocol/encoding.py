"""Encoding typed privval messages into ``Message`` bytes, byte-identical to Go.

Proto3 rules as gogoproto applies them: zero scalars and empty strings/bytes are left
out, except that the fields Go declares non-nullable are always written (a vote's
block_id, part_set_header and timestamp; a response's vote, proposal and v0.x pub_key;
a selected PublicKey oneof member). A typed field the version's schema lacks is not
written (Vote extension fields before v0.38, skip_extension_signing before v1); a
message kind the version lacks raises ProtocolError, as do out-of-range integers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kms.errors import ProtocolError
from kms.protocol.messages import (
    GO_ZERO_TIME_SECONDS,
    MAX_TIMESTAMP_SECONDS,
    PUBLIC_KEY_TYPES,
    BlockId,
    PingRequest,
    PingResponse,
    Proposal,
    PubKeyRequest,
    PubKeyResponse,
    RemoteSignerError,
    Request,
    Response,
    SignBytesRequest,
    SignBytesResponse,
    SignedProposalResponse,
    SignedRawBytesResponse,
    SignedVoteResponse,
    SignProposalRequest,
    SignRawBytesRequest,
    SignVoteRequest,
    Timestamp,
    Vote,
    empty_proposal,
    empty_vote,
)
from kms.protocol.version import ProtocolVersion
from kms.protocol.wire import (
    LEN,
    int32_varint,
    int64_varint,
    key,
    len_field,
    uint32_varint,
    uvarint,
)

_MESSAGE_KEYS = {number: key(number, LEN) for number in range(1, 11)}
_PUBLIC_KEY_KEYS = {name: key(i + 1, LEN) for i, name in enumerate(PUBLIC_KEY_TYPES)}
_EXTENSIONS = {v: v.has_vote_extensions for v in ProtocolVersion}
_V1 = ProtocolVersion.V1
_CELESTIA = ProtocolVersion.CELESTIA
_ZERO_TIME_BODY = b"\x08" + int64_varint(GO_ZERO_TIME_SECONDS)


def encode_request(req: Request, version: ProtocolVersion) -> bytes:
    """Encode a request (node -> signer) as a ``Message``, without the length prefix."""
    entry = _REQUESTS.get(type(req))
    if entry is None:
        raise ProtocolError(f"{type(req).__name__} is not a request")
    return _wrap(entry, req, version)


def encode_response(resp: Response, version: ProtocolVersion) -> bytes:
    """Encode a response (signer -> node) as a ``Message``, without the length prefix."""
    entry = _RESPONSES.get(type(resp))
    if entry is None:
        raise ProtocolError(f"{type(resp).__name__} is not a response")
    return _wrap(entry, resp, version)


_Encoder = Callable[[Any, ProtocolVersion], bytes]
_Entry = tuple[int, _Encoder, ProtocolVersion | None]
"""Message field number, body encoder, and the only version having it (None: all)."""


def _wrap(entry: _Entry, msg: Any, version: ProtocolVersion) -> bytes:
    number, encoder, only_in = entry
    if only_in is not None and version is not only_in:
        raise ProtocolError(f"{type(msg).__name__} is not part of protocol {version}")
    body = encoder(msg, version)
    return _MESSAGE_KEYS[number] + uvarint(len(body)) + body


# --- bodies of consensus types ---------------------------------------------------------


def timestamp_body(ts: Timestamp) -> bytes:
    """The encoded google.protobuf.Timestamp (seconds, nanos; zeros left out)."""
    seconds = ts.seconds
    nanos = ts.nanos
    if seconds == GO_ZERO_TIME_SECONDS and nanos == 0:
        return _ZERO_TIME_BODY
    if not GO_ZERO_TIME_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        raise ProtocolError(f"timestamp seconds {seconds} outside years 1-9999")
    if not 0 <= nanos < 1_000_000_000:
        raise ProtocolError(f"timestamp nanos {nanos} outside 0-999999999")
    out = b"\x08" + int64_varint(seconds) if seconds else b""
    return out + b"\x10" + int32_varint(nanos) if nanos else out


def _block_id_body(block_id: BlockId) -> bytes:
    header = block_id.part_set_header
    header_body = b"\x08" + uint32_varint(header.total) if header.total else b""
    if header.hash:
        header_body += len_field(b"\x12", header.hash)
    out = len_field(b"\x0a", block_id.hash) if block_id.hash else b""
    return out + b"\x12" + uvarint(len(header_body)) + header_body


def vote_body(vote: Vote, extensions: bool) -> bytes:
    """The encoded tendermint.types.Vote; fields 9/10 only when ``extensions``."""
    parts = []
    if vote.type:
        parts.append(b"\x08" + int32_varint(vote.type))
    if vote.height:
        parts.append(b"\x10" + int64_varint(vote.height))
    if vote.round:
        parts.append(b"\x18" + int32_varint(vote.round))
    parts.append(len_field(b"\x22", _block_id_body(vote.block_id)))
    parts.append(len_field(b"\x2a", timestamp_body(vote.timestamp)))
    if vote.validator_address:
        parts.append(len_field(b"\x32", vote.validator_address))
    if vote.validator_index:
        parts.append(b"\x38" + int32_varint(vote.validator_index))
    if vote.signature:
        parts.append(len_field(b"\x42", vote.signature))
    if extensions:
        if vote.extension:
            parts.append(len_field(b"\x4a", vote.extension))
        if vote.extension_signature:
            parts.append(len_field(b"\x52", vote.extension_signature))
    return b"".join(parts)


def proposal_body(proposal: Proposal) -> bytes:
    """The encoded tendermint.types.Proposal."""
    parts = []
    if proposal.type:
        parts.append(b"\x08" + int32_varint(proposal.type))
    if proposal.height:
        parts.append(b"\x10" + int64_varint(proposal.height))
    if proposal.round:
        parts.append(b"\x18" + int32_varint(proposal.round))
    if proposal.pol_round:
        parts.append(b"\x20" + int32_varint(proposal.pol_round))
    parts.append(len_field(b"\x2a", _block_id_body(proposal.block_id)))
    parts.append(len_field(b"\x32", timestamp_body(proposal.timestamp)))
    if proposal.signature:
        parts.append(len_field(b"\x3a", proposal.signature))
    return b"".join(parts)


def _error_field(error: RemoteSignerError | None) -> bytes:
    """Field 2 of every response: the RemoteSignerError, when there is one."""
    if error is None:
        return b""
    body = b"\x08" + int32_varint(error.code) if error.code else b""
    if error.description:
        body += len_field(b"\x12", error.description.encode())
    return len_field(b"\x12", body)


def _str_field(field_key: bytes, text: str) -> bytes:
    return len_field(field_key, text.encode()) if text else b""


def _bytes_field(field_key: bytes, data: bytes) -> bytes:
    return len_field(field_key, data) if data else b""


# --- request bodies --------------------------------------------------------------------


def _pub_key_request(req: PubKeyRequest, version: ProtocolVersion) -> bytes:
    return _str_field(b"\x0a", req.chain_id)


def _sign_vote_request(req: SignVoteRequest, version: ProtocolVersion) -> bytes:
    out = len_field(b"\x0a", vote_body(req.vote, _EXTENSIONS[version]))
    out += _str_field(b"\x12", req.chain_id)
    if req.skip_extension_signing and version is _V1:
        out += b"\x18\x01"
    return out


def _sign_proposal_request(req: SignProposalRequest, version: ProtocolVersion) -> bytes:
    return len_field(b"\x0a", proposal_body(req.proposal)) + _str_field(b"\x12", req.chain_id)


def _empty(msg: PingRequest | PingResponse, version: ProtocolVersion) -> bytes:
    return b""


def _sign_bytes_request(req: SignBytesRequest, version: ProtocolVersion) -> bytes:
    return _bytes_field(b"\x0a", req.value)


def _sign_raw_bytes_request(req: SignRawBytesRequest, version: ProtocolVersion) -> bytes:
    return (
        _str_field(b"\x0a", req.chain_id)
        + _bytes_field(b"\x12", req.raw_bytes)
        + _str_field(b"\x1a", req.unique_id)
    )


# --- response bodies -------------------------------------------------------------------


def _pub_key_response(resp: PubKeyResponse, version: ProtocolVersion) -> bytes:
    key_ = resp.pub_key
    if version is _V1:
        out = _error_field(resp.error)
        if key_ is not None:
            out += _bytes_field(b"\x1a", key_.data) + _str_field(b"\x22", key_.type)
        return out
    if key_ is None:
        key_body = b""
    else:
        member = _PUBLIC_KEY_KEYS.get(key_.type)
        if member is None:
            raise ProtocolError(f"unknown public key type {key_.type!r}")
        key_body = len_field(member, key_.data)
    return len_field(b"\x0a", key_body) + _error_field(resp.error)


def _signed_vote_response(resp: SignedVoteResponse, version: ProtocolVersion) -> bytes:
    vote = empty_vote() if resp.vote is None else resp.vote
    return len_field(b"\x0a", vote_body(vote, _EXTENSIONS[version])) + _error_field(resp.error)


def _signed_proposal_response(resp: SignedProposalResponse, version: ProtocolVersion) -> bytes:
    proposal = empty_proposal() if resp.proposal is None else resp.proposal
    return len_field(b"\x0a", proposal_body(proposal)) + _error_field(resp.error)


def _signature_response(
    resp: SignBytesResponse | SignedRawBytesResponse, version: ProtocolVersion
) -> bytes:
    return _bytes_field(b"\x0a", resp.signature) + _error_field(resp.error)


_REQUESTS: dict[type, _Entry] = {
    PubKeyRequest: (1, _pub_key_request, None),
    SignVoteRequest: (3, _sign_vote_request, None),
    SignProposalRequest: (5, _sign_proposal_request, None),
    PingRequest: (7, _empty, None),
    SignBytesRequest: (9, _sign_bytes_request, _V1),
    SignRawBytesRequest: (9, _sign_raw_bytes_request, _CELESTIA),
}
_RESPONSES: dict[type, _Entry] = {
    PubKeyResponse: (2, _pub_key_response, None),
    SignedVoteResponse: (4, _signed_vote_response, None),
    SignedProposalResponse: (6, _signed_proposal_response, None),
    PingResponse: (8, _empty, None),
    SignBytesResponse: (10, _signature_response, _V1),
    SignedRawBytesResponse: (10, _signature_response, _CELESTIA),
}
