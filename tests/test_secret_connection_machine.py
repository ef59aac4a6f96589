"""The sans-IO Secret Connection machine: two machines joined in memory, no I/O, no mocks."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.signing import SigningKey

from kms.errors import HandshakeError, ProtocolError
from kms.protocol.varint import encode_uvarint
from kms.transport.frames import MAX_COUNTER, SEALED_FRAME_SIZE, FrameSealer, nonce_for
from kms.transport.secret_connection import (
    Phase,
    SecretConnection,
    derive_secrets,
    encode_auth_sig_message,
    encode_ephemeral_message,
    peer_id_from_pubkey,
    transcript_challenge,
)

A_KEY = SigningKey(bytes.fromhex("a1" * 32))
B_KEY = SigningKey(bytes.fromhex("b2" * 32))
A_EPH = bytes(range(1, 33))
B_EPH = bytes(range(33, 65))


def _pair(**b_kwargs: object) -> tuple[SecretConnection, SecretConnection]:
    a = SecretConnection(A_KEY, ephemeral_private=A_EPH)
    b = SecretConnection(B_KEY, ephemeral_private=B_EPH, **b_kwargs)  # type: ignore[arg-type]
    return a, b


def _handshake(a: SecretConnection, b: SecretConnection) -> None:
    for _ in range(2):
        a_out, b_out = a.data_to_send(), b.data_to_send()
        b.receive_data(a_out)
        a.receive_data(b_out)


def _honest_a_stream(payload: bytes) -> tuple[bytes, int]:
    """Everything A sends to B (handshake, then ``payload``); and the handshake's length.

    B's ephemeral key is fixed, so a fresh B accepts this stream again byte for byte.
    """
    a, b = _pair()
    a_first, b_first = a.data_to_send(), b.data_to_send()
    a.receive_data(b_first)
    b.receive_data(a_first)
    a_auth = a.data_to_send()
    a.receive_data(b.data_to_send())
    assert a.handshake_complete
    a.send(payload)
    return a_first + a_auth + a.data_to_send(), len(a_first) + len(a_auth)


class _ManualPeer:
    """A hand-rolled peer built from the module's public helpers, to send malformed input."""

    def __init__(self, victim: SecretConnection, identity: SigningKey = A_KEY) -> None:
        self.identity = identity
        self.eph_private = bytes(range(100, 132))
        self.eph_public = crypto_scalarmult_base(self.eph_private)
        victim_eph = victim.ephemeral_public_key
        dh = crypto_scalarmult(self.eph_private, victim_eph)
        local_is_lo = self.eph_public < victim_eph
        lo, hi = sorted((self.eph_public, victim_eph))
        self.recv_key, self.send_key = derive_secrets(dh, local_is_lo)
        self.challenge = transcript_challenge(lo, hi, dh)
        self.sealer = FrameSealer(self.send_key)

    def first(self) -> bytes:
        return encode_ephemeral_message(self.eph_public)

    def auth(self, *, sig: bytes | None = None) -> bytes:
        if sig is None:
            sig = self.identity.sign(self.challenge).signature
        return encode_auth_sig_message(bytes(self.identity.verify_key), sig)

    def raw_frame(self, plaintext_frame: bytes) -> bytes:
        """Seal a 1,028-byte plaintext frame exactly as given (length field included)."""
        assert len(plaintext_frame) == 1028
        nonce = nonce_for(self.sealer.counter)
        self.sealer.counter += 1
        return ChaCha20Poly1305(self.send_key).encrypt(nonce, plaintext_frame, None)


def test_two_machines_handshake_and_talk() -> None:
    a, b = _pair()
    assert a.phase is Phase.AWAIT_EPHEMERAL and not a.handshake_complete
    _handshake(a, b)
    assert a.handshake_complete and b.handshake_complete
    assert a.peer_id == b.local_id == peer_id_from_pubkey(bytes(B_KEY.verify_key))
    assert b.peer_public_key == bytes(A_KEY.verify_key)
    a.send(b"hello")
    b.send(b"world" * 300)
    b.receive_data(a.data_to_send())
    wire = b.data_to_send()
    assert len(wire) == 2 * SEALED_FRAME_SIZE
    a.receive_data(wire)
    assert b.next_plaintext() == b"hello"
    assert a.next_plaintext(7) == b"worldwo"
    assert a.next_plaintext() == (b"world" * 300)[7:]
    a.send(b"")
    assert a.data_to_send() == b""


