"""A self-healing authenticated session with one YubiHSM 2 (blocking; call from a thread).

The ``yubihsm`` library never re-opens anything: a session that expired (30 s idle), a
device that restarted or a connector that went away leave its objects broken for good.
:class:`HsmConnection` owns the backend and the session and repairs them around each
operation:

- no connection or session yet (or the last attempt failed): connect, check the serial,
  authenticate, then run the operation;
- the device says the session is gone (INVALID_SESSION and friends): open a new session and
  run the operation once more;
- the connection fails mid-operation: drop the backend, connect again, authenticate and run
  the operation once more.

A failure to (re)connect or authenticate raises :class:`HsmUnavailable`; the device refusing
the operation itself raises :class:`HsmCommandError`. Retrying is safe for everything the
KMS does (reading public keys, signing the same bytes again). Callers serialise access
(one trio ``CapacityLimiter(1)`` per device); an internal lock also guards direct use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import attrs
from yubihsm import YubiHsm
from yubihsm.core import AuthSession
from yubihsm.exceptions import YubiHsmAuthenticationError, YubiHsmError
from yubihsm.utils import password_to_key

from kms.errors import SignerError
from providers.yubihsm.transport import (
    BackendFactory,
    describe,
    is_connection_error,
    is_session_error,
)

log = logging.getLogger("providers.yubihsm")

T = TypeVar("T")
Operation = Callable[[AuthSession], T]


class HsmUnavailable(SignerError):
    """The HSM cannot be reached or no session can be opened right now (worth retrying)."""


class HsmCommandError(SignerError):
    """The HSM answered but refused the operation (permissions, missing key...)."""


@attrs.define
class ConnectionStats:
    """Counters for monitoring: how often the connection had to be repaired."""

    connects: int = 0
    reconnects: int = 0
    sessions_opened: int = 0
    session_reopens: int = 0
    connection_losses: int = 0
    operations: int = 0


class HsmConnection:
    """One authenticated session with one HSM, re-opened transparently when it breaks.

    Credentials are a password (keys derived with PBKDF2 as the library does) or the raw
    K-ENC and K-MAC of the authentication key; ``serial``, if given, must match the device.
    """

    def __init__(
        self,
        open_backend: BackendFactory,
        auth_key: int,
        password: str | None = None,
        *,
        keys: tuple[bytes, bytes] | None = None,
        serial: int | None = None,
    ) -> None:
        if (password is None) == (keys is None):
            raise ValueError("give exactly one of password or keys (K-ENC, K-MAC)")
        self._open_backend = open_backend
        self.auth_key = auth_key
        if keys is None:  # PBKDF2 once here, not for every session
            assert password is not None
            keys = password_to_key(password)
        self._key_enc, self._key_mac = keys
        self.expected_serial = serial
        self.serial: int | None = None
        self.stats = ConnectionStats()
        self._hsm: YubiHsm | None = None
        self._session: AuthSession | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Whether a session is currently open (as far as this side knows)."""
        return self._session is not None

    def execute(self, operation: Operation[T]) -> T:
        """Run ``operation(session)``, repairing the session or connection once if needed."""
        with self._lock:
            session = self._ensure_session()
            try:
                return self._run(operation, session)
            except Exception as exc:
                self._recover(exc)
            session = self._ensure_session()
            try:
                return self._run(operation, session)
            except Exception as exc:
                if is_connection_error(exc) or is_session_error(exc):
                    self._disconnect()
                    raise HsmUnavailable(f"YubiHSM unavailable: {describe(exc)}") from exc
                if isinstance(exc, YubiHsmError):
                    raise self._command_error(exc) from exc
                raise

    def session(self) -> AuthSession:
        """The current session, opened if needed (for one-shot administrative commands)."""
        with self._lock:
            return self._ensure_session()

    def hsm(self) -> YubiHsm:
        """The connected device (connecting if needed), e.g. for DEVICE_INFO."""
        with self._lock:
            self._ensure_session()
            assert self._hsm is not None
            return self._hsm

    def close(self) -> None:
        """Close the session (best effort) and release the backend."""
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                try:
                    session.close()
                except Exception as exc:  # the device may already be gone
                    log.debug("closing YubiHSM session failed: %s", describe(exc))
            self._disconnect()

    def forget(self) -> None:
        """Drop the session and backend without talking to the device (after a reset)."""
        with self._lock:
            self._disconnect()

    def _run(self, operation: Operation[T], session: AuthSession) -> T:
        result = operation(session)
        self.stats.operations += 1
        return result

    def _recover(self, exc: Exception) -> None:
        """Prepare a retry after ``exc``; re-raise it (translated) when a retry cannot help."""
        if is_connection_error(exc):
            log.warning("lost connection to YubiHSM: %s; reconnecting", describe(exc))
            self.stats.connection_losses += 1
            self._disconnect()
        elif is_session_error(exc):
            log.info("YubiHSM session expired or lost (%s); re-authenticating", describe(exc))
            self._session = None
        elif isinstance(exc, YubiHsmError):
            raise self._command_error(exc) from exc
        else:
            raise exc

    def _command_error(self, exc: YubiHsmError) -> HsmCommandError:
        return HsmCommandError(f"YubiHSM refused the operation: {describe(exc)}")

    def _ensure_session(self) -> AuthSession:
        if self._session is not None:
            return self._session
        try:
            if self._hsm is None:
                self._connect()
            assert self._hsm is not None
            session = self._hsm.create_session(self.auth_key, self._key_enc, self._key_mac)
        except HsmUnavailable:
            self._disconnect()
            raise
        except (YubiHsmError, OSError, ValueError) as exc:
            self._disconnect()
            raise HsmUnavailable(self._open_failure(exc)) from exc
        if self.stats.sessions_opened:
            self.stats.session_reopens += 1
        self.stats.sessions_opened += 1
        self._session = session
        return session

    def _connect(self) -> None:
        hsm = YubiHsm(self._open_backend())  # sends DEVICE_INFO
        try:
            serial = hsm.get_device_info().serial
        except BaseException:
            hsm.close()
            raise
        if self.expected_serial is not None and serial != self.expected_serial:
            hsm.close()
            raise HsmUnavailable(
                f"YubiHSM serial number {serial} does not match serial_number = "
                f'"{self.expected_serial}" in the configuration'
            )
        if self.stats.connects:
            self.stats.reconnects += 1
        self.stats.connects += 1
        self.serial = serial
        self._hsm = hsm

    def _open_failure(self, exc: BaseException) -> str:
        if isinstance(exc, YubiHsmAuthenticationError):
            return f"YubiHSM authentication with key 0x{self.auth_key:04x} failed (wrong password?)"
        return f"cannot open a YubiHSM session with key 0x{self.auth_key:04x}: {describe(exc)}"

    def _disconnect(self) -> None:
        self._session = None
        hsm, self._hsm = self._hsm, None
        if hsm is not None:
            try:
                hsm.close()
            except Exception as exc:
                log.debug("closing YubiHSM backend failed: %s", describe(exc))
