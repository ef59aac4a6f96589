"""The hand codec against the independent oracle: betterproto classes generated from our .proto.

For every request and response kind in every version, and for the canonical sign-bytes
messages: our bytes equal betterproto's, our decoder reads betterproto's bytes back to the
same typed value, and betterproto parses our bytes into the message it would have built.
Values are limited to what betterproto represents exactly (see oracle_timestamps).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import betterproto
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.proto.gen.celestia import privval as celestia_privval
from kms.proto.gen.cometbft.privval import v1 as cometbft_v1
from kms.proto.gen.tendermint import crypto, p2p, types
from kms.proto.gen.tendermint import privval as pv
from kms.protocol.codec import decode_request, decode_response, encode_request, encode_response
from kms.protocol.messages import (
    BlockId,
    PingRequest,
    PingResponse,
    Proposal,
    PubKeyRequest,
    PubKeyResponse,
    RemoteSignerError,
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
from kms.protocol.signbytes import (
    RAW_BYTES_PREFIX,
    proposal_sign_bytes,
    raw_bytes_sign_bytes,
    vote_extension_sign_bytes,
    vote_sign_bytes,
)
from kms.protocol.version import ProtocolVersion
from kms.protocol.wire import uvarint
from tests.support.strategies import (
    ALL_VERSIONS,
    as_decoded,
    block_ids,
    oracle_timestamps,
    proposals,
    requests,
    responses,
    texts,
    votes,
)
from tests.support.vectors import load_vectors, vector_checked

V = ProtocolVersion

# Our key type names -> the PublicKey oneof member names in the generated class.
KEY_MEMBERS = {
    "ed25519": "ed25519",
    "secp256k1": "secp256_k1",
    "bls12_381": "bls12381",
    "ml_dsa_65": "mldsa65",
    "secp256k1eth": "secp256_k1_eth",
}


def _module(version: ProtocolVersion) -> Any:
    """The generated privval package whose Message matches ``version``."""
    if version is V.V1:
        return cometbft_v1
    return celestia_privval if version is V.CELESTIA else pv


def _time(ts: Timestamp) -> Any:
    return betterproto.DATETIME_ZERO + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def _block_id(block_id: BlockId) -> types.BlockId:
    header = block_id.part_set_header
    # Explicit arguments make betterproto write the (possibly empty) nested messages, as Go does.
    return types.BlockId(
        hash=block_id.hash,
        part_set_header=types.PartSetHeader(total=header.total, hash=header.hash),
    )


def _vote(vote: Vote) -> types.Vote:
    return types.Vote(
        type=vote.type,
        height=vote.height,
        round=vote.round,
        block_id=_block_id(vote.block_id),
        timestamp=_time(vote.timestamp),
        validator_address=vote.validator_address,
        validator_index=vote.validator_index,
        signature=vote.signature,
        extension=vote.extension,
        extension_signature=vote.extension_signature,
    )


def _proposal(proposal: Proposal) -> types.Proposal:
    return types.Proposal(
        type=proposal.type,
        height=proposal.height,
        round=proposal.round,
        pol_round=proposal.pol_round,
        block_id=_block_id(proposal.block_id),
        timestamp=_time(proposal.timestamp),
        signature=proposal.signature,
    )


def _error(module: Any, error: RemoteSignerError | None) -> Any:
    if error is None:
        return None
    cls = pv.RemoteSignerError if module is celestia_privval else module.RemoteSignerError
    return cls(code=error.code, description=error.description)


def oracle_request(req: Any, version: ProtocolVersion) -> Any:
    """The betterproto Message for a typed request."""
    m = _module(version)
    base = pv if m is celestia_privval else m  # celestia reuses tendermint.privval for 1-8
    if isinstance(req, PubKeyRequest):
        return m.Message(pub_key_request=base.PubKeyRequest(chain_id=req.chain_id))
    if isinstance(req, SignVoteRequest):
        extra = {"skip_extension_signing": req.skip_extension_signing} if m is cometbft_v1 else {}
        body = base.SignVoteRequest(vote=_vote(req.vote), chain_id=req.chain_id, **extra)
        return m.Message(sign_vote_request=body)
    if isinstance(req, SignProposalRequest):
        body = base.SignProposalRequest(proposal=_proposal(req.proposal), chain_id=req.chain_id)
        return m.Message(sign_proposal_request=body)
    if isinstance(req, PingRequest):
        return m.Message(ping_request=base.PingRequest())
    if isinstance(req, SignBytesRequest):
        return m.Message(sign_bytes_request=m.SignBytesRequest(value=req.value))
    assert isinstance(req, SignRawBytesRequest)
    body = m.SignRawBytesRequest(
        chain_id=req.chain_id, raw_bytes=req.raw_bytes, unique_id=req.unique_id
    )
    return m.Message(sign_raw_bytes_request=body)


def oracle_response(resp: Any, version: ProtocolVersion) -> Any:
    """The betterproto Message for a typed response (as Go would write it)."""
    m = _module(version)
    base = pv if m is celestia_privval else m
    resp = as_decoded(resp)
    error = _error(m, getattr(resp, "error", None))
    if isinstance(resp, PubKeyResponse):
        key = resp.pub_key
        if m is cometbft_v1:
            body = m.PubKeyResponse(
                error=error,
                pub_key_bytes=b"" if key is None else key.data,
                pub_key_type="" if key is None else key.type,
            )
        else:
            # Go always writes pub_key; a parsed empty message makes betterproto write it too.
            member = crypto.PublicKey().parse(b"")
            if key is not None:
                member = crypto.PublicKey(**{KEY_MEMBERS[key.type]: key.data})
            body = base.PubKeyResponse(pub_key=member, error=error)
        return m.Message(pub_key_response=body)
    if isinstance(resp, SignedVoteResponse):
        body = base.SignedVoteResponse(vote=_vote(resp.vote), error=error)
        return m.Message(signed_vote_response=body)
    if isinstance(resp, SignedProposalResponse):
        body = base.SignedProposalResponse(proposal=_proposal(resp.proposal), error=error)
        return m.Message(signed_proposal_response=body)
    if isinstance(resp, PingResponse):
        return m.Message(ping_response=base.PingResponse())
    if isinstance(resp, SignBytesResponse):
        return m.Message(sign_bytes_response=m.SignBytesResponse(resp.signature, error))
    assert isinstance(resp, SignedRawBytesResponse)
    return m.Message(signed_raw_bytes_response=m.SignedRawBytesResponse(resp.signature, error))


def _content(value: Any) -> Any:
    """A betterproto message as plain data: its fields on the wire, unselected oneof members
    and unset nested messages left out. (betterproto's __eq__ tells an unset field from
    None, and its to_pydict trips over oneofs; neither fits a comparison of content.)"""
    if not isinstance(value, betterproto.Message):
        return value
    out = {}
    for name, meta in value._betterproto.meta_by_field_name.items():
        if meta.group and betterproto.which_one_of(value, meta.group)[0] != name:
            continue
        field = getattr(value, name)
        if field is None or (
            isinstance(field, betterproto.Message) and not betterproto.serialized_on_wire(field)
        ):
            continue
        out[name] = _content(field)
    return out


@pytest.mark.parametrize("version", ALL_VERSIONS)
@given(data=st.data())
def test_requests_match_the_oracle(version: ProtocolVersion, data: st.DataObject) -> None:
    """Requests: same bytes as betterproto; each side reads the other's bytes correctly."""
    req = data.draw(requests(version, oracle=True))
    oracle = oracle_request(req, version)
    ours = encode_request(req, version)
    assert ours == bytes(oracle)
    assert decode_request(bytes(oracle), version) == req
    assert _content(type(oracle)().parse(ours)) == _content(oracle)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@given(data=st.data())
