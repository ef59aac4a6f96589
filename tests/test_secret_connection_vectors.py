"""Secret Connection and Merlin against the CometBFT / tendermint-rs golden vectors."""

from __future__ import annotations

from typing import Any

import pytest
from nacl.signing import SigningKey

from kms.errors import HandshakeError
from kms.transport.frames import FrameSealer, nonce_for
from kms.transport.merlin import Transcript
from kms.transport.secret_connection import (
    SecretConnection,
    derive_key_material,
    derive_secrets,
    encode_auth_sig_message,
    encode_ephemeral_message,
    is_low_order_point,
    peer_id_from_pubkey,
    transcript_challenge,
)
from tests.support.vectors import load_vectors, vector_checked

SC = "secret_connection.json"
MERLIN = "merlin_transcript.json"
PUBKEYS = "pubkey_encodings.json"


def _sc() -> Any:
    return load_vectors(SC)


def test_kdf_golden_lines() -> None:
    vectors = _sc()["kdf_golden"]["vectors"]
    assert len(vectors) == 32
    for vector in vectors:
        dh = bytes.fromhex(vector["dh_secret_hex"])
        recv, send = derive_secrets(dh, vector["loc_is_least"])
        assert recv.hex() == vector["expected_recv_secret_hex"]
        assert send.hex() == vector["expected_send_secret_hex"]
        okm = derive_key_material(dh, 96)
        assert okm[64:96].hex() == vector["fifth_column_hkdf_bytes_64_96_hex"]
        assert okm[:64] == derive_key_material(dh)
    vector_checked(SC, len(vectors))


def test_nonce_checkpoints() -> None:
    vectors = _sc()["nonce_checkpoints"]["vectors"]
    sealer = FrameSealer(bytes(32))
    increments = 0
    for vector in sorted(vectors, key=lambda v: v["i"]):
        assert nonce_for(vector["i"] + 1).hex() == vector["nonce_hex"]
        # The same nonce is what a sealer uses after i+1 frames.
        while increments < vector["i"] + 1:
            sealer.seal(b"")
            increments += 1
        assert sealer.next_nonce.hex() == vector["nonce_hex"]
    vector_checked(SC, len(vectors))


def test_every_low_order_point_is_refused() -> None:
    points = _sc()["low_order_points_rejected_by_tendermint_rs"]["points_hex"]
    assert len(points) == 7
    a = SecretConnection(SigningKey(bytes(range(32))))
    own_message = a.data_to_send()
    for point_hex in points:
        point = bytes.fromhex(point_hex)
        assert is_low_order_point(point)
        high_bit_twin = point[:31] + bytes((point[31] | 0x80,))
        assert is_low_order_point(high_bit_twin)
        machine = SecretConnection(SigningKey(bytes(range(32))))
        with pytest.raises(HandshakeError, match="low-order"):
            machine.receive_data(encode_ephemeral_message(point))
    assert own_message[3:] == a.ephemeral_public_key
    assert not is_low_order_point(a.ephemeral_public_key)
    vector_checked(SC, len(points))


def _derived() -> tuple[Any, SecretConnection, SecretConnection]:
    d = _sc()["derived_handshake"]
    inputs = d["inputs"]
    a = SecretConnection(
        SigningKey(bytes.fromhex(inputs["a_identity_ed25519_seed_hex"])),
        ephemeral_private=bytes.fromhex(inputs["a_eph_priv_hex"]),
    )
    b = SecretConnection(
        SigningKey(bytes.fromhex(inputs["b_identity_ed25519_seed_hex"])),
        ephemeral_private=bytes.fromhex(inputs["b_eph_priv_hex"]),
    )
    return d, a, b


