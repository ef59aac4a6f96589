"""Key material held by simulated objects: validation, generation, public keys, signing.

Storage formats (what ``StoredObject.data`` holds):

- Ed25519: the 32-byte seed (what PUT_ASYMMETRIC_KEY takes).
- ECDSA curves: the private scalar, big-endian, curve-size bytes.
- Wrap keys: the raw AES key; authentication keys: K-ENC || K-MAC.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .constants import WRAP_KEY_LENGTHS, Algo, DeviceError, Err

RandomSource = Callable[[int], bytes]

#: ECDSA algorithm -> (curve factory, scalar length in bytes).
EC_CURVES: dict[int, tuple[Callable[[], ec.EllipticCurve], int]] = {
    Algo.EC_P224: (ec.SECP224R1, 28),
    Algo.EC_P256: (ec.SECP256R1, 32),
    Algo.EC_P384: (ec.SECP384R1, 48),
    Algo.EC_P521: (ec.SECP521R1, 66),
    Algo.EC_K256: (ec.SECP256K1, 32),
    Algo.EC_BP256: (ec.BrainpoolP256R1, 32),
    Algo.EC_BP384: (ec.BrainpoolP384R1, 48),
    Algo.EC_BP512: (ec.BrainpoolP512R1, 64),
}
ED25519_SEED_LENGTH = 32
WRAP_NONCE_LENGTH = 13
WRAP_TAG_LENGTH = 16

#: Prehashed digest length accepted by SIGN_ECDSA -> the hash it stands for.
_DIGESTS: dict[int, hashes.HashAlgorithm] = {
    20: hashes.SHA1(),
    28: hashes.SHA224(),
    32: hashes.SHA256(),
    48: hashes.SHA384(),
    64: hashes.SHA512(),
}


def is_asymmetric(algorithm: int) -> bool:
    """True for the asymmetric-key algorithms the simulator implements."""
    return algorithm == Algo.EC_ED25519 or algorithm in EC_CURVES


def _ec_key(algorithm: int, scalar: bytes) -> ec.EllipticCurvePrivateKey:
    curve, size = EC_CURVES[algorithm]
    if len(scalar) != size:
        raise DeviceError(Err.INVALID_DATA)
    try:
        return ec.derive_private_key(int.from_bytes(scalar, "big"), curve())
    except ValueError as exc:  # zero or >= group order
        raise DeviceError(Err.INVALID_DATA) from exc


def check_asymmetric(algorithm: int, data: bytes) -> bytes:
    """Validate imported private-key bytes for ``algorithm``; INVALID_DATA otherwise."""
    if algorithm == Algo.EC_ED25519:
        if len(data) != ED25519_SEED_LENGTH:
            raise DeviceError(Err.INVALID_DATA)
        return data
    if algorithm not in EC_CURVES:
        raise DeviceError(Err.INVALID_DATA)
    _ec_key(algorithm, data)
    return data


def generate_asymmetric(algorithm: int, random_bytes: RandomSource) -> bytes:
    """Generate private-key bytes for ``algorithm`` from the device's random source."""
    if algorithm == Algo.EC_ED25519:
        return random_bytes(ED25519_SEED_LENGTH)
    if algorithm not in EC_CURVES:
        raise DeviceError(Err.INVALID_DATA)
    _, size = EC_CURVES[algorithm]
    while True:
        candidate = bytearray(random_bytes(size))
        if algorithm == Algo.EC_P521:
            candidate[0] &= 0x01  # the P-521 order is just under 2**521
        try:
            _ec_key(algorithm, bytes(candidate))
        except DeviceError:
            continue
        return bytes(candidate)


def public_key(algorithm: int, data: bytes) -> bytes:
    """Raw public key as GET_PUBLIC_KEY returns it (Ed25519: 32 bytes; EC: x || y)."""
    if algorithm == Algo.EC_ED25519:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(data)
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    point = _ec_key(algorithm, data).public_key()
    return point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


def sign_eddsa(seed: bytes, message: bytes) -> bytes:
    """Pure Ed25519 signature (RFC 8032), identical to any software signer."""
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def sign_ecdsa(algorithm: int, scalar: bytes, digest: bytes) -> bytes:
    """DER ECDSA signature over a prehashed digest (not low-S normalised, like the device)."""
    hash_algorithm = _DIGESTS.get(len(digest))
    if hash_algorithm is None:
        raise DeviceError(Err.INVALID_DATA)
    key = _ec_key(algorithm, scalar)
    return key.sign(digest, ec.ECDSA(Prehashed(hash_algorithm)))


def wrap_seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """AES-CCM seal: ``nonce (13) || ciphertext || tag (16)``."""
    return nonce + AESCCM(key, tag_length=WRAP_TAG_LENGTH).encrypt(nonce, plaintext, None)


def wrap_open(key: bytes, blob: bytes) -> bytes:
    """Open a wrap blob sealed by :func:`wrap_seal`; INVALID_DATA if it does not verify."""
    if len(blob) < WRAP_NONCE_LENGTH + WRAP_TAG_LENGTH:
        raise DeviceError(Err.WRONG_LENGTH)
    nonce, sealed = blob[:WRAP_NONCE_LENGTH], blob[WRAP_NONCE_LENGTH:]
    try:
        return AESCCM(key, tag_length=WRAP_TAG_LENGTH).decrypt(nonce, sealed, None)
    except InvalidTag as exc:
        raise DeviceError(Err.INVALID_DATA) from exc


def check_wrap_key(algorithm: int, key: bytes) -> bytes:
    """Validate an AES-CCM wrap key against its algorithm."""
    if WRAP_KEY_LENGTHS.get(algorithm) != len(key):
        raise DeviceError(Err.INVALID_DATA)
    return key
