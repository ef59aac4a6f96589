"""Ed25519 key objects on a PKCS#11 token: finding them, checking them, reading public keys.

An Ed25519 private-key object carries no public key (SoftHSM keeps no ``CKA_EC_POINT`` on
it, and importing a seed creates no public object), so the public key comes from the
public-key object with the same label (and ``CKA_ID``). Its ``CKA_EC_POINT`` is a DER
OCTET STRING, ``04 20`` + the 32 key bytes; a few tokens store the 32 bytes bare.

Lookups raise KeyFileError naming the key: not found, ambiguous, not an Ed25519 private
key, not allowed to sign, or without its public-key object. Call under the PKCS#11 lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import AttributeSensitive, AttributeTypeInvalid
from pkcs11.types import SignMixin

from kms.errors import KeyFileError

if TYPE_CHECKING:
    from pkcs11 import Session

#: DER of the Ed25519 curve OID 1.3.101.112 (CKA_EC_PARAMS), and the PKCS#11 3.0 alternative
#: spelling, the PrintableString "edwards25519".
ED25519_PARAMS = bytes.fromhex("06032b6570")
ED25519_PARAMS_NAMED = b"\x13\x0c" + b"edwards25519"
ED25519_KEY_SIZE = 32
_DER_OCTET_STRING_32 = b"\x04\x20"


@attrs.frozen
class KeySelector:
    """How a configured key is found: by ``CKA_LABEL``, by ``CKA_ID``, or by both."""

    label: str | None = None
    id: bytes | None = None

    def __attrs_post_init__(self) -> None:
        if self.label is None and self.id is None:
            raise ValueError("a PKCS#11 key needs a label or an id")

    def template(self) -> dict[Attribute, Any]:
        """The search attributes for C_FindObjects."""
        found: dict[Attribute, Any] = {}
        if self.label is not None:
            found[Attribute.LABEL] = self.label
        if self.id is not None:
            found[Attribute.ID] = self.id
        return found

    def __str__(self) -> str:
        parts = []
        if self.label is not None:
            parts.append(f'label "{self.label}"')
        if self.id is not None:
            parts.append(f"id {self.id.hex()}")
        return "PKCS#11 key with " + " and ".join(parts)


def ed25519_public_from_point(point: bytes) -> bytes:
    """The 32-byte key in a ``CKA_EC_POINT`` (DER ``04 20`` + key, or the bare key)."""
    if len(point) == 2 + ED25519_KEY_SIZE and point.startswith(_DER_OCTET_STRING_32):
        return point[2:]
    if len(point) == ED25519_KEY_SIZE:
        return point
    raise ValueError(f"CKA_EC_POINT of {len(point)} bytes is not an Ed25519 public key")


def ed25519_point(public_key: bytes) -> bytes:
    """``CKA_EC_POINT`` for a 32-byte Ed25519 key: the DER OCTET STRING."""
    if len(public_key) != ED25519_KEY_SIZE:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return _DER_OCTET_STRING_32 + public_key


def is_ed25519_params(params: bytes | None) -> bool:
    """Whether ``CKA_EC_PARAMS`` names Ed25519 (None: the token did not say)."""
    return params is None or params in (ED25519_PARAMS, ED25519_PARAMS_NAMED)


def find_private_key(session: Session, selector: KeySelector) -> SignMixin:
    """The one Ed25519 private key ``selector`` names, checked to be able to sign."""
    matches = list(
        session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, **selector.template()})
    )
    if not matches:
        raise KeyFileError(f"{selector}: no such private key on the token")
    if len(matches) > 1:
        raise KeyFileError(f"{selector}: {len(matches)} private keys match; give both label and id")
    key = matches[0]
    attributes = _attributes(key, (Attribute.KEY_TYPE, Attribute.EC_PARAMS))
    if attributes.get(Attribute.KEY_TYPE) != KeyType.EC_EDWARDS or not is_ed25519_params(
        attributes.get(Attribute.EC_PARAMS)
    ):
        kind = _type_name(attributes.get(Attribute.KEY_TYPE))
        raise KeyFileError(f"{selector} is not an Ed25519 private key (key type {kind})")
    if not isinstance(key, SignMixin):  # python-pkcs11 adds it when CKA_SIGN is true
        raise KeyFileError(f"{selector} is not allowed to sign (CKA_SIGN is false)")
    return key


def find_public_key(session: Session, selector: KeySelector, private: SignMixin) -> bytes:
    """The 32-byte public key of ``private``, from its public-key object."""
    template = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, **selector.template()}
    if selector.id is None:
        key_id = _attributes(private, (Attribute.ID,)).get(Attribute.ID)
        if key_id:
            template[Attribute.ID] = key_id
    matches = list(session.get_objects(template))
    if len(matches) != 1:
        problem = "no public-key object" if not matches else f"{len(matches)} public-key objects"
        raise KeyFileError(
            f"{selector}: the private key has {problem} with the same label and id "
            "(the public key is read from it; `tmkms pkcs11 keys import` creates both)"
        )
    attributes = _attributes(matches[0], (Attribute.KEY_TYPE, Attribute.EC_POINT))
    if attributes.get(Attribute.KEY_TYPE) != KeyType.EC_EDWARDS:
        raise KeyFileError(f"{selector}: its public-key object is not an Ed25519 key")
    try:
        return ed25519_public_from_point(attributes.get(Attribute.EC_POINT) or b"")
    except ValueError as exc:
        raise KeyFileError(f"{selector}: {exc}") from exc


def key_type_name(key: Any) -> str:
    """``ed25519``, ``secp256k1``-style names for listings (``ec``, ``rsa``, ...)."""
    attributes = _attributes(key, (Attribute.KEY_TYPE, Attribute.EC_PARAMS))
    kind = attributes.get(Attribute.KEY_TYPE)
    if kind == KeyType.EC_EDWARDS:
        return "ed25519" if is_ed25519_params(attributes.get(Attribute.EC_PARAMS)) else "eddsa"
    if kind == KeyType.EC and attributes.get(Attribute.EC_PARAMS) == bytes.fromhex(
        "06052b8104000a"
    ):
        return "secp256k1"
    return _type_name(kind)


def _type_name(kind: Any) -> str:
    if isinstance(kind, KeyType):
        return kind.name.lower()
    return "unknown" if kind is None else f"0x{int(kind):x}"


def _attributes(key: Any, names: tuple[Attribute, ...]) -> dict[Attribute, Any]:
    """The readable ones of ``names`` (sensitive or absent attributes are left out)."""
    found: dict[Attribute, Any] = {}
    for name in names:
        try:
            found[name] = key[name]
        except (AttributeTypeInvalid, AttributeSensitive):
            continue
    return found
