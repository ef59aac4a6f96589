"""One logged-in session with one PKCS#11 token, repaired around each signature (blocking).

:class:`TokenConnection` owns the module, the session and the key objects found in it, and
repairs them around each signature:

- a session error (``CKR_SESSION_HANDLE_INVALID``, ``CKR_SESSION_CLOSED``,
  ``CKR_USER_NOT_LOGGED_IN``): open a new session, log in, find the keys again, sign once
  more;
- a token error (``CKR_DEVICE_REMOVED``, ``CKR_TOKEN_NOT_PRESENT``, ``CKR_OBJECT_HANDLE_INVALID``,
  ``CKR_GENERAL_ERROR``...), or a failed repair: finalise and initialise the module (SoftHSM
  sees a token directory that came back only then), find the token, log in, find the keys.

The PIN is presented when the process logs in: at start, and again only when the token has
forgotten the login (a new session after the old one vanished, a re-initialised module). If
the token refuses it, the connection gives up for good (:class:`Pkcs11PinRejected` for every
later call) rather than spend the token's PIN attempts. A failed repair raises
:class:`Pkcs11Unavailable` (the caller retries with backoff); the token refusing the signature
itself raises :class:`Pkcs11CommandError`. Retrying is safe: signing the same bytes again
gives the same Ed25519 signature.

Not thread-safe by itself: run every method in the PKCS#11 worker thread (or under
:data:`providers.pkcs11.worker.PKCS11_LOCK`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from pkcs11 import Mechanism
from pkcs11.exceptions import PKCS11Error, UserAlreadyLoggedIn

from kms.errors import KeyFileError
from providers.pkcs11.errors import (
    Pkcs11CommandError,
    Pkcs11PinRejected,
    Pkcs11Unavailable,
    ckr_name,
    is_pin_error,
    is_session_error,
    is_token_error,
)
from providers.pkcs11.module import find_token, load_module, restart_module
from providers.pkcs11.objects import KeySelector, find_private_key, find_public_key

if TYPE_CHECKING:
    from pkcs11 import Session, Token
    from pkcs11._pkcs11 import lib as Library
    from pkcs11.types import SignMixin

log = logging.getLogger("providers.pkcs11")


@attrs.define
class TokenStats:
    """Counters for monitoring: how often the connection had to be repaired."""

    sessions_opened: int = 0
    session_reopens: int = 0
    module_restarts: int = 0
    logins: int = 0
    login_failures: int = 0
    signatures: int = 0


class TokenConnection:
    """A session on the token ``token_label`` (or in ``slot``) of ``module``, and its keys."""

    def __init__(
        self,
        module: Path,
        pin: str,
        keys: Sequence[KeySelector],
        *,
        token_label: str | None = None,
        slot: int | None = None,
    ) -> None:
        if (token_label is None) == (slot is None):
            raise ValueError("give exactly one of token_label or slot")
        self.module = Path(module)
        self.token_label = token_label
        self.slot = slot
        self.selectors = tuple(keys)
        self.stats = TokenStats()
        self._pin = pin
        self._library: Library | None = None
        self._session: Session | None = None
        self._keys: list[SignMixin] = []
        self._restart = False
        self._refusal: str | None = None  # set once the token refused the PIN
        self._closed = False

    @property
    def token(self) -> str:
        """``token "label"`` or ``slot N``, for messages."""
        return (
            f'token "{self.token_label}"' if self.token_label is not None else f"slot {self.slot}"
        )

    def open(self) -> list[bytes]:
        """Load the module, log in, find every key; their 32-byte public keys, in order.

        Raises ConfigError (module), Pkcs11Unavailable (token), Pkcs11PinRejected or
        KeyFileError (a key missing, of the wrong type or without its public-key object).
        """
        try:
            self._ensure()
            assert self._session is not None
            return [
                find_public_key(self._session, selector, key)
                for selector, key in zip(self.selectors, self._keys, strict=True)
            ]
        except PKCS11Error as exc:
            raise Pkcs11Unavailable(f"PKCS#11 {self.token} unavailable: {ckr_name(exc)}") from exc

    def sign(self, index: int, message: bytes) -> bytes:
        """Sign ``message`` with key number ``index`` (CKM_EDDSA), repairing once if needed."""
        self._check_usable()
        self._ensure_or_unavailable()
        try:
            return self._sign(index, message)
        except PKCS11Error as exc:
            self._prepare_repair(exc)
        self._ensure_or_unavailable()
        try:
            return self._sign(index, message)
        except PKCS11Error as exc:
            if is_session_error(exc) or is_token_error(exc):
                self._drop(restart=True)
                raise Pkcs11Unavailable(
                    f"PKCS#11 {self.token} unavailable: {ckr_name(exc)}"
                ) from exc
            raise Pkcs11CommandError(f"the token refused to sign: {ckr_name(exc)}") from exc

    def close(self) -> None:
        """Log out, close the session and finalise the module (best effort, never raises)."""
        self._closed = True
        session, self._session = self._session, None
        self._keys = []
        if session is not None:
            try:
                session.close()  # C_Logout, then C_CloseSession
            except PKCS11Error as exc:
                log.debug("closing the PKCS#11 session failed: %s", ckr_name(exc))
        library, self._library = self._library, None
        if library is not None:
            try:
                library.finalize()
            except PKCS11Error as exc:
                log.debug("C_Finalize failed: %s", ckr_name(exc))

    def __repr__(self) -> str:
        return f"TokenConnection({self.module}, {self.token}, {len(self.selectors)} key(s))"

    def _sign(self, index: int, message: bytes) -> bytes:
        signature = bytes(self._keys[index].sign(message, mechanism=Mechanism.EDDSA))
        self.stats.signatures += 1
        return signature

    def _check_usable(self) -> None:
        if self._refusal is not None:
            raise Pkcs11PinRejected(self._refusal)
        if self._closed:
            raise Pkcs11Unavailable("the PKCS#11 provider is closed")

    def _prepare_repair(self, exc: PKCS11Error) -> None:
        """After a failed signature: what to rebuild, or the error if rebuilding cannot help."""
        if is_session_error(exc):
            log.info("PKCS#11 session lost (%s); opening a new one", ckr_name(exc))
            self._drop(restart=False)
        elif is_token_error(exc):
            log.warning(
                "PKCS#11 %s went away (%s); re-initialising the module", self.token, ckr_name(exc)
            )
            self._drop(restart=True)
        else:
            raise Pkcs11CommandError(f"the token refused to sign: {ckr_name(exc)}") from exc

    def _ensure_or_unavailable(self) -> None:
        try:
            self._ensure()
        except (Pkcs11PinRejected, Pkcs11Unavailable):
            raise
        except KeyFileError as exc:  # the key vanished with the token, say
            self._drop(restart=True)
            raise Pkcs11Unavailable(str(exc)) from exc
        except PKCS11Error as exc:
            self._drop(restart=True)
            raise Pkcs11Unavailable(f"PKCS#11 {self.token} unavailable: {ckr_name(exc)}") from exc

    def _ensure(self) -> None:
        """A logged-in session with every key found (the module restarted first if due)."""
        if self._session is not None:
            return
        if self._library is None:
            self._library = load_module(self.module)
        elif self._restart:
            restart_module(self._library)
            self.stats.module_restarts += 1
        self._restart = False
        try:
            session = self._login(find_token(self._library, self.token_label, self.slot))
        except Pkcs11Unavailable:
            self._restart = True  # the token is not there: look again from scratch
            raise
        try:
            self._keys = [find_private_key(session, selector) for selector in self.selectors]
        except BaseException:
            self._keys = []
            _close_quietly(session)
            raise
        if self.stats.sessions_opened:
            self.stats.session_reopens += 1
        self.stats.sessions_opened += 1
        self._session = session

    def _login(self, token: Token) -> Session:
        try:
            session = token.open(user_pin=self._pin)
        except UserAlreadyLoggedIn:  # another session of this process holds the login
            return token.open()
        except PKCS11Error as exc:
            if is_pin_error(exc):
                self.stats.login_failures += 1
                self._refusal = (
                    f"PKCS#11 {self.token} refused the PIN ({ckr_name(exc)}); not retried, "
                    "since every wrong attempt counts towards locking the token"
                )
                raise Pkcs11PinRejected(self._refusal) from exc
            raise
        self.stats.logins += 1
        return session

    def _drop(self, *, restart: bool) -> None:
        session, self._session = self._session, None
        self._keys = []
        if session is not None and not restart:
            _close_quietly(session)
        self._restart = self._restart or restart


def _close_quietly(session: Session) -> None:
    try:
        session.close()
    except PKCS11Error as exc:
        log.debug("closing a broken PKCS#11 session failed: %s", ckr_name(exc))
