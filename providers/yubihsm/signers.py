"""Signers backed by keys inside a YubiHSM 2, and their registration from tmkms.toml.

Consensus keys are Ed25519 (SIGN_EDDSA over the sign bytes, 64 bytes identical to software
Ed25519); account keys are secp256k1 (SIGN_ECDSA over SHA-256 of the message, returned as
``r || s`` with low S). Each signature is checked against the key's public key before it
leaves the KMS: a verification costs tens of microseconds, a bad signature a missed block.
"""

from __future__ import annotations

import logging
import struct
from typing import Literal

import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from yubihsm.core import AuthSession
from yubihsm.defs import ALGORITHM, COMMAND
from yubihsm.objects import AsymmetricKey

from kms.errors import KeyFileError, SignerError
from providers.softsign import low_s_signature
from providers.yubihsm.device import HsmDevice

log = logging.getLogger("providers.yubihsm")

ED25519_PUBLIC_KEY_SIZE = 32
K256_POINT_SIZE = 64


def read_public_key(session: AuthSession, key_id: int) -> tuple[int, bytes]:
    """GET_PUBLIC_KEY: the key's algorithm and raw public key (EC: x || y)."""
    reply = session.send_secure_cmd(COMMAND.GET_PUBLIC_KEY, struct.pack(">H", key_id))
    if not reply:
        raise SignerError(f"empty GET_PUBLIC_KEY reply for key 0x{key_id:04x}")
    return reply[0], bytes(reply[1:])


def consensus_public_key(algorithm: int, raw: bytes, key_id: int) -> bytes:
    """The 32-byte Ed25519 key, or KeyFileError if the HSM key is not Ed25519."""
    if algorithm != ALGORITHM.EC_ED25519 or len(raw) != ED25519_PUBLIC_KEY_SIZE:
        raise KeyFileError(f"YubiHSM key ID 0x{key_id:04x} is not a valid Ed25519 signing key")
    return raw


def account_public_key(algorithm: int, raw: bytes, key_id: int) -> bytes:
    """The 33-byte compressed secp256k1 key, or KeyFileError if the key is not secp256k1."""
    if algorithm != ALGORITHM.EC_K256 or len(raw) != K256_POINT_SIZE:
        raise KeyFileError(f"YubiHSM key ID 0x{key_id:04x} is not a valid ECDSA signing key")
    try:
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), b"\x04" + raw)
    except ValueError as exc:
        raise KeyFileError(f"YubiHSM key ID 0x{key_id:04x}: invalid secp256k1 point") from exc
    return point.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )


class YubiHsmEd25519Signer:
    """An Ed25519 consensus key that lives in the HSM."""

    key_type: Literal["ed25519"] = "ed25519"
    provider = "yubihsm"

    def __init__(self, device: HsmDevice, key_id: int, public_key: bytes) -> None:
        self.device = device
        self.key_id = key_id
        self._public = bytes(public_key)
        self._verify = nacl.signing.VerifyKey(self._public)
        self._what = f"SIGN_EDDSA with YubiHSM key 0x{key_id:04x}"

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public

    async def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``, made by the HSM."""
        data = bytes(message)
        key_id = self.key_id

        def sign_eddsa(session: AuthSession) -> bytes:
            return bytes(AsymmetricKey(session, key_id).sign_eddsa(data))

        signature = await self.device.run(sign_eddsa, self._what)
        try:
            self._verify.verify(data, signature)
        except (nacl.exceptions.BadSignatureError, ValueError) as exc:
            self.device.errors += 1
            raise SignerError(f"{self._what}: the HSM returned an invalid signature") from exc
        return signature

    def __repr__(self) -> str:
        return f"YubiHsmEd25519Signer(key_id=0x{self.key_id:04x})"


class YubiHsmSecp256k1Signer:
    """A secp256k1 account key that lives in the HSM (low-S ``r || s`` over SHA-256)."""

    key_type: Literal["secp256k1"] = "secp256k1"
    provider = "yubihsm"

    def __init__(self, device: HsmDevice, key_id: int, public_key: bytes) -> None:
        self.device = device
        self.key_id = key_id
        self._public = bytes(public_key)
        self._verify = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), self._public)
        self._what = f"SIGN_ECDSA with YubiHSM key 0x{key_id:04x}"

    @property
    def public_key(self) -> bytes:
        """The 33-byte compressed public key."""
        return self._public

    async def sign(self, message: bytes) -> bytes:
        """The 64-byte low-S signature over SHA-256(``message``), made by the HSM."""
        data = bytes(message)
        key_id = self.key_id

        def sign_ecdsa(session: AuthSession) -> bytes:
            return bytes(AsymmetricKey(session, key_id).sign_ecdsa(data, hashes.SHA256()))

        der = await self.device.run(sign_ecdsa, self._what)
        try:
            signature = low_s_signature(der)
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            self._verify.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature) as exc:
            self.device.errors += 1
            raise SignerError(f"{self._what}: the HSM returned an invalid signature") from exc
        return signature

    def __repr__(self) -> str:
        return f"YubiHsmSecp256k1Signer(key_id=0x{self.key_id:04x})"