def test_responses_match_the_oracle(version: ProtocolVersion, data: st.DataObject) -> None:
    """Responses: same bytes as betterproto; each side reads the other's bytes correctly."""
    resp = data.draw(responses(version, oracle=True))
    oracle = oracle_response(resp, version)
    ours = encode_response(resp, version)
    assert ours == bytes(oracle)
    assert decode_response(bytes(oracle), version) == as_decoded(resp)
    assert _content(type(oracle)().parse(ours)) == _content(oracle)


# --- canonical sign bytes --------------------------------------------------------------


def _delimited(message: Any) -> bytes:
    body = bytes(message)
    return uvarint(len(body)) + body


def _canonical_block_id(block_id: BlockId) -> types.CanonicalBlockId | None:
    if block_id.is_nil():
        return None
    header = block_id.part_set_header
    return types.CanonicalBlockId(
        hash=block_id.hash,
        part_set_header=types.CanonicalPartSetHeader(total=header.total, hash=header.hash),
    )


@given(vote=votes(extensions=True, oracle=True), chain_id=texts)
def test_vote_sign_bytes_match_the_oracle(vote: Vote, chain_id: str) -> None:
    """vote_sign_bytes and vote_extension_sign_bytes equal betterproto's Canonical* bytes."""
    canonical = types.CanonicalVote(
        type=vote.type,
        height=vote.height,
        round=vote.round,
        block_id=_canonical_block_id(vote.block_id),
        timestamp=_time(vote.timestamp),
        chain_id=chain_id,
    )
    assert vote_sign_bytes(chain_id, vote) == _delimited(canonical)
    extension = types.CanonicalVoteExtension(
        extension=vote.extension, height=vote.height, round=vote.round, chain_id=chain_id
    )
    assert vote_extension_sign_bytes(chain_id, vote) == _delimited(extension)


