"""The hand-written privval codec: round trips, malformed input, version rules."""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.errors import ProtocolError
from kms.protocol.codec import decode_request, decode_response, encode_request, encode_response
from kms.protocol.encoding import vote_body
from kms.protocol.messages import (
    ZERO_TIME,
    BlockId,
    PingRequest,
    PingResponse,
    PubKeyRequest,
    PubKeyResponse,
    PublicKey,
    SignBytesRequest,
    SignBytesResponse,
    SignedRawBytesResponse,
    SignedVoteResponse,
    SignRawBytesRequest,
    SignVoteRequest,
    Timestamp,
    Vote,
)
from kms.protocol.version import ProtocolVersion
from kms.protocol.wire import uvarint
from tests.support.strategies import ALL_VERSIONS, as_decoded, requests, responses, votes

V = ProtocolVersion


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited field (used to build Messages by hand)."""
    return uvarint(number << 3 | 2) + uvarint(len(body)) + body


def _vote(**changes: Any) -> Vote:
    base = Vote(2, 10, 1, BlockId(b"\x11" * 32), Timestamp(1_700_000_000, 5), b"\x22" * 20, 3)
    return attrs.evolve(base, **changes)


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
@given(data=st.data())
def test_requests_round_trip(version: ProtocolVersion, data: st.DataObject) -> None:
    """typed -> bytes -> typed gives the same request, for every kind in every version."""
    req = data.draw(requests(version))
    assert decode_request(encode_request(req, version), version) == req


@pytest.mark.parametrize("version", ALL_VERSIONS)
@given(data=st.data())
def test_responses_round_trip(version: ProtocolVersion, data: st.DataObject) -> None:
    """typed -> bytes -> typed gives the same response (None vote/proposal -> Go's empty)."""
    resp = data.draw(responses(version))
    assert decode_response(encode_response(resp, version), version) == as_decoded(resp)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@given(data=st.data())
def test_reencoding_decoded_bytes_is_stable(version: ProtocolVersion, data: st.DataObject) -> None:
    """Decoding then re-encoding our own output reproduces it byte for byte."""
    raw = encode_response(data.draw(responses(version)), version)
    assert encode_response(decode_response(raw, version), version) == raw


# --- any bytes: a message or ProtocolError, nothing else -------------------------------


@st.composite
def mangled_messages(draw: st.DrawFn, version: ProtocolVersion) -> bytes:
    """A valid request or response encoding with a few random edits applied."""
    if draw(st.booleans()):
        raw = bytearray(encode_request(draw(requests(version)), version))
    else:
        raw = bytearray(encode_response(draw(responses(version)), version))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "cut", "insert", "delete"]))
        at = draw(st.integers(0, len(raw)))
        if op == "set" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:]
        elif op == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif at < len(raw):
            del raw[at]
    return bytes(raw)


def _decode_or_protocol_error(raw: bytes, version: ProtocolVersion) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(ProtocolError):
            decode(raw, version)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@given(raw=st.binary(max_size=300))
def test_random_bytes_decode_or_raise_protocol_error(version: ProtocolVersion, raw: bytes) -> None:
    """Arbitrary bytes never raise anything but ProtocolError."""
    _decode_or_protocol_error(raw, version)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@given(data=st.data())
def test_mangled_messages_decode_or_raise_protocol_error(
    version: ProtocolVersion, data: st.DataObject
) -> None:
    """Valid messages with random edits never raise anything but ProtocolError."""
    _decode_or_protocol_error(data.draw(mangled_messages(version)), version)


# --- the Message oneof -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "nothing known"),
        (_field(11, b""), "nothing known"),
        (b"\x3a\x00\x42\x00", "more than one"),
        (b"\x3a", "ends inside"),
        (b"\x3a\x05\x00", "runs past the end"),
        (b"\x0a\x03\x0a\x02a", "runs past the end"),  # chain_id one byte short
        (b"\x38\x00", "wire type"),
        (b"\x00\x00", "field number 0"),
        (b"\x3a\x00\x8f", "truncated varint"),
    ],
)
def test_malformed_messages(raw: bytes, reason: str) -> None:
    """Empty, unknown-only, doubled, truncated and mistyped Messages are ProtocolErrors."""
    with pytest.raises(ProtocolError, match=reason):
        decode_request(raw, V.V0_38)


def test_wrong_direction_is_refused() -> None:
    """A response where a request is expected, and the reverse, are ProtocolErrors."""
    with pytest.raises(ProtocolError, match="ping_response is a response"):
        decode_request(encode_response(PingResponse(), V.V0_38), V.V0_38)
    with pytest.raises(ProtocolError, match="ping_request is a request"):
        decode_response(encode_request(PingRequest(), V.V0_38), V.V0_38)
    with pytest.raises(ProtocolError, match="not a request"):
        encode_request(PingResponse(), V.V0_38)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="not a response"):
        encode_response(PingRequest(), V.V0_38)  # type: ignore[arg-type]


