"""In-session commands that create, list, inspect, use and delete objects."""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

from . import keys
from .constants import (
    DELETE_CAPABILITY,
    LABEL_LENGTH,
    ORIGIN_GENERATED,
    ORIGIN_IMPORTED,
    Algo,
    Cap,
    DeviceError,
    Err,
    ObjType,
)
from .objects import StoredObject, pad_label
from .state import CREATE_HEADER, Call, unpack_exact, unpack_head

U16 = struct.Struct(">H")
ID_TYPE = struct.Struct(">HB")
DELEGATED = struct.Struct(">Q")
AUTH_KEY_LENGTH = 32
OPAQUE_ALGORITHMS = (Algo.OPAQUE_DATA, Algo.OPAQUE_X509_CERTIFICATE)


def new_object(head: tuple[Any, ...], object_type: int, data: bytes = b"") -> StoredObject:
    """A StoredObject from a CREATE_HEADER tuple (id, label, domains, capabilities, algorithm)."""
    object_id, label, domains, capabilities, algorithm = head
    return StoredObject(
        object_id=object_id,
        object_type=object_type,
        algorithm=algorithm,
        label=pad_label(label),
        domains=domains,
        capabilities=capabilities,
        delegated=0,
        origin=ORIGIN_IMPORTED,
        data=data,
    )


def _created(obj: StoredObject) -> bytes:
    return U16.pack(obj.object_id)


def put_opaque(call: Call) -> bytes:
    """PUT_OPAQUE: store arbitrary data (a certificate, a blob)."""
    call.require(Cap.PUT_OPAQUE)
    head, data = unpack_head(CREATE_HEADER, call.payload)
    if head[4] not in OPAQUE_ALGORITHMS or not data:
        raise DeviceError(Err.INVALID_DATA)
    return _created(call.create(new_object(head, ObjType.OPAQUE, data)))


def get_opaque(call: Call) -> bytes:
    """GET_OPAQUE: read back an opaque object's data."""
    call.require(Cap.GET_OPAQUE)
    (object_id,) = unpack_exact(U16, call.payload)
    return call.find(object_id, ObjType.OPAQUE).data


def put_authentication_key(call: Call) -> bytes:
    """PUT_AUTHENTICATION_KEY: a symmetric (AES-128 K-ENC || K-MAC) authentication key."""
    call.require(Cap.PUT_AUTHENTICATION_KEY)
    head, rest = unpack_head(CREATE_HEADER, call.payload)
    (delegated,), secret = unpack_head(DELEGATED, rest)
    if head[4] != Algo.AES128_YUBICO_AUTHENTICATION or len(secret) != AUTH_KEY_LENGTH:
        raise DeviceError(Err.INVALID_DATA)
    obj = replace(new_object(head, ObjType.AUTHENTICATION_KEY, secret), delegated=delegated)
    return _created(call.create(obj))


def change_authentication_key(call: Call) -> bytes:
    """CHANGE_AUTHENTICATION_KEY: replace the secret of the session's own key."""
    call.require(Cap.CHANGE_AUTHENTICATION_KEY)
    (object_id, algorithm), secret = unpack_head(ID_TYPE, call.payload)
    if object_id != call.key.object_id:
        raise DeviceError(Err.INVALID_ID)
    if algorithm != Algo.AES128_YUBICO_AUTHENTICATION or len(secret) != AUTH_KEY_LENGTH:
        raise DeviceError(Err.INVALID_DATA)
    old = call.find(object_id, ObjType.AUTHENTICATION_KEY)
    new = replace(old, data=secret, origin=ORIGIN_IMPORTED)
    call.state.store.objects[(object_id, ObjType.AUTHENTICATION_KEY)] = new
    call.state.dirty = True
    return U16.pack(object_id)


def put_asymmetric_key(call: Call) -> bytes:
    """PUT_ASYMMETRIC_KEY: import an Ed25519 seed or an EC private scalar."""
    call.require(Cap.PUT_ASYMMETRIC)
    head, data = unpack_head(CREATE_HEADER, call.payload)
    data = keys.check_asymmetric(head[4], data)
    return _created(call.create(new_object(head, ObjType.ASYMMETRIC_KEY, data)))