def test_random_ephemeral_keys_differ_per_connection() -> None:
    first = SecretConnection(A_KEY).data_to_send()
    second = SecretConnection(A_KEY).data_to_send()
    assert first[:3] == second[:3] == bytes.fromhex("220a20")
    assert first != second


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in itertools.pairwise(points) if j > i]


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=25),
)
def test_any_chunking_delivers_the_same_bytes(messages: list[bytes], cuts: list[int]) -> None:
    a, b = _pair()
    # The handshake itself arrives in arbitrary pieces too.
    for _ in range(2):
        a_out, b_out = a.data_to_send(), b.data_to_send()
        for piece in _chunked(a_out, cuts):
            b.receive_data(piece)
        for piece in _chunked(b_out, cuts):
            a.receive_data(piece)
    assert a.handshake_complete and b.handshake_complete
    for message in messages:
        a.send(message)
        b.send(message[::-1])
    a_wire, b_wire = a.data_to_send(), b.data_to_send()
    expected_frames = sum(-(-len(m) // 1024) for m in messages)
    assert len(a_wire) == len(b_wire) == expected_frames * SEALED_FRAME_SIZE
    got_b, got_a = bytearray(), bytearray()
    for piece in _chunked(a_wire, cuts):
        b.receive_data(piece)
        got_b += b.next_plaintext(700)
    for piece in _chunked(b_wire, cuts):
        a.receive_data(memoryview(piece))
        got_a += a.next_plaintext()
    got_b += b.next_plaintext()
    assert bytes(got_b) == b"".join(messages)
    assert bytes(got_a) == b"".join(m[::-1] for m in messages)
    assert not a.has_partial_frame and not b.has_partial_frame


PAYLOAD = bytes(range(256)) * 6  # two frames of application data
HONEST, HANDSHAKE_LEN = _honest_a_stream(PAYLOAD)


def test_honest_stream_is_accepted() -> None:
    b = SecretConnection(B_KEY, ephemeral_private=B_EPH)
    b.receive_data(HONEST)
    assert b.handshake_complete
    assert b.next_plaintext() == PAYLOAD


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(HONEST) - 1),
    flip=st.integers(min_value=1, max_value=255),
)
def test_tampering_with_any_byte_breaks_the_connection(index: int, flip: int) -> None:
    tampered = bytearray(HONEST)
    tampered[index] ^= flip
    b = SecretConnection(B_KEY, ephemeral_private=B_EPH)
    expected = HandshakeError if index < HANDSHAKE_LEN else ProtocolError
    match = None if index < HANDSHAKE_LEN else "frame authentication failed"
    with pytest.raises(expected, match=match):
        b.receive_data(bytes(tampered))
    assert b.phase is Phase.BROKEN
    with pytest.raises(ProtocolError, match="unusable after an earlier error"):
        b.receive_data(b"more")
    with pytest.raises(ProtocolError):
        b.next_plaintext()
    with pytest.raises(ProtocolError):
        b.data_to_send()


def test_wrong_first_message_length_is_refused_before_the_body() -> None:
    _, b = _pair()
    with pytest.raises(HandshakeError, match="33 bytes, expected 34"):
        b.receive_data(b"\x21")


def test_huge_length_prefix_is_refused_without_buffering() -> None:
    _, b = _pair()
    with pytest.raises(HandshakeError, match="exceeds 1 MiB"):
        b.receive_data(encode_uvarint(1 << 40))


def test_overlong_varint_prefix_is_refused() -> None:
    _, b = _pair()
    with pytest.raises(HandshakeError, match="malformed ephemeral key message length"):
        b.receive_data(b"\xff" * 11)


def test_first_message_must_be_a_bytes_value() -> None:
    _, b = _pair()
    with pytest.raises(HandshakeError, match="not a 32-byte BytesValue"):
        b.receive_data(b"\x22\x12\x20" + bytes(range(32)))


def test_echoed_ephemeral_key_is_refused() -> None:
    _, b = _pair()
    with pytest.raises(HandshakeError, match="echoed"):
        b.receive_data(encode_ephemeral_message(b.ephemeral_public_key))


def test_partial_first_message_waits_for_more() -> None:
    a, b = _pair()
    first = a.data_to_send()
    b.receive_data(first[:1])
    b.receive_data(first[1:20])
    assert b.phase is Phase.AWAIT_EPHEMERAL
    b.receive_data(first[20:])
    assert b.phase is Phase.AWAIT_AUTH and b.keys_established


def test_bad_signature_is_refused() -> None:
    _, b = _pair()
    peer = _ManualPeer(b)
    wrong = peer.identity.sign(b"not the challenge").signature
    b.receive_data(peer.first())
    with pytest.raises(HandshakeError, match="signature over the challenge is invalid"):
        b.receive_data(b"".join(peer.sealer.seal_all(peer.auth(sig=wrong))))


