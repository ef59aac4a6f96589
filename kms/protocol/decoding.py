"""Decoding privval ``Message`` bytes into typed messages (the signer's hot path).

Each message body is scanned once with ``wire.scan`` against a per-version schema, so
fields a version does not know (Vote 9/10 before v0.38, skip_extension_signing before
v1, Message 9/10 outside v1 and Celestia) are skipped like any unknown field, just as
that version's Go code would. Every malformed input raises ProtocolError.
"""

from __future__ import annotations

from kms.errors import ProtocolError
from kms.protocol.messages import (
    EMPTY_PART_SET_HEADER,
    GO_ZERO_TIME_SECONDS,
    MAX_TIMESTAMP_SECONDS,
    NIL_BLOCK_ID,
    PUBLIC_KEY_TYPES,
    ZERO_TIME,
    BlockId,
    PartSetHeader,
    PingRequest,
    PingResponse,
    Proposal,
    PubKeyRequest,
    PubKeyResponse,
    PublicKey,
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
)
from kms.protocol.version import ProtocolVersion
from kms.protocol.wire import LEN, VARINT, scan, to_int32, to_int64, to_str, to_uint32

MESSAGE_NAMES = {
    1: "pub_key_request",
    2: "pub_key_response",
    3: "sign_vote_request",
    4: "signed_vote_response",
    5: "sign_proposal_request",
    6: "signed_proposal_response",
    7: "ping_request",
    8: "ping_response",
    9: "sign_bytes_request",
    10: "sign_bytes_response",
}
CELESTIA_NAMES = {9: "sign_raw_bytes_request", 10: "signed_raw_bytes_response"}

_MESSAGE_V0 = {n: LEN for n in range(1, 9)}
_MESSAGE_V1 = {n: LEN for n in range(1, 11)}
_VOTE_V034 = {1: VARINT, 2: VARINT, 3: VARINT, 4: LEN, 5: LEN, 6: LEN, 7: VARINT, 8: LEN}
_VOTE_V038 = {**_VOTE_V034, 9: LEN, 10: LEN}
_PROPOSAL = {1: VARINT, 2: VARINT, 3: VARINT, 4: VARINT, 5: LEN, 6: LEN, 7: LEN}
_BLOCK_ID = {1: LEN, 2: LEN}
_PART_SET_HEADER = {1: VARINT, 2: LEN}
_TIMESTAMP = {1: VARINT, 2: VARINT}
_ERROR = {1: VARINT, 2: LEN}
_ONE_STRING = {1: LEN}
_CHAIN_REQUEST = {1: LEN, 2: LEN}
_SIGN_VOTE_V1 = {1: LEN, 2: LEN, 3: VARINT}
_TRIPLE_LEN = {1: LEN, 2: LEN, 3: LEN}
_PUB_KEY_V1 = {2: LEN, 3: LEN, 4: LEN}
_PUBLIC_KEY = {n: LEN for n in range(1, len(PUBLIC_KEY_TYPES) + 1)}
_NOTHING: dict[int, int] = {}

_EXTENSIONS = {v: v.has_vote_extensions for v in ProtocolVersion}
_V1 = ProtocolVersion.V1
_CELESTIA = ProtocolVersion.CELESTIA
_EPOCH = Timestamp(0, 0)


def decode_request(data: bytes, version: ProtocolVersion) -> Request:
    """Decode one ``Message`` (no length prefix) that the node sent to the signer."""
    number, body = _unwrap(data, version)
    if number == 3:
        return _sign_vote_request(body, version)
    if number == 5:
        fields = scan(body, _CHAIN_REQUEST)
        proposal = fields.get(1)
        if proposal is None:
            raise ProtocolError("SignProposalRequest carries no proposal")
        return SignProposalRequest(_proposal(proposal), to_str(fields.get(2, b"")))
    if number == 7:
        scan(body, _NOTHING)
        return PingRequest()
    if number == 1:
        return PubKeyRequest(to_str(scan(body, _ONE_STRING).get(1, b"")))
    if number == 9:
        if version is _V1:
            return SignBytesRequest(scan(body, _ONE_STRING).get(1, b""))
        fields = scan(body, _TRIPLE_LEN)
        return SignRawBytesRequest(
            to_str(fields.get(1, b"")), fields.get(2, b""), to_str(fields.get(3, b""))
        )
    raise ProtocolError(f"{_name(number, version)} is a response; expected a request")


def decode_response(data: bytes, version: ProtocolVersion) -> Response:
    """Decode one ``Message`` (no length prefix) that the signer sent to the node."""
    number, body = _unwrap(data, version)
    if number == 4:
        fields = scan(body, _CHAIN_REQUEST)
        vote = fields.get(1)
        return SignedVoteResponse(
            None if vote is None else _vote(vote, _EXTENSIONS[version]), _error(fields)
        )
    if number == 6:
        fields = scan(body, _CHAIN_REQUEST)
        proposal = fields.get(1)
        return SignedProposalResponse(
            None if proposal is None else _proposal(proposal), _error(fields)
        )
    if number == 8:
        scan(body, _NOTHING)
        return PingResponse()
    if number == 2:
        return _pub_key_response(body, version)
    if number == 10:
        fields = scan(body, _CHAIN_REQUEST)
        if version is _V1:
            return SignBytesResponse(fields.get(1, b""), _error(fields))
        return SignedRawBytesResponse(fields.get(1, b""), _error(fields))
    raise ProtocolError(f"{_name(number, version)} is a request; expected a response")


