"""Key management inside a YubiHSM 2: what `tmkms yubihsm keys ...` does (blocking).

Keys are created the way tmkms creates them: in domain 1, Ed25519 consensus keys with
SIGN_EDDSA and secp256k1 account keys with SIGN_ECDSA, plus EXPORTABLE_UNDER_WRAP unless the
key is made non-exportable, so it can be backed up under wrap key 1 from `setup`.
"""

from __future__ import annotations

import datetime
import struct
from typing import Literal

import attrs
from cryptography.hazmat.primitives.asymmetric import ed25519
from yubihsm.core import AuthSession
from yubihsm.defs import ALGORITHM, CAPABILITY, COMMAND, OBJECT
from yubihsm.objects import LABEL_LENGTH, AsymmetricKey, WrapKey

from kms.errors import KmsError
from providers.yubihsm.signers import (
    ED25519_PUBLIC_KEY_SIZE,
    K256_POINT_SIZE,
    account_public_key,
    read_public_key,
)

#: Domain of keys created by the CLI (tmkms: DOM1); the validator auth key from setup has it.
DEFAULT_DOMAINS = 0x0001
#: Wrap key used for backups when ``-w`` is not given (the one `setup` creates).
DEFAULT_WRAP_KEY = 0x0001
KeyKind = Literal["consensus", "account"]


class LabelError(KmsError):
    """An object label that does not fit the HSM's 40 bytes."""


@attrs.frozen
class KeyInfo:
    """An asymmetric key as `keys list` shows it."""

    key_id: int
    algorithm: int
    public_key: bytes
    label: str

    @property
    def kind(self) -> KeyKind | None:
        """``consensus`` (Ed25519), ``account`` (secp256k1), or None for other algorithms."""
        if self.algorithm == ALGORITHM.EC_ED25519 and len(self.public_key) == 32:
            return "consensus"
        if self.algorithm == ALGORITHM.EC_K256 and len(self.public_key) == 33:
            return "account"
        return None

    @property
    def algorithm_name(self) -> str:
        """The library's name of the key's algorithm (e.g. ``EC_P256``)."""
        try:
            return ALGORITHM(self.algorithm).name
        except ValueError:
            return f"algorithm {self.algorithm}"


def parse_object_id(text: str) -> int:
    """An object ID as the CLI accepts it: decimal, or hex with ``0x`` (1..65535)."""
    try:
        value = int(text[2:], 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError as exc:
        raise ValueError(f"couldn't parse key ID: {text}") from exc
    if not 1 <= value <= 0xFFFF:
        raise ValueError(f"key ID out of range (1..65535): {text}")
    return value


def timestamp() -> str:
    """The current UTC time as tmkms stamps labels, e.g. ``2019-02-26T18:03:53Z``."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_label(label: str) -> str:
    """``label`` if it fits in the HSM's 40-byte label field, else LabelError."""
    if len(label.encode()) > LABEL_LENGTH:
        raise LabelError(f"label is longer than {LABEL_LENGTH} bytes: {label!r}")
    return label


def default_label(kind: KeyKind, prefix: str | None) -> str:
    """``<prefix>:<timestamp>`` (or ``<kind>:<timestamp>``), cut to 40 bytes."""
    text = f"{prefix or kind}:{timestamp()}"
    return text.encode()[:LABEL_LENGTH].decode(errors="ignore")


def key_capabilities(kind: KeyKind, *, exportable: bool) -> CAPABILITY:
    """SIGN_EDDSA (consensus) or SIGN_ECDSA (account), plus EXPORTABLE_UNDER_WRAP."""
    capabilities = CAPABILITY.SIGN_ECDSA if kind == "account" else CAPABILITY.SIGN_EDDSA
    if exportable:
        capabilities |= CAPABILITY.EXPORTABLE_UNDER_WRAP
    return capabilities


def raw_public_key(algorithm: int, raw: bytes, key_id: int) -> bytes:
    """Ed25519 keys as they are; secp256k1 points compressed (33 bytes); others unchanged."""
    if algorithm == ALGORITHM.EC_K256 and len(raw) == K256_POINT_SIZE:
        return account_public_key(algorithm, raw, key_id)
    return raw


def generate_key(
    session: AuthSession, key_id: int, kind: KeyKind, label: str, *, exportable: bool
) -> bytes:
    """GENERATE_ASYMMETRIC_KEY in domain 1; returns the public key (compressed for secp256k1)."""
    algorithm = ALGORITHM.EC_K256 if kind == "account" else ALGORITHM.EC_ED25519
    AsymmetricKey.generate(
        session,
        key_id,
        check_label(label),
        DEFAULT_DOMAINS,
        key_capabilities(kind, exportable=exportable),
        algorithm,
    )
    found_algorithm, raw = read_public_key(session, key_id)
    return raw_public_key(found_algorithm, raw, key_id)


def put_ed25519_seed(session: AuthSession, key_id: int, label: str, seed: bytes) -> bytes:
    """PUT_ASYMMETRIC_KEY of an Ed25519 seed (exportable consensus key); its public key."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 key must be imported as its 32-byte seed")
    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    AsymmetricKey.put(
        session,
        key_id,
        check_label(label),
        DEFAULT_DOMAINS,
        key_capabilities("consensus", exportable=True),
        private,
    )
    _, raw = read_public_key(session, key_id)
    return raw


def list_keys(session: AuthSession) -> list[KeyInfo]:
    """Every asymmetric key this session can see, by ID."""
    found = session.list_objects(object_type=OBJECT.ASYMMETRIC_KEY)
    keys = []
    for obj in sorted(found, key=lambda o: o.id):
        info = obj.get_info()
        algorithm, raw = read_public_key(session, obj.id)
        label = info.label if isinstance(info.label, str) else info.label.hex()
        keys.append(KeyInfo(obj.id, algorithm, raw_public_key(algorithm, raw, obj.id), label))
    return keys


def export_wrapped(session: AuthSession, key_id: int, wrap_key_id: int) -> bytes:
    """EXPORT_WRAPPED of asymmetric key ``key_id`` under ``wrap_key_id`` (the raw blob)."""
    message = struct.pack(">HBH", wrap_key_id, OBJECT.ASYMMETRIC_KEY, key_id)
    return bytes(session.send_secure_cmd(COMMAND.EXPORT_WRAPPED, message))


def import_wrapped(session: AuthSession, wrap_key_id: int, blob: bytes) -> tuple[OBJECT, int]:
    """IMPORT_WRAPPED of a blob under ``wrap_key_id``; the imported object's (type, ID)."""
    obj = WrapKey(session, wrap_key_id).import_wrapped(blob)
    return obj.object_type, obj.id


def is_ed25519_public_key(algorithm: int, raw: bytes) -> bool:
    """Whether GET_PUBLIC_KEY returned an Ed25519 key."""
    return algorithm == ALGORITHM.EC_ED25519 and len(raw) == ED25519_PUBLIC_KEY_SIZE
