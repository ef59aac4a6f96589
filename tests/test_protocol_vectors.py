"""The privval codec, framing and sign bytes against the CometBFT golden vectors."""

from __future__ import annotations

from typing import Any

import pytest
from nacl.signing import SigningKey, VerifyKey

from kms.protocol.codec import decode_request, decode_response, encode_request, encode_response
from kms.protocol.delimited import FrameDecoder, frame
from kms.protocol.messages import (
    BlockId,
    PartSetHeader,
    PingRequest,
    PingResponse,
    Proposal,
    PubKeyRequest,
    PubKeyResponse,
    PublicKey,
    RemoteSignerError,
    SignedProposalResponse,
    SignedVoteResponse,
    SignProposalRequest,
    SignVoteRequest,
    Timestamp,
    Vote,
    empty_proposal,
    empty_vote,
)
from kms.protocol.signbytes import (
    proposal_sign_bytes,
    vote_extension_sign_bytes,
    vote_sign_bytes,
)
from kms.protocol.version import ProtocolVersion
from kms.protocol.wire import uvarint
from tests.support.vectors import load_vectors, vector_checked

MESSAGES = "privval_messages.json"
SIGN_BYTES = "sign_bytes.json"
V = ProtocolVersion
REQUEST_NAMES = {"ping request", "pubKey request", "Vote Request", "Proposal Request"}

# Which of our protocol versions each upstream vector group describes. Celestia speaks
# the v0.38 wire; v2.0.0-rc1-only vectors have no version here (checked separately).
GROUPS = {
    "tendermint v0.34.x": [V.V0_34],
    "cometbft v0.37.x": [V.V0_37],
    "cometbft v0.38.x": [V.V0_38, V.CELESTIA],
    "cometbft v1.0.x": [V.V1],
}


def _versions_of(vector: dict[str, Any]) -> list[ProtocolVersion]:
    return GROUPS.get(vector["versions"][0], [])


def _go_block_id(gi: dict[str, Any]) -> BlockId:
    b = gi["block_id"]
    header = PartSetHeader(b["part_set_header_total"], bytes.fromhex(b["part_set_header_hash_hex"]))
    return BlockId(bytes.fromhex(b["hash_hex"]), header)


def _go_vote(gi: dict[str, Any], which: str) -> Vote:
    v = gi[which]
    ts = gi["timestamp"]
    return Vote(
        type=v["type"],
        height=v["height"],
        round=v["round"],
        block_id=_go_block_id(gi),
        timestamp=Timestamp(ts["seconds"], ts["nanos"]),
        validator_address=bytes.fromhex(gi["validator_address"]["hex"]),
        validator_index=gi["validator_index"],
        extension=bytes.fromhex(v.get("extension_hex", "")),
    )


def _go_proposal(gi: dict[str, Any]) -> Proposal:
    p = gi["proposal"]
    ts = gi["timestamp"]
    return Proposal(
        type=p["type"],
        height=p["height"],
        round=p["round"],
        pol_round=p["pol_round"],
        block_id=_go_block_id(gi),
        timestamp=Timestamp(ts["seconds"], ts["nanos"]),
        signature=bytes.fromhex(p["signature_hex"]),
    )


def _expected_messages(gi: dict[str, Any], version: ProtocolVersion) -> dict[str, Any]:
    """The typed message each upstream vector name stands for, built from go_inputs."""
    vote = _go_vote(gi, "vote_v038_plus" if version.has_vote_extensions else "vote_v034_v037")
    error = RemoteSignerError(gi["remote_error"]["code"], gi["remote_error"]["description"])
    key = PublicKey(
        gi["pub_key"].get("pub_key_type_v1", "ed25519"), bytes.fromhex(gi["pub_key"]["pub_key_hex"])
    )
    return {
        "ping request": PingRequest(),
        "ping response": PingResponse(),
        "pubKey request": PubKeyRequest(""),
        "pubKey response": PubKeyResponse(key),
        "pubKey response with error": PubKeyResponse(None, error),
        "Vote Request": SignVoteRequest(vote, ""),
        "Vote Response": SignedVoteResponse(vote),
        "Vote Response with error": SignedVoteResponse(empty_vote(), error),
        "Proposal Request": SignProposalRequest(_go_proposal(gi), ""),
        "Proposal Response": SignedProposalResponse(_go_proposal(gi)),
        "Proposal Response with error": SignedProposalResponse(empty_proposal(), error),
    }


