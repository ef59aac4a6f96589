"""How public keys are shown to operators: `key_format` of a `[[chain]]`, node IDs, addresses.

- ``bech32``: classic bech32 of the Amino-prefixed key (Ed25519 ``16 24 DE 64 20`` + 32 bytes,
  secp256k1 ``EB 5A E9 87 21`` + 33 bytes) under the chain's consensus or account prefix.
  tmkms itself shows account keys as a bech32 account *address* under the ``...pub`` prefix,
  which mixes a key prefix with an address; we show the key the prefix names.
- ``hex``: upper-case hex of the raw key.
- ``cosmos-json``: the protobuf-JSON ``Any`` form, ``{"@type":...,"key":"<base64>"}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING

from kms.keys.bech32 import bech32_encode

if TYPE_CHECKING:
    from kms.config import KeyFormat

AMINO_PREFIX_ED25519 = bytes.fromhex("1624de6420")
AMINO_PREFIX_SECP256K1 = bytes.fromhex("eb5ae98721")

_TYPE_URLS = {
    "ed25519": "/cosmos.crypto.ed25519.PubKey",
    "secp256k1": "/cosmos.crypto.secp256k1.PubKey",
}
_ALGORITHM_FOR_ROLE = {"consensus": "ed25519", "account": "secp256k1"}
_ROLE_FOR_ALGORITHM = {"ed25519": "consensus", "secp256k1": "account"}
_KEY_LENGTHS = {"ed25519": 32, "secp256k1": 33}


def amino_encode_public_key(algorithm: str, public_key: bytes) -> bytes:
    """The legacy Amino binary encoding of a public key (type prefix + length + key)."""
    _check_length(algorithm, public_key)
    prefix = AMINO_PREFIX_ED25519 if algorithm == "ed25519" else AMINO_PREFIX_SECP256K1
    return prefix + public_key


def format_public_key(
    key_type: str, public_key: bytes, key_format: KeyFormat, kind: str | None = None
) -> str:
    """Render ``public_key`` the way a chain's ``key_format`` asks.

    ``key_type`` is the algorithm (``"ed25519"`` / ``"secp256k1"``) or the role
    (``"consensus"`` implies Ed25519, ``"account"`` secp256k1). ``kind`` picks the bech32
    prefix (``"consensus"`` / ``"account"``); by default Ed25519 keys are consensus keys and
    secp256k1 keys account keys.
    """
    algorithm = _ALGORITHM_FOR_ROLE.get(key_type, key_type)
    if algorithm not in _KEY_LENGTHS:
        raise ValueError(f"unknown key type {key_type!r}")
    _check_length(algorithm, public_key)
    role = kind if kind is not None else _ROLE_FOR_ALGORITHM[algorithm]
    if role not in _ALGORITHM_FOR_ROLE:
        raise ValueError(f"unknown key kind {kind!r} (expected consensus or account)")
    if key_format.type == "hex":
        return public_key.hex().upper()
    if key_format.type == "cosmos-json":
        body = {"@type": _TYPE_URLS[algorithm], "key": base64.b64encode(public_key).decode()}
        return json.dumps(body, separators=(",", ":"))
    prefix = (
        key_format.consensus_key_prefix if role == "consensus" else key_format.account_key_prefix
    )
    if not prefix:
        raise ValueError(f"bech32 key format without a {role} key prefix")
    return bech32_encode(prefix, amino_encode_public_key(algorithm, public_key))


def node_id(public_key: bytes) -> str:
    """A node's ID: lower-case hex of the first 20 bytes of SHA-256 of its Ed25519 key."""
    _check_length("ed25519", public_key)
    return hashlib.sha256(public_key).digest()[:20].hex()


def validator_address(public_key: bytes) -> str:
    """A validator's address as CometBFT JSON shows it: the node ID bytes, upper-case hex."""
    return node_id(public_key).upper()


def _check_length(algorithm: str, public_key: bytes) -> None:
    expected = _KEY_LENGTHS[algorithm]
    if len(public_key) != expected:
        raise ValueError(f"{algorithm} public key must be {expected} bytes, got {len(public_key)}")