def _unwrap(data: bytes, version: ProtocolVersion) -> tuple[int, bytes]:
    """Return the oneof field number and body of a Message."""
    if type(data) is not bytes:
        data = bytes(data)
    fields = scan(data, _MESSAGE_V1 if version is _V1 or version is _CELESTIA else _MESSAGE_V0)
    if len(fields) != 1:
        if not fields:
            raise ProtocolError(f"Message carries nothing known to protocol {version}")
        names = ", ".join(_name(n, version) for n in sorted(fields))
        raise ProtocolError(f"Message carries more than one message: {names}")
    return next(iter(fields.items()))


def _name(number: int, version: ProtocolVersion) -> str:
    if version is _CELESTIA and number in CELESTIA_NAMES:
        return CELESTIA_NAMES[number]
    return MESSAGE_NAMES[number]


def _sign_vote_request(body: bytes, version: ProtocolVersion) -> SignVoteRequest:
    if version is _V1:
        fields = scan(body, _SIGN_VOTE_V1)
        skip = bool(fields.get(3, 0))
    else:
        fields = scan(body, _CHAIN_REQUEST)
        skip = False
    vote = fields.get(1)
    if vote is None:
        raise ProtocolError("SignVoteRequest carries no vote")
    return SignVoteRequest(_vote(vote, _EXTENSIONS[version]), to_str(fields.get(2, b"")), skip)


def _vote(body: bytes, extensions: bool) -> Vote:
    get = scan(body, _VOTE_V038 if extensions else _VOTE_V034).get
    block_id = get(4)
    timestamp = get(5)
    return Vote(
        to_int32(get(1, 0)),
        to_int64(get(2, 0)),
        to_int32(get(3, 0)),
        NIL_BLOCK_ID if block_id is None else _block_id(block_id),
        ZERO_TIME if timestamp is None else _timestamp(timestamp),
        get(6, b""),
        to_int32(get(7, 0)),
        get(8, b""),
        get(9, b""),
        get(10, b""),
    )


def _proposal(body: bytes) -> Proposal:
    get = scan(body, _PROPOSAL).get
    block_id = get(5)
    timestamp = get(6)
    return Proposal(
        to_int32(get(1, 0)),
        to_int64(get(2, 0)),
        to_int32(get(3, 0)),
        to_int32(get(4, 0)),
        NIL_BLOCK_ID if block_id is None else _block_id(block_id),
        ZERO_TIME if timestamp is None else _timestamp(timestamp),
        get(7, b""),
    )


def _block_id(body: bytes) -> BlockId:
    fields = scan(body, _BLOCK_ID)
    header = fields.get(2)
    if header is None:
        part_set_header = EMPTY_PART_SET_HEADER
    else:
        header_fields = scan(header, _PART_SET_HEADER)
        part_set_header = PartSetHeader(
            to_uint32(header_fields.get(1, 0)), header_fields.get(2, b"")
        )
    return BlockId(fields.get(1, b""), part_set_header)


def _timestamp(body: bytes) -> Timestamp:
    """Decode a Timestamp, refusing what Go's time conversion refuses."""
    if not body:
        return _EPOCH
    fields = scan(body, _TIMESTAMP)
    seconds = to_int64(fields.get(1, 0))
    nanos = to_int32(fields.get(2, 0))
    if not GO_ZERO_TIME_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        raise ProtocolError(f"timestamp seconds {seconds} outside years 1-9999")
    if not 0 <= nanos < 1_000_000_000:
        raise ProtocolError(f"timestamp nanos {nanos} outside 0-999999999")
    return Timestamp(seconds, nanos)


def _error(fields: dict[int, bytes]) -> RemoteSignerError | None:
    """The optional RemoteSignerError in field 2 of a response body."""
    body = fields.get(2)
    if body is None:
        return None
    error = scan(body, _ERROR)
    return RemoteSignerError(to_int32(error.get(1, 0)), to_str(error.get(2, b"")))


def _pub_key_response(body: bytes, version: ProtocolVersion) -> PubKeyResponse:
    if version is _V1:
        fields = scan(body, _PUB_KEY_V1)
        data = fields.get(3, b"")
        key_type = to_str(fields.get(4, b""))
        key = PublicKey(key_type, data) if data or key_type else None
        return PubKeyResponse(key, _error(fields))
    fields = scan(body, _CHAIN_REQUEST)
    key_body = fields.get(1)
    key = None
    if key_body is not None:
        members = scan(key_body, _PUBLIC_KEY)
        if len(members) > 1:
            raise ProtocolError("PublicKey sets more than one key type")
        for number, data in members.items():
            key = PublicKey(PUBLIC_KEY_TYPES[number - 1], data)
    return PubKeyResponse(key, _error(fields))
