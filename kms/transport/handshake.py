"""The pure pieces of the Secret Connection handshake: keys, challenge, messages, node IDs.

Stateless functions, shared by the state machine in ``secret_connection`` (which re-exports
them) and by tests that play a hand-made peer. No I/O.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.errors import HandshakeError, ProtocolError
from kms.protocol.varint import IncompleteVarint, decode_uvarint
from kms.transport.merlin import Transcript

TRANSCRIPT_LABEL = b"TENDERMINT_SECRET_CONNECTION_TRANSCRIPT_HASH"
LOWER_KEY_LABEL = b"EPHEMERAL_LOWER_PUBLIC_KEY"
UPPER_KEY_LABEL = b"EPHEMERAL_UPPER_PUBLIC_KEY"
DH_SECRET_LABEL = b"DH_SECRET"
CHALLENGE_LABEL = b"SECRET_CONNECTION_MAC"
HKDF_INFO = b"TENDERMINT_SECRET_CONNECTION_KEY_AND_CHALLENGE_GEN"
HANDSHAKE_MESSAGE_LIMIT = 1 << 20  # never accept a handshake length prefix above 1 MiB

EPHEMERAL_BODY_PREFIX = b"\x0a\x20"  # BytesValue.value (field 1, 32 bytes)
EPHEMERAL_BODY_SIZE = 34
AUTH_KEY_PREFIX = b"\x0a\x22\x0a\x20"  # pub_key (field 1, 34 bytes) > ed25519 (field 1, 32)
AUTH_SIG_PREFIX = b"\x12\x40"  # sig (field 2, 64 bytes)
AUTH_BODY_SIZE = 102

# Curve25519 points of small order (and their non-canonical encodings below 2**255): a peer
# sending one would force a predictable shared secret. X25519 ignores the top bit, so it is
# masked off before the lookup.
_LOW_ORDER_POINTS = frozenset(
    bytes.fromhex(point)
    for point in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def peer_id_from_pubkey(pub: bytes) -> str:
    """Node ID of an Ed25519 key: lower-case hex of the first 20 bytes of SHA-256(pub)."""
    if len(pub) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(pub)}")
    return hashlib.sha256(pub).digest()[:20].hex()


def is_low_order_point(point: bytes) -> bool:
    """True when an X25519 public key has small order (the top bit is ignored, as X25519 does)."""
    if len(point) != 32:
        raise ValueError(f"an X25519 public key is 32 bytes, got {len(point)}")
    return point[:31] + bytes((point[31] & 0x7F,)) in _LOW_ORDER_POINTS


def derive_key_material(dh: bytes, length: int = 64) -> bytes:
    """HKDF-SHA256 over the shared secret: no salt, the Secret Connection info string.

    Bytes 0..64 are the two frame keys; older code reads 96 bytes, whose last 32 were the
    pre-v0.33 challenge and are unused now.
    """
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=HKDF_INFO).derive(dh)


def derive_secrets(dh: bytes, local_is_lo: bool) -> tuple[bytes, bytes]:
    """Return ``(recv_key, send_key)`` for the side whose ephemeral key sorts lower or not."""
    okm = derive_key_material(dh)
    first, second = okm[:32], okm[32:64]
    return (first, second) if local_is_lo else (second, first)


def transcript_challenge(lo: bytes, hi: bytes, dh: bytes) -> bytes:
    """The 32-byte challenge both sides sign: Merlin over the sorted keys and the secret."""
    transcript = Transcript(TRANSCRIPT_LABEL)
    transcript.append_message(LOWER_KEY_LABEL, lo)
    transcript.append_message(UPPER_KEY_LABEL, hi)
    transcript.append_message(DH_SECRET_LABEL, dh)
    return transcript.challenge_bytes(CHALLENGE_LABEL, 32)


def encode_ephemeral_message(pub: bytes) -> bytes:
    """The 35-byte first message: ``uvarint(34) || BytesValue{value=pub}``."""
    if len(pub) != 32:
        raise ValueError(f"an X25519 public key is 32 bytes, got {len(pub)}")
    return bytes((EPHEMERAL_BODY_SIZE,)) + EPHEMERAL_BODY_PREFIX + pub


def encode_auth_sig_message(pub: bytes, sig: bytes) -> bytes:
    """The 103-byte length-delimited ``AuthSigMessage`` for an Ed25519 identity."""
    if len(pub) != 32 or len(sig) != 64:
        raise ValueError("AuthSigMessage needs a 32-byte key and a 64-byte signature")
    return bytes((AUTH_BODY_SIZE,)) + AUTH_KEY_PREFIX + pub + AUTH_SIG_PREFIX + sig


def take_delimited(buf: bytearray, expected: int, what: str) -> bytes | None:
    """Pop one ``uvarint(len) || body`` of exactly ``expected`` bytes off ``buf``.

    Returns None while the message is incomplete. The length is checked before waiting for
    the body, so a huge prefix is refused at once instead of being buffered.
    """
    try:
        length, start = decode_uvarint(buf)
    except IncompleteVarint:
        return None
    except ProtocolError as exc:
        raise HandshakeError(f"secret connection: malformed {what} length prefix") from exc
    if length > HANDSHAKE_MESSAGE_LIMIT:
        raise HandshakeError(f"secret connection: {what} of {length} bytes exceeds 1 MiB")
    if length != expected:
        raise HandshakeError(f"secret connection: {what} is {length} bytes, expected {expected}")
    end = start + length
    if len(buf) < end:
        return None
    body = bytes(buf[start:end])
    del buf[:end]
    return body
