"""SCP03-style session cryptography, device side (pure functions, no I/O).

Theory of operation: both sides hold static K-ENC/K-MAC (PBKDF2 of a password).
CREATE_SESSION exchanges 8-byte challenges; the session keys and both cryptograms
are AES-CMAC derivations over ``host challenge || card challenge``. Every later
frame is chained: the MAC of a command covers the previous command's full CMAC
("the chain"), and the reply's R-MAC covers the chain produced by its command.
Command and reply payloads are AES-CBC encrypted under S-ENC with an IV that is
the encrypted message counter.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

KEY_ENC = 0x04
KEY_MAC = 0x06
KEY_RMAC = 0x07
CARD_CRYPTOGRAM = 0x00
HOST_CRYPTOGRAM = 0x01
BLOCK = 16
MAC_LENGTH = 8
PBKDF2_SALT = b"Yubico"
PBKDF2_ITERATIONS = 10_000


class PaddingError(ValueError):
    """A decrypted session payload did not end in ``80 00..``."""


def password_keys(password: str) -> tuple[bytes, bytes]:
    """Static ``(K-ENC, K-MAC)`` from a password: PBKDF2-HMAC-SHA256, salt ``Yubico``."""
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=PBKDF2_SALT, iterations=PBKDF2_ITERATIONS
    )
    key = kdf.derive(password.encode())
    return key[:16], key[16:]


def aes_cmac(key: bytes, *parts: bytes) -> bytes:
    """AES-CMAC over the concatenation of ``parts``."""
    mac = cmac.CMAC(algorithms.AES(key))
    for part in parts:
        mac.update(part)
    return mac.finalize()


def derive(key: bytes, constant: int, context: bytes, bits: int = 128) -> bytes:
    """SCP03 KDF: CMAC(key, 11 zero bytes || constant || 0 || bits || 1 || context)."""
    data = bytes(11) + struct.pack(">BBHB", constant, 0, bits, 1) + context
    return aes_cmac(key, data)[: bits // 8]


@dataclass(frozen=True)
class SessionKeys:
    """The three session keys of one secure session."""

    s_enc: bytes
    s_mac: bytes
    s_rmac: bytes

    @classmethod
    def derive(cls, key_enc: bytes, key_mac: bytes, context: bytes) -> SessionKeys:
        """Derive S-ENC, S-MAC and S-RMAC from the static keys and the 16-byte context."""
        return cls(
            s_enc=derive(key_enc, KEY_ENC, context),
            s_mac=derive(key_mac, KEY_MAC, context),
            s_rmac=derive(key_mac, KEY_RMAC, context),
        )

    def card_cryptogram(self, context: bytes) -> bytes:
        """The 8-byte card cryptogram the host checks after CREATE_SESSION."""
        return derive(self.s_mac, CARD_CRYPTOGRAM, context, 64)

    def host_cryptogram(self, context: bytes) -> bytes:
        """The 8-byte host cryptogram the device expects in AUTHENTICATE_SESSION."""
        return derive(self.s_mac, HOST_CRYPTOGRAM, context, 64)


def chain_mac(key: bytes, chain: bytes, message: bytes) -> tuple[bytes, bytes]:
    """Return ``(new chain, 8-byte MAC)`` where new chain = CMAC(key, chain || message)."""
    full = aes_cmac(key, chain, message)
    return full, full[:MAC_LENGTH]


def mac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(a, b)


def counter_iv(s_enc: bytes, counter: int) -> bytes:
    """IV for message ``counter``: AES-ECB(S-ENC, counter as 16 bytes big-endian)."""
    encryptor = Cipher(algorithms.AES(s_enc), modes.ECB()).encryptor()
    return encryptor.update(counter.to_bytes(BLOCK, "big")) + encryptor.finalize()


def pad(data: bytes) -> bytes:
    """ISO/IEC 9797-1 method 2: append 0x80 then zeros to a multiple of 16."""
    data += b"\x80"
    return data + bytes(-len(data) % BLOCK)


def unpad(data: bytes) -> bytes:
    """Strip method-2 padding; PaddingError if it is malformed."""
    if not data or len(data) % BLOCK:
        raise PaddingError("session payload is not a whole number of blocks")
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80") or len(data) - len(stripped) >= BLOCK:
        raise PaddingError("bad session padding")
    return stripped[:-1]


def cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CBC encrypt block-aligned ``data``."""
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CBC decrypt block-aligned ``data``."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()
