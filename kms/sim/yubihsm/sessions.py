"""The device's session table: 16 slots, lowest free id, 30 s idle expiry, framing crypto."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from . import scp
from .constants import MAX_SESSIONS, SESSION_IDLE_TIMEOUT, Cmd, DeviceError, Err
from .objects import StoredObject

Clock = Callable[[], float]


@dataclass
class Session:
    """One session slot: half-open until AUTHENTICATE_SESSION succeeds."""

    sid: int
    auth_key: StoredObject
    keys: scp.SessionKeys
    context: bytes
    last_used: float
    authenticated: bool = False
    chain: bytes = field(default=bytes(16))
    counter: int = 0

    def authenticate(self, frame: bytes) -> None:
        """Check an AUTHENTICATE_SESSION frame (sid, host cryptogram, MAC) and open the session."""
        if len(frame) != 3 + 1 + 8 + 8:
            raise DeviceError(Err.WRONG_LENGTH)
        cryptogram, mac = frame[4:12], frame[12:]
        chain, expected = scp.chain_mac(self.keys.s_mac, bytes(16), frame[:12])
        host_ok = scp.mac_equal(cryptogram, self.keys.host_cryptogram(self.context))
        if not (host_ok and scp.mac_equal(mac, expected)):
            raise DeviceError(Err.AUTHENTICATION_FAILED)
        self.chain = chain
        self.counter = 1
        self.authenticated = True

    def unwrap(self, frame: bytes) -> tuple[bytes, bytes, bytes]:
        """Verify and decrypt a SESSION_MESSAGE; returns ``(inner frame, new chain, iv)``.

        The session state is not advanced here: :meth:`wrap` does that once the reply exists.
        """
        ciphertext, mac = frame[4:-8], frame[-8:]
        if len(frame) < 4 + 16 + 8 or len(ciphertext) % scp.BLOCK:
            raise DeviceError(Err.WRONG_LENGTH)
        chain, expected = scp.chain_mac(self.keys.s_mac, self.chain, frame[:-8])
        if not scp.mac_equal(mac, expected):
            raise DeviceError(Err.AUTHENTICATION_FAILED)
        iv = scp.counter_iv(self.keys.s_enc, self.counter)
        try:
            inner = scp.unpad(scp.cbc_decrypt(self.keys.s_enc, iv, ciphertext))
        except scp.PaddingError as exc:
            raise DeviceError(Err.INVALID_DATA) from exc
        return inner, chain, iv

    def wrap(self, reply: bytes, chain: bytes, iv: bytes) -> bytes:
        """Encrypt an inner reply, add the R-MAC, and advance the chain and counter."""
        ciphertext = scp.cbc_encrypt(self.keys.s_enc, iv, scp.pad(reply))
        outer = struct.pack(">BHB", Cmd.SESSION_MESSAGE | 0x80, 1 + len(ciphertext) + 8, self.sid)
        outer += ciphertext
        _, rmac = scp.chain_mac(self.keys.s_rmac, chain, outer)
        self.chain = chain
        self.counter += 1
        return outer + rmac


class SessionTable:
    """Up to 16 sessions; ids are the lowest free slot; idle sessions expire after 30 s."""

    def __init__(self, clock: Clock, idle_timeout: float = SESSION_IDLE_TIMEOUT) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.slots: dict[int, Session] = {}

    def expire(self) -> None:
        """Free every session idle for longer than the timeout (half-open ones too)."""
        now = self.clock()
        for sid, session in list(self.slots.items()):
            if now - session.last_used > self.idle_timeout:
                del self.slots[sid]

    def open(self, auth_key: StoredObject, keys: scp.SessionKeys, context: bytes) -> Session:
        """Allocate the lowest free slot; SESSIONS_FULL when all 16 are taken."""
        self.expire()
        for sid in range(MAX_SESSIONS):
            if sid not in self.slots:
                session = Session(sid, auth_key, keys, context, last_used=self.clock())
                self.slots[sid] = session
                return session
        raise DeviceError(Err.SESSIONS_FULL)

    def get(self, sid: int, *, authenticated: bool) -> Session:
        """A live session in the wanted state, else INVALID_SESSION; refreshes its idle timer."""
        self.expire()
        session = self.slots.get(sid)
        if session is None or session.authenticated != authenticated:
            raise DeviceError(Err.INVALID_SESSION)
        session.last_used = self.clock()
        return session

    def close(self, sid: int) -> None:
        """Free a slot (no error if it is already free)."""
        self.slots.pop(sid, None)

    def clear(self) -> None:
        """Drop every session (device reset / power cycle)."""
        self.slots.clear()

    def __len__(self) -> int:
        self.expire()
        return len(self.slots)


class ManualClock:
    """A clock tests move by hand: pass it as ``YubiHsmDevice(clock=...)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds
