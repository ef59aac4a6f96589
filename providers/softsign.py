"""Software signers: keys held in this process's memory (tmkms's "softsign" provider).

Both sign in-process without a thread: a software signature costs far less than handing
work to a thread and back. Loading key files is
``kms.keys``'s job; these classes receive key material that is already decoded.
"""

from __future__ import annotations

from typing import Literal

import nacl.exceptions
import nacl.signing
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from kms.errors import KeyFileError, SignerError

__all__ = ["SECP256K1_ORDER", "Ed25519SoftSigner", "Secp256k1SoftSigner", "low_s_signature"]

#: The order n of the secp256k1 group.
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_ORDER = SECP256K1_ORDER // 2


def low_s_signature(der: bytes) -> bytes:
    """A DER ECDSA secp256k1 signature as 64-byte ``r || s`` with ``s`` in the lower half.

    ``(r, n - s)`` is as valid as ``(r, s)``; the Cosmos SDK accepts only the low-S form.
    ValueError if ``der`` is not a DER signature with in-range values.
    """
    r, s = decode_dss_signature(der)
    if not (0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER):
        raise ValueError("ECDSA signature values out of range")
    if s > _HALF_ORDER:
        s = SECP256K1_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class Ed25519SoftSigner:
    """An Ed25519 consensus key held in memory."""

    key_type: Literal["ed25519"] = "ed25519"
    provider = "softsign"

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._key = signing_key
        self._public = bytes(signing_key.verify_key)

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public

    async def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        try:
            return self._key.sign(bytes(message)).signature
        except (nacl.exceptions.CryptoError, TypeError) as exc:
            raise SignerError(f"softsign Ed25519 signing failed: {exc}") from exc

    def __repr__(self) -> str:
        return f"Ed25519SoftSigner(public_key={self._public.hex().upper()})"


class Secp256k1SoftSigner:
    """A secp256k1 key held in memory (tmkms's account keys).

    Signs the SHA-256 digest of the message, as the Cosmos SDK verifies account
    signatures, deterministically (RFC 6979), and returns the 64-byte ``r || s`` with ``s``
    normalised to the lower half of the group order, which the SDK requires.
    """

    key_type: Literal["secp256k1"] = "secp256k1"
    provider = "softsign"

    def __init__(self, scalar: bytes) -> None:
        if len(scalar) != 32:
            raise KeyFileError(f"a secp256k1 key is 32 bytes, got {len(scalar)}")
        value = int.from_bytes(scalar, "big")
        if not 0 < value < SECP256K1_ORDER:
            raise KeyFileError("secp256k1 scalar is zero or not below the group order")
        try:
            self._key = ec.derive_private_key(value, ec.SECP256K1())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"cannot load secp256k1 key: {exc}") from exc
        self._public = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        self._algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)

    @property
    def public_key(self) -> bytes:
        """The 33-byte compressed public key."""
        return self._public

    async def sign(self, message: bytes) -> bytes:
        """The 64-byte low-S ``r || s`` signature over SHA-256(``message``)."""
        try:
            der = self._key.sign(bytes(message), self._algorithm)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise SignerError(f"softsign secp256k1 signing failed: {exc}") from exc
        return low_s_signature(der)

    def __repr__(self) -> str:
        return f"Secp256k1SoftSigner(public_key={self._public.hex().upper()})"
