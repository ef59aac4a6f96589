"""The audit log (hash-chained, 62 entries) and device options (SET/GET_OPTION)."""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from typing import Any

from .constants import Cmd, DeviceError, Err

LOG_CAPACITY = 62
#: One log entry without its digest (30 bytes); the digest adds 16.
ENTRY = struct.Struct(">HBHHHHBL")
NO_KEY = 0xFFFF

OPTION_FORCE_AUDIT = 0x01
OPTION_COMMAND_AUDIT = 0x03
OPTION_ALGORITHM_TOGGLE = 0x04
AUDIT_OFF, AUDIT_ON, AUDIT_FIXED = 0, 1, 2
#: Algorithms a firmware-2.3 device knows (ids 1..54, all enabled by default).
KNOWN_ALGORITHMS = tuple(range(1, 55))
#: Commands that stay usable when forced audit has filled the log (to drain it).
DRAIN_COMMANDS = frozenset({Cmd.GET_LOG_ENTRIES, Cmd.SET_LOG_INDEX, Cmd.CLOSE_SESSION})


class AuditLog:
    """A ring of log entries, each digest = SHA-256(entry || previous digest)[:16]."""

    def __init__(self) -> None:
        self.entries: deque[bytes] = deque()
        self.reset()

    def reset(self) -> None:
        """Factory state: one initial entry (number 1, all fields 0xff)."""
        self.entries.clear()
        self.number = 0
        self.last_digest = bytes(16)
        self.unlogged_boot = 0
        self.unlogged_auth = 0
        self.append(
            0xFF,
            0xFFFF,
            session_key=NO_KEY,
            target_key=NO_KEY,
            second_key=NO_KEY,
            result=0xFF,
            tick=0xFFFFFFFF,
        )

    def is_full(self) -> bool:
        """True when every slot holds an entry not yet released by SET_LOG_INDEX."""
        return len(self.entries) >= LOG_CAPACITY

    def append(
        self,
        command: int,
        length: int,
        *,
        session_key: int,
        target_key: int,
        second_key: int,
        result: int,
        tick: int,
    ) -> None:
        """Add an entry, overwriting the oldest one when the ring is full."""
        self.number = (self.number + 1) & 0xFFFF
        data = ENTRY.pack(
            self.number,
            command,
            length & 0xFFFF,
            session_key,
            target_key,
            second_key,
            result,
            tick & 0xFFFFFFFF,
        )
        self.last_digest = hashlib.sha256(data + self.last_digest).digest()[:16]
        if self.is_full():
            self.entries.popleft()
        self.entries.append(data + self.last_digest)

    def dump(self) -> bytes:
        """GET_LOG_ENTRIES reply: unlogged boots u16, unlogged auths u16, count u8, entries."""
        head = struct.pack(">HHB", self.unlogged_boot, self.unlogged_auth, len(self.entries))
        return head + b"".join(self.entries)

    def release(self, index: int) -> None:
        """SET_LOG_INDEX: free every entry up to and including number ``index``."""
        while self.entries:
            number = struct.unpack_from(">H", self.entries[0])[0]
            if (index - number) & 0xFFFF >= 0x8000:
                break
            self.entries.popleft()


class Options:
    """Persistent device options: forced audit, per-command audit, algorithm toggles."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Factory defaults: forced audit off, every command audited, all algorithms on."""
        self.force_audit = AUDIT_OFF
        self.command_audit: dict[int, int] = {int(c): AUDIT_ON for c in Cmd if c != Cmd.ERROR}
        self.algorithms: dict[int, int] = dict.fromkeys(KNOWN_ALGORITHMS, 1)

    def audited(self, command: int) -> bool:
        """Whether ``command`` is written to the audit log."""
        return self.command_audit.get(command, AUDIT_ON) != AUDIT_OFF

    def get(self, option: int) -> bytes:
        """GET_OPTION value bytes."""
        if option == OPTION_FORCE_AUDIT:
            return bytes([self.force_audit])
        if option == OPTION_COMMAND_AUDIT:
            return b"".join(bytes(p) for p in sorted(self.command_audit.items()))
        if option == OPTION_ALGORITHM_TOGGLE:
            return b"".join(bytes(p) for p in sorted(self.algorithms.items()))
        raise DeviceError(Err.INVALID_DATA)

    def set(self, option: int, value: bytes) -> None:
        """SET_OPTION; INVALID_DATA for unknown options, bad values or FIXED settings."""
        if option == OPTION_FORCE_AUDIT:
            if len(value) != 1 or value[0] > AUDIT_FIXED or self.force_audit == AUDIT_FIXED:
                raise DeviceError(Err.INVALID_DATA)
            self.force_audit = value[0]
            return
        if option not in (OPTION_COMMAND_AUDIT, OPTION_ALGORITHM_TOGGLE) or len(value) % 2:
            raise DeviceError(Err.INVALID_DATA)
        pairs = [(value[i], value[i + 1]) for i in range(0, len(value), 2)]
        table = self.command_audit if option == OPTION_COMMAND_AUDIT else self.algorithms
        limit = AUDIT_FIXED if option == OPTION_COMMAND_AUDIT else 1
        for key, setting in pairs:
            if key not in table or setting > limit or table[key] == AUDIT_FIXED:
                raise DeviceError(Err.INVALID_DATA)
        table.update(pairs)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable option values."""
        return {
            "force_audit": self.force_audit,
            "command_audit": sorted(self.command_audit.items()),
            "algorithms": sorted(self.algorithms.items()),
        }

    def load_json(self, raw: dict[str, Any]) -> None:
        """Inverse of :meth:`to_json`."""
        self.force_audit = int(raw["force_audit"])
        self.command_audit = {int(k): int(v) for k, v in raw["command_audit"]}
        self.algorithms = {int(k): int(v) for k, v in raw["algorithms"]}
