"""Software signers: Ed25519 and secp256k1 (low-S, SHA-256, compressed keys)."""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from kms.errors import KeyFileError
from providers import Signer
from providers.softsign import SECP256K1_ORDER, Ed25519SoftSigner, Secp256k1SoftSigner
from tests.support.vectors import load_vectors, vector_checked


async def test_ed25519_signs_and_verifies() -> None:
    key = nacl.signing.SigningKey(hashlib.sha256(b"seed").digest())
    signer = Ed25519SoftSigner(key)
    assert isinstance(signer, Signer)
    assert signer.key_type == "ed25519"
    assert signer.provider == "softsign"
    assert signer.public_key == bytes(key.verify_key)
    assert len(signer.public_key) == 32
    for message in (b"", b"vote", bytes(range(256)) * 4):
        signature = await signer.sign(message)
        assert len(signature) == 64
        nacl.signing.VerifyKey(signer.public_key).verify(message, signature)
    with pytest.raises(nacl.exceptions.BadSignatureError):
        nacl.signing.VerifyKey(signer.public_key).verify(b"other", await signer.sign(b"vote"))


async def test_ed25519_matches_golden_signatures() -> None:
    vectors = load_vectors("sign_bytes.json")
    checked = 0
    for vector in vectors["derived_vectors"]:
        key_info = vector.get("ed25519_key")
        if not key_info or "signature_hex" not in vector:
            continue
        signer = Ed25519SoftSigner(nacl.signing.SigningKey(bytes.fromhex(key_info["seed_hex"])))
        assert signer.public_key.hex() == key_info["pub_key_hex"].lower()
        message = bytes.fromhex(vector["expected_hex"])
        assert (await signer.sign(message)).hex() == vector["signature_hex"].lower(), vector["name"]
        checked += 1
    assert checked >= 5
    vector_checked("sign_bytes.json", checked)


SCALAR = hashlib.sha256(b"account key").digest()


async def test_secp256k1_signs_sha256_low_s_and_verifies() -> None:
    signer = Secp256k1SoftSigner(SCALAR)
    assert isinstance(signer, Signer)
    assert signer.key_type == "secp256k1"
    assert len(signer.public_key) == 33
    assert signer.public_key[0] in (2, 3)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), signer.public_key)
    expected_public = ec.derive_private_key(int.from_bytes(SCALAR, "big"), ec.SECP256K1())
    assert public.public_numbers() == expected_public.public_key().public_numbers()
    raw_key = ec.derive_private_key(int.from_bytes(SCALAR, "big"), ec.SECP256K1())
    deterministic = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    normalised = 0
    for i in range(200):
        message = f"tx {i}".encode()
        signature = await signer.sign(message)
        assert len(signature) == 64
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        assert 0 < r < SECP256K1_ORDER
        assert 0 < s <= SECP256K1_ORDER // 2  # low-S
        public.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        # same r as plain RFC 6979 ECDSA over SHA-256; s is its low half
        raw_r, raw_s = decode_dss_signature(raw_key.sign(message, deterministic))
        assert r == raw_r
        assert s == min(raw_s, SECP256K1_ORDER - raw_s)
        normalised += raw_s != s
    assert 50 < normalised < 150  # about half needed flipping: the branch really ran
    with pytest.raises(InvalidSignature):
        public.verify(encode_dss_signature(r, s), b"tampered", ec.ECDSA(hashes.SHA256()))


async def test_secp256k1_is_deterministic() -> None:
    signer = Secp256k1SoftSigner(SCALAR)
    assert await signer.sign(b"m") == await signer.sign(b"m")
    assert await signer.sign(b"m") != await signer.sign(b"n")


@pytest.mark.parametrize(
    "scalar",
    [b"", b"\x01" * 31, b"\x01" * 33, bytes(32), SECP256K1_ORDER.to_bytes(32, "big"), b"\xff" * 32],
)
def test_secp256k1_rejects_bad_scalars(scalar: bytes) -> None:
    with pytest.raises(KeyFileError):
        Secp256k1SoftSigner(scalar)


def test_secp256k1_known_public_key() -> None:
    # scalar 1 -> the generator point G, compressed (a fact of the curve)
    g = Secp256k1SoftSigner((1).to_bytes(32, "big")).public_key
    assert g.hex() == "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
