"""Key administration on a PKCS#11 token: list, generate and import Ed25519 keys (blocking).

What `tmkms pkcs11 keys ...` runs. Keys are made as a validator key should be: the private
half ``CKA_SENSITIVE`` and not ``CKA_EXTRACTABLE``, private to the logged-in user, able to
sign and nothing else; beside it a public-key object with the same ``CKA_LABEL`` and
``CKA_ID``, from which the KMS reads the public key (an Ed25519 private-key object carries
none). An import refuses a label or an ID already on the token, and checks a signature of
the new key against the seed's public key before it reports success.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs
import nacl.signing
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.types import SignMixin

from kms.errors import ConfigError, KeyFileError, KmsError
from providers.pkcs11.errors import Pkcs11CommandError, ckr_name, is_pin_error
from providers.pkcs11.module import find_token, load_module, read_pin
from providers.pkcs11.objects import (
    ED25519_PARAMS,
    KeySelector,
    ed25519_point,
    ed25519_public_from_point,
    key_type_name,
)
from providers.pkcs11.worker import PKCS11_LOCK

if TYPE_CHECKING:
    from pkcs11 import Session

    from kms.config.model import Pkcs11Config

KEY_ID_SIZE = 8
_CHECK_MESSAGE = b"tmkms-py: key import check"


@attrs.frozen
class KeyInfo:
    """A private key on the token, with the public key of its public-key object (if any)."""

    label: str
    id: bytes
    type: str
    public_key: bytes | None


@contextmanager
def admin_session(config: Pkcs11Config) -> Iterator[Session]:
    """A read-write session logged in as the user, under the PKCS#11 lock throughout.

    Logs out, closes the session and finalises the module afterwards. A PKCS#11 error in
    the body becomes a SignerError naming its CKR_ code.
    """
    with PKCS11_LOCK:
        library = load_module(config.module)
        try:
            token = find_token(library, config.token_label, config.slot)
            try:
                session = token.open(rw=True, user_pin=read_pin(config))
            except PKCS11Error as exc:
                if is_pin_error(exc):
                    raise ConfigError(
                        f"PKCS#11 token {token.label!r} refused the PIN ({ckr_name(exc)})"
                    ) from exc
                raise Pkcs11CommandError(f"cannot log in to the token: {ckr_name(exc)}") from exc
            try:
                yield session
            except PKCS11Error as exc:
                raise Pkcs11CommandError(f"the token refused: {ckr_name(exc)}") from exc
            finally:
                session.close()
        finally:
            library.finalize()


def list_keys(session: Session) -> list[KeyInfo]:
    """Every private key on the token, by label then ID."""
    found = []
    for key in list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
        label, key_id = key[Attribute.LABEL], key[Attribute.ID]
        kind = key_type_name(key)
        public = None
        if kind == "ed25519":
            public = _public_of(session, label, key_id)
        found.append(KeyInfo(label, key_id, kind, public))
    return sorted(found, key=lambda info: (info.label, info.id))


def generate_ed25519(session: Session, label: str, key_id: bytes | None = None) -> KeyInfo:
    """A new key pair generated inside the token (CKM_EC_EDWARDS_KEY_PAIR_GEN)."""
    key_id = _check_new(session, label, key_id)
    public, _private = session.generate_keypair(
        KeyType.EC_EDWARDS,
        store=True,
        label=label,
        id=key_id,
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        public_template={Attribute.EC_PARAMS: ED25519_PARAMS},
        private_template=_PRIVATE_FLAGS,
    )
    point = ed25519_public_from_point(public[Attribute.EC_POINT])
    return KeyInfo(label, key_id, "ed25519", point)


def import_ed25519_seed(
    session: Session, label: str, seed: bytes, key_id: bytes | None = None
) -> KeyInfo:
    """The 32-byte Ed25519 ``seed`` as a private-key object, plus its public-key object."""
    key_id = _check_new(session, label, key_id)
    public = bytes(nacl.signing.SigningKey(seed).verify_key)
    common = {
        Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
        Attribute.TOKEN: True,
        Attribute.LABEL: label,
        Attribute.ID: key_id,
        Attribute.EC_PARAMS: ED25519_PARAMS,
    }
    private = session.create_object(
        {
            **common,
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            **_PRIVATE_FLAGS,
            Attribute.SIGN: True,
            Attribute.VALUE: seed,
        }
    )
    try:
        session.create_object(
            {
                **common,
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.PRIVATE: False,
                Attribute.VERIFY: True,
                Attribute.EC_POINT: ed25519_point(public),
            }
        )
        if not isinstance(private, SignMixin):
            raise Pkcs11CommandError("the token made the imported key unable to sign")
        signature = private.sign(_CHECK_MESSAGE, mechanism=Mechanism.EDDSA)
        nacl.signing.VerifyKey(public).verify(_CHECK_MESSAGE, signature)
    except BaseException:
        for each in session.get_objects({Attribute.LABEL: label, Attribute.ID: key_id}):
            each.destroy()
        raise
    return KeyInfo(label, key_id, "ed25519", public)


def key_flags(session: Session, selector: KeySelector) -> dict[str, bool]:
    """``sensitive``, ``extractable`` and friends of the private key ``selector`` names."""
    template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, **selector.template()}
    keys = list(session.get_objects(template))
    if len(keys) != 1:
        raise KeyFileError(f"{selector}: {len(keys)} private keys match")
    names = {
        "sensitive": Attribute.SENSITIVE,
        "extractable": Attribute.EXTRACTABLE,
        "always_sensitive": Attribute.ALWAYS_SENSITIVE,
        "never_extractable": Attribute.NEVER_EXTRACTABLE,
    }
    return {name: bool(keys[0][attribute]) for name, attribute in names.items()}


_PRIVATE_FLAGS: dict[Attribute, Any] = {
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
}


def _check_new(session: Session, label: str, key_id: bytes | None) -> bytes:
    """The ID for a new key (random unless given); KmsError if the label or ID is taken."""
    if not label:
        raise KmsError("a key needs a non-empty label")
    if _exists(session, {Attribute.LABEL: label}):
        raise KmsError(f'the token already has an object labelled "{label}"; not overwriting it')
    if key_id is not None:
        if _exists(session, {Attribute.ID: key_id}):
            raise KmsError(f"the token already has an object with id {key_id.hex()}")
        return key_id
    while True:
        candidate = os.urandom(KEY_ID_SIZE)
        if not _exists(session, {Attribute.ID: candidate}):
            return candidate


def _exists(session: Session, template: dict[Attribute, Any]) -> bool:
    return bool(list(session.get_objects(template)))


def _public_of(session: Session, label: str, key_id: bytes) -> bytes | None:
    template = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}
    if key_id:
        template[Attribute.ID] = key_id
    matches = list(session.get_objects(template))
    if len(matches) != 1:
        return None
    try:
        return ed25519_public_from_point(matches[0][Attribute.EC_POINT])
    except (ValueError, PKCS11Error):
        return None