def test_identity_key_that_is_not_ed25519_is_refused() -> None:
    _, b = _pair()
    peer = _ManualPeer(b)
    wire = bytearray(peer.auth())
    wire[3] = 0x12  # PublicKey.secp256k1 instead of PublicKey.ed25519
    b.receive_data(peer.first())
    with pytest.raises(HandshakeError, match="malformed AuthSigMessage"):
        b.receive_data(b"".join(peer.sealer.seal_all(bytes(wire))))


def test_auth_message_of_another_length_is_refused() -> None:
    _, b = _pair()
    peer = _ManualPeer(b)
    b.receive_data(peer.first())
    with pytest.raises(HandshakeError, match="AuthSigMessage is 103 bytes, expected 102"):
        b.receive_data(b"".join(peer.sealer.seal_all(b"\x67" + bytes(103))))


def test_auth_message_may_span_frames() -> None:
    _, b = _pair()
    peer = _ManualPeer(b)
    b.receive_data(peer.first())
    auth = peer.auth()
    b.receive_data(peer.sealer.seal(auth[:1]))
    b.receive_data(peer.sealer.seal(auth[1:50]))
    assert not b.handshake_complete
    b.receive_data(peer.sealer.seal(auth[50:] + b"app"))
    assert b.handshake_complete
    assert b.next_plaintext() == b"app"


def test_pinned_peer_id_mismatch_has_the_exact_message() -> None:
    pinned = "ab" * 20
    a, b = _pair(expected_peer_id=pinned)
    actual = peer_id_from_pubkey(bytes(A_KEY.verify_key))
    with pytest.raises(HandshakeError) as info:
        _handshake(a, b)
    assert str(info.value) == f"validator peer ID mismatch! (expected {pinned}, got {actual})"
    assert b.phase is Phase.BROKEN


def test_pinned_peer_id_match_in_any_case_is_accepted() -> None:
    pinned = peer_id_from_pubkey(bytes(A_KEY.verify_key)).upper()
    a, b = _pair(expected_peer_id=pinned)
    _handshake(a, b)
    assert b.handshake_complete and b.peer_id == pinned.lower()


def test_constructor_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="40 hex"):
        SecretConnection(A_KEY, expected_peer_id="not-an-id")
    with pytest.raises(ValueError, match="32 bytes"):
        SecretConnection(A_KEY, ephemeral_private=b"short")


def test_frame_length_over_1024_is_refused() -> None:
    a, b = _pair()
    peer = _ManualPeer(b)
    b.receive_data(peer.first())
    b.receive_data(b"".join(peer.sealer.seal_all(peer.auth())))
    assert b.handshake_complete
    bogus = (1025).to_bytes(4, "little") + bytes(1024)
    with pytest.raises(ProtocolError, match="length field 1025 exceeds 1024"):
        b.receive_data(peer.raw_frame(bogus))
    assert b.phase is Phase.BROKEN and not b.handshake_complete
    assert b.peer_id == a.local_id  # still known after the error, for the logs


def test_padding_bytes_are_never_used() -> None:
    _, b = _pair()
    peer = _ManualPeer(b)
    b.receive_data(peer.first())
    b.receive_data(b"".join(peer.sealer.seal_all(peer.auth())))
    stale = (3).to_bytes(4, "little") + b"abc" + b"\xee" * 1021  # Go may leave stale padding
    b.receive_data(peer.raw_frame(stale))
    assert b.next_plaintext() == b"abc"


def test_eof_rules() -> None:
    a, b = _pair()
    with pytest.raises(HandshakeError, match="during the handshake"):
        b.receive_eof()

    a, b = _pair()
    _handshake(a, b)
    a.send(b"x")
    frame = a.data_to_send()
    b.receive_data(frame[:100])
    assert b.has_partial_frame
    with pytest.raises(ProtocolError, match="middle of a frame"):
        b.receive_eof()

    a, b = _pair()
    _handshake(a, b)
    a.send(b"last words")
    b.receive_data(a.data_to_send())
    b.receive_eof()
    assert b.peer_closed
    assert b.next_plaintext() == b"last words"
    assert b.next_plaintext() == b""
    with pytest.raises(RuntimeError):
        b.receive_data(b"after eof")


def test_local_misuse_raises_runtime_error() -> None:
    a, _ = _pair()
    with pytest.raises(RuntimeError, match="before the handshake"):
        a.send(b"too early")
    with pytest.raises(RuntimeError):
        _ = a.peer_id


def test_send_counter_exhaustion_breaks_the_machine() -> None:
    a, b = _pair()
    _handshake(a, b)
    assert a._sealer is not None
    a._sealer.counter = MAX_COUNTER  # white-box: 2**64 - 1 frames are not sent in a test
    a.send(b"last frame")
    with pytest.raises(ProtocolError, match="nonce counter exhausted"):
        a.send(b"one too many")
    assert a.phase is Phase.BROKEN
