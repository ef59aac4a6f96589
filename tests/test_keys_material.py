"""Ed25519 layouts tmkms reads (32/64/96 bytes) and secp256k1 scalars."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from kms.errors import KeyFileError
from kms.keys import (
    ExpandedSigningKey,
    ed25519_key_from_bytes,
    generate_ed25519_seed,
    generate_secp256k1_scalar,
    load_ed25519_key,
    load_secp256k1_key,
    secp256k1_public_key,
    write_base64_secret,
)
from kms.keys.secp256k1 import CURVE_ORDER

SEED = hashlib.sha256(b"tmkms-py test seed").digest()
MESSAGE = b"\x08\x02\x11\xd6\xe1\x33\x00\x00\x00\x00\x00"


def expanded(seed: bytes) -> bytes:
    """RFC 8032 expansion: clamped scalar (little-endian) || nonce prefix."""
    digest = bytearray(hashlib.sha512(seed).digest())
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return bytes(digest)


def yubihsm_export(seed: bytes) -> bytes:
    """The 96-byte layout: scalar big-endian || prefix || public key."""
    full = expanded(seed)
    return full[31::-1] + full[32:] + bytes(SigningKey(seed).verify_key)


def write_key(tmp_path: Path, raw: bytes) -> Path:
    path = tmp_path / "key"
    path.write_text(base64.b64encode(raw).decode() + "\n")
    return path


def test_seed(tmp_path: Path) -> None:
    key = load_ed25519_key(write_key(tmp_path, SEED))
    assert type(key) is SigningKey
    assert bytes(key) == SEED


def test_seed_and_public_key(tmp_path: Path) -> None:
    raw = SEED + bytes(SigningKey(SEED).verify_key)
    key = load_ed25519_key(write_key(tmp_path, raw))
    assert type(key) is SigningKey
    assert bytes(key) == SEED


@pytest.mark.parametrize("layout", ["expanded-64", "yubihsm-96"])
def test_expanded_layouts_sign_like_the_seed(tmp_path: Path, layout: str) -> None:
    raw = expanded(SEED) if layout == "expanded-64" else yubihsm_export(SEED)
    key = load_ed25519_key(write_key(tmp_path, raw))
    reference = SigningKey(SEED)
    assert isinstance(key, ExpandedSigningKey)
    assert key.verify_key == reference.verify_key
    signed = key.sign(MESSAGE)
    assert signed.signature == reference.sign(MESSAGE).signature
    assert signed.message == MESSAGE
    reference.verify_key.verify(MESSAGE, signed.signature)
    with pytest.raises(TypeError):
        bytes(key)


def test_expanded_64_clamps_like_tmkms() -> None:
    """tmkms clamps the scalar of a 64-byte key; an unclamped SHA-512 output works too."""
    unclamped = hashlib.sha512(SEED).digest()
    key = ed25519_key_from_bytes(unclamped)
    assert key.verify_key == SigningKey(SEED).verify_key


def test_yubihsm_layout_with_wrong_public_key(tmp_path: Path) -> None:
    raw = bytearray(yubihsm_export(SEED))
    raw[-1] ^= 1
    path = write_key(tmp_path, bytes(raw))
    with pytest.raises(KeyFileError) as caught:
        load_ed25519_key(path)
    assert str(caught.value) == f"{path}: keypair mismatch: public key does not match the secret"


@pytest.mark.parametrize("size", [0, 16, 31, 33, 63, 65, 95, 97, 128])
def test_wrong_sizes(tmp_path: Path, size: int) -> None:
    raw = bytes(range(size % 256)) * (size // 256) + bytes(range(size % 256))
    path = write_key(tmp_path, raw[:size] if size else b"")
    with pytest.raises(KeyFileError) as caught:
        load_ed25519_key(path)
    expected = (
        f"{path}: key file is empty"
        if size == 0
        else f"{path}: invalid Ed25519 key size: expected 32, 64 or 96 bytes, got {size}"
    )
    assert str(caught.value) == expected


def test_expanded_key_equality_and_repr() -> None:
    a = ExpandedSigningKey.from_seed(SEED)
    b = ed25519_key_from_bytes(expanded(SEED))
    assert a == b
    assert hash(a) == hash(b)
    assert a != ExpandedSigningKey.from_seed(bytes(32))
    assert base64.b64encode(SEED).decode()[:20] not in repr(a)
    assert bytes(a.verify_key).hex() in repr(a)


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_expanded_signing_matches_libsodium(seed: bytes, message: bytes) -> None:
    assert (
        ExpandedSigningKey.from_seed(seed).sign(message).signature
        == SigningKey(seed).sign(message).signature
    )


def test_generated_seeds_are_random_32_bytes() -> None:
    seeds = {generate_ed25519_seed() for _ in range(8)}
    assert len(seeds) == 8
    assert all(len(s) == 32 for s in seeds)


def test_secp256k1_round_trip_and_signature(tmp_path: Path) -> None:
    scalar = generate_secp256k1_scalar()
    path = tmp_path / "account.key"
    write_base64_secret(path, scalar)
    assert load_secp256k1_key(path) == scalar
    public = secp256k1_public_key(scalar)
    assert len(public) == 33 and public[0] in (2, 3)
    private = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256K1())
    signature = private.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public).verify(
        signature, MESSAGE, ec.ECDSA(hashes.SHA256())
    )


def test_secp256k1_known_public_key() -> None:
    # k = 1 gives the generator point G (SEC 2), compressed: 02 || x(G)
    one = (1).to_bytes(32, "big")
    assert secp256k1_public_key(one).hex() == (
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (bytes(32), "secp256k1 secret scalar is out of range"),
        (CURVE_ORDER.to_bytes(32, "big"), "secp256k1 secret scalar is out of range"),
        (b"\xff" * 32, "secp256k1 secret scalar is out of range"),
        (b"\x01" * 31, "invalid secp256k1 key size: expected 32 bytes, got 31"),
        (b"\x01" * 33, "invalid secp256k1 key size: expected 32 bytes, got 33"),
    ],
    ids=["zero", "order", "above-order", "short", "long"],
)
def test_secp256k1_invalid(tmp_path: Path, raw: bytes, problem: str) -> None:
    path = write_key(tmp_path, raw)
    with pytest.raises(KeyFileError) as caught:
        load_secp256k1_key(path)
    assert str(caught.value) == f"{path}: {problem}"


def test_secp256k1_largest_valid_scalar(tmp_path: Path) -> None:
    raw = (CURVE_ORDER - 1).to_bytes(32, "big")
    assert load_secp256k1_key(write_key(tmp_path, raw)) == raw