def test_derived_handshake_byte_for_byte() -> None:
    d, a, b = _derived()
    a_first, b_first = a.data_to_send(), b.data_to_send()
    assert a_first.hex() == d["a_first_message_hex"]
    assert b_first.hex() == d["b_first_message_hex"]
    assert len(a_first) == 35

    a.receive_data(b_first)
    b.receive_data(a_first)
    for side, machine in (("A", a), ("B", b)):
        assert machine.challenge is not None
        assert machine.challenge.hex() == d[side]["challenge"]
        assert machine.local_public_key.hex() == d[side]["id_pub"]
        sig = bytes.fromhex(d[side]["sig"])
        wire = encode_auth_sig_message(machine.local_public_key, sig)
        assert wire.hex() == d[side]["auth_wire"]
        assert len(wire) == 103 and wire[:5] == bytes.fromhex("660a220a20")
    a_auth, b_auth = a.data_to_send(), b.data_to_send()
    assert a_auth.hex() == d["a_auth_sig_sealed_frame_hex"]
    assert b_auth.hex() == d["b_auth_sig_sealed_frame_hex"]
    assert len(a_auth) == 1044

    ping_frame = bytes.fromhex(d["b_to_a_second_frame_ping_request_hex"])
    a.receive_data(b_auth + ping_frame)
    b.receive_data(a_auth)
    assert a.handshake_complete and b.handshake_complete
    assert a.peer_public_key.hex() == d["B"]["id_pub"]
    assert b.peer_public_key.hex() == d["A"]["id_pub"]
    assert a.next_plaintext() == bytes.fromhex("023a00")  # uvarint(2) || PingRequest
    assert a.next_plaintext() == b""

    b.send(bytes.fromhex("023a00"))
    assert b.data_to_send() == ping_frame
    vector_checked(SC)


def test_derived_handshake_intermediate_values() -> None:
    d, _, _ = _derived()
    for side in ("A", "B"):
        values = d[side]
        lo, hi, dh = (bytes.fromhex(values[k]) for k in ("lo", "hi", "dh"))
        assert values["hkdf_output"] == derive_key_material(dh, 96).hex()
        recv, send = derive_secrets(dh, values["loc_is_least"])
        assert (recv.hex(), send.hex()) == (values["recv"], values["send"])
        assert transcript_challenge(lo, hi, dh).hex() == values["challenge"]
        seed = d["inputs"][f"{side.lower()}_identity_ed25519_seed_hex"]
        signature = SigningKey(bytes.fromhex(seed)).sign(bytes.fromhex(values["challenge"]))
        assert signature.signature.hex() == values["sig"]
    vector_checked(SC)


def _run_merlin(vector: Any) -> bytes:
    inputs = vector["inputs"]
    transcript = Transcript(inputs["protocol_label"].encode())
    if vector["name"] == "complex":
        transcript.append_message(b"step1", b"some data")
        challenge = b""
        for _ in range(32):
            challenge = transcript.challenge_bytes(b"challenge", 32)
            transcript.append_message(b"bigdata", b"\x63" * 1024)
            transcript.append_message(b"challengedata", challenge)
        return challenge
    hex_values = "note" in inputs and "hex" in inputs["note"]
    result = b""
    for op, label, arg in inputs["ops"]:
        if op == "append_message":
            message = bytes.fromhex(arg) if hex_values else arg.encode()
            transcript.append_message(label.encode(), message)
        else:
            assert op == "challenge_bytes"
            result = transcript.challenge_bytes(label.encode(), arg)
    return result


def test_merlin_vectors() -> None:
    vectors = load_vectors(MERLIN)["vectors"]
    names = [v["name"] for v in vectors]
    assert names[:2] == ["simple", "complex"] and len(vectors) == 3
    for vector in vectors:
        assert _run_merlin(vector).hex() == vector["expected_hex"], vector["name"]
    vector_checked(MERLIN, len(vectors))


def test_node_id_vectors() -> None:
    vectors = [
        v
        for v in load_vectors(PUBKEYS)["vectors"]
        if "node ID" in v["name"] or "address" in v["name"]
    ]
    assert vectors
    for vector in vectors:
        pub = bytes.fromhex(vector["inputs"]["ed25519_pub_key_hex"])
        assert peer_id_from_pubkey(pub) == vector["expected"]
    vector_checked(PUBKEYS, len(vectors))