def test_upstream_message_vectors_decode_and_reencode_byte_identical() -> None:
    """Every upstream Message vector: decode to the go_inputs value, re-encode to the bytes."""
    data = load_vectors(MESSAGES)
    gi = data["go_inputs"]
    checked = 0
    for vector in data["upstream_vectors"]:
        raw = bytes.fromhex(vector["expected_hex"])
        for version in _versions_of(vector):
            expected = _expected_messages(gi, version)[vector["name"]]
            if vector["name"] in REQUEST_NAMES:
                decoded: Any = decode_request(raw, version)
                assert encode_request(decoded, version) == raw, vector["name"]
            else:
                decoded = decode_response(raw, version)
                assert encode_response(decoded, version) == raw, vector["name"]
            assert decoded == expected, (vector["name"], version)
        if _versions_of(vector):
            checked += 1
    assert checked == 44
    vector_checked(MESSAGES, checked)


def test_refusals_without_vote_or_proposal_encode_as_gos_empty_one() -> None:
    """A refusal the signer builds with vote/proposal None is byte-identical to Go's."""
    data = load_vectors(MESSAGES)
    gi = data["go_inputs"]
    error = RemoteSignerError(gi["remote_error"]["code"], gi["remote_error"]["description"])
    by_name = {"Vote Response with error": SignedVoteResponse(None, error)}
    by_name["Proposal Response with error"] = SignedProposalResponse(None, error)
    checked = 0
    for vector in data["upstream_vectors"]:
        if vector["name"] in by_name:
            for version in _versions_of(vector):
                raw = bytes.fromhex(vector["expected_hex"])
                assert encode_response(by_name[vector["name"]], version) == raw
            checked += 1
    assert checked == 8  # re-checks of vectors counted above: not counted again


def test_v2_non_rp_extension_vectors_decode_with_the_unknown_field_ignored() -> None:
    """v2.0.0-rc1 adds Vote field 11; v1 decoding skips it and keeps the rest intact."""
    data = load_vectors(MESSAGES)
    gi = data["go_inputs"]
    v2 = [v for v in data["upstream_vectors"] if v["versions"] == ["v2.0.0-rc1"]]
    assert len(v2) == 2
    vote = _go_vote(gi, "vote_v038_plus")
    for vector in v2:
        raw = bytes.fromhex(vector["expected_hex"])
        assert b"non-rp-extension" in raw
        if "Request" in vector["name"]:
            assert decode_request(raw, V.V1) == SignVoteRequest(vote, "")
        else:
            assert decode_response(raw, V.V1) == SignedVoteResponse(vote)
    vector_checked(MESSAGES, len(v2))


def test_bare_pub_key_response_body_vector() -> None:
    """The PubKeyResponse body vector is what sits inside our Message field 2."""
    data = load_vectors(MESSAGES)
    (vector,) = [v for v in data["upstream_vectors"] if "not wrapped" in v["name"]]
    body = bytes.fromhex(vector["expected_hex"])
    key = PublicKey("ed25519", bytes.fromhex(vector["inputs"]["pub_key_hex"]))
    for version in (V.V0_34, V.V0_37, V.V0_38, V.CELESTIA):
        encoded = encode_response(PubKeyResponse(key), version)
        assert encoded == b"\x12" + uvarint(len(body)) + body
    vector_checked(MESSAGES)


