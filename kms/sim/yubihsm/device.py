"""The simulated YubiHSM 2: raw command frames in, raw response frames out.

``YubiHsmDevice.transceive`` is the one entry point every transport uses; a single lock
makes the device execute one command at a time, like the hardware. Plain commands are
handled here; everything else arrives inside SESSION_MESSAGE and goes to ``commands``.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import scp
from .audit import LOG_CAPACITY, NO_KEY
from .commands import error_frame, execute
from .constants import (
    DEFAULT_FIRMWARE,
    DEFAULT_SERIAL,
    MAX_FRAME,
    Cmd,
    DeviceError,
    Err,
    ObjType,
)
from .keys import RandomSource
from .persist import load_state, save_state
from .sessions import Clock
from .state import DeviceState

CREATE_SESSION_REQUEST = struct.Struct(">H8s")
CHALLENGE_LENGTH = 8
SIGN_COMMANDS = frozenset({Cmd.SIGN_EDDSA, Cmd.SIGN_ECDSA})
#: A plain command handler: returns (auth key id for the audit log, reply body).
_PlainHandler = Callable[[bytes], tuple[int, bytes]]


class YubiHsmDevice:
    """A YubiHSM 2 (firmware 2.3.1 by default) driven through :meth:`transceive`.

    ``clock`` (seconds, monotonic) and ``random_bytes`` are injectable so tests can expire
    sessions and reproduce challenges; ``state_path`` makes flash survive restarts;
    ``sign_delay`` (real seconds, spent holding the device lock) makes SIGN_EDDSA and
    SIGN_ECDSA as slow as hardware for throughput experiments.
    """

    def __init__(
        self,
        serial: int | None = None,
        firmware: tuple[int, int, int] = DEFAULT_FIRMWARE,
        *,
        clock: Clock = time.monotonic,
        random_bytes: RandomSource = os.urandom,
        state_path: str | os.PathLike[str] | None = None,
        sign_delay: float = 0.0,
    ) -> None:
        if firmware >= (2, 4, 0):
            # 2.4+ clients fetch DEVICE_INFO page 1 and use 3136-byte frames: not simulated.
            raise ValueError(f"firmware {firmware} is not simulated (use a 2.x below 2.4)")
        self._lock = threading.Lock()
        self.sign_delay = sign_delay
        self.state_path = Path(state_path) if state_path is not None else None
        saved = load_state(self.state_path) if self.state_path is not None else None
        if serial is None:
            serial = DEFAULT_SERIAL if saved is None else _saved_serial(saved)
        if not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError(f"serial {serial} does not fit in 32 bits")
        self.state = DeviceState(serial, firmware, clock, random_bytes)
        if saved is not None:
            try:
                self.state.store.load_json(saved["store"])
                self.state.options.load_json(saved["options"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"unusable simulator state {self.state_path}: {exc!r}") from exc
        self.state.dirty = self.state_path is not None
        self._persist()

    @property
    def serial(self) -> int:
        """The device serial number (DEVICE_INFO, USB serial string)."""
        return self.state.serial

    @property
    def firmware(self) -> tuple[int, int, int]:
        """The firmware version DEVICE_INFO reports."""
        return self.state.firmware

    def transceive(self, frame: bytes) -> bytes:
        """Execute one command frame and return the response frame (never raises)."""
        with self._lock:
            try:
                reply = self._dispatch(bytes(frame))
            except DeviceError as exc:
                reply = error_frame(exc.code)
            self._persist()
            return reply

    def factory_reset(self) -> None:
        """Out-of-band factory reset (like holding the touch sensor while inserting)."""
        with self._lock:
            self.state.factory_reset()
            self._persist()

    def power_cycle(self) -> None:
        """Lose everything held in RAM (sessions); flash contents stay."""
        with self._lock:
            self.state.sessions.clear()

    def session_count(self) -> int:
        """Sessions currently allocated (half-open included, expired ones excluded)."""
        with self._lock:
            return len(self.state.sessions)

    def _persist(self) -> None:
        if self.state.dirty and self.state_path is not None:
            save_state(
                self.state_path,
                {
                    "serial": self.state.serial,
                    "firmware": list(self.state.firmware),
                    "store": self.state.store.to_json(),
                    "options": self.state.options.to_json(),
                },
            )
        self.state.dirty = False

    def _dispatch(self, frame: bytes) -> bytes:
        if len(frame) < 3 or len(frame) > MAX_FRAME:
            raise DeviceError(Err.INVALID_DATA)
        command, length = frame[0], int.from_bytes(frame[1:3], "big")
        if length != len(frame) - 3:
            raise DeviceError(Err.WRONG_LENGTH)
        payload = frame[3:]
        if command == Cmd.ECHO:
            return _reply(Cmd.ECHO, payload)
        if command == Cmd.DEVICE_INFO:
            return _reply(Cmd.DEVICE_INFO, self._device_info(payload))
        if command == Cmd.CREATE_SESSION:
            return self._audited(Cmd.CREATE_SESSION, length, self._create_session, payload)
        if command == Cmd.AUTHENTICATE_SESSION:
            return self._audited(Cmd.AUTHENTICATE_SESSION, length, self._authenticate, frame)
        if command == Cmd.SESSION_MESSAGE:
            return self._session_message(frame)
        raise DeviceError(Err.INVALID_COMMAND)

    def _device_info(self, payload: bytes) -> bytes:
        if payload:
            raise DeviceError(Err.INVALID_DATA)  # page 1 only exists from firmware 2.4
        state = self.state
        used = len(state.log.entries)
        head = struct.pack(">BBBIBB", *state.firmware, state.serial, LOG_CAPACITY, used)
        enabled = bytes(a for a, on in sorted(state.options.algorithms.items()) if on)
        return head + enabled

    def _audited(self, command: Cmd, length: int, handler: _PlainHandler, data: bytes) -> bytes:
        key_id = NO_KEY
        try:
            key_id, body = handler(data)
            reply = _reply(command, body)
        except DeviceError as exc:
            reply = error_frame(exc.code)
        log, options = self.state.log, self.state.options
        if options.audited(command):
            if options.force_audit and log.is_full():
                log.unlogged_auth = min(log.unlogged_auth + 1, 0xFFFF)
            else:
                log.append(
                    command,
                    length,
                    session_key=key_id,
                    target_key=NO_KEY,
                    second_key=NO_KEY,
                    result=reply[0],
                    tick=self.state.tick(),
                )
        return reply

    def _create_session(self, payload: bytes) -> tuple[int, bytes]:
        if len(payload) != CREATE_SESSION_REQUEST.size:
            raise DeviceError(Err.INVALID_DATA)  # e.g. the asymmetric (EC P-256) variant
        key_id, host_challenge = CREATE_SESSION_REQUEST.unpack(payload)
        state = self.state
        auth_key = state.store.objects.get((key_id, ObjType.AUTHENTICATION_KEY))
        if auth_key is None:
            raise DeviceError(Err.OBJECT_NOT_FOUND)
        context = host_challenge + state.random_bytes(CHALLENGE_LENGTH)
        keys = scp.SessionKeys.derive(auth_key.data[:16], auth_key.data[16:], context)
        session = state.sessions.open(auth_key, keys, context)
        body = bytes([session.sid]) + context[CHALLENGE_LENGTH:] + keys.card_cryptogram(context)
        return key_id, body

    def _authenticate(self, frame: bytes) -> tuple[int, bytes]:
        if len(frame) < 4:
            raise DeviceError(Err.WRONG_LENGTH)
        session = self.state.sessions.get(frame[3], authenticated=False)
        try:
            session.authenticate(frame)
        except DeviceError:
            self.state.sessions.close(session.sid)
            raise
        return session.auth_key.object_id, b""

    def _session_message(self, frame: bytes) -> bytes:
        if len(frame) < 4:
            raise DeviceError(Err.WRONG_LENGTH)
        sessions = self.state.sessions
        session = sessions.get(frame[3], authenticated=True)
        try:
            inner, chain, iv = session.unwrap(frame)
        except DeviceError:
            sessions.close(session.sid)
            raise
        reply, call = execute(self.state, session, inner)
        if self.sign_delay and call.command in SIGN_COMMANDS:
            time.sleep(self.sign_delay)
        outer = session.wrap(reply, chain, iv)
        if call.after is not None:
            call.after()
        return outer


def _saved_serial(saved: dict[str, Any]) -> int:
    try:
        return int(saved["serial"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"simulator state has no usable serial: {exc!r}") from exc


def _reply(command: Cmd, body: bytes) -> bytes:
    return struct.pack(">BH", command | 0x80, len(body)) + body