def test_fields_9_and_10_mean_what_the_version_says() -> None:
    """The same bytes are SignBytesRequest in v1, SignRawBytesRequest in Celestia, nothing else
    elsewhere."""
    raw = _field(9, b"\x0a\x01A\x12\x02hi\x1a\x01u")
    assert decode_request(raw, V.V1) == SignBytesRequest(b"A")
    assert decode_request(raw, V.CELESTIA) == SignRawBytesRequest("A", b"hi", "u")
    for version in (V.V0_34, V.V0_37, V.V0_38):
        with pytest.raises(ProtocolError, match="nothing known"):
            decode_request(raw, version)
    reply = _field(10, b"\x0a\x02sg")
    assert decode_response(reply, V.V1) == SignBytesResponse(b"sg")
    assert decode_response(reply, V.CELESTIA) == SignedRawBytesResponse(b"sg")
    with pytest.raises(ProtocolError, match=r"not part of protocol v0\.38"):
        encode_request(SignBytesRequest(b"A"), V.V0_38)
    with pytest.raises(ProtocolError, match="not part of protocol v1"):
        encode_response(SignedRawBytesResponse(b"sg"), V.V1)


def test_sign_requests_without_vote_or_proposal_are_refused() -> None:
    """The node always sends the vote/proposal; a request without one is malformed."""
    with pytest.raises(ProtocolError, match="no vote"):
        decode_request(_field(3, b"\x12\x01c"), V.V0_38)
    with pytest.raises(ProtocolError, match="no proposal"):
        decode_request(_field(5, b"\x12\x01c"), V.V0_38)


def test_absent_vote_in_a_response_decodes_as_none() -> None:
    """A response body without field 1 (not what Go sends) gives vote None."""
    assert decode_response(_field(4, b""), V.V0_38) == SignedVoteResponse(None)


# --- unknown fields, wire types, integer and string edge cases -------------------------


UNKNOWN_FIELDS = (
    b"\xa0\x01\x96\x01"  # field 20, varint 150
    + b"\xa9\x01"
    + b"\x01" * 8  # field 21, fixed64
    + _field(22, b"\xff\x00junk")  # field 22, length-delimited
    + b"\xbb\x01\x08\x01\xc3\x01\x10\x02\xc4\x01\xbc\x01"  # group 23 holding group 24
    + b"\xcd\x01"
    + b"\x02" * 4  # field 25, fixed32
)


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    """Varint, fixed64, bytes, (nested) groups and fixed32 unknown fields change nothing."""
    version = V.V0_38
    req = SignVoteRequest(_vote(extension=b"e"), "chain")
    body = vote_body(req.vote, extensions=True)
    assert decode_request(_field(3, _field(1, body) + b"\x12\x05chain"), version) == req
    padded = _field(3, _field(1, UNKNOWN_FIELDS + body + UNKNOWN_FIELDS) + b"\x12\x05chain")
    assert decode_request(UNKNOWN_FIELDS + padded + UNKNOWN_FIELDS, version) == req


@pytest.mark.parametrize(
    "bad",
    [
        b"\xbb\x01\x08\x01",  # group 23 never closed
        b"\xbb\x01\xc4\x01",  # group 23 closed as 24
        b"\xbc\x01",  # end of a group never opened
        b"\xa6\x01",  # wire type 6
        b"\xa9\x01\x00",  # fixed64 cut short
    ],
)
def test_broken_unknown_fields_are_protocol_errors(bad: bytes) -> None:
    """Unknown fields must still be well-formed."""
    with pytest.raises(ProtocolError):
        decode_request(b"\x3a\x00" + bad, V.V0_38)


def test_known_field_with_wrong_wire_type_is_refused() -> None:
    """Vote.height (2) sent as bytes is an error, as in Go."""
    with pytest.raises(ProtocolError, match="field 2 has wire type 2"):
        decode_request(_field(3, _field(1, _field(2, b"x"))), V.V0_38)


def test_negative_int32_is_ten_bytes_and_decodes_back() -> None:
    """round = -1 is written like Go (ten bytes) and read back as -1."""
    raw = encode_request(SignVoteRequest(_vote(round=-1), ""), V.V0_38)
    assert b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01" in raw
    decoded = decode_request(raw, V.V0_38)
    assert isinstance(decoded, SignVoteRequest) and decoded.vote.round == -1


def test_int32_fields_keep_the_low_32_bits_like_go() -> None:
    """A five-byte varint 0xffffffff in an int32 field is -1, as Go's int32() cast gives."""
    raw = _field(3, _field(1, b"\x18\xff\xff\xff\xff\x0f"))
    decoded = decode_request(raw, V.V0_38)
    assert isinstance(decoded, SignVoteRequest) and decoded.vote.round == -1


