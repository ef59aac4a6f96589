"""Signers backed by keys inside a YubiHSM 2: one class, :class:`YubiHsmSigner`, given the
:class:`HsmAlgorithm` of its key.

Consensus keys are Ed25519 (:data:`ED25519`: SIGN_EDDSA over the sign bytes, 64 bytes
identical to software Ed25519); account keys are secp256k1 (:data:`SECP256K1`: SIGN_ECDSA
over SHA-256 of the message, returned as ``r || s`` with low S). Each signature is checked
against the key's public key before it leaves the KMS: a verification costs far less than
the HSM's signature, and a bad signature costs a missed block.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

import attrs
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
from providers import KeyType
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


#: Checks a reply of the HSM against the message: the signature to hand out, or ValueError,
#: InvalidSignature or BadSignatureError.
Check = Callable[[bytes, bytes], bytes]


@attrs.frozen
class HsmAlgorithm:
    """What differs between the key types: the HSM's key algorithm, the signing command,
    how the reply is checked, and how the public key is read."""

    key_type: KeyType
    hsm_algorithm: int
    command: str
    #: the signing call on the HSM: the raw reply for ``message``
    sign: Callable[[AsymmetricKey, bytes], bytes]
    #: the checker of replies, made once per signer from its public key
    checker: Callable[[bytes], Check]
    #: ``(algorithm, raw, key_id)`` of GET_PUBLIC_KEY -> the public key; KeyFileError if the
    #: key is of another type
    public_key: Callable[[int, bytes, int], bytes]


def _sign_eddsa(key: AsymmetricKey, message: bytes) -> bytes:
    return bytes(key.sign_eddsa(message))


def _ed25519_checker(public_key: bytes) -> Check:
    verify_key = nacl.signing.VerifyKey(public_key)

    def check(message: bytes, signature: bytes) -> bytes:
        verify_key.verify(message, signature)
        return signature

    return check


def _sign_ecdsa(key: AsymmetricKey, message: bytes) -> bytes:
    return bytes(key.sign_ecdsa(message, hashes.SHA256()))


def _secp256k1_checker(public_key: bytes) -> Check:
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public_key)

    def check(message: bytes, der: bytes) -> bytes:
        signature = low_s_signature(der)
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        point.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        return signature

    return check


ED25519 = HsmAlgorithm(
    "ed25519",
    ALGORITHM.EC_ED25519,
    "SIGN_EDDSA",
    _sign_eddsa,
    _ed25519_checker,
    consensus_public_key,
)
SECP256K1 = HsmAlgorithm(
    "secp256k1",
    ALGORITHM.EC_K256,
    "SIGN_ECDSA",
    _sign_ecdsa,
    _secp256k1_checker,
    account_public_key,
)


def algorithm_of(hsm_algorithm: int) -> HsmAlgorithm | None:
    """The algorithm of a key the HSM reports as ``hsm_algorithm``; None if not supported."""
    for algorithm in (ED25519, SECP256K1):
        if algorithm.hsm_algorithm == hsm_algorithm:
            return algorithm
    return None


class YubiHsmSigner:
    """A key that lives in the HSM: an Ed25519 consensus key or a secp256k1 account key.

    ``public_key`` is the 32-byte Ed25519 key or the 33-byte compressed secp256k1 point.
    """

    provider = "yubihsm"

    def __init__(
        self, device: HsmDevice, key_id: int, public_key: bytes, algorithm: HsmAlgorithm
    ) -> None:
        self.device = device
        self.key_id = key_id
        self.algorithm = algorithm
        self.key_type: KeyType = algorithm.key_type
        self._public = bytes(public_key)
        self._check = algorithm.checker(self._public)
        self._what = f"{algorithm.command} with YubiHSM key 0x{key_id:04x}"

    @property
    def public_key(self) -> bytes:
        """The public key (raw Ed25519, or compressed secp256k1)."""
        return self._public

    async def sign(self, message: bytes) -> bytes:
        """The 64-byte signature of ``message`` made by the HSM, checked before it is returned.

        Ed25519 signs the message itself; secp256k1 signs its SHA-256 (low-S ``r || s``).
        """
        data = bytes(message)
        key_id = self.key_id
        hsm_sign = self.algorithm.sign

        def sign_on_hsm(session: AuthSession) -> bytes:
            return hsm_sign(AsymmetricKey(session, key_id), data)

        reply = await self.device.run(sign_on_hsm, self._what)
        try:
            return self._check(data, reply)
        except (ValueError, InvalidSignature, nacl.exceptions.BadSignatureError) as exc:
            self.device.errors += 1
            raise SignerError(f"{self._what}: the HSM returned an invalid signature") from exc

    def __repr__(self) -> str:
        return f"YubiHsmSigner({self.key_type}, key_id=0x{self.key_id:04x})"
