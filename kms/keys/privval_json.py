"""CometBFT's ``priv_validator_key.json``: reading it, checking it, writing one.

Layout: ``{"address": UPPERHEX(SHA-256(pub)[:20]), "pub_key": {"type":
"tendermint/PubKeyEd25519", "value": b64(pub)}, "priv_key": {"type":
"tendermint/PrivKeyEd25519", "value": b64(seed || pub)}}``. secp256k1 validator keys
(``tendermint/PrivKeySecp256k1``, a 32-byte scalar) are read too, for ``softsign import``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from pathlib import Path
from typing import Any, Literal

import attrs
from nacl.signing import SigningKey

from kms.errors import KeyFileError
from kms.keys.display import validator_address
from kms.keys.files import read_secret_text
from kms.keys.secp256k1 import check_secp256k1_scalar, secp256k1_public_key
from kms.logs import register_secret

ED25519_PUB_TYPE = "tendermint/PubKeyEd25519"
ED25519_PRIV_TYPE = "tendermint/PrivKeyEd25519"
SECP256K1_PUB_TYPE = "tendermint/PubKeySecp256k1"
SECP256K1_PRIV_TYPE = "tendermint/PrivKeySecp256k1"


@attrs.frozen(repr=False)
class PrivValidatorKey:
    """The secret half of a priv_validator_key.json (32-byte seed or scalar) and its key."""

    algorithm: Literal["ed25519", "secp256k1"]
    secret: bytes
    public_key: bytes

    def __repr__(self) -> str:
        return f"PrivValidatorKey({self.algorithm}, public={self.public_key.hex()})"


def parse_priv_validator_key(
    text: str, source: Path | str = "priv_validator_key.json"
) -> PrivValidatorKey:
    """Parse and cross-check the JSON text; KeyFileError naming ``source`` on any problem."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"{source}: not valid JSON") from exc
    if not isinstance(doc, dict):
        raise KeyFileError(f"{source}: expected a JSON object")
    priv_type, priv = _typed_value(doc, "priv_key", source)
    pub_type, pub = _typed_value(doc, "pub_key", source)
    if priv_type == ED25519_PRIV_TYPE:
        if pub_type != ED25519_PUB_TYPE:
            raise KeyFileError(f"{source}: pub_key type {pub_type!r} does not match priv_key")
        if len(priv) not in (32, 64):
            raise KeyFileError(f"{source}: priv_key must hold 64 bytes (seed || public key)")
        seed = priv[:32]
        derived = bytes(SigningKey(seed).verify_key)
        if not hmac.compare_digest(derived, pub) or (
            len(priv) == 64 and not hmac.compare_digest(derived, priv[32:])
        ):
            raise KeyFileError(f"{source}: keypair mismatch: public key does not match the seed")
        _check_address(doc, derived, source)
        return PrivValidatorKey("ed25519", seed, derived)
    if priv_type == SECP256K1_PRIV_TYPE:
        if pub_type != SECP256K1_PUB_TYPE:
            raise KeyFileError(f"{source}: pub_key type {pub_type!r} does not match priv_key")
        scalar = check_secp256k1_scalar(priv, source)
        derived = secp256k1_public_key(scalar)
        if not hmac.compare_digest(derived, pub):
            raise KeyFileError(f"{source}: keypair mismatch: public key does not match the secret")
        return PrivValidatorKey("secp256k1", scalar, derived)
    raise KeyFileError(f"{source}: unsupported priv_key type {priv_type!r}")


def read_priv_validator_key(path: Path) -> PrivValidatorKey:
    """Read and check a priv_validator_key.json file of either algorithm."""
    return parse_priv_validator_key(read_secret_text(path), path)


def read_priv_validator_key_json(path: Path) -> SigningKey:
    """Read an Ed25519 priv_validator_key.json and return its signing key."""
    key = read_priv_validator_key(path)
    if key.algorithm != "ed25519":
        raise KeyFileError(f"{path}: expected an Ed25519 validator key, found {key.algorithm}")
    return SigningKey(key.secret)


def public_key_json(public_key: bytes) -> dict[str, str]:
    """The Amino-JSON form of an Ed25519 public key: ``{"type": ..., "value": b64}``."""
    return {"type": ED25519_PUB_TYPE, "value": base64.b64encode(public_key).decode()}


def format_priv_validator_key_json(seed: bytes) -> str:
    """The priv_validator_key.json text CometBFT would write for an Ed25519 ``seed``."""
    public = bytes(SigningKey(seed).verify_key)
    doc = {
        "address": validator_address(public),
        "pub_key": public_key_json(public),
        "priv_key": {"type": ED25519_PRIV_TYPE, "value": base64.b64encode(seed + public).decode()},
    }
    return json.dumps(doc, indent=2) + "\n"


def _typed_value(doc: dict[str, Any], field: str, source: Path | str) -> tuple[str, bytes]:
    entry = doc.get(field)
    if not isinstance(entry, dict):
        raise KeyFileError(f"{source}: missing {field!r} object")
    kind, value = entry.get("type"), entry.get("value")
    if not isinstance(kind, str) or not isinstance(value, str):
        raise KeyFileError(f"{source}: {field} needs string 'type' and 'value'")
    if field == "priv_key":
        register_secret(value)
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{source}: {field}.value is not valid base64") from exc
    if field == "priv_key":
        register_secret(decoded)
    return kind, decoded


def _check_address(doc: dict[str, Any], public: bytes, source: Path | str) -> None:
    address = doc.get("address")
    if address is None:
        return
    if not isinstance(address, str) or address.upper() != validator_address(public):
        raise KeyFileError(f"{source}: address does not match the public key")