def test_absent_timestamp_and_block_id_mean_go_zero_values() -> None:
    """A vote without timestamp/block_id decodes to Go's zero time and the nil block ID."""
    decoded = decode_request(_field(3, _field(1, b"\x10\x05")), V.V0_38)
    assert isinstance(decoded, SignVoteRequest)
    assert decoded.vote.timestamp == ZERO_TIME
    assert decoded.vote.block_id == BlockId() and decoded.vote.block_id.is_nil()
    epoch = decode_request(_field(3, _field(1, b"\x2a\x00")), V.V0_38)
    assert isinstance(epoch, SignVoteRequest) and epoch.vote.timestamp == Timestamp(0, 0)


@pytest.mark.parametrize(
    "timestamp_body",
    [
        b"\x10\x80\x94\xeb\xdc\x03",  # nanos = 1e9
        b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # nanos = -1
        b"\x08\xff\x91\xb8\xc3\x98\xfe\xff\xff\xff\x01",  # one second before year 1
        b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # 2**56 seconds
    ],
)
def test_out_of_range_timestamps_are_refused(timestamp_body: bytes) -> None:
    """Go's time conversion rejects these; so do we (and we never encode them)."""
    with pytest.raises(ProtocolError, match="timestamp"):
        decode_request(_field(3, _field(1, _field(5, timestamp_body))), V.V0_38)


def test_invalid_utf8_chain_id_is_a_protocol_error() -> None:
    """String fields must be UTF-8; the error is ProtocolError, not UnicodeDecodeError."""
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode_request(_field(1, _field(1, b"\xff\xfe")), V.V0_38)


def test_encoding_refuses_out_of_range_integers_and_unknown_key_types() -> None:
    """Values Go could not hold, and key types PublicKey has no member for, are refused."""
    with pytest.raises(ProtocolError, match="int32"):
        encode_request(SignVoteRequest(_vote(round=2**31), ""), V.V0_38)
    with pytest.raises(ProtocolError, match="int64"):
        encode_request(SignVoteRequest(_vote(height=-(2**63) - 1), ""), V.V0_38)
    with pytest.raises(ProtocolError, match="nanos"):
        encode_request(SignVoteRequest(_vote(timestamp=Timestamp(0, -1)), ""), V.V0_38)
    with pytest.raises(ProtocolError, match="unknown public key type"):
        encode_response(PubKeyResponse(PublicKey("rsa", b"k")), V.V0_38)
    v1 = encode_response(PubKeyResponse(PublicKey("rsa", b"k")), V.V1)
    assert decode_response(v1, V.V1) == PubKeyResponse(PublicKey("rsa", b"k"))


# --- version projections ---------------------------------------------------------------


@given(vote=votes(extensions=True))
def test_vote_extensions_do_not_exist_before_v038(vote: Vote) -> None:
    """v0.34/v0.37 never write (and ignore) Vote fields 9/10; v0.38+ keep them."""
    without = attrs.evolve(vote, extension=b"", extension_signature=b"")
    for version in (V.V0_34, V.V0_37):
        raw = encode_response(SignedVoteResponse(vote), version)
        assert raw == encode_response(SignedVoteResponse(without), version)
        assert decode_response(raw, version) == SignedVoteResponse(without)
    for version in (V.V0_38, V.V1, V.CELESTIA):
        raw = encode_response(SignedVoteResponse(vote), version)
        assert decode_response(raw, version) == SignedVoteResponse(vote)
        assert decode_response(raw, V.V0_37) == SignedVoteResponse(without)


def test_skip_extension_signing_exists_in_v1_only() -> None:
    """The flag is field 3 of v1's SignVoteRequest; earlier versions neither send nor read it."""
    req = SignVoteRequest(_vote(), "c", skip_extension_signing=True)
    v1 = encode_request(req, V.V1)
    assert v1.endswith(b"\x18\x01")
    assert decode_request(v1, V.V1) == req
    assert decode_request(v1, V.V0_38) == attrs.evolve(req, skip_extension_signing=False)
    unflagged = attrs.evolve(req, skip_extension_signing=False)
    assert encode_request(req, V.V0_38) == encode_request(unflagged, V.V1) != v1


def test_decoder_accepts_bytearray_and_memoryview() -> None:
    """Transports may hand over a bytearray or memoryview; the result holds real bytes."""
    raw = encode_request(PubKeyRequest("chain"), V.V0_38)
    for view in (bytearray(raw), memoryview(raw)):
        assert decode_request(view, V.V0_38) == PubKeyRequest("chain")  # type: ignore[arg-type]


def test_large_sign_bytes_request_round_trips() -> None:
    """A 1 MiB SignBytesRequest (v1) decodes in full."""
    value = bytes(range(256)) * 4096
    raw = encode_request(SignBytesRequest(value), V.V1)
    assert decode_request(raw, V.V1) == SignBytesRequest(value)
