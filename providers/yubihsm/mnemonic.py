"""The secrets `tmkms yubihsm setup` derives from one 24-word BIP-39 admin mnemonic.

Compatible with tmkms, so a phrase written down with either tool restores the same HSM:

- the phrase encodes 32 bytes of entropy (BIP-39: 24 words of 11 bits = 256 bits of entropy
  plus an 8-bit checksum, the first byte of SHA-256 of the entropy);
- secrets are derived from that entropy with HKD32 (a BIP-32-style hardened derivation):
  for each path component in turn, HMAC-SHA512 keyed with the current key; the right half
  (the chain code) becomes the next key, and the left half is the result at the last
  component. Every path starts with the derivation version ``"1"``;
- the admin password is the phrase itself (words separated by single spaces);
- the operator, auditor and validator passwords are bech32 strings
  (``kms-<role>-password-1...``) of the first 16 bytes of the secret at ``1/role/<role>``;
- wrap key N is the 32-byte (AES-256) secret at ``1/wrap/0x000N``;
- a new phrase's entropy is HKDF-SHA512 over 32 bytes from the HSM's RNG followed by 32
  bytes from the OS's, so it is good as long as either source is.

Pure functions only: nothing here talks to a device.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mnemonic import Mnemonic

from kms.errors import KmsError
from kms.keys.bech32 import bech32_encode

# The standard BIP-39 English wordlist, as the reference implementation ships it.
WORDS: tuple[str, ...] = tuple(Mnemonic("english").wordlist)
ENTROPY_SIZE = 32
WORD_COUNT = 24
DERIVATION_VERSION = b"1"
HKDF_INFO = b"yubihsm setup BIP39 derivation"
ROLE_PASSWORD_BYTES = 16
ROLES = ("operator", "auditor", "validator")
_BITS_PER_WORD = 11
_WORD_INDEX = {word: index for index, word in enumerate(WORDS)}


class MnemonicError(KmsError):
    """A phrase that is not a valid 24-word BIP-39 English mnemonic."""


def phrase_from_entropy(entropy: bytes) -> str:
    """The 24-word phrase encoding 32 bytes of ``entropy`` (with its checksum)."""
    if len(entropy) != ENTROPY_SIZE:
        raise ValueError(f"mnemonic entropy must be {ENTROPY_SIZE} bytes, got {len(entropy)}")
    value = int.from_bytes(entropy + hashlib.sha256(entropy).digest()[:1], "big")
    mask = (1 << _BITS_PER_WORD) - 1
    indices = [(value >> (_BITS_PER_WORD * (WORD_COUNT - 1 - n))) & mask for n in range(WORD_COUNT)]
    return " ".join(WORDS[i] for i in indices)


def entropy_from_phrase(phrase: str) -> bytes:
    """The 32 bytes of entropy of a 24-word phrase; MnemonicError on any problem.

    Words may be separated by any whitespace; they must be lower-case English BIP-39 words
    and the checksum must match.
    """
    words = phrase.split()
    if len(words) != WORD_COUNT:
        raise MnemonicError(f"expected a {WORD_COUNT}-word mnemonic, got {len(words)} words")
    value = 0
    for position, word in enumerate(words, 1):
        index = _WORD_INDEX.get(word)
        if index is None:
            raise MnemonicError(f"word #{position} is not in the BIP-39 English wordlist")
        value = value << _BITS_PER_WORD | index
    entropy, checksum = (value >> 8).to_bytes(ENTROPY_SIZE, "big"), value & 0xFF
    if hashlib.sha256(entropy).digest()[0] != checksum:
        raise MnemonicError("mnemonic checksum mismatch (a word is wrong or misplaced)")
    return entropy


def normalize_phrase(phrase: str) -> str:
    """The canonical form of a valid phrase (single spaces): the admin password."""
    return phrase_from_entropy(entropy_from_phrase(phrase))


def derive_secret(entropy: bytes, path: Sequence[bytes]) -> bytes:
    """The 32-byte secret at ``1/<path...>`` below ``entropy`` (HKD32 derivation)."""
    if not path:
        raise ValueError("cannot derive a secret for the root path")
    components = [DERIVATION_VERSION, *path]
    key = entropy
    for position, component in enumerate(components):
        if not 1 <= len(component) <= 256:
            raise ValueError("derivation path components are 1 to 256 bytes")
        digest = hmac.new(key, component, hashlib.sha512).digest()
        key = digest[:32] if position == len(components) - 1 else digest[32:]
    return key


def role_password(entropy: bytes, role: str) -> str:
    """The password of authentication key role ``role`` (operator, auditor, validator)."""
    secret = derive_secret(entropy, [b"role", role.encode()])
    return bech32_encode(f"kms-{role}-password-", secret[:ROLE_PASSWORD_BYTES])


def wrap_key_secret(entropy: bytes, key_id: int) -> bytes:
    """The AES-256 key of wrap key ``key_id``."""
    return derive_secret(entropy, [b"wrap", f"0x{key_id:04x}".encode()])


def new_entropy(hsm_random: bytes, os_random: bytes | None = None) -> bytes:
    """Fresh mnemonic entropy from the HSM's random bytes and the OS's (HKDF-SHA512)."""
    if len(hsm_random) != ENTROPY_SIZE:
        raise ValueError(f"expected {ENTROPY_SIZE} random bytes from the HSM")
    if os_random is None:
        os_random = secrets.token_bytes(ENTROPY_SIZE)
    kdf = HKDF(algorithm=hashes.SHA512(), length=ENTROPY_SIZE, salt=None, info=HKDF_INFO)
    return kdf.derive(hsm_random + os_random)
