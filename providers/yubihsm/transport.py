"""Reaching a YubiHSM 2 from tmkms.toml: backends, credentials, and what an error means.

``[[providers.yubihsm]] adapter`` selects the ``yubihsm`` library backend: ``usb`` talks to
the device directly (``yhusb://``, optionally the one with ``serial_number``), ``http`` goes
through yubihsm-connector (``http://host:port``). Every I/O call is bounded by the adapter's
``timeout_ms`` so a hung device or connector can never hold a worker thread forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from yubihsm.backends import YhsmBackend
from yubihsm.defs import ERROR
from yubihsm.exceptions import (
    YubiHsmConnectionError,
    YubiHsmDeviceError,
    YubiHsmError,
    YubiHsmInvalidResponseError,
)

from kms.config import YubihsmAdapter, YubihsmAuth, YubihsmConfig
from kms.errors import ConfigError, KeyFileError
from kms.keys import warn_if_readable_by_others
from kms.logs import register_secret

log = logging.getLogger("providers.yubihsm")

BackendFactory = Callable[[], YhsmBackend]

#: Device errors after which the session is gone (expired, device restarted, MAC chain broken
#: by another client) but a new session can fix things: re-authenticate and retry.
SESSION_ERRORS = frozenset(
    {ERROR.INVALID_SESSION, ERROR.AUTHENTICATION_FAILED, ERROR.SESSION_FAILED}
)


def backend_url(adapter: YubihsmAdapter, serial_number: str | None = None) -> str:
    """The ``yubihsm`` URL of an adapter: ``http://host:port``, ``yhusb://[serial=N]``."""
    if adapter.type == "http":
        if not adapter.addr:
            raise ConfigError("[[providers.yubihsm]] adapter: http adapter without addr")
        return adapter.addr
    return f"yhusb://serial={int(serial_number)}" if serial_number else "yhusb://"


def backend_factory(
    adapter: YubihsmAdapter, serial_number: str | None = None, timeout: float | None = None
) -> BackendFactory:
    """A function opening a fresh backend for ``adapter`` (I/O bounded by ``timeout`` s).

    ``timeout`` defaults to the adapter's ``timeout_ms``. Opening a USB backend looks the
    device up on the bus, so a replugged HSM is found again.
    """
    seconds = adapter.timeout_ms / 1000 if timeout is None else timeout

    def open_http() -> YhsmBackend:
        from yubihsm.backends.http import HttpBackend

        timeouts = (seconds, seconds)  # (connect, read); requests takes float seconds
        return HttpBackend(backend_url(adapter), timeouts)  # type: ignore[arg-type]

    def open_usb() -> YhsmBackend:
        from yubihsm.backends.usb import UsbBackend

        serial = int(serial_number) if serial_number else None
        backend = UsbBackend(serial=serial, timeout=None)
        backend.timeout = max(1, round(seconds * 1000))  # pyusb wants whole milliseconds
        return backend

    return open_http if adapter.type == "http" else open_usb


def read_password(auth: YubihsmAuth) -> str:
    """The authentication key's password: inline, or a password file's text.

    A password file's trailing newline (``\\n`` or ``\\r\\n``) is not part of the password.
    The password is registered with the log redactor.
    """
    if auth.password is not None:
        password = auth.password
    else:
        path = Path(auth.password_file) if auth.password_file is not None else None
        if path is None:
            raise ConfigError("[[providers.yubihsm]] auth: no password or password_file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{path}: cannot read YubiHSM password file: {exc}") from exc
        warn_if_readable_by_others(path, log)
        password = text.removesuffix("\n").removesuffix("\r")
        if not password:
            raise KeyFileError(f"{path}: YubiHSM password file is empty")
    if password:
        register_secret(password)
    return password


def expected_serial(config: YubihsmConfig) -> int | None:
    """``serial_number`` as an integer, if configured."""
    return int(config.serial_number) if config.serial_number else None


def is_connection_error(exc: BaseException) -> bool:
    """The device or connector could not be reached (unplugged, killed, timed out)."""
    return isinstance(exc, (YubiHsmConnectionError, OSError))


def is_session_error(exc: BaseException) -> bool:
    """The session is no longer usable, but the device answered: open a new session."""
    if isinstance(exc, YubiHsmDeviceError):
        return exc.code in SESSION_ERRORS
    # a reply that does not authenticate (MAC, session ID) means our session state is stale
    return isinstance(exc, YubiHsmInvalidResponseError)


def describe(exc: BaseException) -> str:
    """A one-line description of a ``yubihsm`` (or I/O) failure for error messages."""
    if isinstance(exc, YubiHsmDeviceError):
        return f"device error {exc.code.name}"
    if isinstance(exc, YubiHsmConnectionError):
        cause = exc.args[0] if exc.args else None
        detail = _innermost(cause) if isinstance(cause, BaseException) else str(cause or "")
        return f"connection failed: {detail}" if detail else "connection failed"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, YubiHsmError):
        return f"{type(exc).__name__}: {text}"
    return text


def _innermost(exc: BaseException) -> str:
    """The most specific message in a chain of wrapped I/O errors (requests nests deeply)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    last = str(exc)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if str(current):
            last = str(current)
        nested = current.args[0] if current.args else None
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return " ".join(last.split())