DERIVED_VERSIONS = {
    "framed PingRequest": list(V),
    "framed PingResponse": list(V),
    "framed PubKeyRequest{chain_id=test_chain_id}": list(V),
    "framed PubKeyResponse v0.34-v0.40 (tendermint.privval)": [
        V.V0_34,
        V.V0_37,
        V.V0_38,
        V.CELESTIA,
    ],
    "framed PubKeyResponse v1.0 (cometbft.privval.v1)": [V.V1],
    "framed SignVoteRequest v0.38 precommit+extension": [V.V0_38, V.CELESTIA, V.V1],
    "framed SignedVoteResponse as FilePV(v0.38)": [V.V0_38, V.CELESTIA, V.V1],
    "framed SignVoteRequest v1.0 with skip_extension_signing=true": [V.V1],
    "framed SignedVoteResponse v1.0 when skip_extension_signing=true": [V.V0_38, V.V1],
    "framed SignProposalRequest": list(V),
    "framed SignedProposalResponse": list(V),
}


def _derived_versions(name: str) -> list[ProtocolVersion]:
    matches = [versions for prefix, versions in DERIVED_VERSIONS.items() if name.startswith(prefix)]
    assert len(matches) == 1, name
    return matches[0]


def test_derived_framed_vectors_round_trip_through_frames_and_codec() -> None:
    """Framed pairs: FrameDecoder splits them, the codec round-trips them byte-identical."""
    data = load_vectors(MESSAGES)
    for vector in data["derived_vectors"]:
        wire = bytes.fromhex(vector["wire_hex"])
        decoder = FrameDecoder()
        decoder.feed(wire)
        message = decoder.next_message()
        assert message is not None and decoder.next_message() is None
        is_request = "Request" in vector["name"]
        for version in _derived_versions(vector["name"]):
            if is_request:
                req = decode_request(message, version)
                assert frame(encode_request(req, version)) == wire, vector["name"]
            else:
                resp = decode_response(message, version)
                assert frame(encode_response(resp, version)) == wire, vector["name"]
    vector_checked(MESSAGES, len(data["derived_vectors"]))


def test_derived_signed_responses_carry_signatures_over_our_sign_bytes() -> None:
    """The FilePV-style signatures in the derived responses are Ed25519 over our sign bytes."""
    data = load_vectors(MESSAGES)
    gi = data["go_inputs"]
    signing_key = SigningKey(bytes.fromhex(gi["pub_key"]["seed_hex"]))
    verify_key = VerifyKey(bytes.fromhex(gi["pub_key"]["pub_key_hex"]))
    assert bytes(signing_key.verify_key) == bytes(verify_key)
    signed = [v for v in data["derived_vectors"] if "signature_hex" in v]
    assert len(signed) == 2
    for vector in signed:
        wire = bytes.fromhex(vector["wire_hex"])
        decoder = FrameDecoder()
        decoder.feed(wire)
        message = decoder.next_message()
        assert message is not None
        resp = decode_response(message, V.V0_38)
        if isinstance(resp, SignedVoteResponse):
            assert resp.vote is not None
            sign_bytes = vote_sign_bytes("test_chain_id", resp.vote)
            assert resp.vote.signature == bytes.fromhex(vector["signature_hex"])
            ext_bytes = vote_extension_sign_bytes("test_chain_id", resp.vote)
            ext_sig = bytes.fromhex(vector["extension_signature_hex"])
            assert resp.vote.extension_signature == ext_sig
            assert signing_key.sign(ext_bytes).signature == ext_sig
            verify_key.verify(ext_bytes, ext_sig)
        else:
            assert isinstance(resp, SignedProposalResponse) and resp.proposal is not None
            sign_bytes = proposal_sign_bytes("test_chain_id", resp.proposal)
            assert resp.proposal.signature == bytes.fromhex(vector["signature_hex"])
        signature = bytes.fromhex(vector["signature_hex"])
        assert signing_key.sign(sign_bytes).signature == signature
        verify_key.verify(sign_bytes, signature)


# --- sign bytes ------------------------------------------------------------------------


def _hash(spec: dict[str, Any], prefix: str) -> bytes:
    if f"{prefix}_hex" in spec:
        return bytes.fromhex(spec[f"{prefix}_hex"])
    return spec.get(f"{prefix}_ascii", "").encode()


def _input_block_id(spec: dict[str, Any] | None) -> BlockId:
    if spec is None:
        return BlockId()
    header = PartSetHeader(spec["part_set_header_total"], _hash(spec, "part_set_header_hash"))
    return BlockId(_hash(spec, "hash"), header)


def _input_vote(inputs: dict[str, Any]) -> Vote:
    ts = inputs.get("timestamp", {"seconds": 0, "nanos": 0})
    extension = inputs.get("extension_utf8", "").encode() or bytes.fromhex(
        inputs.get("extension_hex", "")
    )
    return Vote(
        type=inputs.get("type", 2),
        height=inputs["height"],
        round=inputs["round"],
        block_id=_input_block_id(inputs.get("block_id")),
        timestamp=Timestamp(ts["seconds"], ts["nanos"]),
        validator_address=bytes.fromhex(inputs.get("validator_address_hex", "")),
        validator_index=inputs.get("validator_index", 0),
        extension=extension,
    )


def _input_proposal(inputs: dict[str, Any]) -> Proposal:
    ts = inputs["timestamp"]
    return Proposal(
        # The request's type never reaches the sign bytes; use a wrong one to prove it.
        type=inputs.get("type", 1),
        height=inputs["height"],
        round=inputs["round"],
        pol_round=inputs["pol_round"],
        block_id=_input_block_id(inputs.get("block_id")),
        timestamp=Timestamp(ts["seconds"], ts["nanos"]),
    )


def _sign_bytes_of(vector: dict[str, Any]) -> bytes:
    inputs = vector["inputs"]
    kind = vector["kind"]
    if kind == "vote":
        return vote_sign_bytes(inputs["chain_id"], _input_vote(inputs))
    if kind == "proposal":
        return proposal_sign_bytes(inputs["chain_id"], _input_proposal(inputs))
    assert kind == "vote_extension"
    return vote_extension_sign_bytes(inputs["chain_id"], _input_vote(inputs))


@pytest.mark.parametrize("section", ["upstream_vectors", "derived_vectors"])
def test_sign_bytes_vectors(section: str) -> None:
    """Every VoteSignBytes / ProposalSignBytes / VoteExtensionSignBytes vector."""
    vectors = load_vectors(SIGN_BYTES)[section]
    assert vectors
    for vector in vectors:
        assert _sign_bytes_of(vector).hex() == vector["expected_hex"], vector["name"]
    vector_checked(SIGN_BYTES, len(vectors))


def test_derived_sign_bytes_signatures_verify_over_computed_bytes() -> None:
    """Derived vectors' Ed25519 signatures: reproduced from the seed and verified."""
    vectors = [v for v in load_vectors(SIGN_BYTES)["derived_vectors"] if "signature_hex" in v]
    assert vectors
    for vector in vectors:
        key = vector["ed25519_key"]
        signing_key = SigningKey(bytes.fromhex(key["seed_hex"]))
        assert bytes(signing_key.verify_key).hex() == key["pub_key_hex"]
        sign_bytes = _sign_bytes_of(vector)
        signature = bytes.fromhex(vector["signature_hex"])
        assert signing_key.sign(sign_bytes).signature == signature, vector["name"]
        VerifyKey(bytes.fromhex(key["pub_key_hex"])).verify(sign_bytes, signature)


def test_amino_v033_is_not_supported() -> None:
    """Tendermint v0.33's amino remote signer is history (privval.md); not implemented."""
    pytest.skip("amino (Tendermint v0.33) privval encoding is not required: no codec for it")
