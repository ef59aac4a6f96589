"""secp256k1 account keys: a 32-byte big-endian scalar, one line of base64 on disk."""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms.errors import KeyFileError
from kms.keys.files import read_base64_secret

SCALAR_SIZE = 32
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def check_secp256k1_scalar(raw: bytes, source: Path | str = "key") -> bytes:
    """Return ``raw`` if it is a valid secret scalar (1 <= k < n); KeyFileError otherwise."""
    if len(raw) != SCALAR_SIZE:
        raise KeyFileError(
            f"{source}: invalid secp256k1 key size: expected {SCALAR_SIZE} bytes, got {len(raw)}"
        )
    if not 0 < int.from_bytes(raw, "big") < CURVE_ORDER:
        raise KeyFileError(f"{source}: secp256k1 secret scalar is out of range")
    return raw


def load_secp256k1_key(path: Path) -> bytes:
    """Load a base64 secp256k1 key file and return its validated 32-byte scalar."""
    return check_secp256k1_scalar(read_base64_secret(path), path)


def secp256k1_public_key(scalar: bytes) -> bytes:
    """The 33-byte compressed SEC1 public key of a valid scalar."""
    private = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256K1())
    return private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )


def generate_secp256k1_scalar() -> bytes:
    """A fresh random valid scalar from the OS CSPRNG."""
    while True:
        candidate = secrets.token_bytes(SCALAR_SIZE)
        if 0 < int.from_bytes(candidate, "big") < CURVE_ORDER:
            return candidate
