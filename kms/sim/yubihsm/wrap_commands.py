"""Wrap keys and EXPORT_WRAPPED / IMPORT_WRAPPED.

A wrapped object is ``nonce (13) || AES-CCM(ciphertext || tag (16))``; the plaintext is
the layout Yubico's ``yubihsm-wrap`` tool produces and the device accepts: a 59-byte
header -- wrap-key algorithm (1), capabilities (8), id (2), body length (2), domains (2),
type (1), algorithm (1), sequence (1), origin (1), label (40) -- then the body:
delegated capabilities (8) || key for authentication and wrap keys, the 32-byte seed
for Ed25519, scalar || x || y for EC keys, the raw bytes for opaque objects.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from . import keys
from .constants import (
    LABEL_LENGTH,
    ORIGIN_GENERATED,
    ORIGIN_IMPORTED_WRAPPED,
    WRAP_KEY_LENGTHS,
    Algo,
    Cap,
    DeviceError,
    Err,
    ObjType,
)
from .object_commands import AUTH_KEY_LENGTH, DELEGATED, OPAQUE_ALGORITHMS, U16, new_object
from .objects import StoredObject
from .state import CREATE_HEADER, Call, unpack_exact, unpack_head

WRAP_HEADER = struct.Struct(f">BQHHHBBBB{LABEL_LENGTH}s")
EXPORT_REQUEST = struct.Struct(">HBH")


def put_wrap_key(call: Call) -> bytes:
    """PUT_WRAP_KEY: import an AES-CCM wrap key with its delegated capabilities."""
    call.require(Cap.PUT_WRAP_KEY)
    head, rest = unpack_head(CREATE_HEADER, call.payload)
    (delegated,), secret = unpack_head(DELEGATED, rest)
    secret = keys.check_wrap_key(head[4], secret)
    obj = replace(new_object(head, ObjType.WRAP_KEY, secret), delegated=delegated)
    return U16.pack(call.create(obj).object_id)


def generate_wrap_key(call: Call) -> bytes:
    """GENERATE_WRAP_KEY: an AES-CCM wrap key from the device's random source."""
    call.require(Cap.GENERATE_WRAP_KEY)
    head, rest = unpack_head(CREATE_HEADER, call.payload)
    (delegated,) = unpack_exact(DELEGATED, rest)
    length = WRAP_KEY_LENGTHS.get(head[4])
    if length is None:
        raise DeviceError(Err.INVALID_DATA)
    secret = call.state.random_bytes(length)
    obj = replace(
        new_object(head, ObjType.WRAP_KEY, secret), delegated=delegated, origin=ORIGIN_GENERATED
    )
    return U16.pack(call.create(obj).object_id)


def _wrap_key(call: Call, wrap_id: int) -> StoredObject:
    wrap_key = call.state.store.find(wrap_id, ObjType.WRAP_KEY, call.key.domains)
    call.second = wrap_id
    if wrap_key.algorithm not in WRAP_KEY_LENGTHS:
        raise DeviceError(Err.INVALID_DATA)
    return wrap_key


def _body(obj: StoredObject) -> bytes:
    if obj.object_type in (ObjType.AUTHENTICATION_KEY, ObjType.WRAP_KEY):
        return DELEGATED.pack(obj.delegated) + obj.data
    if obj.object_type == ObjType.ASYMMETRIC_KEY and obj.algorithm != Algo.EC_ED25519:
        return obj.data + keys.public_key(obj.algorithm, obj.data)
    return obj.data


def export_wrapped(call: Call) -> bytes:
    """EXPORT_WRAPPED: the object encrypted under a wrap key."""
    call.require(Cap.EXPORT_WRAPPED)
    wrap_id, object_type, object_id = unpack_exact(EXPORT_REQUEST, call.payload)
    wrap_key = _wrap_key(call, wrap_id)
    call.require(Cap.EXPORT_WRAPPED, wrap_key)
    obj = call.find(object_id, object_type)
    if not obj.capabilities & Cap.EXPORTABLE_UNDER_WRAP:  # the target's, not the session's
        raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
    if obj.capabilities & ~wrap_key.delegated:
        raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
    body = _body(obj)
    header = WRAP_HEADER.pack(
        wrap_key.algorithm,
        obj.capabilities,
        obj.object_id,
        len(body),
        obj.domains,
        obj.object_type,
        obj.algorithm,
        obj.sequence,
        obj.origin,
        obj.label,
    )
    nonce = call.state.random_bytes(keys.WRAP_NONCE_LENGTH)
    return keys.wrap_seal(wrap_key.data, nonce, header + body)


def _check_body(obj: StoredObject, body: bytes) -> StoredObject:
    """Split and validate a wrapped body for the object's type; INVALID_DATA if it is wrong."""
    if obj.object_type in (ObjType.AUTHENTICATION_KEY, ObjType.WRAP_KEY):
        (delegated,), secret = unpack_head(DELEGATED, body)
        if obj.object_type == ObjType.WRAP_KEY:
            keys.check_wrap_key(obj.algorithm, secret)
        elif obj.algorithm != Algo.AES128_YUBICO_AUTHENTICATION or len(secret) != AUTH_KEY_LENGTH:
            raise DeviceError(Err.INVALID_DATA)
        return replace(obj, delegated=delegated, data=secret)
    if obj.object_type == ObjType.ASYMMETRIC_KEY:
        if obj.algorithm in keys.EC_CURVES:
            size = keys.EC_CURVES[obj.algorithm][1]
            scalar, point = body[:size], body[size:]
            keys.check_asymmetric(obj.algorithm, scalar)
            if point and point != keys.public_key(obj.algorithm, scalar):
                raise DeviceError(Err.INVALID_DATA)
            return replace(obj, data=scalar)
        return replace(obj, data=keys.check_asymmetric(obj.algorithm, body))
    if obj.object_type == ObjType.OPAQUE and obj.algorithm in OPAQUE_ALGORITHMS and body:
        return replace(obj, data=body)
    raise DeviceError(Err.INVALID_DATA)


def import_wrapped(call: Call) -> bytes:
    """IMPORT_WRAPPED: decrypt a wrapped object and store it; replies type || id."""
    call.require(Cap.IMPORT_WRAPPED)
    (wrap_id,), blob = unpack_head(U16, call.payload)
    wrap_key = _wrap_key(call, wrap_id)
    call.require(Cap.IMPORT_WRAPPED, wrap_key)
    plaintext = keys.wrap_open(wrap_key.data, blob)
    fields, body = unpack_head(WRAP_HEADER, plaintext)
    wrap_algorithm, capabilities, object_id, length, domains = fields[:5]
    object_type, algorithm, _sequence, origin, label = fields[5:]
    if wrap_algorithm != wrap_key.algorithm or length != len(body):
        raise DeviceError(Err.INVALID_DATA)
    if capabilities & ~wrap_key.delegated:
        raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
    head = (object_id, label, domains, capabilities, algorithm)
    obj = replace(new_object(head, object_type), origin=origin | ORIGIN_IMPORTED_WRAPPED)
    obj = _check_body(obj, body)
    if obj.domains == 0 or obj.domains & ~call.key.domains:
        raise DeviceError(Err.INSUFFICIENT_PERMISSIONS if obj.domains else Err.INVALID_DATA)
    stored = call.state.store.add(obj, call.state.random_bytes)
    call.target = stored.object_id
    call.state.dirty = True
    return struct.pack(">BH", stored.object_type, stored.object_id)
