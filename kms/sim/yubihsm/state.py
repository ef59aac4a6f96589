"""Everything a device holds, and the per-command context handlers work with."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .audit import NO_KEY, AuditLog, Options
from .constants import DeviceError, Err
from .keys import RandomSource
from .objects import ObjectStore, StoredObject
from .sessions import Clock, Session, SessionTable

#: The fields every PUT_*/GENERATE_* command starts with: id, label, domains, caps, algorithm.
CREATE_HEADER = struct.Struct(">H40sHQB")


@dataclass
class DeviceState:
    """The device: identity, flash (objects, options), RAM (sessions, log), clock, RNG."""

    serial: int
    firmware: tuple[int, int, int]
    clock: Clock
    random_bytes: RandomSource
    store: ObjectStore = field(default_factory=ObjectStore)
    options: Options = field(default_factory=Options)
    log: AuditLog = field(default_factory=AuditLog)
    sessions: SessionTable = field(init=False)
    boot_time: float = field(init=False)
    #: Set when flash contents (objects, options) changed and should be persisted.
    dirty: bool = False
    #: Clock value until which the LED blinks (BLINK_DEVICE).
    blink_until: float = 0.0

    def __post_init__(self) -> None:
        self.sessions = SessionTable(self.clock)
        self.boot_time = self.clock()

    def tick(self) -> int:
        """Milliseconds since boot, as recorded in log entries."""
        return int((self.clock() - self.boot_time) * 1000)

    def factory_reset(self) -> None:
        """Erase everything and restore the default authentication key."""
        self.store.reset()
        self.options.reset()
        self.log.reset()
        self.sessions.clear()
        self.dirty = True


def unpack_exact(fmt: struct.Struct, payload: bytes) -> tuple[Any, ...]:
    """Unpack a payload that must have exactly ``fmt.size`` bytes; WRONG_LENGTH otherwise."""
    if len(payload) != fmt.size:
        raise DeviceError(Err.WRONG_LENGTH)
    return fmt.unpack(payload)


def unpack_head(fmt: struct.Struct, payload: bytes) -> tuple[tuple[Any, ...], bytes]:
    """Unpack a fixed-size head and return it with the remaining bytes."""
    if len(payload) < fmt.size:
        raise DeviceError(Err.WRONG_LENGTH)
    return fmt.unpack_from(payload), payload[fmt.size :]


@dataclass
class Call:
    """One in-session command being executed: the state, the session, and log details."""

    state: DeviceState
    session: Session
    payload: bytes
    command: int = 0
    target: int = NO_KEY
    second: int = NO_KEY
    #: Runs after the reply has been encrypted (CLOSE_SESSION, RESET_DEVICE).
    after: Callable[[], None] | None = None

    @property
    def key(self) -> StoredObject:
        """The authentication key the session was opened with."""
        return self.session.auth_key

    def require(self, capability: int, *objects: StoredObject) -> None:
        """INSUFFICIENT_PERMISSIONS unless the session key and every object have ``capability``."""
        for holder in (self.key, *objects):
            if not holder.capabilities & capability:
                raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)

    def find(self, object_id: int, object_type: int) -> StoredObject:
        """Look up an object visible to this session (shares a domain with its key)."""
        obj = self.state.store.find(object_id, object_type, self.key.domains)
        self.target = object_id
        return obj

    def create(self, obj: StoredObject) -> StoredObject:
        """Store a new object after the delegation and domain rules; marks flash dirty."""
        if obj.domains == 0:
            raise DeviceError(Err.INVALID_DATA)
        allowed = self.key.delegated
        if obj.capabilities & ~allowed or obj.delegated & ~allowed:
            raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
        if obj.domains & ~self.key.domains:
            raise DeviceError(Err.INSUFFICIENT_PERMISSIONS)
        stored = self.state.store.add(obj, self.state.random_bytes)
        self.target = stored.object_id
        self.state.dirty = True
        return stored
