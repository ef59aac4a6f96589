"""Ed25519 secret keys in the layouts tmkms reads.

A key file holds one line of base64 of:

- 32 bytes: the RFC 8032 seed (what ``tmkms softsign keygen`` and ``import`` write);
- 64 bytes: either seed || public key (the layout inside ``priv_validator_key.json``),
  recognised when the second half is the seed's public key, or otherwise tmkms 0.15's
  *expanded* secret key, scalar (little-endian) || nonce prefix, i.e. SHA-512(seed) clamped;
- 96 bytes: a key exported from a YubiHSM 2: the scalar big-endian, the nonce prefix, then
  the public key, which must match the scalar ("keypair mismatch" otherwise).

Seeds give ordinary :class:`nacl.signing.SigningKey` objects. Expanded keys have no seed, so
they become :class:`ExpandedSigningKey`, a SigningKey whose ``sign`` computes the same
RFC 8032 signature from the scalar and prefix with libsodium's scalar arithmetic.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import nacl.bindings
import nacl.encoding
import nacl.public
import nacl.signing
from nacl.signing import SignedMessage, SigningKey, VerifyKey

from kms.errors import KeyFileError
from kms.keys.files import read_base64_secret

SEED_SIZE = 32
KEYPAIR_SIZE = 64
YUBIHSM_EXPORT_SIZE = 96


class ExpandedSigningKey(SigningKey):
    """An Ed25519 key known only by its expanded form (scalar, nonce prefix).

    Signs exactly as a seed-based key with the same expansion would. It has no seed, so
    ``bytes(key)`` and ``to_curve25519_private_key()`` raise TypeError.
    """

    def __init__(self, scalar: bytes, prefix: bytes) -> None:
        if len(scalar) != 32 or len(prefix) != 32:
            raise ValueError("expanded Ed25519 key needs a 32-byte scalar and 32-byte prefix")
        clamped = bytearray(scalar)
        clamped[0] &= 248
        clamped[31] &= 127
        clamped[31] |= 64
        self._scalar = nacl.bindings.crypto_core_ed25519_scalar_reduce(bytes(clamped) + bytes(32))
        self._prefix = bytes(prefix)
        public = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(self._scalar)
        self.verify_key = VerifyKey(public)

    @classmethod
    def from_seed(cls, seed: bytes) -> ExpandedSigningKey:
        """The expanded form of an RFC 8032 seed (useful to compare both kinds of key)."""
        digest = hashlib.sha512(seed).digest()
        return cls(digest[:32], digest[32:])

    def __bytes__(self) -> bytes:
        raise TypeError("an expanded Ed25519 key has no seed")

    def __hash__(self) -> int:
        return hash((self._scalar, self._prefix))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExpandedSigningKey):
            return False
        return hmac.compare_digest(self._scalar + self._prefix, other._scalar + other._prefix)

    def __repr__(self) -> str:
        return f"ExpandedSigningKey(public={bytes(self.verify_key).hex()})"

    def sign(
        self, message: bytes, encoder: nacl.encoding.Encoder = nacl.encoding.RawEncoder
    ) -> SignedMessage:
        """Sign ``message``; the result is byte-identical to a seed key's signature."""
        b = nacl.bindings
        public = bytes(self.verify_key)
        nonce = b.crypto_core_ed25519_scalar_reduce(hashlib.sha512(self._prefix + message).digest())
        commitment = b.crypto_scalarmult_ed25519_base_noclamp(nonce)
        challenge = b.crypto_core_ed25519_scalar_reduce(
            hashlib.sha512(commitment + public + message).digest()
        )
        response = b.crypto_core_ed25519_scalar_add(
            nonce, b.crypto_core_ed25519_scalar_mul(challenge, self._scalar)
        )
        signature = commitment + response
        return SignedMessage._from_parts(
            encoder.encode(signature), encoder.encode(message), encoder.encode(signature + message)
        )

    def to_curve25519_private_key(self) -> nacl.public.PrivateKey:
        """Not available: X25519 conversion needs the seed."""
        raise TypeError("an expanded Ed25519 key has no seed to convert to X25519")


def ed25519_key_from_bytes(raw: bytes, source: Path | str = "key") -> SigningKey:
    """Build a signing key from any layout above; KeyFileError (naming ``source``) otherwise."""
    if len(raw) == SEED_SIZE:
        return SigningKey(raw)
    if len(raw) == KEYPAIR_SIZE:
        seeded = SigningKey(raw[:SEED_SIZE])
        if hmac.compare_digest(bytes(seeded.verify_key), raw[SEED_SIZE:]):
            return seeded
        return ExpandedSigningKey(raw[:32], raw[32:])
    if len(raw) == YUBIHSM_EXPORT_SIZE:
        expanded = ExpandedSigningKey(raw[31::-1], raw[32:64])
        if not hmac.compare_digest(bytes(expanded.verify_key), raw[64:]):
            raise KeyFileError(f"{source}: keypair mismatch: public key does not match the secret")
        return expanded
    raise KeyFileError(
        f"{source}: invalid Ed25519 key size: expected 32, 64 or 96 bytes, got {len(raw)}"
    )


def load_ed25519_key(path: Path) -> SigningKey:
    """Load a base64 Ed25519 key file (32, 64 or 96 bytes; see the module docstring)."""
    return ed25519_key_from_bytes(read_base64_secret(path), path)


def generate_ed25519_seed() -> bytes:
    """A fresh random 32-byte Ed25519 seed from the OS CSPRNG."""
    return bytes(nacl.signing.SigningKey.generate())