@given(proposal=proposals(oracle=True), chain_id=texts)
def test_proposal_sign_bytes_match_the_oracle(proposal: Proposal, chain_id: str) -> None:
    """proposal_sign_bytes equals betterproto's CanonicalProposal (type forced to 32)."""
    canonical = types.CanonicalProposal(
        type=types.SignedMsgType.PROPOSAL,
        height=proposal.height,
        round=proposal.round,
        pol_round=proposal.pol_round,
        block_id=_canonical_block_id(proposal.block_id),
        timestamp=_time(proposal.timestamp),
        chain_id=chain_id,
    )
    assert proposal_sign_bytes(chain_id, proposal) == _delimited(canonical)


@given(
    chain_id=st.text(min_size=1, max_size=30),
    raw=st.binary(min_size=1, max_size=200),
    unique_id=st.text(min_size=1, max_size=30),
)
def test_raw_bytes_envelope_matches_the_oracle(chain_id: str, raw: bytes, unique_id: str) -> None:
    """Celestia's envelope: the prefix, then the length-delimited SignRawBytesRequest."""
    req = SignRawBytesRequest(chain_id, raw, unique_id)
    oracle = celestia_privval.SignRawBytesRequest(
        chain_id=chain_id, raw_bytes=raw, unique_id=unique_id
    )
    assert raw_bytes_sign_bytes(req) == RAW_BYTES_PREFIX + _delimited(oracle)


@given(block_id=block_ids(), ts=oracle_timestamps())
def test_oracle_timestamps_and_block_ids_survive_betterproto(block_id: BlockId, ts: Any) -> None:
    """The adapters above lose nothing: betterproto gives back what it was given."""
    vote = types.Vote(block_id=_block_id(block_id), timestamp=_time(ts))
    parsed = types.Vote().parse(bytes(vote))
    assert parsed.block_id == vote.block_id
    assert parsed.timestamp == vote.timestamp


# --- the handshake messages the transport may use --------------------------------------


def test_handshake_messages_match_the_secret_connection_vectors() -> None:
    """Generated BytesValue / AuthSigMessage reproduce the derived handshake's wire bytes."""
    data = load_vectors("secret_connection.json")["derived_handshake"]
    first = bytes.fromhex(data["a_first_message_hex"])
    eph = bytes.fromhex(data["A"]["loc_eph_pub"])
    assert first == _delimited(betterproto.lib.google.protobuf.BytesValue(value=eph))
    for side in ("A", "B"):
        party = data[side]
        message = p2p.AuthSigMessage(
            pub_key=crypto.PublicKey(ed25519=bytes.fromhex(party["id_pub"])),
            sig=bytes.fromhex(party["sig"]),
        )
        assert _delimited(message).hex() == party["auth_wire"]
    vector_checked("secret_connection.json", 3)
