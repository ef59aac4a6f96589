"""Objects stored on the simulated device, keyed by ``(id, type)``, with sequence numbers."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

from .constants import (
    ALL_DOMAINS,
    DEFAULT_AUTH_KEY_ID,
    DEFAULT_AUTH_KEY_LABEL,
    DEFAULT_PASSWORD,
    LABEL_LENGTH,
    MAX_OBJECTS,
    ORIGIN_IMPORTED,
    PAGE_SIZE,
    TOTAL_PAGES,
    Algo,
    Cap,
    DeviceError,
    Err,
    ObjType,
)
from .keys import RandomSource
from .scp import password_keys

#: ObjectInfo as GET_OBJECT_INFO returns it: 66 bytes.
OBJECT_INFO = struct.Struct(f">QHHHBBBB{LABEL_LENGTH}sQ")
MAX_OBJECT_ID = 0xFFFF


def pad_label(label: bytes) -> bytes:
    """A label as stored: at most 40 bytes, NUL-padded to exactly 40."""
    if len(label) > LABEL_LENGTH:
        raise DeviceError(Err.INVALID_DATA)
    return label.ljust(LABEL_LENGTH, b"\x00")


@dataclass(frozen=True)
class StoredObject:
    """One object: its metadata and its secret (or opaque) bytes."""

    object_id: int
    object_type: int
    algorithm: int
    label: bytes
    domains: int
    capabilities: int
    delegated: int
    origin: int
    data: bytes
    sequence: int = 0

    def info(self) -> bytes:
        """The 66-byte ObjectInfo structure."""
        return OBJECT_INFO.pack(
            self.capabilities,
            self.object_id,
            len(self.data),
            self.domains,
            self.object_type,
            self.algorithm,
            self.sequence,
            self.origin,
            self.label,
            self.delegated,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (secrets in hex: this is a test device)."""
        return {
            "id": self.object_id,
            "type": self.object_type,
            "algorithm": self.algorithm,
            "label": self.label.hex(),
            "domains": self.domains,
            "capabilities": self.capabilities,
            "delegated": self.delegated,
            "origin": self.origin,
            "sequence": self.sequence,
            "data": self.data.hex(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StoredObject:
        """Inverse of :meth:`to_json`."""
        return cls(
            object_id=int(raw["id"]),
            object_type=int(raw["type"]),
            algorithm=int(raw["algorithm"]),
            label=bytes.fromhex(raw["label"]),
            domains=int(raw["domains"]),
            capabilities=int(raw["capabilities"]),
            delegated=int(raw["delegated"]),
            origin=int(raw["origin"]),
            sequence=int(raw["sequence"]),
            data=bytes.fromhex(raw["data"]),
        )


def default_auth_key() -> StoredObject:
    """The factory authentication key: id 1, password "password", everything allowed."""
    key_enc, key_mac = password_keys(DEFAULT_PASSWORD)
    return StoredObject(
        object_id=DEFAULT_AUTH_KEY_ID,
        object_type=ObjType.AUTHENTICATION_KEY,
        algorithm=Algo.AES128_YUBICO_AUTHENTICATION,
        label=pad_label(DEFAULT_AUTH_KEY_LABEL),
        domains=ALL_DOMAINS,
        capabilities=Cap.ALL,
        delegated=Cap.ALL,
        origin=ORIGIN_IMPORTED,
        data=key_enc + key_mac,
    )


def _pages(obj: StoredObject) -> int:
    return max(1, -(-len(obj.data) // PAGE_SIZE))


class ObjectStore:
    """All objects plus the per-(id, type) count of earlier incarnations (sequence)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[int, int], StoredObject] = {}
        self.sequences: dict[tuple[int, int], int] = {}
        self.reset()

    def reset(self) -> None:
        """Factory state: only the default authentication key."""
        self.objects.clear()
        self.sequences.clear()
        self.add(default_auth_key(), random_bytes=None)

    def find(self, object_id: int, object_type: int, domains: int) -> StoredObject:
        """The object if it exists and shares a domain with ``domains``; else OBJECT_NOT_FOUND."""
        obj = self.objects.get((object_id, object_type))
        if obj is None or not obj.domains & domains:
            raise DeviceError(Err.OBJECT_NOT_FOUND)
        return obj

    def _pick_id(self, object_type: int, random_bytes: RandomSource) -> int:
        while True:
            candidate = int.from_bytes(random_bytes(2), "big")
            if 0 < candidate < MAX_OBJECT_ID and (candidate, object_type) not in self.objects:
                return candidate

    def add(self, obj: StoredObject, random_bytes: RandomSource | None) -> StoredObject:
        """Store a new object (id 0: the device picks one); returns it with id and sequence."""
        if len(self.objects) >= MAX_OBJECTS or self.used_pages() + _pages(obj) > TOTAL_PAGES:
            raise DeviceError(Err.STORAGE_FAILED)
        object_id = obj.object_id
        if object_id == 0:
            if random_bytes is None:
                raise DeviceError(Err.INVALID_ID)
            object_id = self._pick_id(obj.object_type, random_bytes)
        key = (object_id, obj.object_type)
        if key in self.objects:
            raise DeviceError(Err.OBJECT_EXISTS)
        sequence = self.sequences.get(key, 0)
        self.sequences[key] = (sequence + 1) & 0xFF
        stored = replace(obj, object_id=object_id, sequence=sequence)
        self.objects[key] = stored
        return stored

    def delete(self, object_id: int, object_type: int) -> None:
        """Remove an object (its sequence counter survives)."""
        del self.objects[(object_id, object_type)]

    def visible(self, domains: int) -> list[StoredObject]:
        """Objects sharing a domain with ``domains``, in (id, type) order."""
        return [o for k, o in sorted(self.objects.items()) if o.domains & domains]

    def used_pages(self) -> int:
        """Flash pages in use (a rough model of the device's storage accounting)."""
        return sum(_pages(o) for o in self.objects.values())

    def to_json(self) -> dict[str, Any]:
        """Objects and sequence counters as JSON-serialisable data."""
        return {
            "objects": [o.to_json() for _, o in sorted(self.objects.items())],
            "sequences": [[i, t, n] for (i, t), n in sorted(self.sequences.items())],
        }

    def load_json(self, raw: dict[str, Any]) -> None:
        """Replace the contents with what :meth:`to_json` produced."""
        objects = [StoredObject.from_json(o) for o in raw["objects"]]
        self.objects = {(o.object_id, o.object_type): o for o in objects}
        self.sequences = {(int(i), int(t)): int(n) for i, t, n in raw["sequences"]}