def generate_asymmetric_key(call: Call) -> bytes:
    """GENERATE_ASYMMETRIC_KEY: create a key pair inside the device."""
    call.require(Cap.GENERATE_ASYMMETRIC_KEY)
    head = unpack_exact(CREATE_HEADER, call.payload)
    if not keys.is_asymmetric(head[4]):
        raise DeviceError(Err.INVALID_DATA)
    data = keys.generate_asymmetric(head[4], call.state.random_bytes)
    obj = replace(new_object(head, ObjType.ASYMMETRIC_KEY, data), origin=ORIGIN_GENERATED)
    return _created(call.create(obj))


_FILTERS: dict[int, struct.Struct] = {
    0x01: struct.Struct(">H"),
    0x02: struct.Struct(">B"),
    0x03: struct.Struct(">H"),
    0x04: struct.Struct(">Q"),
    0x05: struct.Struct(">B"),
    0x06: struct.Struct(f">{LABEL_LENGTH}s"),
}


def _matches(obj: StoredObject, tag: int, value: int | bytes) -> bool:
    if tag == 0x01:
        return obj.object_id == value
    if tag == 0x02:
        return obj.object_type == value
    if tag == 0x03:
        return bool(obj.domains & value)  # type: ignore[operator]
    if tag == 0x04:
        return bool(obj.capabilities & value)  # type: ignore[operator]
    if tag == 0x05:
        return obj.algorithm == value
    return obj.label == value


def list_objects(call: Call) -> bytes:
    """LIST_OBJECTS: (id, type, sequence) of visible objects matching every filter."""
    filters: list[tuple[int, int | bytes]] = []
    rest = call.payload
    while rest:
        tag = rest[0]
        fmt = _FILTERS.get(tag)
        if fmt is None:
            raise DeviceError(Err.INVALID_DATA)
        (value,), rest = unpack_head(fmt, rest[1:])
        filters.append((tag, value))
    found = [
        obj
        for obj in call.state.store.visible(call.key.domains)
        if all(_matches(obj, tag, value) for tag, value in filters)
    ]
    return b"".join(struct.pack(">HBB", o.object_id, o.object_type, o.sequence) for o in found)


def get_object_info(call: Call) -> bytes:
    """GET_OBJECT_INFO: the 66-byte ObjectInfo."""
    object_id, object_type = unpack_exact(ID_TYPE, call.payload)
    return call.find(object_id, object_type).info()


def get_public_key(call: Call) -> bytes:
    """GET_PUBLIC_KEY: algorithm byte then the raw public key."""
    if len(call.payload) == ID_TYPE.size:
        object_id, object_type = ID_TYPE.unpack(call.payload)
        if object_type != ObjType.ASYMMETRIC_KEY:
            raise DeviceError(Err.INVALID_DATA)
    else:
        (object_id,) = unpack_exact(U16, call.payload)
    obj = call.find(object_id, ObjType.ASYMMETRIC_KEY)
    return bytes([obj.algorithm]) + keys.public_key(obj.algorithm, obj.data)


def sign_eddsa(call: Call) -> bytes:
    """SIGN_EDDSA: a pure Ed25519 signature over the message."""
    call.require(Cap.SIGN_EDDSA)
    (key_id,), message = unpack_head(U16, call.payload)
    obj = call.find(key_id, ObjType.ASYMMETRIC_KEY)
    call.require(Cap.SIGN_EDDSA, obj)
    if obj.algorithm != Algo.EC_ED25519:
        raise DeviceError(Err.INVALID_DATA)
    return keys.sign_eddsa(obj.data, message)


def sign_ecdsa(call: Call) -> bytes:
    """SIGN_ECDSA: a DER ECDSA signature over a prehashed digest."""
    call.require(Cap.SIGN_ECDSA)
    (key_id,), digest = unpack_head(U16, call.payload)
    obj = call.find(key_id, ObjType.ASYMMETRIC_KEY)
    call.require(Cap.SIGN_ECDSA, obj)
    if obj.algorithm not in keys.EC_CURVES:
        raise DeviceError(Err.INVALID_DATA)
    return keys.sign_ecdsa(obj.algorithm, obj.data, digest)


def delete_object(call: Call) -> bytes:
    """DELETE_OBJECT: needs the DELETE_<type> capability on the session key."""
    object_id, object_type = unpack_exact(ID_TYPE, call.payload)
    capability = DELETE_CAPABILITY.get(object_type)
    if capability is None:
        raise DeviceError(Err.INVALID_DATA)
    call.require(capability)
    call.find(object_id, object_type)
    call.state.store.delete(object_id, object_type)
    call.state.dirty = True
    return b""
